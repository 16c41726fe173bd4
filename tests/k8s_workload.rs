//! Kubernetes workload attestation (docs/kubernetes.md), with no cluster: a fake /proc root
//! holding `<pid>/cgroup` files, and a fake kubelet served over HTTPS by this test (its own
//! CA, a bearer token it checks, 401 otherwise) answering `GET /pods`.
//!
//! The attestor is driven directly for each case, then `writ dev` end to end: a profile of
//! `k8s:` selectors, and this test process, whose faked cgroup names a fixture pod,
//! fetches `spiffe://investigate.<base>/agent/<agent>/incident/<id>` from the Workload API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use writ::agent::k8s::{K8sAttestor, K8sConfig, K8sError};
use writ::policy::Selector;

mod common;

use common::bin::{DevProcess, open_args};
use common::https::{HttpsServer, TestCa};

const TOKEN: &str = "kubelet-reader-token";
const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
const CID: &str = "9be0f9a7c3d2e1f0a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0";
const OTHER_UID: &str = "7f0e0c1a-0000-4000-8000-000000000001";
const OTHER_CID: &str = "1111111111111111111111111111111111111111111111111111111111111111";

/// A fake kubelet: answers `GET /pods` with the bearer token with the next of its answers
/// (the last one repeats), 401 without it.
struct FakeKubelet {
    server: HttpsServer,
    answers: Arc<Mutex<VecDeque<String>>>,
}

impl FakeKubelet {
    fn start(ca: &TestCa, answers: Vec<String>) -> Self {
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let queued = Arc::clone(&answers);
        let server = HttpsServer::start(ca.server_config(None), move |request| {
            if request.method != "GET" || request.path != "/pods" || !request.bearer_is(TOKEN) {
                return (401, "Unauthorized".to_owned());
            }
            let mut answers = queued.lock().unwrap();
            let body = if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                answers.front().cloned().unwrap_or_default()
            };
            (200, body)
        });
        FakeKubelet { server, answers }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn requests(&self) -> usize {
        self.server.requests()
    }

    fn answer(&self, body: String) {
        *self.answers.lock().unwrap() = VecDeque::from([body]);
    }

    /// Stops listening: connections are refused from now on.
    fn stop(&mut self) {
        self.server.stop();
    }
}

/// A kubelet's pod list: another pod (`OTHER_UID`, container `OTHER_CID`), and the triage
/// pod in `phase` whose container status carries `container_id`.
fn pod_list(phase: &str, container_id: &str) -> String {
    json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [
            {
                "metadata": {"name": "web-0", "namespace": "shop", "uid": OTHER_UID, "labels": {"app": "web"}},
                "spec": {"serviceAccountName": "web", "nodeName": "node-1"},
                "status": {"phase": "Running", "containerStatuses": [
                    {"name": "web", "image": "nginx:1.25", "imageID": "docker.io/library/nginx@sha256:0000",
                     "containerID": format!("containerd://{OTHER_CID}"), "ready": true, "restartCount": 0}
                ]}
            },
            {
                "metadata": {"name": "triage-7d9f8", "namespace": "sre", "uid": UID,
                             "labels": {"app": "triage", "app.kubernetes.io/part-of": "sre-agents"}},
                "spec": {"serviceAccountName": "triage-agent", "nodeName": "node-1",
                         "containers": [{"name": "agent", "image": "registry.example/sre/triage:1.2"}]},
                "status": {"phase": phase, "containerStatuses": [
                    {"name": "agent", "image": "registry.example/sre/triage:1.2",
                     "imageID": "registry.example/sre/triage@sha256:abcd", "containerID": container_id,
                     "ready": true, "restartCount": 0}
                ]}
            }
        ]
    })
    .to_string()
}

fn running() -> String {
    pod_list("Running", &format!("containerd://{CID}"))
}

/// A fake /proc root holding `<pid>/cgroup` for each pid given.
fn proc_root(dir: &Path, cgroups: &[(u32, String)]) -> PathBuf {
    let root = dir.join("proc");
    for (pid, text) in cgroups {
        std::fs::create_dir_all(root.join(pid.to_string())).unwrap();
        std::fs::write(root.join(pid.to_string()).join("cgroup"), text).unwrap();
    }
    root
}

/// The cgroup v2 line of a containerd container under the systemd driver.
fn cgroup_of(pod_uid: &str, container_id: &str) -> String {
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container_id}.scope\n",
        pod_uid.replace('-', "_")
    )
}

struct Setup {
    dir: tempfile::TempDir,
    ca_pem: PathBuf,
    ca: TestCa,
    token: PathBuf,
}

