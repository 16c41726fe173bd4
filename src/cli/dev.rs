//! `writ dev`, `writ server` and `writ agent`: the long-running processes.
//!
//! `writ dev` is the issuer and an agent in one process (the agent talks to the issuer
//! directly); `writ server` is the issuer alone, serving remote agents over the node API;
//! `writ agent` attests to a server and serves the Workload API on its host.

use crate::agent::remote::RemoteNode;
use crate::agent::{Agent, serve_workload};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{RawAgentConfig, RawConfig};
use crate::metrics::Metrics;
use crate::node_api::NodeApi;
use crate::server::local_node::LocalNode;
use crate::server::node::NodeService;
use crate::server::tls::{
    AdminPeer, NodePeer, ServerIdentity, accept_tls, admin_server_config, server_config,
};
use crate::server::{Issuer, bind_unix, serve_admin};
use anyhow::Context;
use clap::Args;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
    /// Another operator: NAME=UID[:ROLE,ROLE] (roles: admin, incident-commander,
    /// approver, auditor; default approver). ROLE@TENANT holds it in one tenant only
    /// (docs/multi-tenant.md); a role without @ is the default tenant's. Repeatable.
    #[arg(long = "operator")]
    operators: Vec<crate::policy::Operator>,
    /// A demo on one machine as one user: that user may be an agent's workload and its
    /// approvers at once (profiles may select an operator's uid; an approval by the uid
    /// that requested a grant counts). Never for real use: it removes the separation
    /// between the agent and the humans who approve it.
    #[arg(long)]
    demo_single_user: bool,
    /// Serve Prometheus metrics on IP:PORT at /metrics (plain HTTP: loopback or a
    /// private interface; docs/metrics.md) [default: off].
    #[arg(long, value_name = "IP:PORT")]
    metrics_listen: Option<String>,
}

/// Flags of `writ server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
}

/// Flags of `writ agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Config file (TOML).
    #[arg(long)]
    config: PathBuf,
}

/// Background tasks and the signal that stops them.
struct Tasks {
    stop: watch::Sender<bool>,
    handles: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    /// How long the tasks may drain after the stop.
    grace: std::time::Duration,
}

impl Tasks {
    fn new(grace: std::time::Duration) -> Self {
        Tasks {
            stop: watch::channel(false).0,
            handles: Vec::new(),
            grace,
        }
    }

    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.handles.push((name, tokio::spawn(task)));
    }

    /// Waits for Ctrl-C/SIGTERM or the first task to fail, then stops and drains all, for
    /// at most the grace time; a second signal while draining exits at once.
    async fn run(mut self) -> anyhow::Result<()> {
        let mut signals = Signals::new()?;
        let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
        let mut watched = Vec::new();
        for (name, handle) in self.handles.drain(..) {
            let failed = failed_tx.clone();
            watched.push(tokio::spawn(async move {
                match handle.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let _ = failed.send(e.context(name)).await;
                    }
                    Err(e) => {
                        let _ = failed.send(anyhow::anyhow!("{name} panicked: {e}")).await;
                    }
                }
            }));
        }
        let outcome = tokio::select! {
            () = signals.next() => Ok(()),
            Some(e) = failed_rx.recv() => Err(e),
        };
        tracing::info!(grace = ?self.grace, "shutting down");
        let _ = self.stop.send(true);
        let drained = async {
            for w in watched {
                let _ = w.await;
            }
        };
        tokio::select! {
            () = drained => {}
            () = tokio::time::sleep(self.grace) => {
                tracing::warn!(grace = ?self.grace, "still draining after the grace time; exiting");
            }
            () = signals.next() => {
                tracing::warn!("second signal: exiting without draining");
                // What is durable is durable (every write commits before it answers);
                // nothing else is worth waiting for.
                std::process::exit(130);
            }
        }
        outcome
    }
}

/// SIGINT and SIGTERM, as one stream of "stop" requests.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Reads `writ dev`'s config file (if any), installs the logs it and the flags say, and
/// resolves the configuration with the flags.
fn resolve_dev(args: DevArgs, logs: &super::LogArgs) -> anyhow::Result<crate::config::Config> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    let format = logs.install(raw.log_format, raw.log_level.as_deref())?;
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
    if args.metrics_listen.is_some() {
        raw.metrics_listen = args.metrics_listen;
    }
    raw.operators.extend(args.operators);
    if args.demo_single_user {
        // Not a config key: only this flag, typed at start, turns it on.
        raw.remediation.demo_single_user = true;
        // Said first, whatever the level, as plain lines; in JSON, where every line on
        // stderr is an object, as warnings.
        for line in DEMO_WARNING {
            match format {
                crate::logging::LogFormat::Text => eprintln!("WARNING: {line}"),
                crate::logging::LogFormat::Json => tracing::warn!("WARNING: {line}"),
            }
        }
        tracing::warn!("--demo-single-user: approvals by the uid that requested a grant count");
    }
    raw.resolve()
}

