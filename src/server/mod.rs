//! The issuer process: opens the store and the CAs, runs rotation, serves the admin API.
//!
//! Shaped like mini-redis: [`Issuer::open`] does the I/O of starting, [`serve_admin`]
//! runs until its shutdown future resolves and then drains.

pub mod admin;
pub(crate) mod commits;
pub mod fair;
pub mod health;
pub mod local_node;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod replica;
pub mod signers;
pub mod status;
pub mod tls;
pub mod webhooks;

use crate::audit::activity::{Activity, check_serial};
use crate::audit::{AuditError, AuditLog, Kind, Record};
use crate::backoff::Backoff;
use crate::ca::{
    BundleSet, CaSet, MintedJwt, MintedX509, SubjectKey, SvidRequest, create_private_dir,
};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::metrics::{DenyReason, Metrics, SvidKind};
use crate::policy::{Entitlement, Grant, GrantRequest, Selector, entitlement_for, entitlement_of};
use crate::store::{Store, StoreError, StoreLocation, SvidRecord};
use anyhow::Context;
use fair::Urgency;
use registry::Registry;
use spiffe::{SpiffeId, TrustDomain};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use writ_verifier::Band;

/// The issuer: configuration, CAs, policy and store, shared by every service.
#[derive(Debug)]
pub struct Issuer {
    /// The configuration in force.
    pub config: Config,
    /// The CA of every band.
    pub cas: CaSet,
    /// Profiles and incidents.
    pub registry: Arc<Registry>,
    /// The store.
    pub store: Arc<Store>,
    /// Every band's bundle, republished after each rotation.
    pub bundles: tokio::sync::watch::Sender<Arc<BundleSet>>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Each notification target's counters (see [`crate::notify`]).
    pub notify: Arc<crate::notify::Stats>,
    /// This process's metrics (docs/metrics.md); `writ dev`'s agent counts into them too.
    pub metrics: Arc<Metrics>,
    /// Issuance slots, passed round-robin between tenants: one tenant's storm of CSRs
    /// waits behind another tenant's, not the other way round (docs/multi-tenant.md).
    issuance: fair::Fair,
    /// Bumped to have the readiness of `grpc.health.v1` checked again at once
    /// ([`Issuer::recheck_readiness`]).
    readiness_wake: tokio::sync::watch::Sender<u64>,
}

/// Why an agent's activity report was not recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivityRefusal {
    /// The SPIFFE ID is not an identity policy gives anyone for the incident now.
    #[error("{0}")]
    NotEntitled(String),
    /// The serial does not name an X.509-SVID of that identity.
    #[error("{0}")]
    Invalid(String),
    /// The store could not be read.
    #[error("store: {0}")]
    Store(String),
    /// The record could not be made durable, so nothing was recorded.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

pub use crate::node_api::MAX_ATTESTATION_SELECTORS;
/// Longest selector, in bytes, a workload attestation report may carry.
pub const MAX_SELECTOR_LEN: usize = 512;

/// Why an agent's workload attestation report was not recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationRefusal {
    /// Policy gives no workload with these selectors this SPIFFE ID now: a node cannot
    /// make up identities.
    #[error("{0}")]
    NotEntitled(String),
    /// The selectors are malformed or over the bounds.
    #[error("{0}")]
    Invalid(String),
    /// The record could not be made durable, so nothing was recorded.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Why the issuer refused to sign for a workload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// Policy gives no workload this identity now (no profile, or the incident is not open).
    #[error("no identity issued: {0} is not entitled under current policy")]
    NotEntitled(String),
    /// The CA refused or failed.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// The issuance could not be audited, so nothing was issued.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// This server cannot prove its policy is current, so it signs nothing (docs/ha.md).
    #[error(transparent)]
    NotCurrent(registry::RegistryError),
}

