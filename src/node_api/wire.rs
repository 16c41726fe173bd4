//! The policy on the wire: [`PolicySnapshot`] (an agent's view of it, see
//! [`agent_view`](fn@crate::policy::agent_view)) to and from `writ.node.v1.AgentPolicy`.
//!
//! Enumerations travel as their names, so a server one version ahead can add a selector
//! kind, a band or a state without breaking older agents. What an agent does not know it
//! treats as the safe reading: a profile with a selector it cannot check selects nobody;
//! an incident in a state it does not know is not open; a grant likewise is not active; a
//! severity it does not know needs the most approvals. Nothing is dropped that would make
//! a revocation disappear.

use crate::policy::grant::{Approval, Ending, RemediationRules};
use crate::policy::{
    DEFAULT_TENANT, Grant, GrantState, Incident, IncidentState, PolicySnapshot, Profile,
    RevokedSerial, Selector, Severity, Tenant, TenantState, wire_name,
};
use crate::proto::node as pb;
use std::str::FromStr;
use std::sync::Arc;
use writ_verifier::Band;

/// Why a policy from the server was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A field every version sends is missing.
    #[error("policy from the server has no {0}")]
    Missing(&'static str),
}

/// The policy as sent to agents. An agent that does not know tenants (`tenants` false)
/// receives the default tenant's objects only: it would read any other's as the default
/// tenant's, under the deployment's base.
pub fn encode_policy(view: &PolicySnapshot, tenants: bool) -> pb::AgentPolicy {
    let sent = |tenant: &str| tenants || tenant == DEFAULT_TENANT;
    pb::AgentPolicy {
        generation: view.generation,
        tenants: if tenants {
            view.tenants
                .values()
                .map(|t| pb::AgentTenant {
                    name: t.name.clone(),
                    base: t.base.clone(),
                    state: wire_name(&t.state),
                })
                .collect()
        } else {
            Vec::new()
        },
        profiles: view
            .profiles
            .values()
            .filter(|p| sent(&p.tenant))
            .map(encode_profile)
            .collect(),
        incidents: view
            .incidents
            .values()
            .filter(|i| sent(&i.tenant))
            .map(|i| encode_incident(i))
            .collect(),
        grants: view
            .grants
            .values()
            .filter(|g| sent(&g.tenant))
            .map(encode_grant)
            .collect(),
        rules: Some(encode_rules(&view.rules)),
        revoked_serials: view
            .revoked_serials
            .values()
            .map(|r| pb::RevokedSerial {
                serial: r.serial.clone(),
                spiffe_id: r.spiffe_id.clone(),
                trust_domain: r.trust_domain.clone(),
                revoked_at: r.revoked_at,
                revoked_by: r.revoked_by.clone(),
                not_after: r.not_after,
            })
            .collect(),
    }
}

/// The policy as an agent holds it.
pub fn decode_policy(policy: pb::AgentPolicy) -> Result<PolicySnapshot, WireError> {
    let rules = decode_rules(policy.rules.ok_or(WireError::Missing("rules"))?);
    let mut out = PolicySnapshot {
        generation: policy.generation,
        rules,
        ..PolicySnapshot::default()
    };
    for t in policy.tenants {
        // The default tenant is the deployment's own; a server never sends it.
        if t.name.is_empty() || t.name == DEFAULT_TENANT {
            continue;
        }
        let state = if t.state == wire_name(&TenantState::Active) {
            TenantState::Active
        } else {
            TenantState::Disabled
        };
        out.tenants.insert(
            t.name.clone(),
            Tenant {
                name: t.name,
                base: t.base,
                state,
                created_by: String::new(),
                created_at: 0,
                disabled_by: None,
                disabled_at: None,
            },
        );
    }
    for profile in policy.profiles {
        match decode_profile(profile) {
            Ok(p) => {
                out.profiles.insert(p.key(), p);
            }
            Err(name) => {
                tracing::warn!(profile = ?name,
                    "a profile selects by something this agent cannot check; it selects nobody here");
            }
        }
    }
    for incident in policy.incidents {
        let incident = decode_incident(incident);
        out.incidents.insert(incident.key(), Arc::new(incident));
    }
    for grant in policy.grants {
        let grant = decode_grant(grant);
        out.grants.insert(grant.key(), grant);
    }
    for r in policy.revoked_serials {
        out.revoked_serials.insert(
            r.serial.clone(),
            RevokedSerial {
                serial: r.serial,
                spiffe_id: r.spiffe_id,
                trust_domain: r.trust_domain,
                revoked_at: r.revoked_at,
                revoked_by: r.revoked_by,
                not_after: r.not_after,
            },
        );
    }
    Ok(out)
}

