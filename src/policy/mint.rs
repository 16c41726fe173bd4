//! What an operator may mint by hand (`writ x509 mint`, `writ jwt mint`): exactly what
//! policy gives some workload this instant, never more (issue 10, finding 7).
//!
//! The decision is [`entitlement_for`], the rule the issuer applies before it signs for
//! any workload; this module adds only what an operator may ask on top: fewer scopes.
//! There is no break-glass path: an identity no profile holds now is not minted,
//! whatever flags name it. [`why_not_entitled`] explains a refusal; it never decides.
//!
//! Must never: mint for a closed incident, an inactive grant, an agent with no profile,
//! or a scope the workload itself would not hold.

use super::{DEFAULT_TENANT, Entitlement, GrantState, PolicySnapshot, entitlement_for, wire_name};
use spiffe::{SpiffeId, TrustDomain};
use writ_verifier::Band;
use writ_verifier::authz::AgentPath;

/// Why an operator's mint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintRefusal {
    /// No profile holds the identity now.
    #[error("{spiffe_id} is not entitled under current policy: {reason}")]
    NotEntitled {
        /// The identity asked for.
        spiffe_id: String,
        /// The first thing in the way, for the operator.
        reason: String,
    },
    /// The identity is entitled, but not to this scope.
    #[error("scope {scope:?} is not among the scopes policy gives {spiffe_id} ({held}){why}")]
    Scope {
        /// The scope asked for.
        scope: String,
        /// The identity.
        spiffe_id: String,
        /// The scopes it holds, comma separated, or "none".
        held: String,
        /// Why a sensitive scope is missing, or nothing.
        why: &'static str,
    },
}

/// The entitlement an operator's mint of `spiffe_id` gets under `policy`: the one
/// [`entitlement_for`] gives a workload (its band and claims, never the operator's),
/// narrowed to `scopes` when any are named. Each of `scopes` must be one the identity
/// holds: an operator may mint less than policy gives, never more.
pub fn operator_entitlement(
    policy: &PolicySnapshot,
    base: &TrustDomain,
    tenant: &str,
    spiffe_id: &SpiffeId,
    scopes: &[String],
) -> Result<Entitlement, MintRefusal> {
    let Some(mut entitlement) = entitlement_for(policy, base, spiffe_id)
        .filter(|e| e.claims.tenant.as_deref() == Some(tenant))
    else {
        return Err(MintRefusal::NotEntitled {
            spiffe_id: spiffe_id.to_string(),
            reason: why_not_entitled(policy, base, tenant, spiffe_id),
        });
    };
    if scopes.is_empty() {
        return Ok(entitlement);
    }
    let held = &entitlement.claims.scopes;
    if let Some(scope) = scopes.iter().find(|s| !held.contains(s)) {
        return Err(MintRefusal::Scope {
            scope: scope.clone(),
            spiffe_id: spiffe_id.to_string(),
            held: if held.is_empty() {
                "none".into()
            } else {
                held.join(", ")
            },
            why: if policy.rules.is_sensitive(scope) {
                "; a sensitive scope is held only in the remediation band, when the incident names it"
            } else {
                ""
            },
        });
    }
    entitlement.claims.scopes.retain(|s| scopes.contains(s));
    Ok(entitlement)
}