/// What `writ dev --demo-single-user` says first, on stderr, whatever the log level.
const DEMO_WARNING: [&str; 3] = [
    "--demo-single-user: one user may be an agent's workload and every approver at once.",
    "Profiles may select operators' uids, and an approval by the uid that asked for a grant counts.",
    "That is a one-person demo, not a control: never run writ like this for real agents.",
];

/// Starts the issuer's own tasks: rotation, the admin API and, if configured, the
/// node API for remote agents.
async fn start_issuer(tasks: &mut Tasks, issuer: &Arc<Issuer>) -> anyhow::Result<()> {
    // Only the owner can reach the admin socket unless other operators are configured;
    // then the kernel-reported uid decides, per call, as on the Workload API socket.
    let mode = if issuer.config.operators.is_empty() {
        0o600
    } else {
        0o666
    };
    let admin = bind_unix(&issuer.config.admin_socket, mode).await?;
    let rotation = Arc::clone(issuer).run_rotation(tasks.stopped());
    tasks.spawn("CA rotation", async move {
        rotation.await;
        Ok(())
    });
    // Grant windows and incident lifetimes end on time, not only at the next request.
    let expiry = Arc::clone(issuer).run_expiry(tasks.stopped());
    tasks.spawn("grant and incident expiry", async move {
        expiry.await;
        Ok(())
    });
    // Approvers hear of grants where they work (docs/notifications.md).
    let notify = Arc::clone(issuer).run_notify(tasks.stopped());
    tasks.spawn("grant notifications", async move {
        notify.await;
        Ok(())
    });
    // With a shared store: the other servers' policy changes, and the lease to sign.
    let following = Arc::clone(issuer).follow_cluster(tasks.stopped());
    tasks.spawn("following the cluster's policy", async move {
        following.await;
        Ok(())
    });
    // With a shared store: certify admitted replicas' intermediates (the roots' holder),
    // or obtain and renew this replica's own.
    let signers = crate::server::signers::run(Arc::clone(issuer), tasks.stopped());
    tasks.spawn("replica intermediates", async move {
        signers.await;
        Ok(())
    });
    // grpc.health.v1 on every socket of the issuer's: NOT_SERVING until the CAs sign and
    // the store and audit log answer (a signing replica waits below for its
    // intermediates with the admin socket up, not serving).
    let health = crate::server::health::start(issuer, tasks.stopped()).await;
    {
        let (issuer, health, stopped) = (Arc::clone(issuer), health.clone(), tasks.stopped());
        tasks.spawn("admin API", serve_admin(admin, issuer, health, stopped));
    }
    let remote_admin = issuer
        .config
        .admin_listen
        .as_ref()
        .zip(issuer.config.operator_ca.as_ref());
    if issuer.config.admin_listen.is_some() != issuer.config.operator_ca.is_some() {
        anyhow::bail!(
            "admin_listen and operator_ca go together: remote admin needs operator certificates"
        );
    }
    if !issuer.cas.holds_roots() {
        // A signing replica's TLS identity comes from its own intermediate: wait (bounded)
        // for the root's holder to certify it; until then agents use other servers.
        crate::server::signers::await_intermediates(issuer, crate::server::signers::ADMISSION_WAIT)
            .await?;
        issuer.recheck_readiness();
    }
    let identity = if issuer.config.node_listen.is_some() || remote_admin.is_some() {
        let identity = ServerIdentity::new(Arc::clone(issuer))?;
        let renew = Arc::clone(&identity).run(tasks.stopped());
        tasks.spawn("server SVID renewal", async move {
            renew.await;
            Ok(())
        });
        Some(identity)
    } else {
        None
    };
    if let (Some((address, ca)), Some(identity)) = (remote_admin, &identity) {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the remote admin API on {address}"))?;
        let tls = admin_server_config(
            Arc::clone(identity),
            &crate::agent::remote::read_pem_certs(ca)?,
        )?;
        let service = crate::server::admin::server(Arc::clone(issuer))?;
        let services = [
            crate::proto::admin::admin_server::SERVICE_NAME,
            crate::reflection::HEALTH,
        ];
        let reflection = crate::reflection::v1(&services)?;
        let reflection_alpha = crate::reflection::v1alpha(&services)?;
        let health = health.service();
        let stopped = tasks.stopped();
        tasks.spawn("remote admin API", async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .add_service(health)
                .add_service(reflection)
                .add_service(reflection_alpha)
                .serve_with_incoming_shutdown(accept_tls(listener, tls, AdminPeer::of), stopped)
                .await
                .context("remote admin API server failed")
        });
    }
    if let Some(webhooks) = &issuer.config.webhooks {
        let listener = tokio::net::TcpListener::bind(&webhooks.listen)
            .await
            .with_context(|| format!("binding the webhook listener on {}", webhooks.listen))?;
        let tls = match &webhooks.tls {
            Some((cert, key)) => Some(crate::server::webhooks::tls_config(cert, key)?),
            None => None,
        };
        let hooks = crate::server::webhooks::Webhooks::new(Arc::clone(issuer), &webhooks.sources);
        let names: Vec<&str> = webhooks.sources.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(listen = %webhooks.listen, tls = tls.is_some(), sources = ?names, "serving incident source webhooks");
        let stopped = tasks.stopped();
        tasks.spawn(
            "incident source webhooks",
            crate::server::webhooks::serve(listener, tls, hooks, stopped),
        );
    }
    if let (Some(address), Some(identity)) = (&issuer.config.node_listen, identity) {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the node API on {address}"))?;
        let tls = server_config(issuer, Arc::clone(&identity))?;
        let roots = match &issuer.config.x509pop_ca {
            Some(path) => crate::agent::remote::read_pem_certs(path)?,
            None => Vec::new(),
        };
        let service = NodeService::new(Arc::clone(issuer), roots);
        let health = health.service();
        let stopped = tasks.stopped();
        tasks.spawn("node API", async move {
            tonic::transport::Server::builder()
                .trace_fn(crate::server::node::call_span)
                .add_service(crate::server::node::server(service))
                .add_service(health)
                .serve_with_incoming_shutdown(accept_tls(listener, tls, NodePeer::of), stopped)
                .await
                .context("node API server failed")
        });
    }
    Ok(())
}

