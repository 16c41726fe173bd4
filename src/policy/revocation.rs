//! What verifiers must refuse before it expires (docs/architecture.md, "Revocation"):
//! closed incidents, ended grants and revoked serials, as the agent's revocation feed
//! publishes them.
//!
//! Pure: a policy snapshot and the time in, the set out. It never reaches back further
//! than the window (the longest SVID lifetime): an SVID issued before a revocation lives
//! at most that long after it, so older entries name only expired SVIDs, and the set is
//! bounded by what ended within the window, not by everything that ever ended.

use super::{GrantState, IncidentState, PolicySnapshot};
use std::collections::BTreeMap;

/// What a revocation entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RevocationKind {
    /// A closed incident: every identity of it, investigative and remediation.
    Incident,
    /// A remediation grant that was revoked or ran out.
    Grant,
    /// One certificate, by serial (lowercase hex).
    Serial,
}

/// One entry of the revocation set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revocation {
    /// When it was revoked, seconds since the epoch. First, so that sets sort oldest first.
    pub revoked_at: i64,
    /// What it names.
    pub kind: RevocationKind,
    /// The incident or grant id, or the serial.
    pub id: String,
    /// The tenant of the incident or grant: its base trust domain is where the revoked
    /// identities live. Empty for a serial (its scope names its trust domain).
    pub tenant: String,
    /// For a serial: the certificate's trust domain and notAfter, after which the entry
    /// names an expired certificate and leaves the set even inside the window.
    pub serial: Option<SerialScope>,
}

/// Where a revoked serial lives and until when.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SerialScope {
    /// The certificate's trust domain.
    pub trust_domain: String,
    /// Its notAfter, seconds since the epoch.
    pub not_after: i64,
}

impl Revocation {
    /// Whether the entry belongs in the set at `now`: inside the window, and for a serial
    /// no later than its notAfter second.
    pub fn is_current(&self, now: i64, window_secs: i64) -> bool {
        within_window(self.revoked_at, now, window_secs)
            && self.serial.as_ref().is_none_or(|s| now <= s.not_after)
    }

    /// The first instant the entry is no longer current.
    pub fn leaves_at(&self, window_secs: i64) -> i64 {
        let window_end = self.revoked_at.saturating_add(window_secs);
        self.serial
            .as_ref()
            .map_or(window_end, |s| window_end.min(s.not_after))
            .saturating_add(1)
    }
}

/// Whether something revoked at `revoked_at` may still have SVIDs alive at `now`.
///
/// Nothing is issued for it after `revoked_at`, and no SVID lives longer than
/// `window_secs`, so every one has `notAfter ≤ revoked_at + window_secs`. Validity
/// includes the notAfter second itself (RFC 5280 §4.1.2.5), hence `<=`. A `revoked_at`
/// in the future (clock skew) is kept.
pub fn within_window(revoked_at: i64, now: i64, window_secs: i64) -> bool {
    now.saturating_sub(revoked_at) <= window_secs
}

/// The revocation set at `now`: incidents closed and grants revoked or expired within
/// the last `window_secs`, and serials revoked within it whose certificates have not
/// expired; oldest first (ties by kind, then id), so equal policies give equal sets.
///
/// Denied grants never held an identity, nor did grants revoked before they were ever
/// active; neither is listed. Grants revoked by their incident's close are listed as
/// well as the incident, so a verifier that checks only grant ids still refuses them.
pub fn revocations(policy: &PolicySnapshot, now: i64, window_secs: i64) -> Vec<Revocation> {
    let incidents = policy.incidents.values().filter_map(|incident| {
        let closed_at = incident.closed_at?;
        (incident.state == IncidentState::Closed && within_window(closed_at, now, window_secs))
            .then(|| Revocation {
                revoked_at: closed_at,
                kind: RevocationKind::Incident,
                id: incident.id.clone(),
                tenant: incident.tenant.clone(),
                serial: None,
            })
    });
    let grants = policy.grants.values().filter_map(|grant| {
        let ended = grant.ended.as_ref()?;
        let ended_holding_identity =
            matches!(grant.state, GrantState::Revoked | GrantState::Expired)
                && grant.activated_at.is_some();
        (ended_holding_identity && within_window(ended.at, now, window_secs)).then(|| Revocation {
            revoked_at: ended.at,
            kind: RevocationKind::Grant,
            id: grant.id.clone(),
            tenant: grant.tenant.clone(),
            serial: None,
        })
    });
    let serials = policy
        .revoked_serials
        .values()
        .map(|r| Revocation {
            revoked_at: r.revoked_at,
            kind: RevocationKind::Serial,
            id: r.serial.clone(),
            tenant: String::new(),
            serial: Some(SerialScope {
                trust_domain: r.trust_domain.clone(),
                not_after: r.not_after,
            }),
        })
        .filter(|r| r.is_current(now, window_secs));
    let mut out: Vec<Revocation> = incidents.chain(grants).chain(serials).collect();
    out.sort();
    out
}