fn encode_profile(p: &Profile) -> pb::AgentProfile {
    pb::AgentProfile {
        name: p.name.clone(),
        selectors: p.selectors.iter().map(ToString::to_string).collect(),
        bands: p.bands.iter().map(|b| b.as_str().to_owned()).collect(),
        scopes: p.scopes.iter().cloned().collect(),
        service: p.service,
        created_at: p.created_at,
        tenant: tenant_on_wire(&p.tenant),
    }
}

/// A tenant as the wire carries it: empty for the default tenant, so an older peer's
/// objects (which carry none) are the default tenant's.
fn tenant_on_wire(tenant: &str) -> String {
    if tenant == DEFAULT_TENANT {
        String::new()
    } else {
        tenant.to_owned()
    }
}

fn tenant_off_wire(tenant: String) -> String {
    if tenant.is_empty() {
        DEFAULT_TENANT.to_owned()
    } else {
        tenant
    }
}

/// The profile, or its name when one of its selectors is unknown here.
fn decode_profile(p: pb::AgentProfile) -> Result<Profile, String> {
    let Ok(selectors) = p
        .selectors
        .iter()
        .map(|s| Selector::from_str(s))
        .collect::<Result<_, _>>()
    else {
        return Err(p.name);
    };
    Ok(Profile {
        tenant: tenant_off_wire(p.tenant),
        name: p.name,
        selectors,
        // A band this agent does not know is one it never serves.
        bands: p
            .bands
            .iter()
            .filter_map(|b| Band::from_str(b).ok())
            .collect(),
        scopes: p.scopes.into_iter().collect(),
        service: p.service,
        created_at: p.created_at,
    })
}

fn encode_incident(i: &Incident) -> pb::AgentIncident {
    pb::AgentIncident {
        id: i.id.clone(),
        title: i.title.clone(),
        severity: wire_name(&i.severity),
        assigned: i.assigned.iter().cloned().collect(),
        scopes: i.scopes.iter().cloned().collect(),
        state: wire_name(&i.state),
        opened_by: i.opened_by.clone(),
        opened_at: i.opened_at,
        closed_by: i.closed_by.clone(),
        closed_at: i.closed_at,
        max_lifetime_secs: i.max_lifetime_secs,
        tenant: tenant_on_wire(&i.tenant),
    }
}

fn decode_incident(i: pb::AgentIncident) -> Incident {
    Incident {
        tenant: tenant_off_wire(i.tenant),
        id: i.id,
        title: i.title,
        severity: Severity::from_str(&i.severity).unwrap_or(Severity::Sev1),
        assigned: i.assigned.into_iter().collect(),
        scopes: i.scopes.into_iter().collect(),
        state: if i.state == wire_name(&IncidentState::Open) {
            IncidentState::Open
        } else {
            IncidentState::Closed
        },
        opened_by: i.opened_by,
        opened_at: i.opened_at,
        closed_by: i.closed_by,
        closed_at: i.closed_at,
        max_lifetime_secs: i.max_lifetime_secs,
        // Agents need nothing of where an incident came from.
        source: None,
    }
}

