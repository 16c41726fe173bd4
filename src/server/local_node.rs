//! The node API answered in process, for `writ dev`'s own agent, and the one mapping of
//! the issuer's refusals to [`NodeError`] that the networked node API
//! ([`super::node`]) shares.

use super::registry::RegistryError;
use super::{ActivityRefusal, AttestationRefusal, IssueError, Issuer};
use crate::audit::activity::Activity;
use crate::ca::BundleSet;
use crate::node_api::{NodeApi, NodeError, SignedX509};
use crate::policy::{Grant, GrantError, GrantRequest, PolicySnapshot};
use spiffe::{SpiffeId, TrustDomain};
use std::sync::Arc;
use tokio::sync::watch;

/// How a refused signature reaches the agent.
pub fn issue_refusal(e: IssueError) -> NodeError {
    match e {
        IssueError::NotEntitled(_) => NodeError::NotEntitled(e.to_string()),
        IssueError::Ca(ca) if ca.is_invalid_argument() => NodeError::Invalid(ca.to_string()),
        // Another server may sign it: a replica without the roots, or without its
        // intermediate yet.
        IssueError::Ca(
            ca @ (crate::ca::CaError::RootsElsewhere(_) | crate::ca::CaError::NoAuthority(_)),
        ) => NodeError::Unavailable(ca.to_string()),
        IssueError::Ca(ca) => {
            tracing::error!(error = %ca, "signing failed");
            NodeError::Unavailable("signing failed".into())
        }
        IssueError::Audit(e) => NodeError::Unavailable(e.to_string()),
        IssueError::NotCurrent(e) => NodeError::Unavailable(e.to_string()),
    }
}

/// How a registry refusal reaches the agent.
pub fn registry_refusal(e: RegistryError) -> NodeError {
    match e {
        RegistryError::Invalid(_) | RegistryError::Grant(GrantError::Invalid(_)) => {
            NodeError::Invalid(e.to_string())
        }
        RegistryError::Grant(GrantError::NotEligible(_) | GrantError::OwnRequest(_)) => {
            NodeError::NotEntitled(e.to_string())
        }
        RegistryError::RateLimited(_) => NodeError::Limited(e.to_string()),
        RegistryError::NotCurrent => NodeError::Unavailable(e.to_string()),
        RegistryError::Store(_) => {
            tracing::error!(error = %e, "grant request failed");
            NodeError::Unavailable("internal error".into())
        }
        other => NodeError::Refused(other.to_string()),
    }
}

/// How a refused activity report reaches the agent.
pub fn activity_refusal(e: ActivityRefusal) -> NodeError {
    match e {
        ActivityRefusal::NotEntitled(m) => NodeError::NotEntitled(m),
        ActivityRefusal::Invalid(m) => NodeError::Invalid(m),
        ActivityRefusal::Audit(e) => NodeError::Unavailable(e.to_string()),
        other => {
            tracing::error!(error = %other, "recording agent activity failed");
            NodeError::Unavailable("internal error".into())
        }
    }
}

/// How a refused workload attestation report reaches the agent.
pub fn attestation_refusal(e: AttestationRefusal) -> NodeError {
    match e {
        AttestationRefusal::NotEntitled(m) => NodeError::NotEntitled(m),
        AttestationRefusal::Invalid(m) => NodeError::Invalid(m),
        AttestationRefusal::Audit(e) => NodeError::Unavailable(e.to_string()),
    }
}

/// The server in the same process (`writ dev`).
#[derive(Debug, Clone)]
pub struct LocalNode {
    issuer: Arc<Issuer>,
}

impl LocalNode {
    /// A node API answered by `issuer` directly.
    pub fn new(issuer: Arc<Issuer>) -> Self {
        LocalNode { issuer }
    }
}

/// How the in-process agent of `writ dev` is named in audit records.
const LOCAL_NODE: &str = "local-agent";

#[tonic::async_trait]
impl NodeApi for LocalNode {
    fn base(&self) -> &TrustDomain {
        self.issuer.cas.base()
    }

    fn policy(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.issuer.registry.subscribe_agents()
    }

    fn bundles(&self) -> watch::Receiver<Arc<BundleSet>> {
        self.issuer.bundles.subscribe()
    }

    fn max_svid_ttl(&self) -> std::time::Duration {
        self.issuer.config.ca.max_svid_ttl
    }

    fn readiness(&self) -> crate::health::Readiness {
        self.issuer.readiness()
    }

    async fn sign_x509_batch(
        &self,
        csrs: Vec<(SpiffeId, Vec<u8>)>,
    ) -> Vec<Result<SignedX509, NodeError>> {
        let issuer = Arc::clone(&self.issuer);
        let count = csrs.len();
        tokio::task::spawn_blocking(move || {
            issuer
                .sign_workload_x509_batch(&csrs, None, LOCAL_NODE)
                .into_iter()
                .map(|r| {
                    r.map(|minted| SignedX509 {
                        cert_der: minted.cert_der,
                        chain: minted.chain,
                        serial: minted.serial,
                        not_after: minted.not_after,
                    })
                    .map_err(issue_refusal)
                })
                .collect()
        })
        .await
        .unwrap_or_else(|e| {
            (0..count)
                .map(|_| Err(NodeError::Unavailable(e.to_string())))
                .collect()
        })
    }

    async fn sign_jwt(
        &self,
        spiffe_id: &SpiffeId,
        audience: Vec<String>,
    ) -> Result<String, NodeError> {
        let issuer = Arc::clone(&self.issuer);
        let id = spiffe_id.clone();
        tokio::task::spawn_blocking(move || issuer.sign_workload_jwt(&id, &audience, LOCAL_NODE))
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?
            .map(|minted| minted.token)
            .map_err(issue_refusal)
    }

    async fn request_grant(
        &self,
        request: GrantRequest,
        requested_by: &SpiffeId,
        uid: Option<u32>,
    ) -> Result<Grant, NodeError> {
        let issuer = Arc::clone(&self.issuer);
        let by = requested_by.clone();
        tokio::task::spawn_blocking(move || issuer.request_grant_for_workload(request, &by, uid))
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?
            // As agents see grants, in process or over the network.
            .map(crate::policy::agent_view::as_agents_see)
            .map_err(registry_refusal)
    }

    async fn record_activity(
        &self,
        activity: &Activity,
        spiffe_id: &SpiffeId,
        serial: &str,
    ) -> Result<u64, NodeError> {
        self.issuer
            .record_activity(activity, spiffe_id, serial, LOCAL_NODE)
            .await
            .map_err(activity_refusal)
    }

    async fn record_attestation(
        &self,
        spiffe_id: &SpiffeId,
        selectors: &[String],
    ) -> Result<u64, NodeError> {
        self.issuer
            .record_attestation(spiffe_id, selectors, LOCAL_NODE)
            .await
            .map_err(attestation_refusal)
    }
}