/// The instant the oldest entry of `set` leaves the window, if any: when the set next
/// changes without a policy change.
pub fn next_expiry(set: &[Revocation], window_secs: i64) -> Option<i64> {
    set.iter().map(|r| r.leaves_at(window_secs)).min()
}

/// The policy generation each listed incident was first seen closed in: an incident's
/// epoch. Closing is final, so every later policy has it closed too.
///
/// The policy does not record the generation of a close, so this is learnt by watching:
/// it is the closing generation when the close was seen happen, and a later one
/// otherwise (an incident already closed when watching began). Only incidents in the
/// current set are remembered, so it is as small as the set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseEpochs {
    /// By tenant and incident id: `INC-1` of one tenant is not `INC-1` of another.
    seen: BTreeMap<(String, String), u64>,
}

impl CloseEpochs {
    /// Records the epochs of the incidents in `set`, computed from a policy of
    /// `generation`, and forgets incidents no longer in it.
    pub fn observe(&mut self, set: &[Revocation], generation: u64) {
        let mut next = BTreeMap::new();
        for r in set.iter().filter(|r| r.kind == RevocationKind::Incident) {
            let key = (r.tenant.clone(), r.id.clone());
            let epoch = self
                .seen
                .get(&key)
                .map_or(generation, |&g| g.min(generation));
            next.insert(key, epoch);
        }
        self.seen = next;
    }

