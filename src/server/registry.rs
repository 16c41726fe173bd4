//! The registry: profiles and incidents, durable in the store and served from memory.
//!
//! Every change is written to the store first, then published as a new
//! [`PolicySnapshot`] on a watch channel that the agent (and every Workload API stream)
//! follows. Issuance holds the read side of [`Registry::issuance_gate`] while it checks
//! and signs; closing an incident takes the write side, so once `close_incident`
//! returns, no SVID for that incident is being or will be signed.

use super::commits::{Commits, Failure, Sinks};
use super::fair::Urgency;
use crate::audit::log::Pending;
use crate::audit::{AuditError, AuditLog, Kind, Record};
use crate::clock::SharedClock;
use crate::policy::agent_view::{live_grant, live_incident, retain_live};
use crate::policy::grant::{self, GrantError, GrantRequest, GrantState, Principal};
use crate::policy::playbook::{self, ActivationRequest, Playbook, PlaybookError, PlaybookState};
use crate::policy::serial::{self, Issued, RevokedSerial, Serial, SerialError};
use crate::policy::tenant::{self, Tenant, TenantState};
use crate::policy::{
    DEFAULT_TENANT, Grant, Incident, IncidentSource, IncidentState, PolicyError, PolicySnapshot,
    Profile, agent_view,
};
use crate::sources::config::Source;
use crate::sources::rules::{self, Decision, SourceIncident};
use crate::sources::{Action, SourceEvent};
use crate::store::{Store, StoreError, Write};
use spiffe::TrustDomain;
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::sync::watch;

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The object is invalid.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// A profile or incident with that name exists (incident ids are never reused).
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        /// Profile or incident.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// No such profile or incident.
    #[error("unknown {what} {name:?}")]
    NotFound {
        /// Profile or incident.
        what: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The incident is already closed.
    #[error("incident {0:?} is already closed")]
    AlreadyClosed(String),
    /// A tenant's CAs could not be made or opened; the tenant was not created.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// The tenant is disabled: nothing new is made in it.
    #[error("tenant {0:?} is disabled")]
    TenantDisabled(String),
    /// A grant decision was refused.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// A playbook decision was refused.
    #[error(transparent)]
    Playbook(#[from] PlaybookError),
    /// A serial could not be revoked.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// Too many grant requests (against approval fatigue).
    #[error("{0}")]
    RateLimited(String),
    /// The operating system gave no randomness for a new id; nothing changed.
    #[error("no randomness available for a new id")]
    NoRandomness,
    /// The store is shared and this server cannot prove its policy is current (it lost
    /// the database, or fell behind): it changes and signs nothing until it can.
    #[error(
        "this server cannot prove its policy is current (the shared store is unreachable or it is behind); it signs nothing until it can"
    )]
    NotCurrent,
    /// The store failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change could not be audited, so it was not made.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What a change is, for its audit record.
#[derive(Clone, Copy, Debug)]
struct Audited<'a> {
    /// The tenant whose change it is: every object it writes is this tenant's, and its
    /// record says so (a change never spans tenants).
    tenant: &'a str,
    kind: Kind,
    action: &'a str,
    actor: &'a str,
}

impl<'a> Audited<'a> {
    fn new(tenant: &'a str, kind: Kind, action: &'a str, actor: &'a str) -> Self {
        Audited {
            tenant,
            kind,
            action,
            actor,
        }
    }
}

/// The store as a change sees it: the change submits its audit records and stages its
/// rows; the rows are written (in one transaction, with the other changes of its commit)
/// only once every record is durable: audited before written, written before published.
struct Writer<'a> {
    audit: &'a AuditLog,
    clock: &'a SharedClock,
    what: Audited<'a>,
    /// The change's records, submitted in order.
    records: RefCell<Vec<Pending<()>>>,
    /// The change's rows, in order.
    writes: RefCell<Vec<Write>>,
}

impl<'a> Writer<'a> {
    fn new(audit: &'a AuditLog, clock: &'a SharedClock, what: Audited<'a>) -> Self {
        Writer {
            audit,
            clock,
            what,
            records: RefCell::new(Vec::new()),
            writes: RefCell::new(Vec::new()),
        }
    }

    /// What the change submitted and staged.
    fn finish(self) -> (Vec<Pending<()>>, Vec<Write>) {
        (self.records.into_inner(), self.writes.into_inner())
    }

    fn stage(&self, writes: Vec<Write>) {
        self.writes.borrow_mut().extend(writes);
    }

    fn record(
        &self,
        incident: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<(), RegistryError> {
        self.record_as(self.what.kind, self.what.action, incident, detail)
    }

    /// A record of this change's tenant and actor whose kind and action the change
    /// decided as it went (a webhook delivery opens, closes or is refused).
    fn record_as(
        &self,
        kind: Kind,
        action: &str,
        incident: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<(), RegistryError> {
        let record = Record::new(self.clock.unix(), kind, action, self.what.actor)
            .tenant(self.what.tenant)
            .incident(incident)
            .detail(detail);
        self.records.borrow_mut().push(self.audit.submit(&record)?);
        Ok(())
    }

    /// Refuses to write objects of another tenant than the change's: its one record
    /// would mislabel them, and show them to the wrong tenant's auditors.
    fn of_this_tenant<'t>(
        &self,
        tenants: impl IntoIterator<Item = &'t str>,
    ) -> Result<(), RegistryError> {
        match tenants.into_iter().find(|t| *t != self.what.tenant) {
            None => Ok(()),
            Some(other) => Err(AuditError::Invalid(format!(
                "a change of tenant {:?} would write objects of tenant {other:?} under one audit record",
                self.what.tenant
            ))
            .into()),
        }
    }

    fn put_profile(&self, profile: &Profile) -> Result<(), RegistryError> {
        self.of_this_tenant([profile.tenant.as_str()])?;
        self.record(None, serde_json::json!({ "profile": profile }))?;
        self.stage(Store::profile_writes(profile)?);
        Ok(())
    }

    fn delete_profile(&self, tenant: &str, name: &str) -> Result<(), RegistryError> {
        self.of_this_tenant([tenant])?;
        self.record(
            None,
            serde_json::json!({ "tenant": tenant, "profile": name }),
        )?;
        self.stage(Store::profile_deletion(tenant, name));
        Ok(())
    }

    fn put_incident(&self, incident: &Incident) -> Result<(), RegistryError> {
        self.of_this_tenant([incident.tenant.as_str()])?;
        self.record(
            Some(&incident.id),
            serde_json::json!({ "incidents": [incident] }),
        )?;
        self.stage(Store::policy_and_serial_writes(
            std::slice::from_ref(incident),
            &[],
            &[],
            &[],
        )?);
        Ok(())
    }

    fn put_policy_changes(
        &self,
        incidents: &[Incident],
        grants: &[Grant],
    ) -> Result<(), RegistryError> {
        self.put_policy_and_serial_changes(incidents, grants, &[], &[])
    }

    fn put_policy_and_serial_changes(
        &self,
        incidents: &[Incident],
        grants: &[Grant],
        revoked: &[RevokedSerial],
        pruned: &[String],
    ) -> Result<(), RegistryError> {
        self.of_this_tenant(
            incidents
                .iter()
                .map(|i| i.tenant.as_str())
                .chain(grants.iter().map(|g| g.tenant.as_str())),
        )?;
        let incident = incidents
            .first()
            .map(|i| i.id.as_str())
            .or_else(|| grants.first().map(|g| g.incident.as_str()));
        self.record(incident, policy_detail(incidents, grants, revoked, pruned))?;
        self.stage(Store::policy_and_serial_writes(
            incidents, grants, revoked, pruned,
        )?);
        Ok(())
    }

    /// A source incident's row with the incidents and grants its delivery changed, under
    /// one record of `kind` and `action` filed under writ incident `incident`.
    #[allow(clippy::too_many_arguments)]
    fn put_source_changes(
        &self,
        kind: Kind,
        action: &str,
        incident: Option<&str>,
        source: serde_json::Value,
        row: Option<&SourceIncident>,
        incidents: &[Incident],
        grants: &[Grant],
    ) -> Result<(), RegistryError> {
        self.of_this_tenant(
            row.map(|r| r.tenant.as_str())
                .into_iter()
                .chain(incidents.iter().map(|i| i.tenant.as_str()))
                .chain(grants.iter().map(|g| g.tenant.as_str())),
        )?;
        let mut detail = policy_detail(incidents, grants, &[], &[]);
        if let Some(map) = detail.as_object_mut() {
            map.insert("source".into(), source);
        }
        self.record_as(kind, action, incident, detail)?;
        // A duplicate: recorded, nothing to keep.
        if let Some(row) = row {
            self.stage(Store::source_writes(row, incidents, grants)?);
        }
        Ok(())
    }

    fn put_tenant_changes(
        &self,
        tenant: &Tenant,
        incidents: &[Incident],
        grants: &[Grant],
    ) -> Result<(), RegistryError> {
        self.of_this_tenant(
            incidents
                .iter()
                .map(|i| i.tenant.as_str())
                .chain(grants.iter().map(|g| g.tenant.as_str())),
        )?;
        let mut detail = policy_detail(incidents, grants, &[], &[]);
        if let Some(map) = detail.as_object_mut() {
            map.insert("tenant".into(), serde_json::json!(tenant));
        }
        self.record(None, detail)?;
        self.stage(Store::tenant_writes(tenant, incidents, grants)?);
        Ok(())
    }

    fn put_playbook(&self, playbook: &Playbook) -> Result<(), RegistryError> {
        self.of_this_tenant([playbook.tenant.as_str()])?;
        self.record(None, serde_json::json!({ "playbooks": [playbook] }))?;
        self.stage(Store::playbook_writes(std::slice::from_ref(playbook), &[])?);
        Ok(())
    }

    fn put_playbook_changes(
        &self,
        playbooks: &[Playbook],
        grants: &[Grant],
    ) -> Result<(), RegistryError> {
        self.of_this_tenant(
            playbooks
                .iter()
                .map(|p| p.tenant.as_str())
                .chain(grants.iter().map(|g| g.tenant.as_str())),
        )?;
        self.record(
            grants.first().map(|g| g.incident.as_str()),
            serde_json::json!({ "playbooks": playbooks, "grants": grants_for_audit(grants) }),
        )?;
        self.stage(Store::playbook_writes(playbooks, grants)?);
        Ok(())
    }
}

/// The detail of a policy change's audit record: what it writes, empty parts left out.
fn policy_detail(
    incidents: &[Incident],
    grants: &[Grant],
    revoked: &[RevokedSerial],
    pruned: &[String],
) -> serde_json::Value {
    let mut detail = serde_json::Map::new();
    if !incidents.is_empty() {
        detail.insert("incidents".into(), serde_json::json!(incidents));
    }
    if !grants.is_empty() {
        detail.insert("grants".into(), grants_for_audit(grants).into());
    }
    if !revoked.is_empty() {
        detail.insert("revoked_serials".into(), serde_json::json!(revoked));
    }
    if !pruned.is_empty() {
        detail.insert("pruned_serials".into(), serde_json::json!(pruned));
    }
    detail.into()
}

/// Grants as the audit log keeps them: everything but the plan's text, which its digest
/// stands for (the plan can be long; the digest is what the approvers signed).
fn grants_for_audit(grants: &[Grant]) -> Vec<serde_json::Value> {
    grants
        .iter()
        .map(|g| {
            let mut v = serde_json::to_value(g).unwrap_or(serde_json::Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.remove("plan");
            }
            v
        })
        .collect()
}

/// Profiles and incidents.
pub struct Registry {
    store: Arc<Store>,
    snapshot: watch::Sender<Arc<PolicySnapshot>>,
    /// What agents receive ([`agent_view`](fn@crate::policy::agent_view)), published with every change.
    agents: watch::Sender<Arc<PolicySnapshot>>,
    /// How long revocations are remembered: the longest SVID lifetime, in seconds.
    revocation_window: i64,
    /// One change at a time, passed round-robin between tenants ([`super::fair`]): one
    /// tenant's storm of changes never queues another's behind all of it.
    writer: super::fair::Fair,
    gate: RwLock<()>,
    /// Every change is audited here before it is written: there is no registry without
    /// an audit log.
    audit: Arc<AuditLog>,
    /// Stamps the audit records.
    clock: SharedClock,
    /// With a shared store: which policy version memory holds, and until when this
    /// server may sign on it (docs/ha.md, "Revocation across replicas").
    follow: Option<Follow>,
    /// What each tenant's changes are held to.
    limits: tenant::TenantLimits,
    /// Each tenant's allowance of changes (made full on its first change).
    buckets: Mutex<std::collections::BTreeMap<String, tenant::Bucket>>,
    /// Changes decided and waiting for their commit (with a store this server owns).
    commits: Commits<PolicySnapshot>,
}

/// What a change reads besides the policy it is decided on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reads {
    /// Nothing else, or only rows no change writes (history that left memory, SVID
    /// records): decided on the last decided change, before that one is durable.
    Policy,
    /// Rows changes write that memory does not hold (a source incident's row): every
    /// decided change is written first.
    Store,
}

