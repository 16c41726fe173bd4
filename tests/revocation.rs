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
    assert_eq!(
        Some(entry.revoked_at),
        closed.incidents[&writ::policy::key("default", "INC-1")].closed_at
    );
    // Both bands' identities of the incident are revoked: the entry names the base.
    assert_eq!(entry.trust_domain, "example.org");
    // The feed saw the close happen, so the epoch is the closing generation exactly.
    assert_eq!(entry.epoch, closed.generation);

    // A second watcher gets the same full set as its first message.
    let mut late = watch(&dev).await;
    assert_eq!(next(&mut late).await, after);
}

/// A `fixer` profile for this process's uid in both bands, incident INC-1 open for it, and
/// an active grant of it approved by two humans; returns the grant.
fn active_grant(dev: &Dev) -> writ::policy::Grant {
    dev.issuer
        .registry
        .create_profile(
            Profile {
                tenant: "default".into(),
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
            "default",
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
            .approve_grant(
                "default",
                &grant.id,
                approver,
                &plan_digest(plan),
                3600,
                now,
            )
            .unwrap();
    }
    let grant =
        dev.issuer.registry.snapshot().grants[&writ::policy::key("default", &grant.id)].clone();
    assert_eq!(grant.state, GrantState::Active);
    grant
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_is_published_in_the_remediation_trust_domain() {
    let dev = start(CaConfig::default()).await;
    let grant = active_grant(&dev);
    let now = dev.issuer.cas.now();
    let mut stream = watch(&dev).await;
    assert!(
        next(&mut stream).await.entries.is_empty(),
        "active: not revoked"
    );

    dev.issuer
        .registry
        .end_grant(
            "default",
            &grant.id,
            GrantState::Revoked,
            "alice",
            "done",
            now,
        )
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
    // The feed attests its caller: this process, as the agent's listener would see it.
    let mut request = with_header(pb::WatchRequest {});
    let cred = writ::agent::attest::PeerCred {
        pid: std::process::id() as i32,
        uid: my_uid(),
        gid: std::os::unix::fs::MetadataExt::gid(&std::fs::metadata("/proc/self").unwrap()),
    };
    request
        .extensions_mut()
        .insert(std::sync::Arc::new(writ::agent::attest::ConnectedPeer {
            cred,
            groups: Vec::new(),
            process: dev.agent.attestor.at_accept(cred),
        }));
    let mut stream = feed.watch(request).await.unwrap().into_inner();
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
    let closed_at = dev.issuer.registry.snapshot().incidents
        [&writ::policy::key("default", "INC-1")]
        .closed_at
        .unwrap();
    assert!(
        dev.issuer.cas.now() > closed_at + 2,
        "not before the window ended"
    );
}

/// `ValidateJWTSVID` on the agent's socket, through writ's generated client (the `spiffe`
/// crate's client hides the status): the claims' SPIFFE ID, or the refusal.
async fn validate_raw(dev: &Dev, token: &str) -> Result<String, tonic::Status> {
    use writ::proto::workload::ValidateJwtsvidRequest;
    common::dev::raw_client(dev)
        .await
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "logs-api".into(),
            svid: token.into(),
        }))
        .await
        .map(|r| r.into_inner().spiffe_id)
}

fn assert_refused(result: Result<String, tonic::Status>, reason: &str) {
    let status = result.expect_err("a revoked JWT-SVID was answered valid");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(reason), "{status:?}");
}

// Issue 10, finding 2: a JWT-SVID minted before its incident closed was answered valid by
// the agent for the rest of its lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_jwt_svid_refuses_a_token_of_a_closed_incident() {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &["logs:read"]);
    dev.open("INC-1", "triage", 1);
    dev.open("INC-2", "triage", 2);
    let client = dev.client().await;
    let inc = |id: &str| {
        writ_verifier::parse_spiffe_id(&format!(
            "spiffe://investigate.example.org/agent/triage/incident/{id}"
        ))
        .unwrap()
    };
    let token = client
        .fetch_jwt_token(["logs-api"], Some(&inc("INC-1")))
        .await
        .unwrap();
    let other = client
        .fetch_jwt_token(["logs-api"], Some(&inc("INC-2")))
        .await
        .unwrap();
    let validated = client.validate_jwt_token("logs-api", &token).await.unwrap();
    assert_eq!(validated.spiffe_id(), &inc("INC-1"));

    // Revoking a certificate of the same identity revokes that certificate, not the
    // identity: a JWT-SVID carries no serial (nor a jti), so it stays valid, as
    // writ-verifier decides.
    let x509 = client.fetch_x509_svid().await.unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(x509.leaf().as_bytes()).unwrap();
    let serial: writ::policy::Serial = cert
        .raw_serial_as_string()
        .replace(':', "")
        .parse()
        .unwrap();
    let now = dev.issuer.cas.now();
    dev.issuer
        .registry
        .revoke_serial("default", &serial, "test", now)
        .unwrap();
    assert_eq!(
        validate_raw(&dev, &token).await.unwrap(),
        inc("INC-1").to_string()
    );

    dev.close("INC-1");
    assert_refused(
        validate_raw(&dev, &token).await,
        "incident INC-1 is revoked",
    );
    assert!(client.validate_jwt_token("logs-api", &token).await.is_err());
    // Only that incident's tokens: INC-2's still validates.
    assert_eq!(
        validate_raw(&dev, &other).await.unwrap(),
        inc("INC-2").to_string()
    );
}

// Issue 10, finding 2: the same for a remediation token whose grant was revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_jwt_svid_refuses_a_token_of_a_revoked_grant() {
    let dev = start(CaConfig::default()).await;
    let grant = active_grant(&dev);
    let client = dev.client().await;
    let remediation = writ_verifier::parse_spiffe_id(&format!(
        "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/{}",
        grant.id
    ))
    .unwrap();
    let investigative = writ_verifier::parse_spiffe_id(
        "spiffe://investigate.example.org/agent/fixer/incident/INC-1",
    )
    .unwrap();
    let acting = client
        .fetch_jwt_token(["logs-api"], Some(&remediation))
        .await
        .unwrap();
    let looking = client
        .fetch_jwt_token(["logs-api"], Some(&investigative))
        .await
        .unwrap();
    assert_eq!(
        validate_raw(&dev, &acting).await.unwrap(),
        remediation.to_string()
    );

    let now = dev.issuer.cas.now();
    dev.issuer
        .registry
        .end_grant(
            "default",
            &grant.id,
            GrantState::Revoked,
            "alice",
            "done",
            now,
        )
        .unwrap();
    assert_refused(
        validate_raw(&dev, &acting).await,
        &format!("grant {} is revoked", grant.id),
    );
    assert!(
        client
            .validate_jwt_token("logs-api", &acting)
            .await
            .is_err()
    );
    // The incident is still open: the investigative token is untouched.
    assert_eq!(
        validate_raw(&dev, &looking).await.unwrap(),
        investigative.to_string()
    );
}