impl Issuer {
    /// Opens the data directory: the store, then each band's CA (created on first start,
    /// reused after).
    pub fn open(mut config: Config, clock: SharedClock) -> anyhow::Result<Arc<Issuer>> {
        // The data directory holds the Workload API socket, which every local user must
        // reach; keys live in keys/ (0700) and the store is 0600.
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        create_private_dir(&config.data_dir.join("keys"))?;
        let store = Arc::new(
            Store::open_at(&config.store, &config.data_dir).with_context(|| {
                match &config.store {
                    StoreLocation::Embedded => format!(
                        "opening the store in {} (is another writ using it?)",
                        config.data_dir.display()
                    ),
                    StoreLocation::Postgres(url) => format!("opening the store at {url}"),
                }
            })?,
        );
        let clock_for_audit = Arc::clone(&clock);
        // Every tenant's band CAs open beside the deployment's, disabled tenants' too (their
        // bundles still verify what they issued until it expires).
        let tenant_bases = store
            .tenants()
            .context("reading the tenants")?
            .iter()
            .map(crate::policy::Tenant::trust_domain)
            .collect::<Result<Vec<_>, _>>()
            .context("a stored tenant's trust domain")?;
        let cas = if store.shared() {
            // Every server of a cluster signs through an intermediate: the roots' keys
            // stay on the one host that made them, and the others (signing replicas)
            // have their own intermediates certified by it (docs/ha.md).
            config.ca.sign_with_intermediate = true;
            let cas = CaSet::open_shared(
                config.trust_domain.clone(),
                &tenant_bases,
                &config.data_dir.join("keys"),
                Arc::clone(&store),
                config.ca,
                clock,
            )
            .with_context(|| {
                format!(
                    "opening the CAs: the shared store's authorities must have all their keys in {}, or none (a signing replica)",
                    config.data_dir.join("keys").display()
                )
            })?;
            if !cas.holds_roots() {
                tracing::info!(
                    "this server does not hold the roots' keys: a signing replica (X.509 through its own intermediates, no JWT-SVIDs)"
                );
            }
            cas
        } else {
            CaSet::open(
                config.trust_domain.clone(),
                &tenant_bases,
                &config.data_dir.join("keys"),
                Arc::clone(&store),
                config.ca,
                clock,
            )
            .context("opening the CAs")?
        };
        let origin = crate::audit::origin_for(config.trust_domain.as_ref());
        let audit = Arc::new(match store.shared_log() {
            // One log for every server sharing the store (docs/ha.md, "The audit log").
            Some(shared) => AuditLog::open_shared(
                shared,
                &replica::replica_name(),
                &config.data_dir.join("keys"),
                &origin,
            )
            .context("opening the shared audit log")?,
            None => AuditLog::open(
                &config.data_dir.join("audit.redb"),
                &config.data_dir.join("keys"),
                &origin,
            )
            .context("opening the audit log")?,
        });
        let registry = Registry::load(
            Arc::clone(&store),
            config.remediation.clone(),
            Arc::clone(&audit),
            clock_for_audit,
            config.ca.max_svid_ttl,
        )?
        .with_tenant_limits(config.tenant_limits.clone())?;
        // Operators come from configuration: approvals by someone who no longer holds a
        // role in the grant's tenant stop counting, and grants that lose their quorum end
        // now.
        let server_uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
        let host = ["uid:0".to_owned(), format!("uid:{server_uid}")];
        let operates_in = |tenant: &str, name: &str| {
            host.iter().any(|h| h == name)
                || config
                    .operators
                    .iter()
                    .any(|o| o.name == name && !o.roles_in(tenant).is_empty())
        };
        for grant in registry.withdraw_approvals(operates_in, cas.now())? {
            tracing::warn!(grant = %grant.id, tenant = %grant.tenant, state = ?grant.state, "approvals of removed operators withdrawn");
        }
        for playbook in registry.withdraw_playbook_approvals(operates_in)? {
            tracing::warn!(playbook = %playbook.name, tenant = %playbook.tenant, state = ?playbook.state, "playbook approvals of removed operators withdrawn");
        }
        // A profile made before its uid became an operator's: approvals by that uid of
        // what its workloads ask for are refused anyway; say so at every start.
        let operator_uids = crate::policy::roles::operator_uids(&config.operators, server_uid);
        if !config.remediation.demo_single_user {
            for profile in registry.snapshot().profiles.values() {
                if let Err(e) = crate::policy::roles::check_profile(
                    profile,
                    &operator_uids,
                    crate::passwd::uid_of,
                ) {
                    tracing::error!(%e, "a profile selects an operator; delete it or change the operator's uid");
                }
            }
        }
        // With a shared store, prove the policy current before serving, so the first
        // request can be signed.
        if let Some(me) = registry.replica_name() {
            beat(&registry, &store, me)
                .map_err(|e| anyhow::anyhow!("following the shared store's policy: {e}"))?;
            tracing::info!(replica = %me, "following the cluster's policy in the shared store");
        }
        let (bundles, _) = tokio::sync::watch::channel(Arc::new(cas.bundle_set()?));
        let issuance_slots = config.tenant_limits.issuance_slots;
        let notify = Arc::new(crate::notify::Stats::for_targets(&config.notify));
        let metrics = Arc::new(Metrics::new());
        let issuer = Arc::new(Issuer {
            notify,
            metrics,
            config,
            cas,
            registry: Arc::new(registry),
            store,
            bundles,
            audit,
            issuance: fair::Fair::shared(issuance_slots),
            readiness_wake: tokio::sync::watch::channel(0).0,
        });
        crate::server::metrics::register(&issuer);
        Ok(issuer)
    }

    /// Counts one issuance request's outcome for `id`, `started` when it reached the issuer.
    fn count<T>(
        &self,
        kind: SvidKind,
        id: &SpiffeId,
        result: &Result<T, IssueError>,
        started: Instant,
    ) {
        let band = self
            .cas
            .band_of(id)
            .map_or(crate::metrics::UNKNOWN_BAND, Band::as_str);
        match result {
            Ok(_) => self.metrics.svid_issued(band, kind, started.elapsed()),
            Err(e) => self.metrics.svid_denied(band, deny_reason(e)),
        }
    }

    /// With a shared store, follows the cluster's policy until `shutdown` (see
    /// [`replica`]): listens for changes, heartbeats, reloads, and keeps the lease that
    /// lets it sign. With a store of its own, returns at once.
    pub async fn follow_cluster(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let Some(me) = self.registry.replica_name().map(str::to_owned) else {
            return;
        };
        tokio::select! {
            () = follow_policy(Arc::clone(&self.registry), Arc::clone(&self.store), me) => {}
            () = shutdown => {}
        }
    }

    /// Creates a tenant (docs/multi-tenant.md): checks it, makes its band CAs, then
    /// records and publishes it, so no one ever sees a tenant that cannot be issued in.
    /// A refusal after the CAs were made leaves them unused (a retry with the same base
    /// opens them again).
    pub fn create_tenant(
        &self,
        tenant: crate::policy::Tenant,
    ) -> Result<crate::policy::Tenant, registry::RegistryError> {
        let policy = self.registry.snapshot();
        crate::policy::tenant::check_new(&tenant, policy.tenants.values(), self.cas.base())?;
        let base = tenant.trust_domain()?;
        self.cas.add_tenant(&base)?;
        let created = self.registry.create_tenant(tenant, self.cas.base())?;
        self.publish_bundles();
        Ok(created)
    }

    /// The CA that signs `id` in `band`. With a shared store, another server may have
    /// created a tenant since this one started: its CAs are opened from the store the
    /// first time one of its identities is asked for (a signing replica answers
    /// Unavailable, so the agent moves to the server that holds the roots, until its own
    /// intermediate for the tenant's band is certified; docs/ha.md, "Signing replicas").
    fn ca_for(
        &self,
        band: Band,
        id: &spiffe::SpiffeId,
    ) -> Result<Arc<crate::ca::TrustDomainCa>, crate::ca::CaError> {
        match self.cas.ca_for(band, id) {
            Err(unheld @ crate::ca::CaError::WrongTrustDomain { .. }) => {
                let policy = self.registry.snapshot();
                match crate::policy::tenant_of_trust_domain(
                    &policy,
                    self.cas.base(),
                    id.trust_domain_name(),
                ) {
                    Some((tenant, base)) if tenant != crate::policy::DEFAULT_TENANT => {
                        self.cas.add_tenant(&base)?;
                        self.publish_bundles();
                        self.cas.ca_for(band, id)
                    }
                    _ => Err(unheld),
                }
            }
            other => other,
        }
    }

