//! The remediation story end to end, in process, with real clients: an agent's workload
//! investigates, asks for authority with a plan, humans approve the plan's digest, the
//! workload receives a remediation identity carrying the plan and approvers, and closing
//! the incident takes everything away at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::dev::{Dev, my_uid, start};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_stream::StreamExt;
use writ::ca::CaConfig;
use writ::policy::grant::plan_digest;
use writ::policy::{GrantError, Profile, Selector, Severity};
use writ::proto::agent as pb;
use writ::server::registry::RegistryError;
use writ_verifier::x509::Usage;
use writ_verifier::{Band, verify_x509_svid};

const PLAN: &str = "kubectl -n shop rollout restart deploy/checkout\n";

fn fixer(dev: &Dev, bands: &[Band]) {
    dev.issuer
        .registry
        .create_profile(
            Profile {
                tenant: "default".into(),
                name: "fixer".into(),
                selectors: BTreeSet::from([Selector::Uid(my_uid())]),
                bands: bands.iter().copied().collect(),
                scopes: BTreeSet::from(["logs:read".into(), "deploy:restart".into()]),
                service: false,
                created_at: 0,
            },
            "test",
        )
        .unwrap();
}

fn incident(dev: &Dev, id: &str, severity: Severity) {
    dev.open_remediable(id, "fixer", severity);
}

async fn agent_client(
    dev: &Dev,
) -> pb::agent_api_client::AgentApiClient<tonic::transport::Channel> {
    dev.agent_client().await
}

