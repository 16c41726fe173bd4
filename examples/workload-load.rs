//! Load tool for the Workload API (issue 3's benchmarks). Starts `writ dev` in a temp
//! dir, gives this uid a profile and an open incident, then measures:
//!
//! 1. FetchX509SVID first-message latency with N concurrent clients (cache warm);
//! 2. server memory per open FetchX509SVID stream (VmRSS of the `writ dev` process);
//! 3. time from `writ incident close` returning until every affected stream has its
//!    redaction (the stream's PermissionDenied);
//! 4. a storm of N incidents opened at once for one workload: time until its stream
//!    holds all N SVIDs.
//!
//! `cargo build --release --bin writ --example workload-load &&
//!  target/release/examples/workload-load --writ target/release/writ`
//!
//! Flags: --clients N (default 1000), --streams N (10000), --per-conn N (64, the agent's
//! most streams per connection), --storm N (1000).

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

#[path = "common/load.rs"]
mod load;
use load::{
    arg, cli, connect, hold_streams, report, request, start_dev, watch_redactions, writ_bin,
};

async fn admin_client(
    socket: &Path,
) -> writ::proto::admin::admin_client::AdminClient<tonic::transport::Channel> {
    writ::proto::admin::admin_client::AdminClient::new(
        writ::uds::channel(socket).await.expect("connect admin"),
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let clients = arg("--clients", 1000);
    let streams = arg("--streams", 10_000);
    let per_conn = arg("--per-conn", 64).clamp(1, 64);
    let storm = arg("--storm", 1000);
    let writ = writ_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let admin = data.join("admin.sock");
    let socket = data.join("workload.sock");
    // The connections one uid may hold are raised so that 10,000 streams (157
    // connections of 64) fit: the tool measures writ, not that limit.
    let config = dir.path().join("writ.toml");
    std::fs::write(
        &config,
        "[workload_api]\nmax_connections = 4096\nmax_connections_per_uid = 4096\n",
    )
    .expect("write config");
    let dev = start_dev(&writ, &data, &config).await;
    let pid = dev.0.id();
    cli(
        &writ,
        &admin,
        &[
            "incident",
            "open",
            "LOAD-1",
            "--title",
            "load",
            "--severity",
            "sev3",
            "--assign",
            "load",
        ],
    );

    // Warm the cache: the first fetch issues the SVID.
    let warm = connect(&socket).await;
    warm.clone()
        .fetch_x509svid(request())
        .await
        .expect("warm fetch")
        .into_inner()
        .next()
        .await;
    println!("writ dev pid {pid}; clients={clients} streams={streams} per_conn={per_conn}");

    // 1. First-message latency with N clients, each on its own connection: once all
    //    at the same instant (a burst: mostly queueing on 2 cores), then each at a
    //    random moment within one second (N requests/s from N connected clients).
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(connect(&socket).await);
    }
    for (label, spread_ms) in [("burst: all at once", 0u64), ("spread over 1 s", 1000)] {
        let start = Arc::new(tokio::sync::Barrier::new(clients));
        let mut tasks = Vec::with_capacity(clients);
        for client in &conns {
            let mut client = client.clone();
            let start = Arc::clone(&start);
            let delay = if spread_ms == 0 {
                0
            } else {
                rand::random::<u64>() % spread_ms
            };
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let t0 = Instant::now();
                let mut stream = client
                    .fetch_x509svid(request())
                    .await
                    .expect("fetch")
                    .into_inner();
                stream.next().await.expect("first message").expect("ok");
                t0.elapsed()
            }));
        }
        let mut latencies = Vec::with_capacity(clients);
        for t in tasks {
            latencies.push(t.await.expect("task"));
        }
        report(
            &format!("first-message latency, {clients} clients, {label}"),
            latencies,
        );
    }
    drop(conns);

    // 2. Memory per open stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    // Held open to the end, as the streams are.
    let (_conns, held) = hold_streams(&socket, streams, per_conn).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    println!(
        "server RSS: {before} KiB before, {after} KiB with {streams} streams: {:.1} KiB per stream",
        (after.saturating_sub(before)) as f64 / streams as f64
    );

    // 3. Redaction: close the incident; every stream must end with PermissionDenied.
    let ends = watch_redactions(held);
    let mut admin_client = admin_client(&admin).await;
    let invoked = Instant::now();
    admin_client
        .close_incident(writ::proto::admin::CloseIncidentRequest {
            id: "LOAD-1".into(),
        })
        .await
        .expect("close");
    let returned = Instant::now();
    let (from_return, from_invoke, redacted) = ends.collect(invoked, returned).await;
    println!(
        "CloseIncident RPC took {:.1} ms; {redacted}/{streams} streams redacted",
        returned.duration_since(invoked).as_secs_f64() * 1e3
    );
    report(
        "redaction, from the close RPC's return (0: before it returned)",
        from_return,
    );
    report("redaction, from the close RPC's start", from_invoke);

    // 4. Storm: N incidents opened at once, all assigned to this workload's profile.
    let client = connect(&socket).await;
    let mut watch = client.clone();
    let open = |i: usize| writ::proto::admin::OpenIncidentRequest {
        id: format!("STORM-{i}"),
        title: "storm".into(),
        severity: "sev3".into(),
        assigned: vec!["load".into()],
        scopes: vec![],
        max_lifetime_seconds: None,
    };
    // A first incident so the workload has a stream to watch.
    admin_client.open_incident(open(0)).await.expect("open");
    let mut stream = watch
        .fetch_x509svid(request())
        .await
        .expect("stream")
        .into_inner();
    stream.next().await.expect("first").expect("ok");
    let started = Instant::now();
    let mut opens = Vec::with_capacity(storm);
    for i in 1..=storm {
        let mut admin = admin_client.clone();
        let req = open(i);
        opens.push(tokio::spawn(async move {
            admin.open_incident(req).await.map(|_| ())
        }));
    }
    let mut all_open = None;
    let waiter = tokio::spawn(async move {
        loop {
            match stream.next().await {
                Some(Ok(message)) if message.svids.len() > storm => return Some(Instant::now()),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    });
    for o in opens {
        o.await.expect("task").expect("open incident");
    }
    all_open.get_or_insert(Instant::now());
    let held = waiter.await.expect("waiter").expect("stream ended");
    println!(
        "storm: {storm} incidents opened concurrently in {:.0} ms; the workload held all {} SVIDs after {:.0} ms",
        all_open
            .map(|t| t.duration_since(started).as_secs_f64() * 1e3)
            .unwrap_or(0.0),
        storm + 1,
        held.duration_since(started).as_secs_f64() * 1e3
    );
}
