//! grpc.health.v1, gRPC reflection and stock grpcio clients on writ's sockets (issue 17,
//! items 2-4; docs/architecture.md, "Health and reflection"): `writ healthcheck`'s exit
//! codes against a live `writ dev` and a dead socket; NOT_SERVING once the store file is
//! gone or audit commits fail, SERVING again once they work; Python's grpcio-reflection
//! and grpcio-health-checking, with a channel that sets no authority, on the admin socket
//! and the Workload API socket.
//!
//! The Python test needs WRIT_PYTHON (scripts/test sets it); without it it says so and
//! passes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::bin::DevProcess;
use common::dev;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a change may take to show before the test fails (never asserted as a figure):
/// a failure noticed only by the periodic check shows within `writ::health::RECHECK`.
const PATIENCE: Duration = Duration::from_secs(60);

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/reflection_health_check.py"
);

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn healthcheck_exits_zero_while_serving_and_one_once_the_store_is_gone() {
    let dir = common::temp_dir();
    let data = dir.path().join("data");
    let dev = DevProcess::start(&data, &[]);
    let workload = data.join("workload.sock");
    let workload = workload.to_str().unwrap();

    // The admin API: SERVING, and the server's detail beside it.
    let out = dev.run(&["healthcheck"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some("SERVING")
    );
    let v = dev.json(&["healthcheck"]);
    assert_eq!(v["serving"], "SERVING", "{v}");
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["trust_domain"], "example.org", "{v}");
    // Each named service, and the agent's socket (with or without unix://).
    let v = dev.json(&["healthcheck", "--service", "writ.admin.v1.Admin"]);
    assert_eq!(v["serving"], "SERVING", "{v}");
    let v = dev.json(&["healthcheck", "--socket", workload]);
    assert_eq!(v["serving"], "SERVING", "{v}");
    let v = dev.json(&[
        "healthcheck",
        "--socket",
        &format!("unix://{workload}"),
        "--service",
        "SpiffeWorkloadAPI",
    ]);
    assert_eq!(v["serving"], "SERVING", "{v}");
    // A service the socket does not serve is an error, not SERVING.
    dev.refusal(
        common::bin::As::Me,
        &["healthcheck", "--service", "writ.node.v2.Node"],
        Some(1),
        "no service named",
    );
    // Nothing listening: a clear error and exit 1 (what Docker's HEALTHCHECK wants).
    dev.refusal(
        common::bin::As::Me,
        &[
            "healthcheck",
            "--admin-socket",
            dir.path().join("nobody.sock").to_str().unwrap(),
        ],
        Some(1),
        "no admin socket at",
    );
    dev.refusal(
        common::bin::As::Me,
        &[
            "healthcheck",
            "--socket",
            dir.path().join("nobody.sock").to_str().unwrap(),
        ],
        Some(1),
        "no Workload API socket at",
    );

    // The store's file deleted under the running server: it would take writes no start
    // would ever see. Both sockets say NOT_SERVING (the in-process agent follows its
    // issuer), and healthcheck exits 1.
    std::fs::remove_file(data.join("writ.redb")).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let out = loop {
        let out = dev.run(&["healthcheck", "--json"]);
        if !out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "still serving without its store");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["serving"], "NOT_SERVING", "{v}");
    assert_eq!(v["status"], "not_signing", "{v}");
    assert!(
        v["not_signing"].as_str().unwrap().contains("writ.redb"),
        "the reason names the store's file: {v}"
    );
    let deadline = Instant::now() + PATIENCE;
    while dev
        .run(&["healthcheck", "--socket", workload])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the agent still serves");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = dev.run(&["healthcheck", "--socket", workload]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "NOT_SERVING");
    assert!(
        dev.log().contains("not serving"),
        "the server logs the change: {}",
        dev.log()
    );
}

/// Statuses of `service` as a grpc.health.v1 Watch on `socket` reports them.
async fn watch(
    socket: &std::path::Path,
    service: &str,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let channel = writ::uds::channel(socket).await.unwrap();
    HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_for(
    statuses: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    want: ServingStatus,
) {
    let wait = async {
        while let Some(answer) = statuses.next().await {
            if answer.unwrap().status == want as i32 {
                return;
            }
        }
        panic!("the watch ended before {want:?}");
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("never {want:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_commit_makes_the_admin_and_node_services_not_serving_until_one_succeeds() {
    let dev = dev::start(writ::ca::CaConfig::default()).await;
    let socket = dev.serve_admin(&dev.stop).await;
    let mut overall = watch(&socket, "").await;
    let mut node = watch(&socket, "writ.node.v1.Node").await;
    wait_for(&mut overall, ServingStatus::Serving).await;
    wait_for(&mut node, ServingStatus::Serving).await;

    // A change whose record cannot be made durable fails, and health follows at once
    // (the log's failures wake the check; no waiting for the next period).
    dev.issuer.audit.fail_commits(true);
    let issuer = Arc::clone(&dev.issuer);
    let refused = tokio::task::spawn_blocking(move || {
        issuer.registry.create_profile(
            writ::policy::Profile {
                tenant: "default".into(),
                name: "triage".into(),
                selectors: [writ::policy::Selector::Uid(dev::my_uid())].into(),
                bands: [writ_verifier::Band::Investigative].into(),
                scopes: Default::default(),
                service: false,
                created_at: 0,
            },
            "test",
        )
    })
    .await
    .unwrap();
    assert!(
        refused.is_err(),
        "a change was made without its audit record"
    );
    wait_for(&mut overall, ServingStatus::NotServing).await;
    wait_for(&mut node, ServingStatus::NotServing).await;

    // The next commit that succeeds makes it serve again.
    dev.issuer.audit.fail_commits(false);
    dev.profile("triage", &[writ::policy::Selector::Uid(dev::my_uid())], &[]);
    wait_for(&mut overall, ServingStatus::Serving).await;
    wait_for(&mut node, ServingStatus::Serving).await;
}

#[test]
fn stock_grpcio_reflection_health_and_admin_calls_on_both_sockets() {
    let Some(python) = std::env::var_os("WRIT_PYTHON") else {
        eprintln!(
            "skipped: set WRIT_PYTHON to a Python with tests/python/requirements.txt installed"
        );
        return;
    };
    let dir = common::temp_dir();
    let data = dir.path().join("data");
    let dev = DevProcess::start(&data, &[]);
    let out = std::process::Command::new(python)
        .arg(SCRIPT)
        .arg(dev.socket())
        .arg(data.join("workload.sock"))
        .arg("example.org")
        .output()
        .expect("running WRIT_PYTHON");
    let text = text(&out);
    println!("{text}");
    assert!(out.status.success(), "python clients failed:\n{text}");
    for step in [
        "admin-reflection",
        "admin-reflection-v1",
        "admin-health",
        "admin-rpc",
        "workload-reflection",
        "workload-reflection-v1",
        "workload-health",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("ok {step}"))),
            "{step} did not pass:\n{text}"
        );
    }
}
