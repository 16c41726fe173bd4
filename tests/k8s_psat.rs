//! Kubernetes node attestation by projected service-account token (docs/kubernetes.md),
//! against a fake API server served over HTTPS by the test: its own CA, a bearer token
//! it checks, and TokenReview answers for tokens the test names. The node API is the
//! production gRPC server in process, as in tests/node_attestation.rs. The server
//! reaches the API server by `api_server`/`api_ca_file`/`token_file`, or through a
//! kubeconfig (an inline token, a token file, or a client certificate and key).
//!
//! A valid token of an allowed service account names the node from the review (or, for
//! an older API server, from the pod); an unauthenticated token, a wrong audience, a
//! service account not allowed, an unknown cluster, and an API server that refuses writ
//! or is down: each refused, and audited when the token was judged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::https::Request;
use common::node_api::NodeApi;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::Code;
use writ::audit::Record;
use writ::config::RawConfig;
use writ::k8s_psat::RawCluster;
use writ::proto::node as pb;

const SERVER_TOKEN: &str = "writ-server-sa-token";

/// The common name of writ's client certificate, for a kubeconfig that names one.
const SERVER_CN: &str = "system:writ-server";

/// A fake API server: counts TokenReviews, answers them per token, and takes writ's
/// bearer token or its client certificate.
struct FakeApi {
    /// Serves until dropped.
    _server: common::https::HttpsServer,
    url: String,
    ca: PathBuf,
    /// The CA of client certificates it takes.
    clients: common::https::TestCa,
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

fn answer(request: &Request, reviews: &AtomicUsize) -> (u16, String) {
    let authorized =
        request.bearer_is(SERVER_TOKEN) || request.client_cn.as_deref() == Some(SERVER_CN);
    if !authorized {
        return (401, json!({"kind": "Status", "code": 401}).to_string());
    }
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
            reviews.fetch_add(1, Ordering::SeqCst);
            let asked = request.json();
            assert_eq!(asked["spec"]["audiences"], json!(["writ"]));
            (
                201,
                review(asked["spec"]["token"].as_str().unwrap()).to_string(),
            )
        }
        ("GET", "/api/v1/namespaces/writ/pods/writ-agent-x7k2p") => (
            200,
            json!({"kind": "Pod", "metadata": {"name": "writ-agent-x7k2p", "uid": "uid-agent-pod"},
                   "spec": {"nodeName": "node-2", "serviceAccountName": "writ-agent"}})
            .to_string(),
        ),
        _ => (404, json!({"kind": "Status", "code": 404}).to_string()),
    }
}

impl FakeApi {
    fn start(dir: &Path) -> FakeApi {
        let ca = common::https::TestCa::new("fake API server CA");
        let clients = common::https::TestCa::new("fake client CA");
        let reviews = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&reviews);
        let server =
            common::https::HttpsServer::start(ca.server_config(Some(&clients)), move |request| {
                answer(request, &counted)
            });
        FakeApi {
            url: server.url(),
            ca: ca.write(&dir.join("api-ca.pem")),
            _server: server,
            clients,
            reviews,
        }
    }

    /// A kubeconfig for this API server in `dir` (context `writ`), whose user is `user`
    /// (YAML lines under `user:`), with the CA inline as `kubectl config view --raw`
    /// writes it.
    fn kubeconfig(&self, dir: &Path, user: &str) -> PathBuf {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&self.ca).unwrap());
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: writ\nclusters:\n- name: prod\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\ncontexts:\n- name: writ\n  context:\n    cluster: prod\n    user: writ-server\n    namespace: writ\nusers:\n- name: writ-server\n  user:\n{user}",
                self.url
            ),
        )
        .unwrap();
        path
    }

    /// A client certificate for writ from the CA this API server takes, as files in
    /// `dir`: (certificate, key).
    fn client_certificate(&self, dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let leaf = self.clients.leaf(cn, &[]);
        let (cert, key) = (dir.join("writ-client.crt"), dir.join("writ-client.key"));
        std::fs::write(&cert, leaf.cert_pem).unwrap();
        std::fs::write(&key, leaf.key_pem).unwrap();
        (cert, key)
    }
}