    /// Publishes the current bundles to every follower (after a rotation).
    pub fn publish_bundles(&self) {
        match self.cas.bundle_set() {
            Ok(set) => {
                self.bundles.send_if_modified(|current| {
                    if **current == set {
                        return false;
                    }
                    *current = Arc::new(set);
                    true
                });
            }
            Err(e) => tracing::error!(error = %e, "building bundles failed"),
        }
    }

    /// Signs an X.509-SVID for `spiffe_id` on behalf of `requester` (the node whose agent
    /// attested a workload entitled to it). See [`Issuer::sign_workload_x509_batch`].
    pub fn sign_workload_x509(
        &self,
        spiffe_id: &SpiffeId,
        csr_der: &[u8],
        ttl: Option<Duration>,
        requester: &str,
    ) -> Result<MintedX509, IssueError> {
        self.sign_workload_x509_batch(&[(spiffe_id.clone(), csr_der.to_vec())], ttl, requester)
            .pop()
            .unwrap_or_else(|| Err(IssueError::NotEntitled(spiffe_id.to_string())))
    }

    /// Signs X.509-SVIDs for a batch of CSRs from `requester`. Policy is checked again
    /// here, at this instant: the claims are derived from policy, and a closed incident is
    /// refused (with a denial record). Each issuance record is audited before its SVID
    /// leaves this call, and its index is in the SVID's claims; the batch shares one audit
    /// commit and one store commit.
    /// Each tenant's CSRs of the batch are signed in that tenant's issuance turn.
    pub fn sign_workload_x509_batch(
        &self,
        items: &[(SpiffeId, Vec<u8>)],
        ttl: Option<Duration>,
        requester: &str,
    ) -> Vec<Result<MintedX509, IssueError>> {
        let started = Instant::now();
        let policy = self.registry.snapshot();
        let mut by_tenant: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, (id, _)) in items.iter().enumerate() {
            let tenant = tenant_of_id(&policy, self.cas.base(), id);
            by_tenant.entry(tenant).or_default().push(i);
        }
        drop(policy);
        let mut out: Vec<Option<Result<MintedX509, IssueError>>> =
            items.iter().map(|_| None).collect();
        for (tenant, indices) in by_tenant {
            let _turn = self.issuance.enter(&tenant, Urgency::Normal);
            let part: Vec<_> = indices
                .iter()
                .filter_map(|&i| items.get(i).cloned())
                .collect();
            for (i, result) in indices
                .into_iter()
                .zip(self.sign_x509_now(&part, ttl, requester))
            {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(result);
                }
            }
        }
        items
            .iter()
            .zip(out)
            .map(|((id, _), r)| {
                let result = r.unwrap_or_else(|| Err(IssueError::NotEntitled(id.to_string())));
                self.count(SvidKind::X509, id, &result, started);
                result
            })
            .collect()
    }

    /// [`Issuer::sign_workload_x509_batch`] in the caller's issuance turn.
    fn sign_x509_now(
        &self,
        items: &[(SpiffeId, Vec<u8>)],
        ttl: Option<Duration>,
        requester: &str,
    ) -> Vec<Result<MintedX509, IssueError>> {
        let mut denials = Vec::new();
        let pending: Vec<_> = {
            let Ok(_gate) = self.registry.issuance_gate() else {
                return items
                    .iter()
                    .map(|_| Err(IssueError::NotCurrent(registry::RegistryError::NotCurrent)))
                    .collect();
            };
            let policy = self.registry.snapshot();
            let now = self.cas.now();
            items
                .iter()
                .map(|(spiffe_id, csr)| {
                    let Some(entitlement) = entitlement_for(&policy, self.cas.base(), spiffe_id)
                    else {
                        return Err(self.deny(spiffe_id, requester, &mut denials));
                    };
                    let (band, request) = self.entitled_request(
                        entitlement,
                        ttl.unwrap_or(self.config.ca.x509_svid_ttl),
                    )?;
                    self.submit_x509(band, SubjectKey::Csr(csr), request, now, requester)
                })
                .collect()
        };
        await_denials(denials);
        let (mut rows, mut submitted) = (Vec::new(), Vec::new());
        let mut outcomes: Vec<Option<Result<_, IssueError>>> = pending
            .into_iter()
            .map(|p| match p {
                Ok((pending, row)) => {
                    rows.push(row);
                    submitted.push(pending);
                    None
                }
                Err(e) => Some(Err(e)),
            })
            .collect();
        // Nothing issued (all refused): no empty, fsync'd store commit.
        let mut released = match rows.is_empty() {
            true => Vec::new(),
            false => self.store_then_await(rows, submitted),
        }
        .into_iter();
        for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
            *outcome = released.next();
        }
        outcomes
            .into_iter()
            .map(|r| {
                let (band, request, minted) = r.unwrap_or_else(|| {
                    Err(IssueError::Audit(crate::audit::AuditError::Invalid(
                        "nothing issued".into(),
                    )))
                })?;
                tracing::info!(spiffe_id = %request.spiffe_id, serial = %minted.serial, %band, not_after = minted.not_after, %requester, "issued x509-svid");
                Ok(minted)
            })
            .collect()
    }

    /// Mints an X.509-SVID for `request` in `band` (policy already checked by the caller,
    /// under the issuance gate) once its issuance record by `requester` is durable.
    pub fn issue_x509(
        &self,
        band: Band,
        key: SubjectKey<'_>,
        request: SvidRequest,
        requester: &str,
    ) -> Result<MintedX509, IssueError> {
        let started = Instant::now();
        let id = request.spiffe_id.clone();
        let result = self.issue_x509_now(band, key, request, requester);
        self.count(SvidKind::X509, &id, &result, started);
        result
    }

    fn issue_x509_now(
        &self,
        band: Band,
        key: SubjectKey<'_>,
        request: SvidRequest,
        requester: &str,
    ) -> Result<MintedX509, IssueError> {
        let tenant = self.tenant_of_identity(&request.spiffe_id, request.claims.as_ref());
        let _turn = self.issuance.enter(&tenant, Urgency::Normal);
        let (pending, row) = self.submit_x509(band, key, request, self.cas.now(), requester)?;
        let mut released = self.store_then_await(vec![row], vec![pending]);
        let (_, _, minted) = released.pop().ok_or_else(|| {
            IssueError::Audit(crate::audit::AuditError::Invalid("nothing issued".into()))
        })??;
        Ok(minted)
    }

    /// Writes issued SVIDs' `rows` to the store while the audit log commits their
    /// issuance records (`pending`, in the same order), so the two durable commits
    /// overlap instead of following each other; then releases each SVID whose record and
    /// row are both durable. A row whose record failed is forgotten again: that SVID is
    /// never handed out. The SVID itself is released only after both, as before.
    fn store_then_await(
        &self,
        rows: Vec<SvidRecord>,
        pending: Vec<PendingX509>,
    ) -> Vec<Result<(Band, SvidRequest, MintedX509), IssueError>> {
        let stored = self.store.put_svids(&rows).map_err(|e| e.to_string());
        let waited: Vec<_> = pending.into_iter().map(|p| p.wait()).collect();
        let unreleased: Vec<String> = rows
            .into_iter()
            .zip(&waited)
            .filter(|(_, w)| w.is_err())
            .map(|(row, _)| row.serial)
            .collect();
        if stored.is_ok()
            && !unreleased.is_empty()
            && let Err(e) = self.store.forget_svids(&unreleased)
        {
            // Listed until they expire and are pruned; never handed out.
            tracing::warn!(error = %e, count = unreleased.len(), "forgetting the rows of SVIDs whose issuance records failed");
        }
        waited
            .into_iter()
            .map(|w| {
                let (_, value) = w?;
                if let Err(e) = &stored {
                    return Err(IssueError::Ca(StoreError::Db(e.clone()).into()));
                }
                Ok(value)
            })
            .collect()
    }

    /// Mints the server's own X.509-SVID (the node API's TLS identity) in the base band,
    /// for `request` and the public key `spki_der`, and records it durably before
    /// returning it, so that it is listed and revocable like every X.509-SVID writ signs.
    /// It is the issuer's own identity, issued to no workload: no entitlement is checked
    /// and it has no issuance record in the audit log.
    pub fn mint_server_x509(
        &self,
        spki_der: &[u8],
        request: &SvidRequest,
    ) -> Result<MintedX509, crate::ca::CaError> {
        let minted = self
            .cas
            .mint_x509(Band::Base, SubjectKey::PublicKey(spki_der), request)?;
        self.store
            .put_svid(&svid_record(Band::Base, request, &minted))?;
        Ok(minted)
    }

    /// Submits the issuance record of an X.509-SVID and mints it with the record's index
    /// in its claims; the SVID is handed out by [`crate::audit::log::Pending::wait`].
    fn submit_x509(
        &self,
        band: Band,
        key: SubjectKey<'_>,
        mut request: SvidRequest,
        now: i64,
        requester: &str,
    ) -> Result<(PendingX509, SvidRecord), IssueError> {
        // The CA of the ID's trust domain (the deployment's or a tenant's), which must
        // serve `band`.
        let ca = self.ca_for(band, &request.spiffe_id)?;
        let tenant = self.tenant_of_identity(&request.spiffe_id, request.claims.as_ref());
        // What the caller sent is checked (the CSR's signature verified) before an audit
        // index is taken: a bad request costs no index. The claims get their index below.
        let (_, spki) = ca.check_x509(key, &request)?;
        // The SVID's row (no certificate in it) leaves beside the pending record, so the
        // store can commit it while the audit log commits the record.
        let mut row = None;
        let pending = self.audit.submit_with(|index| {
            if let Some(claims) = request.claims.as_mut() {
                claims.audit_index = Some(index);
            }
            let minted = ca.mint_x509(SubjectKey::PublicKey(&spki), &request, now)?;
            row = Some(svid_record(band, &request, &minted));
            let record = issuance_record(now, band, &request, requester, &tenant)
                .serial(minted.serial.clone())
                .detail(serde_json::json!({
                    "band": band.as_str(),
                    "format": "x509",
                    "not_after": minted.not_after,
                    "authority": minted.authority_id,
                    "claims_sha256": claims_digest(&request),
                }));
            Ok::<_, IssueError>((encode(&record)?, (band, request, minted)))
        })?;
        let row = row.ok_or_else(|| {
            IssueError::Audit(crate::audit::AuditError::Invalid(
                "an issuance record was made without its SVID".into(),
            ))
        })?;
        Ok((pending, row))
    }

    /// Submits the record of a refused issuance; the caller waits for it with
    /// `await_denials` once it no longer holds the issuance gate (a denial need not
    /// stall a concurrent incident close for an fsync).
    fn deny(
        &self,
        spiffe_id: &SpiffeId,
        requester: &str,
        denials: &mut Vec<crate::audit::log::Pending<()>>,
    ) -> IssueError {
        let record = Record::new(self.cas.now(), Kind::Denial, "svid.deny", requester)
            .tenant(&self.tenant_of_identity(spiffe_id, None))
            .spiffe_id(spiffe_id.to_string())
            .detail(serde_json::json!({ "reason": "not entitled under current policy" }));
        match encode(&record).and_then(|bytes| self.audit.submit_with(|_| Ok((bytes, ())))) {
            Ok(pending) => denials.push(pending),
            Err(e) => tracing::error!(error = %e, "auditing a denial failed"),
        }
        IssueError::NotEntitled(spiffe_id.to_string())
    }

    /// What to sign for `entitlement`: its band, its SPIFFE ID and the claims policy
    /// derived (never a requester's), living `ttl` but no later than its cap (a grant's
    /// window). Every issuance of an identity passes here, a workload's or an operator's,
    /// with an entitlement read under the issuance gate.
    fn entitled_request(
        &self,
        entitlement: Entitlement,
        ttl: Duration,
    ) -> Result<(Band, SvidRequest), IssueError> {
        let ttl = self.capped_ttl(ttl, entitlement.not_after_cap)?;
        let request = SvidRequest {
            spiffe_id: entitlement.spiffe_id,
            ttl: Some(ttl),
            claims: Some(entitlement.claims),
            dns_names: Vec::new(),
        };
        Ok((entitlement.band, request))
    }

    /// A TTL that ends no later than `cap` (a grant's window).
    fn capped_ttl(&self, ttl: Duration, cap: Option<i64>) -> Result<Duration, IssueError> {
        let Some(cap) = cap else { return Ok(ttl) };
        let left = cap - self.cas.now();
        if left <= 0 {
            return Err(IssueError::NotEntitled(
                "the grant's window has ended".into(),
            ));
        }
        Ok(ttl.min(Duration::from_secs(left as u64)))
    }

    /// The tenant an identity belongs to, for its audit records: its claims' tenant, else
    /// its trust domain's, else (a trust domain no tenant has) the default tenant.
    fn tenant_of_identity(
        &self,
        id: &SpiffeId,
        claims: Option<&writ_verifier::WritClaims>,
    ) -> String {
        if let Some(tenant) = claims.and_then(|c| c.tenant.clone()) {
            return tenant;
        }
        tenant_of_id(&self.registry.snapshot(), self.cas.base(), id)
    }

    /// Ends grants and incidents when their time runs out, until `shutdown` resolves.
    pub async fn run_expiry(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut changes = self.registry.subscribe();
        let mut next_prune = 0;
        loop {
            let now = self.cas.now();
            if now >= next_prune {
                // Expired SVID rows, at most every ten minutes (a scan of the table).
                next_prune = now + 600;
                // A day after expiry: revoking a recently expired serial still says
                // "expired", not "unknown".
                let store = Arc::clone(&self.store);
                let before = now - 24 * 3600;
                match tokio::task::spawn_blocking(move || store.prune_expired_svids(before)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::debug!(pruned = n, "expired SVID records pruned"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "pruning expired SVIDs failed; will retry")
                    }
                    Err(e) => tracing::error!(error = %e, "pruning task failed; will retry"),
                }
            }
            let issuer = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || {
                issuer.registry.expire_due(issuer.cas.base(), now)
            })
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "expiring grants and incidents failed; will retry")
                }
                Err(e) => tracing::error!(error = %e, "expiry task failed; will retry"),
            }
            let wait = self
                .registry
                .next_deadline()
                .map(|at| (at - self.cas.now()).clamp(0, 60) as u64)
                .unwrap_or(60);
            changes.mark_unchanged();
            tokio::select! {
                () = &mut shutdown => return,
                // Policy changed: a new deadline may be earlier.
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(Duration::from_millis(wait * 1000 + 50)) => {}
            }
        }
    }

    /// Posts grant notifications to the configured webhooks until `shutdown` (see
    /// [`crate::notify`]); with none configured, returns at once.
    pub async fn run_notify(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let issuer = Arc::clone(&self);
        crate::notify::run(
            self.config.notify.clone(),
            Arc::clone(&self.notify),
            self.registry.subscribe(),
            move || issuer.cas.now(),
            crate::notify::RetryPolicy::default(),
            shutdown,
        )
        .await;
    }

    /// Files a grant request for a workload that holds `requested_by`, the investigative
    /// identity of the same agent and incident (checked here against policy: an agent can
    /// only ask for authority on an incident it is investigating now). `uid` is the uid the
    /// agent attested the workload with: no approval by that uid will count.
    pub fn request_grant_for_workload(
        &self,
        request: GrantRequest,
        requested_by: &SpiffeId,
        uid: Option<u32>,
    ) -> Result<Grant, registry::RegistryError> {
        let incident = request.incident.clone();
        let result = self.file_grant_for_workload(request, requested_by, uid);
        if let Err(e) = &result {
            // An agent asking for authority it may not have is exactly what an auditor
            // wants to see; the refusal is recorded before the agent hears it.
            let record = Record::new(
                self.cas.now(),
                Kind::Refusal,
                "grant.request.refused",
                requested_by.to_string(),
            )
            .tenant(&self.tenant_of_identity(requested_by, None))
            .incident(Some(incident))
            .spiffe_id(requested_by.to_string())
            .detail(serde_json::json!({ "reason": e.to_string() }));
            if let Err(e) = self.audit.append(&record) {
                tracing::error!(error = %e, "auditing a refused grant request failed");
            }
        }
        result
    }

    fn file_grant_for_workload(
        &self,
        request: GrantRequest,
        requested_by: &SpiffeId,
        uid: Option<u32>,
    ) -> Result<Grant, registry::RegistryError> {
        use registry::RegistryError;
        let policy = self.registry.snapshot();
        let holds = entitlement_for(&policy, self.cas.base(), requested_by).filter(|e| {
            e.band == writ_verifier::Band::Investigative
                && e.claims.incident.as_deref() == Some(request.incident.as_str())
                && requested_by.path().split('/').nth(2) == Some(request.agent.as_str())
        });
        let Some(tenant) = holds.and_then(|e| e.claims.tenant) else {
            return Err(RegistryError::Grant(
                crate::policy::GrantError::NotEligible(format!(
                    "{requested_by} is not the investigative identity of agent {:?} for incident {:?}",
                    request.agent, request.incident
                )),
            ));
        };
        let now = self.cas.now();
        let name = requested_by.to_string();
        let requester = crate::policy::grant::Principal { name: &name, uid };
        // The grant is in the tenant of the identity that asked, never one it names.
        let grant = self
            .registry
            .request_grant(&tenant, request, requester, now)?;
        tracing::info!(grant = %grant.id, incident = %grant.incident, by = %requested_by, ?uid, plan_digest = %grant.plan_digest, "grant requested by an agent");
        Ok(grant)
    }

    /// Appends the record of `activity`, reported by a workload holding `spiffe_id` (and
    /// the X.509-SVID `serial`, empty if it holds none yet) through the agent `node`.
    ///
    /// Checked here again, whatever the agent checked: `spiffe_id` must be an
    /// investigative or remediation identity of the activity's incident under current
    /// policy, and `serial` must be lowercase hex naming an SVID issued to that identity.
    /// Returns the record's index once it is durable; fails closed.
    pub async fn record_activity(
        &self,
        activity: &Activity,
        spiffe_id: &SpiffeId,
        serial: &str,
        node: &str,
    ) -> Result<u64, ActivityRefusal> {
        check_serial(serial).map_err(|e| ActivityRefusal::Invalid(e.to_string()))?;
        let policy = self.registry.snapshot();
        let entitled = entitlement_for(&policy, self.cas.base(), spiffe_id).filter(|e| {
            matches!(e.band, Band::Investigative | Band::Remediation)
                && e.claims.incident.as_deref() == Some(activity.incident())
        });
        let Some(entitled) = entitled else {
            return Err(ActivityRefusal::NotEntitled(format!(
                "{spiffe_id} is not an identity for incident {:?} under current policy",
                activity.incident()
            )));
        };
        // The reporting identity's tenant.
        let tenant = self.tenant_of_identity(spiffe_id, Some(&entitled.claims));
        if !serial.is_empty() {
            let store = Arc::clone(&self.store);
            let key = serial.to_owned();
            let issued = tokio::task::spawn_blocking(move || store.svid(&key))
                .await
                .map_err(|e| ActivityRefusal::Store(e.to_string()))?
                .map_err(|e| ActivityRefusal::Store(e.to_string()))?;
            if issued.is_none_or(|svid| svid.spiffe_id != spiffe_id.to_string()) {
                return Err(ActivityRefusal::Invalid(format!(
                    "serial {serial} is not an X.509-SVID issued to {spiffe_id}"
                )));
            }
        }
        let mut record = Record::new(
            self.cas.now(),
            Kind::Activity,
            format!("activity.{}", activity.kind()),
            spiffe_id.to_string(),
        )
        .tenant(&tenant)
        .incident(Some(activity.incident()))
        .spiffe_id(spiffe_id.to_string())
        .detail(activity.detail(node));
        if !serial.is_empty() {
            record = record.serial(serial);
        }
        let index = self.audit.append_async(&record).await?;
        tracing::debug!(%spiffe_id, incident = %activity.incident(), kind = %activity.kind(), index, %node, "agent activity recorded");
        Ok(index)
    }

    /// Appends the record of a workload attestation: the agent `node` attested a workload
    /// as `selectors` (wire form, `unix:uid:1001`) and served it `spiffe_id` for the first
    /// time.
    ///
    /// Checked here, whatever the agent checked: at most [`MAX_ATTESTATION_SELECTORS`]
    /// selectors of at most [`MAX_SELECTOR_LEN`] bytes, each well-formed, and policy must
    /// give a workload with exactly these selectors `spiffe_id` now. Refusals append
    /// nothing (a node could otherwise fill the log with them). Returns the record's index
    /// once it is durable; fails closed.
    pub async fn record_attestation(
        &self,
        spiffe_id: &SpiffeId,
        selectors: &[String],
        node: &str,
    ) -> Result<u64, AttestationRefusal> {
        let attested = parse_attested(selectors)?;
        let policy = self.registry.snapshot();
        let entitlement = entitlement_of(&policy, self.cas.base(), &attested, spiffe_id)
            .ok_or_else(|| {
                AttestationRefusal::NotEntitled(format!(
                    "{spiffe_id} is not an identity of a workload with these selectors under current policy"
                ))
            })?;
        let tenant = self.tenant_of_identity(spiffe_id, Some(&entitlement.claims));
        let record = Record::new(self.cas.now(), Kind::Attestation, "workload.attest", node)
            .tenant(&tenant)
            .incident(entitlement.claims.incident)
            .spiffe_id(spiffe_id.to_string())
            .detail(serde_json::json!({
                "selectors": attested.iter().map(Selector::to_string).collect::<Vec<_>>(),
                "node": node,
            }));
        let index = self.audit.append_async(&record).await?;
        tracing::debug!(%spiffe_id, index, %node, "workload attestation recorded");
        Ok(index)
    }

    /// Signs a JWT-SVID for `spiffe_id` on behalf of `requester`, checked against policy
    /// and audited as for X.509.
    pub fn sign_workload_jwt(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        requester: &str,
    ) -> Result<MintedJwt, IssueError> {
        let started = Instant::now();
        let result = self.sign_jwt_now(spiffe_id, audience, requester);
        self.count(SvidKind::Jwt, spiffe_id, &result, started);
        result
    }

    fn sign_jwt_now(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        requester: &str,
    ) -> Result<MintedJwt, IssueError> {
        self.signs_jwt()?;
        let tenant = self.tenant_of_identity(spiffe_id, None);
        let _turn = self.issuance.enter(&tenant, Urgency::Normal);
        let mut denials = Vec::new();
        let pending = {
            let _gate = self
                .registry
                .issuance_gate()
                .map_err(IssueError::NotCurrent)?;
            let policy = self.registry.snapshot();
            let Some(entitlement) = entitlement_for(&policy, self.cas.base(), spiffe_id) else {
                let refused = self.deny(spiffe_id, requester, &mut denials);
                drop(_gate);
                await_denials(denials);
                return Err(refused);
            };
            let (band, request) =
                self.entitled_request(entitlement, self.config.ca.jwt_svid_ttl)?;
            self.submit_jwt(band, request, audience, requester)?
        };
        let (_, minted) = pending.wait()?;
        tracing::info!(%spiffe_id, %requester, exp = minted.expires_at, "issued jwt-svid");
        Ok(minted)
    }

    /// Whether this server signs JWT-SVIDs: a signing replica has no JWT key the bundle
    /// names (docs/ha.md) and answers, before any policy question, with an error that
    /// maps to `Unavailable`, which agents take as "ask another server".
    pub fn signs_jwt(&self) -> Result<(), IssueError> {
        if self.cas.holds_roots() {
            Ok(())
        } else {
            Err(IssueError::Ca(crate::ca::CaError::RootsElsewhere(
                self.cas.base().to_string(),
            )))
        }
    }

    /// Mints a JWT-SVID for `request` in `band` (policy already checked by the caller)
    /// once its issuance record by `requester` is durable.
    pub fn issue_jwt(
        &self,
        band: Band,
        request: SvidRequest,
        audience: &[String],
        requester: &str,
    ) -> Result<MintedJwt, IssueError> {
        let started = Instant::now();
        let id = request.spiffe_id.clone();
        let tenant = self.tenant_of_identity(&request.spiffe_id, request.claims.as_ref());
        let _turn = self.issuance.enter(&tenant, Urgency::Normal);
        let result = self
            .submit_jwt(band, request, audience, requester)
            .and_then(|pending| Ok(pending.wait()?.1));
        self.count(SvidKind::Jwt, &id, &result, started);
        result
    }

    fn submit_jwt(
        &self,
        band: Band,
        mut request: SvidRequest,
        audience: &[String],
        requester: &str,
    ) -> Result<crate::audit::log::Pending<MintedJwt>, IssueError> {
        let now = self.cas.now();
        let ca = self.ca_for(band, &request.spiffe_id)?;
        let tenant = self.tenant_of_identity(&request.spiffe_id, request.claims.as_ref());
        if !ca.holds_roots() {
            // A signing replica has no JWT key the bundle names (docs/ha.md): the agent
            // takes Unavailable as "ask another server".
            return Err(IssueError::Ca(crate::ca::CaError::RootsElsewhere(
                ca.trust_domain().to_string(),
            )));
        }
        ca.check_jwt(&request, audience)?;
        self.audit.submit_with(|index| {
            if let Some(claims) = request.claims.as_mut() {
                claims.audit_index = Some(index);
            }
            let minted = ca.mint_jwt(&request, audience, now)?;
            let record = issuance_record(now, band, &request, requester, &tenant).detail(
                serde_json::json!({
                    "band": band.as_str(),
                    "format": "jwt",
                    "audience": audience,
                    "not_after": minted.expires_at,
                    "claims_sha256": claims_digest(&request),
                }),
            );
            Ok::<_, IssueError>((encode(&record)?, minted))
        })
    }

    /// Rotates CA authorities when due, until `shutdown` resolves.
    pub async fn run_rotation(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let wait = self.cas.next_rotation_in().clamp(1, 30) as u64;
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
            let issuer = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || issuer.cas.rotate()).await {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => self.publish_bundles(),
                Ok(Err(e)) => tracing::error!(error = %e, "CA rotation failed; will retry"),
                Err(e) => tracing::error!(error = %e, "CA rotation task failed; will retry"),
            }
        }
    }
}

