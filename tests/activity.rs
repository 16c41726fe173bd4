//! Agent activity records end to end, in process (docs/architecture.md, "Audit"): a
//! workload reports what it did over the agent socket, under its kernel-attested identity,
//! and the server appends an audit record linked to the incident and the serial of the SVID
//! the Workload API handed it. Refused reports append nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::dev::{Dev, my_uid, start};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_stream::StreamExt;
use writ::audit::activity::{Activity, RawActivity};
use writ::audit::{Kind, Record, sha256_hex};
use writ::ca::CaConfig;
use writ::policy::grant::plan_digest;
use writ::policy::{Profile, Selector, Severity};
use writ::proto::agent as pb;
use writ::proto::node::{self as node_pb, node_server::Node};
use writ::server::ActivityRefusal;
use writ::server::node::NodeService;
use writ::server::tls::NodePeer;
use writ_verifier::Band;

const PLAN: &str = "kubectl -n shop rollout restart deploy/checkout\n";

fn profile(dev: &Dev, name: &str, uid: u32, bands: &[Band]) {
    dev.issuer
        .registry
        .create_profile(
            Profile {
                tenant: "default".into(),
                name: name.into(),
                selectors: BTreeSet::from([Selector::Uid(uid)]),
                bands: bands.iter().copied().collect(),
                scopes: BTreeSet::from(["logs:read".into(), "deploy:restart".into()]),
                service: false,
                created_at: 0,
            },
            "test",
        )
        .unwrap();
}

fn incident(dev: &Dev, id: &str, agent: &str) {
    dev.open_remediable(id, agent, Severity::Sev2);
}

async fn agent_client(
    dev: &Dev,
) -> pb::agent_api_client::AgentApiClient<tonic::transport::Channel> {
    dev.agent_client().await
}

fn report(
    incident: &str,
    kind: pb::ActivityKind,
    content: &str,
    tool: &str,
    uri: &str,
) -> pb::RecordActivityRequest {
    pb::RecordActivityRequest {
        incident: incident.into(),
        kind: kind.into(),
        digest: sha256_hex(content.as_bytes()),
        tool: tool.into(),
        uri: uri.into(),
        summary: format!("{} for {incident}", kind.as_str_name()),
    }
}