/// The node API with `clusters`, and a way to attest through it.
struct Nodes(NodeApi);

impl Nodes {
    async fn start(dir: tempfile::TempDir, clusters: Vec<RawCluster>) -> Nodes {
        Nodes(NodeApi::start(dir, Vec::new(), clusters).await)
    }

    async fn attest(&self, cluster: &str, token: &str) -> Result<pb::NodeSvid, tonic::Status> {
        let (_, csr) = common::csr();
        self.0
            .client()
            .await
            .attest_k8s_psat(pb::AttestK8sPsatRequest {
                cluster: cluster.into(),
                token: token.into(),
                csr,
            })
            .await
            .map(|r| r.into_inner())
    }

    fn records(&self, action: &str) -> Vec<Record> {
        self.0
            .records()
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }
}

fn cluster(api: &FakeApi, dir: &Path, token: &str) -> RawCluster {
    let token_file = dir.join(format!("server-token-{token}"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    RawCluster {
        cluster: "prod".into(),
        api_server: Some(api.url.clone()),
        api_ca_file: Some(api.ca.clone()),
        token_file: Some(token_file),
        allowed_service_accounts: vec!["writ:writ-agent".into()],
        ..RawCluster::default()
    }
}

/// A cluster reached through a kubeconfig.
fn through(kubeconfig: PathBuf) -> RawCluster {
    RawCluster {
        cluster: "prod".into(),
        kubeconfig: Some(kubeconfig),
        allowed_service_accounts: vec!["writ:writ-agent".into()],
        ..RawCluster::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_token_of_an_allowed_service_account_attests_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(dir.path());
    let block = cluster(&api, dir.path(), SERVER_TOKEN);
    let node = Nodes::start(dir, vec![block]).await;

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
    let api = FakeApi::start(dir.path());
    let block = cluster(&api, dir.path(), SERVER_TOKEN);
    let node = Nodes::start(dir, vec![block]).await;

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
    let api = FakeApi::start(dir.path());
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
    let node = Nodes::start(dir, vec![wrong, down]).await;
    for cluster in ["prod", "down"] {
        let refused = node.attest(cluster, "good").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{cluster}: {refused:?}");
        assert!(!refused.message().contains(SERVER_TOKEN));
    }
    assert!(node.records("node.attest.k8s_psat").is_empty());
}

/// A writ server outside the cluster reaches the API server through a kubeconfig: its
/// server URL, its inline CA, and writ's credential as an inline token, a token file
/// (relative to the kubeconfig) or a client certificate and key. Credentials the API
/// server does not take attest nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_names_the_api_server_its_ca_and_writs_credential() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(dir.path());
    let sub = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).unwrap();
        path
    };
    let token = sub("token");
    let file = sub("file");
    std::fs::write(file.join("server-token"), format!("{SERVER_TOKEN}\n")).unwrap();
    let cert = sub("cert");
    api.client_certificate(&cert, SERVER_CN);
    let stranger = sub("stranger");
    api.client_certificate(&stranger, "system:anonymous-stranger");
    let foreign = sub("foreign");
    let other_ca = common::https::TestCa::new("a CA the API server does not take");
    let leaf = other_ca.leaf(SERVER_CN, &[]);
    std::fs::write(foreign.join("writ-client.crt"), leaf.cert_pem).unwrap();
    std::fs::write(foreign.join("writ-client.key"), leaf.key_pem).unwrap();
    let cert_user = "    client-certificate: writ-client.crt\n    client-key: writ-client.key\n";
    let named = |name: &str, kubeconfig: PathBuf| RawCluster {
        cluster: name.into(),
        ..through(kubeconfig)
    };
    let clusters = vec![
        named(
            "kc-token",
            api.kubeconfig(&token, &format!("    token: {SERVER_TOKEN}\n")),
        ),
        named(
            "kc-file",
            api.kubeconfig(&file, "    tokenFile: server-token\n"),
        ),
        named("kc-cert", api.kubeconfig(&cert, cert_user)),
        named("kc-stranger", api.kubeconfig(&stranger, cert_user)),
        named("kc-foreign", api.kubeconfig(&foreign, cert_user)),
    ];
    let node = Nodes::start(dir, clusters).await;

    for cluster in ["kc-token", "kc-file", "kc-cert"] {
        let svid = node.attest(cluster, "good").await.unwrap();
        assert_eq!(
            svid.spiffe_id,
            format!("spiffe://example.org/node/k8s/{cluster}/node-1")
        );
        // Judged as any other: a token the review does not authenticate is refused.
        let refused = node.attest(cluster, "forged").await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{cluster}");
    }
    assert_eq!(api.reviews.load(Ordering::SeqCst), 6);
    // A certificate the API server does not authorize (401), and one from a CA it does
    // not take (the handshake fails): nothing is attested, nothing reviewed.
    for cluster in ["kc-stranger", "kc-foreign"] {
        let refused = node.attest(cluster, "good").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{cluster}: {refused:?}");
    }
    assert_eq!(api.reviews.load(Ordering::SeqCst), 6);
    assert_eq!(node.records("node.attest.k8s_psat").len(), 3);
}