/// The metrics label of an issuer's refusal: its kind, never its text.
fn deny_reason(e: &IssueError) -> DenyReason {
    match e {
        IssueError::NotEntitled(_) => DenyReason::NotEntitled,
        IssueError::Ca(_) => DenyReason::Ca,
        IssueError::Audit(_) => DenyReason::Audit,
        IssueError::NotCurrent(_) => DenyReason::NotCurrent,
    }
}

/// The selectors of a workload attestation report, parsed and bounded.
fn parse_attested(
    selectors: &[String],
) -> Result<std::collections::BTreeSet<Selector>, AttestationRefusal> {
    let invalid = |m: String| AttestationRefusal::Invalid(m);
    if selectors.is_empty() {
        return Err(invalid("a workload attestation needs its selectors".into()));
    }
    if selectors.len() > MAX_ATTESTATION_SELECTORS {
        return Err(invalid(format!(
            "at most {MAX_ATTESTATION_SELECTORS} selectors per workload attestation"
        )));
    }
    selectors
        .iter()
        .map(|s| {
            if s.len() > MAX_SELECTOR_LEN {
                return Err(invalid(format!(
                    "selectors are at most {MAX_SELECTOR_LEN} bytes"
                )));
            }
            s.parse::<Selector>().map_err(|e| invalid(e.to_string()))
        })
        .collect()
}

