//! Load tool for fairness between tenants (issue 13): one tenant's storm of policy changes
//! while another tenant makes its own, in one process on a fresh issuer (embedded store,
//! every change audited and durable).
//!
//! Tenant `b` opens and closes incidents one at a time, first alone, then while tenant `a`
//! opens `--storm` incidents from `--threads` threads at once. It reports each phase's
//! change latency (p50, p99, max) for both tenants: with the registry's writer passed
//! round-robin between tenants (`server::fair`), b's changes wait behind at most one of
//! a's, not behind a's queue.
//!
//! Then issuance: b has SVIDs signed one at a time (a CSR each, as an agent sends them),
//! alone and while a has `--storm` SVIDs signed from `--threads` threads; b's issuance
//! latency in both phases, and the storm's throughput. Issuance slots pass round-robin
//! between tenants (`server::fair`, `[tenant_limits] issuance_slots` in flight; `--slots N` sets it), so b waits for one of a's
//! issuances, not for a's queue.
//!
//! `cargo build --release --example tenant-storm && target/release/examples/tenant-storm`
//! Flags: --storm 1000 --threads 32 --changes 50 --slots 8

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "common/load.rs"]
mod load;

use load::{arg_checked, csr};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use writ::clock::{Clock, SystemClock};
use writ::config::RawConfig;
use writ::policy::{Profile, Selector, Tenant, TenantState};
use writ::server::Issuer;
use writ_verifier::Band;

/// One table row: the phase, the tenant, and the latencies' count, p50, p99 and max (ms).
fn row(phase: &str, tenant: &str, latencies: &[Duration]) {
    let mut d = latencies.to_vec();
    d.sort();
    let at = |q: f64| {
        d.get(((d.len().max(1) - 1) as f64 * q).round() as usize)
            .map_or("-".to_owned(), |x| format!("{:.1}", x.as_secs_f64() * 1e3))
    };
    println!(
        "| {phase} | {tenant} | {} | {} | {} | {} |",
        d.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}

/// Tenant b's `n` changes (an open and a close each), one at a time: their latencies.
fn b_changes(issuer: &Issuer, round: &str, n: usize) -> Vec<Duration> {
    let clock = SystemClock;
    let mut out = Vec::with_capacity(2 * n);
    for i in 0..n {
        let id = format!("B-{round}-{i}");
        let started = Instant::now();
        issuer
            .registry
            .open_incident(load::incident("b", &id, &[], clock.unix()))
            .unwrap();
        out.push(started.elapsed());
        let started = Instant::now();
        issuer
            .registry
            .close_incident("b", &id, "alice", clock.unix())
            .unwrap();
        out.push(started.elapsed());
    }
    out
}

/// `n` SVIDs for `id` signed one at a time: their latencies.
fn b_issues(issuer: &Issuer, id: &spiffe::SpiffeId, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let request = csr();
            let started = Instant::now();
            issuer
                .sign_workload_x509(id, &request, None, "node-b")
                .unwrap();
            started.elapsed()
        })
        .collect()
}

