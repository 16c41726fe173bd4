//! One audit log for several servers, in a real PostgreSQL (docs/ha.md, "The audit log"):
//! servers appending at once get distinct indexes, the tree covers every record once the
//! places nobody filled are closed, it verifies under the servers' published keys, and a
//! server too slow to fill its places cannot write into them after another closed them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::postgres::Postgres;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use writ::audit::{AuditLog, Kind, Record, shared, verify};
use writ::store::Store;

const ORIGIN: &str = "example.org/writ-audit";

struct Server {
    _keys: tempfile::TempDir,
    _store: Store,
    log: Arc<AuditLog>,
}

fn server(url: &str, owner: &str) -> Server {
    let store = Store::connect_postgres(&url.parse().unwrap()).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let log =
        AuditLog::open_shared(store.shared_log().unwrap(), owner, keys.path(), ORIGIN).unwrap();
    Server {
        _keys: keys,
        _store: store,
        log: Arc::new(log),
    }
}

fn record(who: &str, i: u64) -> Record {
    Record::new(
        i as i64,
        Kind::AdminChange,
        "test.append",
        format!("{who}-{i}"),
    )
}

/// Waits until the tree (as `log` sees it) covers `index`.
fn wait_for_tree(log: &AuditLog, index: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while log.size() <= index {
        assert!(
            Instant::now() < deadline,
            "the shared tree stayed at {} records; record {index} never joined it",
            log.size()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every record in the tree, read through `log`.
fn all_records(log: &AuditLog) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let page = log.read(out.len() as u64, 512).unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn verify_all(log: &AuditLog) -> verify::Verified {
    let keys = log.verifier_keys().unwrap();
    let signed = log.checkpoint().unwrap();
    let records = all_records(log);
    verify::verify(
        records.into_iter().map(Ok),
        &verify::Inputs {
            vkey: &keys,
            signed: Some(&signed),
            kept: None,
            stored_leaf: None,
        },
    )
    .unwrap()
}

#[test]
fn servers_appending_at_once_share_one_gapless_verifiable_log() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("writ");
    let url = pg.url("writ");
    let a = server(&url, "server-a");
    let b = server(&url, "server-b");

    let mut threads = Vec::new();
    for (name, log) in [("a", &a.log), ("b", &b.log)] {
        for t in 0..4 {
            let log = Arc::clone(log);
            threads.push(std::thread::spawn(move || {
                let who = format!("{name}{t}");
                (0..40)
                    .map(|i| (log.append(&record(&who, i)).unwrap(), format!("{who}-{i}")))
                    .collect::<Vec<_>>()
            }));
        }
    }
    let written: BTreeMap<u64, String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(written.len(), 320, "two records got one index");
    let last = *written.keys().last().unwrap();
    wait_for_tree(&a.log, last, Duration::from_secs(30));
    wait_for_tree(&b.log, last, Duration::from_secs(30));

    // Every acknowledged record is in the tree where its append said; every other place
    // is a void, and the whole verifies under the servers' published keys.
    let records = all_records(&a.log);
    for (index, bytes) in &records {
        let r = Record::decode(bytes).unwrap();
        match written.get(index) {
            Some(actor) => assert_eq!(&r.actor, actor, "record {index}"),
            None => assert_eq!(
                r.kind,
                Kind::Void,
                "record {index} is neither written nor void"
            ),
        }
    }
    let v = verify_all(&b.log);
    assert!(v.size > last);
    assert_eq!(a.log.verifier_keys().unwrap().lines().count(), 2);
    // A key that is not one of the servers' does not verify the checkpoint.
    let stranger = tempfile::tempdir().unwrap();
    let other = writ::audit::note::LogKey::open_or_create(stranger.path(), ORIGIN).unwrap();
    assert!(
        writ::audit::note::open_checkpoint(&a.log.checkpoint().unwrap(), other.vkey()).is_err()
    );

    // Proofs come from the shared stored hashes.
    let cp = writ::audit::note::open_checkpoint(
        &a.log.checkpoint().unwrap(),
        &a.log.verifier_keys().unwrap(),
    )
    .unwrap();
    let (index, bytes) = &records[17];
    let proof = b.log.prove_inclusion(*index, cp.size).unwrap();
    tlog_tiles::check_record(
        &proof,
        cp.size,
        cp.root,
        *index,
        tlog_tiles::record_hash(bytes),
    )
    .unwrap();
    let consistency = a.log.prove_consistency(10, cp.size).unwrap();
    assert!(!consistency.is_empty());
}

#[test]
fn places_a_dead_server_reserved_are_closed_and_a_late_write_into_them_fails() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("writ");
    let url = pg.url("writ");
    let a = server(&url, "server-a");
    let store = Store::connect_postgres(&url.parse().unwrap()).unwrap();
    let raw = store.shared_log().unwrap();

    // A server reserves five places and dies before writing any.
    let ghost = raw.reserve("ghost", 5).unwrap();
    let after = a.log.append(&record("a", 1)).unwrap();
    assert!(after >= ghost + 5);
    // The tree cannot pass the empty places until they are old enough to be called
    // abandoned; then a live server closes them.
    assert!(
        a.log.size() <= ghost,
        "the tree passed places nobody filled"
    );
    wait_for_tree(
        &a.log,
        after,
        shared::ABANDONED_AFTER + Duration::from_secs(30),
    );
    let records = all_records(&a.log);
    for i in ghost..ghost + 5 {
        let r = Record::decode(&records[i as usize].1).unwrap();
        assert_eq!((r.kind, r.actor.as_str()), (Kind::Void, "ghost"));
    }
    // The dead server comes back and commits what it had: refused, so whatever waited on
    // it is never released.
    let late = record("ghost", 0).encode().unwrap();
    assert!(raw.insert(vec![(ghost, late)]).is_err());
    verify_all(&a.log);
}

#[test]
fn a_failed_commit_closes_its_places_and_the_log_goes_on() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("writ");
    let a = server(&pg.url("writ"), "server-a");
    let first = a.log.append(&record("a", 0)).unwrap();
    a.log.fail_commits(true);
    assert!(a.log.append(&record("a", 1)).is_err());
    a.log.fail_commits(false);
    let next = a.log.append(&record("a", 2)).unwrap();
    assert!(
        next > first + 1,
        "a place of a failed commit was used again"
    );
    wait_for_tree(&a.log, next, Duration::from_secs(30));
    let records = all_records(&a.log);
    let failed = Record::decode(&records[first as usize + 1].1).unwrap();
    assert_eq!(failed.kind, Kind::Void);
    assert_eq!(verify_all(&a.log).size, next + 1);
}

