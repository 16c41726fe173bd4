//! Policy: profiles, incidents, and the decision of which identities a workload holds.
//!
//! Everything here is pure: inputs in, decision out, no I/O. The server stores and
//! serves these objects; the agent asks [`entitlements`] what a caller may hold.

pub mod agent_view;
pub mod grant;
pub mod mint;
pub mod playbook;
pub mod revocation;
pub mod roles;
mod selector;
pub mod serial;
pub mod tenant;
pub mod text;

pub use agent_view::{agent_view, live};
pub use grant::{Grant, GrantError, GrantRequest, GrantState};
pub use selector::{Selector, SelectorError};
pub use serial::{RevokedSerial, Serial, SerialError};
pub use tenant::{DEFAULT_TENANT, Key, Tenant, TenantState, key};

use crate::identity::agent_spiffe_id;
use serde::{Deserialize, Serialize};
use spiffe::{SpiffeId, TrustDomain};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use writ_verifier::{Band, WritClaims};

/// Names of profiles, agents and incidents: one SPIFFE path segment each, bounded.
pub fn check_name(what: &str, name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadName {
            what: what.to_owned(),
            name: name.chars().take(64).collect(),
        })
    }
}

/// Scopes: `resource:verb`, lowercase, bounded (e.g. `logs:read`).
pub fn check_scope(scope: &str) -> Result<(), PolicyError> {
    let ok = scope.len() <= 128
        && scope
            .split_once(':')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
        && scope.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b':' | b'-' | b'_' | b'.' | b'*')
        });
    if ok {
        Ok(())
    } else {
        Err(PolicyError::BadScope(scope.chars().take(64).collect()))
    }
}

/// Why a policy object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A name is not a valid single SPIFFE path segment.
    #[error("invalid {what} name {name:?}: use 1-128 of [A-Za-z0-9._-], not . or ..")]
    BadName {
        /// What was being named.
        what: String,
        /// The name.
        name: String,
    },
    /// A scope is malformed.
    #[error("invalid scope {0:?}: use resource:verb, lowercase (e.g. logs:read)")]
    BadScope(String),
    /// A selector is malformed.
    #[error(transparent)]
    BadSelector(#[from] SelectorError),
    /// A profile has no selectors.
    #[error("a profile needs at least one selector")]
    NoSelectors,
    /// Too many of something.
    #[error("too many {0}")]
    TooMany(&'static str),
    /// A free-text field is empty, too long, or holds control characters.
    #[error("invalid {what}: {reason}")]
    BadText {
        /// Which field.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A severity is not sev1..sev4.
    #[error("invalid severity {0:?}: use sev1, sev2, sev3 or sev4")]
    BadSeverity(String),
    /// An incident names no agent.
    #[error("an incident needs at least one assigned agent (--assign)")]
    NoAssignee,
    /// A band list is empty or names the base band.
    #[error("invalid bands: {0}")]
    BadBands(String),
    /// Not one of the four roles.
    #[error("unknown role {0:?}: use admin, incident-commander, approver or auditor")]
    BadRole(String),
    /// An operator flag (`NAME=UID[:ROLE,ROLE]`) that does not parse.
    #[error("invalid operator {input:?}: {reason} (use NAME=UID[:ROLE[@TENANT],…])")]
    BadOperator {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configured operators contradict each other or demote root.
    #[error("{0}")]
    BadOperators(String),
    /// A profile would make an operator's uid a workload (see [`roles::check_profile`]).
    #[error(
        "profile {profile:?} selects {selector}, which is uid {uid}, an operator's: a workload running as it could approve its own grants; run agents as their own users"
    )]
    SelectsOperator {
        /// The profile.
        profile: String,
        /// The selector, as written.
        selector: String,
        /// The operator uid it selects.
        uid: u32,
    },
    /// A tenant that may not be created as given.
    #[error("invalid tenant: {0}")]
    BadTenant(String),
    /// An incident would be open longer than `max_incident_lifetime` allows.
    #[error(
        "incident {id:?} would be open for {}, longer than max_incident_lifetime ({}) allows",
        humantime::format_duration(std::time::Duration::from_secs(*lifetime_secs)),
        humantime::format_duration(std::time::Duration::from_secs(*ceiling_secs))
    )]
    PastLifetimeCeiling {
        /// The incident.
        id: String,
        /// Its total lifetime (from opening) it would have.
        lifetime_secs: u64,
        /// The ceiling.
        ceiling_secs: u64,
    },
}

/// What an operator may do (docs/architecture.md, "Policy objects"). Enforced per admin RPC
/// with the remediation work; recorded from the start so the audit trail names real people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Manages profiles, operators, CAs.
    Admin,
    /// Opens, extends and closes incidents; activates playbooks.
    IncidentCommander,
    /// Approves remediation grants.
    Approver,
    /// Reads the audit log.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [
        Role::Admin,
        Role::IncidentCommander,
        Role::Approver,
        Role::Auditor,
    ];
}

impl FromStr for Role {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "incident-commander" => Ok(Role::IncidentCommander),
            "approver" => Ok(Role::Approver),
            "auditor" => Ok(Role::Auditor),
            _ => Err(PolicyError::BadRole(s.chars().take(32).collect())),
        }
    }
}

/// A role held in one tenant: `approver@acme`, or `approver` for the default tenant (as
/// `--operator` and config `roles` write it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantRole {
    /// The role.
    pub role: Role,
    /// The tenant it is held in.
    pub tenant: String,
}

impl FromStr for TenantRole {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (role, tenant) = match s.split_once('@') {
            Some((role, tenant)) => {
                check_name("tenant", tenant)?;
                (role, tenant)
            }
            None => (s, DEFAULT_TENANT),
        };
        Ok(TenantRole {
            role: role.parse()?,
            tenant: tenant.to_owned(),
        })
    }
}

