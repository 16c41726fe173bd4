//! Several servers on one PostgreSQL follow one policy (docs/ha.md, "Revocation across
//! replicas"): each test runs two or three registries, each with its own store
//! connection, audit log and follower loop (LISTEN/NOTIFY and heartbeats, as
//! `writ server` runs them), against a throwaway cluster.
//!
//! The invariant under test: once a revocation returns on one server, no server signs
//! on the policy before it. Signing is modelled as issuance does it: hold the issuance
//! gate, read the snapshot, decide on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::postgres::Postgres;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use writ::policy::{Incident, IncidentState, Severity};
use writ::server::registry::{Registry, RegistryError};
use writ::store::Store;

const WAIT: Duration = Duration::from_secs(30);

struct Replica {
    registry: Arc<Registry>,
    store: Arc<Store>,
    follower: common::replica::Follower,
}

impl Replica {
    fn start(url: &str, runtime: &tokio::runtime::Runtime) -> Replica {
        let follower = common::replica::Follower::start(url, runtime);
        let replica = Replica {
            registry: Arc::clone(&follower.registry),
            store: Arc::clone(&follower.store),
            follower,
        };
        replica.wait_until_it_may_sign();
        replica
    }

    fn may_sign(&self) -> bool {
        self.registry.issuance_gate().is_ok()
    }

    fn wait_until_it_may_sign(&self) {
        wait_for("the replica to hold a lease", || self.may_sign());
    }

    /// Its follower stops: no more notifications, no more heartbeats (as a replica
    /// whose connections to the database are cut).
    fn cut_off(&mut self) {
        self.follower.task.abort();
    }

    fn incident_state(&self, id: &str) -> Option<IncidentState> {
        self.registry
            .snapshot()
            .incidents
            .get(&writ::policy::key("default", id))
            .map(|i| i.state)
    }
}

fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn cluster() -> Option<(Postgres, String)> {
    let pg = Postgres::start()?;
    pg.create_database("writ");
    let url = pg.url("writ");
    Some((pg, url))
}

fn incident(id: &str) -> Incident {
    Incident {
        tenant: "default".into(),
        id: id.into(),
        title: "checkout errors".into(),
        severity: Severity::Sev2,
        assigned: BTreeSet::from(["triage".to_string()]),
        scopes: BTreeSet::new(),
        state: IncidentState::Open,
        opened_by: "uid:0".into(),
        opened_at: common::system_now(),
        closed_by: None,
        closed_at: None,
        max_lifetime_secs: 3600,
        source: None,
    }
}

#[test]
fn a_change_on_one_server_reaches_the_others() {
    let Some((_pg, url)) = cluster() else { return };
    let rt = runtime();
    let a = Replica::start(&url, &rt);
    let b = Replica::start(&url, &rt);
    let c = Replica::start(&url, &rt);
    a.registry.open_incident(incident("INC-1")).unwrap();
    for other in [&b, &c] {
        wait_for("INC-1 on every replica", || {
            other.incident_state("INC-1") == Some(IncidentState::Open)
        });
    }
    // The generation is the cluster's, not each server's: an agent moving between
    // servers never sees it go back.
    let generations: BTreeSet<u64> = [&a, &b, &c]
        .iter()
        .map(|r| r.registry.snapshot().generation)
        .collect();
    assert_eq!(generations.len(), 1, "{generations:?}");
    // Every replica has applied the same version, and all may sign.
    assert!([&a, &b, &c].iter().all(|r| r.may_sign()));
}