/// Why policy gives no one `spiffe_id` now ([`entitlement_for`] said no): the first of
/// profile, band, incident, assignment and grant that is in the way, in one line.
pub fn why_not_entitled(
    policy: &PolicySnapshot,
    base: &TrustDomain,
    tenant: &str,
    spiffe_id: &SpiffeId,
) -> String {
    let trust_domain = spiffe_id.trust_domain_name();
    if trust_domain == base.as_str() && tenant == DEFAULT_TENANT {
        return match spiffe_id.path().strip_prefix("/service/") {
            Some(name) => match policy.profile(tenant, name) {
                Some(p) if !p.service => format!("profile {name:?} is not a service profile"),
                _ => format!("no service profile {name:?}"),
            },
            None => format!(
                "the base band holds only service identities, spiffe://{base}/service/<service profile>"
            ),
        };
    }
    // Only the caller's tenant is looked into: another tenant's names never show here.
    let Some(tenant_base) = policy.tenant_base(base, tenant) else {
        return format!("tenant {tenant:?} is disabled");
    };
    let band = if trust_domain == Band::Remediation.trust_domain_name(tenant_base.as_str()) {
        Band::Remediation
    } else if trust_domain == Band::Investigative.trust_domain_name(tenant_base.as_str()) {
        Band::Investigative
    } else {
        return format!(
            "{trust_domain} is not a trust domain of tenant {tenant:?} (investigate.{tenant_base}, remediate.{tenant_base})"
        );
    };
    let path = AgentPath::parse(spiffe_id.path());
    let (Some(agent), Some(incident)) = (path.agent, path.incident) else {
        return format!(
            "not an agent identity (spiffe://{trust_domain}/agent/<agent>/incident/<incident>{})",
            if band == Band::Remediation {
                "/grant/<grant>"
            } else {
                ""
            }
        );
    };
    let Some(profile) = policy.profile(tenant, agent) else {
        return format!("no profile for agent {agent:?}");
    };
    if profile.service {
        return format!("profile {agent:?} is a service profile");
    }
    if !profile.bands.contains(&band) {
        return format!("profile {agent:?} does not hold the {band} band");
    }
    match policy.incident(tenant, incident) {
        None => return format!("unknown incident {incident:?}"),
        Some(i) if !i.is_open() => return format!("incident {incident:?} is closed"),
        Some(i) if !i.assigned.contains(agent) => {
            return format!("agent {agent:?} is not assigned to incident {incident:?}");
        }
        Some(_) => {}
    }
    if let Some(id) = path.grant {
        match policy.grant(tenant, id) {
            None => return format!("unknown grant {id:?}"),
            Some(g) if g.agent != agent || g.incident != incident => {
                return format!("grant {id:?} is not agent {agent:?}'s for incident {incident:?}");
            }
            Some(g) if g.state != GrantState::Active => {
                return format!("grant {id:?} is {}, not active", wire_name(&g.state));
            }
            Some(_) => {}
        }
    }
    "no profile holds it now".into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::{Grant, Incident, IncidentState, Profile, Selector, Severity};
    use std::collections::BTreeSet;

    fn base() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        writ_verifier::parse_spiffe_id(s).unwrap()
    }

    fn policy() -> PolicySnapshot {
        let profile = |name: &str, bands: &[Band], scopes: &[&str], service: bool| Profile {
            tenant: "default".into(),
            name: name.into(),
            selectors: BTreeSet::from([Selector::Uid(1001)]),
            bands: bands.iter().copied().collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            service,
            created_at: 0,
        };
        let incident = |id: &str, open: bool| Incident {
            tenant: "default".into(),
            id: id.into(),
            title: "t".into(),
            severity: Severity::Sev3,
            assigned: BTreeSet::from(["fixer".into()]),
            scopes: BTreeSet::from(["logs:read".into(), "deploy:write".into()]),
            state: if open {
                IncidentState::Open
            } else {
                IncidentState::Closed
            },
            opened_by: "root".into(),
            opened_at: 0,
            closed_by: None,
            closed_at: (!open).then_some(1),
            max_lifetime_secs: 3600,
            source: None,
        };
        let grant = |id: &str, state: GrantState| Grant {
            tenant: "default".into(),
            id: id.into(),
            incident: "INC-1".into(),
            agent: "fixer".into(),
            action: "restart".into(),
            targets: BTreeSet::new(),
            evidence: Vec::new(),
            plan: "p".into(),
            plan_digest: crate::policy::grant::plan_digest("p"),
            scopes: BTreeSet::from(["deploy:write".into()]),
            window_secs: 600,
            requested_by: "root".into(),
            requested_by_uid: None,
            requested_at: 0,
            approvals: Vec::new(),
            state,
            activated_at: Some(0),
            expires_at: None,
            ended: None,
            playbook: None,
        };
        let mut p = PolicySnapshot::default();
        for pr in [
            profile(
                "fixer",
                &[Band::Investigative, Band::Remediation],
                &["logs:read", "deploy:write"],
                false,
            ),
            profile("logs", &[Band::Base], &["logs:write"], true),
        ] {
            p.profiles
                .insert(crate::policy::key("default", &pr.name), pr);
        }
        for i in [incident("INC-1", true), incident("INC-0", false)] {
            p.incidents
                .insert(crate::policy::key("default", &i.id), std::sync::Arc::new(i));
        }
        for g in [
            grant("g-on", GrantState::Active),
            grant("g-off", GrantState::Revoked),
        ] {
            p.grants.insert(crate::policy::key("default", &g.id), g);
        }
        p
    }

    fn refused(spiffe_id: &str, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        operator_entitlement(&policy(), &base(), "default", &id(spiffe_id), &scopes)
            .unwrap_err()
            .to_string()
    }

    const INV: &str = "spiffe://investigate.example.org/agent/fixer/incident/INC-1";

    #[test]
    fn an_operator_mints_what_policy_gives_with_the_policy_claims() {
        let p = policy();
        let e = operator_entitlement(&p, &base(), "default", &id(INV), &[]).unwrap();
        assert_eq!(e.band, Band::Investigative);
        // The sensitive scope is not held in the investigative band.
        assert_eq!(e.claims.scopes, ["logs:read"]);
        let rem = "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/g-on";
        let e = operator_entitlement(&p, &base(), "default", &id(rem), &[]).unwrap();
        assert_eq!(e.claims.grant.as_deref(), Some("g-on"));
        assert_eq!(e.claims.scopes, ["deploy:write"]);
        let svc = operator_entitlement(
            &p,
            &base(),
            "default",
            &id("spiffe://example.org/service/logs"),
            &["logs:write".into()],
        )
        .unwrap();
        assert_eq!(svc.band, Band::Base);
    }

    #[test]
    fn fewer_scopes_are_allowed_more_are_not() {
        let p = policy();
        let rem = id("spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/g-on");
        let e =
            operator_entitlement(&p, &base(), "default", &rem, &["deploy:write".into()]).unwrap();
        assert_eq!(e.claims.scopes, ["deploy:write"]);
        let msg = refused(INV, &["deploy:write"]);
        assert!(msg.contains("scope \"deploy:write\" is not among"), "{msg}");
        assert!(msg.contains("(logs:read)"), "{msg}");
        assert!(msg.contains("sensitive"), "{msg}");
        let msg = refused(INV, &["metrics:read"]);
        assert!(!msg.contains("sensitive"), "{msg}");
    }

    #[test]
    fn every_refusal_names_what_is_in_the_way() {
        let cases = [
            (
                "spiffe://investigate.example.org/agent/fixer/incident/INC-0",
                "incident \"INC-0\" is closed",
            ),
            (
                "spiffe://investigate.example.org/agent/fixer/incident/INC-9",
                "unknown incident \"INC-9\"",
            ),
            (
                "spiffe://investigate.example.org/agent/ghost/incident/INC-1",
                "no profile for agent \"ghost\"",
            ),
            (
                "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/g-off",
                "grant \"g-off\" is revoked, not active",
            ),
            (
                "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/g-9",
                "unknown grant \"g-9\"",
            ),
            (
                "spiffe://investigate.example.org/x",
                "not an agent identity",
            ),
            (
                "spiffe://example.org/service/web",
                "no service profile \"web\"",
            ),
            ("spiffe://example.org/svc", "only service identities"),
            (
                "spiffe://investigate.example.org/agent/logs/incident/INC-1",
                "profile \"logs\" is a service profile",
            ),
        ];
        for (spiffe_id, reason) in cases {
            let msg = refused(spiffe_id, &[]);
            assert!(
                msg.starts_with(&format!(
                    "{spiffe_id} is not entitled under current policy: "
                )),
                "{msg}"
            );
            assert!(msg.contains(reason), "{spiffe_id}: {msg}");
        }
    }
}
