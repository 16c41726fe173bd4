//! What the server keeps in memory ([`live`]) and what agents receive ([`agent_view`]) of
//! the policy: live state only (docs/architecture.md, "The node API contract").
//!
//! History (every incident ever opened, every grant with its plan) lives in the store and
//! the audit log. In memory the server keeps what its decisions read: what is open or
//! pending, and what ended recently enough that an SVID issued under it may still be
//! valid (the revocation window, the longest SVID lifetime: see [`super::revocation`]).
//! Agents need less again: no plans, no pending requests, no playbooks. Both are bounded
//! by live state however long the history grows. Pure: a snapshot and the time in, the
//! view out.

use super::revocation::within_window;
use super::{Grant, GrantState, Incident, Key, PolicySnapshot};

/// How long ended things stay in the server's memory at least, whatever the revocation
/// window: the per-agent request limit counts the grants of the last hour.
pub const LIVE_AT_LEAST_SECS: i64 = 3600;

/// The server's live policy at `now`: what its decisions read. Everything that ended
/// longer ago than `window_secs` (and [`LIVE_AT_LEAST_SECS`]) leaves; it stays in the
/// store and the audit log, where history is read from. So the server's memory and the
/// cost of a change follow live state, not history.
///
/// - profiles and playbooks: all of them;
/// - incidents: the open ones, and the ones closed within the window;
/// - grants: pending and active ones, and the ones that ended within the window (a grant
///   in another state without an ending is kept);
/// - revoked serials: while inside the window and before the certificate's notAfter.
pub fn live(policy: &PolicySnapshot, now: i64, window_secs: i64) -> PolicySnapshot {
    let mut live = policy.clone();
    retain_live(&mut live, now, window_secs);
    live
}

/// [`live`] in place: what a change already holds a copy of is pruned, not copied again.
pub fn retain_live(policy: &mut PolicySnapshot, now: i64, window_secs: i64) -> Retired {
    let mut retired = Retired::default();
    policy.incidents.retain(|k, i| {
        let live = live_incident(i, now, window_secs);
        if !live {
            retired.incidents.push(k.clone());
        }
        live
    });
    policy.grants.retain(|k, g| {
        let live = live_grant(g, now, window_secs);
        if !live {
            retired.grants.push(k.clone());
        }
        live
    });
    policy
        .revoked_serials
        .retain(|_, r| serial_is_current(r, now, window_secs));
    retired
}

/// The incidents and grants [`retain_live`] took out of memory: history now, so the
/// store's live indexes drop them too.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// Incidents, by tenant and id.
    pub incidents: Vec<Key>,
    /// Grants, by tenant and id.
    pub grants: Vec<Key>,
}

/// A grant as agents see it: without its plan and evidence (identities carry the plan's
/// digest, never its text).
pub fn as_agents_see(mut grant: Grant) -> Grant {
    grant.plan = String::new();
    grant.evidence = Vec::new();
    grant
}

/// Whether the server keeps `incident` in memory at `now` (see [`live`]); the store's
/// load reads only these.
pub fn live_incident(incident: &Incident, now: i64, window_secs: i64) -> bool {
    let keep = window_secs.max(LIVE_AT_LEAST_SECS);
    incident.is_open()
        || incident
            .closed_at
            .is_none_or(|at| within_window(at, now, keep))
}

/// Whether the server keeps `grant` in memory at `now` (see [`live`]).
pub fn live_grant(grant: &Grant, now: i64, window_secs: i64) -> bool {
    let keep = window_secs.max(LIVE_AT_LEAST_SECS);
    match grant.state {
        GrantState::Pending | GrantState::Active => true,
        _ => grant
            .ended
            .as_ref()
            .is_none_or(|e| within_window(e.at, now, keep)),
    }
}

fn serial_is_current(r: &super::RevokedSerial, now: i64, window_secs: i64) -> bool {
    within_window(r.revoked_at, now, window_secs) && now <= r.not_after
}

fn current_serials(
    policy: &PolicySnapshot,
    now: i64,
    window_secs: i64,
) -> std::collections::BTreeMap<String, super::RevokedSerial> {
    policy
        .revoked_serials
        .iter()
        .filter(|(_, r)| serial_is_current(r, now, window_secs))
        .map(|(serial, r)| (serial.clone(), r.clone()))
        .collect()
}

