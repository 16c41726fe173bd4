//! Load tool for incident source webhooks (issue 14's benchmark). Starts `writ dev` in a
//! temp dir with a PagerDuty source on loopback HTTP, gives this uid a profile, then
//! measures:
//!
//! 1. a PagerDuty resolve posted to the webhook: from its HTTP answer (and from its
//!    start) until each of N Workload API streams holding the incident's identity has
//!    its redaction (the stream's PermissionDenied); the same goal as a CLI close;
//! 2. webhooks/s sustained with signature checks, by S senders on keep-alive
//!    connections: trigger and resolve pairs of distinct incidents (each a durable,
//!    audited change), then deliveries with a wrong signature (refused with 401, nothing
//!    written).
//!
//! `cargo build --release --bin writ --example webhook-load &&
//!  target/release/examples/webhook-load --writ target/release/writ`
//!
//! Flags: --streams N (default 10000), --per-conn N (64, the agent's most per connection),
//! --senders S (8), --secs T (5).

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "common/load.rs"]
mod load;
use load::{arg, hold_streams, report, start_dev, watch_redactions, writ_bin};

const SECRET: &str = "webhook-load-secret";

/// A PagerDuty v3 delivery, in its documented shape.
fn delivery(event_id: &str, event_type: &str, incident: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"event": {
        "id": event_id,
        "event_type": event_type,
        "resource_type": "incident",
        "occurred_at": "2026-12-06T10:00:00.000Z",
        "data": {
            "id": incident,
            "type": "incident",
            "html_url": format!("https://acme.pagerduty.com/incidents/{incident}"),
            "title": "load",
            "urgency": "high",
            "service": {"id": "PLOAD", "type": "service_reference"}
        }
    }}))
    .unwrap()
}

fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mac = ring::hmac::sign(&key, body);
    let hex: String = mac.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// One keep-alive HTTP/1.1 connection to the webhook listener.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(address: &str) -> Http {
        let stream = TcpStream::connect(address).await.expect("connect webhook");
        stream.set_nodelay(true).unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    }

    /// Posts `body` signed with `secret`; the answer's status and body.
    async fn post(&mut self, secret: &str, body: &[u8]) -> (u16, String) {
        let head = format!(
            "POST /webhooks/pagerduty HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             x-pagerduty-signature: {}\r\ncontent-length: {}\r\n\r\n",
            signature(secret, body),
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await.expect("send");
        // Headers, then exactly content-length bytes of body.
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&self.buf[end..end + length]).into_owned();
        self.buf.drain(..end + length);
        (status, body)
    }
}

/// `senders` connections posting `next(sender, n)` for `secs` seconds: how many
/// answers each status got, and the latencies.
async fn sustain(
    address: &str,
    senders: usize,
    secs: u64,
    secret: &'static str,
    next: fn(usize, usize) -> Vec<u8>,
) -> (usize, Vec<(u16, usize)>, Vec<Duration>) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for sender in 0..senders {
        let address = address.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut http = Http::connect(&address).await;
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            let mut latencies = Vec::new();
            let mut n = 0;
            while Instant::now() < until {
                let body = next(sender, n);
                let t0 = Instant::now();
                let (status, _) = http.post(secret, &body).await;
                latencies.push(t0.elapsed());
                *statuses.entry(status).or_default() += 1;
                n += 1;
            }
            (statuses, latencies)
        }));
    }
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut latencies = Vec::new();
    for t in tasks {
        let (s, l) = t.await.expect("sender");
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
        latencies.extend(l);
    }
    (latencies.len(), statuses.into_iter().collect(), latencies)
}

#[tokio::main]
async fn main() {
    let streams = arg("--streams", 10_000);
    // The agent serves at most 64 streams on one connection.
    let per_conn = arg("--per-conn", 64).clamp(1, 64);
    let senders = arg("--senders", 8).max(1);
    let secs = arg("--secs", 5) as u64;
    let writ = writ_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let socket = data.join("workload.sock");
    let secret = dir.path().join("pd.secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let config = dir.path().join("writ.toml");
    // The change rate (a tenant's guard against a runaway caller, docs/multi-tenant.md)
    // and the connections one uid may hold are raised so the tool measures writ, not
    // its limits.
    std::fs::write(
        &config,
        format!(
            "webhook_listen = \"{address}\"\n\
             [tenant_limits]\nchanges_per_second = 1000000\nchange_burst = 1000000\n\
             [workload_api]\nmax_connections = 4096\nmax_connections_per_uid = 4096\n\
             [[incident_source]]\nname = \"pd\"\nkind = \"pagerduty\"\npath = \"/webhooks/pagerduty\"\n\
             secret_file = {:?}\nassign = [\"load\"]\n",
            secret.display()
        ),
    )
    .unwrap();
    let _dev = start_dev(&writ, &data, &config).await;

    // 1. Redaction after a webhook resolve.
    eprintln!("writ dev up; triggering");
    let mut http = Http::connect(&address).await;
    let (status, body) = http
        .post(SECRET, &delivery("E-OPEN", "incident.triggered", "QLOAD"))
        .await;
    assert_eq!(status, 200, "{body}");
    eprintln!("opened: {body}; opening {streams} streams");
    let (conns, held) = hold_streams(&socket, streams, per_conn).await;
    eprintln!("{streams} streams hold the identity; resolving");
    let ends = watch_redactions(held);
    let invoked = Instant::now();
    let (status, body) = http
        .post(SECRET, &delivery("E-CLOSE", "incident.resolved", "QLOAD"))
        .await;
    let returned = Instant::now();
    assert_eq!(status, 200, "{body}");
    let (from_return, from_invoke, redacted) = ends.collect(invoked, returned).await;
    println!(
        "webhook resolve answered in {:.1} ms ({body}); {redacted}/{streams} streams redacted",
        returned.duration_since(invoked).as_secs_f64() * 1e3
    );
    report(
        "redaction, from the webhook's answer (0: before it was answered)",
        from_return,
    );
    report("redaction, from the webhook's start", from_invoke);
    drop(conns);

    // 2. Sustained webhooks: trigger/resolve pairs of distinct incidents, then
    //    deliveries with a wrong signature.
    let (n, statuses, latencies) = sustain(&address, senders, secs, SECRET, |sender, n| {
        let incident = format!("Q{sender}X{}", n / 2);
        let (kind, id) = match n % 2 {
            0 => ("incident.triggered", format!("T-{incident}")),
            _ => ("incident.resolved", format!("R-{incident}")),
        };
        delivery(&id, kind, &incident)
    })
    .await;
    println!(
        "signed trigger/resolve deliveries, {senders} senders, {secs} s: {:.0}/s; answers {statuses:?}",
        n as f64 / secs as f64
    );
    report("  per delivery", latencies);
    let (n, statuses, latencies) =
        sustain(&address, senders, secs, "not-the-secret", |sender, n| {
            delivery(&format!("B-{sender}-{n}"), "incident.triggered", "QBAD")
        })
        .await;
    println!(
        "wrong-signature deliveries, {senders} senders, {secs} s: {:.0}/s; answers {statuses:?}",
        n as f64 / secs as f64
    );
    report("  per delivery", latencies);
}
