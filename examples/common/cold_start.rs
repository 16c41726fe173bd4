//! Cold start measured (issue 16, item 3): how long the real `writ server` takes from exec
//! to serving, and its memory, on a data directory holding a long history. Used by
//! `bench`. Included with `#[path = "common/cold_start.rs"] mod cold_start;` beside
//! `mod load;`.
//!
//! A measuring tool, not a service: a setup error fails loudly.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

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

/// Writes `records` audit records (through the audit log's group commit, from 8 threads)
/// and `svids` live SVID rows (through the store's) into `data_dir`, made if missing.
pub fn fill(data_dir: &Path, records: usize, svids: usize) {
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

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, then wait: the next run opens the same files.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// One start: the time until its sockets accept, until it has answered an admin call,
/// and its RSS (KiB) then.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Start {
    pub ready: Duration,
    pub answered: Duration,
    pub rss_kib: u64,
}

/// Starts `writ server` on `data_dir` (its config and log in `dir`) and waits until it
/// serves. With `drop_caches` (as root) the page cache is emptied first, as after a reboot.
fn start(writ: &Path, dir: &Path, data_dir: &Path, port: u16, drop_caches: bool) -> Start {
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
    if drop_caches {
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
    let answered = started.elapsed();
    let rss_kib = super::load::rss_kib(server.0.id());
    drop(server);
    Start {
        ready,
        answered,
        rss_kib,
    }
}

/// Starts `writ server` on `data_dir` `runs` times (each run on stderr); returns the runs
/// sorted by readiness: the median is `[runs / 2]`, the slowest the last.
pub fn measure(
    label: &str,
    writ: &Path,
    dir: &Path,
    data_dir: &Path,
    runs: usize,
    drop_caches: bool,
) -> Vec<Start> {
    let port = super::load::free_port();
    let mut results: Vec<Start> = (0..runs.max(1))
        .map(|_| start(writ, dir, data_dir, port, drop_caches))
        .collect();
    for (i, s) in results.iter().enumerate() {
        eprintln!(
            "  {label} run {}: accepting in {:.0} ms, answered in {:.0} ms, RSS {:.1} MiB",
            i + 1,
            s.ready.as_secs_f64() * 1000.0,
            s.answered.as_secs_f64() * 1000.0,
            s.rss_kib as f64 / 1024.0
        );
    }
    results.sort();
    results
}