fn grant_request(incident: &str, scopes: &[&str]) -> tonic::Request<pb::RequestGrantRequest> {
    let mut request = tonic::Request::new(pb::RequestGrantRequest {
        incident: incident.into(),
        action: "restart checkout".into(),
        targets: vec!["deploy/checkout".into()],
        evidence: vec!["https://logs.example/q/500s".into()],
        plan: PLAN.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        window_seconds: None,
    });
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

fn approve(dev: &Dev, id: &str, who: &str) -> Result<writ::policy::Grant, RegistryError> {
    let now = dev.issuer.cas.now();
    dev.issuer
        .registry
        .approve_grant("default", id, who, &plan_digest(PLAN), 3600, now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_quorum_identity_and_close() {
    let dev = start(CaConfig::default()).await;
    fixer(&dev, &[Band::Investigative, Band::Remediation]);
    incident(&dev, "INC-1", Severity::Sev2);
    let client = dev.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids().len(), 1, "investigative only");
    let investigative = first.svids()[0].spiffe_id().to_string();

    // The workload asks, under its attested investigative identity.
    let filed = agent_client(&dev)
        .await
        .request_grant(grant_request("INC-1", &["deploy:restart"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filed.plan_digest, plan_digest(PLAN));
    assert_eq!(filed.state, "pending");
    assert_eq!(filed.quorum, 2);
    assert_eq!(filed.requested_by, investigative);

    // The requester can never approve; one approval is not a quorum for sev2.
    assert!(matches!(
        approve(&dev, &filed.grant_id, &investigative),
        Err(RegistryError::Grant(GrantError::OwnRequest(_)))
    ));
    let one = approve(&dev, &filed.grant_id, "alice").unwrap();
    assert_eq!(one.approvals.len(), 1);
    let ctx = client.fetch_x509_context().await.unwrap();
    assert_eq!(ctx.svids().len(), 1, "nothing issued before quorum");

    // Quorum: the remediation identity arrives on the open stream.
    let active = approve(&dev, &filed.grant_id, "bob").unwrap();
    let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(update.svids().len(), 2);
    let rem = update
        .svids()
        .iter()
        .find(|s| s.spiffe_id().trust_domain().to_string() == "remediate.example.org")
        .unwrap();
    assert_eq!(
        rem.spiffe_id().to_string(),
        format!(
            "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/{}",
            filed.grant_id
        )
    );
    let bundle = dev.issuer.cas.bundle_set().unwrap();
    let cas = writ::agent::cache::split_der(&bundle.by_band(Band::Remediation).unwrap().x509_der);
    let leaf = CertificateDer::from(rem.leaf().as_bytes().to_vec());
    let verified = verify_x509_svid(
        std::slice::from_ref(&leaf),
        &cas,
        rem.spiffe_id().trust_domain(),
        Usage::Client,
        UnixTime::now(),
    )
    .unwrap();
    let claims = verified.claims.unwrap();
    assert_eq!(claims.band, Some(Band::Remediation));
    assert_eq!(claims.grant.as_deref(), Some(filed.grant_id.as_str()));
    assert_eq!(
        claims.plan_digest.as_deref(),
        Some(plan_digest(PLAN).as_str())
    );
    assert_eq!(claims.approvers, ["alice", "bob"]);
    assert_eq!(claims.scopes, ["deploy:restart"]);
    assert!(
        verified.not_after <= active.expires_at.unwrap(),
        "the SVID never outlives the grant's window"
    );
    // The investigative identity never carries deploy scopes.
    let inv = update
        .svids()
        .iter()
        .find(|s| s.spiffe_id().to_string() == investigative)
        .unwrap();
    let inv_cas =
        writ::agent::cache::split_der(&bundle.by_band(Band::Investigative).unwrap().x509_der);
    let inv_claims = verify_x509_svid(
        &[CertificateDer::from(inv.leaf().as_bytes().to_vec())],
        &inv_cas,
        inv.spiffe_id().trust_domain(),
        Usage::Client,
        UnixTime::now(),
    )
    .unwrap()
    .claims
    .unwrap();
    assert_eq!(inv_claims.scopes, ["logs:read"]);

    // Closing the incident: both identities gone from the stream, renewal refused, the
    // grant revoked with it.
    let now = dev.issuer.cas.now();
    dev.issuer
        .registry
        .close_incident("default", "INC-1", "carol", now)
        .unwrap();
    let last = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap();
    assert!(
        matches!(last, Some(Err(spiffe::WorkloadApiError::NoIdentityIssued))),
        "{last:?}"
    );
    let rem_id = writ_verifier::parse_spiffe_id(&rem.spiffe_id().to_string()).unwrap();
    let (_, csr) = common::csr();
    assert!(
        dev.issuer
            .sign_workload_x509(&rem_id, &csr, None, "test")
            .is_err(),
        "renewal refused after close"
    );
    let grant = dev.issuer.registry.snapshot().grants
        [&writ::policy::key("default", &filed.grant_id)]
        .clone();
    assert_eq!(grant.state, writ::policy::GrantState::Revoked);
    assert_eq!(grant.ended.unwrap().by, "carol");
    // And what the revocation feed publishes to verifiers: the incident and the grant.
    let feed = writ::policy::revocation::revocations(
        &dev.issuer.registry.snapshot(),
        dev.issuer.cas.now(),
        3600,
    );
    let ids: Vec<&str> = feed.iter().map(|r| r.id.as_str()).collect();
    assert!(
        ids.contains(&"INC-1") && ids.contains(&filed.grant_id.as_str()),
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cannot_ask_beyond_what_they_investigate() {
    let dev = start(CaConfig::default()).await;
    fixer(&dev, &[Band::Investigative, Band::Remediation]);
    incident(&dev, "INC-1", Severity::Sev3);
    let mut agent = agent_client(&dev).await;

    // Not an incident this workload investigates.
    let status = agent
        .request_grant(grant_request("INC-9", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // A scope outside what the incident names.
    let status = agent
        .request_grant(grant_request("INC-1", &["iam:write"]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
        ),
        "{status:?}"
    );
    // No security header.
    let mut bare = grant_request("INC-1", &[]);
    bare.metadata_mut().remove("workload.spiffe.io");
    assert_eq!(
        agent.request_grant(bare).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert!(
        dev.issuer.registry.snapshot().grants.is_empty(),
        "nothing was filed"
    );

    // Another agent's grant is not this workload's to fetch.
    let filed = agent
        .request_grant(grant_request("INC-1", &[]))
        .await
        .unwrap()
        .into_inner();
    approve(&dev, &filed.grant_id, "alice").unwrap();
    let client = dev.client().await;
    let other = writ_verifier::parse_spiffe_id(&format!(
        "spiffe://remediate.example.org/agent/other/incident/INC-1/grant/{}",
        filed.grant_id
    ))
    .unwrap();
    assert!(
        client
            .fetch_jwt_token(["deploy-api"], Some(&other))
            .await
            .is_err()
    );
    // Its own remediation identity, yes: as a JWT too, bounded by the window.
    let mine = writ_verifier::parse_spiffe_id(&format!(
        "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/{}",
        filed.grant_id
    ))
    .unwrap();
    let token = client
        .fetch_jwt_token(["deploy-api"], Some(&mine))
        .await
        .unwrap();
    assert!(!token.is_empty());

    // Closed incident: no new requests.
    let now = dev.issuer.cas.now();
    dev.issuer
        .registry
        .close_incident("default", "INC-1", "carol", now)
        .unwrap();
    let status = agent
        .request_grant(grant_request("INC-1", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_only_agents_never_hold_remediation_identities() {
    let dev = start(CaConfig::default()).await;
    fixer(&dev, &[Band::Investigative]);
    incident(&dev, "INC-1", Severity::Sev4);
    let status = agent_client(&dev)
        .await
        .request_grant(grant_request("INC-1", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("remediation"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_window_ends_on_its_own() {
    let dev = start(CaConfig::default()).await;
    fixer(&dev, &[Band::Investigative, Band::Remediation]);
    incident(&dev, "INC-1", Severity::Sev3);
    let mut request = grant_request("INC-1", &[]);
    request.get_mut().window_seconds = Some(2);
    let filed = agent_client(&dev)
        .await
        .request_grant(request)
        .await
        .unwrap()
        .into_inner();
    approve(&dev, &filed.grant_id, "alice").unwrap();
    let client = dev.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids().len(), 2);
    // The expiry timer ends the grant; the stream drops the remediation identity.
    let update = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ctx = stream.next().await.unwrap().unwrap();
            if ctx.svids().len() == 1 {
                return ctx;
            }
        }
    })
    .await
    .expect("the remediation identity is redacted when the window ends");
    assert_eq!(
        update.svids()[0].spiffe_id().trust_domain().to_string(),
        "investigate.example.org"
    );
    // And the expiry timer records it.
    let mut changes = dev.issuer.registry.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        while changes.borrow_and_update().grants[&writ::policy::key("default", &filed.grant_id)]
            .state
            != writ::policy::GrantState::Expired
        {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the grant is marked expired");
}
