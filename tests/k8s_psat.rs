//! Kubernetes node attestation by projected service-account token (docs/kubernetes.md),
//! against a fake API server served over HTTPS by the test: its own CA, a bearer token
//! it checks, and TokenReview answers for tokens the test names. The node API is the
//! production gRPC server in process, as in tests/node_attestation.rs.
//!
//! A valid token of an allowed service account names the node from the review (or, for
//! an older API server, from the pod); an unauthenticated token, a wrong audience, a
//! service account not allowed, an unknown cluster, and an API server that refuses writ
//! or is down: each refused, and audited when the token was judged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;
use tonic::Code;
use writ::audit::Record;
use writ::clock::SystemClock;
use writ::config::RawConfig;
use writ::k8s_psat::RawCluster;
use writ::proto::node::{self as pb, node_client::NodeClient};
use writ::server::node::NodeService;
use writ::server::{Issuer, bind_unix};

const SERVER_TOKEN: &str = "writ-server-sa-token";

/// A fake API server: counts calls, answers TokenReviews per token.
struct FakeApi {
    url: String,
    ca: PathBuf,
    reviews: Arc<AtomicUsize>,
}

fn review(token: &str) -> Value {
    let bound = |user: &str, node: Option<&str>| {
        let mut extra = json!({
            "authentication.kubernetes.io/pod-name": ["writ-agent-x7k2p"],
            "authentication.kubernetes.io/pod-uid": ["uid-agent-pod"],
        });
        if let Some(node) = node {
            extra["authentication.kubernetes.io/node-name"] = json!([node]);
        }
        json!({"authenticated": true, "audiences": ["writ"],
               "user": {"username": user, "uid": "u1", "groups": ["system:serviceaccounts"], "extra": extra}})
    };
    let status = match token {
        "good" => bound("system:serviceaccount:writ:writ-agent", Some("node-1")),
        "old-api" => bound("system:serviceaccount:writ:writ-agent", None),
        "other-sa" => bound("system:serviceaccount:default:default", Some("node-1")),
        "bad-node" => bound("system:serviceaccount:writ:writ-agent", Some("Node/../x")),
        "wrong-aud" => {
            let mut v = bound("system:serviceaccount:writ:writ-agent", Some("node-1"));
            v["audiences"] = json!([]);
            v
        }
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status})
}

async fn answer(
    request: hyper::Request<Incoming>,
    reviews: Arc<AtomicUsize>,
) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, body: Value| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        r
    };
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SERVER_TOKEN}"));
    if !authorized {
        return reply(401, json!({"kind": "Status", "code": 401}));
    }
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    match (method.as_str(), path.as_str()) {
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
            reviews.fetch_add(1, Ordering::SeqCst);
            let asked: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(asked["spec"]["audiences"], json!(["writ"]));
            reply(201, review(asked["spec"]["token"].as_str().unwrap()))
        }
        ("GET", "/api/v1/namespaces/writ/pods/writ-agent-x7k2p") => reply(
            200,
            json!({"kind": "Pod", "metadata": {"name": "writ-agent-x7k2p", "uid": "uid-agent-pod"},
                   "spec": {"nodeName": "node-2", "serviceAccountName": "writ-agent"}}),
        ),
        _ => reply(404, json!({"kind": "Status", "code": 404})),
    }
}

