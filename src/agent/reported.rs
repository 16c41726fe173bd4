//! Which workload attestations this agent has already put in the audit log.
//!
//! The agent records a workload attestation the first time an attested workload — its
//! selector set (uid, user, gids, executable path and SHA-256; never the pid, which a
//! restarted process does not keep) — is served a given SPIFFE ID (docs/architecture.md,
//! "Audit"). Recording every Workload API call would flood the log: clients poll and stream.
//!
//! This module owns the pure parts: the key of a (selector set, SPIFFE ID) pair, the
//! bounded set of pairs reported or being reported, and which selectors a report carries.
//! It must never grow without bound: when full it forgets everything, and the cost of
//! that is a duplicate record, which is harmless.

use crate::node_api::MAX_ATTESTATION_SELECTORS;
use crate::policy::Selector;
use ring::digest;
use spiffe::SpiffeId;
use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// How many (workload, SPIFFE ID) pairs an agent remembers before it starts over.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A (selector set, SPIFFE ID) pair, as a SHA-256 digest: 32 bytes a pair, whatever the
/// length of paths and IDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttestationKey([u8; 32]);

/// Hashes a selector set once, for the keys of every SPIFFE ID it is served.
#[derive(Clone)]
pub struct WorkloadDigest(digest::Context);

impl std::fmt::Debug for WorkloadDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadDigest")
    }
}

/// Length-prefixed, so that no two different sequences of strings hash alike (attested
/// paths are not validated and may hold any byte but NUL).
fn update(ctx: &mut digest::Context, part: &[u8]) {
    ctx.update(&(part.len() as u64).to_be_bytes());
    ctx.update(part);
}

impl WorkloadDigest {
    /// The digest of `selectors` (a set: its order is canonical).
    pub fn new(selectors: &BTreeSet<Selector>) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        update(&mut ctx, b"writ workload attestation v1");
        ctx.update(&(selectors.len() as u64).to_be_bytes());
        for selector in selectors {
            update(&mut ctx, selector.to_string().as_bytes());
        }
        WorkloadDigest(ctx)
    }

    /// The key of this workload being served `spiffe_id`.
    pub fn key(&self, spiffe_id: &SpiffeId) -> AttestationKey {
        let mut ctx = self.0.clone();
        update(&mut ctx, spiffe_id.to_string().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        AttestationKey(out)
    }
}

/// The pairs this agent has reported, or is reporting now. Bounded.
#[derive(Debug)]
pub struct Reported {
    capacity: usize,
    keys: Mutex<HashSet<AttestationKey>>,
    started: AtomicU64,
    in_flight: watch::Sender<usize>,
}

impl Default for Reported {
    fn default() -> Self {
        Reported::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Reported {
    /// A set that forgets everything once it holds `capacity` pairs (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Reported {
            capacity: capacity.max(1),
            keys: Mutex::new(HashSet::new()),
            started: AtomicU64::new(0),
            in_flight: watch::channel(0).0,
        }
    }

    /// Whether the caller should report `key` now: true exactly once until the pair is
    /// forgotten (a report that failed, or the set starting over). A report in flight
    /// counts as made, so a client polling meanwhile does not start another. Every true
    /// must be followed by [`Reported::finish`].
    pub fn claim(&self, key: AttestationKey) -> bool {
        if let Ok(mut keys) = self.keys.lock() {
            if keys.contains(&key) {
                return false;
            }
            if keys.len() >= self.capacity {
                tracing::debug!(
                    capacity = self.capacity,
                    "reported workload attestations forgotten"
                );
                keys.clear();
            }
            keys.insert(key);
        }
        // Poisoned: report again rather than never; a duplicate is harmless.
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.send_modify(|n| *n += 1);
        true
    }

    /// Ends the report of a claimed `key`: kept (recorded, or refused for good) or
    /// forgotten, so the next call serving that pair reports it again.
    pub fn finish(&self, key: AttestationKey, keep: bool) {
        if !keep {
            self.release(key);
        }
        self.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// How many reports are in flight now, following every change: for tests and for a
    /// shutdown that wants them done.
    pub fn in_flight(&self) -> watch::Receiver<usize> {
        self.in_flight.subscribe()
    }

    /// Forgets `key`, so the next call serving that pair reports it again.
    pub fn release(&self, key: AttestationKey) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(&key);
        }
    }

    /// How many pairs are remembered now.
    pub fn len(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }

    /// Whether no pair is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many reports this agent has started (for tests and metrics).
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

