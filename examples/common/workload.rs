//! The Workload API measured against a real `writ dev` (issues 3 and 4, issue 16 items 4
//! and 5): first-message latency at N clients, server memory per open stream, revocation
//! of N streams by an incident close, and a storm of incidents opened at once. Used by
//! `bench`. Included with `#[path = "common/workload.rs"] mod workload;` beside
//! `mod load;`.
//!
//! The tool's own uid is the workload (`writ dev --demo-single-user`); client and server
//! share the machine's cores. A measuring tool, not a service: a setup error fails loudly.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use super::load::{self, Client, Dev, Stream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use writ::proto::admin::{self as admin_pb, admin_client::AdminClient};

/// The incident whose identity the clients and streams fetch, and whose close revokes it.
pub const INCIDENT: &str = "LOAD-1";

/// A running `writ dev` whose Workload API serves this uid an identity of [`INCIDENT`].
pub struct Workload {
    pub dev: Dev,
    pub socket: PathBuf,
    pub admin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Workload {
    /// Starts `writ dev` (the binary `writ`) in a temp dir with room for `connections`
    /// Workload API connections from this uid, each given the longest handshake timeout
    /// (connecting 100,000 clients takes longer than the default 10 s before their first
    /// request; the tool measures writ, not those limits), opens [`INCIDENT`] for this
    /// uid's profile and warms the SVID cache.
    pub async fn start(writ: &Path, connections: usize) -> Workload {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let config = dir.path().join("writ.toml");
        let connections = connections.max(1024);
        std::fs::write(
            &config,
            format!(
                "[workload_api]\nmax_connections = {connections}\nmax_connections_per_uid = {connections}\nhandshake_timeout = \"5m\"\n"
            ),
        )
        .expect("write config");
        let dev = load::start_dev(writ, &data, &config).await;
        let admin = data.join("admin.sock");
        let socket = data.join("workload.sock");
        load::cli(
            writ,
            &admin,
            &[
                "incident",
                "open",
                INCIDENT,
                "--title",
                "load",
                "--severity",
                "sev3",
                "--assign",
                "load",
            ],
        );
        // The first fetch issues the SVID; every later one is served from the cache.
        load::connect(&socket)
            .await
            .fetch_x509svid(load::request())
            .await
            .expect("warm fetch")
            .into_inner()
            .next()
            .await;
        Workload {
            dev,
            socket,
            admin,
            _dir: dir,
        }
    }

    /// The server's resident set, KiB.
    pub fn rss_kib(&self) -> u64 {
        load::rss_kib(self.dev.0.id())
    }

    /// A client of the admin API.
    pub async fn admin(&self) -> AdminClient<tonic::transport::Channel> {
        AdminClient::new(writ::uds::channel(&self.admin).await.expect("admin socket"))
    }
}

/// A client on its own connection to `socket`, and how many connects were tried again.
/// A connect refused for a full listen backlog (`EAGAIN` on a Unix socket, while the
/// server is busy accepting thousands) is tried again, for up to 10 s.
async fn connect_patiently(socket: &Path) -> (Client, usize) {
    let mut tries = 0;
    loop {
        match writ::uds::channel(socket).await {
            Ok(channel) => return (Client::new(channel), tries),
            Err(_) if tries < 1000 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

/// `n` Workload API clients, each on its own connection (opened 64 at a time).
pub async fn clients(socket: &Path, n: usize) -> Vec<Client> {
    let mut conns = Vec::with_capacity(n);
    let mut retried = 0;
    while conns.len() < n {
        let batch: Vec<_> = (conns.len()..n.min(conns.len() + 64))
            .map(|_| {
                let socket = socket.to_owned();
                tokio::spawn(async move { connect_patiently(&socket).await })
            })
            .collect();
        for t in batch {
            let (client, tries) = t.await.expect("connect");
            conns.push(client);
            retried += tries;
        }
    }
    if retried > 0 {
        eprintln!("  {retried} connects tried again (the server's listen backlog was full)");
    }
    conns
}

/// FetchX509SVID first-message latency of every client in `conns`, each asking once at a
/// random moment within `spread` after they are all ready (zero: all at the same instant,
/// a burst), sorted.
pub async fn first_message(conns: &[Client], spread: Duration) -> Vec<Duration> {
    let start = Arc::new(tokio::sync::Barrier::new(conns.len()));
    let spread_ms = spread.as_millis() as u64;
    let tasks: Vec<_> = conns
        .iter()
        .map(|client| {
            let mut client = client.clone();
            let start = Arc::clone(&start);
            let delay = match spread_ms {
                0 => 0,
                ms => rand::random::<u64>() % ms,
            };
            tokio::spawn(async move {
                start.wait().await;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let t0 = Instant::now();
                let mut stream = client
                    .fetch_x509svid(load::request())
                    .await
                    .expect("fetch")
                    .into_inner();
                stream.next().await.expect("first message").expect("ok");
                t0.elapsed()
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(conns.len());
    for t in tasks {
        latencies.push(t.await.expect("task"));
    }
    latencies.sort();
    latencies
}

/// Streams held open, and what they cost the server.
pub struct Held {
    /// Their connections: the streams live as long as these.
    pub conns: Vec<Client>,
    pub streams: Vec<Stream>,
    /// The server's RSS growth divided by the streams.
    pub kib_per_stream: f64,
}

/// Opens `streams` FetchX509SVID streams, `per_conn` to a connection, and measures the
/// server's memory per stream (VmRSS before and after, each once the server settled).
pub async fn hold(workload: &Workload, streams: usize, per_conn: usize) -> Held {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = workload.rss_kib();
    let (conns, held) = load::hold_streams(&workload.socket, streams, per_conn).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = workload.rss_kib();
    Held {
        conns,
        streams: held,
        kib_per_stream: after.saturating_sub(before) as f64 / streams.max(1) as f64,
    }
}

/// An incident close and its streams' redactions.
pub struct Revocation {
    /// How long the CloseIncident RPC took.
    pub close: Duration,
    /// When each stream had its redaction, after the close returned (zero: before), sorted.
    pub from_return: Vec<Duration>,
    /// The same, after the close started, sorted.
    pub from_start: Vec<Duration>,
    /// How many streams ended with their PermissionDenied.
    pub redacted: usize,
}

/// Closes [`INCIDENT`] by the admin API while `held` streams hold its identity, and
/// waits until every one of them has ended.
pub async fn revoke(workload: &Workload, held: Held) -> Revocation {
    let Held { conns, streams, .. } = held;
    let ends = load::watch_redactions(streams);
    let mut admin = workload.admin().await;
    let invoked = Instant::now();
    admin
        .close_incident(admin_pb::CloseIncidentRequest {
            id: INCIDENT.into(),
        })
        .await
        .expect("close");
    let returned = Instant::now();
    let (mut from_return, mut from_start, redacted) = ends.collect(invoked, returned).await;
    drop(conns);
    from_return.sort();
    from_start.sort();
    Revocation {
        close: returned - invoked,
        from_return,
        from_start,
        redacted,
    }
}

/// A storm's two times, from the first open's start.
pub struct Storm {
    /// Until every OpenIncident RPC had returned.
    pub opened: Duration,
    /// Until the workload's stream held every storm incident's SVID (and its first one's).
    pub held: Duration,
}

/// Opens `n` incidents at once (concurrent OpenIncident RPCs), all assigned to this
/// uid's profile, after a first one whose stream the workload watches; times until its
/// stream holds all `n + 1` SVIDs. It leaves `n + 1` incidents open.
pub async fn storm(workload: &Workload, n: usize) -> Storm {
    let admin = workload.admin().await;
    let open = |i: usize| admin_pb::OpenIncidentRequest {
        id: format!("STORM-{i}"),
        title: "storm".into(),
        severity: "sev3".into(),
        assigned: vec!["load".into()],
        scopes: vec![],
        max_lifetime_seconds: None,
    };
    admin.clone().open_incident(open(0)).await.expect("open");
    let mut stream = load::connect(&workload.socket)
        .await
        .fetch_x509svid(load::request())
        .await
        .expect("stream")
        .into_inner();
    // What it holds before the storm: STORM-0's SVID, and INCIDENT's unless it was closed.
    let before = stream.next().await.expect("first").expect("ok").svids.len();
    let started = Instant::now();
    let opens: Vec<_> = (1..=n)
        .map(|i| {
            let mut admin = admin.clone();
            let req = open(i);
            tokio::spawn(async move { admin.open_incident(req).await.map(|_| ()) })
        })
        .collect();
    let waiter = tokio::spawn(async move {
        loop {
            match stream.next().await {
                Some(Ok(message)) if message.svids.len() >= before + n => {
                    return Some(Instant::now());
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    });
    for o in opens {
        o.await.expect("task").expect("open incident");
    }
    let opened = started.elapsed();
    let held = waiter.await.expect("waiter").expect("stream ended");
    Storm {
        opened,
        held: held - started,
    }
}
