//! What to tell approvers, decided from two consecutive policy snapshots and the time.
//!
//! Pure: no I/O, no clock. Watching the published policy, rather than calling out from
//! each handler, covers every way a grant changes: an operator's request, an agent's
//! (node API), a playbook activation, an approval, a denial, another server's change
//! followed through a shared store.
//!
//! The watch channel keeps only the latest snapshot, so steps may be skipped (a grant
//! requested and approved between two looks). Each grant is judged by where it was and
//! where it is: whatever happened last is said, nothing is said twice.

use super::Event;
use super::config::Interest;
use crate::policy::{Grant, GrantState, Key};
use std::collections::{BTreeMap, BTreeSet};

/// One notification to post: what happened to which grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// What happened.
    pub event: Event,
    /// The grant's tenant and id.
    pub grant: Key,
}

/// The event a grant's change from `old` (absent: new) to `new` makes, if any.
fn transition(old: Option<&Grant>, new: &Grant) -> Option<Event> {
    use GrantState::{Active, Denied, Pending};
    match (old.map(|g| g.state), new.state) {
        (None, Pending) => Some(Event::Requested),
        // Approved before this watcher saw it pending (or a playbook activation, active
        // as it is filed).
        (None | Some(Pending), Active) => Some(Event::Approved),
        (None | Some(Pending), Denied) => Some(Event::Denied),
        _ => None,
    }
}

/// When `grant` should be warned of as expiring: `expiring_before_secs` before its
/// window ends, if it is active and its window is longer than that (a grant whose whole
/// window is shorter is not warned of: "approved" already said when it ends).
pub fn warn_at(grant: &Grant, expiring_before_secs: u64) -> Option<i64> {
    if grant.state != GrantState::Active {
        return None;
    }
    let expires = grant.expires_at?;
    let before = i64::try_from(expiring_before_secs).ok()?;
    let at = expires.checked_sub(before)?;
    match grant.activated_at {
        Some(activated) if at <= activated => None,
        _ => Some(at),
    }
}

/// The notifications `interest` asks for, from grants `old` to grants `new` at `now`.
/// `warned` holds the grants already warned of as expiring: each is warned of once.
pub fn diff(
    old: &BTreeMap<Key, Grant>,
    new: &BTreeMap<Key, Grant>,
    now: i64,
    interest: &Interest,
    warned: &BTreeSet<Key>,
) -> Vec<Notification> {
    let mut out = Vec::new();
    for (key, grant) in new {
        if let Some(event) = transition(old.get(key), grant) {
            out.push(Notification {
                event,
                grant: key.clone(),
            });
        }
        let expiring = !warned.contains(key)
            && warn_at(grant, interest.expiring_before_secs).is_some_and(|at| at <= now)
            && grant.expires_at.is_some_and(|end| now < end);
        if expiring {
            out.push(Notification {
                event: Event::Expiring,
                grant: key.clone(),
            });
        }
    }
    out.retain(|n| interest.events.contains(&n.event));
    out
}

/// One target's memory between snapshots: the grants it has warned of.
#[derive(Debug, Default)]
pub struct Tracker {
    interest: Interest,
    warned: BTreeSet<Key>,
}

impl Tracker {
    /// A tracker for `interest`, having warned of nothing.
    pub fn new(interest: Interest) -> Self {
        Tracker {
            interest,
            warned: BTreeSet::new(),
        }
    }

    /// [`diff`], remembering the grants warned of (and forgetting those no longer active).
    pub fn observe(
        &mut self,
        old: &BTreeMap<Key, Grant>,
        new: &BTreeMap<Key, Grant>,
        now: i64,
    ) -> Vec<Notification> {
        let out = diff(old, new, now, &self.interest, &self.warned);
        for n in &out {
            if n.event == Event::Expiring {
                self.warned.insert(n.grant.clone());
            }
        }
        self.warned
            .retain(|key| new.get(key).is_some_and(|g| g.state == GrantState::Active));
        out
    }

