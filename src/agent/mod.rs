//! The writ agent: serves the SPIFFE Workload API on a Unix socket, attests callers,
//! holds workload keys and rotates SVIDs.
//!
//! Must never: send a workload's private key anywhere, hand out a certificate it has not
//! verified, or identify a caller from anything but the kernel's socket credentials.

pub mod attest;
pub mod cache;
pub mod endpoints;
pub mod grants;
pub mod k8s;
pub mod listener;
pub mod propagation;
pub mod remote;
pub mod reported;
pub mod revocation;
pub mod workload;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::node_api::NodeApi;
use crate::proto::revocation::revocation_server::RevocationServer;
use crate::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use anyhow::Context;
use attest::Attestor;
use cache::SvidCache;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::future::Future;
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::watch;

/// The agent's state, shared by every Workload API call.
pub struct Agent {
    /// The server, in process or remote.
    pub node: Arc<dyn NodeApi>,
    /// Workload attestation.
    pub attestor: Attestor,
    /// Kubernetes workload attestation, when `[k8s]` is configured.
    pub k8s: Option<k8s::K8sAttestor>,
    /// Workload SVIDs.
    pub cache: Arc<SvidCache>,
    /// Open Workload API streams (for metrics and tests).
    pub streams: watch::Sender<usize>,
    /// How often the `:authority` adapter rewrote a header or fell back.
    pub authority_stats: Arc<crate::h2_authority::Stats>,
    /// Which (workload, SPIFFE ID) pairs are in the audit log already, from this agent.
    pub reported: Arc<reported::Reported>,
    /// Limits of the Workload API socket.
    pub workload_api: listener::WorkloadApiConfig,
    /// Open Workload API connections, in all and per uid.
    pub connections: Arc<listener::Connections>,
    /// The open-files limit in force (raised to the hard limit at start).
    pub nofile_limit: u64,
    /// Set when the agent stops: open streams end with a status clients retry on.
    pub stopping: watch::Sender<bool>,
    /// Throttles the log line of a failed workload attestation (a caller can repeat it).
    pub attest_failures: crate::throttle::Throttle,
    /// Wall-clock time, for every renewal, expiry and validation decision the agent makes.
    pub clock: SharedClock,
    /// This process's metrics (docs/metrics.md).
    pub metrics: Arc<Metrics>,
    /// The policy changes streams woke to, for the revocation propagation histogram.
    pub changes: propagation::PolicyChanges,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent that signs through `node` and tells time by `clock`, with the default
    /// Workload API limits.
    pub fn new(node: Arc<dyn NodeApi>, clock: SharedClock) -> Arc<Self> {
        Self::with_config(node, listener::WorkloadApiConfig::default(), clock)
    }

    /// An agent that signs through `node`, serves the Workload API within `limits` and
    /// tells time by `clock`. Raises the process's soft open-files limit to the hard one,
    /// as servers holding many client connections do.
    pub fn with_config(
        node: Arc<dyn NodeApi>,
        limits: listener::WorkloadApiConfig,
        clock: SharedClock,
    ) -> Arc<Self> {
        Self::with_k8s(node, limits, None, clock, Arc::new(Metrics::new()))
    }

    /// As [`Agent::with_config`], attesting callers' pods with `k8s` too, counting into
    /// `metrics` (the process's: `writ dev` shares them with its issuer).
    pub fn with_k8s(
        node: Arc<dyn NodeApi>,
        limits: listener::WorkloadApiConfig,
        k8s: Option<k8s::K8sAttestor>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let nofile_limit = writ_sys::raise_nofile_limit().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the open-files limit failed; assuming 1024");
            1024
        });
        let agent = Arc::new(Agent {
            cache: Arc::new(SvidCache::new(Arc::clone(&node), Arc::clone(&clock))),
            node,
            attestor: Attestor::new("/proc", limits.max_exe_hash_bytes),
            k8s,
            streams: watch::channel(0).0,
            authority_stats: Arc::new(crate::h2_authority::Stats::default()),
            reported: Arc::new(reported::Reported::default()),
            workload_api: limits,
            connections: Arc::default(),
            nofile_limit,
            stopping: watch::channel(false).0,
            attest_failures: crate::throttle::Throttle::new(std::time::Duration::from_secs(10)),
            clock,
            metrics,
            changes: propagation::PolicyChanges::default(),
        });
        agent
            .metrics
            .register_collector(Box::new(WorkloadApiGauges {
                streams: agent.streams.subscribe(),
                connections: Arc::clone(&agent.connections),
            }));
        agent
    }

    /// Resolves once the agent is stopping.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    }

    /// Renews and prunes SVIDs until `shutdown` resolves.
    pub async fn run_rotation(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        Arc::clone(&self.cache).run(None, shutdown).await;
    }

    /// As [`Agent::run_rotation`], for an agent of remote servers: renews early each time
    /// `link` says it reconnected after being cut off.
    pub async fn run_rotation_following(
        self: Arc<Self>,
        link: watch::Receiver<endpoints::NodeHealth>,
        shutdown: impl Future<Output = ()>,
    ) {
        Arc::clone(&self.cache).run(Some(link), shutdown).await;
    }
}

