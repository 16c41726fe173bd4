//! Workload attestation records end to end, in process (docs/architecture.md,
//! "Audit"): the first time the agent serves an attested workload (its selector
//! set, not its pid) a SPIFFE ID, the server appends one `workload.attest` record; later
//! calls by the same workload append nothing. The server checks every report against
//! policy: a node cannot make up identities.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::dev::{Dev, my_uid, start};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use writ::agent::attest::{ConnectedPeer, PeerCred};
use writ::agent::reported::WorkloadDigest;
use writ::audit::{Kind, Record, sha256_hex};
use writ::ca::CaConfig;
use writ::policy::Selector;
use writ::proto::node::{self as node_pb, node_server::Node};
use writ::server::AttestationRefusal;
use writ::server::node::NodeService;
use writ::server::tls::NodePeer;

/// The longest any one wait may take before the test fails (the machine is shared).
const WAIT: Duration = Duration::from_secs(30);

fn id_of(incident: &str) -> String {
    format!("spiffe://investigate.example.org/agent/triage/incident/{incident}")
}

fn attestation_records(dev: &Dev) -> Vec<(u64, Record)> {
    dev.issuer
        .audit
        .read(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|(i, bytes)| (i, Record::decode(&bytes).unwrap()))
        .filter(|(_, r)| r.kind == Kind::Attestation && r.action == "workload.attest")
        .collect()
}

/// Waits on the log (never a sleep) until it holds at least `want` workload attestation
/// records, and returns them.
async fn wait_attestations(dev: &Dev, want: usize) -> Vec<(u64, Record)> {
    let mut durable = dev.issuer.audit.subscribe();
    let deadline = Instant::now() + WAIT;
    loop {
        durable.borrow_and_update();
        let found = attestation_records(dev);
        if found.len() >= want {
            return found;
        }
        tokio::time::timeout_at(deadline, durable.changed())
            .await
            .unwrap_or_else(|_| panic!("{want} attestation records never came: {found:?}"))
            .unwrap();
    }
}

/// Waits until no Workload API stream is open (a fetch's stream outlives its answer by
/// a moment) and no attestation report is in flight.
async fn quiet(dev: &Dev) {
    let mut streams = dev.agent.streams.subscribe();
    tokio::time::timeout(WAIT, streams.wait_for(|n| *n == 0))
        .await
        .expect("streams never ended")
        .unwrap();
    dev.reports_settled().await;
}

/// This test process's selectors, as the agent attests it.
fn my_selectors(dev: &Dev) -> BTreeSet<Selector> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").unwrap();
    let cred = PeerCred {
        pid: std::process::id() as i32,
        uid: me.uid(),
        gid: me.gid(),
    };
    // This process has not changed its groups since it started: /proc has them as a
    // socket would.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let groups = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    let peer = ConnectedPeer {
        cred,
        groups,
        process: dev.agent.attestor.at_accept(cred),
    };
    let with_digest = dev.agent.node.policy().borrow().selects_by_digest();
    dev.agent.attestor.attest(&peer, with_digest).unwrap()
}

fn wire(selectors: &BTreeSet<Selector>) -> Vec<String> {
    selectors.iter().map(Selector::to_string).collect()
}