impl fmt::Display for TenantRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&wire_name(&self.role))?;
        if self.tenant != DEFAULT_TENANT {
            write!(f, "@{}", self.tenant)?;
        }
        Ok(())
    }
}

impl Serialize for TenantRole {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TenantRole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A human allowed on the admin socket, identified by the uid the kernel reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// Name recorded in incidents and logs; over mTLS, the name the operator's client
    /// certificate carries.
    pub name: String,
    /// Local uid, for the admin socket; absent for remote-only operators.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Roles, each in one tenant (`approver@acme`; no `@` is the default tenant);
    /// default approver.
    #[serde(default = "default_roles")]
    pub roles: BTreeSet<TenantRole>,
}

impl Operator {
    /// The roles held in `tenant`.
    pub fn roles_in(&self, tenant: &str) -> BTreeSet<Role> {
        self.roles
            .iter()
            .filter(|r| r.tenant == tenant)
            .map(|r| r.role)
            .collect()
    }

    /// The tenants they hold a role in.
    pub fn tenants(&self) -> BTreeSet<&str> {
        self.roles.iter().map(|r| r.tenant.as_str()).collect()
    }
}

fn default_roles() -> BTreeSet<TenantRole> {
    BTreeSet::from([TenantRole {
        role: Role::Approver,
        tenant: DEFAULT_TENANT.to_owned(),
    }])
}

impl FromStr for Operator {
    type Err = PolicyError;

    /// `NAME=UID[:ROLE,ROLE]`, as `writ dev --operator` takes it. Each refusal names the
    /// part that is wrong.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| PolicyError::BadOperator {
            input: s.chars().take(64).collect(),
            reason,
        };
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| bad("no '=' between the name and the uid".into()))?;
        check_name("operator", name)?;
        let (uid, roles) = match rest.split_once(':') {
            Some((uid, roles)) => (
                uid,
                roles
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<BTreeSet<TenantRole>, _>>()?,
            ),
            None => (rest, default_roles()),
        };
        // Digits only: `u32::from_str` would also take a leading `+`.
        let uid = Some(uid)
            .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| {
                bad(format!(
                    "uid {:?} is not a number from 0 to {}",
                    uid.chars().take(16).collect::<String>(),
                    u32::MAX
                ))
            })?;
        Ok(Operator {
            name: name.to_owned(),
            uid: Some(uid),
            roles,
        })
    }
}

/// The name a value has on the wire and in config (`incident-commander`, `active`): its
/// serde name, so there is one spelling.
pub fn wire_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Upper bound on selectors, scopes and assignees per object.
pub const MAX_ITEMS: usize = 32;

/// Which attested workloads are which agent, and what they may hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The tenant it belongs to.
    #[serde(default = "tenant::default_tenant")]
    pub tenant: String,
    /// The agent (or service) name, unique in its tenant.
    pub name: String,
    /// All of these must hold for a workload to match.
    pub selectors: BTreeSet<Selector>,
    /// Bands this agent may hold identities in (investigative, remediation).
    pub bands: BTreeSet<Band>,
    /// Scopes this agent may ever hold.
    pub scopes: BTreeSet<String>,
    /// A service profile: a standing identity `spiffe://<base>/service/<name>`.
    pub service: bool,
    /// Seconds since the epoch.
    pub created_at: i64,
}

impl Profile {
    /// Checks names, selectors, bands and scopes.
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_name("profile", &self.name)?;
        if self.selectors.is_empty() {
            return Err(PolicyError::NoSelectors);
        }
        if self.selectors.len() > MAX_ITEMS {
            return Err(PolicyError::TooMany("selectors"));
        }
        if self.scopes.len() > MAX_ITEMS {
            return Err(PolicyError::TooMany("scopes"));
        }
        for scope in &self.scopes {
            check_scope(scope)?;
        }
        if self.service {
            if self.tenant != DEFAULT_TENANT {
                return Err(PolicyError::BadBands(
                    "service profiles are the deployment's standing identities: create them in the default tenant".into(),
                ));
            }
            if !self.bands.is_empty() && self.bands != BTreeSet::from([Band::Base]) {
                return Err(PolicyError::BadBands(
                    "a service profile holds only a base identity".into(),
                ));
            }
        } else if self.bands.is_empty() || self.bands.contains(&Band::Base) {
            return Err(PolicyError::BadBands(
                "agents hold investigative and/or remediation identities, never base".into(),
            ));
        }
        Ok(())
    }

    /// Where it lives in the policy.
    pub fn key(&self) -> Key {
        key(&self.tenant, &self.name)
    }

    /// Whether a workload with `attested` selectors is this profile's: every selector of
    /// the profile must be among them.
    pub fn matches(&self, attested: &BTreeSet<Selector>) -> bool {
        self.selectors.is_subset(attested)
    }
}

/// Incident severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Highest.
    Sev1,
    /// High.
    Sev2,
    /// Medium.
    Sev3,
    /// Low.
    Sev4,
}

impl FromStr for Severity {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sev1" => Ok(Severity::Sev1),
            "sev2" => Ok(Severity::Sev2),
            "sev3" => Ok(Severity::Sev3),
            "sev4" => Ok(Severity::Sev4),
            _ => Err(PolicyError::BadSeverity(s.chars().take(16).collect())),
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Sev1 => "sev1",
            Severity::Sev2 => "sev2",
            Severity::Sev3 => "sev3",
            Severity::Sev4 => "sev4",
        })
    }
}

/// Open, or closed for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    /// Identities are issued.
    Open,
    /// Nothing is issued, ever again.
    Closed,
}