/// The Workload API's open connections and streams, read at scrape time from the counts
/// the listener and the streams keep anyway.
#[derive(Debug)]
struct WorkloadApiGauges {
    streams: watch::Receiver<usize>,
    connections: Arc<listener::Connections>,
}

impl Collector for WorkloadApiGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        crate::metrics::encode_gauge(
            &mut encoder,
            "writ_workload_api_connections",
            "Open Workload API connections",
            count(self.connections.total()),
        )?;
        crate::metrics::encode_gauge(
            &mut encoder,
            "writ_workload_api_streams",
            "Open Workload API streams",
            count(*self.streams.borrow()),
        )
    }
}

/// Serves the Workload API on `listener` until `shutdown` resolves.
///
/// Connections come through [`listener::accept`] (limits, handshake timeout, accept-time
/// attestation), each wrapped in [`crate::h2_authority::AuthorityRewrite`], so that grpc
/// C-core clients (py-spiffe), which send the socket path as a percent-encoded
/// `:authority` that h2 refuses, work unchanged (hyperium/h2 issue 487). When `shutdown`
/// resolves, open streams end with `Unavailable` (clients retry on it elsewhere) and
/// connections drain.
///
/// Beside the SPIFFE Workload API, the revocation feed and the agent API, the socket
/// serves `grpc.health.v1` (SERVING while [`NodeApi::readiness`] says so) and gRPC
/// reflection, which the Workload API spec recommends. Neither needs the
/// `workload.spiffe.io` header: only the Workload API's own calls do
/// ([`workload`]).
pub async fn serve_workload(
    listener: UnixListener,
    agent: Arc<Agent>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stopping = agent.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    let services = [
        crate::proto::workload::spiffe_workload_api_server::SERVICE_NAME,
        crate::proto::agent::agent_api_server::SERVICE_NAME,
        crate::proto::revocation::revocation_server::SERVICE_NAME,
    ];
    let health = crate::health::Health::new(&services).await;
    let node = Arc::clone(&agent.node);
    drop(
        health
            .clone()
            .follow(
                move || node.readiness(),
                None::<watch::Receiver<()>>,
                agent.stopped(),
            )
            .await,
    );
    let listed = [&services[..], &[crate::reflection::HEALTH]].concat();
    let incoming = listener::accept(listener, Arc::clone(&agent), agent.stopped());
    tonic::transport::Server::builder()
        // Each call in a span naming its caller (`workload::call_span`).
        .trace_fn(workload::call_span)
        // A peer that is gone stops holding its connection (and its slot).
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // Streams one connection may hold at once: a workload needs a handful.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(RevocationServer::new(
            revocation::RevocationService::following_server(&agent),
        ))
        .add_service(SpiffeWorkloadApiServer::new(workload::WorkloadApi::new(
            Arc::clone(&agent),
        )))
        .add_service(crate::proto::agent::agent_api_server::AgentApiServer::new(
            grants::AgentService::new(agent),
        ))
        .add_service(health.service())
        .add_service(crate::reflection::v1(&listed)?)
        .add_service(crate::reflection::v1alpha(&listed)?)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("Workload API server failed")
}

/// HTTP/2 keepalive on the Workload API socket.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Concurrent streams per Workload API connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;