/// Serves `metrics` on `listen`, if configured (docs/metrics.md); off by default.
async fn start_metrics(
    tasks: &mut Tasks,
    listen: Option<std::net::SocketAddr>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    let Some(address) = listen else {
        return Ok(());
    };
    let listener = crate::metrics::http::bind(address).await?;
    tasks.spawn(
        "metrics endpoint",
        crate::metrics::http::serve(listener, Arc::clone(metrics), tasks.stopped()),
    );
    Ok(())
}

/// Starts an agent's tasks: SVID rotation and the Workload API.
#[allow(clippy::too_many_arguments)]
async fn start_agent(
    tasks: &mut Tasks,
    node: Arc<dyn NodeApi>,
    listener: tokio::net::UnixListener,
    limits: crate::agent::listener::WorkloadApiConfig,
    k8s: Option<&crate::agent::k8s::K8sConfig>,
    clock: SharedClock,
    link: Option<tokio::sync::watch::Receiver<crate::agent::endpoints::NodeHealth>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let k8s = k8s.map(crate::agent::k8s::K8sAttestor::new).transpose()?;
    let agent = Agent::with_k8s(node, limits, k8s, clock, metrics);
    let rotation = Arc::clone(&agent.cache).run(link, tasks.stopped());
    tasks.spawn("SVID rotation", async move {
        rotation.await;
        Ok(())
    });
    tasks.spawn(
        "Workload API",
        serve_workload(listener, agent, tasks.stopped()),
    );
    Ok(())
}