fn main() {
    let storm = arg_checked("--storm", 1_000);
    let threads = arg_checked("--threads", 32);
    let changes = arg_checked("--changes", 50);
    let slots = arg_checked(
        "--slots",
        writ::policy::tenant::TenantLimits::default().issuance_slots,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = RawConfig {
        data_dir: Some(dir.path().join("data")),
        tenant_limits: writ::policy::tenant::TenantLimits {
            issuance_slots: slots,
            ..Default::default()
        },
        ..RawConfig::default()
    }
    .resolve()
    .unwrap();
    let issuer = Issuer::open(config, Arc::new(SystemClock)).unwrap();
    for (name, base) in [("a", "a.test"), ("b", "b.test")] {
        issuer
            .create_tenant(Tenant {
                name: name.into(),
                base: base.into(),
                state: TenantState::Active,
                created_by: "root".into(),
                created_at: SystemClock.unix(),
                disabled_by: None,
                disabled_at: None,
            })
            .unwrap();
        let uid = if name == "a" {
            "unix:uid:2001"
        } else {
            "unix:uid:2002"
        };
        issuer
            .registry
            .create_profile(
                Profile {
                    tenant: name.into(),
                    name: "triage".into(),
                    selectors: BTreeSet::from([uid.parse::<Selector>().unwrap()]),
                    bands: BTreeSet::from([Band::Investigative]),
                    scopes: BTreeSet::new(),
                    service: false,
                    created_at: 0,
                },
                "root",
            )
            .unwrap();
    }

    eprintln!("b alone: {changes} opens and closes");
    let alone = b_changes(&issuer, "alone", changes);

    eprintln!("a storms: {storm} opens from {threads} threads; b as before");
    let next = Arc::new(AtomicUsize::new(0));
    let a_latencies: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (issuer, next) = (&issuer, Arc::clone(&next));
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= storm {
                            return mine;
                        }
                        let started = Instant::now();
                        issuer
                            .registry
                            .open_incident(load::incident(
                                "a",
                                &format!("A-{i}"),
                                &[],
                                SystemClock.unix(),
                            ))
                            .unwrap();
                        mine.push(started.elapsed());
                    }
                })
            })
            .collect();
        // b starts once a's queue is full.
        while next.load(Ordering::SeqCst) < threads.min(storm) {
            std::thread::yield_now();
        }
        let during = b_changes(&issuer, "storm", changes);
        let a_done = next.load(Ordering::SeqCst).min(storm);
        let a: Vec<Duration> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        println!("| phase | tenant | changes | p50 ms | p99 ms | max ms |");
        println!("|---|---|---:|---:|---:|---:|");
        row("alone", "b", &alone);
        row(
            &format!("during a's storm ({a_done} of a's opens started by b's last change)"),
            "b",
            &during,
        );
        a
    });
    row("storm", &format!("a ({threads} threads)"), &a_latencies);

    // Issuance: one open incident each, SVIDs signed from CSRs.
    for (tenant, id) in [("a", "A-ISSUE"), ("b", "B-ISSUE")] {
        issuer
            .registry
            .open_incident(load::incident(tenant, id, &[], SystemClock.unix()))
            .unwrap();
    }
    let a_id =
        spiffe::SpiffeId::new("spiffe://investigate.a.test/agent/triage/incident/A-ISSUE").unwrap();
    let b_id =
        spiffe::SpiffeId::new("spiffe://investigate.b.test/agent/triage/incident/B-ISSUE").unwrap();
    eprintln!("b issues alone: {changes} SVIDs");
    let alone = b_issues(&issuer, &b_id, changes);
    eprintln!("a issues {storm} SVIDs from {threads} threads; b as before");
    let csrs: Vec<Vec<u8>> = (0..storm).map(|_| csr()).collect();
    let next = AtomicUsize::new(0);
    let storm_started = Instant::now();
    let (during, a_signed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (issuer, next, csrs, a_id) = (&issuer, &next, &csrs, &a_id);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(request) = csrs.get(i) else {
                            return mine;
                        };
                        let started = Instant::now();
                        issuer
                            .sign_workload_x509(a_id, request, None, "node-a")
                            .unwrap();
                        mine.push(started.elapsed());
                    }
                })
            })
            .collect();
        while next.load(Ordering::SeqCst) < threads.min(storm) {
            std::thread::yield_now();
        }
        let during = b_issues(&issuer, &b_id, changes);
        let a: Vec<Duration> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (during, a)
    });
    println!();
    println!("| issuance phase | tenant | SVIDs | p50 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (phase, tenant, d) in [
        ("alone", "b".to_owned(), &alone),
        ("during a's storm", "b".to_owned(), &during),
        ("storm", format!("a ({threads} threads)"), &a_signed),
    ] {
        row(phase, &tenant, d);
    }
    let took = storm_started.elapsed().as_secs_f64();
    println!();
    println!(
        "a's storm: {storm} SVIDs (and b's {changes}) in {took:.2} s, {:.0} SVIDs/s",
        (storm + changes) as f64 / took
    );
}