/// `writ audit verify --store`: the log read straight from the database, without a
/// server, under pinned keys; a record changed in the database, or changed with its
/// stored leaf hash rewritten to match, or the tail cut, is found and named.
#[test]
fn the_shared_log_verifies_from_the_database_and_tampering_there_is_found() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("writ");
    let url = pg.url("writ");
    let a = server(&url, "server-a");
    let b = server(&url, "server-b");
    let mut last = 0;
    for i in 0..20 {
        last = a.log.append(&record("a", i)).unwrap();
        last = last.max(b.log.append(&record("b", i)).unwrap());
    }
    wait_for_tree(&a.log, last, Duration::from_secs(30));
    let keys = tempfile::tempdir().unwrap();
    let pinned = keys.path().join("audit.pub");
    std::fs::write(&pinned, a.log.verifier_keys().unwrap()).unwrap();
    let verify = || {
        std::process::Command::new(common::procs::WRIT)
            .args(["audit", "verify", "--store", &url, "--log-key"])
            .arg(&pinned)
            .output()
            .unwrap()
    };
    let intact = verify();
    assert!(intact.status.success(), "{intact:?}");
    // A bad or unreachable store is "could not verify" (2), never tampering (1).
    for store in [
        "not-a-url".to_owned(),
        format!(
            "postgresql://writ@/writ?host={}&port=1",
            keys.path().display()
        ),
    ] {
        let out = std::process::Command::new(common::procs::WRIT)
            .args(["audit", "verify", "--store", &store])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{store}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot verify"));
    }
    assert!(String::from_utf8_lossy(&intact.stdout).contains("audit log intact"));
    // Nothing was written by verifying.
    let raw = Store::shared_log_to_read(&url.parse().unwrap()).unwrap();
    let head = raw.head().unwrap();
    let verified = writ::audit::verify_shared(raw.as_ref(), None, None).unwrap();
    assert_eq!(verified.size, head.0);
    assert_eq!(raw.head().unwrap(), head);

    // A record's bytes changed in the database.
    let original = all_records(&a.log)[5].1.clone();
    let forged =
        String::from_utf8(original.clone())
            .unwrap()
            .replacen("test.append", "test.forged", 1);
    // Record 5's bytes, and (when asked) its stored leaf hash made to match them.
    let set = |body: &[u8], leaf_too: bool| {
        pg.psql(
            "writ",
            &format!(
                "UPDATE audit_records SET body = '\\x{}'::bytea WHERE idx = 5",
                writ::hex::lower(body)
            ),
        );
        if leaf_too {
            pg.psql(
                "writ",
                &format!(
                    "UPDATE audit_hashes SET hash = '\\x{}'::bytea WHERE idx = {}",
                    writ::hex::lower(&tlog_tiles::record_hash(body).0),
                    tlog_tiles::stored_hash_index(0, 5)
                ),
            );
        }
    };
    set(forged.as_bytes(), false);
    assert!(matches!(
        writ::audit::verify_shared(raw.as_ref(), None, None),
        Err(writ::audit::VerifyError::Changed { index: 5 })
    ));
    let caught = verify();
    assert_eq!(caught.status.code(), Some(1), "{caught:?}");
    assert!(String::from_utf8_lossy(&caught.stderr).contains("record 5 was changed"));

    // ... and its stored leaf hash rewritten to match: the signed root still says no.
    set(forged.as_bytes(), true);
    assert!(matches!(
        writ::audit::verify_shared(raw.as_ref(), None, None),
        Err(writ::audit::VerifyError::Rewritten { .. })
    ));
    set(&original, true);
    writ::audit::verify_shared(raw.as_ref(), None, None).unwrap();

    // The tail cut.
    pg.psql(
        "writ",
        &format!("DELETE FROM audit_records WHERE idx = {}", head.0 - 1),
    );
    assert!(matches!(
        writ::audit::verify_shared(raw.as_ref(), None, None),
        Err(writ::audit::VerifyError::Truncated { .. })
    ));
    // A key that is none of the servers': the checkpoint does not verify.
    let stranger = tempfile::tempdir().unwrap();
    let other = writ::audit::note::LogKey::open_or_create(stranger.path(), ORIGIN).unwrap();
    assert!(matches!(
        writ::audit::verify_shared(raw.as_ref(), Some(other.vkey()), None),
        Err(writ::audit::VerifyError::Checkpoint { .. })
    ));
}