/// The selectors a report carries: all of `attested` in their wire form when they fit the
/// server's bounds. A process in many groups, or a pod with many labels, has more than
/// fit; then only the gids and labels a profile names (`named`, the ones that can have
/// decided its identity) are kept beside the other selectors. Selectors too long for the server are left to the server to
/// refuse: a report must not say less than was attested about uid, path or digest.
pub fn report_selectors(
    attested: &BTreeSet<Selector>,
    named: impl Fn(&Selector) -> bool,
) -> Vec<String> {
    if attested.len() <= MAX_ATTESTATION_SELECTORS {
        return attested.iter().map(Selector::to_string).collect();
    }
    attested
        .iter()
        .filter(|s| !matches!(s, Selector::Gid(_) | Selector::K8sPodLabel(..)) || named(s))
        .take(MAX_ATTESTATION_SELECTORS)
        .map(Selector::to_string)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn workload(uid: u32, path: &str) -> BTreeSet<Selector> {
        BTreeSet::from([
            Selector::Uid(uid),
            Selector::Gid(uid),
            Selector::Path(path.into()),
            Selector::Sha256("ab".repeat(32)),
        ])
    }

    fn id(text: &str) -> SpiffeId {
        writ_verifier::parse_spiffe_id(text).unwrap()
    }

    const INC1: &str = "spiffe://investigate.example.org/agent/a/incident/INC-1";
    const INC2: &str = "spiffe://investigate.example.org/agent/a/incident/INC-2";

    #[test]
    fn keys_name_the_workload_and_the_identity() {
        let a = WorkloadDigest::new(&workload(1001, "/usr/bin/agent"));
        let same = WorkloadDigest::new(&workload(1001, "/usr/bin/agent"));
        assert_eq!(a.key(&id(INC1)), same.key(&id(INC1)));
        assert_ne!(a.key(&id(INC1)), a.key(&id(INC2)));
        for other in [
            workload(1002, "/usr/bin/agent"),
            workload(1001, "/usr/bin/x"),
        ] {
            assert_ne!(a.key(&id(INC1)), WorkloadDigest::new(&other).key(&id(INC1)));
        }
        let mut in_a_group = workload(1001, "/usr/bin/agent");
        in_a_group.insert(Selector::Gid(27));
        assert_ne!(
            a.key(&id(INC1)),
            WorkloadDigest::new(&in_a_group).key(&id(INC1))
        );
    }

    #[test]
    fn keys_are_unambiguous_across_selector_boundaries() {
        // Without length prefixes these two sets would hash the same bytes.
        let one = BTreeSet::from([Selector::Path("/a/unix:uid:1".into())]);
        let two = BTreeSet::from([Selector::Path("/a/".into()), Selector::Uid(1)]);
        assert_ne!(
            WorkloadDigest::new(&one).key(&id(INC1)),
            WorkloadDigest::new(&two).key(&id(INC1))
        );
    }

    #[test]
    fn a_pair_is_claimed_once_until_released() {
        let reported = Reported::default();
        let key = WorkloadDigest::new(&workload(1001, "/bin/a")).key(&id(INC1));
        let in_flight = reported.in_flight();
        assert!(reported.claim(key));
        assert_eq!(*in_flight.borrow(), 1);
        assert!(!reported.claim(key), "in flight: not again");
        reported.finish(key, false);
        assert_eq!(*in_flight.borrow(), 0);
        assert!(reported.claim(key), "a failed report is retried");
        reported.finish(key, true);
        assert!(!reported.claim(key), "recorded: not again");
        assert_eq!(reported.started(), 2);
        assert_eq!(reported.len(), 1);
        assert_eq!(*in_flight.borrow(), 0);
    }

    #[test]
    fn a_full_set_starts_over_and_stays_bounded() {
        let reported = Reported::with_capacity(3);
        let digest = WorkloadDigest::new(&workload(1001, "/bin/a"));
        let keys: Vec<_> = (0..7)
            .map(|n| digest.key(&id(&format!("{INC1}{n}"))))
            .collect();
        for key in &keys {
            assert!(reported.claim(*key));
            assert!(reported.len() <= 3);
        }
        // keys[6] came after the last clear (at the 7th claim, 6 = 3 + 3): remembered.
        assert!(!reported.claim(keys[6]));
        // keys[0] was forgotten: reported again, a harmless duplicate.
        assert!(reported.claim(keys[0]));
        assert!(reported.len() <= 3);
    }

    #[test]
    fn reports_carry_every_selector_that_fits() {
        let attested = workload(1001, "/bin/a");
        let sent = report_selectors(&attested, |_| false);
        assert_eq!(sent.len(), 4);
        assert!(sent.contains(&"unix:uid:1001".to_owned()));
        assert!(sent.contains(&format!("unix:sha256:{}", "ab".repeat(32))));
    }

    #[test]
    fn many_groups_keep_only_the_gids_policy_names() {
        let mut attested = workload(1001, "/bin/a");
        attested.extend((5000..5040).map(Selector::Gid));
        let sent = report_selectors(&attested, |s| *s == Selector::Gid(5031));
        assert_eq!(
            sent,
            vec![
                "unix:uid:1001".to_owned(),
                "unix:gid:5031".to_owned(),
                "unix:path:/bin/a".to_owned(),
                format!("unix:sha256:{}", "ab".repeat(32)),
            ]
        );
    }

    #[test]
    fn a_pod_with_many_labels_keeps_only_the_labels_policy_names() {
        let mut attested = workload(1001, "/bin/a");
        attested.insert(Selector::K8sNamespace("sre".into()));
        attested.extend((0..40).map(|i| Selector::K8sPodLabel(format!("l{i}"), "v".into())));
        let named = Selector::K8sPodLabel("l17".into(), "v".into());
        let sent = report_selectors(&attested, |s| *s == named);
        assert_eq!(
            sent,
            vec![
                "unix:uid:1001".to_owned(),
                "unix:path:/bin/a".to_owned(),
                format!("unix:sha256:{}", "ab".repeat(32)),
                "k8s:ns:sre".to_owned(),
                "k8s:pod-label:l17:v".to_owned(),
            ]
        );
    }
}