/// Waits for submitted denial records; a denial stands whether or not its record could be
/// written (the writer logs a failed commit).
fn await_denials(denials: Vec<crate::audit::log::Pending<()>>) {
    for pending in denials {
        if let Err(e) = pending.wait() {
            tracing::error!(error = %e, "auditing a denial failed");
        }
    }
}

/// The issuance record of `request` in `tenant`, before its serial and details are known.
fn issuance_record(
    now: i64,
    band: Band,
    request: &SvidRequest,
    requester: &str,
    tenant: &str,
) -> Record {
    let kind = Kind::Issuance;
    Record::new(
        now,
        kind,
        format!("svid.issue.{}", band.as_str()),
        requester,
    )
    .tenant(tenant)
    .incident(request.claims.as_ref().and_then(|c| c.incident.clone()))
    .spiffe_id(request.spiffe_id.to_string())
}

/// What the store keeps of an X.509-SVID minted for `request` in `band`.
/// An X.509-SVID waiting for its issuance record to be durable.
type PendingX509 = crate::audit::log::Pending<(Band, SvidRequest, MintedX509)>;

fn svid_record(band: Band, request: &SvidRequest, minted: &MintedX509) -> SvidRecord {
    SvidRecord {
        serial: minted.serial.clone(),
        spiffe_id: request.spiffe_id.to_string(),
        band,
        authority_id: minted.authority_id.clone(),
        incident: request.claims.as_ref().and_then(|c| c.incident.clone()),
        grant: request.claims.as_ref().and_then(|c| c.grant.clone()),
        not_before: minted.not_before,
        not_after: minted.not_after,
    }
}