/// A grant as agents see it: without its plan and evidence.
pub fn encode_grant(g: &Grant) -> pb::AgentGrant {
    pb::AgentGrant {
        id: g.id.clone(),
        incident: g.incident.clone(),
        agent: g.agent.clone(),
        action: g.action.clone(),
        targets: g.targets.iter().cloned().collect(),
        plan_digest: g.plan_digest.clone(),
        scopes: g.scopes.iter().cloned().collect(),
        window_secs: g.window_secs,
        requested_by: g.requested_by.clone(),
        requested_by_uid: g.requested_by_uid,
        requested_at: g.requested_at,
        approvals: g
            .approvals
            .iter()
            .map(|a| pb::Approval {
                by: a.by.clone(),
                at: a.at,
                plan_digest: a.plan_digest.clone(),
            })
            .collect(),
        state: wire_name(&g.state),
        activated_at: g.activated_at,
        expires_at: g.expires_at,
        ended: g.ended.as_ref().map(|e| pb::GrantEnding {
            at: e.at,
            by: e.by.clone(),
            reason: e.reason.clone(),
        }),
        playbook: g.playbook.clone(),
        tenant: tenant_on_wire(&g.tenant),
    }
}

/// Reads [`encode_grant`]; plan and evidence are empty.
pub fn decode_grant(g: pb::AgentGrant) -> Grant {
    let state = [
        GrantState::Pending,
        GrantState::Active,
        GrantState::Denied,
        GrantState::Revoked,
        GrantState::Expired,
    ]
    .into_iter()
    .find(|s| wire_name(s) == g.state)
    // Not active, and still listed as revoked if it held an identity.
    .unwrap_or(GrantState::Revoked);
    Grant {
        tenant: tenant_off_wire(g.tenant),
        id: g.id,
        incident: g.incident,
        agent: g.agent,
        action: g.action,
        targets: g.targets.into_iter().collect(),
        evidence: Vec::new(),
        plan: String::new(),
        plan_digest: g.plan_digest,
        scopes: g.scopes.into_iter().collect(),
        window_secs: g.window_secs,
        requested_by: g.requested_by,
        requested_by_uid: g.requested_by_uid,
        requested_at: g.requested_at,
        approvals: g
            .approvals
            .into_iter()
            .map(|a| Approval {
                by: a.by,
                at: a.at,
                plan_digest: a.plan_digest,
            })
            .collect(),
        state,
        activated_at: g.activated_at,
        expires_at: g.expires_at,
        ended: g.ended.map(|e| Ending {
            at: e.at,
            by: e.by,
            reason: e.reason,
        }),
        playbook: g.playbook,
    }
}

fn encode_rules(r: &RemediationRules) -> pb::RemediationRules {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    pb::RemediationRules {
        quorum_sev1: n(r.quorum_sev1),
        quorum_sev2: n(r.quorum_sev2),
        quorum_sev3: n(r.quorum_sev3),
        quorum_sev4: n(r.quorum_sev4),
        sensitive_scope_prefixes: r.sensitive_scope_prefixes.clone(),
        sensitive_quorum: n(r.sensitive_quorum),
        pending_per_incident: n(r.pending_per_incident),
        per_agent_per_hour: n(r.per_agent_per_hour),
    }
}