/// Whether a change edited the policy (and so has a new snapshot to publish).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    /// The policy changed: publish it.
    Changed,
    /// Only records were written (an audit record, a source's delivery bookkeeping).
    Unchanged,
}

/// What a server sharing its store knows of the cluster's policy.
struct Follow {
    /// The policy version the published snapshot reflects (at least).
    applied: std::sync::atomic::AtomicU64,
    /// Signing is allowed before this instant: the last heartbeat that found `applied`
    /// current, plus the lease ([`super::replica::POLICY_LEASE`]).
    lease_until: Mutex<Option<std::time::Instant>>,
    /// This server's name among the replicas.
    name: String,
}

/// The live policy in the store at `now`, as a snapshot of generation `generation`.
fn read_live(
    store: &Store,
    rules: grant::RemediationRules,
    generation: u64,
    now: i64,
    revocation_window: i64,
) -> Result<PolicySnapshot, RegistryError> {
    let mut snapshot = PolicySnapshot {
        rules,
        generation,
        tenants: store
            .tenants()?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect(),
        profiles: store
            .profiles()?
            .into_iter()
            .map(|p| (p.key(), p))
            .collect(),
        incidents: store
            .live_incidents(|i| live_incident(i, now, revocation_window))?
            .into_iter()
            .map(|i| (i.key(), Arc::new(i)))
            .collect(),
        grants: store
            .live_grants(|g| live_grant(g, now, revocation_window))?
            .into_iter()
            .map(|g| (g.key(), g))
            .collect(),
        playbooks: store
            .playbooks()?
            .into_iter()
            .map(|p| (p.key(), p))
            .collect(),
        revoked_serials: store
            .revoked_serials()?
            .into_iter()
            .map(|r| (r.serial.clone(), r))
            .collect(),
    };
    retain_live(&mut snapshot, now, revocation_window);
    Ok(snapshot)
}

