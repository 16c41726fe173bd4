//! The audit log's promises (docs/architecture.md, "Audit"), each against real parts:
//! * a real store written by `writ dev` (the binary), copied and tampered with — a changed
//!   record, a removed record, a truncated tail, a history re-hashed and re-signed by a
//!   forger — makes `writ audit verify` fail and say where;
//! * an append that fails means no SVID is issued (fail-closed), and the issued SVID's
//!   claims carry the index of its issuance record;
//! * a writer killed with SIGKILL mid-appends loses no acknowledged record, and the log
//!   still verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::bin::{DevProcess, WRIT, open_args};
use common::dev;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use writ::audit::{AuditLog, Kind, Record};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_records");
const HASHES: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_hashes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_meta");

/// `writ ARGS` with no server (`audit verify --data-dir`).
fn writ_offline(args: &[&str]) -> Output {
    Command::new(WRIT)
        .args(args)
        .env_remove("WRIT_ADMIN_SOCKET")
        .env_remove("WRIT_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run writ")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("keys")).unwrap();
    std::fs::copy(from.join("audit.redb"), to.join("audit.redb")).unwrap();
    std::fs::copy(from.join("keys/audit.pub"), to.join("keys/audit.pub")).unwrap();
}

fn verify(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["audit", "verify", "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    writ_offline(&args)
}

fn assert_fails(out: &Output, needle: &str, label: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{label}: verify passed");
    assert!(
        err.contains("NOT intact") && err.contains(needle),
        "{label}: expected {needle:?} in {err:?}"
    );
    assert_eq!(err.lines().count(), 1, "{label}: one error line: {err:?}");
}

fn all_records(db: &redb::Database) -> BTreeMap<u64, Vec<u8>> {
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(RECORDS).unwrap();
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value(), v.value().to_vec())
        })
        .collect()
}

