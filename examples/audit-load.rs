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
//! 3. issuance with and without the audit append, at concurrency 1 and under load: every
//!    path of `examples/common/issuance.rs` (`mint`, `mint+audit`, `mint+store`,
//!    `Issuer::issue_x509`, `batch of 16`); `bench` runs three of them with their ratio.
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

#[path = "common/issuance.rs"]
mod issuance;
#[path = "common/load.rs"]
mod load;
#[path = "../tests/common/postgres.rs"]
mod postgres;

use issuance::{ID, Run, threaded};
use load::{arg, percentile};
use std::sync::Arc;
use std::time::{Duration, Instant};
use writ::audit::{AuditLog, Kind, Record};

const ORIGIN: &str = "example.org/writ-audit";

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

fn issuance_section(levels: &[usize], secs: Duration, on_postgres: bool) {
    let cluster = on_postgres.then(|| {
        let pg = postgres::Postgres::start_durable().expect("PostgreSQL");
        pg.create_database("writ");
        pg
    });
    let (_dir, issuer) = issuance::issuer(cluster.as_ref().map(|pg| pg.url("writ")));
    println!(
        "\n== issuance (X.509-SVID from a CSR), {:?} per row, ops/s and latency per issuance ==",
        secs
    );
    let only = load::value("--only").unwrap_or_default();
    for &threads in levels {
        for name in issuance::PATHS {
            if !name.contains(only.as_str()) {
                continue;
            }
            let run = issuance::measure(&issuer, name, threads, secs);
            print_row(&format!("{name} ×{threads}"), run);
        }
    }
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
