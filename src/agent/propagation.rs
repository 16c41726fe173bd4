//! How long a revocation takes to reach the Workload API streams
//! (`writ_revocation_propagation_seconds`, docs/metrics.md; the close path is
//! docs/architecture.md, "Revocation").
//!
//! A policy change that ends something (an incident closed, an active grant ended, a
//! serial revoked) is stamped with the instant the first of this agent's streams woke to
//! it; each stream whose answer then changed observes the time from that stamp to its
//! update being sent. A stream whose answer did not change (it held nothing revoked)
//! observes nothing. The stamp is this agent's: the time the change took to reach the
//! agent from the server is not in it (the node link's health is `NodeHealth`).

use crate::policy::{GrantState, PolicySnapshot};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// Whether `new` ends something `old` gave: an incident open in `old` is closed or gone,
/// a grant active in `old` is not, or a serial is revoked that was not.
pub fn revokes(old: &PolicySnapshot, new: &PolicySnapshot) -> bool {
    let incident_ended = old.incidents.iter().any(|(key, incident)| {
        incident.is_open() && new.incidents.get(key).is_none_or(|now| !now.is_open())
    });
    let grant_ended = old.grants.iter().any(|(key, grant)| {
        grant.state == GrantState::Active
            && new
                .grants
                .get(key)
                .is_none_or(|now| now.state != GrantState::Active)
    });
    incident_ended
        || grant_ended
        || new
            .revoked_serials
            .keys()
            .any(|serial| !old.revoked_serials.contains_key(serial))
}

/// What a stream that has not answered yet follows: no change comes after it, so a stream
/// is not told of revocations that came before it started.
pub const STARTING: u64 = u64::MAX;

/// The policy changes this agent's streams have woken to, numbered, and when the latest
/// revoking one was first seen.
#[derive(Debug, Default)]
pub struct PolicyChanges {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// The newest policy a stream woke to, and its number.
    last: Option<Arc<PolicySnapshot>>,
    number: u64,
    /// The latest revoking change's number and when a stream first woke to it.
    revoking: Option<(u64, Instant)>,
}

impl PolicyChanges {
    /// A new stream starts from `policy`: the number it follows. The policy is taken as
    /// seen, so that the next change is compared with it. The same as [`Self::woke`]
    /// with `followed` at [`STARTING`].
    pub fn started(&self, policy: &Arc<PolicySnapshot>) -> u64 {
        self.woke(policy, STARTING).0
    }

    /// A stream that followed change number `followed` woke to `policy`. Returns the
    /// number it follows now and, if a revoking change came after `followed`, the instant
    /// it was first seen. Once per change (the first stream to see it) the change is
    /// compared with the one before: one comparison per change, not per stream.
    pub fn woke(&self, policy: &Arc<PolicySnapshot>, followed: u64) -> (u64, Option<Instant>) {
        let mut seen = self.lock();
        let newer = match &seen.last {
            None => true,
            // A stream that read the watch before another one stored a newer policy
            // brings an older one: it is not a change.
            Some(last) => !Arc::ptr_eq(last, policy) && policy.generation >= last.generation,
        };
        if newer {
            let revoking = seen
                .last
                .as_deref()
                .is_some_and(|last| revokes(last, policy));
            seen.number += 1;
            if revoking {
                seen.revoking = Some((seen.number, Instant::now()));
            }
            seen.last = Some(Arc::clone(policy));
        }
        let since = seen
            .revoking
            .filter(|(number, _)| *number > followed)
            .map(|(_, at)| at);
        (seen.number, since)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::{Incident, IncidentState, Severity};

    fn with_incident(generation: u64, state: IncidentState) -> Arc<PolicySnapshot> {
        let mut policy = PolicySnapshot {
            generation,
            ..PolicySnapshot::default()
        };
        let incident = Incident {
            tenant: "default".into(),
            id: "INC-1".into(),
            title: "t".into(),
            severity: Severity::Sev3,
            assigned: Default::default(),
            scopes: Default::default(),
            state,
            opened_by: "root".into(),
            opened_at: 1,
            closed_by: None,
            closed_at: (state == IncidentState::Closed).then_some(10),
            max_lifetime_secs: 3600,
            source: None,
        };
        policy.incidents.insert(incident.key(), Arc::new(incident));
        Arc::new(policy)
    }

    #[test]
    fn a_close_is_a_revoking_change_and_an_open_is_not() {
        let open = with_incident(1, IncidentState::Open);
        let closed = with_incident(2, IncidentState::Closed);
        assert!(revokes(&open, &closed));
        assert!(!revokes(&closed, &open));
        assert!(revokes(&open, &PolicySnapshot::default()));
        assert!(!revokes(&PolicySnapshot::default(), &open));
    }

    #[test]
    fn streams_behind_a_revoking_change_get_its_first_sighting() {
        let changes = PolicyChanges::default();
        let open = with_incident(1, IncidentState::Open);
        let closed = with_incident(2, IncidentState::Closed);
        let n = changes.started(&open);
        // Two streams that followed the open policy wake to the close: both are told the
        // instant the first saw it.
        let (m, first) = changes.woke(&closed, n);
        let (m2, second) = changes.woke(&closed, n);
        assert_eq!((m, m2), (n + 1, n + 1));
        assert!(first.is_some());
        assert_eq!(first, second);
        // A stream that started after the close, or has already seen it, is not.
        assert_eq!(changes.started(&closed), m);
        assert_eq!(changes.woke(&closed, m).1, None);
        // An older policy read late is not a change.
        assert_eq!(changes.woke(&open, m).0, m);
    }
}
