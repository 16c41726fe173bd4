//! Load tool for cold start (issue 16, item 3): how long `writ server` takes from exec to
//! serving, and its memory, on a data directory holding a long history.
//!
//! It fills a fresh data directory in process (`--records` audit records through the
//! audit log's group commit, `--svids` live SVID rows through the store's), closes it,
//! then starts the real `writ server` binary on it `--runs` times and reports, per run,
//! the time from spawn until the admin socket and the node API port both accept (what
//! tests/common/procs.rs calls ready), until it has answered `writ incident list`, and
//! the server's resident set then. The same is
//! measured on an empty data directory (created, then restarted) for comparison.
//!
//! `cargo build --release --bin writ --example cold-start && target/release/examples/cold-start`
//! Flags: --records N (default 1000000), --svids N (default 100000), --runs N (default 3),
//! --writ PATH (default target/release/writ), --drop-caches (as root: empty the page cache
//! before each start, as after a reboot).

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "common/load.rs"]
mod load;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use writ::Band;
use writ::audit::{Kind, Record};
use writ::clock::SystemClock;
use writ::config::RawConfig;
use writ::server::Issuer;
use writ::store::SvidRecord;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Writes `records` audit records and `svids` live SVID rows into `data_dir`.
fn fill(data_dir: &Path, records: usize, svids: usize) {
    let config = RawConfig {
        data_dir: Some(data_dir.to_owned()),
        ..RawConfig::default()
    }
    .resolve()
    .unwrap();
    let issuer = Issuer::open(config, Arc::new(SystemClock)).unwrap();
    let started = Instant::now();
    let threads = 8;
    let per_thread = records.div_ceil(threads);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let audit = Arc::clone(&issuer.audit);
            scope.spawn(move || {
                let mine = per_thread.min(records.saturating_sub(t * per_thread));
                let mut done = 0;
                while done < mine {
                    let chunk = (mine - done).min(2_000);
                    let pending: Vec<_> = (0..chunk)
                        .map(|i| {
                            let record = Record::new(
                                unix_now(),
                                Kind::AdminChange,
                                "load.history",
                                format!("cold-start-{t}-{}", done + i),
                            );
                            let bytes = record.encode().unwrap();
                            audit
                                .submit_with(|_| Ok::<_, writ::audit::AuditError>((bytes, ())))
                                .unwrap()
                        })
                        .collect();
                    for p in pending {
                        p.wait().unwrap();
                    }
                    done += chunk;
                }
            });
        }
    });
    eprintln!(
        "  {records} audit records in {:.1} s ({} commits)",
        started.elapsed().as_secs_f64(),
        issuer.audit.commits()
    );
    let started = Instant::now();
    let now = unix_now();
    let rows: Vec<SvidRecord> = (0..svids)
        .map(|i| SvidRecord {
            serial: format!("{i:032x}"),
            spiffe_id: format!("spiffe://investigate.example.org/agent/triage/incident/INC-{i}"),
            band: Band::Investigative,
            authority_id: "cold-start".into(),
            incident: Some(format!("INC-{i}")),
            grant: None,
            not_before: now,
            not_after: now + 24 * 3600,
        })
        .collect();
    for chunk in rows.chunks(10_000) {
        issuer.store.put_svids(chunk).unwrap();
    }
    eprintln!(
        "  {svids} SVID rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, then wait: the next run opens the same files.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// Starts `writ server` on `data_dir` and waits until it serves: (time until its sockets
/// accept, time until it has answered an admin call, RSS KiB then).
fn start(writ: &Path, dir: &Path, data_dir: &Path, port: u16) -> (Duration, Duration, u64) {
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nnode_listen = \"127.0.0.1:{port}\"\n",
            data_dir.display().to_string()
        ),
    )
    .unwrap();
    let admin = data_dir.join("admin.sock");
    let _ = std::fs::remove_file(&admin);
    if load::flag("--drop-caches") {
        // Nothing of the data directory in the page cache: a start after a reboot.
        let synced = Command::new("sync").status().is_ok_and(|s| s.success());
        assert!(synced, "sync failed");
        std::fs::write("/proc/sys/vm/drop_caches", "3\n")
            .expect("--drop-caches needs root (writes /proc/sys/vm/drop_caches)");
    }
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let started = Instant::now();
    let child = Command::new(writ)
        .args(["server", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("running writ: build it with cargo build --release --bin writ");
    let server = Server(child);
    loop {
        if std::os::unix::net::UnixStream::connect(&admin).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "writ server did not start; see {}",
            dir.join("server.log").display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let ready = started.elapsed();
    // And it answers: an admin call made through the real CLI (one more process start,
    // a few ms of this figure).
    let answered = Command::new(writ)
        .args(["incident", "list"])
        .env("WRIT_ADMIN_SOCKET", &admin)
        .stdout(Stdio::null())
        .status()
        .expect("running writ incident list");
    assert!(answered.success(), "writ incident list failed");
    let answers = started.elapsed();
    let rss = rss_kib(server.0.id());
    drop(server);
    (ready, answers, rss)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn measure(label: &str, writ: &Path, dir: &Path, data_dir: &Path, runs: usize) {
    let port = free_port();
    let mut results: Vec<(Duration, Duration, u64)> = (0..runs)
        .map(|_| start(writ, dir, data_dir, port))
        .collect();
    for (i, (ready, answers, rss)) in results.iter().enumerate() {
        eprintln!(
            "  {label} run {}: accepting in {:.0} ms, answered in {:.0} ms, RSS {:.1} MiB",
            i + 1,
            ready.as_secs_f64() * 1000.0,
            answers.as_secs_f64() * 1000.0,
            *rss as f64 / 1024.0
        );
    }
    results.sort();
    let (median, answers, rss) = results[results.len() / 2];
    println!(
        "| {label} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} MiB |",
        median.as_secs_f64() * 1000.0,
        answers.as_secs_f64() * 1000.0,
        results.last().map_or(0.0, |r| r.0.as_secs_f64() * 1000.0),
        rss as f64 / 1024.0
    );
}

fn main() {
    let records = load::arg_checked("--records", 1_000_000);
    let svids = load::arg_checked("--svids", 100_000);
    let runs = load::arg_checked("--runs", 3).max(1);
    let writ = load::writ_bin();
    let dir = tempfile::tempdir().unwrap();

    let empty = dir.path().join("empty");
    eprintln!("== an empty data directory (made by a first start) ==");
    fill(&empty, 0, 0);
    let history = dir.path().join("history");
    eprintln!("== filling: {records} audit records, {svids} live SVID rows ==");
    fill(&history, records, svids);
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    eprintln!(
        "  audit.redb {:.0} MiB, store {:.0} MiB",
        size(&history.join("audit.redb")) as f64 / 1048576.0,
        size(&history.join("writ.redb")) as f64 / 1048576.0
    );

    println!(
        "\n| data directory | accepting (median of {runs}) | answered an admin call | slowest accepting | RSS |"
    );
    println!("|---|---:|---:|---:|---:|");
    measure("empty", &writ, dir.path(), &empty, runs);
    measure(
        &format!("{records} audit records, {svids} SVID rows"),
        &writ,
        dir.path(),
        &history,
        runs,
    );
}
