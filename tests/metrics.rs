//! Prometheus metrics end to end (docs/metrics.md): a scripted scenario against a real
//! issuer and agent moves the counters, and what the endpoint serves is parsed by the
//! Prometheus project's own text parser (Python `prometheus_client`, see
//! tests/python/metrics_parse.py), not by the encoder that wrote it. `writ dev` listens
//! for metrics only when asked, and a bad `metrics_listen` is a configuration error.
//!
//! The parsing tests need a Python with tests/python/requirements.txt installed, named by
//! WRIT_PYTHON (scripts/test sets it); without it they print a line saying so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::bin::{DevProcess, WRIT, json_lines};
use common::dev::{my_uid, start};
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use writ::ca::CaConfig;
use writ::metrics::Metrics;
use writ::policy::Selector;
use writ::proto::node::node_server::Node;

/// How long anything may take before the test fails (never a duration asserted).
const PATIENCE: Duration = Duration::from_secs(30);

fn python() -> Option<PathBuf> {
    common::writ_python()
}

/// One HTTP/1.1 request over TCP; the status code, headers and body of the answer.
fn request(address: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: writ\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The samples of a scrape, as the Prometheus parser read them.
struct Scrape(Vec<Value>);

impl Scrape {
    fn parse(python: &Path, text: &str) -> Scrape {
        let mut child = std::process::Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/metrics_parse.py"
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running WRIT_PYTHON");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused the scrape: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        Scrape(json_lines(&String::from_utf8(out.stdout).unwrap()))
    }

    fn get(address: SocketAddr, python: &Path) -> Scrape {
        let (status, head, body) = request(address, "GET", "/metrics");
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        Scrape::parse(python, &body)
    }

    /// The value of the sample `name` whose labels include `labels`; there must be one.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|s| s["name"] == name)
            .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .map(|s| s["value"].as_f64().unwrap())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{name} {labels:?}: {found:?} in {:#?}",
            self.0
        );
        found[0]
    }

    /// The family `name`'s type, as parsed.
    fn kind(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["type"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no sample {name}"))
    }
}

/// Serves `metrics` on a free loopback port, as `writ server` and `writ agent` do.
async fn serve(metrics: &Arc<Metrics>) -> SocketAddr {
    let listener = writ::metrics::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(writ::metrics::http::serve(
        listener,
        Arc::clone(metrics),
        std::future::pending(),
    ));
    address
}

/// Polls the scrape at `address` until `done` holds, for at most [`PATIENCE`].
async fn scrape_until(
    address: SocketAddr,
    python: &Path,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let python = python.to_path_buf();
        let scrape = tokio::task::spawn_blocking(move || Scrape::get(address, &python))
            .await
            .unwrap();
        if done(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "never {what}: {:#?}", scrape.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scripted_scenario_moves_the_counters() {
    let Some(python) = python() else { return };
    let dev = start(CaConfig::default()).await;
    // The issuer's and the agent's metrics, each on its endpoint, as `writ server` and
    // `writ agent` serve them.
    let server = serve(&dev.issuer.metrics).await;
    let agent = serve(&dev.agent.metrics).await;
    let id = |incident: &str| {
        writ_verifier::parse_spiffe_id(&format!(
            "spiffe://investigate.example.org/agent/triage/incident/{incident}"
        ))
        .unwrap()
    };
    let before = Scrape::get(server, &python);
    assert_eq!(before.kind("writ_svids_issued_total"), "counter");
    assert_eq!(
        before.value(
            "writ_svids_issued_total",
            &[("band", "investigative"), ("kind", "x509")]
        ),
        0.0
    );

    // Issuance through the stock spiffe client: two X.509-SVIDs and one JWT-SVID.
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    dev.open("INC-2", "triage", 2);
    let client = dev.client().await;
    assert_eq!(
        client.fetch_x509_svid().await.unwrap().cert_chain().len(),
        1
    );
    client
        .fetch_jwt_token(["logs-api"], Some(&id("INC-2")))
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.svids().len(), 2);
    let open = Scrape::get(agent, &python);
    assert!(open.value("writ_workload_api_streams", &[]) >= 1.0);
    assert!(open.value("writ_workload_api_connections", &[]) >= 1.0);
    assert_eq!(open.kind("writ_workload_api_streams"), "gauge");

    // A close with the stream open: the stream is redacted, and the agent observed how
    // long that took.
    dev.close("INC-1");
    let second = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a redacted message after the close")
        .unwrap()
        .unwrap();
    assert_eq!(second.svids().len(), 1);
    let redacted = Scrape::get(agent, &python);
    assert!(redacted.value("writ_revocation_propagation_seconds_count", &[]) >= 1.0);
    assert_eq!(
        redacted.kind("writ_revocation_propagation_seconds_count"),
        "histogram"
    );

    // A denied request: the closed incident's identity, asked of the issuer as an agent
    // with a stale view would.
    let denied = dev
        .issuer
        .sign_workload_x509(&id("INC-1"), b"not even a CSR", None, "test-node");
    assert!(
        matches!(denied, Err(writ::server::IssueError::NotEntitled(_))),
        "{denied:?}"
    );
    // A failed node attestation: an unknown join token, through the node API's handler.
    let node = writ::server::node::NodeService::new(Arc::clone(&dev.issuer), Vec::new());
    let refused = node
        .attest_join_token(tonic::Request::new(
            writ::proto::node::AttestJoinTokenRequest {
                token: "no-such-token".into(),
                csr: b"not a CSR".to_vec(),
            },
        ))
        .await;
    assert!(refused.is_err());

    // The clients leave: the gauges go back to zero.
    drop(stream);
    drop(client);
    let left = scrape_until(agent, &python, "connections and streams at 0", |s| {
        s.value("writ_workload_api_connections", &[]) == 0.0
            && s.value("writ_workload_api_streams", &[]) == 0.0
    })
    .await;
    assert_eq!(
        left.value("writ_attestation_failures_total", &[("kind", "unix")]),
        0.0
    );

    let after = Scrape::get(server, &python);
    let issued = |kind| {
        after.value(
            "writ_svids_issued_total",
            &[("band", "investigative"), ("kind", kind)],
        )
    };
    assert!(issued("x509") >= 2.0, "{}", issued("x509"));
    assert!(issued("jwt") >= 1.0);
    assert!(after.value("writ_issuance_seconds_count", &[("kind", "x509")]) >= 2.0);
    assert!(after.value("writ_issuance_seconds_count", &[("kind", "jwt")]) >= 1.0);
    let denied_total: f64 = ["investigative", "remediation", "base", "unknown"]
        .iter()
        .flat_map(|band| {
            ["not_entitled", "ca", "audit", "not_current"].map(|reason| (*band, reason))
        })
        .map(|(band, reason)| {
            after.value(
                "writ_svids_denied_total",
                &[("band", band), ("reason", reason)],
            )
        })
        .sum();
    assert_eq!(denied_total, 1.0);
    assert_eq!(
        after.value(
            "writ_svids_denied_total",
            &[("band", "investigative"), ("reason", "not_entitled")]
        ),
        1.0
    );
    assert_eq!(
        after.value("writ_attestation_failures_total", &[("kind", "join_token")]),
        1.0
    );
    // Every issuance and the denial were audited; nothing failed.
    assert!(after.value("writ_audit_appends_total", &[]) >= 4.0);
    assert!(after.value("writ_audit_commits_total", &[]) >= 1.0);
    assert_eq!(after.value("writ_audit_failures_total", &[]), 0.0);
    assert_eq!(
        after.value("writ_audit_verified_size", &[]),
        dev.issuer.audit.size() as f64
    );
    assert_eq!(after.value("writ_grants_pending", &[]), 0.0);
    assert_eq!(
        after.value(
            "writ_ca_authorities",
            &[("band", "investigative"), ("state", "active")]
        ),
        1.0
    );
    // No caller text or identity is a label value.
    for sample in &after.0 {
        let labels = sample["labels"].to_string();
        assert!(
            !labels.contains("INC-") && !labels.contains("spiffe://"),
            "{sample}"
        );
    }
}

/// TCP ports `pid` listens on, from /proc: its socket inodes matched with the kernel's
/// table of listening sockets.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A (LISTEN), inode.
            if fields.get(3) == Some(&"0A")
                && inodes.iter().any(|i| Some(&i.as_str()) == fields.get(9))
            {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[test]
fn writ_dev_serves_metrics_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    // Off by default: `writ dev` listens on no TCP port at all.
    let quiet = DevProcess::start(&tmp.path().join("quiet"), &[]);
    assert_eq!(listening_ports(quiet.pid()), Vec::<u16>::new());
    drop(quiet);

    let dev = DevProcess::start(
        &tmp.path().join("data"),
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let ports = listening_ports(dev.pid());
    assert_eq!(ports.len(), 1, "{ports:?}");
    let address = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    // Only GET /metrics.
    assert_eq!(request(address, "GET", "/").0, 404);
    assert_eq!(request(address, "GET", "/metrics/x").0, 404);
    let (status, head, _) = request(address, "POST", "/metrics");
    assert_eq!(status, 405, "{head}");
    let Some(python) = python() else { return };
    let scrape = Scrape::get(address, &python);
    // Each authority's notAfter is the one `writ authority show` prints.
    let authorities = json_lines(&dev.ok(&["authority", "show", "--json"]));
    assert_eq!(authorities.len(), 3, "{authorities:?}");
    for a in &authorities {
        let not_after = scrape.value(
            "writ_ca_authority_not_after_seconds",
            &[
                ("authority", a["id"].as_str().unwrap()),
                ("band", a["band"].as_str().unwrap()),
                ("state", a["state"].as_str().unwrap()),
                ("trust_domain", a["trust_domain"].as_str().unwrap()),
            ],
        );
        assert_eq!(not_after, a["not_after"].as_f64().unwrap(), "{a}");
    }
}

#[test]
fn a_bad_metrics_listen_is_a_configuration_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("writ.toml");
    std::fs::write(&config, "metrics_listen = \"nonsense\"\n").unwrap();
    for args in [
        vec!["--config", config.to_str().unwrap()],
        vec!["--metrics-listen", "localhost:9090"],
    ] {
        let out = std::process::Command::new(WRIT)
            .arg("dev")
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("metrics_listen") && stderr.contains("is not an ip:port"),
            "{args:?}: {stderr}"
        );
        // Refused before anything was made.
        assert!(!tmp.path().join("data").exists());
    }
}