fn with_header<T>(body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

async fn record(
    dev: &Dev,
    body: pb::RecordActivityRequest,
) -> Result<pb::RecordActivityResponse, tonic::Status> {
    agent_client(dev)
        .await
        .record_activity(with_header(body))
        .await
        .map(tonic::Response::into_inner)
}

/// Every record in the log, decoded, with its index.
fn records(dev: &Dev) -> Vec<(u64, Record)> {
    dev.issuer
        .audit
        .read(0, 1000)
        .unwrap()
        .into_iter()
        .map(|(i, bytes)| (i, Record::decode(&bytes).unwrap()))
        .collect()
}

fn activity_records(dev: &Dev) -> Vec<(u64, Record)> {
    records(dev)
        .into_iter()
        .filter(|(_, r)| r.kind == Kind::Activity)
        .collect()
}

/// The serial of a leaf as writ writes serials: lowercase hex of the raw bytes.
fn serial_of(leaf_der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts dev with the test's own uid as agent `fixer` on `INC-1`, and returns the
/// investigative SPIFFE ID and serial the Workload API hands it.
async fn investigating(bands: &[Band]) -> (Dev, String, String) {
    let dev = start(CaConfig::default()).await;
    profile(&dev, "fixer", my_uid(), bands);
    incident(&dev, "INC-1", "fixer");
    let ctx = dev.client().await.fetch_x509_context().await.unwrap();
    assert_eq!(ctx.svids().len(), 1);
    let svid = &ctx.svids()[0];
    let id = svid.spiffe_id().to_string();
    let serial = serial_of(svid.leaf().as_bytes());
    // The fetch's workload attestation record lands off the answer's path: let it, so
    // that counting records from here on sees only what each test does.
    dev.reports_settled().await;
    (dev, id, serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_is_recorded_under_the_svid() {
    let (dev, id, serial) = investigating(&[Band::Investigative]).await;
    assert_eq!(
        id,
        "spiffe://investigate.example.org/agent/fixer/incident/INC-1"
    );
    let cases = [
        (pb::ActivityKind::Prompt, "what changed?", "", "", "prompt"),
        (
            pb::ActivityKind::ToolCall,
            "get pods -n shop",
            "kubectl",
            "",
            "tool_call",
        ),
        (
            pb::ActivityKind::Evidence,
            "500 lines of logs",
            "",
            "https://logs.example/q?service=checkout&since=1h",
            "evidence",
        ),
        (pb::ActivityKind::ProposedFix, PLAN, "", "", "proposed_fix"),
    ];
    let mut indexes = Vec::new();
    for (kind, content, tool, uri, _) in cases {
        let answer = record(&dev, report("INC-1", kind, content, tool, uri))
            .await
            .unwrap();
        assert_eq!(answer.spiffe_id, id);
        assert_eq!(answer.serial, serial);
        indexes.push(answer.index);
    }
    let found = activity_records(&dev);
    assert_eq!(found.len(), 4, "{found:?}");
    for ((index, record), ((_, content, tool, uri, name), answered)) in
        found.iter().zip(cases.iter().zip(&indexes))
    {
        assert_eq!(index, answered, "the answer names the record");
        assert_eq!(record.action, format!("activity.{name}"));
        assert_eq!(record.actor, id);
        assert_eq!(record.spiffe_id.as_deref(), Some(id.as_str()));
        assert_eq!(record.incident.as_deref(), Some("INC-1"));
        assert_eq!(record.serial.as_deref(), Some(serial.as_str()));
        assert_eq!(record.detail["digest"], sha256_hex(content.as_bytes()));
        assert_eq!(record.detail["node"], "local-agent");
        assert!(
            record.detail["summary"]
                .as_str()
                .unwrap()
                .ends_with("for INC-1")
        );
        match *name {
            "tool_call" => assert_eq!(record.detail["tool"], *tool),
            "evidence" => assert_eq!(record.detail["uri"], *uri),
            _ => {
                assert!(record.detail.get("tool").is_none());
                assert!(record.detail.get("uri").is_none());
            }
        }
        // The content never reaches the log.
        let bytes = record.encode().unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(content),
            "{content}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remediation_identity_is_preferred_once_held() {
    let (dev, investigative, _) = investigating(&[Band::Investigative, Band::Remediation]).await;
    let client = dev.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().svids().len(), 1);
    let filed = agent_client(&dev)
        .await
        .request_grant(with_header(pb::RequestGrantRequest {
            incident: "INC-1".into(),
            action: "restart checkout".into(),
            targets: vec!["deploy/checkout".into()],
            evidence: vec![],
            plan: PLAN.into(),
            scopes: vec!["deploy:restart".into()],
            window_seconds: None,
        }))
        .await
        .unwrap()
        .into_inner();
    for who in ["alice", "bob"] {
        let now = dev.issuer.cas.now();
        dev.issuer
            .registry
            .approve_grant(
                "default",
                &filed.grant_id,
                who,
                &plan_digest(PLAN),
                3600,
                now,
            )
            .unwrap();
    }
    let update = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let rem = update
        .svids()
        .iter()
        .find(|s| s.spiffe_id().to_string() != investigative)
        .unwrap();
    let rem_id = rem.spiffe_id().to_string();
    assert!(
        rem_id.starts_with("spiffe://remediate.example.org/"),
        "{rem_id}"
    );

    let answer = record(
        &dev,
        report(
            "INC-1",
            pb::ActivityKind::ToolCall,
            "rollout restart",
            "kubectl",
            "",
        ),
    )
    .await
    .unwrap();
    assert_eq!(answer.spiffe_id, rem_id);
    let (_, last) = activity_records(&dev).pop().unwrap();
    assert_eq!(last.actor, rem_id);
    assert_eq!(last.spiffe_id.as_deref(), Some(rem_id.as_str()));
    assert_eq!(
        last.serial.as_deref(),
        Some(serial_of(rem.leaf().as_bytes()).as_str())
    );
    assert_eq!(last.incident.as_deref(), Some("INC-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_an_identity_for_the_incident_are_refused() {
    let (dev, _, _) = investigating(&[Band::Investigative]).await;
    // INC-2 is open, but assigned to another agent; INC-9 does not exist.
    profile(
        &dev,
        "other",
        my_uid().wrapping_add(1),
        &[Band::Investigative],
    );
    incident(&dev, "INC-2", "other");
    let size = dev.issuer.audit.size();
    for incident in ["INC-2", "INC-9"] {
        let refused = record(
            &dev,
            report(incident, pb::ActivityKind::Prompt, "p", "", ""),
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("holds no identity"),
            "{refused:?}"
        );
    }
    // Without the Workload API's security header, nothing is attested at all.
    let refused = agent_client(&dev)
        .await
        .record_activity(tonic::Request::new(report(
            "INC-1",
            pb::ActivityKind::Prompt,
            "p",
            "",
            "",
        )))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(dev.issuer.audit.size(), size, "refusals append nothing");
    // A closed incident ends the identity, and with it the right to report.
    dev.close("INC-1");
    let closed_at = dev.issuer.audit.size();
    let refused = record(&dev, report("INC-1", pb::ActivityKind::Prompt, "p", "", ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(dev.issuer.audit.size(), closed_at);
    assert!(activity_records(&dev).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reports_are_refused_and_nothing_is_appended() {
    let (dev, _, _) = investigating(&[Band::Investigative]).await;
    let size = dev.issuer.audit.size();
    let evidence = |uri: &str| report("INC-1", pb::ActivityKind::Evidence, "body", "", uri);
    let mut bad_digest = report("INC-1", pb::ActivityKind::Prompt, "p", "", "");
    bad_digest.digest = "not-a-digest".into();
    let mut upper_digest = report("INC-1", pb::ActivityKind::Prompt, "p", "", "");
    upper_digest.digest = upper_digest.digest.to_uppercase();
    let mut unspecified = report("INC-1", pb::ActivityKind::Prompt, "p", "", "");
    unspecified.kind = pb::ActivityKind::Unspecified.into();
    let mut unknown = report("INC-1", pb::ActivityKind::Prompt, "p", "", "");
    unknown.kind = 99;
    let mut two_lines = report("INC-1", pb::ActivityKind::Prompt, "p", "", "");
    two_lines.summary = "ok\nforged: second line".into();
    let cases = [
        (bad_digest, "64 lowercase hex"),
        (upper_digest, "64 lowercase hex"),
        (unspecified, "unknown activity kind"),
        (unknown, "unknown activity kind"),
        (two_lines, "control characters"),
        (
            report("INC-1", pb::ActivityKind::ToolCall, "x", "", ""),
            "tool is required",
        ),
        (evidence(""), "uri is required"),
        (
            evidence("https://logs.example/q?service=checkout&access_token=abc"),
            "must not carry credentials",
        ),
        (
            evidence("https://s3.example/b/o?X-Amz-Signature=abc"),
            "must not carry credentials",
        ),
        (
            evidence("https://user:pass@logs.example/q"),
            "must not carry credentials",
        ),
        (evidence("logs.example/q"), "scheme"),
    ];
    for (body, why) in cases {
        let refused = record(&dev, body.clone()).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{body:?}: {refused:?}"
        );
        assert!(refused.message().contains(why), "{why}: {refused:?}");
    }
    assert_eq!(dev.issuer.audit.size(), size, "refusals append nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_fail_closed_when_the_log_cannot_append() {
    let (dev, _, _) = investigating(&[Band::Investigative]).await;
    dev.issuer.audit.fail_commits(true);
    let refused = record(&dev, report("INC-1", pb::ActivityKind::Prompt, "p", "", ""))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    dev.issuer.audit.fail_commits(false);
    assert!(activity_records(&dev).is_empty());
    record(&dev, report("INC-1", pb::ActivityKind::Prompt, "p", "", ""))
        .await
        .unwrap();
    assert_eq!(activity_records(&dev).len(), 1);
}

fn parsed(incident: &str) -> Activity {
    Activity::parse(&RawActivity {
        incident: incident.into(),
        kind: "prompt".into(),
        digest: sha256_hex(b"p"),
        ..RawActivity::default()
    })
    .unwrap()
}

/// The server never trusts the agent: identity, incident and serial are checked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_checks_identity_incident_and_serial_again() {
    let (dev, id, serial) = investigating(&[Band::Investigative]).await;
    profile(
        &dev,
        "other",
        my_uid().wrapping_add(1),
        &[Band::Investigative],
    );
    incident(&dev, "INC-2", "other");
    let other_id = writ_verifier::parse_spiffe_id(
        "spiffe://investigate.example.org/agent/other/incident/INC-2",
    )
    .unwrap();
    let mine = writ_verifier::parse_spiffe_id(&id).unwrap();
    let size = dev.issuer.audit.size();
    let issuer = &dev.issuer;
    // My identity, another incident.
    let r = issuer
        .record_activity(&parsed("INC-2"), &mine, "", "n")
        .await;
    assert!(matches!(r, Err(ActivityRefusal::NotEntitled(_))), "{r:?}");
    // An identity nobody is entitled to.
    let nobody = writ_verifier::parse_spiffe_id(
        "spiffe://investigate.example.org/agent/ghost/incident/INC-1",
    )
    .unwrap();
    let r = issuer
        .record_activity(&parsed("INC-1"), &nobody, "", "n")
        .await;
    assert!(matches!(r, Err(ActivityRefusal::NotEntitled(_))), "{r:?}");
    // Serials: malformed, unknown, or another identity's.
    for bad in [serial.to_uppercase(), "zz".into(), "00ff".into()] {
        let r = issuer
            .record_activity(&parsed("INC-1"), &mine, &bad, "n")
            .await;
        assert!(
            matches!(r, Err(ActivityRefusal::Invalid(_))),
            "{bad}: {r:?}"
        );
    }
    let r = issuer
        .record_activity(&parsed("INC-2"), &other_id, &serial, "n")
        .await;
    assert!(matches!(r, Err(ActivityRefusal::Invalid(_))), "{r:?}");
    assert_eq!(dev.issuer.audit.size(), size);
    // Without a serial (none held yet), the record has none.
    let index = issuer
        .record_activity(&parsed("INC-1"), &mine, "", "n")
        .await
        .unwrap();
    let (_, record) = activity_records(&dev).pop().unwrap();
    assert_eq!(record.serial, None);
    assert_eq!(index + 1, dev.issuer.audit.size());
}

/// The node API (what a remote agent calls): only a node with its SVID, and the report
/// re-checked from the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_api_records_for_authenticated_nodes_only() {
    let (dev, id, serial) = investigating(&[Band::Investigative]).await;
    let service = NodeService::new(std::sync::Arc::clone(&dev.issuer), Vec::new());
    let node_id =
        writ_verifier::parse_spiffe_id("spiffe://example.org/node/join-0123456789abcdef01234567")
            .unwrap();
    let body = |uri: &str| node_pb::NodeActivityRequest {
        spiffe_id: id.clone(),
        serial: serial.clone(),
        incident: "INC-1".into(),
        kind: "evidence".into(),
        digest: sha256_hex(b"logs"),
        tool: String::new(),
        uri: uri.into(),
        summary: "checkout logs".into(),
    };
    let as_node = |b: node_pb::NodeActivityRequest| {
        let mut request = tonic::Request::new(b);
        request.extensions_mut().insert(NodePeer {
            spiffe_id: Some(node_id.clone()),
            serial: None,
        });
        request
    };
    let size = dev.issuer.audit.size();
    let refused = service
        .record_activity(tonic::Request::new(body("https://logs.example/q")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = service
        .record_activity(as_node(body("https://logs.example/q?sig=abc")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let mut not_mine = body("https://logs.example/q");
    not_mine.incident = "INC-9".into();
    let refused = service
        .record_activity(as_node(not_mine))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(dev.issuer.audit.size(), size);

    let index = service
        .record_activity(as_node(body("https://logs.example/q")))
        .await
        .unwrap()
        .into_inner()
        .index;
    let (at, record) = activity_records(&dev).pop().unwrap();
    assert_eq!(at, index);
    assert_eq!(record.action, "activity.evidence");
    assert_eq!(record.serial.as_deref(), Some(serial.as_str()));
    assert_eq!(record.detail["node"], node_id.to_string());
}
