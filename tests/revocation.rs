//! The revocation feed (`writ.revocation.v1`) end to end, in process: a real issuer and
//! agent on a temp socket, watched with writ's generated client over the Unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::dev::{Dev, my_uid, start};

use std::collections::BTreeSet;
use std::time::Duration;
use tokio_stream::StreamExt;
use writ::ca::CaConfig;
use writ::policy::grant::plan_digest;
use writ::policy::{GrantRequest, GrantState, Profile, Selector};
use writ::proto::revocation::{self as pb, entry::Kind, revocation_client::RevocationClient};
use writ_verifier::Band;

/// How long any one message may take before the test fails (not a latency claim).
const PATIENCE: Duration = Duration::from_secs(10);

async fn client(dev: &Dev) -> RevocationClient<tonic::transport::Channel> {
    RevocationClient::new(writ::uds::channel(&dev.socket).await.unwrap())
}

fn with_header<T>(body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

async fn watch(dev: &Dev) -> tonic::Streaming<pb::RevocationSet> {
    client(dev)
        .await
        .watch(with_header(pb::WatchRequest {}))
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut tonic::Streaming<pb::RevocationSet>) -> pb::RevocationSet {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a revocation set in time")
        .expect("the stream stays open")
        .expect("a set, not an error")
}

/// Reads sets until one satisfies `done`; returns it and every set before it.
async fn until(
    stream: &mut tonic::Streaming<pb::RevocationSet>,
    done: impl Fn(&pb::RevocationSet) -> bool,
) -> (Vec<pb::RevocationSet>, pb::RevocationSet) {
    let mut before = Vec::new();
    loop {
        let set = next(stream).await;
        if done(&set) {
            return (before, set);
        }
        before.push(set);
    }
}

fn names(set: &pb::RevocationSet, kind: Kind, id: &str) -> bool {
    set.entries
        .iter()
        .any(|e| e.kind == i32::from(kind) && e.id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_set_comes_at_once_and_is_empty() {
    let dev = start(CaConfig::default()).await;
    let mut stream = watch(&dev).await;
    let first = next(&mut stream).await;
    assert!(first.entries.is_empty(), "{first:?}");
    assert_eq!(first.window_seconds, 3600, "the CA's max SVID TTL");
    assert_eq!(first.generation, dev.issuer.registry.snapshot().generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_an_incident_publishes_it_and_only_after_the_close() {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    dev.open("INC-2", "triage", 2);
    let mut stream = watch(&dev).await;
    let before_close = next(&mut stream).await;
    assert!(before_close.entries.is_empty(), "{before_close:?}");

    dev.close("INC-1");
    let closed = dev.issuer.registry.snapshot();
    let (between, after) = until(&mut stream, |s| names(s, Kind::Incident, "INC-1")).await;
    // Sets sent before the close was applied never name it; the one after does, whole.
    assert!(
        between
            .iter()
            .all(|s| s.generation < closed.generation && s.entries.is_empty()),
        "{between:?}"
    );
    assert_eq!(after.generation, closed.generation);
    assert_eq!(after.entries.len(), 1, "{after:?}");
    let entry = &after.entries[0];
    assert_eq!(entry.kind, i32::from(Kind::Incident));
    assert_eq!(entry.id, "INC-1");
    assert_eq!(Some(entry.revoked_at), closed.incidents["INC-1"].closed_at);
    // Both bands' identities of the incident are revoked: the entry names the base.
    assert_eq!(entry.trust_domain, "example.org");
    // The feed saw the close happen, so the epoch is the closing generation exactly.
    assert_eq!(entry.epoch, closed.generation);

    // A second watcher gets the same full set as its first message.
    let mut late = watch(&dev).await;
    assert_eq!(next(&mut late).await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_is_published_in_the_remediation_trust_domain() {
    let dev = start(CaConfig::default()).await;
    dev.issuer
        .registry
        .create_profile(
            Profile {
                name: "fixer".into(),
                selectors: BTreeSet::from([Selector::Uid(my_uid())]),
                bands: BTreeSet::from([Band::Investigative, Band::Remediation]),
                scopes: BTreeSet::new(),
                service: false,
                created_at: 0,
            },
            "test",
        )
        .unwrap();
    dev.open("INC-1", "fixer", 1);
    let now = dev.issuer.cas.now();
    let plan = "kubectl rollout restart deploy/checkout";
    let grant = dev
        .issuer
        .registry
        .request_grant(
            GrantRequest {
                incident: "INC-1".into(),
                agent: "fixer".into(),
                action: "restart".into(),
                plan: plan.into(),
                ..GrantRequest::default()
            },
            "test",
            now,
        )
        .unwrap();
    for approver in ["alice", "bob"] {
        dev.issuer
            .registry
            .approve_grant(&grant.id, approver, &plan_digest(plan), 3600, now)
            .unwrap();
    }
    assert_eq!(
        dev.issuer.registry.snapshot().grants[&grant.id].state,
        GrantState::Active
    );
    let mut stream = watch(&dev).await;
    assert!(
        next(&mut stream).await.entries.is_empty(),
        "active: not revoked"
    );

    dev.issuer
        .registry
        .end_grant(&grant.id, GrantState::Revoked, "alice", "done", now)
        .unwrap();
    let (_, after) = until(&mut stream, |s| names(s, Kind::Grant, &grant.id)).await;
    let entry = &after.entries[0];
    assert_eq!(after.entries.len(), 1, "{after:?}");
    assert_eq!(entry.trust_domain, "remediate.example.org");
    assert_eq!(entry.revoked_at, now);
    assert_eq!(entry.epoch, 0, "only incidents carry an epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_security_header_is_invalid_argument() {
    let dev = start(CaConfig::default()).await;
    let status = client(&dev)
        .await
        .watch(pb::WatchRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let mut wrong = tonic::Request::new(pb::WatchRequest {});
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "false".parse().unwrap());
    let status = client(&dev).await.watch(wrong).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_no_identity_still_gets_the_feed() {
    let dev = start(CaConfig::default()).await;
    // This process matches no profile: the Workload API has nothing for it...
    let err = dev.client().await.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    // ...but a verifier needs no identity to learn what is revoked.
    dev.profile("someone-else", &[Selector::Uid(my_uid() + 1)], &[]);
    dev.open("INC-7", "someone-else", 1);
    dev.close("INC-7");
    let mut stream = watch(&dev).await;
    let (_, set) = until(&mut stream, |s| names(s, Kind::Incident, "INC-7")).await;
    assert_eq!(set.entries.len(), 1, "{set:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_leave_the_set_once_their_window_has_passed() {
    use writ::agent::revocation::RevocationService;
    use writ::proto::revocation::revocation_server::Revocation;
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    // A feed with a two-second window, called directly: the agent's own uses the CA's
    // max SVID TTL (an hour), too long to wait out.
    let feed = RevocationService::new(&dev.agent, Duration::from_secs(2));
    let mut stream = feed
        .watch(with_header(pb::WatchRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("a revocation set in time")
            .expect("the stream stays open")
            .expect("a set, not an error")
    };
    assert!(next().await.entries.is_empty());
    dev.close("INC-1");
    let published = loop {
        let set = next().await;
        if names(&set, Kind::Incident, "INC-1") {
            break set;
        }
    };
    assert_eq!(published.window_seconds, 2);
    // Nothing changes the policy from here: only the feed's timer can empty the set.
    let aged_out = next().await;
    assert!(aged_out.entries.is_empty(), "{aged_out:?}");
    assert_eq!(aged_out.generation, published.generation);
    let closed_at = dev.issuer.registry.snapshot().incidents["INC-1"]
        .closed_at
        .unwrap();
    assert!(
        dev.issuer.cas.now() > closed_at + 2,
        "not before the window ended"
    );
}