/// A kubeconfig writ cannot use stops the start, saying why and never a secret in it.
#[test]
fn kubeconfigs_writ_cannot_use_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(dir.path());
    let start = |cluster: RawCluster| {
        RawConfig {
            data_dir: Some(dir.path().join("data")),
            k8s_psat: vec![cluster],
            ..RawConfig::default()
        }
        .resolve()
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let refused = |user: &str| start(through(api.kubeconfig(dir.path(), user)));
    let why = refused(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/steal\n",
    );
    assert!(
        why.contains("exec (credential plugins run programs)"),
        "{why}"
    );
    let why = refused("    token: super-secret-token\n    tokenFile: also\n");
    assert!(why.contains("more than one"), "{why}");
    assert!(!why.contains("super-secret-token"), "{why}");
    let why = refused("    client-certificate: missing.crt\n    client-key: missing.key\n");
    assert!(
        why.contains("client-certificate") && why.contains("missing.crt"),
        "{why}"
    );
    // The kubeconfig or the keys beside it, not both.
    let kubeconfig = api.kubeconfig(dir.path(), &format!("    token: {SERVER_TOKEN}\n"));
    let why = start(RawCluster {
        api_server: Some(api.url.clone()),
        ..through(kubeconfig.clone())
    });
    assert!(why.contains("kubeconfig and api_server"), "{why}");
    let why = start(RawCluster {
        kubeconfig_context: Some("staging".into()),
        ..through(kubeconfig)
    });
    assert!(why.contains("no context named \"staging\""), "{why}");
    let why = start(RawCluster {
        kubeconfig_context: Some("writ".into()),
        ..cluster(&api, dir.path(), SERVER_TOKEN)
    });
    assert!(
        why.contains("kubeconfig_context is set without a kubeconfig"),
        "{why}"
    );
    let why = start(through(dir.path().join("no-such-kubeconfig")));
    assert!(why.contains("no-such-kubeconfig"), "{why}");
}

/// The real binaries: `writ server` with a `[[k8s_psat]]` cluster reached through a
/// kubeconfig (a client certificate, as for a server outside the cluster), and `writ agent`
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
    let dir = common::temp_dir();
    let dir = dir.path();
    let api = FakeApi::start(dir);
    // The server runs outside the cluster: a kubeconfig with a client certificate.
    api.client_certificate(dir, SERVER_CN);
    let kubeconfig = api.kubeconfig(
        dir,
        "    client-certificate: writ-client.crt\n    client-key: writ-client.key\n",
    );
    let server = ServerProc::start(
        dir,
        "server",
        &format!(
            "[[k8s_psat]]\ncluster = \"prod\"\nkubeconfig = {}\nallowed_service_accounts = [\"writ:writ-agent\"]\n",
            quoted(&kubeconfig)
        ),
    );
    let bundle = server.base_pem(dir);
    server.entitle(WORKLOAD, "INC-1");
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