    /// The epoch of incident `id` of `tenant`, once observed.
    pub fn epoch(&self, tenant: &str, id: &str) -> Option<u64> {
        self.seen.get(&(tenant.to_owned(), id.to_owned())).copied()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::grant::Ending;
    use crate::policy::{Grant, Incident, RevokedSerial, Severity};
    use std::collections::BTreeSet;

    const WINDOW: i64 = 3600;
    const NOW: i64 = 1_000_000;

    fn incident(id: &str, closed_at: Option<i64>) -> Incident {
        Incident {
            tenant: "default".into(),
            id: id.into(),
            title: "t".into(),
            severity: Severity::Sev2,
            assigned: BTreeSet::from(["triage".to_string()]),
            scopes: BTreeSet::new(),
            state: if closed_at.is_some() {
                IncidentState::Closed
            } else {
                IncidentState::Open
            },
            opened_by: "root".into(),
            opened_at: 0,
            closed_by: closed_at.map(|_| "root".into()),
            closed_at,
            max_lifetime_secs: 4 * 3600,
            source: None,
        }
    }

    fn grant(id: &str, state: GrantState, activated: bool, ended_at: Option<i64>) -> Grant {
        Grant {
            tenant: "default".into(),
            id: id.into(),
            incident: "INC-1".into(),
            agent: "fixer".into(),
            action: "restart".into(),
            targets: BTreeSet::new(),
            evidence: Vec::new(),
            plan: "p".into(),
            plan_digest: crate::policy::grant::plan_digest("p"),
            scopes: BTreeSet::new(),
            window_secs: 600,
            requested_by: "agent".into(),
            requested_by_uid: None,
            requested_at: 0,
            approvals: Vec::new(),
            state,
            activated_at: activated.then_some(1),
            expires_at: activated.then_some(601),
            ended: ended_at.map(|at| Ending {
                at,
                by: "writ".into(),
                reason: "r".into(),
            }),
            playbook: None,
        }
    }

    fn policy(incidents: Vec<Incident>, grants: Vec<Grant>) -> PolicySnapshot {
        PolicySnapshot {
            generation: 7,
            incidents: incidents
                .into_iter()
                .map(|i| (i.key(), std::sync::Arc::new(i)))
                .collect(),
            grants: grants.into_iter().map(|g| (g.key(), g)).collect(),
            ..PolicySnapshot::default()
        }
    }

    fn entry(kind: RevocationKind, id: &str, revoked_at: i64) -> Revocation {
        Revocation {
            revoked_at,
            kind,
            id: id.into(),
            tenant: if kind == RevocationKind::Serial {
                String::new()
            } else {
                "default".into()
            },
            serial: None,
        }
    }

    #[test]
    fn lists_closed_incidents_and_grants_that_ended_holding_an_identity() {
        let p = policy(
            vec![
                incident("INC-open", None),
                incident("INC-closed", Some(NOW - 10)),
            ],
            vec![
                grant("g-active", GrantState::Active, true, None),
                grant("g-pending", GrantState::Pending, false, None),
                grant("g-denied", GrantState::Denied, false, Some(NOW - 5)),
                grant("g-revoked", GrantState::Revoked, true, Some(NOW - 20)),
                grant("g-expired", GrantState::Expired, true, Some(NOW - 30)),
                // Revoked while pending (its incident closed): it never had an SVID.
                grant("g-never", GrantState::Revoked, false, Some(NOW - 10)),
            ],
        );
        assert_eq!(
            revocations(&p, NOW, WINDOW),
            [
                entry(RevocationKind::Grant, "g-expired", NOW - 30),
                entry(RevocationKind::Grant, "g-revoked", NOW - 20),
                entry(RevocationKind::Incident, "INC-closed", NOW - 10),
            ]
        );
    }

    #[test]
    fn the_window_includes_its_last_second_and_nothing_older() {
        let p = policy(
            vec![
                incident("INC-inside", Some(NOW - WINDOW)),
                incident("INC-outside", Some(NOW - WINDOW - 1)),
            ],
            vec![
                grant("g-inside", GrantState::Revoked, true, Some(NOW - WINDOW)),
                grant(
                    "g-outside",
                    GrantState::Expired,
                    true,
                    Some(NOW - WINDOW - 1),
                ),
            ],
        );
        let ids: Vec<_> = revocations(&p, NOW, WINDOW)
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["INC-inside", "g-inside"]);
        // One second later the set empties, and next_expiry said so.
        let set = revocations(&p, NOW, WINDOW);
        assert_eq!(next_expiry(&set, WINDOW), Some(NOW + 1));
        assert!(revocations(&p, NOW + 1, WINDOW).is_empty());
        assert_eq!(next_expiry(&[], WINDOW), None);
    }

    #[test]
    fn equal_policies_give_equal_sets_whatever_the_insertion_order() {
        let incidents = || {
            (0..50)
                .map(|i| incident(&format!("INC-{i}"), Some(NOW - (i % 7))))
                .collect::<Vec<_>>()
        };
        let grants = || {
            (0..50)
                .map(|i| {
                    grant(
                        &format!("g-{i}"),
                        GrantState::Revoked,
                        true,
                        Some(NOW - (i % 5)),
                    )
                })
                .collect::<Vec<_>>()
        };
        let forward = policy(incidents(), grants());
        let mut reversed_incidents = incidents();
        reversed_incidents.reverse();
        let mut reversed_grants = grants();
        reversed_grants.reverse();
        let backward = policy(reversed_incidents, reversed_grants);
        let a = revocations(&forward, NOW, WINDOW);
        assert_eq!(a.len(), 100);
        assert_eq!(a, revocations(&backward, NOW, WINDOW));
        assert_eq!(a, revocations(&forward, NOW, WINDOW));
        assert!(a.windows(2).all(|w| w[0] < w[1]), "strictly sorted");
        // Oldest first; same-second ties by kind (incidents first), then by id.
        assert_eq!(a[0], entry(RevocationKind::Incident, "INC-13", NOW - 6));
        let tied: Vec<_> = a.iter().filter(|r| r.revoked_at == NOW - 4).collect();
        assert_eq!(tied[0], &entry(RevocationKind::Incident, "INC-11", NOW - 4));
        assert_eq!(tied.last().unwrap().kind, RevocationKind::Grant);
    }