/// An incident: what agents work on, for how long, with which scopes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    /// The tenant it belongs to.
    #[serde(default = "tenant::default_tenant")]
    pub tenant: String,
    /// Unique in its tenant, never reused.
    pub id: String,
    /// Human title.
    pub title: String,
    /// Severity.
    pub severity: Severity,
    /// Agent (profile) names assigned.
    pub assigned: BTreeSet<String>,
    /// Scopes for this incident; identities carry profile ∩ incident scopes.
    pub scopes: BTreeSet<String>,
    /// Open or closed.
    pub state: IncidentState,
    /// Who opened it (operator name or uid).
    pub opened_by: String,
    /// Seconds since the epoch.
    pub opened_at: i64,
    /// Who closed it.
    #[serde(default)]
    pub closed_by: Option<String>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub closed_at: Option<i64>,
    /// After this many seconds open, it must be extended or it closes.
    pub max_lifetime_secs: u64,
    /// The incident in another system it was opened from (docs/incident-sources.md);
    /// `None` for one opened by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IncidentSource>,
}

/// Where an incident opened by a webhook came from: the configured source and the
/// source's own incident. Text from the source, bounded by the webhook parsers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentSource {
    /// The configured source's name (`[[incident_source]] name`).
    pub name: String,
    /// Its kind: `pagerduty`, `incident-io` or `generic`.
    pub kind: String,
    /// The source's incident id.
    pub incident_id: String,
    /// A link to the incident in the source, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Incident {
    /// Checks names, scopes and assignees.
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_name("incident", &self.id)?;
        text::line("title", &self.title, 1024)?;
        if self.assigned.is_empty() {
            return Err(PolicyError::NoAssignee);
        }
        if self.assigned.len() > MAX_ITEMS || self.scopes.len() > MAX_ITEMS {
            return Err(PolicyError::TooMany("assignees or scopes"));
        }
        for agent in &self.assigned {
            check_name("agent", agent)?;
        }
        for scope in &self.scopes {
            check_scope(scope)?;
        }
        Ok(())
    }

    /// Where it lives in the policy.
    pub fn key(&self) -> Key {
        key(&self.tenant, &self.id)
    }

    /// Whether identities may be issued for it.
    pub fn is_open(&self) -> bool {
        self.state == IncidentState::Open
    }

    /// Checks that its total lifetime, from opening, stays within `ceiling_secs` (config
    /// `max_incident_lifetime`): extending is for long incidents, never for authority
    /// without end.
    pub fn check_lifetime(&self, ceiling_secs: u64) -> Result<(), PolicyError> {
        if self.max_lifetime_secs > ceiling_secs {
            return Err(PolicyError::PastLifetimeCeiling {
                id: self.id.clone(),
                lifetime_secs: self.max_lifetime_secs,
                ceiling_secs,
            });
        }
        Ok(())
    }

    /// This incident with `by_secs` more lifetime: from its end, or from `now` if it has
    /// already run out (the expiry task may not have closed it yet). Refused past
    /// `ceiling_secs` of total lifetime.
    pub fn extended(&self, by_secs: u64, ceiling_secs: u64, now: i64) -> Result<Self, PolicyError> {
        let end = (self.opened_at + self.max_lifetime_secs as i64).max(now);
        let mut extended = self.clone();
        extended.max_lifetime_secs =
            (end.saturating_add(by_secs as i64) - self.opened_at).max(0) as u64;
        extended.check_lifetime(ceiling_secs)?;
        Ok(extended)
    }
}

/// An incident's maximum lifetime when its opener names none (docs/architecture.md, "The
/// CLI"), or the configured ceiling if that is shorter.
pub const DEFAULT_INCIDENT_LIFETIME_SECS: u64 = 4 * 3600;

/// The default ceiling on an incident's total lifetime, extensions included (config
/// `max_incident_lifetime`; docs/roles.md says why).
pub const DEFAULT_MAX_INCIDENT_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// The policy at one instant: every tenant, profile and incident, and a generation number
/// that grows on every change. Tenant-scoped objects are found by [`Key`] (tenant, name):
/// a lookup without its tenant does not compile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySnapshot {
    /// Grows by one on every change.
    pub generation: u64,
    /// The tenants created, by name. The default tenant is never among them: it exists in
    /// every deployment, on the deployment's base ([`PolicySnapshot::tenant_base`]).
    pub tenants: BTreeMap<String, Tenant>,
    /// Profiles by tenant and name.
    pub profiles: BTreeMap<Key, Profile>,
    /// Incidents by tenant and id (open and closed). Shared, so a change copies the map
    /// (one per change, docs/architecture.md "A change, in a storm"), not every incident.
    pub incidents: BTreeMap<Key, Arc<Incident>>,
    /// Remediation grants by tenant and id (every state).
    pub grants: BTreeMap<Key, Grant>,
    /// The remediation rules in force (quorums, sensitive scopes, limits).
    pub rules: grant::RemediationRules,
    /// Guardrail playbooks by tenant and name (every state).
    pub playbooks: BTreeMap<Key, playbook::Playbook>,
    /// Revoked X.509-SVIDs by serial, each kept until its notAfter (see [`serial`]).
    pub revoked_serials: BTreeMap<String, RevokedSerial>,
}

impl PolicySnapshot {
    /// Whether some profile selects by executable digest: only then is a caller's
    /// executable hashed (hashing is the one costly step of workload attestation).
    pub fn selects_by_digest(&self) -> bool {
        self.profiles
            .values()
            .flat_map(|p| p.selectors.iter())
            .any(|s| matches!(s, Selector::Sha256(_)))
    }

    /// The profile `name` of `tenant`.
    pub fn profile(&self, tenant: &str, name: &str) -> Option<&Profile> {
        self.profiles.get(&key(tenant, name))
    }

