//! Load tool for the audit log (issue 5's benchmark): durable appends per second with
//! group commit, and what the log adds to one issuance.
//!
//! Every measurement opens a fresh log (or data directory) in a temp dir on the disk that
//! holds `$TMPDIR`, and reports:
//!
//! 1. the fsync baseline: one appender, one record at a time, so each append is one
//!    commit (one redb transaction with `Durability::Immediate` and one signed checkpoint);
//! 2. durable appends/s with N concurrent tokio tasks calling `append_async`, and with N
//!    blocking threads calling `append`: appends/s, commits, mean records per commit
//!    (group-commit batch), p50/p99/max latency of one append;
//! 3. issuance with and without the audit append, at concurrency 1 and under load:
//!    - `mint`: `TrustDomainCa::mint_x509` alone (CSR, CPU only);
//!    - `mint+audit`: the mint inside `AuditLog::submit_with`, then `Pending::wait`, as
//!      `Issuer::issue_x509` does it (what the log adds, without the SVID store);
//!    - `mint+store`: `CaSet::mint_x509`, then the SVID store's own fsync (`Store::put_svid`;
//!      issuance before the log);
//!    - `Issuer::issue_x509`: mint + audit append + SVID store (issuance now);
//!    - `batch of 16`: `Issuer::sign_workload_x509_batch` with 16 CSRs per call, the
//!      Workload API's path (policy checked under the issuance gate, then as above);
//!      ops are SVIDs, latency is one batch's.
//!
//! `cargo build --release --example audit-load && target/release/examples/audit-load`
//!
//! Flags: --secs N (seconds per measurement, default 3), --baseline N (sequential appends
//! for the fsync baseline, default 300), --max-tasks N (largest async level, default 1024),
//! --postgres (the issuance rows with the store in a throwaway PostgreSQL cluster instead
//! of redb: initdb/pg_ctl on a Unix socket, fsync on; only the issuance section runs),
//! --issuance (only the issuance section, on redb), --only TEXT (only the issuance rows
//! whose name contains TEXT, e.g. `--only issue_x509`).

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "common/load.rs"]
mod load;
#[path = "../tests/common/postgres.rs"]
mod postgres;

use load::{arg, csr, percentile};
use std::sync::Arc;
use std::time::{Duration, Instant};
use writ::audit::{AuditError, AuditLog, Kind, Record};
use writ::ca::{MintedX509, SubjectKey, SvidRequest};
use writ::config::RawConfig;
use writ::server::Issuer;
use writ::store::SvidRecord;
use writ::{Band, WritClaims};

const ORIGIN: &str = "example.org/writ-audit";
const ID: &str = "spiffe://investigate.example.org/agent/triage/incident/INC-4711";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An issuance record shaped like the ones `Issuer` writes (about 400 bytes).
fn issuance(i: u64) -> Record {
    Record::new(
        1_764_000_000 + i as i64,
        Kind::Issuance,
        "svid.issue.investigative",
        "spiffe://example.org/writ/node/node-17",
    )
    .incident(Some("INC-4711"))
    .spiffe_id(ID)
    .serial(format!("{:032x}", 0x40ab_u128 << 64 | i as u128))
    .detail(serde_json::json!({
        "band": "investigative",
        "format": "x509",
        "not_after": 1_764_003_600 + i as i64,
        "authority": "3f2a9c0d4e5b6a7f8091a2b3c4d5e6f708192a3b",
        "claims_sha256": "9b74c9897bac770ffc029102a200c5de2b1c6c8e7f3d2a1b0c9d8e7f6a5b4c3d",
    }))
}

fn fresh_log() -> (tempfile::TempDir, Arc<AuditLog>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(&dir.path().join("audit.redb"), dir.path(), ORIGIN).expect("log");
    (dir, Arc::new(log))
}

struct Run {
    appends: usize,
    commits: u64,
    elapsed: Duration,
    samples: Vec<Duration>,
}

fn print_row(label: &str, run: Run) {
    let Run {
        appends,
        commits,
        elapsed,
        mut samples,
    } = run;
    samples.sort();
    let (commits, batch) = if commits == 0 {
        ("-".to_owned(), "-".to_owned())
    } else {
        (
            commits.to_string(),
            format!("{:.1}", appends as f64 / commits as f64),
        )
    };
    println!(
        "{label:<24} {:>8.0}/s {appends:>8} ops {commits:>6} commits {batch:>6}/commit  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        appends as f64 / elapsed.as_secs_f64(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default()),
    );
}

/// `n` appends one after another from one thread: each is its own commit.
fn baseline(n: usize) -> Run {
    let (_dir, log) = fresh_log();
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        log.append(&issuance(i as u64)).expect("append");
        samples.push(t.elapsed());
    }
    Run {
        appends: n,
        commits: log.commits(),
        elapsed: start.elapsed(),
        samples,
    }
}