    #[test]
    fn size_is_bounded_by_what_ended_within_the_window() {
        let old = NOW - WINDOW - 1;
        let mut incidents: Vec<_> = (0..10_000)
            .map(|i| incident(&format!("INC-{i}"), Some(old - i)))
            .collect();
        let grants: Vec<_> = (0..10_000)
            .map(|i| grant(&format!("g-{i}"), GrantState::Expired, true, Some(old - i)))
            .collect();
        assert!(revocations(&policy(incidents.clone(), grants.clone()), NOW, WINDOW).is_empty());
        incidents.push(incident("INC-recent", Some(NOW - 1)));
        let set = revocations(&policy(incidents, grants), NOW, WINDOW);
        assert_eq!(
            set,
            [entry(RevocationKind::Incident, "INC-recent", NOW - 1)]
        );
    }

    #[test]
    fn epochs_keep_the_first_generation_an_incident_was_seen_closed_in() {
        let mut epochs = CloseEpochs::default();
        let a = entry(RevocationKind::Incident, "INC-a", NOW);
        let g = entry(RevocationKind::Grant, "g-1", NOW);
        epochs.observe(&[a.clone(), g], 5);
        assert_eq!(epochs.epoch("default", "INC-a"), Some(5));
        assert_eq!(epochs.epoch("default", "g-1"), None, "grants have no epoch");
        let b = entry(RevocationKind::Incident, "INC-b", NOW);
        epochs.observe(&[a.clone(), b.clone()], 9);
        assert_eq!(
            (
                epochs.epoch("default", "INC-a"),
                epochs.epoch("default", "INC-b")
            ),
            (Some(5), Some(9))
        );
        // Out of the set (aged out): forgotten, so memory follows the set's size.
        epochs.observe(&[b], 12);
        assert_eq!(epochs.epoch("default", "INC-a"), None);
        assert_eq!(epochs.epoch("default", "INC-b"), Some(9));
    }

    fn revoked_serial(serial: &str, revoked_at: i64, not_after: i64) -> RevokedSerial {
        RevokedSerial {
            serial: serial.into(),
            spiffe_id: "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/g-1".into(),
            trust_domain: "remediate.example.org".into(),
            revoked_at,
            revoked_by: "alice".into(),
            not_after,
        }
    }

    #[test]
    fn serials_are_listed_with_their_trust_domain_until_their_not_after() {
        let mut p = policy(vec![incident("INC-closed", Some(NOW - 10))], vec![]);
        for r in [
            revoked_serial("4001", NOW - 5, NOW + 30),
            // Expired already: its certificate can no longer be presented.
            revoked_serial("4002", NOW - 5, NOW - 1),
            // Revoked before the window: every certificate it could name has expired.
            revoked_serial("4003", NOW - WINDOW - 1, NOW + 30),
        ] {
            p.revoked_serials.insert(r.serial.clone(), r);
        }
        let set = revocations(&p, NOW, WINDOW);
        assert_eq!(set.len(), 2, "{set:?}");
        assert_eq!(set[0].kind, RevocationKind::Incident);
        let serial = &set[1];
        assert_eq!(
            (serial.kind, serial.id.as_str(), serial.revoked_at),
            (RevocationKind::Serial, "4001", NOW - 5)
        );
        assert_eq!(
            serial.serial,
            Some(SerialScope {
                trust_domain: "remediate.example.org".into(),
                not_after: NOW + 30,
            })
        );
        // The set next changes when the serial's certificate expires, well before the
        // incident leaves the window; through its notAfter second it is still listed.
        assert_eq!(next_expiry(&set, WINDOW), Some(NOW + 31));
        assert_eq!(revocations(&p, NOW + 30, WINDOW).len(), 2);
        let later = revocations(&p, NOW + 31, WINDOW);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].kind, RevocationKind::Incident);
    }

    #[test]
    fn the_same_incident_id_in_two_tenants_is_two_entries_with_two_epochs() {
        let ours = incident("INC-1", Some(NOW - 10));
        let theirs = Incident {
            tenant: "acme".into(),
            ..incident("INC-1", Some(NOW - 5))
        };
        let set = revocations(&policy(vec![ours, theirs], vec![]), NOW, WINDOW);
        let named: Vec<(&str, &str)> = set
            .iter()
            .map(|r| (r.tenant.as_str(), r.id.as_str()))
            .collect();
        assert_eq!(named, [("default", "INC-1"), ("acme", "INC-1")]);
        let mut epochs = CloseEpochs::default();
        epochs.observe(&set[..1], 3);
        epochs.observe(&set, 4);
        assert_eq!(epochs.epoch("default", "INC-1"), Some(3));
        assert_eq!(epochs.epoch("acme", "INC-1"), Some(4));
    }
}
