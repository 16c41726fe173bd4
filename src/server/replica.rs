//! A server whose store is shared follows the others' policy (docs/ha.md, "Revocation
//! across replicas"):
//! * it listens for policy versions (PostgreSQL LISTEN/NOTIFY) and reloads as soon as one
//!   passes what it holds;
//! * every [`HEARTBEAT`] it tells the store which version it has applied; when that is the
//!   latest, the store notes a lease granted, and the server may sign for
//!   [`POLICY_LEASE`] from the moment it asked: a server that loses the database, or its
//!   notifications and its heartbeats, stops signing by itself when the lease runs out;
//! * a revocation returns once every replica that might still sign has applied it, or
//!   its lease has run out ([`await_applied`]).
//!
//! The decisions are here; the loop that beats and listens is `Issuer::follow_cluster`.

use crate::store::{ReplicaRow, Store, StoreError};
use std::time::{Duration, Instant};

/// How long a replica may sign after proving its policy current.
pub const POLICY_LEASE: Duration = Duration::from_secs(2);

/// How often a replica proves its policy current (well inside the lease).
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// Added to the lease before a waiting revocation counts a silent replica as stopped:
/// a signature that began just inside the lease, and the two clocks' rates.
pub const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// Whether `row`'s replica might still sign on a policy older than `version`: it has not
/// applied it, and its last lease (granted `lease_age_ms` ago by the database's clock)
/// has not run out, margin included.
pub fn may_sign_stale(row: &ReplicaRow, version: u64, lease: Duration) -> bool {
    if row.applied_version >= version {
        return false;
    }
    let window = i64::try_from((lease + LEASE_MARGIN).as_millis()).unwrap_or(i64::MAX);
    row.lease_age_ms.is_some_and(|age| age < window)
}

/// How long without a heartbeat before a replica counts as gone (not merely stopped).
pub const GONE_AFTER: Duration = Duration::from_secs(60);

/// What `row`'s replica is doing, as `writ healthcheck` shows it: `signing` (current, lease
/// held), `behind` (not current, lease not yet run out: it may still sign on older policy
/// for at most the lease), `stopped` (alive, lease run out: it signs nothing) or `gone` (no
/// heartbeat for [`GONE_AFTER`]).
pub fn state(row: &ReplicaRow, head: u64) -> &'static str {
    let gone = i64::try_from(GONE_AFTER.as_millis()).unwrap_or(i64::MAX);
    let lease = i64::try_from(POLICY_LEASE.as_millis()).unwrap_or(i64::MAX);
    let leased = row.lease_age_ms.is_some_and(|age| age < lease);
    if row.heartbeat_age_ms >= gone {
        "gone"
    } else if leased && row.applied_version >= head {
        "signing"
    } else if may_sign_stale(row, head, POLICY_LEASE) {
        "behind"
    } else {
        "stopped"
    }
}

/// A name for this server among the replicas: the host's name and a random suffix, so
/// that two servers (or two starts of one) never share a lease.
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(64)
        .collect();
    let suffix: u32 = rand::random();
    format!(
        "{}-{suffix:08x}",
        if host.is_empty() { "writ" } else { &host }
    )
}

/// Waits until no replica but `me` might still sign on a policy before `version`; the
/// replicas that never confirmed it (their leases ran out instead) are returned, for the
/// caller to report. Bounded: every lease runs out within [`POLICY_LEASE`] and the margin.
pub fn await_applied(store: &Store, me: &str, version: u64) -> Result<Vec<String>, StoreError> {
    let started = Instant::now();
    let deadline = started + POLICY_LEASE + LEASE_MARGIN + Duration::from_secs(1);
    let mut silent: Vec<String> = Vec::new();
    loop {
        let rows = store.replicas()?;
        let behind: Vec<&ReplicaRow> = rows
            .iter()
            .filter(|r| r.name != me && may_sign_stale(r, version, POLICY_LEASE))
            .collect();
        for r in &behind {
            if !silent.contains(&r.name) {
                silent.push(r.name.clone());
            }
        }
        if behind.is_empty() {
            // Who was behind and caught up confirmed it; the rest timed out of signing.
            silent.retain(|name| {
                rows.iter()
                    .find(|r| &r.name == name)
                    .is_none_or(|r| r.applied_version < version)
            });
            return Ok(silent);
        }
        if Instant::now() > deadline {
            return Err(StoreError::Db(format!(
                "replicas {:?} neither applied policy version {version} nor let their leases run out",
                behind.iter().map(|r| &r.name).collect::<Vec<_>>()
            )));
        }
        // Replicas usually apply a change within milliseconds of its notification: look
        // often at first, then settle to a slower poll for one waiting out a lease.
        let early = started.elapsed() < Duration::from_millis(100);
        std::thread::sleep(Duration::from_millis(if early { 5 } else { 20 }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(applied: u64, lease_age_ms: Option<i64>) -> ReplicaRow {
        ReplicaRow {
            name: "b".into(),
            applied_version: applied,
            heartbeat_age_ms: 0,
            lease_age_ms,
        }
    }

    #[test]
    fn a_replica_may_sign_stale_only_while_behind_and_inside_its_lease() {
        let lease = Duration::from_secs(2);
        // Applied it: never stale.
        assert!(!may_sign_stale(&row(5, Some(0)), 5, lease));
        assert!(!may_sign_stale(&row(6, Some(0)), 5, lease));
        // Behind, lease fresh: might still sign.
        assert!(may_sign_stale(&row(4, Some(0)), 5, lease));
        assert!(may_sign_stale(&row(4, Some(2_499)), 5, lease));
        // Behind, lease run out (margin included): stopped by itself.
        assert!(!may_sign_stale(&row(4, Some(2_500)), 5, lease));
        // Never held a lease: never signed.
        assert!(!may_sign_stale(&row(0, None), 5, lease));
    }

    #[test]
    fn states_follow_the_lease_the_version_and_the_heartbeat() {
        let at = |applied, heartbeat_age_ms, lease_age_ms| ReplicaRow {
            name: "b".into(),
            applied_version: applied,
            heartbeat_age_ms,
            lease_age_ms,
        };
        assert_eq!(state(&at(5, 100, Some(100)), 5), "signing");
        assert_eq!(state(&at(4, 100, Some(100)), 5), "behind");
        assert_eq!(state(&at(5, 100, Some(2_000)), 5), "stopped");
        assert_eq!(state(&at(4, 100, Some(3_000)), 5), "stopped");
        assert_eq!(state(&at(0, 100, None), 5), "stopped");
        assert_eq!(state(&at(5, 60_000, Some(60_000)), 5), "gone");
    }

    #[test]
    fn replica_names_are_unique_per_start_and_plain() {
        let (a, b) = (replica_name(), replica_name());
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')),
            "{a}"
        );
    }
}