/// Where a commit of queued changes writes and publishes.
impl Sinks<PolicySnapshot> for Registry {
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.store.write(writes)
    }

    fn publish(&self, policy: Arc<PolicySnapshot>) {
        Registry::publish(self, policy, self.clock.unix());
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// Loads every profile and incident from the store, under the configured remediation
    /// `rules`. Every change from then on is audited in `audit`, stamped by `clock`,
    /// before it is written; agents remember revocations for `max_svid_ttl`.
    pub fn load(
        store: Arc<Store>,
        rules: grant::RemediationRules,
        audit: Arc<AuditLog>,
        clock: SharedClock,
        max_svid_ttl: std::time::Duration,
    ) -> Result<Self, RegistryError> {
        rules.validate()?;
        let revocation_window = i64::try_from(max_svid_ttl.as_secs()).unwrap_or(i64::MAX);
        let now = clock.unix();
        // A shared store's version is read before its rows: the rows reflect at least it.
        let follow = if store.shared() {
            Some(Follow {
                applied: store.policy_version()?.into(),
                lease_until: Mutex::new(None),
                // One name per server: the one it reserves audit indexes under.
                name: audit
                    .owner()
                    .map_or_else(super::replica::replica_name, str::to_owned),
            })
        } else {
            None
        };
        let generation = follow
            .as_ref()
            .map_or(1, |f| generation_of(f.applied.load(Ordering::SeqCst)));
        // In memory only what is live; history stays in the store and is read from there.
        let snapshot = read_live(&store, rules, generation, now, revocation_window)?;
        let view = agent_view(&snapshot, now, revocation_window);
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Ok(Registry {
            store,
            snapshot: tx,
            agents: watch::channel(Arc::new(view)).0,
            revocation_window,
            writer: super::fair::Fair::lock(),
            gate: RwLock::new(()),
            audit,
            clock,
            follow,
            limits: tenant::TenantLimits::default(),
            buckets: Mutex::new(std::collections::BTreeMap::new()),
            commits: Commits::default(),
        })
    }

    /// Holds every tenant's changes to `limits` (`[tenant_limits]`) instead of the
    /// defaults.
    pub fn with_tenant_limits(
        mut self,
        limits: tenant::TenantLimits,
    ) -> Result<Self, RegistryError> {
        limits.validate()?;
        self.limits = limits;
        Ok(self)
    }

    /// Takes one of `tenant`'s changes from its allowance, or refuses it (the caller
    /// retries later): a tenant's spam must not fill the one writer's queue for everyone.
    fn spend(&self, tenant: &str) -> Result<(), RegistryError> {
        let now = self.clock.now();
        let mut buckets = lock(&self.buckets);
        let bucket = buckets
            .entry(tenant.to_owned())
            .or_insert_with(|| tenant::Bucket::full(&self.limits, now));
        bucket.take(&self.limits, now).map_err(|wait| {
            RegistryError::RateLimited(format!(
                "tenant {tenant:?} is making changes faster than its limit ([tenant_limits] changes_per_second = {}, change_burst = {}): retry in {} ms",
                self.limits.changes_per_second,
                self.limits.change_burst,
                wait.as_millis().max(1)
            ))
        })
    }

    /// The registry's time, unix seconds (a test's manual clock in tests).
    pub fn now(&self) -> i64 {
        self.clock.unix()
    }

    /// The policy now.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        Arc::clone(&self.snapshot.borrow())
    }

    /// Follows every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.snapshot.subscribe()
    }

    /// Every incident `tenant` ever opened, live or history, by id (read from the store,
    /// which holds everything: each change is written there before it is published).
    pub fn all_incidents(&self, tenant: &str) -> Result<Vec<Incident>, RegistryError> {
        Ok(self.store.incidents_where(|i| i.tenant == tenant)?)
    }

    /// One incident of `tenant`, live or history.
    pub fn incident(&self, tenant: &str, id: &str) -> Result<Option<Incident>, RegistryError> {
        match self.snapshot().incident(tenant, id) {
            Some(incident) => Ok(Some(incident.clone())),
            None => Ok(self.store.incident(tenant, id)?),
        }
    }

    /// Every grant of `tenant` ever filed, live or history (from the store, as
    /// [`Self::all_incidents`]).
    pub fn all_grants(&self, tenant: &str) -> Result<Vec<Grant>, RegistryError> {
        Ok(self.store.grants_where(|g| g.tenant == tenant)?)
    }

    /// One grant of `tenant`, live or history.
    pub fn grant(&self, tenant: &str, id: &str) -> Result<Option<Grant>, RegistryError> {
        match self.snapshot().grant(tenant, id) {
            Some(grant) => Ok(Some(grant.clone())),
            None => Ok(self.store.grant(tenant, id)?),
        }
    }

    /// What agents need of the policy, following every change: bounded by live state,
    /// not history (see [`agent_view`](fn@crate::policy::agent_view)).
    pub fn subscribe_agents(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.agents.subscribe()
    }

    /// Held (shared) across an entitlement check and the signature that follows it.
    /// With a shared store, refused unless this server holds a lease on current policy:
    /// a server that cannot prove it has the latest policy signs nothing.
    pub fn issuance_gate(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>, RegistryError> {
        let guard = self
            .gate
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &self.follow {
            Some(follow) if !lease_holds(*lock(&follow.lease_until), std::time::Instant::now()) => {
                Err(RegistryError::NotCurrent)
            }
            _ => Ok(guard),
        }
    }

    /// This server's name among the replicas (with a shared store; else `None`).
    pub fn replica_name(&self) -> Option<&str> {
        self.follow.as_ref().map(|f| f.name.as_str())
    }

    /// The policy version memory reflects (with a shared store; else `None`).
    pub fn applied_version(&self) -> Option<u64> {
        self.follow
            .as_ref()
            .map(|f| f.applied.load(Ordering::SeqCst))
    }

    /// A heartbeat sent at `sent` found the policy version this server had applied to be
    /// the latest: it may sign until `sent` plus the lease.
    pub fn renew_lease(&self, applied: u64, sent: std::time::Instant) {
        if let Some(follow) = &self.follow
            && follow.applied.load(Ordering::SeqCst) == applied
        {
            let mut until = lock(&follow.lease_until);
            let next = sent + super::replica::POLICY_LEASE;
            if until.is_none_or(|u| u < next) {
                *until = Some(next);
            }
        }
    }

    /// Reads the live policy from the shared store again and publishes it: another server
    /// changed it. Returns the version now applied.
    pub fn reload(&self) -> Result<u64, RegistryError> {
        let _one_writer = self.writer.enter(tenant::DEFAULT_TENANT, Urgency::Normal);
        self.reload_locked()
    }

    fn reload_locked(&self) -> Result<u64, RegistryError> {
        let Some(follow) = &self.follow else {
            return Ok(0);
        };
        let version = self.store.policy_version()?;
        if version == follow.applied.load(Ordering::SeqCst) {
            // Already published (this server's own change, heard back as a notification).
            return Ok(version);
        }
        let now = self.clock.unix();
        let rules = self.snapshot().rules.clone();
        let next = read_live(
            &self.store,
            rules,
            generation_of(version),
            now,
            self.revocation_window,
        )?;
        self.publish(Arc::new(next), now);
        follow.applied.store(version, Ordering::SeqCst);
        Ok(version)
    }

    /// Publishes `next` once no signature is in flight; none start until it is out.
    fn publish(&self, next: Arc<PolicySnapshot>, now: i64) {
        let view = Arc::new(agent_view(&next, now, self.revocation_window));
        let _exclusive = self
            .gate
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.snapshot.send_replace(next);
        self.agents.send_replace(view);
    }

    /// Makes one policy change: `f` edits a copy of the policy and writes through `w`,
    /// which appends the audit record of each write (durably) before making it; then the
    /// new policy is published. A refused audit append means nothing was written.
    fn change<T>(
        &self,
        what: Audited<'_>,
        f: impl FnOnce(&mut PolicySnapshot, &Writer<'_>) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        Ok(self.change_confirmed(what, f)?.0)
    }

    /// [`Self::change`], with the replicas that did not confirm a revocation (their
    /// leases ran out instead): the caller reports them.
    fn change_confirmed<T>(
        &self,
        what: Audited<'_>,
        f: impl FnOnce(&mut PolicySnapshot, &Writer<'_>) -> Result<T, RegistryError>,
    ) -> Result<(T, Vec<String>), RegistryError> {
        self.change_or_keep(what, |policy, w| Ok((f(policy, w)?, Edit::Changed)))
    }

    /// [`Self::change_confirmed`] for a change that may leave the policy as it was: when
    /// `f` says [`Edit::Unchanged`] (it wrote records, not policy), no new snapshot is
    /// published, so watchers and agents are not woken for nothing. With a shared store
    /// it is published all the same if the store's policy version moved (a row in a
    /// policy table was written), so the snapshot's generation keeps following it.
    fn change_or_keep<T>(
        &self,
        what: Audited<'_>,
        f: impl FnOnce(&mut PolicySnapshot, &Writer<'_>) -> Result<(T, Edit), RegistryError>,
    ) -> Result<(T, Vec<String>), RegistryError> {
        self.change_reading(what, Reads::Policy, f)
    }

    /// [`Self::change_or_keep`] for a change that `reads` what is named.
    fn change_reading<T>(
        &self,
        what: Audited<'_>,
        reads: Reads,
        f: impl FnOnce(&mut PolicySnapshot, &Writer<'_>) -> Result<(T, Edit), RegistryError>,
    ) -> Result<(T, Vec<String>), RegistryError> {
        // A revocation goes before its own tenant's waiting changes (a storm of opens
        // must not hold up a close).
        let urgency = match what.kind {
            Kind::Revocation => Urgency::Urgent,
            _ => Urgency::Normal,
        };
        if urgency == Urgency::Normal {
            self.spend(what.tenant)?;
        }
        let one_writer = self.writer.enter(what.tenant, urgency);
        match &self.follow {
            Some(follow) => self.change_shared(follow, one_writer, what, f),
            None => self.change_queued(one_writer, what, reads, f),
        }
    }

    /// A change with a store this server owns: decided on the last decided change, then
    /// committed with the changes decided beside it ([`super::commits`]).
    fn change_queued<T>(
        &self,
        one_writer: super::fair::FairGuard<'_>,
        what: Audited<'_>,
        reads: Reads,
        f: impl FnOnce(&mut PolicySnapshot, &Writer<'_>) -> Result<(T, Edit), RegistryError>,
    ) -> Result<(T, Vec<String>), RegistryError> {
        if reads == Reads::Store {
            // The change reads rows decided changes write: they are written first.
            self.commits.drain(self);
        }
        let (base, epoch) = self.commits.base(|| self.snapshot());
        let mut next = (*base).clone();
        drop(base);
        let writer = Writer::new(&self.audit, &self.clock, what);
        let (out, edit) = f(&mut next, &writer)?;
        let (records, mut writes) = writer.finish();
        let policy = match edit {
            Edit::Changed => {
                next.generation += 1;
                // What ended longer ago than the window leaves memory (it is in the
                // store), so a change costs what live state costs, not what history does;
                // and it leaves the store's live indexes, so a start reads live state.
                let retired = retain_live(&mut next, self.clock.unix(), self.revocation_window);
                writes.extend(Store::retired_writes(&retired));
                Some(Arc::new(next))
            }
            Edit::Unchanged => None,
        };
        let ticket = self
            .commits
            .queue(epoch, records, writes, policy)
            .ok_or_else(|| {
                AuditError::Unavailable(
                    "a change decided before this one was not made; nothing changed".into(),
                )
            })?;
        drop(one_writer);
        self.commits
            .wait(&ticket, self)
            .map_err(|failure| match failure {
                Failure::Audit(_) => RegistryError::Audit(failure.into()),
                Failure::Store(_) => RegistryError::Store(failure.into()),
            })?;
        Ok((out, Vec::new()))
    }

    /// A change with a store several servers share: one at a time in the whole cluster,
    /// each durable and published before the next is decided.
    fn change_shared<T>(
        &self,
        follow: &Follow,
        one_writer: super::fair::FairGuard<'_>,
        what: Audited<'_>,
        f: impl FnOnce(&mut PolicySnapshot, &Writer<'_>) -> Result<(T, Edit), RegistryError>,
    ) -> Result<(T, Vec<String>), RegistryError> {
        // Decided on the latest policy: catch up first if another server changed it.
        let cluster = self.store.lock_policy()?;
        if self.store.policy_version()? != follow.applied.load(Ordering::SeqCst) {
            self.reload_locked()?;
        }
        let mut next = (*self.snapshot()).clone();
        let kind = what.kind;
        let writer = Writer::new(&self.audit, &self.clock, what);
        let (out, edit) = f(&mut next, &writer)?;
        let (records, mut writes) = writer.finish();
        for record in records {
            record.wait()?;
        }
        let now = self.clock.unix();
        let retired = retain_live(&mut next, now, self.revocation_window);
        writes.extend(Store::retired_writes(&retired));
        self.store.write(writes)?;
        let version = self.store.policy_version()?;
        if edit == Edit::Unchanged && version == follow.applied.load(Ordering::SeqCst) {
            return Ok((out, Vec::new()));
        }
        next.generation = generation_of(version);
        self.publish(Arc::new(next), now);
        follow.applied.store(version, Ordering::SeqCst);
        drop(cluster);
        drop(one_writer);
        // A revocation returns once no other replica can sign on the policy before it.
        let mut unconfirmed = Vec::new();
        if kind == Kind::Revocation {
            unconfirmed = super::replica::await_applied(&self.store, &follow.name, version)?;
            if !unconfirmed.is_empty() {
                tracing::warn!(
                    replicas = ?unconfirmed,
                    version,
                    "replicas did not confirm a revocation; their leases ran out, so they sign nothing until they have it"
                );
            }
        }
        Ok((out, unconfirmed))
    }

    /// Creates a tenant in a deployment whose own base is `deployment_base`
    /// ([`crate::policy::tenant::check_new`]). The caller has made its CAs: a tenant is
    /// never visible before it can be issued in.
    pub fn create_tenant(
        &self,
        tenant: Tenant,
        deployment_base: &spiffe::TrustDomain,
    ) -> Result<Tenant, RegistryError> {
        let by = tenant.created_by.clone();
        self.change(
            // The deployment's decision, in the default tenant's name.
            Audited::new(DEFAULT_TENANT, Kind::AdminChange, "tenant.create", &by),
            |policy, w| {
                // Names are never reused: a disabled tenant stays in the store and here.
                tenant::check_new(&tenant, policy.tenants.values(), deployment_base)?;
                w.put_tenant_changes(&tenant, &[], &[])?;
                policy.tenants.insert(tenant.name.clone(), tenant.clone());
                Ok(tenant)
            },
        )
    }

    /// Disables a tenant for good: nothing is issued in it again, and its open incidents
    /// close (their grants with them) in the same durable write, so every identity bound
    /// to them is revoked at once. The default tenant cannot be disabled.
    pub fn disable_tenant(
        &self,
        name: &str,
        by: &str,
        now: i64,
    ) -> Result<(Tenant, Vec<Incident>), RegistryError> {
        self.change(
            // The disabled tenant's (it closes its incidents); the default tenant sees it
            // too ([`crate::audit::visible_to`]).
            Audited::new(name, Kind::Revocation, "tenant.disable", by),
            |policy, w| {
                let Some(current) = policy.tenants.get(name) else {
                    return Err(RegistryError::NotFound {
                        what: "tenant",
                        name: name.chars().take(64).collect(),
                    });
                };
                if !current.is_active() {
                    return Err(RegistryError::TenantDisabled(name.to_owned()));
                }
                let mut next = current.clone();
                next.state = TenantState::Disabled;
                next.disabled_by = Some(by.to_owned());
                next.disabled_at = Some(now);
                let mut incidents = Vec::new();
                let mut grants = Vec::new();
                for incident in policy
                    .incidents
                    .values()
                    .filter(|i| i.tenant == name && i.is_open())
                {
                    let (closed, ended) = close(policy, incident, by, "tenant disabled", now);
                    grants.extend(ended);
                    incidents.push(closed);
                }
                w.put_tenant_changes(&next, &incidents, &grants)?;
                policy.tenants.insert(next.name.clone(), next.clone());
                apply(policy, &incidents, &grants);
                Ok((next, incidents))
            },
        )
    }

    /// Creates a profile.
    pub fn create_profile(&self, profile: Profile, by: &str) -> Result<Profile, RegistryError> {
        profile.validate()?;
        let tenant = profile.tenant.clone();
        self.change(
            Audited::new(&tenant, Kind::AdminChange, "profile.create", by),
            |policy, w| {
                active_tenant(policy, &profile.tenant)?;
                tenant::check_profile_tenant(&profile, policy.profiles.values())?;
                if policy.profiles.contains_key(&profile.key()) {
                    return Err(RegistryError::AlreadyExists {
                        what: "profile",
                        name: profile.name.clone(),
                    });
                }
                w.put_profile(&profile)?;
                policy.profiles.insert(profile.key(), profile.clone());
                Ok(profile)
            },
        )
    }

    /// Deletes a profile; its workloads lose their identities at once.
    pub fn delete_profile(
        &self,
        tenant: &str,
        name: &str,
        by: &str,
    ) -> Result<Profile, RegistryError> {
        self.change(
            Audited::new(tenant, Kind::Revocation, "profile.delete", by),
            |policy, w| {
                let Some(profile) = policy.profile(tenant, name).cloned() else {
                    return Err(RegistryError::NotFound {
                        what: "profile",
                        name: name.into(),
                    });
                };
                w.delete_profile(tenant, name)?;
                policy.profiles.remove(&profile.key());
                Ok(profile)
            },
        )
    }

    /// Opens an incident. Ids are never reused, even after closing.
    pub fn open_incident(&self, incident: Incident) -> Result<Incident, RegistryError> {
        incident.validate()?;
        let by = incident.opened_by.clone();
        let tenant = incident.tenant.clone();
        self.change(
            Audited::new(&tenant, Kind::AdminChange, "incident.open", &by),
            |policy, w| {
                let incident = self.admit_incident(policy, incident)?;
                w.put_incident(&incident)?;
                policy
                    .incidents
                    .insert(incident.key(), Arc::new(incident.clone()));
                Ok(incident)
            },
        )
    }

    /// `incident`, open, if it may be opened now: its tenant active and under its cap of
    /// open incidents, and its id never used before (history is in the store, not only
    /// in memory). Every way of opening an incident goes through here.
    fn admit_incident(
        &self,
        policy: &PolicySnapshot,
        mut incident: Incident,
    ) -> Result<Incident, RegistryError> {
        active_tenant(policy, &incident.tenant)?;
        let open = policy
            .incidents
            .values()
            .filter(|i| i.tenant == incident.tenant && i.state == IncidentState::Open)
            .count();
        self.limits
            .check_open_incidents(&incident.tenant, open)
            .map_err(RegistryError::RateLimited)?;
        if policy.incidents.contains_key(&incident.key())
            || self
                .store
                .incident(&incident.tenant, &incident.id)?
                .is_some()
        {
            return Err(RegistryError::AlreadyExists {
                what: "incident",
                name: incident.id.clone(),
            });
        }
        incident.state = IncidentState::Open;
        Ok(incident)
    }

    /// Handles one verified delivery from incident source `source`
    /// (docs/incident-sources.md): decides it ([`rules::decide`]) on what the store
    /// keeps of the source's incident and the live policy, applies the decision, and
    /// keeps the delivery as handled, in one audited write. A close returns once nothing
    /// signs for the incident any more, as an operator's does. `ceiling_secs` is the
    /// configured `max_incident_lifetime`.
    pub fn apply_source_event(
        &self,
        source: &Source,
        event: &SourceEvent,
        ceiling_secs: u64,
    ) -> Result<SourceOutcome, RegistryError> {
        let tenant = source.tenant.as_str();
        let actor = source.actor();
        // A close is a revocation: it goes before the tenant's waiting opens and is not
        // held to the change rate.
        let kind = match event.action {
            Action::Close => Kind::Revocation,
            _ => Kind::AdminChange,
        };
        let (outcome, unconfirmed) = self.change_reading(
            Audited::new(tenant, kind, "source.delivery", &actor),
            // The source incident's row is in the store only.
            Reads::Store,
            |policy, w| {
                let now = self.clock.unix();
                let row = self
                    .store
                    .source_incident(tenant, &source.name, &event.incident_id)?
                    .unwrap_or_else(|| {
                        SourceIncident::new(tenant, &source.name, &event.incident_id)
                    });
                let known = row.known(&event.delivery_id, |id| {
                    policy.incident(tenant, id).is_some_and(Incident::is_open)
                });
                let mut decision = rules::decide(event, &source.rules, &source.name, &known);
                let mut incidents = Vec::new();
                let mut grants = Vec::new();
                match &decision {
                    Decision::Open {
                        id,
                        assign,
                        scopes,
                        severity,
                        max_lifetime_secs,
                    } => {
                        let incident = Incident {
                            tenant: tenant.to_owned(),
                            id: id.clone(),
                            title: event.title.clone().unwrap_or_else(|| {
                                format!("{} incident {}", source.kind.as_str(), event.incident_id)
                            }),
                            severity: *severity,
                            assigned: assign.clone(),
                            scopes: scopes.clone(),
                            state: IncidentState::Open,
                            opened_by: actor.clone(),
                            opened_at: now,
                            closed_by: None,
                            closed_at: None,
                            max_lifetime_secs: max_lifetime_secs
                                .unwrap_or(crate::policy::DEFAULT_INCIDENT_LIFETIME_SECS)
                                .min(ceiling_secs),
                            source: Some(IncidentSource {
                                name: source.name.clone(),
                                kind: source.kind.as_str().to_owned(),
                                incident_id: event.incident_id.clone(),
                                url: event.url.clone(),
                            }),
                        };
                        let admitted = incident
                            .validate()
                            .map_err(RegistryError::from)
                            .and_then(|()| self.admit_incident(policy, incident));
                        match admitted {
                            Ok(incident) => incidents.push(incident),
                            // Over a limit: nothing is kept, so the source's retry is
                            // decided afresh.
                            Err(e @ RegistryError::RateLimited(_)) => return Err(e),
                            Err(e) => decision = Decision::Refused(e.to_string()),
                        }
                    }
                    Decision::Close { id } => {
                        let current = find_incident(policy, &self.store, tenant, id)?;
                        let reason =
                            format!("closed in {} (incident {})", source.name, event.incident_id);
                        let (closed, ended) = close(policy, current, &actor, &reason, now);
                        incidents.push(closed);
                        grants = ended;
                    }
                    Decision::Severity { id, severity } => {
                        let mut changed = find_incident(policy, &self.store, tenant, id)?.clone();
                        changed.severity = *severity;
                        incidents.push(changed);
                    }
                    Decision::Duplicate
                    | Decision::Tombstone
                    | Decision::Refused(_)
                    | Decision::Nothing(_) => {}
                }
                let (kind, action) = source_action(&decision);
                // An event that names no incident (PagerDuty's service events, say) is
                // recorded and kept nowhere.
                let next = match event.incident_id.is_empty() {
                    true => None,
                    false => row.after(&event.delivery_id, &decision),
                };
                let filed = next.as_ref().unwrap_or(&row).timeline_id(&source.name);
                let detail = serde_json::json!({
                    "name": source.name,
                    "kind": source.kind.as_str(),
                    "incident_id": event.incident_id,
                    "url": event.url,
                    "delivery_id": event.delivery_id,
                    "service": event.service,
                    "severity": event.severity,
                    "decision": decision_text(&decision),
                });
                w.put_source_changes(
                    kind,
                    action,
                    filed.as_deref(),
                    detail,
                    next.as_ref(),
                    &incidents,
                    &grants,
                )?;
                // A duplicate, a refusal, a tombstone or nothing to do: recorded (and
                // the delivery kept), but the policy is as it was.
                let edit = match incidents.is_empty() && grants.is_empty() {
                    true => Edit::Unchanged,
                    false => Edit::Changed,
                };
                apply(policy, &incidents, &grants);
                Ok((
                    SourceOutcome {
                        decision,
                        incident: filed,
                        unconfirmed: Vec::new(),
                    },
                    edit,
                ))
            },
        )?;
        Ok(SourceOutcome {
            unconfirmed,
            ..outcome
        })
    }

    /// Closes an incident for good: its pending and active grants end with it, all in one
    /// durable write before the new policy is published, and no signature for it is in
    /// flight once this returns.
    pub fn close_incident(
        &self,
        tenant: &str,
        id: &str,
        by: &str,
        now: i64,
    ) -> Result<Incident, RegistryError> {
        Ok(self.close_incident_confirmed(tenant, id, by, now)?.0)
    }

    /// [`Self::close_incident`], with the replicas that did not confirm it.
    pub fn close_incident_confirmed(
        &self,
        tenant: &str,
        id: &str,
        by: &str,
        now: i64,
    ) -> Result<(Incident, Vec<String>), RegistryError> {
        self.change_confirmed(
            Audited::new(tenant, Kind::Revocation, "incident.close", by),
            |policy, w| {
                let current = find_incident(policy, &self.store, tenant, id)?;
                if !current.is_open() {
                    return Err(RegistryError::AlreadyClosed(id.into()));
                }
                let (closed, ended) = close(policy, current, by, "incident closed", now);
                w.put_policy_changes(std::slice::from_ref(&closed), &ended)?;
                apply(policy, std::slice::from_ref(&closed), &ended);
                Ok(closed)
            },
        )
    }

    /// Extends an open incident's maximum lifetime by `by_secs`, never past `ceiling_secs`
    /// of total lifetime (config `max_incident_lifetime`).
    pub fn extend_incident(
        &self,
        tenant: &str,
        id: &str,
        by_secs: u64,
        ceiling_secs: u64,
        by: &str,
        now: i64,
    ) -> Result<Incident, RegistryError> {
        self.change(
            Audited::new(tenant, Kind::AdminChange, "incident.extend", by),
            |policy, w| {
                let current = find_incident(policy, &self.store, tenant, id)?;
                if !current.is_open() {
                    return Err(RegistryError::AlreadyClosed(id.into()));
                }
                let extended = current.extended(by_secs, ceiling_secs, now)?;
                w.put_policy_changes(std::slice::from_ref(&extended), &[])?;
                apply(policy, std::slice::from_ref(&extended), &[]);
                Ok(extended)
            },
        )
    }

    /// Files a remediation grant request. `requested_by` is the operator's name or the
    /// requesting agent's SPIFFE ID, with the uid that asked when known. Refused when the
    /// incident already has `limits.pending_per_incident` pending requests, or the agent
    /// filed `limits.per_agent_per_hour` in the last hour.
    pub fn request_grant<'a>(
        &self,
        tenant: &str,
        request: GrantRequest,
        requested_by: impl Into<Principal<'a>>,
        now: i64,
    ) -> Result<Grant, RegistryError> {
        let requested_by = requested_by.into();
        let id = format!("g-{}", random_hex(6)?);
        self.change(Audited::new(tenant, Kind::AdminChange, "grant.request", requested_by.name), |policy, w| {
            let incident = find_incident(policy, &self.store, tenant, &request.incident)?;
            let profile = policy.profile(tenant, &request.agent);
            let remediation = profile.is_some_and(|p| !p.service && p.bands.contains(&writ_verifier::Band::Remediation));
            let pending = policy
                .grants
                .values()
                .filter(|g| g.tenant == tenant && g.incident == request.incident && g.state == GrantState::Pending)
                .count();
            let limits = &policy.rules;
            if pending >= limits.pending_per_incident {
                return Err(RegistryError::RateLimited(format!(
                    "incident {:?} already has {pending} pending grant requests (limit {}): decide those first",
                    request.incident, limits.pending_per_incident
                )));
            }
            let recent = policy
                .grants
                .values()
                .filter(|g| g.tenant == tenant && g.agent == request.agent && now - g.requested_at < 3600)
                .count();
            if recent >= limits.per_agent_per_hour {
                return Err(RegistryError::RateLimited(format!(
                    "agent {:?} filed {recent} grant requests in the last hour (limit {})",
                    request.agent, limits.per_agent_per_hour
                )));
            }
            let grant = grant::new_grant(&policy.rules, request.clone(), incident, remediation, requested_by, id.clone(), now)?;
            w.put_policy_changes(&[], std::slice::from_ref(&grant))?;
            apply(policy, &[], std::slice::from_ref(&grant));
            Ok(grant)
        })
    }

    /// Records an approval of `digest` by `approver` (with the uid they act as, when
    /// known); at quorum the grant goes active and its agent's workloads receive the
    /// remediation identity.
    pub fn approve_grant<'a>(
        &self,
        tenant: &str,
        id: &str,
        approver: impl Into<Principal<'a>>,
        digest: &str,
        approval_ttl: i64,
        now: i64,
    ) -> Result<Grant, RegistryError> {
        let approver = approver.into();
        self.change(
            Audited::new(tenant, Kind::Approval, "grant.approve", approver.name),
            |policy, w| {
                let grant = find_grant(policy, &self.store, tenant, id)?;
                let incident = find_incident(policy, &self.store, tenant, &grant.incident)?;
                let next = grant::approve(
                    &policy.rules,
                    grant,
                    incident,
                    approver,
                    digest,
                    approval_ttl,
                    now,
                )?;
                w.put_policy_changes(&[], std::slice::from_ref(&next))?;
                apply(policy, &[], std::slice::from_ref(&next));
                Ok(next)
            },
        )
    }

    /// Denies a pending grant, or revokes a pending or active one.
    pub fn end_grant(
        &self,
        tenant: &str,
        id: &str,
        state: GrantState,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<Grant, RegistryError> {
        Ok(self
            .end_grant_confirmed(tenant, id, state, by, reason, now)?
            .0)
    }

    /// [`Self::end_grant`], with the replicas that did not confirm it.
    pub fn end_grant_confirmed(
        &self,
        tenant: &str,
        id: &str,
        state: GrantState,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<(Grant, Vec<String>), RegistryError> {
        self.change_confirmed(
            Audited::new(
                tenant,
                Kind::Revocation,
                if state == GrantState::Denied {
                    "grant.deny"
                } else {
                    "grant.revoke"
                },
                by,
            ),
            |policy, w| {
                let next = grant::end(
                    find_grant(policy, &self.store, tenant, id)?,
                    state,
                    by,
                    reason,
                    now,
                )?;
                w.put_policy_changes(&[], std::slice::from_ref(&next))?;
                apply(policy, &[], std::slice::from_ref(&next));
                Ok(next)
            },
        )
    }

    /// Withdraws the approvals of operators who are no longer configured: a pending
    /// grant loses them; an active grant that no longer has its quorum is revoked.
    /// Returns the grants that changed.
    pub fn withdraw_approvals(
        &self,
        is_operator: impl Fn(&str, &str) -> bool,
        now: i64,
    ) -> Result<Vec<Grant>, RegistryError> {
        let stale = |g: &Grant| {
            matches!(g.state, GrantState::Pending | GrantState::Active)
                && g.approvals.iter().any(|a| !is_operator(&g.tenant, &a.by))
        };
        // One change per tenant with something to withdraw: a record never spans tenants.
        let tenants: std::collections::BTreeSet<String> = self
            .snapshot()
            .grants
            .values()
            .filter(|g| stale(g))
            .map(|g| g.tenant.clone())
            .collect();
        let mut all = Vec::new();
        for tenant in &tenants {
            all.extend(self.withdraw_approvals_in(tenant, &is_operator, now)?);
        }
        Ok(all)
    }

    /// [`Self::withdraw_approvals`] in one tenant.
    fn withdraw_approvals_in(
        &self,
        tenant: &str,
        is_operator: &impl Fn(&str, &str) -> bool,
        now: i64,
    ) -> Result<Vec<Grant>, RegistryError> {
        let is_operator = |name: &str| is_operator(tenant, name);
        self.change(
            Audited::new(tenant, Kind::Revocation, "grant.withdraw_approvals", "writ"),
            |policy, w| {
                let mut changed = Vec::new();
                for g in policy.grants.values().filter(|g| g.tenant == tenant) {
                    if !matches!(g.state, GrantState::Pending | GrantState::Active) {
                        continue;
                    }
                    let removed: Vec<String> = g
                        .approvals
                        .iter()
                        .filter(|a| !is_operator(&a.by))
                        .map(|a| a.by.clone())
                        .collect();
                    if removed.is_empty() {
                        continue;
                    }
                    let mut next = g.clone();
                    next.approvals.retain(|a| is_operator(&a.by));
                    let holds = policy
                        .incident(&g.tenant, &g.incident)
                        .is_some_and(|i| grant::still_approved(&policy.rules, i.severity, &next));
                    if next.state == GrantState::Active && !holds {
                        let reason = format!("approver removed: {}", removed.join(", "));
                        next = grant::end(&next, GrantState::Revoked, "writ", &reason, now)?;
                    }
                    changed.push(next);
                }
                w.put_policy_changes(&[], &changed)?;
                apply(policy, &[], &changed);
                Ok(changed)
            },
        )
    }

    /// Creates a guardrail playbook, pending its quorum. Names are never reused, even after
    /// retiring: SVIDs carry them.
    pub fn create_playbook(&self, playbook: Playbook) -> Result<Playbook, RegistryError> {
        playbook.validate()?;
        let by = playbook.created_by.clone();
        let tenant = playbook.tenant.clone();
        self.change(
            Audited::new(&tenant, Kind::AdminChange, "playbook.create", &by),
            |policy, w| {
                active_tenant(policy, &playbook.tenant)?;
                if policy.playbooks.contains_key(&playbook.key()) {
                    return Err(RegistryError::AlreadyExists {
                        what: "playbook",
                        name: playbook.name.clone(),
                    });
                }
                let mut playbook = playbook;
                playbook.state = PlaybookState::Pending;
                playbook.approvals.clear();
                playbook.retired = None;
                w.put_playbook(&playbook)?;
                policy.playbooks.insert(playbook.key(), playbook.clone());
                Ok(playbook)
            },
        )
    }

    /// Records `approver`'s approval of a playbook's `digest`; at quorum it may be
    /// activated.
    pub fn approve_playbook(
        &self,
        tenant: &str,
        name: &str,
        approver: &str,
        digest: &str,
        now: i64,
    ) -> Result<Playbook, RegistryError> {
        self.change(
            Audited::new(tenant, Kind::Approval, "playbook.approve", approver),
            |policy, w| {
                let next =
                    playbook::approve(find_playbook(policy, tenant, name)?, approver, digest, now)?;
                w.put_playbook(&next)?;
                policy.playbooks.insert(next.key(), next.clone());
                Ok(next)
            },
        )
    }

    /// Activates an approved playbook for an open incident: a remediation grant, active at
    /// once, whose agent's workloads receive the identity.
    pub fn activate_playbook(
        &self,
        tenant: &str,
        name: &str,
        incident: &str,
        request: ActivationRequest,
        activator: &str,
        now: i64,
    ) -> Result<Grant, RegistryError> {
        let id = format!("g-{}", random_hex(6)?);
        self.change(
            Audited::new(tenant, Kind::Approval, "playbook.activate", activator),
            |policy, w| {
                let book = find_playbook(policy, tenant, name)?;
                let incident = find_incident(policy, &self.store, tenant, incident)?;
                let profile = policy.profile(tenant, &request.agent);
                let grant = playbook::activate(
                    &policy.rules,
                    book,
                    incident,
                    profile,
                    request,
                    activator,
                    now,
                    id,
                    policy.grants.values().filter(|g| g.tenant == tenant),
                )?;
                w.put_policy_changes(&[], std::slice::from_ref(&grant))?;
                apply(policy, &[], std::slice::from_ref(&grant));
                Ok(grant)
            },
        )
    }

    /// Retires a playbook for good; its active activations are revoked in the same write.
    /// Returns the playbook and the grants revoked.
    pub fn retire_playbook(
        &self,
        tenant: &str,
        name: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<(Playbook, Vec<Grant>), RegistryError> {
        self.change(
            Audited::new(tenant, Kind::Revocation, "playbook.retire", by),
            |policy, w| {
                let next = playbook::retire(find_playbook(policy, tenant, name)?, by, reason, now)?;
                let ended = playbook::end_activations(
                    policy.grants.values().filter(|g| g.tenant == tenant),
                    name,
                    by,
                    now,
                );
                w.put_playbook_changes(std::slice::from_ref(&next), &ended)?;
                policy.playbooks.insert(next.key(), next.clone());
                apply(policy, &[], &ended);
                Ok((next, ended))
            },
        )
    }

    /// Withdraws the playbook approvals of operators who are no longer configured: a
    /// playbook that loses its quorum is pending again. Returns the playbooks that changed.
    /// (Activations are checked by [`Registry::withdraw_approvals`].)
    pub fn withdraw_playbook_approvals(
        &self,
        is_operator: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<Playbook>, RegistryError> {
        // One change per tenant with something to withdraw: a record never spans tenants.
        let tenants: std::collections::BTreeSet<String> = self
            .snapshot()
            .playbooks
            .values()
            .filter(|p| {
                playbook::without_approvers(p, |name: &str| is_operator(&p.tenant, name)).is_some()
            })
            .map(|p| p.tenant.clone())
            .collect();
        let mut all = Vec::new();
        for tenant in &tenants {
            all.extend(self.withdraw_playbook_approvals_in(tenant, &is_operator)?);
        }
        Ok(all)
    }

    /// [`Self::withdraw_playbook_approvals`] in one tenant.
    fn withdraw_playbook_approvals_in(
        &self,
        tenant: &str,
        is_operator: &impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<Playbook>, RegistryError> {
        let is_operator = |name: &str| is_operator(tenant, name);
        self.change(
            Audited::new(
                tenant,
                Kind::Revocation,
                "playbook.withdraw_approvals",
                "writ",
            ),
            |policy, w| {
                let changed: Vec<Playbook> = policy
                    .playbooks
                    .values()
                    .filter(|p| p.tenant == tenant)
                    .filter_map(|p| playbook::without_approvers(p, is_operator))
                    .collect();
                w.put_playbook_changes(&changed, &[])?;
                for p in &changed {
                    policy.playbooks.insert(p.key(), p.clone());
                }
                Ok(changed)
            },
        )
    }

    /// Revokes one X.509-SVID by serial (docs/architecture.md, "Revocation"): the
    /// certificate must be one writ issued and not yet expired. The entry is durable before
    /// the new policy is published, and no signature is in flight once this returns; the
    /// identity itself stays entitled, so its holder is issued a fresh SVID. `tenant` is
    /// the tenant whose identity the serial is (the caller checked it).
    pub fn revoke_serial(
        &self,
        tenant: &str,
        serial: &Serial,
        by: &str,
        now: i64,
    ) -> Result<RevokedSerial, RegistryError> {
        Ok(self.revoke_serial_confirmed(tenant, serial, by, now)?.0)
    }

    /// [`Self::revoke_serial`], with the replicas that did not confirm it.
    pub fn revoke_serial_confirmed(
        &self,
        tenant: &str,
        serial: &Serial,
        by: &str,
        now: i64,
    ) -> Result<(RevokedSerial, Vec<String>), RegistryError> {
        self.change_confirmed(
            Audited::new(tenant, Kind::Revocation, "svid.revoke", by),
            |policy, w| {
                let record =
                    self.store
                        .svid(serial.as_str())?
                        .ok_or_else(|| RegistryError::NotFound {
                            what: "serial",
                            name: serial.to_string(),
                        })?;
                let spiffe_id = writ_verifier::parse_spiffe_id(&record.spiffe_id).map_err(|e| {
                    StoreError::Corrupt {
                        table: "svids",
                        reason: e.to_string(),
                    }
                })?;
                let issued = Issued {
                    serial,
                    spiffe_id: &spiffe_id,
                    not_after: record.not_after,
                };
                let entry = serial::revoke(policy, issued, by, now)?;
                w.put_policy_and_serial_changes(&[], &[], std::slice::from_ref(&entry), &[])?;
                policy
                    .revoked_serials
                    .insert(entry.serial.clone(), entry.clone());
                Ok(entry)
            },
        )
    }

    /// The next instant something runs out (a grant window, an incident's lifetime, a
    /// revoked serial's certificate).
    pub fn next_deadline(&self) -> Option<i64> {
        deadlines(&self.snapshot()).min()
    }

    /// Ends what has run out by `now`: active grants past their window expire; incidents
    /// past their maximum lifetime close themselves, with their grants; revoked serials
    /// whose certificates have expired are pruned. One change per tenant with something
    /// due, so no record spans tenants (a serial is its trust domain's tenant, in a
    /// deployment whose own base is `base`). Returns whether anything changed.
    pub fn expire_due(&self, base: &TrustDomain, now: i64) -> Result<bool, RegistryError> {
        let policy = self.snapshot();
        if !deadlines(&policy).any(|at| at <= now) {
            return Ok(false);
        }
        let mut due: std::collections::BTreeSet<String> = policy
            .incidents
            .values()
            .filter(|i| i.is_open() && i.opened_at + i.max_lifetime_secs as i64 <= now)
            .map(|i| i.tenant.clone())
            .collect();
        due.extend(
            policy
                .grants
                .values()
                .filter(|g| {
                    g.state == GrantState::Active && g.expires_at.is_some_and(|at| at <= now)
                })
                .map(|g| g.tenant.clone()),
        );
        due.extend(
            serial::expired(&policy, now)
                .iter()
                .filter_map(|s| policy.revoked_serials.get(s))
                .map(|r| serial_tenant(&policy, base, r)),
        );
        drop(policy);
        for tenant in &due {
            self.expire_due_in(tenant, base, now)?;
        }
        Ok(!due.is_empty())
    }

    /// [`Self::expire_due`] in one tenant.
    fn expire_due_in(
        &self,
        tenant: &str,
        base: &TrustDomain,
        now: i64,
    ) -> Result<(), RegistryError> {
        self.change(Audited::new(tenant, Kind::Revocation, "expire", "writ"), |policy, w| {
            let mut incidents = Vec::new();
            let mut grants = Vec::new();
            for incident in policy.incidents.values().filter(|i| i.tenant == tenant && i.is_open()) {
                if incident.opened_at + incident.max_lifetime_secs as i64 <= now {
                    let (closed, ended) = close(policy, incident, "writ", "incident reached its maximum lifetime", now);
                    incidents.push(closed);
                    grants.extend(ended);
                }
            }
            for g in policy.grants.values().filter(|g| g.tenant == tenant) {
                if g.state == GrantState::Active
                    && g.expires_at.is_some_and(|at| at <= now)
                    && !grants.iter().any(|e: &Grant| e.key() == g.key())
                    && let Ok(expired) = grant::end(g, GrantState::Expired, "writ", "window ended", now)
                {
                    grants.push(expired);
                }
            }
            let pruned: Vec<String> = serial::expired(policy, now)
                .into_iter()
                .filter(|s| {
                    policy
                        .revoked_serials
                        .get(s)
                        .is_some_and(|r| serial_tenant(policy, base, r) == tenant)
                })
                .collect();
            w.put_policy_and_serial_changes(&incidents, &grants, &[], &pruned)?;
            for i in &incidents {
                tracing::info!(tenant = %i.tenant, incident = %i.id, "incident reached its maximum lifetime and closed");
            }
            apply(policy, &incidents, &grants);
            for s in &pruned {
                policy.revoked_serials.remove(s);
            }
            Ok(())
        })
    }
}

/// The tenant a revoked serial's certificate belongs to: its trust domain's, in a
/// deployment whose own base is `base` (the default tenant for the deployment's own, or
/// for a trust domain no tenant has).
fn serial_tenant(policy: &PolicySnapshot, base: &TrustDomain, revoked: &RevokedSerial) -> String {
    crate::policy::tenant_of_trust_domain(policy, base, &revoked.trust_domain)
        .map_or_else(|| DEFAULT_TENANT.to_owned(), |(tenant, _)| tenant)
}

/// `bytes` random bytes as hex, for new ids. Fails rather than hand out a predictable
/// (all-zero) id when the operating system has no randomness.
fn random_hex(bytes: usize) -> Result<String, RegistryError> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| RegistryError::NoRandomness)?;
    Ok(crate::hex::lower(&buf))
}

/// A live grant. One that ended longer ago than the live window is only in the store
/// ([`crate::policy::live`]): it is refused as not pending, as it always was.
fn find_grant<'a>(
    policy: &'a PolicySnapshot,
    store: &Store,
    tenant: &str,
    id: &str,
) -> Result<&'a Grant, RegistryError> {
    if let Some(grant) = policy.grant(tenant, id) {
        return Ok(grant);
    }
    match store.grant(tenant, id)? {
        Some(ended) => Err(GrantError::NotPending {
            id: ended.id,
            state: ended.state,
        }
        .into()),
        None => Err(RegistryError::NotFound {
            what: "grant",
            name: id.chars().take(64).collect(),
        }),
    }
}

/// A live incident. One closed longer ago than the live window is only in the store
/// ([`crate::policy::live`]): it is refused as closed, as it always was.
fn find_incident<'a>(
    policy: &'a PolicySnapshot,
    store: &Store,
    tenant: &str,
    id: &str,
) -> Result<&'a Incident, RegistryError> {
    if let Some(incident) = policy.incident(tenant, id) {
        return Ok(incident);
    }
    match store.incident(tenant, id)? {
        Some(closed) => Err(RegistryError::AlreadyClosed(closed.id)),
        None => Err(RegistryError::NotFound {
            what: "incident",
            name: id.chars().take(64).collect(),
        }),
    }
}

fn find_playbook<'a>(
    policy: &'a PolicySnapshot,
    tenant: &str,
    name: &str,
) -> Result<&'a Playbook, RegistryError> {
    policy
        .playbook(tenant, name)
        .ok_or_else(|| RegistryError::NotFound {
            what: "playbook",
            name: name.chars().take(64).collect(),
        })
}

/// Refuses a change that would add to a disabled tenant (closing and revoking in it
/// stay possible). The caller's tenant was checked to exist when the call was authorized.
fn active_tenant(policy: &PolicySnapshot, tenant: &str) -> Result<(), RegistryError> {
    match policy.tenants.get(tenant) {
        Some(t) if !t.is_active() => Err(RegistryError::TenantDisabled(tenant.to_owned())),
        _ => Ok(()),
    }
}

/// `incident` closed by `by`, and its pending and active grants revoked with `reason`:
/// what every close writes in one change (an operator's, the lifetime's, a tenant's
/// disabling).
fn close(
    policy: &PolicySnapshot,
    incident: &Incident,
    by: &str,
    reason: &str,
    now: i64,
) -> (Incident, Vec<Grant>) {
    let mut closed = incident.clone();
    closed.state = IncidentState::Closed;
    closed.closed_by = Some(by.into());
    closed.closed_at = Some(now);
    let ended = policy
        .grants
        .values()
        .filter(|g| g.tenant == incident.tenant && g.incident == incident.id)
        .filter_map(|g| grant::end(g, GrantState::Revoked, by, reason, now).ok())
        .collect();
    (closed, ended)
}

fn apply(policy: &mut PolicySnapshot, incidents: &[Incident], grants: &[Grant]) {
    for i in incidents {
        policy.incidents.insert(i.key(), Arc::new(i.clone()));
    }
    for g in grants {
        policy.grants.insert(g.key(), g.clone());
    }
}

/// What one delivery did, for the source's answer.
#[derive(Debug)]
pub struct SourceOutcome {
    /// The decision, as applied (an open the registry refused is `Refused`).
    pub decision: Decision,
    /// The writ incident its record is filed under, if any.
    pub incident: Option<String>,
    /// Replicas that did not confirm a close (their leases ran out instead).
    pub unconfirmed: Vec<String>,
}

/// The kind and action of a delivery's audit record: an open or close reads as any
/// other in `writ incident timeline`.
fn source_action(decision: &Decision) -> (Kind, &'static str) {
    match decision {
        Decision::Open { .. } => (Kind::AdminChange, "incident.open"),
        Decision::Close { .. } => (Kind::Revocation, "incident.close"),
        Decision::Severity { .. } => (Kind::AdminChange, "incident.severity"),
        Decision::Tombstone => (Kind::AdminChange, "source.tombstone"),
        Decision::Duplicate => (Kind::Refusal, "source.duplicate"),
        Decision::Refused(_) => (Kind::Refusal, "source.refused"),
        Decision::Nothing(_) => (Kind::AdminChange, "source.ignored"),
    }
}

/// A decision in a few words, for its record and the source's answer.
pub fn decision_text(decision: &Decision) -> String {
    match decision {
        Decision::Open { id, .. } => format!("opened {id}"),
        Decision::Close { id } => format!("closed {id}"),
        Decision::Severity { id, severity } => format!("{id} is now {severity}"),
        Decision::Tombstone => "ended before it was opened: a late open will open nothing".into(),
        Decision::Duplicate => "delivery already handled".into(),
        Decision::Refused(why) => format!("refused: {why}"),
        Decision::Nothing(why) => format!("nothing to do: {why}"),
    }
}

fn deadlines(policy: &PolicySnapshot) -> impl Iterator<Item = i64> + '_ {
    let incidents = policy
        .incidents
        .values()
        .filter(|i| i.is_open())
        .map(|i| i.opened_at + i.max_lifetime_secs as i64);
    let grants = policy
        .grants
        .values()
        .filter(|g| g.state == GrantState::Active)
        .filter_map(|g| g.expires_at);
    incidents.chain(grants).chain(serial::next_prune(policy))
}

