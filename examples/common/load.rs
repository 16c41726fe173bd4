//! What the load examples share: reading their flags, running the `writ` binary under
//! test, percentiles of latencies, and the requests they send. Included by each with
//! `#[path = "common/load.rs"] mod load;` (a folder without a `main.rs` is not an
//! example target of its own).
//!
//! Measuring tools, not services: a setup error fails loudly. Each example uses a
//! different subset, hence the `dead_code` allowance.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use writ::proto::workload::{self as pb, spiffe_workload_api_client::SpiffeWorkloadApiClient};

/// An open FetchX509SVID stream.
pub type Stream = tonic::Streaming<pb::X509svidResponse>;

/// The command line, the program's name first.
pub fn args() -> Vec<String> {
    std::env::args().collect()
}

/// The value after `name`, if it is given.
pub fn value(name: &str) -> Option<String> {
    let args = args();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The number after `name`; `default` when it is missing or not a number.
pub fn arg(name: &str, default: usize) -> usize {
    value(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The number after `name`; `default` when it is missing, and a value that is not a
/// number stops the tool.
pub fn arg_checked(name: &str, default: usize) -> usize {
    value(name).map_or(default, |v| v.parse().expect(name))
}

/// Whether `name` is on the command line.
pub fn flag(name: &str) -> bool {
    args().iter().any(|a| a == name)
}

/// The `writ` binary under test: `--writ PATH`, or the release build's.
pub fn writ_bin() -> PathBuf {
    value("--writ").map_or_else(|| PathBuf::from("target/release/writ"), PathBuf::from)
}

/// The resident set of process `pid`, KiB (zero if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises this process's open-file limit to at least `want` (the children it starts, a
/// `writ dev` among them, inherit it): the hard limit too where allowed (as root), else
/// the soft limit to the hard one. Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let current = now.current.unwrap_or(u64::MAX);
    if current >= want {
        return current;
    }
    let raised = Rlimit {
        current: Some(want),
        maximum: Some(now.maximum.map_or(want, |m| m.max(want))),
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A loopback port nothing listens on right now (the listener is dropped at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A `writ dev` (or any child) killed and reaped when dropped.
pub struct Dev(pub Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `writ dev --demo-single-user` on `data` with `config`, waits for its Workload
/// API and admin sockets (`workload.sock`, `admin.sock` in `data`), and gives this tool's
/// uid the profile `load`: with `--demo-single-user` the tool's own uid (root, often) is
/// the workload measured.
pub async fn start_dev(writ: &Path, data: &Path, config: &Path) -> Dev {
    let admin = data.join("admin.sock");
    let socket = data.join("workload.sock");
    let child = Command::new(writ)
        .args(["dev", "--demo-single-user", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start writ dev");
    let dev = Dev(child);
    for _ in 0..200 {
        if socket.exists() && admin.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        })
        .expect("uid");
    cli(
        writ,
        &admin,
        &[
            "profile",
            "create",
            "load",
            "--selector",
            &format!("unix:uid:{uid}"),
        ],
    );
    dev
}

/// Runs `writ ARGS` against the admin socket `admin`; a failure stops the tool.
pub fn cli(writ: &Path, admin: &Path, args: &[&str]) {
    let out = Command::new(writ)
        .args(args)
        .env("WRIT_ADMIN_SOCKET", admin)
        .output()
        .expect("run writ");
    assert!(
        out.status.success(),
        "writ {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `p` quantile (0 to 1, nearest rank) of `sorted`; zero for no samples.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints `name: n=… p50=… p99=… max=…` (milliseconds) of `samples`.
pub fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

/// A FetchX509SVID request, with the header the Workload API requires.
pub fn request() -> tonic::Request<pb::X509svidRequest> {
    let mut request = tonic::Request::new(pb::X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("header"));
    request
}

/// A CSR as an agent sends it, for a fresh key (the server sets the SPIFFE ID).
pub fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).expect("csr").der().to_vec()
}

/// A Workload API client on one connection.
pub type Client = SpiffeWorkloadApiClient<tonic::transport::Channel>;

/// A client of the Workload API at `socket`, on its own connection.
pub async fn connect(socket: &Path) -> Client {
    SpiffeWorkloadApiClient::new(writ::uds::channel(socket).await.expect("connect"))
}

/// Opens `streams` FetchX509SVID streams on the Workload API at `socket`, `per_conn` to a
/// connection; returns the connections (the caller says how long they live) and the
/// streams, once each has its first message.
pub async fn hold_streams(
    socket: &Path,
    streams: usize,
    per_conn: usize,
) -> (Vec<Client>, Vec<Stream>) {
    let conns_needed = streams.div_ceil(per_conn);
    let mut conns = Vec::with_capacity(conns_needed);
    for _ in 0..conns_needed {
        conns.push(connect(socket).await);
    }
    let mut open = Vec::with_capacity(streams);
    for i in 0..streams {
        let mut client = conns[i / per_conn].clone();
        open.push(tokio::spawn(async move {
            let mut stream = client
                .fetch_x509svid(request())
                .await
                .expect("stream")
                .into_inner();
            stream.next().await.expect("first").expect("ok");
            stream
        }));
    }
    let mut held = Vec::with_capacity(streams);
    for t in open {
        held.push(t.await.expect("open"));
    }
    (conns, held)
}

/// How held streams ended: when each did, and whether with its redaction (the stream's
/// PermissionDenied).
pub struct Redactions(tokio::sync::mpsc::UnboundedReceiver<(Instant, bool)>);

/// Watches every stream of `held` for its end, from now on.
pub fn watch_redactions(held: Vec<Stream>) -> Redactions {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for mut stream in held {
        let tx = tx.clone();
        tokio::spawn(async move {
            let outcome = stream.next().await;
            let redacted =
                matches!(outcome, Some(Err(ref s)) if s.code() == tonic::Code::PermissionDenied);
            let _ = tx.send((Instant::now(), redacted));
        });
    }
    Redactions(rx)
}

impl Redactions {
    /// Waits for every stream to end, for a revocation started at `invoked` that returned
    /// at `returned`: each end's time after `returned` (zero if before it) and after
    /// `invoked`, and how many ends were redactions.
    pub async fn collect(
        mut self,
        invoked: Instant,
        returned: Instant,
    ) -> (Vec<Duration>, Vec<Duration>, usize) {
        let mut from_return = Vec::new();
        let mut from_invoke = Vec::new();
        let mut redacted = 0;
        while let Some((at, ok)) = self.0.recv().await {
            redacted += usize::from(ok);
            from_return.push(at.saturating_duration_since(returned));
            from_invoke.push(at.saturating_duration_since(invoked));
        }
        (from_return, from_invoke, redacted)
    }
}

/// An open incident of `tenant` assigned to the `triage` profile, with `scopes`.
pub fn incident(tenant: &str, id: &str, scopes: &[&str], now: i64) -> writ::policy::Incident {
    writ::policy::Incident {
        tenant: tenant.into(),
        id: id.into(),
        title: "checkout returns 500 for a fifth of requests".into(),
        severity: writ::policy::Severity::Sev2,
        assigned: std::collections::BTreeSet::from(["triage".to_owned()]),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        state: writ::policy::IncidentState::Open,
        opened_by: "alice".into(),
        opened_at: now,
        closed_by: None,
        closed_at: None,
        max_lifetime_secs: 86_400,
        source: None,
    }
}

/// The default tenant's `triage` profile: uid 1001, investigative, logs and metrics.
pub fn triage_profile(now: i64) -> writ::policy::Profile {
    writ::policy::Profile {
        tenant: "default".into(),
        name: "triage".into(),
        selectors: std::collections::BTreeSet::from(["unix:uid:1001".parse().expect("selector")]),
        bands: std::collections::BTreeSet::from([writ::Band::Investigative]),
        scopes: std::collections::BTreeSet::from([
            "logs:read".to_owned(),
            "metrics:read".to_owned(),
        ]),
        service: false,
        created_at: now,
    }
}
