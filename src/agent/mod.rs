//! The writ agent: serves the SPIFFE Workload API on a Unix socket, attests callers,
//! holds workload keys and rotates SVIDs.
//!
//! Must never: send a workload's private key anywhere, hand out a certificate it has not
//! verified, or identify a caller from anything but the kernel's socket credentials.

pub mod attest;
pub mod cache;
pub mod grants;
pub mod h2_authority;
pub mod node;
pub mod remote;
pub mod reported;
pub mod revocation;
pub mod workload;

use crate::proto::revocation::revocation_server::RevocationServer;
use crate::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use anyhow::Context;
use attest::Attestor;
use cache::SvidCache;
use node::NodeApi;
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
    /// Workload SVIDs.
    pub cache: Arc<SvidCache>,
    /// Open Workload API streams (for metrics and tests).
    pub streams: watch::Sender<usize>,
    /// How often the `:authority` adapter rewrote a header or fell back.
    pub authority_stats: Arc<h2_authority::Stats>,
    /// Which (workload, SPIFFE ID) pairs are in the audit log already, from this agent.
    pub reported: Arc<reported::Reported>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent that signs through `node`.
    pub fn new(node: Arc<dyn NodeApi>) -> Arc<Self> {
        Arc::new(Agent {
            cache: Arc::new(SvidCache::new(Arc::clone(&node))),
            node,
            attestor: Attestor::default(),
            streams: watch::channel(0).0,
            authority_stats: Arc::new(h2_authority::Stats::default()),
            reported: Arc::new(reported::Reported::default()),
        })
    }

    /// Renews and prunes SVIDs until `shutdown` resolves.
    pub async fn run_rotation(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        Arc::clone(&self.cache).run(shutdown).await;
    }
}

/// Serves the Workload API on `listener` until `shutdown` resolves.
///
/// Every accepted connection is wrapped in [`h2_authority::AuthorityRewrite`], so that
/// grpc C-core clients (py-spiffe), which send the socket path as a percent-encoded
/// `:authority` that h2 refuses, work unchanged (hyperium/h2 issue 487).
pub async fn serve_workload(
    listener: UnixListener,
    agent: Arc<Agent>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    let stats = Arc::clone(&agent.authority_stats);
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).map(move |conn| {
        conn.map(|stream| h2_authority::AuthorityRewrite::with_stats(stream, Arc::clone(&stats)))
    });
    tonic::transport::Server::builder()
        // The longest SVID TTL: after that, revoked SVIDs have expired anyway.
        .add_service(RevocationServer::new(
            revocation::RevocationService::following_server(&agent),
        ))
        .add_service(SpiffeWorkloadApiServer::new(workload::WorkloadApi::new(
            Arc::clone(&agent),
        )))
        .add_service(crate::proto::agent::agent_api_server::AgentApiServer::new(
            grants::AgentService::new(agent),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("Workload API server failed")
}