fn decode_rules(r: pb::RemediationRules) -> RemediationRules {
    let n = |v: u32| v as usize;
    RemediationRules {
        quorum_sev1: n(r.quorum_sev1),
        quorum_sev2: n(r.quorum_sev2),
        quorum_sev3: n(r.quorum_sev3),
        quorum_sev4: n(r.quorum_sev4),
        sensitive_scope_prefixes: r.sensitive_scope_prefixes,
        sensitive_quorum: n(r.sensitive_quorum),
        pending_per_incident: n(r.pending_per_incident),
        per_agent_per_hour: n(r.per_agent_per_hour),
        demo_single_user: false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;
    use std::collections::BTreeSet;

    fn policy() -> PolicySnapshot {
        let mut p = PolicySnapshot {
            generation: 7,
            ..PolicySnapshot::default()
        };
        p.profiles.insert(
            crate::policy::key("default", "triage"),
            Profile {
                tenant: "default".into(),
                name: "triage".into(),
                selectors: BTreeSet::from([Selector::from_str("unix:uid:1001").unwrap()]),
                bands: BTreeSet::from([Band::Investigative, Band::Remediation]),
                scopes: BTreeSet::from(["logs:read".to_owned()]),
                service: false,
                created_at: 5,
            },
        );
        p.incidents.insert(
            crate::policy::key("default", "INC-1"),
            Arc::new(Incident {
                tenant: "default".into(),
                id: "INC-1".into(),
                title: "db down".into(),
                severity: Severity::Sev2,
                assigned: BTreeSet::from(["triage".to_owned()]),
                scopes: BTreeSet::new(),
                state: IncidentState::Open,
                opened_by: "alice".into(),
                opened_at: 10,
                closed_by: None,
                closed_at: None,
                max_lifetime_secs: 3600,
                source: None,
            }),
        );
        p.grants.insert(
            crate::policy::key("default", "g-1"),
            Grant {
                tenant: "default".into(),
                id: "g-1".into(),
                incident: "INC-1".into(),
                agent: "triage".into(),
                action: "restart".into(),
                targets: BTreeSet::from(["svc".to_owned()]),
                evidence: Vec::new(),
                plan: String::new(),
                plan_digest: "ab".repeat(32),
                scopes: BTreeSet::from(["deploy:restart".to_owned()]),
                window_secs: 600,
                requested_by: "alice".into(),
                requested_by_uid: Some(1001),
                requested_at: 11,
                approvals: vec![Approval {
                    by: "bob".into(),
                    at: 12,
                    plan_digest: "ab".repeat(32),
                }],
                state: GrantState::Active,
                activated_at: Some(12),
                expires_at: Some(612),
                ended: None,
                playbook: None,
            },
        );
        p.revoked_serials.insert(
            "0a".into(),
            RevokedSerial {
                serial: "0a".into(),
                spiffe_id: "spiffe://investigate.example.org/agent/triage/incident/INC-1".into(),
                trust_domain: "investigate.example.org".into(),
                revoked_at: 20,
                revoked_by: "alice".into(),
                not_after: 300,
            },
        );
        p
    }

    fn round_trip(bytes: &[u8]) -> PolicySnapshot {
        decode_policy(pb::AgentPolicy::decode(bytes).unwrap()).unwrap()
    }

    #[test]
    fn a_view_survives_the_wire() {
        let view = policy();
        let bytes = encode_policy(&view, true).encode_to_vec();
        assert_eq!(round_trip(&bytes), view);
    }

    /// A field number this version does not define, as a newer server would add one:
    /// tag (number << 3 | wire type), then the value.
    fn unknown_fields() -> Vec<u8> {
        let mut extra = Vec::new();
        prost::encoding::string::encode(90, &"from the future".to_owned(), &mut extra);
        prost::encoding::uint64::encode(91, &42, &mut extra);
        extra
    }

    #[test]
    fn an_agent_ignores_fields_a_newer_server_added() {
        let view = policy();
        let mut message = encode_policy(&view, true);
        // Unknown fields at the top and inside nested messages.
        let mut profile = message.profiles[0].encode_to_vec();
        profile.extend(unknown_fields());
        let mut incident = message.incidents[0].encode_to_vec();
        incident.extend(unknown_fields());
        message.profiles.clear();
        message.incidents.clear();
        let mut bytes = message.encode_to_vec();
        prost::encoding::bytes::encode(2, &profile, &mut bytes);
        prost::encoding::bytes::encode(3, &incident, &mut bytes);
        bytes.extend(unknown_fields());
        assert_eq!(round_trip(&bytes), view);

        // The same for the whole Sync update.
        let mut update = pb::SyncUpdate {
            generation: 7,
            policy: Some(encode_policy(&view, true)),
            ..Default::default()
        }
        .encode_to_vec();
        update.extend(unknown_fields());
        let update = pb::SyncUpdate::decode(update.as_slice()).unwrap();
        assert_eq!(decode_policy(update.policy.unwrap()).unwrap(), view);
    }

    #[test]
    fn a_newer_agent_reads_an_older_message_with_defaults() {
        // An older server knew only some fields: here, a profile without `created_at`
        // and a grant without `playbook` (both absent on the wire = defaults).
        let mut view = policy();
        let mut message = encode_policy(&view, true);
        message.profiles[0].created_at = 0;
        view.profiles
            .get_mut(&crate::policy::key("default", "triage"))
            .unwrap()
            .created_at = 0;
        let bytes = message.encode_to_vec();
        assert_eq!(round_trip(&bytes), view);
    }

    #[test]
    fn what_an_agent_cannot_read_is_read_the_safe_way() {
        let mut message = encode_policy(&policy(), true);
        message.profiles[0]
            .selectors
            .push("k8s:cluster:payments".into());
        message.profiles[0].bands.push("quantum".into());
        message.incidents[0].state = "paused".into();
        message.incidents[0].severity = "sev0".into();
        message.grants[0].state = "suspended".into();
        let read = decode_policy(message).unwrap();
        assert!(
            read.profiles.is_empty(),
            "a profile with a selector this agent cannot check must select nobody"
        );
        let incident = &read.incidents[&crate::policy::key("default", "INC-1")];
        assert!(!incident.is_open(), "an unknown state is not open");
        assert_eq!(
            incident.severity,
            Severity::Sev1,
            "an unknown severity needs the most approvals"
        );
        assert_ne!(
            read.grants[&crate::policy::key("default", "g-1")].state,
            GrantState::Active
        );
    }

    #[test]
    fn a_policy_without_rules_is_refused() {
        let mut message = encode_policy(&policy(), true);
        message.rules = None;
        assert_eq!(decode_policy(message), Err(WireError::Missing("rules")));
    }

    /// The policy of [`policy`] with the same objects again in tenant acme.
    fn two_tenants() -> PolicySnapshot {
        let mut p = policy();
        p.tenants.insert(
            "acme".into(),
            Tenant {
                name: "acme".into(),
                base: "acme.test".into(),
                state: TenantState::Active,
                created_by: "root".into(),
                created_at: 1,
                disabled_by: None,
                disabled_at: None,
            },
        );
        let mut profiles = Vec::new();
        for profile in p.profiles.values() {
            let mut other = profile.clone();
            other.tenant = "acme".into();
            profiles.push(other);
        }
        for profile in profiles {
            p.profiles.insert(profile.key(), profile);
        }
        let incidents: Vec<Incident> = p
            .incidents
            .values()
            .map(|i| Incident {
                tenant: "acme".into(),
                ..(**i).clone()
            })
            .collect();
        for incident in incidents {
            p.incidents.insert(incident.key(), Arc::new(incident));
        }
        let grants: Vec<Grant> = p
            .grants
            .values()
            .map(|g| Grant {
                tenant: "acme".into(),
                ..g.clone()
            })
            .collect();
        for grant in grants {
            p.grants.insert(grant.key(), grant);
        }
        p
    }

    #[test]
    fn tenants_travel_to_agents_that_know_them_and_to_no_other() {
        let view = two_tenants();
        // An agent that knows tenants reads back every tenant's objects, each its own.
        let read = decode_policy(encode_policy(&view, true)).unwrap();
        assert_eq!(
            read.tenants,
            view.tenants
                .iter()
                .map(|(k, t)| {
                    // What travels: name, base, state.
                    (
                        k.clone(),
                        Tenant {
                            created_by: String::new(),
                            created_at: 0,
                            ..t.clone()
                        },
                    )
                })
                .collect()
        );
        assert_eq!(read.profiles, view.profiles);
        assert_eq!(read.incidents, view.incidents);
        assert_eq!(
            read.grants.keys().collect::<Vec<_>>(),
            view.grants.keys().collect::<Vec<_>>()
        );
        // An agent that does not would read acme's objects as the default tenant's: it is
        // sent the default tenant's only, and no tenants.
        let old = encode_policy(&view, false);
        assert!(old.tenants.is_empty());
        assert_eq!(old.profiles.len(), 1);
        assert_eq!(old.incidents.len(), 1);
        assert_eq!(old.grants.len(), 1);
        assert!(old.profiles.iter().all(|p| p.tenant.is_empty()));
        let read = decode_policy(old).unwrap();
        assert!(read.profiles.keys().all(|(t, _)| t == "default"));
        // The default tenant travels as an empty tenant field, so an older server's
        // objects (which carry none) are the default tenant's.
        let new = encode_policy(&view, true);
        assert_eq!(
            new.profiles.iter().filter(|p| p.tenant.is_empty()).count(),
            1
        );
        assert_eq!(
            new.profiles.iter().filter(|p| p.tenant == "acme").count(),
            1
        );
    }
}