/// `triage` is the test's own uid, assigned to INC-1 and INC-2.
async fn triage() -> Dev {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 0);
    dev.open("INC-2", "triage", 1);
    dev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_fetch_records_each_identity_once() {
    let dev = triage().await;
    let client = dev.client().await;
    let ctx = client.fetch_x509_context().await.unwrap();
    assert_eq!(ctx.svids().len(), 2);

    let found = wait_attestations(&dev, 2).await;
    assert_eq!(found.len(), 2, "one record per SPIFFE ID: {found:?}");
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe_sha256 = sha256_hex(&std::fs::read("/proc/self/exe").unwrap());
    let mut ids = BTreeSet::new();
    for (_, record) in &found {
        let id = record.spiffe_id.clone().unwrap();
        let incident = record.incident.clone().unwrap();
        assert_eq!(id, id_of(&incident), "{record:?}");
        ids.insert(id);
        assert_eq!(record.actor, "local-agent");
        assert_eq!(record.detail["node"], "local-agent");
        let selectors: Vec<&str> = record.detail["selectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for want in [
            format!("unix:uid:{}", my_uid()),
            format!("unix:path:{}", exe.display()),
        ] {
            assert!(selectors.contains(&want.as_str()), "{want}: {selectors:?}");
        }
        // No profile selects by digest, so the executable was not hashed (hashing is the
        // costly step; docs/threat-model.md).
        assert!(
            !selectors.contains(&format!("unix:sha256:{exe_sha256}").as_str()),
            "{selectors:?}"
        );
        assert!(
            !selectors.iter().any(|s| s.contains("pid")),
            "the pid is not part of a workload's identity: {selectors:?}"
        );
    }
    assert_eq!(ids, BTreeSet::from([id_of("INC-1"), id_of("INC-2")]));
    assert_eq!(dev.agent.reported.started(), 2);

    // The same process again, by every route: nothing new. Reports are decided before the
    // answer is sent, so a report not started by now never will be for these calls.
    dev.reports_settled().await;
    let size = dev.issuer.audit.size();
    client.fetch_x509_context().await.unwrap();
    let id = writ_verifier::parse_spiffe_id(&id_of("INC-1")).unwrap();
    client
        .fetch_jwt_token(["downstream"], Some(&id))
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().svids().len(), 2);
    assert_eq!(dev.agent.reported.started(), 2, "no report started again");
    dev.reports_settled().await;
    assert_eq!(attestation_records(&dev).len(), 2);
    assert!(
        dev.issuer.audit.size() > size,
        "the JWT-SVID issuance is audited"
    );

    // A new identity served down the open stream is recorded, once.
    dev.open("INC-3", "triage", 2);
    let update = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(update.svids().len(), 3);
    let found = wait_attestations(&dev, 3).await;
    assert_eq!(found.len(), 3, "{found:?}");
    let (_, last) = found.last().unwrap();
    assert_eq!(last.spiffe_id.as_deref(), Some(id_of("INC-3").as_str()));
    assert_eq!(last.incident.as_deref(), Some("INC-3"));
    assert_eq!(dev.agent.reported.started(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_report_is_retried_on_the_next_call() {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 0);
    let client = dev.client().await;
    client.fetch_x509_context().await.unwrap();
    wait_attestations(&dev, 1).await;
    quiet(&dev).await;

    // Forget the pair as a restarted agent would, then fail the report: the SVID is
    // cached, so the fetch itself needs no audit append and still succeeds.
    let id = writ_verifier::parse_spiffe_id(&id_of("INC-1")).unwrap();
    let key = WorkloadDigest::new(&my_selectors(&dev)).key(&id);
    dev.agent.reported.release(key);
    assert!(dev.agent.reported.is_empty());
    dev.issuer.audit.fail_commits(true);
    client.fetch_x509_context().await.unwrap();
    assert!(dev.agent.reported.started() >= 2);
    // The failed report (and any retry the same fetch's stream made meanwhile) forgets
    // the pair again.
    quiet(&dev).await;
    assert!(dev.agent.reported.is_empty());
    dev.issuer.audit.fail_commits(false);
    assert_eq!(attestation_records(&dev).len(), 1);

    client.fetch_x509_context().await.unwrap();
    wait_attestations(&dev, 2).await;
    quiet(&dev).await;
    let found = attestation_records(&dev);
    assert_eq!(
        found.len(),
        2,
        "recorded once more, and only once: {found:?}"
    );
    assert!(!dev.agent.reported.is_empty());
}

/// The server never trusts the agent: the identity must be one policy gives a workload
/// with exactly the reported selectors now, and the selectors must be well-formed and
/// bounded. Refusals append nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_identities_policy_does_not_give() {
    let dev = triage().await;
    dev.profile("other", &[Selector::Uid(my_uid().wrapping_add(1))], &[]);
    dev.open("INC-9", "other", 2);
    let mine = wire(&my_selectors(&dev));
    let inc1 = writ_verifier::parse_spiffe_id(&id_of("INC-1")).unwrap();
    let size = dev.issuer.audit.size();
    let issuer = &dev.issuer;

    let not_entitled = |id: &str, selectors: Vec<String>| {
        let id = writ_verifier::parse_spiffe_id(id).unwrap();
        async move {
            let r = issuer.record_attestation(&id, &selectors, "n").await;
            assert!(
                matches!(r, Err(AttestationRefusal::NotEntitled(_))),
                "{id}: {r:?}"
            );
        }
    };
    // An identity no profile gives anyone.
    not_entitled(
        "spiffe://investigate.example.org/agent/ghost/incident/INC-1",
        mine.clone(),
    )
    .await;
    // Another agent's identity, claimed for my selectors.
    not_entitled(
        "spiffe://investigate.example.org/agent/other/incident/INC-9",
        mine.clone(),
    )
    .await;
    // My identity, claimed for a workload that does not match my profile.
    not_entitled(
        &id_of("INC-1"),
        vec![format!("unix:uid:{}", my_uid().wrapping_add(1))],
    )
    .await;
    // An incident that does not exist, and a standing identity agents never get.
    not_entitled(&id_of("INC-404"), mine.clone()).await;
    not_entitled("spiffe://example.org/service/triage", mine.clone()).await;

    let invalid = |selectors: Vec<String>, why: &'static str| {
        let inc1 = inc1.clone();
        async move {
            let r = issuer.record_attestation(&inc1, &selectors, "n").await;
            match r {
                Err(AttestationRefusal::Invalid(m)) => assert!(m.contains(why), "{why}: {m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    };
    invalid(Vec::new(), "needs its selectors").await;
    invalid(
        (0..33).map(|g| format!("unix:gid:{g}")).collect(),
        "at most 32 selectors",
    )
    .await;
    let mut long = mine.clone();
    long.push(format!("unix:path:/{}", "x".repeat(600)));
    invalid(long, "at most 512 bytes").await;
    let mut foreign = mine.clone();
    foreign.push("k8s:cluster:east".into());
    invalid(foreign, "invalid selector").await;
    assert_eq!(dev.issuer.audit.size(), size, "refusals append nothing");

    // The record lists the selectors in their canonical (set) order.
    let index = issuer.record_attestation(&inc1, &mine, "n").await.unwrap();
    let (at, record) = attestation_records(&dev).pop().unwrap();
    assert_eq!(at, index);
    assert_eq!(record.actor, "n");
    assert_eq!(record.incident.as_deref(), Some("INC-1"));
    assert_eq!(record.detail["selectors"], serde_json::json!(mine));
    // A closed incident ends the identity, and with it the right to a record.
    dev.close("INC-1");
    let closed = dev.issuer.audit.size();
    not_entitled(&id_of("INC-1"), mine.clone()).await;
    assert_eq!(dev.issuer.audit.size(), closed);
}

/// The node API (what a remote agent calls): only a node with its SVID, and the report
/// checked again from the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_api_records_for_authenticated_nodes_only() {
    let dev = triage().await;
    let service = NodeService::new(Arc::clone(&dev.issuer), Vec::new());
    let node_id =
        writ_verifier::parse_spiffe_id("spiffe://example.org/node/join-0123456789abcdef01234567")
            .unwrap();
    let mine = wire(&my_selectors(&dev));
    let body = |id: &str| node_pb::NodeAttestationRequest {
        spiffe_id: id.into(),
        selectors: mine.clone(),
    };
    let as_node = |b: node_pb::NodeAttestationRequest| {
        let mut request = tonic::Request::new(b);
        request.extensions_mut().insert(NodePeer {
            spiffe_id: Some(node_id.clone()),
            serial: None,
        });
        request
    };
    let size = dev.issuer.audit.size();
    let refused = service
        .record_attestation(tonic::Request::new(body(&id_of("INC-1"))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = service
        .record_attestation(as_node(body("spiffe://investigate.example.org/a b")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let refused = service
        .record_attestation(as_node(body(&id_of("INC-404"))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let mut too_many = body(&id_of("INC-1"));
    too_many.selectors = (0..40).map(|g| format!("unix:gid:{g}")).collect();
    let refused = service
        .record_attestation(as_node(too_many))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(dev.issuer.audit.size(), size);

    let index = service
        .record_attestation(as_node(body(&id_of("INC-2"))))
        .await
        .unwrap()
        .into_inner()
        .index;
    let (at, record) = attestation_records(&dev).pop().unwrap();
    assert_eq!(at, index);
    assert_eq!(record.actor, node_id.to_string());
    assert_eq!(record.detail["node"], node_id.to_string());
    assert_eq!(record.spiffe_id.as_deref(), Some(id_of("INC-2").as_str()));
    assert_eq!(record.incident.as_deref(), Some("INC-2"));
}