impl FakeApi {
    async fn start(dir: &std::path::Path) -> FakeApi {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca_path = dir.join("api-ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let reviews = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&reviews);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let reviews = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |r| {
                        let reviews = Arc::clone(&reviews);
                        async move { Ok::<_, std::convert::Infallible>(answer(r, reviews).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeApi {
            url: format!("https://127.0.0.1:{port}"),
            ca: ca_path,
            reviews,
        }
    }
}

struct NodeApi {
    _dir: tempfile::TempDir,
    issuer: Arc<Issuer>,
    socket: PathBuf,
    _stop: watch::Sender<bool>,
}

impl NodeApi {
    async fn start(dir: tempfile::TempDir, clusters: Vec<RawCluster>) -> NodeApi {
        let config = RawConfig {
            data_dir: Some(dir.path().join("data")),
            k8s_psat: clusters,
            ..RawConfig::default()
        }
        .resolve()
        .unwrap();
        let issuer = Issuer::open(config, Arc::new(SystemClock)).unwrap();
        let socket = dir.path().join("node.sock");
        let listener = bind_unix(&socket, 0o600).await.unwrap();
        let service = NodeService::new(Arc::clone(&issuer), Vec::new());
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(writ::server::node::server(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                ),
        );
        NodeApi {
            _dir: dir,
            issuer,
            socket,
            _stop: stop,
        }
    }

    async fn attest(&self, cluster: &str, token: &str) -> Result<pb::NodeSvid, tonic::Status> {
        let mut client = NodeClient::new(writ::uds::channel(&self.socket).await.unwrap());
        let (_, csr) = common::csr();
        client
            .attest_k8s_psat(pb::AttestK8sPsatRequest {
                cluster: cluster.into(),
                token: token.into(),
                csr,
            })
            .await
            .map(|r| r.into_inner())
    }

    fn records(&self, action: &str) -> Vec<Record> {
        self.issuer
            .audit
            .read(0, 100_000)
            .unwrap()
            .into_iter()
            .map(|(_, bytes)| Record::decode(&bytes).unwrap())
            .filter(|r| r.action == action)
            .collect()
    }
}

fn cluster(api: &FakeApi, dir: &std::path::Path, token: &str) -> RawCluster {
    let token_file = dir.join(format!("server-token-{token}"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    RawCluster {
        cluster: "prod".into(),
        api_server: Some(api.url.clone()),
        api_ca_file: Some(api.ca.clone()),
        token_file: Some(token_file),
        audience: None,
        allowed_service_accounts: vec!["writ:writ-agent".into()],
        timeout: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_token_of_an_allowed_service_account_attests_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(dir.path()).await;
    let block = cluster(&api, dir.path(), SERVER_TOKEN);
    let node = NodeApi::start(dir, vec![block]).await;

    let svid = node.attest("prod", "good").await.unwrap();
    assert_eq!(svid.spiffe_id, "spiffe://example.org/node/k8s/prod/node-1");
    let leaf = common::parse_cert(&svid.certificate);
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(format!("{:?}", san.value).contains("spiffe://example.org/node/k8s/prod/node-1"));
    // An API server that names no node in its reviews: the node comes from the pod.
    let svid = node.attest("prod", "old-api").await.unwrap();
    assert_eq!(svid.spiffe_id, "spiffe://example.org/node/k8s/prod/node-2");
    let attested = node.records("node.attest.k8s_psat");
    assert_eq!(attested.len(), 2, "{attested:?}");
    assert_eq!(
        attested[0].actor,
        "spiffe://example.org/node/k8s/prod/node-1"
    );
    // The token is nowhere in the audit log.
    for r in node.records("node.attest.k8s_psat") {
        assert!(!format!("{r:?}").contains("good"), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_accounts_audiences_and_clusters_are_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(dir.path()).await;
    let block = cluster(&api, dir.path(), SERVER_TOKEN);
    let node = NodeApi::start(dir, vec![block]).await;

    for (token, reason) in [
        ("forged", "did not authenticate"),
        ("wrong-aud", "audience"),
        ("other-sa", "may not attest nodes"),
        ("bad-node", "not a DNS subdomain"),
    ] {
        let refused = node.attest("prod", token).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{token}: {refused:?}"
        );
        // The agent learns only that it was refused; the log and the audit log say why.
        assert_eq!(refused.message(), "service-account token refused");
        let audited = node.records("node.attest.k8s_psat.refused");
        assert!(
            audited.iter().any(|r| r.detail["reason"]
                .as_str()
                .is_some_and(|w| w.contains(reason))),
            "{token}: {audited:?}"
        );
    }
    let reviews = api.reviews.load(Ordering::SeqCst);
    // A cluster the server does not know: refused before the API server is asked.
    let unknown = node.attest("staging", "good").await.unwrap_err();
    assert_eq!(unknown.code(), Code::PermissionDenied);
    assert!(unknown.message().contains("staging"), "{unknown:?}");
    // Bounds: no token, or one too long.
    assert_eq!(
        node.attest("prod", "").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let long = "x".repeat(writ::k8s_psat::MAX_TOKEN_BYTES + 1);
    assert_eq!(
        node.attest("prod", &long).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        api.reviews.load(Ordering::SeqCst),
        reviews,
        "nothing was sent to review"
    );
    assert!(node.records("node.attest.k8s_psat").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_refuses_writ_or_is_down_attests_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(dir.path()).await;
    // writ's own token is not one the API server takes.
    let wrong = RawCluster {
        cluster: "prod".into(),
        ..cluster(&api, dir.path(), "not-the-server-token")
    };
    // And a cluster whose API server is not there.
    let down = RawCluster {
        cluster: "down".into(),
        api_server: Some(format!("https://127.0.0.1:{}", common::free_port())),
        ..cluster(&api, dir.path(), SERVER_TOKEN)
    };
    let node = NodeApi::start(dir, vec![wrong, down]).await;
    for cluster in ["prod", "down"] {
        let refused = node.attest(cluster, "good").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{cluster}: {refused:?}");
        assert!(!refused.message().contains(SERVER_TOKEN));
    }
    assert!(node.records("node.attest.k8s_psat").is_empty());
}

/// The real binaries: `writ server` with a `[[k8s_psat]]` cluster, and `writ agent`
/// configured as in a pod (psat_cluster, psat_token_file). The agent attests with its
/// token, its node is named from the review, and a workload on it gets its identity.
#[test]
fn a_writ_agent_attests_with_its_pods_token_and_serves_workloads() {
    use common::procs::{AgentProc, ServerProc, fetch, ids};
    use common::{quoted, toml_string, write};
    const WORKLOAD: u32 = 2301;
    if !common::require_root() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = common::temp_dir();
    let dir = dir.path();
    let api = runtime.block_on(FakeApi::start(dir));
    let server_token = write(&dir.join("server-sa-token"), SERVER_TOKEN);
    let server = ServerProc::start(
        dir,
        "server",
        &format!(
            "[[k8s_psat]]\ncluster = \"prod\"\napi_server = {}\napi_ca_file = {}\ntoken_file = {}\nallowed_service_accounts = [\"writ:writ-agent\"]\n",
            toml_string(&api.url),
            quoted(&api.ca),
            quoted(&server_token)
        ),
    );
    let bundle = server.base_pem(dir);
    server.ok(&[
        "profile",
        "create",
        "triage",
        "--selector",
        &format!("unix:uid:{WORKLOAD}"),
    ]);
    server.ok(&[
        "incident",
        "open",
        "INC-1",
        "--title",
        "psat",
        "--severity",
        "sev3",
        "--assign",
        "triage",
    ]);
    let token = write(&dir.join("psat-token"), "good\n");
    let mut agent = AgentProc::spawn_toml(
        dir,
        "agent",
        &format!(
            "data_dir = {}\nserver_address = {}\ntrust_bundle = {}\npsat_cluster = \"prod\"\npsat_token_file = {}\n",
            quoted(&dir.join("agent")),
            toml_string(&server.address()),
            quoted(&bundle),
            quoted(&token)
        ),
        None,
    );
    agent.wait_ready();
    let answer = fetch(WORKLOAD, &agent.socket());
    assert_eq!(
        ids(&answer),
        Some(vec![
            "spiffe://investigate.example.org/agent/triage/incident/INC-1".to_owned()
        ]),
        "{answer}"
    );
    let audit = server.ok(&["audit", "tail", "-n", "100", "--json"]);
    let attested: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "node.attest.k8s_psat")
        .collect();
    assert_eq!(attested.len(), 1, "{audit}");
    assert_eq!(
        attested[0]["actor"],
        "spiffe://example.org/node/k8s/prod/node-1"
    );
}