fn setup() -> Setup {
    let dir = common::temp_dir();
    let ca = TestCa::new("kubelet test CA");
    let ca_pem = ca.write(&dir.path().join("kubelet-ca.pem"));
    let token = common::write(&dir.path().join("token"), &format!("{TOKEN}\n"));
    Setup {
        dir,
        ca_pem,
        ca,
        token,
    }
}

impl Setup {
    fn config(&self, kubelet_url: &str, proc_root: &Path) -> K8sConfig {
        toml::from_str(&format!(
            "kubelet_url = {:?}\nkubelet_ca = {}\ntoken_file = {}\nnode_name = \"node-1\"\nproc_root = {}\n",
            kubelet_url,
            common::quoted(&self.ca_pem),
            common::quoted(&self.token),
            common::quoted(proc_root),
        ))
        .unwrap()
    }
}

fn selectors(list: &[&str]) -> BTreeSet<Selector> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// The caller `pid`'s `k8s:` selectors through `attestor`, from its cgroup on.
async fn attest(attestor: &K8sAttestor, pid: i32) -> Result<BTreeSet<Selector>, K8sError> {
    match attestor.caller_pod(pid)? {
        Some(pod) => attestor.selectors(&pod).await,
        None => Ok(BTreeSet::new()),
    }
}

#[tokio::test]
async fn a_pods_container_gets_its_pods_selectors() {
    let s = setup();
    let kubelet = FakeKubelet::start(&s.ca, vec![running()]);
    let root = proc_root(s.dir.path(), &[(4242, cgroup_of(UID, CID))]);
    let attestor = K8sAttestor::new(&s.config(&kubelet.url(), &root)).unwrap();
    let got = attest(&attestor, 4242).await.unwrap();
    assert_eq!(
        got,
        selectors(&[
            "k8s:ns:sre",
            "k8s:sa:triage-agent",
            "k8s:pod-name:triage-7d9f8",
            &format!("k8s:pod-uid:{UID}"),
            "k8s:pod-label:app:triage",
            "k8s:pod-label:app.kubernetes.io/part-of:sre-agents",
            "k8s:container-name:agent",
            "k8s:container-image:registry.example/sre/triage:1.2",
            "k8s:container-image:registry.example/sre/triage@sha256:abcd",
            "k8s:node-name:node-1",
        ])
    );
    // A second caller within the cache's lifetime is answered from the same list.
    assert_eq!(attest(&attestor, 4242).await.unwrap(), got);
    assert_eq!(kubelet.requests(), 1);
}

#[tokio::test]
async fn a_process_in_no_pod_gets_no_k8s_selectors_and_asks_no_kubelet() {
    let s = setup();
    let kubelet = FakeKubelet::start(&s.ca, vec![running()]);
    let root = proc_root(
        s.dir.path(),
        &[(7, "0::/system.slice/sshd.service\n".to_owned())],
    );
    let attestor = K8sAttestor::new(&s.config(&kubelet.url(), &root)).unwrap();
    assert_eq!(attest(&attestor, 7).await.unwrap(), BTreeSet::new());
    assert_eq!(kubelet.requests(), 0);
    // A pid whose cgroup cannot be read is refused, not taken for "no pod".
    assert!(matches!(
        attest(&attestor, 8).await,
        Err(K8sError::Cgroup { pid: 8, .. })
    ));
}

