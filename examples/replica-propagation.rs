//! How fast a revocation crosses replicas: N registries on one PostgreSQL, each following
//! the others as `writ server` does (LISTEN/NOTIFY, heartbeats, leases). Each round opens
//! an incident on replica A, then closes it there, and measures
//! * `close`: how long `close_incident` takes to return on A (it returns once every
//!   replica has applied the close, or its lease ran out);
//! * `seen`: from the start of the close until the last other replica published a policy
//!   with the incident closed (what its agents' Sync streams then carry).
//!
//! With `--cut-one`, one replica stops following before the rounds (as one that lost the
//! database): each close then waits out its lease.
//!
//! Usage: cargo run --release --example replica-propagation -- [--replicas 3] [--rounds 200] [--cut-one] [--url postgres://…]
//! Without `--url` it starts a throwaway cluster (needs PostgreSQL's initdb and pg_ctl).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/load.rs"]
mod load;
#[path = "../tests/common/postgres.rs"]
mod postgres;
#[path = "../tests/common/replica.rs"]
mod replica;

use load::{arg_checked, flag, percentile, value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use writ::policy::{Incident, IncidentState, Severity};
use writ::server::registry::Registry;

fn incident(id: &str, now: i64) -> Incident {
    Incident {
        tenant: "default".into(),
        id: id.into(),
        title: "propagation".into(),
        severity: Severity::Sev3,
        assigned: BTreeSet::from(["triage".to_string()]),
        scopes: BTreeSet::new(),
        state: IncidentState::Open,
        opened_by: "uid:0".into(),
        opened_at: now,
        closed_by: None,
        closed_at: None,
        max_lifetime_secs: 3600,
        source: None,
    }
}

fn main() {
    let replicas = arg_checked("--replicas", 3);
    let rounds = arg_checked("--rounds", 200);
    let cut_one = flag("--cut-one");
    let (_cluster, url) = match value("--url") {
        Some(url) => (None, url),
        None => {
            let pg = postgres::Postgres::start().expect("PostgreSQL");
            pg.create_database("writ");
            let url = pg.url("writ");
            (Some(pg), url)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster: Vec<replica::Follower> = (0..replicas)
        .map(|_| replica::Follower::start(&url, &rt))
        .collect();
    let registries: Vec<Arc<Registry>> = cluster.iter().map(|f| Arc::clone(&f.registry)).collect();
    for r in &registries {
        while r.issuance_gate().is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if cut_one {
        cluster.last().unwrap().task.abort();
    }
    let watched = if cut_one {
        &registries[1..replicas - 1]
    } else {
        &registries[1..]
    };
    let a = &registries[0];
    let (mut close, mut seen) = (Vec::new(), Vec::new());
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    for round in 0..rounds {
        let id = format!("BENCH-{round}");
        a.open_incident(incident(&id, now())).unwrap();
        for r in watched {
            while !r
                .snapshot()
                .incidents
                .contains_key(&writ::policy::key("default", &id))
            {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        // Watch every other replica's published policy from the instant the close starts.
        let watchers: Vec<_> = watched
            .iter()
            .map(|r| {
                let mut rx = r.subscribe();
                let id = id.clone();
                rt.spawn(async move {
                    loop {
                        let closed = rx
                            .borrow_and_update()
                            .incidents
                            .get(&writ::policy::key("default", &id))
                            .is_none_or(|i| !i.is_open());
                        if closed {
                            return Instant::now();
                        }
                        if rx.changed().await.is_err() {
                            return Instant::now();
                        }
                    }
                })
            })
            .collect();
        let start = Instant::now();
        a.close_incident("default", &id, "uid:0", now()).unwrap();
        close.push(start.elapsed());
        let last = watchers
            .into_iter()
            .map(|w| rt.block_on(w).unwrap())
            .max()
            .unwrap_or(start);
        seen.push(last.duration_since(start));
    }
    close.sort();
    seen.sort();
    println!(
        "replicas={replicas} rounds={rounds} cut_one={cut_one}\n\
         close returns: p50 {:?} p99 {:?} max {:?}\n\
         last other replica has it: p50 {:?} p99 {:?} max {:?}",
        percentile(&close, 0.5),
        percentile(&close, 0.99),
        close.last().unwrap(),
        percentile(&seen, 0.5),
        percentile(&seen, 0.99),
        seen.last().unwrap(),
    );
}
