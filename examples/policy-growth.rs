//! Load tool for policy growth (issue 11): what a server and its agents pay as closed
//! history grows. For each history size N (default 0, 1000, 10000) it opens a fresh
//! issuer in a temp dir, opens and closes N incidents (each a durable, audited change),
//! moves its clock past the longest SVID lifetime, and reports:
//!
//! - `agent bytes`: the encoded `AgentPolicy` (what `Sync` sends each agent per change);
//! - `server policy bytes`: the server's in-memory policy as JSON;
//! - `rss at start MiB`, `rss MiB`: that process's resident set once the issuer is open,
//!   and after the 50 opens below;
//! - `open p50/p99 ms`: latency of `open_incident` (a durable audited change) for 50 new
//!   incidents on top of that history;
//! - `rss at the next start MiB`: a second start's resident set, in a process of its own
//!   (the first start took the history, ended while the server was down, out of the
//!   store's live indexes; see `Store::live_incidents`).
//!
//! `cargo build --release --example policy-growth && target/release/examples/policy-growth`
//! Flags: --sizes 0,1000,10000

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "common/load.rs"]
mod load;

use prost::Message;
use std::sync::Arc;
use std::time::Instant;
use writ::clock::{Clock, ManualClock};
use writ::config::RawConfig;
use writ::node_api::wire::encode_policy;
use writ::server::Issuer;

fn sizes() -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(|n| n.parse().expect("--sizes")).collect())
        .unwrap_or_else(|| vec![0, 1_000, 10_000])
}

fn rss_kib() -> u64 {
    load::rss_kib(std::process::id())
}

/// The scopes of the incidents it opens.
const SCOPES: &[&str] = &["logs:read", "metrics:read"];

const START: i64 = 1_900_000_000;

fn open_issuer(dir: &std::path::Path, clock: &ManualClock) -> Arc<Issuer> {
    let config = RawConfig {
        data_dir: Some(dir.join("data")),
        // History written as fast as the store takes it, on a clock that does not move:
        // no tenant limit may slow it.
        tenant_limits: writ::policy::tenant::TenantLimits {
            changes_per_second: 1_000_000,
            change_burst: 1_000_000,
            max_open_incidents: 1_000_000,
            ..Default::default()
        },
        ..RawConfig::default()
    }
    .resolve()
    .unwrap();
    Issuer::open(config, Arc::new(clock.clone())).unwrap()
}

/// The history: a profile and `n` incidents opened and closed, each a durable change.
fn write_history(dir: &std::path::Path, n: usize) {
    let clock = ManualClock::at(START);
    let issuer = open_issuer(dir, &clock);
    issuer
        .registry
        .create_profile(load::triage_profile(clock.unix()), "alice")
        .unwrap();
    for i in 0..n {
        let id = format!("OLD-{i:06}");
        issuer
            .registry
            .open_incident(load::incident("default", &id, SCOPES, clock.unix()))
            .unwrap();
        issuer
            .registry
            .close_incident("default", &id, "alice", clock.unix())
            .unwrap();
    }
}

/// A server started on that history two hours later (past the revocation window), in a
/// process of its own so its memory is its own: what it holds, and what a change costs.
/// Then another start, a minute later, in a process of its own: the first start took the
/// history out of the store's live indexes, so this one reads only what is live.
fn measure(dir: &std::path::Path, n: usize) {
    let clock = ManualClock::at(START + 2 * 3600 + 1);
    let issuer = open_issuer(dir, &clock);
    let opened_rss = rss_kib();
    let mut latencies = Vec::new();
    for i in 0..50 {
        let started = Instant::now();
        issuer
            .registry
            .open_incident(load::incident(
                "default",
                &format!("NEW-{i:03}"),
                SCOPES,
                clock.unix(),
            ))
            .unwrap();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let agent = encode_policy(&issuer.registry.subscribe_agents().borrow(), true).encoded_len();
    let live = issuer.registry.snapshot();
    let server = serde_json::to_vec(&(
        live.profiles.values().collect::<Vec<_>>(),
        live.incidents.values().map(|i| &**i).collect::<Vec<_>>(),
        live.grants.values().collect::<Vec<_>>(),
        live.playbooks.values().collect::<Vec<_>>(),
        live.revoked_serials.values().collect::<Vec<_>>(),
    ))
    .unwrap()
    .len();
    print!(
        "{n}\t{agent}\t{server}\t{:.1}\t{:.1}\t{:.2}\t{:.2}\t",
        opened_rss as f64 / 1024.0,
        rss_kib() as f64 / 1024.0,
        latencies[latencies.len() / 2].as_secs_f64() * 1e3,
        latencies[latencies.len() * 99 / 100].as_secs_f64() * 1e3,
    );
}

/// The later start: its resident set once the issuer is open.
fn restart(dir: &std::path::Path) {
    let clock = ManualClock::at(START + 2 * 3600 + 61);
    let _issuer = open_issuer(dir, &clock);
    println!("{:.1}", rss_kib() as f64 / 1024.0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, phase, dir, n] = args.as_slice() {
        let n = n.parse().expect("history size");
        match phase.as_str() {
            "--write" => return write_history(std::path::Path::new(dir), n),
            "--measure" => return measure(std::path::Path::new(dir), n),
            "--restart" => return restart(std::path::Path::new(dir)),
            _ => {}
        }
    }
    println!(
        "closed\tagent bytes\tserver policy bytes\trss at start MiB\trss MiB\topen p50 ms\topen p99 ms\trss at the next start MiB"
    );
    let me = std::env::current_exe().unwrap();
    for n in sizes() {
        let dir = tempfile::tempdir().unwrap();
        for phase in ["--write", "--measure", "--restart"] {
            let status = std::process::Command::new(&me)
                .args([phase, dir.path().to_str().unwrap(), &n.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "{phase} {n} failed");
        }
    }
}