/// SHA-256 of the claims' DER form, as embedded in the SVID.
fn claims_digest(request: &SvidRequest) -> Option<String> {
    let der = request.claims.as_ref()?.to_der().ok()?;
    Some(crate::audit::sha256_hex(&der))
}

fn encode(record: &Record) -> Result<Vec<u8>, crate::audit::AuditError> {
    record
        .encode()
        .map_err(|e| crate::audit::AuditError::Invalid(e.to_string()))
}

/// The tenant whose trust domains `id` is in; the default tenant's for any other.
fn tenant_of_id(
    policy: &crate::policy::PolicySnapshot,
    base: &TrustDomain,
    id: &SpiffeId,
) -> String {
    crate::policy::tenant_of_trust_domain(policy, base, id.trust_domain_name()).map_or_else(
        || crate::policy::DEFAULT_TENANT.to_owned(),
        |(tenant, _)| tenant,
    )
}

/// Binds a Unix socket at `path` with `mode` (0600 for admin, 0666 for the Workload API,
/// where the kernel's credentials, not file permissions, decide), replacing a stale socket
/// file left by a process that is gone, and refusing to steal one that is still answering.
///
/// The socket is bound and given its mode inside a fresh directory only writ can enter,
/// then renamed into place: nothing else can reach it before its mode is set, and no path
/// outside writ's directory is ever chmod-ed. (Binding at `path` and chmod-ing after
/// follows a symlink swapped in between, changing the mode of any file the attacker
/// names. The alternative, a umask around `bind`, is process-wide: it would race every
/// other thread creating files.) `rename` replaces whatever is at `path` (a symlink
/// included) without following it.
pub async fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            parent
        }
        None => Path::new("."),
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!("{} exists and is not a socket", path.display());
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("{} is in use by another process", path.display());
        }
    }
    let mut suffix = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
        .map_err(|_| anyhow::anyhow!("no randomness for a temporary socket directory"))?;
    // Short: a socket path has at most 107 bytes, and this one is one level deeper.
    let private = parent.join(format!(".w{}", crate::hex::lower(&suffix)));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let staged = private.join("s");
    let bound = (|| -> anyhow::Result<UnixListener> {
        let listener =
            UnixListener::bind(&staged).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        std::fs::rename(&staged, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Serves the admin API on `listener` until `shutdown` resolves, then drains; beside it
/// `grpc.health.v1` (`health`, see [`health::start`]) and gRPC reflection.
///
/// Each connection is wrapped in [`crate::h2_authority::AuthorityRewrite`], as on the
/// Workload API socket: gRPC C-core clients (Python's grpcio) send the socket path,
/// percent-encoded, as `:authority`, which h2 would reset. The wrapper keeps the
/// stream's SO_PEERCRED, which the admin API authorizes by.
pub async fn serve_admin(
    listener: UnixListener,
    issuer: Arc<Issuer>,
    health: crate::health::Health,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    let services = [
        crate::proto::admin::admin_server::SERVICE_NAME,
        crate::reflection::HEALTH,
    ];
    let stats = Arc::new(crate::h2_authority::Stats::default());
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).map(move |stream| {
        stream.map(|s| crate::h2_authority::AuthorityRewrite::with_stats(s, Arc::clone(&stats)))
    });
    tonic::transport::Server::builder()
        .add_service(admin::server(issuer)?)
        .add_service(health.service())
        .add_service(crate::reflection::v1(&services)?)
        .add_service(crate::reflection::v1alpha(&services)?)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("admin API server failed")
}

/// One heartbeat: records what `registry` has applied; reloads when the store is ahead
/// (then beats again); renews the lease when it is current.
fn beat(registry: &Registry, store: &Store, me: &str) -> Result<(), String> {
    for _ in 0..3 {
        let Some(applied) = registry.applied_version() else {
            return Ok(());
        };
        let sent = Instant::now();
        let head = store.heartbeat(me, applied).map_err(|e| e.to_string())?;
        if head <= applied {
            registry.renew_lease(applied, sent);
            return Ok(());
        }
        registry.reload().map_err(|e| e.to_string())?;
    }
    // Policy moving faster than three reloads: the next beat tries again.
    Ok(())
}

/// Follows the shared store's policy as replica `me`, for good (see [`replica`]).
pub async fn follow_policy(registry: Arc<Registry>, store: Arc<Store>, me: String) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut healthy = true;
    loop {
        let listen = {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.listen_policy()).await
        };
        let mut versions = match listen {
            Ok(Ok(versions)) => versions,
            Ok(Err(e)) => {
                if healthy {
                    tracing::error!(error = %e, replica = %me, "lost the shared store's policy notifications; signing stops when the lease runs out");
                    healthy = false;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(_) => return,
        };
        loop {
            // A notification, or the heartbeat's time: either way, beat (which reloads
            // when the store is ahead).
            tokio::select! {
                v = versions.recv() => if v.is_none() { break },
                () = tokio::time::sleep(replica::HEARTBEAT) => {}
            }
            let outcome = {
                let (registry, store, me) = (Arc::clone(&registry), Arc::clone(&store), me.clone());
                tokio::task::spawn_blocking(move || beat(&registry, &store, &me)).await
            };
            match outcome {
                Ok(Ok(())) => {
                    if !healthy {
                        tracing::info!(replica = %me, "following the shared store's policy again");
                        healthy = true;
                    }
                    backoff.reset();
                }
                Ok(Err(e)) => {
                    if healthy {
                        tracing::error!(error = %e, replica = %me, "cannot prove the policy current; signing stops when the lease runs out");
                        healthy = false;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(_) => return,
            }
        }
        if healthy {
            tracing::warn!(replica = %me, "the policy notification channel closed; listening again");
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