    /// The next time (after `now`) a grant of `grants` is due a warning, if any.
    pub fn next_wake(&self, grants: &BTreeMap<Key, Grant>, now: i64) -> Option<i64> {
        if !self.interest.events.contains(&Event::Expiring) {
            return None;
        }
        grants
            .iter()
            .filter(|(key, _)| !self.warned.contains(*key))
            .filter_map(|(_, g)| warn_at(g, self.interest.expiring_before_secs))
            .filter(|&at| at > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::grant::{Approval, Ending};

    fn grant(id: &str, state: GrantState) -> Grant {
        let active = matches!(
            state,
            GrantState::Active | GrantState::Expired | GrantState::Revoked
        );
        Grant {
            tenant: "default".into(),
            id: id.into(),
            incident: "INC-1".into(),
            agent: "fixer".into(),
            action: "restart checkout".into(),
            targets: BTreeSet::from(["deploy/checkout".to_owned()]),
            evidence: vec![],
            plan: "p\n".into(),
            plan_digest: "ab".repeat(32),
            scopes: BTreeSet::new(),
            window_secs: 600,
            requested_by: "uid:0".into(),
            requested_by_uid: Some(0),
            requested_at: 1_000,
            approvals: if active {
                vec![Approval {
                    by: "alice".into(),
                    at: 1_100,
                    plan_digest: "ab".repeat(32),
                }]
            } else {
                vec![]
            },
            state,
            activated_at: active.then_some(1_100),
            expires_at: active.then_some(1_700),
            ended: matches!(state, GrantState::Denied).then(|| Ending {
                at: 1_100,
                by: "alice".into(),
                reason: "no".into(),
            }),
            playbook: None,
        }
    }

    fn grants(list: &[Grant]) -> BTreeMap<Key, Grant> {
        list.iter().map(|g| (g.key(), g.clone())).collect()
    }

    fn events(out: &[Notification]) -> Vec<(Event, &str)> {
        out.iter().map(|n| (n.event, n.grant.1.as_str())).collect()
    }

    fn all() -> Interest {
        Interest::default()
    }

    #[test]
    fn each_change_of_state_is_said_once() {
        use GrantState::*;
        let none = grants(&[]);
        let pending = grants(&[grant("g-1", Pending)]);
        let active = grants(&[grant("g-1", Active)]);
        let denied = grants(&[grant("g-1", Denied)]);
        fn d(old: &BTreeMap<Key, Grant>, new: &BTreeMap<Key, Grant>) -> Vec<Notification> {
            diff(old, new, 1_200, &all(), &BTreeSet::new())
        }
        assert_eq!(events(&d(&none, &pending)), [(Event::Requested, "g-1")]);
        assert_eq!(events(&d(&pending, &active)), [(Event::Approved, "g-1")]);
        assert_eq!(events(&d(&pending, &denied)), [(Event::Denied, "g-1")]);
        // Nothing changed, or nothing that is said.
        for (old, new) in [
            (&pending, &pending),
            (&active, &active),
            (&denied, &denied),
            (&pending, &none),
            (&pending, &grants(&[grant("g-1", Revoked)])),
            (&pending, &grants(&[grant("g-1", Expired)])),
            (&active, &grants(&[grant("g-1", Revoked)])),
            (&active, &grants(&[grant("g-1", Expired)])),
            (&none, &grants(&[grant("g-1", Revoked)])),
        ] {
            assert!(d(old, new).is_empty(), "{old:?} → {new:?}");
        }
        // One approval of two is no event.
        let mut one_of_two = grant("g-1", Pending);
        one_of_two.approvals = grant("g-1", Active).approvals;
        assert!(d(&pending, &grants(&[one_of_two])).is_empty());
    }

    #[test]
    fn skipped_steps_say_where_the_grant_is_now() {
        use GrantState::*;
        let none = grants(&[]);
        let warned = BTreeSet::new();
        // Requested and approved between two looks, or a playbook activation.
        assert_eq!(
            events(&diff(
                &none,
                &grants(&[grant("g-1", Active)]),
                1_200,
                &all(),
                &warned
            )),
            [(Event::Approved, "g-1")]
        );
        assert_eq!(
            events(&diff(
                &none,
                &grants(&[grant("g-1", Denied)]),
                1_200,
                &all(),
                &warned
            )),
            [(Event::Denied, "g-1")]
        );
    }

    #[test]
    fn several_grants_and_tenants_are_told_apart() {
        use GrantState::*;
        let mut other = grant("g-1", Pending);
        other.tenant = "acme".into();
        let old = grants(&[grant("g-1", Pending), grant("g-2", Pending)]);
        let new = grants(&[
            grant("g-1", Active),
            grant("g-2", Pending),
            grant("g-3", Pending),
            other,
        ]);
        let out = diff(&old, &new, 1_200, &all(), &BTreeSet::new());
        assert_eq!(
            out,
            [
                Notification {
                    event: Event::Requested,
                    grant: ("acme".into(), "g-1".into()),
                },
                Notification {
                    event: Event::Approved,
                    grant: ("default".into(), "g-1".into()),
                },
                Notification {
                    event: Event::Requested,
                    grant: ("default".into(), "g-3".into()),
                },
            ]
        );
    }

    #[test]
    fn an_active_grant_is_warned_of_once_within_the_warning_time() {
        // Active 1_100 to 1_700; warned of 120 s before, at 1_580.
        let active = grants(&[grant("g-1", GrantState::Active)]);
        let mut tracker = Tracker::new(all());
        assert!(tracker.observe(&active, &active, 1_579).is_empty());
        assert_eq!(tracker.next_wake(&active, 1_579), Some(1_580));
        assert_eq!(
            events(&tracker.observe(&active, &active, 1_580)),
            [(Event::Expiring, "g-1")]
        );
        assert!(tracker.observe(&active, &active, 1_600).is_empty(), "once");
        assert_eq!(tracker.next_wake(&active, 1_600), None);
        // Approved and expiring in one look: both are said.
        let pending = grants(&[grant("g-1", GrantState::Pending)]);
        let mut late = Tracker::new(all());
        assert_eq!(
            events(&late.observe(&pending, &active, 1_650)),
            [(Event::Approved, "g-1"), (Event::Expiring, "g-1")]
        );
        // After its end, it is not warned of.
        let mut after = Tracker::new(all());
        assert!(after.observe(&active, &active, 1_700).is_empty());
    }

    #[test]
    fn the_warning_time_is_per_target_and_a_short_window_is_not_warned_of() {
        let active = grants(&[grant("g-1", GrantState::Active)]);
        let early = Interest {
            expiring_before_secs: 500,
            ..all()
        };
        let warned = BTreeSet::new();
        assert_eq!(
            events(&diff(&active, &active, 1_200, &early, &warned)),
            [(Event::Expiring, "g-1")]
        );
        assert!(diff(&active, &active, 1_200, &all(), &warned).is_empty());
        // The whole window (600 s) is within 600 s of its end.
        let whole = Interest {
            expiring_before_secs: 600,
            ..all()
        };
        assert!(diff(&active, &active, 1_650, &whole, &warned).is_empty());
        assert_eq!(Tracker::new(whole).next_wake(&active, 0), None);
    }

    #[test]
    fn a_grant_warned_of_then_ended_is_forgotten() {
        let active = grants(&[grant("g-1", GrantState::Active)]);
        let expired = grants(&[grant("g-1", GrantState::Expired)]);
        let mut tracker = Tracker::new(all());
        assert_eq!(tracker.observe(&active, &active, 1_600).len(), 1);
        assert!(tracker.warned.contains(&("default".into(), "g-1".into())));
        assert!(tracker.observe(&active, &expired, 1_700).is_empty());
        assert!(tracker.warned.is_empty());
    }

    #[test]
    fn only_the_events_a_target_asks_for_are_said() {
        use GrantState::*;
        let interest = Interest {
            events: BTreeSet::from([Event::Denied, Event::Expiring]),
            ..all()
        };
        let warned = BTreeSet::new();
        let none = grants(&[]);
        let pending = grants(&[grant("g-1", Pending)]);
        assert!(diff(&none, &pending, 1_200, &interest, &warned).is_empty());
        assert!(
            diff(
                &pending,
                &grants(&[grant("g-1", Active)]),
                1_200,
                &interest,
                &warned
            )
            .is_empty()
        );
        assert_eq!(
            events(&diff(
                &pending,
                &grants(&[grant("g-1", Denied)]),
                1_200,
                &interest,
                &warned
            )),
            [(Event::Denied, "g-1")]
        );
        let no_expiring = Interest {
            events: BTreeSet::from([Event::Requested]),
            ..all()
        };
        let active = grants(&[grant("g-1", Active)]);
        let mut tracker = Tracker::new(no_expiring);
        assert!(tracker.observe(&active, &active, 1_650).is_empty());
        assert_eq!(tracker.next_wake(&active, 0), None);
    }
}
