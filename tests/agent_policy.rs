//! What agents receive of the policy (docs/architecture.md, "The node API contract"):
//! closed incidents leave it once no SVID issued under them can still be valid, their
//! history stays on the server, and its size follows live state, not history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use writ::clock::{Clock, ManualClock};
use writ::config::RawConfig;
use writ::node_api::wire::encode_policy;
use writ::policy::{Incident, IncidentState, Profile, Selector, Severity};
use writ::server::Issuer;
use writ::server::registry::RegistryError;
use writ_verifier::Band;

fn issuer(dir: &std::path::Path, clock: &ManualClock) -> Arc<Issuer> {
    let config = RawConfig {
        data_dir: Some(dir.join("data")),
        ..RawConfig::default()
    }
    .resolve()
    .unwrap();
    let issuer = Issuer::open(config, Arc::new(clock.clone())).unwrap();
    issuer
        .registry
        .create_profile(
            Profile {
                tenant: "default".into(),
                name: "triage".into(),
                selectors: BTreeSet::from(["unix:uid:1001".parse::<Selector>().unwrap()]),
                bands: BTreeSet::from([Band::Investigative]),
                scopes: BTreeSet::from(["logs:read".to_owned()]),
                service: false,
                created_at: clock.unix(),
            },
            "alice",
        )
        .unwrap();
    issuer
}

fn open(issuer: &Issuer, clock: &ManualClock, id: &str) {
    issuer
        .registry
        .open_incident(Incident {
            tenant: "default".into(),
            id: id.into(),
            title: "checkout 500s".into(),
            severity: Severity::Sev2,
            assigned: BTreeSet::from(["triage".to_owned()]),
            scopes: BTreeSet::new(),
            state: IncidentState::Open,
            opened_by: "alice".into(),
            opened_at: clock.unix(),
            closed_by: None,
            closed_at: None,
            max_lifetime_secs: 3600,
            source: None,
        })
        .unwrap();
}

/// The encoded size of what agents receive, generation aside (it counts changes).
fn wire_size(issuer: &Issuer) -> usize {
    let mut policy = encode_policy(&issuer.registry.subscribe_agents().borrow(), true);
    policy.generation = 0;
    policy.encoded_len()
}

#[test]
fn a_closed_incident_leaves_what_agents_receive_after_the_longest_svid_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_900_000_000);
    let issuer = issuer(dir.path(), &clock);
    let window = issuer.config.ca.max_svid_ttl;
    let agents = issuer.registry.subscribe_agents();

    open(&issuer, &clock, "INC-1");
    issuer
        .registry
        .close_incident("default", "INC-1", "alice", clock.unix())
        .unwrap();
    // Its SVIDs may live for the window yet: agents and verifiers must still refuse them.
    assert_eq!(
        agents.borrow().incidents[&writ::policy::key("default", "INC-1")].state,
        IncidentState::Closed
    );

    clock.advance(window + Duration::from_secs(1));
    open(&issuer, &clock, "INC-2");
    let view = agents.borrow().clone();
    assert!(
        !view
            .incidents
            .contains_key(&writ::policy::key("default", "INC-1")),
        "INC-1 closed more than the longest SVID lifetime ago, yet agents still receive it"
    );
    assert!(view.incidents[&writ::policy::key("default", "INC-2")].is_open());

    // It leaves the server's memory too; its history stays in the store and the audit log,
    // and reads find it there.
    assert!(
        !issuer
            .registry
            .snapshot()
            .incidents
            .contains_key(&writ::policy::key("default", "INC-1"))
    );
    let shown = issuer
        .registry
        .incident("default", "INC-1")
        .unwrap()
        .unwrap();
    assert_eq!(shown.state, IncidentState::Closed);
    assert!(
        issuer
            .registry
            .all_incidents("default",)
            .unwrap()
            .iter()
            .any(|i| i.id == "INC-1")
    );
    assert!(
        issuer
            .store
            .incidents()
            .unwrap()
            .iter()
            .any(|i| i.id == "INC-1")
    );
    let records = issuer.audit.read(0, 10_000).unwrap();
    let closes = records
        .iter()
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
        .filter(|r| r.contains("INC-1") && r.contains("close"))
        .count();
    assert!(closes >= 1, "the close of INC-1 is not in the audit log");
}

#[test]
fn what_agents_receive_is_the_same_size_after_a_thousand_closed_incidents() {
    // Two servers with the same live state: one with no history, one that has closed a
    // thousand incidents, all longer ago than the longest SVID lifetime.
    let fresh_dir = tempfile::tempdir().unwrap();
    let busy_dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_900_000_000);
    let fresh = issuer(fresh_dir.path(), &clock);
    let busy = issuer(busy_dir.path(), &clock);
    for n in 0..1_000 {
        let id = format!("OLD-{n:04}");
        open(&busy, &clock, &id);
        busy.registry
            .close_incident("default", &id, "alice", clock.unix())
            .unwrap();
    }
    let inside_window = wire_size(&busy);
    clock.advance(busy.config.ca.max_svid_ttl + Duration::from_secs(1));
    // The next change publishes a view pruned at its time.
    open(&fresh, &clock, "LIVE-1");
    open(&busy, &clock, "LIVE-1");
    // The server's memory holds live state only; the store holds the history.
    assert_eq!(busy.registry.snapshot().incidents.len(), 1);
    assert_eq!(
        busy.registry.all_incidents("default",).unwrap().len(),
        1_001
    );
    assert_eq!(
        wire_size(&busy),
        wire_size(&fresh),
        "what an agent receives grew with closed history"
    );
    assert!(
        inside_window > 1_000 * 20,
        "inside the window the closed incidents are revoked, so agents must receive them"
    );
}

#[test]
fn history_out_of_memory_is_refused_as_it_always_was() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(1_900_000_000);
    let issuer = issuer(dir.path(), &clock);
    open(&issuer, &clock, "INC-1");
    issuer
        .registry
        .close_incident("default", "INC-1", "alice", clock.unix())
        .unwrap();
    clock.advance(issuer.config.ca.max_svid_ttl + Duration::from_secs(3601));
    open(&issuer, &clock, "INC-2");
    assert!(
        !issuer
            .registry
            .snapshot()
            .incidents
            .contains_key(&writ::policy::key("default", "INC-1"))
    );

    // Ids are never reused, though INC-1 is no longer in memory.
    let mut again =
        (*issuer.registry.snapshot().incidents[&writ::policy::key("default", "INC-2")]).clone();
    again.id = "INC-1".into();
    assert!(
        matches!(
            issuer.registry.open_incident(again),
            Err(RegistryError::AlreadyExists { .. })
        ),
        "a closed incident's id was reused"
    );
    // Closing or extending it again is refused as closed, not as unknown.
    assert!(matches!(
        issuer
            .registry
            .close_incident("default", "INC-1", "alice", clock.unix()),
        Err(RegistryError::AlreadyClosed(_))
    ));
    assert!(matches!(
        issuer
            .registry
            .extend_incident("default", "INC-1", 60, 86_400, "alice", clock.unix()),
        Err(RegistryError::AlreadyClosed(_))
    ));
    // An unknown incident is still unknown.
    assert!(matches!(
        issuer
            .registry
            .close_incident("default", "INC-9", "alice", clock.unix()),
        Err(RegistryError::NotFound { .. })
    ));
}