/// `tasks` tokio tasks appending with `append_async` for `secs`.
async fn async_level(tasks: usize, secs: Duration) -> Run {
    let (_dir, log) = fresh_log();
    let start = Instant::now();
    let deadline = start + secs;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = t as u64 * 1_000_000;
                while Instant::now() < deadline {
                    let s = Instant::now();
                    log.append_async(&issuance(i)).await.expect("append");
                    samples.push(s.elapsed());
                    i += 1;
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.await.expect("task"));
    }
    Run {
        appends: samples.len(),
        commits: log.commits(),
        elapsed: start.elapsed(),
        samples,
    }
}

/// `threads` OS threads, each calling `f(thread, i)` in a loop for `secs`; `commits`
/// reads the commit counter afterwards.
fn threaded(
    threads: usize,
    secs: Duration,
    f: impl Fn(usize, u64) + Send + Sync + 'static,
    commits: impl Fn() -> u64,
) -> Run {
    let f = Arc::new(f);
    let start = Instant::now();
    let deadline = start + secs;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let s = Instant::now();
                    f(t, i);
                    samples.push(s.elapsed());
                    i += 1;
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.join().expect("thread"));
    }
    Run {
        appends: samples.len(),
        commits: commits(),
        elapsed: start.elapsed(),
        samples,
    }
}

/// Where the issuer's store is: its data directory, or a throwaway PostgreSQL cluster.
struct Place {
    _dir: tempfile::TempDir,
    _postgres: Option<postgres::Postgres>,
}

fn issuer(on_postgres: bool) -> (Place, Arc<Issuer>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cluster, store) = if on_postgres {
        let pg = postgres::Postgres::start_durable().expect("PostgreSQL");
        pg.create_database("writ");
        let url = pg.url("writ");
        (Some(pg), Some(url))
    } else {
        (None, None)
    };
    let raw = RawConfig {
        data_dir: Some(dir.path().join("data")),
        store,
        ..RawConfig::default()
    };
    let issuer = Issuer::open(
        raw.resolve().expect("config"),
        Arc::new(writ::clock::SystemClock),
    )
    .expect("issuer");
    (
        Place {
            _dir: dir,
            _postgres: cluster,
        },
        issuer,
    )
}

fn request() -> SvidRequest {
    let mut claims = WritClaims::new(Band::Investigative);
    claims.incident = Some("INC-4711".into());
    claims.scopes = vec!["logs:read".into(), "metrics:read".into()];
    SvidRequest {
        spiffe_id: spiffe::SpiffeId::new(ID).expect("id"),
        ttl: None,
        claims: Some(claims),
        dns_names: vec![],
    }
}

/// Mint inside the audit log's sequencer, as `Issuer::issue_x509` does, without the
/// SVID store.
fn mint_audited(issuer: &Issuer, csr: &[u8]) -> MintedX509 {
    let ca = issuer.cas.ca(Band::Investigative);
    let now = issuer.cas.now();
    let mut request = request();
    let (_, minted) = issuer
        .audit
        .append_with(|index| {
            if let Some(claims) = request.claims.as_mut() {
                claims.audit_index = Some(index);
            }
            let minted = ca
                .mint_x509(SubjectKey::Csr(csr), &request, now)
                .map_err(|e| AuditError::Invalid(e.to_string()))?;
            let record = Record::new(now, Kind::Issuance, "svid.issue.investigative", "bench")
                .incident(Some("INC-4711"))
                .spiffe_id(ID)
                .serial(minted.serial.clone())
                .detail(serde_json::json!({
                    "band": "investigative",
                    "format": "x509",
                    "not_after": minted.not_after,
                    "authority": minted.authority_id,
                }));
            Ok::<_, AuditError>((record.encode().expect("encode"), minted))
        })
        .expect("audited mint");
    minted
}

/// The SVID record of an investigative mint, as the issuer writes it.
fn svid_record(request: &SvidRequest, minted: &MintedX509) -> SvidRecord {
    let claims = request.claims.as_ref();
    SvidRecord {
        serial: minted.serial.clone(),
        spiffe_id: request.spiffe_id.to_string(),
        band: Band::Investigative,
        authority_id: minted.authority_id.clone(),
        incident: claims.and_then(|c| c.incident.clone()),
        grant: claims.and_then(|c| c.grant.clone()),
        not_before: minted.not_before,
        not_after: minted.not_after,
    }
}

/// One way to issue, run by the load threads.
type IssuePath = Arc<dyn Fn(&Issuer, &[u8]) + Send + Sync>;

/// How many CSRs the workload-batch rows send per call (an agent's batch for one node).
const BATCH: usize = 16;