/// Rewrites the copy's log as a forger would: `records` in place of the log, every stored
/// hash recomputed, and the checkpoint re-signed with the forger's own key (whose verifier
/// key replaces the log's on disk).
fn forge(dir: &Path, records: &BTreeMap<u64, Vec<u8>>) {
    let db = redb::Database::open(dir.join("audit.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    let size = records.len() as u64;
    {
        let mut r = tx.open_table(RECORDS).unwrap();
        let mut h = tx.open_table(HASHES).unwrap();
        r.retain(|_, _| false).unwrap();
        h.retain(|_, _| false).unwrap();
        struct Mem(Vec<tlog_tiles::Hash>);
        impl tlog_tiles::HashReader for Mem {
            fn read_hashes(&self, ix: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
                Ok(ix.iter().map(|&i| self.0[i as usize]).collect())
            }
        }
        let mut mem = Mem(Vec::new());
        for (i, bytes) in records {
            let new = tlog_tiles::stored_hashes(*i, bytes, &mem).unwrap();
            mem.0.extend(new);
            r.insert(*i, bytes.as_slice()).unwrap();
        }
        for (i, hash) in mem.0.iter().enumerate() {
            h.insert(i as u64, hash.0.as_slice()).unwrap();
        }
        let root = tlog_tiles::tree_hash(size, &mem).unwrap();
        let forger = tempfile::tempdir().unwrap();
        let origin = "example.org/writ-audit";
        let key = writ::audit::note::LogKey::open_or_create(forger.path(), origin).unwrap();
        let note = key.checkpoint(origin, size, root).unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("checkpoint", note.as_slice())
            .unwrap();
        std::fs::write(dir.join("keys/audit.pub"), format!("{}\n", key.vkey())).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn verify_names_what_was_tampered_with_on_a_copy_of_a_real_store() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // One user is operator and workload here: the demo switch allows that profile.
    let server = DevProcess::start(&data, &["--demo-single-user"]);
    let socket = server.socket();
    let uid = dev::my_uid().to_string();
    server.ok(&[
        "profile",
        "create",
        "triage",
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);
    server.ok(&open_args("INC-1", "triage"));
    let kept_at_two = root.path().join("kept2.txt");
    std::fs::write(&kept_at_two, server.ok(&["audit", "checkpoint"])).unwrap();
    // Issuance: a stock SPIFFE client fetches the workload's SVID.
    let fetch = Command::new(env!("CARGO_BIN_EXE_writ").replace("/writ", "/examples/svid-fetch"))
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", data.join("workload.sock").display()),
        )
        .output()
        .unwrap();
    assert!(
        fetch.status.success(),
        "{}",
        String::from_utf8_lossy(&fetch.stdout)
    );
    // The agent records the workload's attestation beside the issuance, off the answer's
    // path: wait for it (bounded), so that it is the latest record.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server
        .ok(&["audit", "export"])
        .contains("\"workload.attest\"")
    {
        assert!(Instant::now() < deadline, "no workload attestation record");
        std::thread::sleep(Duration::from_millis(50));
    }
    // `audit tail -f` follows: it prints the latest record, then each new one as it is
    // written (reads block on the child's output; no timing is asserted).
    let mut tail = Command::new(WRIT)
        .args(["audit", "tail", "-f", "-n", "1"])
        .env("WRIT_ADMIN_SOCKET", &socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut tail_out = BufReader::new(tail.stdout.take().unwrap());
    let mut line = String::new();
    tail_out.read_line(&mut line).unwrap();
    assert!(
        line.contains("workload.attest"),
        "first tail line: {line:?}"
    );
    server.ok(&["incident", "close", "INC-1"]);
    line.clear();
    tail_out.read_line(&mut line).unwrap();
    assert!(line.contains("incident.close"), "followed line: {line:?}");
    let _ = tail.kill();
    let _ = tail.wait();
    // A refused call is a record too.
    assert!(!server.run(&["incident", "close", "INC-1"]).status.success());
    let kept = root.path().join("kept.txt");
    std::fs::write(&kept, server.ok(&["audit", "checkpoint"])).unwrap();
    let verified = server.ok(&[
        "audit",
        "verify",
        "--since",
        kept_at_two.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(verified.trim()).unwrap();
    assert_eq!(v["intact"], true);
    let timeline = server.ok(&["incident", "timeline", "INC-1"]);
    for step in ["opened", "identity issued", "workload attested", "closed"] {
        assert!(timeline.contains(step), "timeline lacks {step}: {timeline}");
    }
    server.terminate();

    // The intact store verifies at rest, against the checkpoints kept along the way.
    let out = verify(&data, &["--since", kept.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = redb::Database::open(data.join("audit.redb")).unwrap();
    let records = all_records(&db);
    drop(db);
    let n = records.len() as u64;
    assert!(n >= 5, "expected a real log, found {n} records");
    let kinds: Vec<Kind> = records
        .values()
        .map(|b| Record::decode(b).unwrap().kind)
        .collect();
    for kind in [
        Kind::AdminChange,
        Kind::Issuance,
        Kind::Attestation,
        Kind::Revocation,
        Kind::Refusal,
    ] {
        assert!(kinds.contains(&kind), "no {kind:?} record in {kinds:?}");
    }

    // A changed record: named by index.
    let changed = root.path().join("changed");
    copy_dir(&data, &changed);
    {
        let db = redb::Database::open(changed.join("audit.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(RECORDS).unwrap();
            let mut r = Record::decode(&records[&3]).unwrap();
            r.actor = "mallory".into();
            t.insert(3, r.encode().unwrap().as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    assert_fails(
        &verify(&changed, &[]),
        "record 3 was changed",
        "changed record",
    );

    // A removed record.
    let removed = root.path().join("removed");
    copy_dir(&data, &removed);
    {
        let db = redb::Database::open(removed.join("audit.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(RECORDS).unwrap().remove(2).unwrap();
        tx.commit().unwrap();
    }
    assert_fails(
        &verify(&removed, &[]),
        "record 2 is missing",
        "removed record",
    );

    // A truncated tail: the signed checkpoint covers records that are gone.
    let truncated = root.path().join("truncated");
    copy_dir(&data, &truncated);
    {
        let db = redb::Database::open(truncated.join("audit.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(RECORDS).unwrap();
            t.remove(n - 1).unwrap();
            t.remove(n - 2).unwrap();
        }
        tx.commit().unwrap();
    }
    assert_fails(
        &verify(&truncated, &[]),
        &format!(
            "truncated: the signed checkpoint covers {n} records, the log holds {}",
            n - 2
        ),
        "truncated tail",
    );

    // Re-hashed and re-signed by a forger who also swapped the verifier key on disk: the
    // log verifies against itself, but not against the key the auditor pinned, nor
    // against the checkpoint kept elsewhere.
    let forged = root.path().join("forged");
    copy_dir(&data, &forged);
    let mut rewritten = records.clone();
    let mut r = Record::decode(&rewritten[&1]).unwrap();
    r.actor = "mallory".into();
    rewritten.insert(1, r.encode().unwrap());
    forge(&forged, &rewritten);
    let real_key = data.join("keys/audit.pub");
    assert_fails(
        &verify(&forged, &["--log-key", real_key.to_str().unwrap()]),
        "not signed by the log's key",
        "forged checkpoint, pinned key",
    );
    assert_fails(
        &verify(&forged, &["--since", kept_at_two.to_str().unwrap()]),
        "kept checkpoint",
        "forged checkpoint, kept checkpoint",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_svid_without_its_issuance_record() {
    let dev = dev::start(writ::ca::CaConfig::default()).await;
    dev.profile("triage", &[writ::policy::Selector::Uid(dev::my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    let id = writ_verifier::parse_spiffe_id(
        "spiffe://investigate.example.org/agent/triage/incident/INC-1",
    )
    .unwrap();
    let (_key, csr) = common::csr();
    let issuer = std::sync::Arc::clone(&dev.issuer);
    let before = issuer.audit.size();
    let svids_before = issuer.store.svids().unwrap().len();

    issuer.audit.fail_commits(true);
    let (i, c) = (std::sync::Arc::clone(&issuer), csr.clone());
    let id2 = id.clone();
    let refused = tokio::task::spawn_blocking(move || i.sign_workload_x509(&id2, &c, None, "test"))
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(writ::server::IssueError::Audit(_))),
        "x509 issued without its record: {refused:?}"
    );
    let (i, id2) = (std::sync::Arc::clone(&issuer), id.clone());
    let refused =
        tokio::task::spawn_blocking(move || i.sign_workload_jwt(&id2, &["aud".into()], "test"))
            .await
            .unwrap();
    assert!(matches!(refused, Err(writ::server::IssueError::Audit(_))));
    // A policy change is refused too, and nothing of it is visible.
    let generation = issuer.registry.snapshot().generation;
    let (i, now) = (std::sync::Arc::clone(&issuer), issuer.cas.now());
    let closed = tokio::task::spawn_blocking(move || {
        i.registry.close_incident("default", "INC-1", "test", now)
    })
    .await
    .unwrap();
    assert!(matches!(
        closed,
        Err(writ::server::registry::RegistryError::Audit(_))
    ));
    assert_eq!(issuer.registry.snapshot().generation, generation);
    assert!(
        issuer
            .registry
            .snapshot()
            .incident("default", "INC-1")
            .unwrap()
            .is_open()
    );
    assert_eq!(issuer.audit.size(), before);
    assert_eq!(issuer.store.svids().unwrap().len(), svids_before);

    // Once the log can write again, issuance works, and the SVID names its record.
    issuer.audit.fail_commits(false);
    let i = std::sync::Arc::clone(&issuer);
    let minted = tokio::task::spawn_blocking(move || i.sign_workload_x509(&id, &csr, None, "test"))
        .await
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&minted.cert_der).unwrap();
    let claims = writ_verifier::x509::leaf_claims(&cert).unwrap().unwrap();
    let index = claims.audit_index.expect("audit index in the claims");
    let (_, bytes) = issuer.audit.read(index, 1).unwrap().pop().unwrap();
    let record = Record::decode(&bytes).unwrap();
    assert_eq!(record.kind, Kind::Issuance);
    assert_eq!(record.serial.as_deref(), Some(minted.serial.as_str()));
    assert_eq!(record.incident.as_deref(), Some("INC-1"));
    let der = claims.to_der().unwrap();
    assert_eq!(
        record.detail["claims_sha256"],
        writ::audit::sha256_hex(&der)
    );
}

/// Names the log the child appends to; unset in a normal run.
const CHILD_ENV: &str = "WRIT_AUDIT_CHILD_DIR";
const ACK: &str = "ACK ";
const ACKS_BEFORE_KILL: usize = 300;

/// This test binary again, running only the ignored test `child` with `env` set to `dir`;
/// its stdout, to read its acknowledgements from.
fn spawn_child(
    child: &str,
    env: &str,
    dir: &Path,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", child, "--include-ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let reader = BufReader::new(child.stdout.take().unwrap());
    (child, reader)
}

/// The child: eight threads append until killed; each prints `ACK index actor` only once
/// its append returned (durable).
#[test]
#[ignore = "runs only as the child process of kill_9_mid_appends_loses_no_acknowledged_record"]
fn child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let log = std::sync::Arc::new(
        AuditLog::open(&dir.join("audit.redb"), &dir, "example.org/writ-audit").unwrap(),
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..1_000_000u64 {
                    let actor = format!("t{t}-{i}");
                    let record = Record::new(i as i64, Kind::Activity, "test.append", &actor);
                    let index = log.append(&record).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{ACK}{index} {actor}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn kill_9_mid_appends_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for round in 0..2 {
        let (mut child, mut reader) = spawn_child("child_appender", CHILD_ENV, dir.path());
        let mut line = String::new();
        let parse = |line: &str, acked: &mut BTreeMap<u64, String>| {
            if let Some((_, rest)) = line.strip_suffix('\n').and_then(|l| l.split_once(ACK))
                && let Some((index, actor)) = rest.split_once(' ')
            {
                acked.insert(index.parse().unwrap(), actor.to_owned());
            }
        };
        let start = acked.len();
        while acked.len() < start + ACKS_BEFORE_KILL {
            line.clear();
            let n = reader.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "round {round}: child exited early: {:?}",
                child.try_wait()
            );
            parse(&line, &mut acked);
        }
        child.kill().unwrap();
        child.wait().unwrap();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            parse(&line, &mut acked);
        }
    }
    // Every acknowledged record is there, at its index, and the log verifies.
    let vkey = std::fs::read_to_string(dir.path().join("audit.pub")).unwrap();
    let verified = writ::audit::verify_file(&dir.path().join("audit.redb"), vkey.trim(), None)
        .expect("the log verifies after SIGKILL");
    let db = redb::Database::open(dir.path().join("audit.redb")).unwrap();
    let records = all_records(&db);
    assert_eq!(records.len() as u64, verified.size);
    for (index, actor) in &acked {
        let record = Record::decode(&records[index]).unwrap();
        assert_eq!(&record.actor, actor, "record {index}");
    }
}

const STORM_CHILD_ENV: &str = "WRIT_STORM_CHILD_DIR";

/// A registry on `dir`'s store and audit log, on the system clock.
fn storm_registry(dir: &Path) -> writ::server::registry::Registry {
    let audit = AuditLog::open(&dir.join("audit.redb"), dir, "example.org/writ-audit").unwrap();
    writ::server::registry::Registry::load(
        std::sync::Arc::new(writ::store::Store::open(&dir.join("writ.redb")).unwrap()),
        writ::policy::grant::RemediationRules::default(),
        std::sync::Arc::new(audit),
        std::sync::Arc::new(writ::clock::SystemClock),
        Duration::from_secs(3600),
    )
    .unwrap()
}

/// The child: sixteen threads open incidents at once (their changes share commits)
/// until killed; each prints `ACK id` only once its open returned.
#[test]
#[ignore = "runs only as the child process of kill_9_mid_a_storm_of_opens_loses_no_acknowledged_change"]
fn child_storm() {
    let Ok(dir) = std::env::var(STORM_CHILD_ENV) else {
        return;
    };
    let registry = storm_registry(Path::new(&dir));
    let now = writ::clock::Clock::unix(&writ::clock::SystemClock);
    std::thread::scope(|s| {
        for t in 0..16 {
            let registry = &registry;
            s.spawn(move || {
                for i in 0..1_000_000u64 {
                    // Each child's ids are its own (ids are never reused).
                    let id = format!("STORM-{}-{t}-{i}", std::process::id());
                    let incident = writ::policy::Incident {
                        tenant: "default".into(),
                        id: id.clone(),
                        title: "storm".into(),
                        severity: writ::policy::Severity::Sev3,
                        assigned: ["triage".to_owned()].into(),
                        scopes: Default::default(),
                        state: writ::policy::IncidentState::Open,
                        opened_by: "alice".into(),
                        opened_at: now,
                        closed_by: None,
                        closed_at: None,
                        max_lifetime_secs: 3600,
                        source: None,
                    };
                    match registry.open_incident(incident) {
                        Ok(_) => {
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "{ACK}{id}").unwrap();
                            out.flush().unwrap();
                        }
                        // Over the tenant's change rate: wait and go on.
                        Err(writ::server::registry::RegistryError::RateLimited(_)) => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("{id}: {e}"),
                    }
                }
            });
        }
    });
}

/// Policy changes committed in groups keep both promises across SIGKILL: every open that
/// returned is in the store with its record, and nothing is in the store without its
/// record (audited before written), whatever the kill cut off.
#[test]
fn kill_9_mid_a_storm_of_opens_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = std::collections::BTreeSet::new();
    // Several kills, each at a different point of a commit.
    for round in 0..4 {
        let (mut child, mut reader) = spawn_child("child_storm", STORM_CHILD_ENV, dir.path());
        let mut line = String::new();
        let start = acked.len();
        let mut read = |reader: &mut BufReader<_>,
                        acked: &mut std::collections::BTreeSet<String>| {
            line.clear();
            let n = reader.read_line(&mut line).unwrap();
            if let Some(id) = line.strip_suffix('\n').and_then(|l| l.split_once(ACK)) {
                acked.insert(id.1.to_owned());
            }
            n
        };
        while acked.len() < start + 200 {
            let n = read(&mut reader, &mut acked);
            assert!(
                n > 0,
                "round {round}: child exited early: {:?}",
                child.try_wait()
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        while read(&mut reader, &mut acked) > 0 {}
    }
    // The log verifies; every incident the store holds has its open record.
    let vkey = std::fs::read_to_string(dir.path().join("audit.pub")).unwrap();
    writ::audit::verify_file(&dir.path().join("audit.redb"), vkey.trim(), None)
        .expect("the log verifies after SIGKILL");
    let db = redb::Database::open(dir.path().join("audit.redb")).unwrap();
    let recorded: std::collections::BTreeSet<String> = all_records(&db)
        .values()
        .map(|bytes| Record::decode(bytes).unwrap())
        .filter(|r| r.action == "incident.open")
        .filter_map(|r| r.incident)
        .collect();
    drop(db);
    let registry = storm_registry(dir.path());
    let stored: std::collections::BTreeSet<String> = registry
        .all_incidents("default")
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(acked.len() >= 800);
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged opens lost: {lost:?}");
    let unaudited: Vec<_> = stored.difference(&recorded).collect();
    assert!(
        unaudited.is_empty(),
        "stored without a record: {unaudited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grant_request_is_recorded() {
    let dev = dev::start(writ::ca::CaConfig::default()).await;
    dev.profile("triage", &[writ::policy::Selector::Uid(dev::my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    // Holds an identity for INC-1, asks for authority on INC-2 (which it does not investigate).
    let by = writ_verifier::parse_spiffe_id(
        "spiffe://investigate.example.org/agent/triage/incident/INC-1",
    )
    .unwrap();
    let request = writ::policy::GrantRequest {
        incident: "INC-2".into(),
        agent: "triage".into(),
        action: "restart".into(),
        targets: Default::default(),
        evidence: vec![],
        plan: "kubectl rollout restart deploy/x".into(),
        scopes: Default::default(),
        window_secs: None,
    };
    let issuer = std::sync::Arc::clone(&dev.issuer);
    let before = issuer.audit.size();
    let refused =
        tokio::task::spawn_blocking(move || issuer.request_grant_for_workload(request, &by, None))
            .await
            .unwrap();
    assert!(refused.is_err());
    let records = dev.issuer.audit.read(before, 10).unwrap();
    assert_eq!(records.len(), 1, "exactly the refusal was recorded");
    let record = Record::decode(&records[0].1).unwrap();
    assert_eq!(record.kind, Kind::Refusal);
    assert_eq!(record.action, "grant.request.refused");
    assert_eq!(record.incident.as_deref(), Some("INC-2"));
    assert!(dev.issuer.registry.snapshot().grants.is_empty());
}

/// What `audit verify --data-dir` may never change: the file's bytes and its mtime.
fn fingerprint(path: &Path) -> (String, std::time::SystemTime) {
    let bytes = std::fs::read(path).unwrap();
    (
        writ::hex::sha256(&bytes),
        std::fs::metadata(path).unwrap().modified().unwrap(),
    )
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `writ audit verify --data-dir DIR` as `uid` (through setpriv), or as this process.
fn verify_as(uid: Option<u32>, dir: &Path) -> Output {
    let mut command = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ])
            .arg(WRIT);
            c
        }
        None => Command::new(WRIT),
    };
    command
        .args(["audit", "verify", "--data-dir", dir.to_str().unwrap()])
        .env_remove("WRIT_ADMIN_SOCKET")
        .env_remove("WRIT_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run writ")
}

#[test]
fn verify_reads_the_log_file_and_never_writes_it() {
    let root = tempfile::tempdir().unwrap();
    // Other uids must reach the copies inside.
    chmod(root.path(), 0o755);
    let data = root.path().join("data");
    let server = DevProcess::start(&data, &[]);
    server.ok(&["profile", "create", "triage", "--selector", "unix:uid:4242"]);
    server.ok(&open_args("INC-1", "triage"));
    // A copy of the log while writ runs: not closed cleanly, so reading it needs recovery.
    let live = root.path().join("live");
    copy_dir(&data, &live);
    server.terminate();
    let clean = root.path().join("clean");
    copy_dir(&data, &clean);

    for (dir, label) in [(&clean, "clean copy"), (&live, "copy of a running log")] {
        let log = dir.join("audit.redb");
        let before = fingerprint(&log);
        let out = verify_as(None, dir);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("audit log intact"),
            "{label}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fingerprint(&log),
            before,
            "{label}: verify changed the file"
        );
        // The live copy needed redb's recovery: done in memory, said so.
        let recovered = String::from_utf8_lossy(&out.stderr).contains("not closed cleanly");
        assert_eq!(recovered, dir == &live, "{label}");
    }

    // Tampered, then made read-only: still NOT intact (exit 1), and still unchanged.
    let tampered = root.path().join("tampered");
    copy_dir(&data, &tampered);
    {
        let db = redb::Database::open(tampered.join("audit.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(RECORDS).unwrap();
            let mut r = Record::decode(t.get(1).unwrap().unwrap().value()).unwrap();
            r.actor = "mallory".into();
            t.insert(1, r.encode().unwrap().as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }

    // The read-only parts run the CLI as another uid.
    if !common::require_root() {
        return;
    }
    const READER: u32 = 65534;
    for dir in [&clean, &live, &tampered] {
        chmod(&dir.join("audit.redb"), 0o444);
        chmod(&dir.join("keys/audit.pub"), 0o444);
        chmod(&dir.join("keys"), 0o555);
        chmod(dir, 0o555);
    }
    // Read-only to the reader (root ignores permissions, so another uid reads): a read-only
    // copy verifies; opening it is not a write.
    for dir in [&clean, &live] {
        let before = fingerprint(&dir.join("audit.redb"));
        let out = verify_as(Some(READER), dir);
        assert!(
            out.status.success(),
            "read-only {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fingerprint(&dir.join("audit.redb")), before);
    }
    let before = fingerprint(&tampered.join("audit.redb"));
    let out = verify_as(Some(READER), &tampered);
    assert_eq!(out.status.code(), Some(1), "tampered, read-only");
    assert_fails(&out, "record 1 was changed", "tampered, read-only");
    assert_eq!(fingerprint(&tampered.join("audit.redb")), before);

    // Unreadable to the reader: a permission error, said as such (exit 2), never tampering.
    chmod(&clean.join("audit.redb"), 0o400);
    let out = verify_as(Some(READER), &clean);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "unreadable: {err}");
    assert!(
        err.starts_with("error: cannot verify the audit log")
            && err.contains("Permission denied")
            && !err.contains("NOT intact"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
}
