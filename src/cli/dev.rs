//! `writ dev`: the issuer in one process with embedded storage and a local admin socket.

use crate::agent::node::LocalNode;
use crate::agent::{Agent, serve_workload};
use crate::clock::SystemClock;
use crate::config::RawConfig;
use crate::server::{Issuer, bind_unix, serve_admin};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

/// Flags of `writ dev`; each overrides the config file.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Config file (TOML); optional.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the store, keys and sockets live [default: ./writ-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The Workload API socket [default: DATA_DIR/workload.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The admin socket [default: DATA_DIR/admin.sock].
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Base trust domain [default: example.org].
    #[arg(long)]
    trust_domain: Option<String>,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    if args.data_dir.is_some() {
        raw.data_dir = args.data_dir;
    }
    if args.socket.is_some() {
        raw.workload_socket = args.socket;
    }
    if args.admin_socket.is_some() {
        raw.admin_socket = args.admin_socket;
    }
    if args.trust_domain.is_some() {
        raw.trust_domain = args.trust_domain;
    }
    let config = raw.resolve()?;
    let issuer = Issuer::open(config, Arc::new(SystemClock))?;
    let listener = bind_unix(&issuer.config.admin_socket, 0o600).await?;
    let workload_listener = bind_unix(&issuer.config.workload_socket, 0o666).await?;
    let agent = Agent::new(Arc::new(LocalNode::new(Arc::clone(&issuer))));
    print_banner(&issuer);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };
    let rotation = tokio::spawn(Arc::clone(&issuer).run_rotation(wait_stop(stop_rx.clone())));
    let svids = tokio::spawn(Arc::clone(&agent).run_rotation(wait_stop(stop_rx.clone())));
    let workload = tokio::spawn(serve_workload(
        workload_listener,
        agent,
        wait_stop(stop_rx.clone()),
    ));
    let server = tokio::spawn(serve_admin(
        listener,
        Arc::clone(&issuer),
        wait_stop(stop_rx),
    ));

    shutdown_signal().await?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    server.await.context("admin server task")??;
    workload.await.context("Workload API task")??;
    let _ = rotation.await;
    let _ = svids.await;
    let _ = std::fs::remove_file(&issuer.config.admin_socket);
    let _ = std::fs::remove_file(&issuer.config.workload_socket);
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn print_banner(issuer: &Issuer) {
    let config = &issuer.config;
    let socket = std::path::absolute(&config.admin_socket).unwrap_or(config.admin_socket.clone());
    let workload =
        std::path::absolute(&config.workload_socket).unwrap_or(config.workload_socket.clone());
    println!("writ dev: issuer for {} is running", config.trust_domain);
    for ca in issuer.cas.iter() {
        println!(
            "  {:<14} {}",
            format!("{}:", ca.band()),
            ca.trust_domain().id_string()
        );
    }
    println!("  data dir:      {}", config.data_dir.display());
    println!("  admin socket:  {}", socket.display());
    println!("  Workload API:  {}", workload.display());
    println!();
    println!("In another shell:");
    println!("  export WRIT_ADMIN_SOCKET={}", socket.display());
    println!(
        "  export SPIFFE_ENDPOINT_SOCKET=unix://{}",
        workload.display()
    );
    println!("  writ profile create triage --selector unix:uid:$(id -u) --scope logs:read");
    println!("  writ incident open INC-1 --title 'db latency' --severity sev2 --assign triage");
    println!("  # any SPIFFE client run as this user now gets");
    println!(
        "  #   spiffe://investigate.{}/agent/triage/incident/INC-1",
        config.trust_domain
    );
    println!("  writ incident close INC-1    # ...and loses it at once");
    println!("Stop with Ctrl-C.");
}