    /// The incident `id` of `tenant`.
    pub fn incident(&self, tenant: &str, id: &str) -> Option<&Incident> {
        self.incidents.get(&key(tenant, id)).map(|i| &**i)
    }

    /// The grant `id` of `tenant`.
    pub fn grant(&self, tenant: &str, id: &str) -> Option<&Grant> {
        self.grants.get(&key(tenant, id))
    }

    /// The playbook `name` of `tenant`.
    pub fn playbook(&self, tenant: &str, name: &str) -> Option<&playbook::Playbook> {
        self.playbooks.get(&key(tenant, name))
    }

    /// The base trust domain identities of `tenant` are issued under, while it issues:
    /// the deployment's `base` for the default tenant, the tenant's own for the others;
    /// `None` for a tenant unknown or disabled. The one rule of where a tenant's
    /// identities live.
    pub fn tenant_base(&self, base: &TrustDomain, tenant: &str) -> Option<TrustDomain> {
        let active =
            tenant == DEFAULT_TENANT || self.tenants.get(tenant).is_some_and(Tenant::is_active);
        active.then(|| self.base_of(base, tenant)).flatten()
    }

    /// The base trust domain of `tenant`, active or disabled (to name what it held).
    pub fn base_of(&self, base: &TrustDomain, tenant: &str) -> Option<TrustDomain> {
        if tenant == DEFAULT_TENANT {
            return Some(base.clone());
        }
        self.tenants.get(tenant).and_then(|t| t.trust_domain().ok())
    }
}

/// The tenants a workload with `attested` selectors belongs to: those of the profiles that
/// select it, or the default tenant when none does.
pub fn workload_tenants(
    policy: &PolicySnapshot,
    attested: &BTreeSet<Selector>,
) -> BTreeSet<String> {
    let mut tenants: BTreeSet<String> = policy
        .profiles
        .values()
        .filter(|p| p.matches(attested))
        .map(|p| p.tenant.clone())
        .collect();
    if tenants.is_empty() {
        tenants.insert(DEFAULT_TENANT.to_owned());
    }
    tenants
}

/// The trust domains whose bundles a workload with `attested` selectors receives, and
/// whose JWT-SVIDs it may have validated: its tenants' band trust domains and the
/// deployment's `base` (nodes, the server, services). Never another tenant's.
pub fn visible_trust_domains(
    policy: &PolicySnapshot,
    base: &TrustDomain,
    attested: &BTreeSet<Selector>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::from([base.to_string()]);
    for tenant in workload_tenants(policy, attested) {
        if let Some(tenant_base) = policy.base_of(base, &tenant) {
            for band in [Band::Investigative, Band::Remediation] {
                out.insert(band.trust_domain_name(tenant_base.as_str()));
            }
        }
    }
    out
}

/// The tenant whose band trust domain `trust_domain` is, and that tenant's base (the
/// deployment's base counts as the default tenant's).
pub fn tenant_of_trust_domain(
    policy: &PolicySnapshot,
    base: &TrustDomain,
    trust_domain: &str,
) -> Option<(String, TrustDomain)> {
    let names = std::iter::once(DEFAULT_TENANT).chain(policy.tenants.keys().map(String::as_str));
    names
        .filter_map(|t| policy.base_of(base, t).map(|b| (t.to_owned(), b)))
        .find(|(_, b)| {
            b.as_str() == trust_domain
                || Band::ALL
                    .iter()
                    .any(|band| band.trust_domain_name(b.as_str()) == trust_domain)
        })
}

/// One identity a workload is entitled to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entitlement {
    /// The SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Its band.
    pub band: Band,
    /// writ's claims to embed.
    pub claims: WritClaims,
    /// The Workload API `hint`: the incident id, the grant id, or `service`; unique per
    /// response.
    pub hint: String,
    /// No SVID for it may live past this instant (a grant's window), seconds since epoch.
    pub not_after_cap: Option<i64>,
}

/// Which identities a workload with `attested` selectors holds under `policy`.
///
/// Agents: one investigative identity per open incident their profile is assigned to,
/// with scopes = profile ∩ incident (all of the profile's when the incident names none).
/// Services: one standing identity in the base trust domain. The default identity (first)
/// is the service identity, else that of the longest-open incident. Agents never get an
/// identity outside an open incident.
pub fn entitlements(
    policy: &PolicySnapshot,
    base: &TrustDomain,
    attested: &BTreeSet<Selector>,
) -> Vec<Entitlement> {
    let incidents = open_incidents(policy);
    let mut out: Vec<Entitlement> = Vec::new();
    for profile in policy.profiles.values().filter(|p| p.matches(attested)) {
        let mut mine = profile_entitlements(profile, &incidents, policy, base);
        if profile.service {
            mine.append(&mut out);
            out = mine;
        } else {
            out.append(&mut mine);
        }
    }
    // Unique SPIFFE IDs; unique hints (a second profile on the same incident is told apart
    // by agent name).
    let mut seen_ids = BTreeSet::new();
    out.retain(|e| seen_ids.insert(e.spiffe_id.to_string()));
    let mut seen_hints = BTreeSet::new();
    for e in &mut out {
        if !seen_hints.insert(e.hint.clone()) {
            let agent = e
                .spiffe_id
                .path()
                .split('/')
                .nth(2)
                .unwrap_or_default()
                .to_owned();
            e.hint = format!("{}:{agent}", e.hint);
            seen_hints.insert(e.hint.clone());
        }
    }
    out
}

/// The entitlement behind `spiffe_id`, if some profile holds it under `policy` right now.
/// The server's check before it signs for an agent: the incident must be open this
/// instant, and the claims are the ones policy derives, not the ones asked for.
pub fn entitlement_for(
    policy: &PolicySnapshot,
    base: &TrustDomain,
    spiffe_id: &SpiffeId,
) -> Option<Entitlement> {
    held_by(policy, base, spiffe_id, |_| true)
}