#[tokio::test]
async fn a_container_not_yet_listed_is_retried_then_refused() {
    let s = setup();
    // The pod is known but its container's status is not populated yet, then it is
    // pending with a container id: never running.
    let kubelet = FakeKubelet::start(
        &s.ca,
        vec![
            pod_list("Pending", ""),
            pod_list("Pending", &format!("containerd://{CID}")),
        ],
    );
    let root = proc_root(s.dir.path(), &[(4242, cgroup_of(UID, CID))]);
    let attestor = K8sAttestor::new(&s.config(&kubelet.url(), &root)).unwrap();
    let err = attest(&attestor, 4242).await.unwrap_err();
    assert!(matches!(err, K8sError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(CID), "{err}");
    let asked = kubelet.requests();
    assert!(
        (2..=12).contains(&asked),
        "retried a bounded number of times, asked {asked}"
    );
}

#[tokio::test]
async fn a_container_listed_while_retrying_is_attested() {
    let s = setup();
    let kubelet = FakeKubelet::start(&s.ca, vec![pod_list("Pending", ""), running()]);
    let root = proc_root(s.dir.path(), &[(4242, cgroup_of(UID, CID))]);
    let attestor = K8sAttestor::new(&s.config(&kubelet.url(), &root)).unwrap();
    let got = attest(&attestor, 4242).await.unwrap();
    assert!(got.contains(&"k8s:sa:triage-agent".parse().unwrap()));
    assert_eq!(kubelet.requests(), 2);
}

#[tokio::test]
async fn another_pods_container_id_gets_no_k8s_identity() {
    let s = setup();
    let kubelet = FakeKubelet::start(&s.ca, vec![running()]);
    // The cgroup names the triage pod, with web-0's container id.
    let root = proc_root(s.dir.path(), &[(4242, cgroup_of(UID, OTHER_CID))]);
    let attestor = K8sAttestor::new(&s.config(&kubelet.url(), &root)).unwrap();
    let err = attest(&attestor, 4242).await.unwrap_err();
    assert!(matches!(err, K8sError::Refused(_)), "{err}");
    assert!(err.to_string().contains("another pod"), "{err}");
    assert_eq!(kubelet.requests(), 1, "a contradiction is not retried");
}

#[tokio::test]
async fn a_kubelet_that_is_down_refuses_and_a_stale_list_is_never_used() {
    let s = setup();
    let mut kubelet = FakeKubelet::start(&s.ca, vec![running()]);
    let root = proc_root(s.dir.path(), &[(4242, cgroup_of(UID, CID))]);
    let attestor = K8sAttestor::new(&s.config(&kubelet.url(), &root))
        .unwrap()
        .with_cache_ttl(Duration::from_millis(200));
    assert!(!attest(&attestor, 4242).await.unwrap().is_empty());
    kubelet.stop();
    // Past the cache's lifetime the list is fetched again, and the kubelet is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = attest(&attestor, 4242).await.unwrap_err();
    assert!(matches!(err, K8sError::Kubelet(_)), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    // Refused again at once, not answered from what was known before.
    assert!(matches!(
        attest(&attestor, 4242).await,
        Err(K8sError::Kubelet(_))
    ));
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_token_is_reread() {
    let s = setup();
    let kubelet = FakeKubelet::start(&s.ca, vec![running()]);
    let root = proc_root(s.dir.path(), &[(4242, cgroup_of(UID, CID))]);
    std::fs::write(&s.token, "someone-elses-token\n").unwrap();
    let attestor = K8sAttestor::new(&s.config(&kubelet.url(), &root)).unwrap();
    let err = attest(&attestor, 4242).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    // The token file is read for each request: a rotated token is used at once.
    std::fs::write(&s.token, format!("{TOKEN}\n")).unwrap();
    assert!(!attest(&attestor, 4242).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_kubelet_must_hold_a_certificate_of_its_ca_unless_told_to_skip() {
    let s = setup();
    let stranger = TestCa::new("someone else's CA");
    let kubelet = FakeKubelet::start(&stranger, vec![running()]);
    let root = proc_root(s.dir.path(), &[(4242, cgroup_of(UID, CID))]);
    let attestor = K8sAttestor::new(&s.config(&kubelet.url(), &root)).unwrap();
    let err = attest(&attestor, 4242).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    assert_eq!(kubelet.requests(), 0);

    let mut config = s.config(&kubelet.url(), &root);
    config.kubelet_ca = None;
    config.kubelet_skip_verify = true;
    let attestor = K8sAttestor::new(&config).unwrap();
    assert!(!attest(&attestor, 4242).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_oversized_or_malformed_pod_list_is_refused() {
    let s = setup();
    let kubelet = FakeKubelet::start(&s.ca, vec!["x".repeat(16 * 1024 * 1024 + 1)]);
    let root = proc_root(s.dir.path(), &[(4242, cgroup_of(UID, CID))]);
    let attestor = K8sAttestor::new(&s.config(&kubelet.url(), &root)).unwrap();
    let err = attest(&attestor, 4242).await.unwrap_err();
    assert!(err.to_string().contains("above 16777216 bytes"), "{err}");
    kubelet.answer("{\"items\": 5}".to_owned());
    let err = attest(&attestor, 4242).await.unwrap_err();
    assert!(err.to_string().contains("unreadable pod list"), "{err}");
}

#[test]
fn bad_k8s_blocks_are_refused_with_a_reason() {
    let s = setup();
    let root = s.dir.path();
    let base = s.config("https://127.0.0.1:10250", root);
    for (change, says) in [
        (
            Box::new(|c: &mut K8sConfig| c.kubelet_ca = None) as Box<dyn Fn(&mut K8sConfig)>,
            "kubelet_ca is required",
        ),
        (
            Box::new(|c: &mut K8sConfig| c.kubelet_skip_verify = true),
            "not both",
        ),
        (
            Box::new(|c: &mut K8sConfig| c.token_file = None),
            "give token_file or client_cert",
        ),
        (
            Box::new(|c: &mut K8sConfig| c.kubelet_url = Some("http://127.0.0.1:10255".into())),
            "must be https://",
        ),
        (
            Box::new(|c: &mut K8sConfig| c.node_name = Some("Node 1".into())),
            "not a Kubernetes node name",
        ),
        (
            Box::new(|c: &mut K8sConfig| c.client_cert = Some("/c.pem".into())),
            "go together",
        ),
    ] {
        let mut config = base.clone();
        change(&mut config);
        let err = format!("{:#}", K8sAttestor::new(&config).unwrap_err());
        assert!(err.contains(says), "{err}");
    }
    assert!(toml::from_str::<K8sConfig>("kubelet_urll = \"https://x\"").is_err());
}

/// `writ dev` with `[k8s]`, its config written under `root`.
fn dev_with_k8s(root: &Path, s: &Setup, kubelet_url: &str, proc_root: &Path) -> DevProcess {
    let config = common::write(
        &root.join("writ.toml"),
        &format!(
            "[k8s]\nkubelet_url = {:?}\nkubelet_ca = {}\ntoken_file = {}\nnode_name = \"node-1\"\nproc_root = {}\n",
            kubelet_url,
            common::quoted(&s.ca_pem),
            common::quoted(&s.token),
            common::quoted(proc_root),
        ),
    );
    DevProcess::start(&root.join("data"), &["--config", config.to_str().unwrap()])
}

/// What the Workload API answers this process: its SVIDs' SPIFFE IDs, or the refusal.
async fn my_identities(dev: &DevProcess) -> Result<Vec<String>, String> {
    let socket = dev.data_dir.join("workload.sock");
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .map_err(|e| e.to_string())?;
    let ctx = client
        .fetch_x509_context()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(ctx
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writ_dev_issues_a_fixture_pod_its_investigative_identity() {
    let s = setup();
    let kubelet = FakeKubelet::start(&s.ca, vec![running()]);
    // This test process is the workload: its cgroup, faked, names the triage pod.
    let root = proc_root(s.dir.path(), &[(std::process::id(), cgroup_of(UID, CID))]);
    let dev = dev_with_k8s(s.dir.path(), &s, &kubelet.url(), &root);
    dev.ok(&[
        "profile",
        "create",
        "triage",
        "--selector",
        "k8s:ns:sre",
        "--selector",
        "k8s:sa:triage-agent",
    ]);
    // A profile of the same namespace with another service account selects nobody here.
    dev.ok(&[
        "profile",
        "create",
        "web",
        "--selector",
        "k8s:ns:sre",
        "--selector",
        "k8s:sa:web",
    ]);
    dev.ok(&open_args("INC-1", "triage"));
    dev.ok(&open_args("INC-2", "web"));
    let want = "spiffe://investigate.example.org/agent/triage/incident/INC-1";
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids = loop {
        match my_identities(&dev).await {
            Ok(ids) if ids.iter().any(|id| id == want) => break ids,
            other => assert!(
                Instant::now() < deadline,
                "no {want}: {other:?}\n{}",
                dev.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ids, [want], "only the triage pod's identity");
    assert!(kubelet.requests() >= 1);
    dev.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writ_dev_refuses_a_pod_when_the_kubelet_is_down_and_says_so_once() {
    let s = setup();
    let root = proc_root(s.dir.path(), &[(std::process::id(), cgroup_of(UID, CID))]);
    let down = format!("https://127.0.0.1:{}", common::free_port());
    let dev = dev_with_k8s(s.dir.path(), &s, &down, &root);
    dev.ok(&["profile", "create", "triage", "--selector", "k8s:ns:sre"]);
    dev.ok(&open_args("INC-1", "triage"));
    for _ in 0..3 {
        // PermissionDenied "no identity issued: …", as the spiffe crate reads it.
        let refused = my_identities(&dev).await.unwrap_err();
        assert_eq!(refused, "NoIdentityIssued");
    }
    let log = dev.log();
    let line = "kubernetes workload attestation refused: the kubelet's pod list is unavailable";
    assert_eq!(log.matches(line).count(), 1, "one throttled line: {log}");
    assert!(
        log.contains(&format!("kubelet {down} unreachable")),
        "the line names the kubelet and why: {log}"
    );
    assert!(!log.contains(TOKEN), "never the token: {log}");
    dev.terminate();
}