pub async fn run(args: DevArgs, logs: super::LogArgs) -> anyhow::Result<()> {
    let config = resolve_dev(args, &logs)?;
    // The issuer and the agent in this process tell the same time.
    let clock: SharedClock = Arc::new(SystemClock);
    let issuer = Issuer::open(config, Arc::clone(&clock))?;
    let mut tasks = Tasks::new(issuer.config.shutdown_grace);
    // The Workload API socket is bound before the admin socket, so a script that waits
    // for the admin socket to answer finds the Workload API there too.
    let socket = issuer.config.workload_socket.clone();
    let workload = bind_unix(&socket, 0o666).await?;
    // Likewise the metrics endpoint, when configured.
    start_metrics(&mut tasks, issuer.config.metrics_listen, &issuer.metrics).await?;
    start_issuer(&mut tasks, &issuer).await?;
    // One process, one set of metrics: the agent counts into the issuer's.
    start_agent(
        &mut tasks,
        Arc::new(LocalNode::new(Arc::clone(&issuer))),
        workload,
        issuer.config.workload_api.clone(),
        issuer.config.k8s.as_ref(),
        clock,
        None,
        Arc::clone(&issuer.metrics),
    )
    .await?;
    print_banner(&issuer);
    let result = tasks.run().await;
    let _ = std::fs::remove_file(&issuer.config.admin_socket);
    let _ = std::fs::remove_file(&socket);
    result
}

pub async fn server(args: ServerArgs, logs: super::LogArgs) -> anyhow::Result<()> {
    let raw = RawConfig::load(&args.config)?;
    logs.install(raw.log_format, raw.log_level.as_deref())?;
    let config = raw.resolve()?;
    anyhow::ensure!(
        config.node_listen.is_some(),
        "node_listen is required for `writ server` (host:port for agents); use `writ dev` for one process"
    );
    let issuer = Issuer::open(config, Arc::new(SystemClock))?;
    let mut tasks = Tasks::new(issuer.config.shutdown_grace);
    // Bound before the admin socket, which is what scripts wait for.
    start_metrics(&mut tasks, issuer.config.metrics_listen, &issuer.metrics).await?;
    start_issuer(&mut tasks, &issuer).await?;
    println!(
        "writ server: {} serving agents on {} (admin socket {})",
        issuer.config.trust_domain,
        issuer.config.node_listen.as_deref().unwrap_or_default(),
        issuer.config.admin_socket.display()
    );
    let result = tasks.run().await;
    let _ = std::fs::remove_file(&issuer.config.admin_socket);
    result
}

pub async fn agent(args: AgentArgs, logs: super::LogArgs) -> anyhow::Result<()> {
    let raw = RawAgentConfig::load(&args.config)?;
    logs.install(raw.log_format, raw.log_level.as_deref())?;
    let config = raw.resolve()?;
    let socket = config.workload_socket;
    let clock: SharedClock = Arc::new(SystemClock);
    let node = RemoteNode::connect(config.remote, Arc::clone(&clock)).await?;
    let mut tasks = Tasks::new(config.shutdown_grace);
    // Bound before the Workload API socket, which is what scripts wait for.
    let metrics = Arc::new(Metrics::new());
    start_metrics(&mut tasks, config.metrics_listen, &metrics).await?;
    let listener = bind_unix(&socket, 0o666).await?;
    let link = Some(node.health());
    start_agent(
        &mut tasks,
        node,
        listener,
        config.workload_api,
        config.k8s.as_ref(),
        clock,
        link,
        metrics,
    )
    .await?;
    let shown = std::path::absolute(&socket).unwrap_or(socket.clone());
    println!("writ agent: Workload API on {}", shown.display());
    println!("  export SPIFFE_ENDPOINT_SOCKET=unix://{}", shown.display());
    let result = tasks.run().await;
    let _ = std::fs::remove_file(&socket);
    result
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
    if let Some(node) = &config.node_listen {
        println!("  node API:      {node}");
    }
    println!();
    println!("In another shell:");
    println!("  export WRIT_ADMIN_SOCKET={}", socket.display());
    println!(
        "  export SPIFFE_ENDPOINT_SOCKET=unix://{}",
        workload.display()
    );
    if config.remediation.demo_single_user {
        println!("  writ profile create triage --selector unix:uid:$(id -u) --scope logs:read");
    } else {
        // An operator's uid is never a workload's: the agent runs as its own user.
        println!("  writ profile create triage --selector unix:user:AGENT_USER --scope logs:read");
    }
    println!("  writ incident open INC-1 --title 'db latency' --severity sev2 --assign triage");
    println!("  # any SPIFFE client run as that user now gets");
    println!(
        "  #   spiffe://investigate.{}/agent/triage/incident/INC-1",
        config.trust_domain
    );
    println!("  writ incident close INC-1    # ...and loses it at once");
    println!("Stop with Ctrl-C.");
}