/// The entitlement behind `spiffe_id`, if a workload with `attested` selectors holds it
/// under `policy`: one of [`entitlements`] (`attested`), found without deriving them all.
pub fn entitlement_of(
    policy: &PolicySnapshot,
    base: &TrustDomain,
    attested: &BTreeSet<Selector>,
    spiffe_id: &SpiffeId,
) -> Option<Entitlement> {
    held_by(policy, base, spiffe_id, |profile| profile.matches(attested))
}

/// The entitlement behind `spiffe_id` of a profile `eligible` admits.
fn held_by(
    policy: &PolicySnapshot,
    base: &TrustDomain,
    spiffe_id: &SpiffeId,
    eligible: impl Fn(&Profile) -> bool,
) -> Option<Entitlement> {
    // Only the profile and the incident the ID names can hold it: every identity is
    // `/agent/<profile>/incident/<incident>[/grant/<grant>]` or `/service/<profile>`
    // (`crate::identity`) in a trust domain of the profile's tenant. So the check costs
    // two lookups, not a walk of every profile and incident (it runs once per SVID).
    // What those hold is then derived as for the agent, and must match exactly.
    let (tenant, _) = tenant_of_trust_domain(policy, base, spiffe_id.trust_domain_name())?;
    let segments: Vec<&str> = spiffe_id.path().split('/').skip(1).collect();
    let (profile, incident) = match segments.as_slice() {
        ["agent", profile, "incident", incident, ..] => (*profile, Some(*incident)),
        ["service", profile] => (*profile, None),
        _ => return None,
    };
    let profile = policy.profile(&tenant, profile).filter(|p| eligible(p))?;
    let incidents: Vec<&Incident> = incident
        .and_then(|id| policy.incident(&tenant, id))
        .filter(|i| i.is_open())
        .into_iter()
        .collect();
    profile_entitlements(profile, &incidents, policy, base)
        .into_iter()
        .find(|e| &e.spiffe_id == spiffe_id)
}

fn open_incidents(policy: &PolicySnapshot) -> Vec<&Incident> {
    let mut incidents: Vec<&Incident> = policy
        .incidents
        .values()
        .map(|i| &**i)
        .filter(|i| i.is_open())
        .collect();
    incidents.sort_by(|a, b| (a.opened_at, &a.id, &a.tenant).cmp(&(b.opened_at, &b.id, &b.tenant)));
    incidents
}

/// The scopes an identity carries: profile ∩ incident (when the incident names any) ∩
/// grant (for remediation). Scopes touching deployment, IAM or secrets survive only in the
/// remediation band, and only when the incident names them.
pub fn effective_scopes(
    rules: &grant::RemediationRules,
    profile: &Profile,
    incident: &Incident,
    grant: Option<&Grant>,
) -> Vec<String> {
    profile
        .scopes
        .iter()
        .filter(|s| incident.scopes.is_empty() || incident.scopes.contains(*s))
        .filter(|s| grant.is_none_or(|g| g.scopes.contains(*s)))
        .filter(|s| !rules.is_sensitive(s) || (grant.is_some() && incident.scopes.contains(*s)))
        .cloned()
        .collect()
}