/// The invariant, under concurrency: signers on B and C race A's close; once the close
/// returns, no signer anywhere decides on a policy where INC-1 is open.
#[test]
fn once_a_close_returns_no_replica_signs_for_the_incident() {
    let Some((_pg, url)) = cluster() else { return };
    let rt = runtime();
    let a = Replica::start(&url, &rt);
    let b = Replica::start(&url, &rt);
    let c = Replica::start(&url, &rt);
    for round in 0..5 {
        let id = format!("INC-{round}");
        a.registry.open_incident(incident(&id)).unwrap();
        for r in [&b, &c] {
            wait_for("the incident everywhere", || {
                r.incident_state(&id).is_some()
            });
        }
        let closed = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(AtomicUsize::new(0));
        let signed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let signers: Vec<_> = [&b, &c, &b, &c]
            .iter()
            .map(|r| {
                let registry = Arc::clone(&r.registry);
                let (closed, violations, signed, stop, id) = (
                    Arc::clone(&closed),
                    Arc::clone(&violations),
                    Arc::clone(&signed),
                    Arc::clone(&stop),
                    id.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        // Read before deciding: a decision that began before the close
                        // returned is allowed to see it open.
                        let after_close = closed.load(Ordering::SeqCst);
                        let Ok(_gate) = registry.issuance_gate() else {
                            continue;
                        };
                        let open = registry
                            .snapshot()
                            .incidents
                            .get(&writ::policy::key("default", &id))
                            .is_some_and(|i| i.is_open());
                        if open {
                            signed.fetch_add(1, Ordering::SeqCst);
                            if after_close {
                                violations.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        wait_for("signers to sign", || signed.load(Ordering::SeqCst) > 10);
        a.registry
            .close_incident("default", &id, "uid:0", common::system_now())
            .unwrap();
        closed.store(true, Ordering::SeqCst);
        // At the instant the close returns, every replica already has it.
        for r in [&a, &b, &c] {
            assert_eq!(
                r.incident_state(&id),
                Some(IncidentState::Closed),
                "round {round}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::SeqCst);
        for s in signers {
            s.join().unwrap();
        }
        assert_eq!(
            violations.load(Ordering::SeqCst),
            0,
            "round {round}: signed after the close returned"
        );
    }
}

/// A replica cut off from the database stops signing when its lease runs out, and a
/// close on another replica waits that long, not forever: once it returns, the cut-off
/// replica cannot sign at all.
#[test]
fn a_cut_off_replica_stops_signing_and_a_close_waits_out_its_lease() {
    let Some((_pg, url)) = cluster() else { return };
    let rt = runtime();
    let a = Replica::start(&url, &rt);
    let mut b = Replica::start(&url, &rt);
    a.registry.open_incident(incident("INC-1")).unwrap();
    wait_for("INC-1 on B", || b.incident_state("INC-1").is_some());
    b.cut_off();
    let (_, unconfirmed) = a
        .registry
        .close_incident_confirmed("default", "INC-1", "uid:0", common::system_now())
        .unwrap();
    // The close names the replica that never confirmed it, for the operator.
    assert_eq!(unconfirmed, [b.registry.replica_name().unwrap().to_owned()]);
    // B never heard of the close, and still has INC-1 open in memory: it must not sign.
    assert_eq!(b.incident_state("INC-1"), Some(IncidentState::Open));
    assert!(
        matches!(b.registry.issuance_gate(), Err(RegistryError::NotCurrent)),
        "a replica that missed a revocation still signs"
    );
    // A keeps signing.
    assert!(a.may_sign());
}

/// Two servers opening the same incident id at once: the cluster lock and the catch-up
/// before deciding let exactly one succeed.
#[test]
fn two_servers_racing_to_open_one_incident_id_open_it_once() {
    let Some((_pg, url)) = cluster() else { return };
    let rt = runtime();
    let a = Replica::start(&url, &rt);
    let b = Replica::start(&url, &rt);
    for round in 0..5 {
        let id = format!("INC-{round}");
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = [&a, &b]
            .iter()
            .map(|r| {
                let registry = Arc::clone(&r.registry);
                let barrier = Arc::clone(&barrier);
                let id = id.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    registry.open_incident(incident(&id))
                })
            })
            .collect();
        let outcomes: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let opened = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(opened, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Err(RegistryError::AlreadyExists { .. }))),
            "{outcomes:?}"
        );
    }
    assert_eq!(a.store.incidents().unwrap().len(), 5);
}

/// PostgreSQL restarts: every replica stops signing while it cannot prove its policy
/// current, and resumes by itself once the database is back.
#[test]
fn replicas_stop_signing_while_the_database_is_down_and_resume_by_themselves() {
    let Some((pg, url)) = cluster() else { return };
    let rt = runtime();
    let a = Replica::start(&url, &rt);
    let b = Replica::start(&url, &rt);
    pg.stop();
    for r in [&a, &b] {
        wait_for("the lease to run out", || !r.may_sign());
    }
    pg.start_again();
    for r in [&a, &b] {
        r.wait_until_it_may_sign();
    }
    // And they follow each other again.
    a.registry.open_incident(incident("INC-9")).unwrap();
    wait_for("INC-9 on B", || b.incident_state("INC-9").is_some());
}

/// A server hears its own changes back as notifications: it publishes each change to its
/// agents once, not again when the notification arrives.
#[test]
fn a_servers_own_change_is_published_once() {
    let Some((_pg, url)) = cluster() else { return };
    let rt = runtime();
    let a = Replica::start(&url, &rt);
    let b = Replica::start(&url, &rt);
    let mut published = a.registry.subscribe();
    published.borrow_and_update();
    let publishes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&publishes);
    rt.spawn(async move {
        while published.changed().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    a.registry.open_incident(incident("INC-1")).unwrap();
    wait_for("INC-1 on B", || b.incident_state("INC-1").is_some());
    // Several heartbeats and the notification's round trip later, still one publish.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(publishes.load(Ordering::SeqCst), 1);
}

fn pd_source() -> writ::sources::config::Source {
    writ::sources::config::Source {
        name: "pd".into(),
        kind: writ::sources::SourceKind::PagerDuty,
        path: "/pd".into(),
        secrets: Vec::new(),
        tenant: "default".into(),
        rules: vec![writ::sources::rules::Rule {
            service: "*".into(),
            assign: ["triage".to_owned()].into(),
            scopes: BTreeSet::new(),
            severity: Default::default(),
            default_severity: Severity::Sev3,
            max_lifetime: None,
        }],
        tolerance_secs: 300,
    }
}

fn pd_open(delivery_id: &str) -> writ::sources::SourceEvent {
    writ::sources::SourceEvent {
        source: writ::sources::SourceKind::PagerDuty,
        delivery_id: delivery_id.into(),
        incident_id: "Q1".into(),
        action: writ::sources::Action::Open,
        service: Some("PSVC".into()),
        severity: None,
        title: Some("checkout 502s".into()),
        url: None,
    }
}

/// A source delivery that changes no incident publishes no new policy where it changes
/// no row either (a duplicate); where it writes the source's row (a policy table, so the
/// store's version moves) it is published as before, and every replica still agrees on
/// the generation and may sign.
#[test]
fn source_deliveries_that_change_nothing_keep_replicas_in_step() {
    use writ::sources::rules::Decision;
    let Some((_pg, url)) = cluster() else { return };
    let rt = runtime();
    let a = Replica::start(&url, &rt);
    let b = Replica::start(&url, &rt);
    let source = pd_source();
    a.registry
        .apply_source_event(&source, &pd_open("d1"), 3600)
        .unwrap();
    wait_for("pd-Q1 on B", || {
        b.incident_state("pd-Q1") == Some(IncidentState::Open)
    });
    let before = a.registry.snapshot();
    let again = a
        .registry
        .apply_source_event(&source, &pd_open("d1"), 3600)
        .unwrap();
    assert_eq!(again.decision, Decision::Duplicate);
    assert!(Arc::ptr_eq(&before, &a.registry.snapshot()));
    let nothing = a
        .registry
        .apply_source_event(&source, &pd_open("d2"), 3600)
        .unwrap();
    assert!(
        matches!(nothing.decision, Decision::Nothing(_)),
        "{:?}",
        nothing.decision
    );
    wait_for("both replicas on one generation, both signing", || {
        a.registry.snapshot().generation == b.registry.snapshot().generation
            && a.may_sign()
            && b.may_sign()
    });
    assert!(a.registry.snapshot().generation > before.generation);
}