fn issuance_section(levels: &[usize], secs: Duration, on_postgres: bool) {
    let (_place, issuer) = issuer(on_postgres);
    entitle(&issuer);
    let csr = Arc::new(csr());
    println!(
        "\n== issuance (X.509-SVID from a CSR), {:?} per row, ops/s and latency per issuance ==",
        secs
    );
    for &threads in levels {
        let batch: Arc<Vec<(spiffe::SpiffeId, Vec<u8>)>> = Arc::new(
            (0..BATCH)
                .map(|_| (spiffe::SpiffeId::new(ID).expect("id"), csr.to_vec()))
                .collect(),
        );
        let paths: [(&str, IssuePath); 5] = [
            (
                "mint",
                Arc::new(|i: &Issuer, csr: &[u8]| {
                    i.cas
                        .ca(Band::Investigative)
                        .mint_x509(SubjectKey::Csr(csr), &request(), i.cas.now())
                        .expect("mint");
                }),
            ),
            (
                "mint+audit",
                Arc::new(|i: &Issuer, csr: &[u8]| {
                    mint_audited(i, csr);
                }),
            ),
            (
                "mint+store",
                Arc::new(|i: &Issuer, csr: &[u8]| {
                    let request = request();
                    let minted = i
                        .cas
                        .mint_x509(Band::Investigative, SubjectKey::Csr(csr), &request)
                        .expect("mint");
                    i.store
                        .put_svid(&svid_record(&request, &minted))
                        .expect("store");
                }),
            ),
            (
                "Issuer::issue_x509",
                Arc::new(|i: &Issuer, csr: &[u8]| {
                    i.issue_x509(
                        Band::Investigative,
                        SubjectKey::Csr(csr),
                        request(),
                        "bench",
                    )
                    .expect("issue");
                }),
            ),
            (
                "workload batch",
                Arc::new(move |i: &Issuer, _: &[u8]| {
                    for minted in i.sign_workload_x509_batch(&batch, None, "bench") {
                        minted.expect("issue");
                    }
                }),
            ),
        ];
        let only = std::env::args()
            .skip_while(|a| a != "--only")
            .nth(1)
            .unwrap_or_default();
        for (name, path) in paths {
            if !name.contains(only.as_str()) {
                continue;
            }
            let before = issuer.audit.commits();
            let (i2, c2) = (Arc::clone(&issuer), Arc::clone(&csr));
            let log = Arc::clone(&issuer.audit);
            let run = threaded(
                threads,
                secs,
                move |_, _| path(&i2, &c2),
                move || log.commits() - before,
            );
            match name {
                // Ops are SVIDs; latency is one batch's.
                "workload batch" => print_row(
                    &format!("batch of {BATCH} ×{threads}"),
                    Run {
                        appends: run.appends * BATCH,
                        ..run
                    },
                ),
                _ => print_row(&format!("{name} ×{threads}"), run),
            }
        }
    }
}

/// Policy entitling a workload to `ID`: a profile and its open incident.
fn entitle(issuer: &Issuer) {
    let now = issuer.cas.now();
    issuer
        .registry
        .create_profile(load::triage_profile(now), "bench")
        .expect("profile");
    issuer
        .registry
        .open_incident(load::incident(
            "default",
            "INC-4711",
            &["logs:read", "metrics:read"],
            now,
        ))
        .expect("incident");
}

fn main() {
    let secs = Duration::from_secs(arg("--secs", 3) as u64);
    let max_tasks = arg("--max-tasks", 1024);
    let n = arg("--baseline", 300);
    if std::env::args().any(|a| a == "--postgres") {
        println!("store: a throwaway PostgreSQL cluster (Unix socket, fsync on)");
        issuance_section(&[1, 16, 64], secs, true);
        return;
    }
    if std::env::args().any(|a| a == "--issuance") {
        issuance_section(&[1, 16, 64], secs, false);
        return;
    }
    println!(
        "record: {} bytes (issuance-shaped); log in {}",
        issuance(0).encode().expect("encode").len(),
        std::env::temp_dir().display()
    );
    println!(
        "columns: ops/s, ops, audit commits, records per commit, latency of one op p50/p99/max"
    );

    println!("\n== fsync baseline: {n} sequential appends (one commit each) ==");
    print_row("sequential append ×1", baseline(n));

    println!("\n== append_async from N tokio tasks (2 worker threads), {secs:?} each ==");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for tasks in [1, 16, 64, 256, 1024, 4096] {
        if tasks > max_tasks {
            break;
        }
        let run = rt.block_on(async_level(tasks, secs));
        print_row(&format!("append_async ×{tasks}"), run);
    }
    drop(rt);

    println!("\n== append from N blocking threads, {secs:?} each ==");
    for threads in [1, 16, 64, 256] {
        let (_dir, log) = fresh_log();
        let l2 = Arc::clone(&log);
        let run = threaded(
            threads,
            secs,
            move |t, i| {
                l2.append(&issuance(t as u64 * 1_000_000 + i))
                    .expect("append");
            },
            || log.commits(),
        );
        print_row(&format!("append ×{threads}"), run);
    }

    issuance_section(&[1, 16, 64], secs, false);
}