/// The identities `profile` holds: only ever in its own tenant, under that tenant's base,
/// for that tenant's incidents and grants. Nothing of another tenant is read here.
fn profile_entitlements(
    profile: &Profile,
    open: &[&Incident],
    policy: &PolicySnapshot,
    base: &TrustDomain,
) -> Vec<Entitlement> {
    let Some(tenant_base) = policy.tenant_base(base, &profile.tenant) else {
        return Vec::new();
    };
    let tenant = Some(profile.tenant.clone());
    if profile.service {
        // Services are the deployment's: standing identities in its own base.
        if profile.tenant != DEFAULT_TENANT {
            return Vec::new();
        }
        let id = SpiffeId::from_segments(tenant_base, &["service", &profile.name]).ok();
        let mut claims = WritClaims::new(Band::Base);
        claims.tenant = tenant;
        claims.scopes = profile
            .scopes
            .iter()
            .filter(|s| !policy.rules.is_sensitive(s))
            .cloned()
            .collect();
        return id
            .map(|spiffe_id| Entitlement {
                spiffe_id,
                band: Band::Base,
                claims,
                hint: "service".into(),
                not_after_cap: None,
            })
            .into_iter()
            .collect();
    }
    let mut out = Vec::new();
    let mine = open
        .iter()
        .filter(|i| i.tenant == profile.tenant && i.assigned.contains(&profile.name));
    for incident in mine {
        if profile.bands.contains(&Band::Investigative)
            && let Ok(spiffe_id) = agent_spiffe_id(
                &tenant_base,
                Band::Investigative,
                &profile.name,
                &incident.id,
                None,
            )
        {
            let mut claims = WritClaims::new(Band::Investigative);
            claims.tenant = tenant.clone();
            claims.incident = Some(incident.id.clone());
            claims.scopes = effective_scopes(&policy.rules, profile, incident, None);
            out.push(Entitlement {
                spiffe_id,
                band: Band::Investigative,
                claims,
                hint: incident.id.clone(),
                not_after_cap: None,
            });
        }
        if !profile.bands.contains(&Band::Remediation) {
            continue;
        }
        let active = policy.grants.values().filter(|g| {
            g.state == GrantState::Active
                && g.tenant == profile.tenant
                && g.agent == profile.name
                && g.incident == incident.id
        });
        for grant in active {
            let Ok(spiffe_id) = agent_spiffe_id(
                &tenant_base,
                Band::Remediation,
                &profile.name,
                &incident.id,
                Some(&grant.id),
            ) else {
                continue;
            };
            let mut claims = WritClaims::new(Band::Remediation);
            claims.tenant = tenant.clone();
            claims.incident = Some(incident.id.clone());
            claims.grant = Some(grant.id.clone());
            claims.plan_digest = Some(grant.plan_digest.clone());
            claims.approvers = grant.approvals.iter().map(|a| a.by.clone()).collect();
            claims.playbook = grant.playbook.clone();
            claims.targets = grant.targets.iter().cloned().collect();
            claims.scopes = effective_scopes(&policy.rules, profile, incident, Some(grant));
            out.push(Entitlement {
                spiffe_id,
                band: Band::Remediation,
                claims,
                hint: grant.id.clone(),
                not_after_cap: grant.expires_at,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap()
    }

    fn profile(name: &str, selectors: &[&str], scopes: &[&str]) -> Profile {
        Profile {
            tenant: "default".into(),
            name: name.into(),
            selectors: selectors.iter().map(|s| sel(s)).collect(),
            bands: BTreeSet::from([Band::Investigative]),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            service: false,
            created_at: 0,
        }
    }

    fn incident(id: &str, assigned: &[&str], scopes: &[&str], opened_at: i64) -> Incident {
        Incident {
            tenant: "default".into(),
            id: id.into(),
            title: "t".into(),
            severity: Severity::Sev2,
            assigned: assigned.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            state: IncidentState::Open,
            opened_by: "root".into(),
            opened_at,
            closed_by: None,
            closed_at: None,
            max_lifetime_secs: 4 * 3600,
            source: None,
        }
    }

    fn policy(profiles: Vec<Profile>, incidents: Vec<Incident>) -> PolicySnapshot {
        PolicySnapshot {
            tenants: Default::default(),
            generation: 1,
            profiles: profiles.into_iter().map(|p| (p.key(), p)).collect(),
            incidents: incidents
                .into_iter()
                .map(|i| (i.key(), Arc::new(i)))
                .collect(),
            grants: BTreeMap::new(),
            playbooks: BTreeMap::new(),
            rules: grant::RemediationRules::default(),
            revoked_serials: BTreeMap::new(),
        }
    }

    fn base() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn no_incident_no_identity() {
        let p = policy(vec![profile("triage", &["unix:uid:1001"], &[])], vec![]);
        assert!(entitlements(&p, &base(), &BTreeSet::from([sel("unix:uid:1001")])).is_empty());
    }

    #[test]
    fn one_identity_per_open_incident_in_opening_order() {
        let mut closed = incident("INC-0", &["triage"], &[], 0);
        closed.state = IncidentState::Closed;
        let p = policy(
            vec![profile(
                "triage",
                &["unix:uid:1001"],
                &["logs:read", "metrics:read"],
            )],
            vec![
                incident("INC-2", &["triage"], &["logs:read"], 20),
                incident("INC-1", &["triage"], &[], 10),
                incident("INC-3", &["other"], &[], 5),
                closed,
            ],
        );
        let got = entitlements(
            &p,
            &base(),
            &BTreeSet::from([sel("unix:uid:1001"), sel("unix:gid:5")]),
        );
        let ids: Vec<_> = got.iter().map(|e| e.spiffe_id.to_string()).collect();
        assert_eq!(
            ids,
            [
                "spiffe://investigate.example.org/agent/triage/incident/INC-1",
                "spiffe://investigate.example.org/agent/triage/incident/INC-2"
            ]
        );
        assert_eq!(got[0].claims.scopes, ["logs:read", "metrics:read"]);
        assert_eq!(got[1].claims.scopes, ["logs:read"]);
        assert_eq!(got[1].hint, "INC-2");
        assert_eq!(got[1].claims.incident.as_deref(), Some("INC-2"));
    }

    #[test]
    fn every_profile_selector_must_match() {
        let p = policy(
            vec![profile(
                "triage",
                &["unix:uid:1001", "unix:path:/usr/bin/agent"],
                &[],
            )],
            vec![incident("INC-1", &["triage"], &[], 0)],
        );
        assert!(entitlements(&p, &base(), &BTreeSet::from([sel("unix:uid:1001")])).is_empty());
        assert_eq!(
            entitlements(
                &p,
                &base(),
                &BTreeSet::from([sel("unix:uid:1001"), sel("unix:path:/usr/bin/agent")])
            )
            .len(),
            1
        );
    }

    #[test]
    fn hints_stay_unique_when_two_profiles_share_an_incident() {
        let p = policy(
            vec![
                profile("a", &["unix:uid:1"], &[]),
                profile("b", &["unix:uid:1"], &[]),
            ],
            vec![incident("INC-1", &["a", "b"], &[], 0)],
        );
        let got = entitlements(&p, &base(), &BTreeSet::from([sel("unix:uid:1")]));
        let hints: BTreeSet<_> = got.iter().map(|e| e.hint.clone()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(hints.len(), 2);
    }

    #[test]
    fn service_profiles_get_a_standing_base_identity_first() {
        let mut svc = profile("logs-api", &["unix:uid:1"], &[]);
        svc.service = true;
        svc.bands = BTreeSet::from([Band::Base]);
        let p = policy(
            vec![svc, profile("triage", &["unix:uid:1"], &[])],
            vec![incident("INC-1", &["triage"], &[], 0)],
        );
        let got = entitlements(&p, &base(), &BTreeSet::from([sel("unix:uid:1")]));
        assert_eq!(
            got[0].spiffe_id.to_string(),
            "spiffe://example.org/service/logs-api"
        );
        assert_eq!(got[0].band, Band::Base);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn advisory_profiles_without_investigative_band_get_nothing() {
        let mut remediation_only = profile("fixer", &["unix:uid:1"], &[]);
        remediation_only.bands = BTreeSet::from([Band::Remediation]);
        let p = policy(
            vec![remediation_only],
            vec![incident("INC-1", &["fixer"], &[], 0)],
        );
        assert!(entitlements(&p, &base(), &BTreeSet::from([sel("unix:uid:1")])).is_empty());
    }

    #[test]
    fn server_side_check_follows_incident_state() {
        let mut p = policy(
            vec![profile("triage", &["unix:uid:1"], &[])],
            vec![incident("INC-1", &["triage"], &[], 0)],
        );
        let id =
            SpiffeId::new("spiffe://investigate.example.org/agent/triage/incident/INC-1").unwrap();
        assert!(entitlement_for(&p, &base(), &id).is_some());
        let other =
            SpiffeId::new("spiffe://investigate.example.org/agent/other/incident/INC-1").unwrap();
        assert!(entitlement_for(&p, &base(), &other).is_none());
        Arc::make_mut(
            p.incidents
                .get_mut(&crate::policy::key("default", "INC-1"))
                .unwrap(),
        )
        .state = IncidentState::Closed;
        assert!(entitlement_for(&p, &base(), &id).is_none());
    }

    #[test]
    fn the_servers_check_finds_exactly_what_the_agent_derives() {
        let mut fixer = profile("fixer", &["unix:uid:2"], &["logs:read", "deploy:restart"]);
        fixer.bands.insert(Band::Remediation);
        let mut api = profile("logs-api", &["unix:uid:3"], &["logs:read"]);
        api.service = true;
        let mut closed = incident("INC-3", &["triage", "fixer"], &[], 0);
        closed.state = IncidentState::Closed;
        let mut remediable = incident(
            "INC-1",
            &["triage", "fixer"],
            &["logs:read", "deploy:restart"],
            0,
        );
        remediable.severity = Severity::Sev3;
        let mut p = policy(
            vec![profile("triage", &["unix:uid:1"], &[]), fixer, api],
            vec![remediable, incident("INC-2", &["triage"], &[], 5), closed],
        );
        let g = active_grant(&p, "fixer", "INC-1", &["deploy:restart"]);
        p.grants.insert(crate::policy::key("default", &g.id), g);
        let mut held = 0;
        for uid in 1..=3 {
            let attested = BTreeSet::from([sel(&format!("unix:uid:{uid}"))]);
            let other = BTreeSet::from([sel(&format!("unix:uid:{}", uid % 3 + 1))]);
            for e in entitlements(&p, &base(), &attested) {
                let found = entitlement_for(&p, &base(), &e.spiffe_id).unwrap();
                assert_eq!(
                    (
                        &found.spiffe_id,
                        found.band,
                        &found.claims,
                        found.not_after_cap
                    ),
                    (&e.spiffe_id, e.band, &e.claims, e.not_after_cap)
                );
                let of = entitlement_of(&p, &base(), &attested, &e.spiffe_id).unwrap();
                assert_eq!(of, found);
                assert!(
                    entitlement_of(&p, &base(), &other, &e.spiffe_id).is_none(),
                    "another workload's identity"
                );
                held += 1;
            }
        }
        assert_eq!(held, 5, "triage 2, fixer 1 + 1 remediation, the service 1");
        for refused in [
            "spiffe://investigate.example.org/agent/triage/incident/INC-3",
            "spiffe://investigate.example.org/agent/fixer/incident/INC-2",
            "spiffe://investigate.example.org/agent/triage/incident/INC-1/extra",
            "spiffe://investigate.example.org/agent/nobody/incident/INC-1",
            "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/g-2",
            "spiffe://remediate.example.org/agent/triage/incident/INC-1",
            "spiffe://example.org/agent/triage/incident/INC-1",
            "spiffe://example.org/service/triage",
            "spiffe://investigate.example.org/service/logs-api",
            "spiffe://investigate.other.org/agent/triage/incident/INC-1",
            "spiffe://example.org/service/logs-api/x",
        ] {
            let id = SpiffeId::new(refused).unwrap();
            assert!(entitlement_for(&p, &base(), &id).is_none(), "{refused}");
        }
    }

    fn active_grant(p: &PolicySnapshot, agent: &str, incident: &str, scopes: &[&str]) -> Grant {
        let request = GrantRequest {
            incident: incident.into(),
            agent: agent.into(),
            action: "restart".into(),
            plan: "kubectl rollout restart deploy/x".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..GrantRequest::default()
        };
        let inc = &p.incidents[&crate::policy::key("default", incident)];
        let rules = grant::RemediationRules::default();
        let g = grant::new_grant(&rules, request, inc, true, "agent", "g-1".into(), 10).unwrap();
        grant::approve(&rules, &g, inc, "alice", &g.plan_digest.clone(), 3600, 11).unwrap()
    }

    #[test]
    fn an_active_grant_adds_a_remediation_identity_with_its_claims() {
        let mut fixer = profile("fixer", &["unix:uid:1"], &["logs:read", "deploy:restart"]);
        fixer.bands.insert(Band::Remediation);
        let mut inc = incident("INC-1", &["fixer"], &["logs:read", "deploy:restart"], 0);
        inc.severity = Severity::Sev3;
        let mut p = policy(vec![fixer], vec![inc]);
        let attested = BTreeSet::from([sel("unix:uid:1")]);
        assert_eq!(
            entitlements(&p, &base(), &attested).len(),
            1,
            "investigative only before approval"
        );
        let g = active_grant(&p, "fixer", "INC-1", &["deploy:restart"]);
        p.grants
            .insert(crate::policy::key("default", &g.id), g.clone());
        let got = entitlements(&p, &base(), &attested);
        assert_eq!(got.len(), 2);
        // Investigative identities never carry deploy/IAM/secrets scopes.
        assert_eq!(got[0].claims.scopes, ["logs:read"]);
        let rem = &got[1];
        assert_eq!(
            rem.spiffe_id.to_string(),
            "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/g-1"
        );
        assert_eq!(rem.band, Band::Remediation);
        assert_eq!(rem.claims.grant.as_deref(), Some("g-1"));
        assert_eq!(
            rem.claims.plan_digest.as_deref(),
            Some(g.plan_digest.as_str())
        );
        assert_eq!(rem.claims.approvers, ["alice"]);
        assert_eq!(rem.claims.scopes, ["deploy:restart"]);
        assert_eq!(rem.not_after_cap, g.expires_at);
        assert_eq!(rem.hint, "g-1");
        // The server's check follows the grant's state.
        assert!(entitlement_for(&p, &base(), &rem.spiffe_id).is_some());
        let revoked = grant::end(&g, GrantState::Revoked, "bob", "", 20).unwrap();
        p.grants
            .insert(crate::policy::key("default", &g.id), revoked);
        assert!(entitlement_for(&p, &base(), &rem.spiffe_id).is_none());
    }

    #[test]
    fn grants_do_not_reach_other_agents_or_advisory_profiles() {
        let mut fixer = profile("fixer", &["unix:uid:1"], &[]);
        fixer.bands.insert(Band::Remediation);
        let advisory = profile("advisor", &["unix:uid:2"], &[]);
        let mut inc = incident("INC-1", &["fixer", "advisor"], &[], 0);
        inc.severity = Severity::Sev4;
        let mut p = policy(vec![fixer, advisory], vec![inc]);
        let g = active_grant(&p, "fixer", "INC-1", &[]);
        p.grants.insert(crate::policy::key("default", &g.id), g);
        let advisor = entitlements(&p, &base(), &BTreeSet::from([sel("unix:uid:2")]));
        assert!(advisor.iter().all(|e| e.band == Band::Investigative));
    }

    #[test]
    fn operators_parse_with_default_and_explicit_roles() {
        let alice: Operator = "alice=1001".parse().unwrap();
        assert_eq!(alice.uid, Some(1001));
        assert_eq!(
            alice.roles_in(DEFAULT_TENANT),
            BTreeSet::from([Role::Approver])
        );
        let bob: Operator = "bob=1002:admin,incident-commander".parse().unwrap();
        assert_eq!(
            bob.roles_in(DEFAULT_TENANT),
            BTreeSet::from([Role::Admin, Role::IncidentCommander])
        );
        // Roles held in another tenant are that tenant's alone.
        let carol: Operator = "carol=1003:approver@acme,auditor".parse().unwrap();
        assert_eq!(carol.roles_in("acme"), BTreeSet::from([Role::Approver]));
        assert_eq!(
            carol.roles_in(DEFAULT_TENANT),
            BTreeSet::from([Role::Auditor])
        );
        assert!(carol.roles_in("globex").is_empty());
        assert_eq!(
            carol
                .roles
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["approver@acme", "auditor"]
        );
        for bad in [
            "alice",
            "alice=x",
            "a/b=1",
            "carol=1:root",
            "=1",
            "dave=1:approver@",
            "dave=1:approver@a/b",
            "dave=1:@acme",
        ] {
            assert!(bad.parse::<Operator>().is_err(), "{bad}");
        }
        // Each refusal names the part that is wrong, not "a bad name".
        for (bad, says) in [
            ("alice=abc", r#"uid "abc" is not a number"#),
            ("alice=+5", r#"uid "+5" is not a number"#),
            ("alice=99999999999", "is not a number from 0 to 4294967295"),
            ("alice", "no '='"),
            ("carol=1:root", r#"unknown role "root""#),
            ("a/b=1", "invalid operator name"),
        ] {
            let e = bad.parse::<Operator>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn extensions_stop_at_the_lifetime_ceiling() {
        let inc = incident("INC-1", &["a"], &[], 1000);
        let day = 24 * 3600;
        let once = inc.extended(2 * 3600, 7 * day, 1500).unwrap();
        assert_eq!(once.max_lifetime_secs, 6 * 3600);
        // Past its end already: the extension counts from now.
        let late = inc.extended(3600, 7 * day, 1000 + 5 * 3600).unwrap();
        assert_eq!(late.max_lifetime_secs, 6 * 3600);
        let mut long = inc.clone();
        long.max_lifetime_secs = 7 * day - 60;
        assert!(
            long.extended(60, 7 * day, 1500).is_ok(),
            "up to the ceiling"
        );
        let e = long.extended(61, 7 * day, 1500).unwrap_err();
        assert!(
            matches!(e, PolicyError::PastLifetimeCeiling { lifetime_secs, .. } if lifetime_secs == 7 * day + 1),
            "{e}"
        );
        assert!(
            e.to_string().contains("max_incident_lifetime (7days)"),
            "{e}"
        );
        assert!(long.check_lifetime(7 * day).is_ok());
        assert!(long.check_lifetime(day).is_err());
    }

    #[test]
    fn validation_refuses_bad_objects() {
        let mut p = profile("ok", &["unix:uid:1"], &["logs:read"]);
        assert!(p.validate().is_ok());
        p.name = "a/b".into();
        assert!(p.validate().is_err());
        let mut p = profile("ok", &[], &[]);
        assert_eq!(p.validate(), Err(PolicyError::NoSelectors));
        p = profile("ok", &["unix:uid:1"], &["LOGS"]);
        assert!(p.validate().is_err());
        p = profile("ok", &["unix:uid:1"], &[]);
        p.bands.insert(Band::Base);
        assert!(p.validate().is_err());
        let mut i = incident("INC-1", &[], &[], 0);
        assert_eq!(i.validate(), Err(PolicyError::NoAssignee));
        i = incident("..", &["a"], &[], 0);
        assert!(i.validate().is_err());
    }
}