/// A snapshot's generation from the shared policy version it reflects: the same number on
/// every server, so an agent moving between servers never sees it go back.
fn generation_of(version: u64) -> u64 {
    version.saturating_add(1)
}

/// Whether a lease that runs until `until` still lets a server sign at `now`.
fn lease_holds(until: Option<std::time::Instant>, now: std::time::Instant) -> bool {
    until.is_some_and(|until| now < until)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::Severity;
    use crate::policy::grant::RemediationRules;
    use std::collections::BTreeSet;
    use writ_verifier::Band;

    /// A registry over `store` under the default rules, auditing to a log in `dir`.
    fn load(store: Arc<Store>, dir: &std::path::Path) -> Registry {
        load_at(store, dir, Arc::new(crate::clock::ManualClock::at(0)))
    }

    /// [`load`], telling time by `clock`.
    fn load_at(store: Arc<Store>, dir: &std::path::Path, clock: SharedClock) -> Registry {
        let audit = AuditLog::open(&dir.join("audit.redb"), dir, "example.org/writ-audit");
        Registry::load(
            store,
            RemediationRules::default(),
            Arc::new(audit.unwrap()),
            clock,
            crate::ca::CaConfig::default().max_svid_ttl,
        )
        .unwrap()
    }

    /// [`load`] over the store at `path`, its audit log beside it.
    fn open(path: &std::path::Path) -> Registry {
        load(Arc::new(Store::open(path).unwrap()), path.parent().unwrap())
    }

    /// A profile `triage` that may remediate, and INC-1 open for it since time 0.
    fn remediable_incident(registry: &Registry) {
        registry
            .create_profile(
                Profile {
                    tenant: "default".into(),
                    name: "triage".into(),
                    selectors: BTreeSet::from(["unix:uid:1".parse().unwrap()]),
                    bands: BTreeSet::from([Band::Investigative, Band::Remediation]),
                    scopes: BTreeSet::new(),
                    service: false,
                    created_at: 0,
                },
                "op",
            )
            .unwrap();
        let mut inc = incident("INC-1");
        inc.opened_at = 0;
        registry.open_incident(inc).unwrap();
    }

    fn incident(id: &str) -> Incident {
        Incident {
            tenant: "default".into(),
            id: id.into(),
            title: "db down".into(),
            severity: Severity::Sev2,
            assigned: BTreeSet::from(["triage".to_string()]),
            scopes: BTreeSet::new(),
            state: IncidentState::Open,
            opened_by: "root".into(),
            opened_at: 1,
            closed_by: None,
            closed_at: None,
            max_lifetime_secs: 3600,
            source: None,
        }
    }

    #[test]
    fn a_tenant_over_its_limits_is_refused_and_its_revocations_still_go_through() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::clock::ManualClock::at(1_000));
        let store = Arc::new(Store::open(&dir.path().join("writ.redb")).unwrap());
        let registry = load_at(store, dir.path(), clock.clone())
            .with_tenant_limits(tenant::TenantLimits {
                changes_per_second: 1,
                change_burst: 3,
                max_open_incidents: 2,
                ..tenant::TenantLimits::default()
            })
            .unwrap();
        registry.open_incident(incident("INC-1")).unwrap();
        registry.open_incident(incident("INC-2")).unwrap();
        // A third open incident is over the cap (and spends the last token).
        let over = registry.open_incident(incident("INC-3")).unwrap_err();
        assert!(
            matches!(&over, RegistryError::RateLimited(m) if m.contains("max_open_incidents")),
            "{over}"
        );
        assert!(
            registry.incident("default", "INC-3").unwrap().is_none(),
            "nothing written"
        );
        // Closing is never limited, even with no token left.
        registry
            .close_incident("default", "INC-1", "root", 1_000)
            .unwrap();
        let spam = registry.open_incident(incident("INC-4")).unwrap_err();
        assert!(
            matches!(&spam, RegistryError::RateLimited(m) if m.contains("changes_per_second = 1")),
            "{spam}"
        );
        assert!(
            registry.incident("default", "INC-4").unwrap().is_none(),
            "nothing written"
        );
        assert_eq!(
            tonic::Status::from(spam).code(),
            tonic::Code::ResourceExhausted
        );
        // A second later the tenant has one change again.
        clock.advance(std::time::Duration::from_secs(1));
        registry.open_incident(incident("INC-4")).unwrap();
        registry
            .close_incident("default", "INC-2", "root", 1_001)
            .unwrap();
    }

    /// A delivery of `action` from source "pd" for its incident `Q1`.
    fn delivery(id: &str, action: crate::sources::Action, severity: &str) -> SourceEvent {
        SourceEvent {
            source: crate::sources::SourceKind::PagerDuty,
            delivery_id: id.into(),
            incident_id: "Q1".into(),
            action,
            service: Some("PSVC".into()),
            severity: Some(severity.into()),
            title: Some("checkout 502s".into()),
            url: Some("https://pd.example/incidents/Q1".into()),
        }
    }

    fn pd_source() -> Source {
        Source {
            name: "pd".into(),
            kind: crate::sources::SourceKind::PagerDuty,
            path: "/pd".into(),
            secrets: Vec::new(),
            tenant: "default".into(),
            rules: vec![rules::Rule {
                service: "*".into(),
                assign: ["triage".to_owned()].into(),
                scopes: Default::default(),
                severity: [("P1".to_owned(), crate::policy::Severity::Sev1)].into(),
                default_severity: crate::policy::Severity::Sev3,
                max_lifetime: None,
            }],
            tolerance_secs: 300,
        }
    }

    #[test]
    fn source_deliveries_open_change_severity_and_close_and_limits_keep_nothing() {
        use crate::sources::Action;
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::clock::ManualClock::at(1_000));
        let store = Arc::new(Store::open(&dir.path().join("writ.redb")).unwrap());
        let registry = load_at(Arc::clone(&store), dir.path(), clock.clone())
            .with_tenant_limits(tenant::TenantLimits {
                changes_per_second: 1,
                change_burst: 2,
                ..tenant::TenantLimits::default()
            })
            .unwrap();
        let pd = pd_source();
        let ceiling = 3600;
        let opened = registry
            .apply_source_event(&pd, &delivery("d1", Action::Open, "P3"), ceiling)
            .unwrap();
        assert_eq!(opened.incident.as_deref(), Some("pd-Q1"));
        let incident = registry.incident("default", "pd-Q1").unwrap().unwrap();
        assert_eq!(incident.severity, crate::policy::Severity::Sev3);
        // The rule names no lifetime: writ's default, held to the ceiling.
        assert_eq!(incident.max_lifetime_secs, 3600);
        assert_eq!(incident.opened_by, "source:pd");
        assert_eq!(incident.source.as_ref().unwrap().incident_id, "Q1");
        // A priority change is a change like any other: the second token.
        let changed = registry
            .apply_source_event(&pd, &delivery("d2", Action::Severity, "P1"), ceiling)
            .unwrap();
        assert!(matches!(changed.decision, Decision::Severity { .. }));
        let incident = registry.incident("default", "pd-Q1").unwrap().unwrap();
        assert_eq!(incident.severity, crate::policy::Severity::Sev1);
        // Out of tokens: refused and nothing kept, so the retry is decided afresh.
        let limited = registry
            .apply_source_event(&pd, &delivery("d3", Action::Severity, "P3"), ceiling)
            .unwrap_err();
        assert!(
            matches!(limited, RegistryError::RateLimited(_)),
            "{limited}"
        );
        let row = store
            .source_incident("default", "pd", "Q1")
            .unwrap()
            .unwrap();
        assert_eq!(row.deliveries, ["d1", "d2"]);
        // A close is never held to the rate.
        let closed = registry
            .apply_source_event(&pd, &delivery("d4", Action::Close, "P1"), ceiling)
            .unwrap();
        assert_eq!(closed.decision, Decision::Close { id: "pd-Q1".into() });
        assert!(
            !registry
                .incident("default", "pd-Q1")
                .unwrap()
                .unwrap()
                .is_open()
        );
        // An id an operator already used by hand is refused, not taken over.
        clock.advance(std::time::Duration::from_secs(5));
        let mut by_hand = incident.clone();
        by_hand.id = "pd-Q2".into();
        by_hand.source = None;
        registry.open_incident(by_hand).unwrap();
        let mut q2 = delivery("d5", Action::Open, "P1");
        q2.incident_id = "Q2".into();
        let refused = registry.apply_source_event(&pd, &q2, ceiling).unwrap();
        assert!(
            matches!(&refused.decision, Decision::Refused(why) if why.contains("already exists")),
            "{:?}",
            refused.decision
        );
        assert_eq!(
            registry
                .incident("default", "pd-Q2")
                .unwrap()
                .unwrap()
                .source,
            None
        );
    }

    #[test]
    fn source_deliveries_that_change_nothing_publish_no_new_policy() {
        use crate::sources::Action;
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::clock::ManualClock::at(1_000));
        let store = Arc::new(Store::open(&dir.path().join("writ.redb")).unwrap());
        let registry = load_at(Arc::clone(&store), dir.path(), clock);
        let pd = pd_source();
        let ceiling = 3600;
        let mut watcher = registry.subscribe();
        let _ = watcher.borrow_and_update();
        let before = registry.snapshot();
        registry
            .apply_source_event(&pd, &delivery("d1", Action::Open, "P3"), ceiling)
            .unwrap();
        let opened = registry.snapshot();
        assert!(!Arc::ptr_eq(&before, &opened));
        assert_eq!(opened.generation, before.generation + 1);
        assert!(watcher.has_changed().unwrap());
        let _ = watcher.borrow_and_update();

        // The same delivery again: recorded, and the policy stays the one published.
        let audited = registry.audit.size();
        let again = registry
            .apply_source_event(&pd, &delivery("d1", Action::Open, "P3"), ceiling)
            .unwrap();
        assert_eq!(again.decision, Decision::Duplicate);
        assert_eq!(again.incident.as_deref(), Some("pd-Q1"));
        assert!(registry.audit.size() > audited, "the duplicate is audited");
        assert!(Arc::ptr_eq(&opened, &registry.snapshot()));
        assert!(!watcher.has_changed().unwrap());

        // A second trigger for the open incident (nothing to do) and a close for one writ
        // never opened (a tombstone): both kept in the source's row, neither published.
        let audited = registry.audit.size();
        let nothing = registry
            .apply_source_event(&pd, &delivery("d2", Action::Open, "P1"), ceiling)
            .unwrap();
        assert!(matches!(nothing.decision, Decision::Nothing(_)));
        let mut ended = delivery("d3", Action::Close, "P1");
        ended.incident_id = "Q9".into();
        let tombstone = registry.apply_source_event(&pd, &ended, ceiling).unwrap();
        assert_eq!(tombstone.decision, Decision::Tombstone);
        assert!(registry.audit.size() > audited);
        let row = store
            .source_incident("default", "pd", "Q1")
            .unwrap()
            .unwrap();
        assert_eq!(row.deliveries, ["d1", "d2"]);
        let row = store
            .source_incident("default", "pd", "Q9")
            .unwrap()
            .unwrap();
        assert!(row.tombstone);
        assert_eq!(row.deliveries, ["d3"]);
        assert!(Arc::ptr_eq(&opened, &registry.snapshot()));
        assert!(!watcher.has_changed().unwrap());

        // A close changes the policy again.
        registry
            .apply_source_event(&pd, &delivery("d4", Action::Close, "P1"), ceiling)
            .unwrap();
        let closed = registry.snapshot();
        assert_eq!(closed.generation, opened.generation + 1);
        assert!(watcher.has_changed().unwrap());
    }

    #[test]
    fn closed_incidents_stay_closed_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writ.redb");
        {
            let registry = open(&path);
            let mut rx = registry.subscribe();
            registry.open_incident(incident("INC-1")).unwrap();
            assert!(rx.has_changed().unwrap());
            let _ = rx.borrow_and_update();
            registry
                .close_incident("default", "INC-1", "root", 2)
                .unwrap();
            assert!(rx.has_changed().unwrap());
            assert!(matches!(
                registry.close_incident("default", "INC-1", "root", 3),
                Err(RegistryError::AlreadyClosed(_))
            ));
        }
        let registry = open(&path);
        assert!(!registry.snapshot().incidents[&crate::policy::key("default", "INC-1")].is_open());
        assert!(matches!(
            registry.open_incident(incident("INC-1")),
            Err(RegistryError::AlreadyExists { .. })
        ));
        assert!(matches!(
            registry.close_incident("default", "nope", "root", 3),
            Err(RegistryError::NotFound { .. })
        ));
    }

    #[test]
    fn grants_and_incidents_out_of_memory_are_refused_as_they_always_were() {
        use crate::policy::grant::plan_digest;
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::clock::ManualClock::at(0);
        let registry = load_at(
            Arc::new(Store::open(&dir.path().join("w.redb")).unwrap()),
            dir.path(),
            Arc::new(clock.clone()),
        );
        remediable_incident(&registry);
        let request = GrantRequest {
            incident: "INC-1".into(),
            agent: "triage".into(),
            action: "restart".into(),
            plan: "plan".into(),
            ..GrantRequest::default()
        };
        let denied = registry
            .request_grant("default", request.clone(), "agent", 0)
            .unwrap();
        registry
            .end_grant("default", &denied.id, GrantState::Denied, "alice", "no", 1)
            .unwrap();
        registry
            .close_incident("default", "INC-1", "alice", 2)
            .unwrap();
        // Long after: the next change leaves both out of memory.
        clock.advance(std::time::Duration::from_secs(10 * 3600));
        registry.open_incident(incident("INC-2")).unwrap();
        let live = registry.snapshot();
        assert!(
            !live
                .grants
                .contains_key(&crate::policy::key("default", &denied.id))
                && !live
                    .incidents
                    .contains_key(&crate::policy::key("default", "INC-1"))
        );
        // And out of the store's live indexes, so the next start does not read them.
        let indexed: Vec<String> = registry
            .store
            .live_incidents(|_| true)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(indexed, ["INC-2"]);
        assert!(registry.store.live_grants(|_| true).unwrap().is_empty());
        assert_eq!(
            registry
                .grant("default", &denied.id)
                .unwrap()
                .unwrap()
                .state,
            GrantState::Denied
        );

        let not_pending = |r: Result<Grant, RegistryError>| {
            matches!(r, Err(RegistryError::Grant(GrantError::NotPending { .. })))
        };
        assert!(not_pending(registry.approve_grant(
            "default",
            &denied.id,
            "bob",
            &plan_digest("plan"),
            3600,
            36_000
        )));
        assert!(not_pending(registry.end_grant(
            "default",
            &denied.id,
            GrantState::Revoked,
            "bob",
            "x",
            36_000
        )));
        assert!(matches!(
            registry.request_grant("default", request, "agent", 36_000),
            Err(RegistryError::AlreadyClosed(_))
        ));
        assert!(matches!(
            registry.approve_grant("default", "g-000000000000", "bob", "d", 3600, 36_000),
            Err(RegistryError::NotFound { .. })
        ));
    }

    #[test]
    fn removing_an_approver_revokes_grants_that_lose_their_quorum() {
        use crate::policy::grant::plan_digest;
        let dir = tempfile::tempdir().unwrap();
        let registry = open(&dir.path().join("w.redb"));
        remediable_incident(&registry);
        let request = GrantRequest {
            incident: "INC-1".into(),
            agent: "triage".into(),
            action: "restart".into(),
            plan: "plan".into(),
            ..GrantRequest::default()
        };
        let g = registry
            .request_grant("default", request, "agent", 1)
            .unwrap();
        registry
            .approve_grant("default", &g.id, "alice", &plan_digest("plan"), 3600, 2)
            .unwrap();
        let active = registry
            .approve_grant("default", &g.id, "bob", &plan_digest("plan"), 3600, 3)
            .unwrap();
        assert_eq!(active.state, GrantState::Active);
        assert!(
            registry
                .withdraw_approvals(|_, _| true, 4)
                .unwrap()
                .is_empty()
        );
        let changed = registry
            .withdraw_approvals(|_, name| name != "bob", 5)
            .unwrap();
        assert_eq!(changed.len(), 1);
        let after = &registry.snapshot().grants[&crate::policy::key("default", &g.id)];
        assert_eq!(after.state, GrantState::Revoked);
        assert!(after.ended.as_ref().unwrap().reason.contains("bob"));
    }

    #[test]
    fn revoked_serials_persist_refuse_bad_requests_and_are_pruned_after_not_after() {
        use crate::store::SvidRecord;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let record = |serial: &str, not_after: i64| SvidRecord {
            serial: serial.into(),
            spiffe_id: "spiffe://investigate.example.org/agent/triage/incident/INC-1".into(),
            band: Band::Investigative,
            authority_id: "a".into(),
            incident: Some("INC-1".into()),
            grant: None,
            not_before: 0,
            not_after,
        };
        let serial = |s: &str| s.parse::<Serial>().unwrap();
        {
            let store = Arc::new(Store::open(&path).unwrap());
            store.put_svid(&record("40aa", 100)).unwrap();
            store.put_svid(&record("40bb", 50)).unwrap();
            let registry = load(Arc::clone(&store), dir.path());
            let before = registry.snapshot().generation;
            for (s, now) in [("40cc", 10), ("40bb", 51)] {
                let refused = registry.revoke_serial("default", &serial(s), "alice", now);
                assert!(
                    matches!(
                        refused,
                        Err(RegistryError::NotFound { .. }
                            | RegistryError::Serial(SerialError::Expired { .. }))
                    ),
                    "{s}: {refused:?}"
                );
            }
            assert_eq!(registry.snapshot().generation, before, "nothing changed");
            let entry = registry
                .revoke_serial("default", &serial("40AA"), "alice", 10)
                .unwrap();
            assert_eq!(entry.serial, "40aa");
            assert_eq!(entry.trust_domain, "investigate.example.org");
            assert!(matches!(
                registry.revoke_serial("default", &serial("40aa"), "bob", 11),
                Err(RegistryError::Serial(SerialError::AlreadyRevoked(_)))
            ));
            assert_eq!(registry.next_deadline(), Some(101));
        }
        let registry = open(&path);
        assert!(registry.snapshot().revoked_serials.contains_key("40aa"));
        assert!(
            !registry.expire_due(&base(), 100).unwrap(),
            "kept through notAfter"
        );
        assert!(registry.expire_due(&base(), 101).unwrap());
        assert!(registry.snapshot().revoked_serials.is_empty());
        assert_eq!(registry.next_deadline(), None);
        drop(registry);
        let registry = open(&path);
        assert!(
            registry.snapshot().revoked_serials.is_empty(),
            "pruned durably"
        );
    }

    #[test]
    fn invalid_profiles_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let registry = open(&dir.path().join("w.redb"));
        let before = registry.snapshot().generation;
        let bad = Profile {
            tenant: "default".into(),
            name: "x".into(),
            selectors: BTreeSet::new(),
            bands: BTreeSet::from([Band::Investigative]),
            scopes: BTreeSet::new(),
            service: false,
            created_at: 0,
        };
        assert!(registry.create_profile(bad, "op").is_err());
        assert_eq!(registry.snapshot().generation, before);
        assert!(registry.snapshot().profiles.is_empty());
    }

    #[test]
    fn playbooks_persist_and_retiring_one_revokes_its_activations() {
        use crate::policy::playbook::{PlaybookSpec, new_playbook};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let spec = PlaybookSpec {
            name: "isolate-host".into(),
            action: "isolate host".into(),
            allowed_targets: BTreeSet::from(["host/web-1".to_string()]),
            max_window_secs: Some(300),
            ..PlaybookSpec::default()
        };
        {
            let registry = open(&path);
            let book = registry
                .create_playbook(new_playbook("default", spec.clone(), "root", 0).unwrap())
                .unwrap();
            assert!(matches!(
                registry.create_playbook(new_playbook("default", spec, "root", 0).unwrap()),
                Err(RegistryError::AlreadyExists { .. })
            ));
            registry
                .approve_playbook("default", "isolate-host", "alice", &book.digest(), 1)
                .unwrap();
            registry
                .approve_playbook("default", "isolate-host", "bob", &book.digest(), 2)
                .unwrap();
        }
        let registry = open(&path);
        assert_eq!(
            registry.snapshot().playbooks[&crate::policy::key("default", "isolate-host")].state,
            PlaybookState::Approved
        );
        remediable_incident(&registry);
        let activate = |targets: &[&str]| {
            let request = ActivationRequest {
                agent: "triage".into(),
                targets: targets.iter().map(|t| t.to_string()).collect(),
                window_secs: None,
            };
            registry.activate_playbook("default", "isolate-host", "INC-1", request, "carol", 10)
        };
        let before = registry.snapshot().generation;
        assert!(matches!(
            activate(&["host/db-1"]),
            Err(RegistryError::Playbook(PlaybookError::OutOfBounds(_)))
        ));
        assert_eq!(registry.snapshot().generation, before, "nothing changed");
        let g = activate(&[]).unwrap();
        assert_eq!(g.expires_at, Some(310));
        assert_eq!(
            registry.snapshot().grants[&crate::policy::key("default", &g.id)]
                .playbook
                .as_deref(),
            Some("isolate-host")
        );

        // Bob leaves: the playbook is pending again and the activation is revoked.
        let gone = |_: &str, name: &str| name != "bob";
        assert_eq!(registry.withdraw_playbook_approvals(gone).unwrap().len(), 1);
        assert_eq!(registry.withdraw_approvals(gone, 11).unwrap().len(), 1);
        assert_eq!(
            registry.snapshot().grants[&crate::policy::key("default", &g.id)].state,
            GrantState::Revoked
        );
        assert_eq!(
            registry.snapshot().playbooks[&crate::policy::key("default", "isolate-host")].state,
            PlaybookState::Pending
        );
        let book =
            registry.snapshot().playbooks[&crate::policy::key("default", "isolate-host")].clone();
        registry
            .approve_playbook("default", "isolate-host", "dave", &book.digest(), 12)
            .unwrap();
        let g = activate(&["host/web-1"]).unwrap();

        let (retired, revoked) = registry
            .retire_playbook("default", "isolate-host", "root", "superseded", 20)
            .unwrap();
        assert_eq!(retired.state, PlaybookState::Retired);
        assert_eq!(revoked.len(), 1);
        drop(registry);
        let registry = open(&path);
        let policy = registry.snapshot();
        assert_eq!(
            policy.grants[&crate::policy::key("default", &g.id)].state,
            GrantState::Revoked
        );
        assert_eq!(
            policy.playbooks[&crate::policy::key("default", "isolate-host")].state,
            PlaybookState::Retired
        );
        assert!(matches!(
            registry.activate_playbook(
                "default",
                "isolate-host",
                "INC-1",
                ActivationRequest {
                    agent: "triage".into(),
                    ..ActivationRequest::default()
                },
                "carol",
                21
            ),
            Err(RegistryError::Playbook(PlaybookError::NotApproved { .. }))
        ));
    }

    /// The deployment's own base in these tests.
    fn base() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    /// Every record in the registry's log, decoded.
    fn records(registry: &Registry) -> Vec<Record> {
        registry
            .audit
            .read(0, 10_000)
            .unwrap()
            .iter()
            .map(|(_, b)| Record::decode(b).unwrap())
            .collect()
    }

    #[test]
    fn every_record_says_its_tenant_and_no_change_spans_two() {
        let dir = tempfile::tempdir().unwrap();
        let registry = open(&dir.path().join("w.redb"));
        let acme = Tenant {
            name: "acme".into(),
            base: "acme.test".into(),
            state: TenantState::Active,
            created_by: "root".into(),
            created_at: 0,
            disabled_by: None,
            disabled_at: None,
        };
        registry.create_tenant(acme, &base()).unwrap();
        let mut theirs = incident("INC-1");
        theirs.tenant = "acme".into();
        theirs.max_lifetime_secs = 10;
        theirs.opened_at = 0;
        registry.open_incident(theirs.clone()).unwrap();
        let mut ours = incident("INC-1");
        ours.max_lifetime_secs = 10;
        ours.opened_at = 0;
        registry.open_incident(ours).unwrap();

        let written = records(&registry);
        let actions: Vec<(&str, Option<&str>)> = written
            .iter()
            .map(|r| (r.action.as_str(), r.tenant.as_deref()))
            .collect();
        assert_eq!(
            actions,
            [
                ("tenant.create", None),
                ("incident.open", Some("acme")),
                ("incident.open", None),
            ]
        );
        assert!(crate::audit::visible_to(&written[1], "acme"));
        assert!(!crate::audit::visible_to(&written[1], DEFAULT_TENANT));

        // Both run out at once: one record per tenant, each with its own incident only.
        assert!(registry.expire_due(&base(), 10).unwrap());
        let expired: Vec<Record> = records(&registry)
            .into_iter()
            .filter(|r| r.action == "expire")
            .collect();
        assert_eq!(expired.len(), 2, "{expired:?}");
        for r in &expired {
            let incidents = r.detail["incidents"].as_array().unwrap();
            assert_eq!(incidents.len(), 1);
            assert_eq!(incidents[0]["tenant"], r.tenant_name());
        }
        let tenants: BTreeSet<&str> = expired.iter().map(Record::tenant_name).collect();
        assert_eq!(tenants, BTreeSet::from(["acme", DEFAULT_TENANT]));

        // A write of another tenant's object under a change's record is refused, unwritten.
        let size = registry.audit.size();
        let writer = Writer::new(
            &registry.audit,
            &registry.clock,
            Audited::new(DEFAULT_TENANT, Kind::AdminChange, "test", "root"),
        );
        let mut other = theirs;
        other.id = "INC-2".into();
        assert!(matches!(
            writer.put_incident(&other),
            Err(RegistryError::Audit(AuditError::Invalid(_)))
        ));
        assert_eq!(registry.audit.size(), size);
        assert!(writer.finish().1.is_empty(), "nothing staged");

        // Disabling is the disabled tenant's record; the default tenant sees it too.
        registry.disable_tenant("acme", "root", 20).unwrap();
        let last = records(&registry).pop().unwrap();
        assert_eq!(
            (last.action.as_str(), last.tenant.as_deref()),
            ("tenant.disable", Some("acme"))
        );
        assert!(crate::audit::visible_to(&last, DEFAULT_TENANT));
    }

    #[test]
    fn every_change_is_audited_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        {
            let registry = open(&path);
            let before = registry.audit.size();
            registry.open_incident(incident("INC-1")).unwrap();
            assert_eq!(
                registry.audit.size(),
                before + 1,
                "the change has its record"
            );
            registry.audit.fail_commits(true);
            let generation = registry.snapshot().generation;
            assert!(matches!(
                registry.open_incident(incident("INC-2")),
                Err(RegistryError::Audit(_))
            ));
            assert_eq!(registry.snapshot().generation, generation);
        }
        let registry = open(&path);
        assert!(
            registry
                .snapshot()
                .incidents
                .contains_key(&crate::policy::key("default", "INC-1"))
        );
        assert!(
            !registry
                .snapshot()
                .incidents
                .contains_key(&crate::policy::key("default", "INC-2")),
            "an unaudited change is not written"
        );
    }

    #[test]
    fn concurrent_changes_are_decided_in_turn_committed_together_and_fail_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let opens = 48;
        {
            let registry = open(&path);
            let generations = registry.subscribe();
            let generation = registry.snapshot().generation;
            // Opens from many threads, one of them twice: each is decided on the one
            // before it, so exactly one of the twins is refused.
            std::thread::scope(|s| {
                let results: Vec<_> = (0..=opens)
                    .map(|i| {
                        let registry = &registry;
                        let id = format!("INC-{}", i.min(opens - 1));
                        s.spawn(move || registry.open_incident(incident(&id)))
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect();
                let refused: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
                assert_eq!(refused.len(), 1, "{refused:?}");
                assert!(matches!(
                    refused[0],
                    Err(RegistryError::AlreadyExists { .. })
                ));
            });
            // Every open returned once it was published, and each has its record.
            let now = registry.snapshot();
            assert_eq!(now.incidents.len(), opens);
            assert_eq!(now.generation, generation + opens as u64);
            assert!(generations.has_changed().unwrap());
            assert!(registry.audit.size() >= opens as u64);

            // A failed audit commit refuses every change in it and after it; nothing of
            // them is written or published, and the next change is made.
            registry.audit.fail_commits(true);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|i| {
                        let registry = &registry;
                        s.spawn(move || registry.open_incident(incident(&format!("LOST-{i}"))))
                    })
                    .collect();
                for h in handles {
                    assert!(matches!(h.join().unwrap(), Err(RegistryError::Audit(_))));
                }
            });
            assert_eq!(registry.snapshot().generation, now.generation);
            registry.audit.fail_commits(false);
            registry.open_incident(incident("AFTER")).unwrap();
            assert_eq!(registry.snapshot().incidents.len(), opens + 1);
        }
        // What returned is in the store; what was refused is not.
        let registry = open(&path);
        let incidents = &registry.snapshot().incidents;
        assert_eq!(incidents.len(), opens + 1);
        assert!(!incidents.keys().any(|(_, id)| id.starts_with("LOST")));
    }

    #[test]
    fn playbook_activation_honours_the_configured_sensitive_prefixes() {
        use crate::policy::playbook::{PlaybookSpec, new_playbook};
        let dir = tempfile::tempdir().unwrap();
        let rules = RemediationRules {
            sensitive_scope_prefixes: vec!["net:".into()],
            ..RemediationRules::default()
        };
        let audit = AuditLog::open(
            &dir.path().join("audit.redb"),
            dir.path(),
            "example.org/writ-audit",
        );
        let registry = Registry::load(
            Arc::new(Store::open(&dir.path().join("w.redb")).unwrap()),
            rules,
            Arc::new(audit.unwrap()),
            Arc::new(crate::clock::ManualClock::at(0)),
            crate::ca::CaConfig::default().max_svid_ttl,
        )
        .unwrap();
        let book = new_playbook(
            "default",
            PlaybookSpec {
                name: "isolate-host".into(),
                action: "isolate host".into(),
                allowed_targets: BTreeSet::from(["host/web-1".to_string()]),
                scopes: BTreeSet::from(["net:isolate".to_string()]),
                ..PlaybookSpec::default()
            },
            "root",
            0,
        )
        .unwrap();
        let digest = registry.create_playbook(book).unwrap().digest();
        for approver in ["alice", "bob"] {
            registry
                .approve_playbook("default", "isolate-host", approver, &digest, 1)
                .unwrap();
        }
        remediable_incident(&registry);
        let request = ActivationRequest {
            agent: "triage".into(),
            ..ActivationRequest::default()
        };
        let refused =
            registry.activate_playbook("default", "isolate-host", "INC-1", request, "carol", 10);
        assert!(
            matches!(
                &refused,
                Err(RegistryError::Playbook(PlaybookError::NotEligible(why))) if why.contains("net:isolate")
            ),
            "{refused:?}"
        );
    }
}