/// The policy an agent needs at `now`, with revocations remembered for `window_secs`.
///
/// - profiles: all of them (they select workloads);
/// - incidents: the open ones, and the ones closed within the window (their identities
///   are revoked until they expire);
/// - grants: the active ones, and the ones that held an identity and were revoked or ran
///   out within the window; without plans or evidence (identities carry the plan's
///   digest, never its text). Pending and denied grants never held an identity;
/// - revoked serials: while inside the window and before the certificate's notAfter;
/// - no playbooks: activation happens on the server.
pub fn agent_view(policy: &PolicySnapshot, now: i64, window_secs: i64) -> PolicySnapshot {
    let incidents = policy
        .incidents
        .iter()
        .filter(|(_, incident)| {
            incident.is_open()
                || incident
                    .closed_at
                    .is_some_and(|at| within_window(at, now, window_secs))
        })
        .map(|(id, incident)| (id.clone(), incident.clone()))
        .collect();
    let grants = policy
        .grants
        .iter()
        .filter(|(_, grant)| match grant.state {
            GrantState::Active => true,
            GrantState::Revoked | GrantState::Expired => {
                grant.activated_at.is_some()
                    && grant
                        .ended
                        .as_ref()
                        .is_some_and(|e| within_window(e.at, now, window_secs))
            }
            GrantState::Pending | GrantState::Denied => false,
        })
        .map(|(id, grant)| (id.clone(), as_agents_see(grant.clone())))
        .collect();
    let mut rules = policy.rules.clone();
    // The server's own decision, never the agents' (see RemediationRules).
    rules.demo_single_user = false;
    PolicySnapshot {
        generation: policy.generation,
        tenants: policy.tenants.clone(),
        profiles: policy.profiles.clone(),
        incidents,
        grants,
        rules,
        playbooks: Default::default(),
        revoked_serials: current_serials(policy, now, window_secs),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::grant::Ending;
    use crate::policy::revocation::{RevocationKind, revocations};
    use crate::policy::{Grant, Incident, IncidentState, RevokedSerial, Severity};
    use std::collections::BTreeSet;

    const WINDOW: i64 = 300;

    fn incident(id: &str, closed_at: Option<i64>) -> Incident {
        Incident {
            tenant: "default".into(),
            id: id.into(),
            title: "t".into(),
            severity: Severity::Sev2,
            assigned: BTreeSet::from(["triage".to_owned()]),
            scopes: BTreeSet::new(),
            state: if closed_at.is_some() {
                IncidentState::Closed
            } else {
                IncidentState::Open
            },
            opened_by: "alice".into(),
            opened_at: 0,
            closed_by: closed_at.map(|_| "alice".into()),
            closed_at,
            max_lifetime_secs: 86_400,
            source: None,
        }
    }

    fn grant(id: &str, state: GrantState, activated: bool, ended_at: Option<i64>) -> Grant {
        Grant {
            tenant: "default".into(),
            id: id.into(),
            incident: "INC-1".into(),
            agent: "triage".into(),
            action: "restart".into(),
            targets: BTreeSet::from(["svc".to_owned()]),
            evidence: vec!["https://logs/1".into()],
            plan: "x".repeat(10_000),
            plan_digest: "ab".repeat(32),
            scopes: BTreeSet::new(),
            window_secs: 600,
            requested_by: "alice".into(),
            requested_by_uid: Some(1001),
            requested_at: 0,
            approvals: Vec::new(),
            state,
            activated_at: activated.then_some(10),
            expires_at: activated.then_some(610),
            ended: ended_at.map(|at| Ending {
                at,
                by: "writ".into(),
                reason: "r".into(),
            }),
            playbook: None,
        }
    }

    fn history(closed: usize) -> PolicySnapshot {
        let mut policy = PolicySnapshot::default();
        policy.incidents.insert(
            crate::policy::key("default", "INC-1"),
            std::sync::Arc::new(incident("INC-1", None)),
        );
        for n in 0..closed {
            let id = format!("OLD-{n}");
            policy.incidents.insert(
                crate::policy::key("default", &id),
                std::sync::Arc::new(incident(&id, Some(100))),
            );
            let g = format!("g-old{n}");
            policy.grants.insert(
                crate::policy::key("default", &g),
                grant(&g, GrantState::Revoked, true, Some(100)),
            );
        }
        policy
    }

    #[test]
    fn ended_things_stay_for_the_window_then_leave() {
        let policy = history(3);
        // Closed at 100: revoked until 100 + WINDOW, inclusive (an SVID may live that long).
        let inside = agent_view(&policy, 100 + WINDOW, WINDOW);
        assert_eq!(inside.incidents.len(), 4);
        assert_eq!(inside.grants.len(), 3);
        let after = agent_view(&policy, 101 + WINDOW, WINDOW);
        assert_eq!(
            after
                .incidents
                .values()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>(),
            vec!["INC-1"],
            "closed incidents leave after the window"
        );
        assert!(
            after.grants.is_empty(),
            "ended grants leave after the window"
        );
        // The server's own history is untouched.
        assert_eq!(policy.incidents.len(), 4);
    }

    #[test]
    fn the_view_is_bounded_by_live_state_not_history() {
        let now = 100 + WINDOW + 1;
        let size = |view: PolicySnapshot| {
            serde_json::to_vec(&(
                view.profiles.values().collect::<Vec<_>>(),
                view.incidents.values().map(|i| &**i).collect::<Vec<_>>(),
                view.grants.values().collect::<Vec<_>>(),
                view.revoked_serials.values().collect::<Vec<_>>(),
            ))
            .map(|v| v.len())
            .unwrap_or_default()
        };
        let small = size(agent_view(&history(1), now, WINDOW));
        let large = size(agent_view(&history(1_000), now, WINDOW));
        assert_eq!(small, large);
    }

    #[test]
    fn the_view_revokes_exactly_what_the_whole_policy_revokes() {
        let mut policy = history(2);
        policy.grants.insert(
            crate::policy::key("default", "g-live"),
            grant("g-live", GrantState::Active, true, None),
        );
        policy.grants.insert(
            crate::policy::key("default", "g-never"),
            grant("g-never", GrantState::Revoked, false, Some(150)),
        );
        policy.revoked_serials.insert(
            "0a".into(),
            RevokedSerial {
                serial: "0a".into(),
                spiffe_id: "spiffe://example.org/x".into(),
                trust_domain: "example.org".into(),
                revoked_at: 120,
                revoked_by: "alice".into(),
                not_after: 200,
            },
        );
        for now in [100, 150, 200, 201, 400, 401, 1_000] {
            let view = agent_view(&policy, now, WINDOW);
            assert_eq!(
                revocations(&view, now, WINDOW),
                revocations(&policy, now, WINDOW),
                "at {now}"
            );
        }
        let set = revocations(&agent_view(&policy, 150, WINDOW), 150, WINDOW);
        assert!(set.iter().any(|r| r.kind == RevocationKind::Serial));
    }

    #[test]
    fn the_server_keeps_what_ended_within_the_window_and_the_last_hour() {
        let mut policy = history(2);
        policy.grants.insert(
            crate::policy::key("default", "g-p"),
            grant("g-p", GrantState::Pending, false, None),
        );
        policy.grants.insert(
            crate::policy::key("default", "g-d"),
            grant("g-d", GrantState::Denied, false, Some(100)),
        );
        // Within the longer of the window and an hour: everything stays, plans included.
        let kept = live(&policy, 100 + LIVE_AT_LEAST_SECS, WINDOW);
        assert_eq!(kept.incidents.len(), 3);
        assert_eq!(kept.grants.len(), 4);
        assert!(
            !kept.grants[&crate::policy::key("default", "g-d")]
                .plan
                .is_empty()
        );
        // After it: only what is open or pending.
        let later = live(&policy, 101 + LIVE_AT_LEAST_SECS, WINDOW);
        assert_eq!(
            later
                .incidents
                .values()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>(),
            vec!["INC-1"]
        );
        assert_eq!(
            later
                .grants
                .values()
                .map(|g| g.id.as_str())
                .collect::<Vec<_>>(),
            vec!["g-p"]
        );
        // What agents receive is taken from the live policy alike.
        assert_eq!(
            agent_view(&later, 101 + LIVE_AT_LEAST_SECS, WINDOW),
            agent_view(&policy, 101 + LIVE_AT_LEAST_SECS, WINDOW)
        );
    }

    #[test]
    fn plans_evidence_pending_grants_and_playbooks_never_reach_agents() {
        let mut policy = history(0);
        policy.rules.demo_single_user = true;
        policy.grants.insert(
            crate::policy::key("default", "g-a"),
            grant("g-a", GrantState::Active, true, None),
        );
        policy.grants.insert(
            crate::policy::key("default", "g-p"),
            grant("g-p", GrantState::Pending, false, None),
        );
        policy.grants.insert(
            crate::policy::key("default", "g-d"),
            grant("g-d", GrantState::Denied, false, Some(5)),
        );
        let view = agent_view(&policy, 20, WINDOW);
        assert_eq!(
            view.grants
                .values()
                .map(|g| g.id.as_str())
                .collect::<Vec<_>>(),
            vec!["g-a"]
        );
        let active = &view.grants[&crate::policy::key("default", "g-a")];
        assert!(active.plan.is_empty() && active.evidence.is_empty());
        assert_eq!(
            active.plan_digest,
            policy.grants[&crate::policy::key("default", "g-a")].plan_digest
        );
        assert!(view.playbooks.is_empty());
        assert!(!view.rules.demo_single_user);
    }
}
