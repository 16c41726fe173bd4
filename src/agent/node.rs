//! What the agent needs from the server: policy, bundles, and signatures.
//!
//! `writ dev` runs both in one process and uses [`LocalNode`]; the networked agent
//! (`writ agent`, over mTLS with its node SVID) implements the same trait.

use crate::audit::activity::Activity;
use crate::ca::BundleSet;
use crate::policy::{Grant, GrantRequest, PolicySnapshot};
use crate::server::{IssueError, Issuer};
use spiffe::{SpiffeId, TrustDomain};
use std::sync::Arc;
use tokio::sync::watch;

/// A signed X.509-SVID leaf.
#[derive(Clone, Debug)]
pub struct SignedX509 {
    /// DER of the leaf.
    pub cert_der: Vec<u8>,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// Why the server would not sign.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Policy does not entitle any workload to this identity now.
    #[error("{0}")]
    NotEntitled(String),
    /// The request was malformed.
    #[error("{0}")]
    Invalid(String),
    /// The server could not answer.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// Policy refused the request in the current state (closed incident, not pending…).
    #[error("{0}")]
    Refused(String),
    /// Over a limit (too many pending grant requests).
    #[error("{0}")]
    Limited(String),
}

/// How a refusal reaches a gRPC caller (a workload on the agent socket, or an agent on the
/// node API): the same code on both hops.
impl From<NodeError> for tonic::Status {
    fn from(error: NodeError) -> tonic::Status {
        match error {
            NodeError::NotEntitled(m) => tonic::Status::permission_denied(m),
            NodeError::Invalid(m) => tonic::Status::invalid_argument(m),
            NodeError::Refused(m) => tonic::Status::failed_precondition(m),
            NodeError::Limited(m) => tonic::Status::resource_exhausted(m),
            NodeError::Unavailable(m) => tonic::Status::unavailable(m),
        }
    }
}

/// How a registry refusal reaches the agent.
pub fn registry_error(e: crate::server::registry::RegistryError) -> NodeError {
    use crate::policy::GrantError;
    use crate::server::registry::RegistryError;
    match e {
        RegistryError::Invalid(_) | RegistryError::Grant(GrantError::Invalid(_)) => {
            NodeError::Invalid(e.to_string())
        }
        RegistryError::Grant(GrantError::NotEligible(_) | GrantError::OwnRequest(_)) => {
            NodeError::NotEntitled(e.to_string())
        }
        RegistryError::RateLimited(_) => NodeError::Limited(e.to_string()),
        RegistryError::Store(_) => {
            tracing::error!(error = %e, "grant request failed");
            NodeError::Unavailable("internal error".into())
        }
        other => NodeError::Refused(other.to_string()),
    }
}

/// How a refused activity report reaches the agent.
pub fn activity_error(e: crate::server::ActivityRefusal) -> NodeError {
    use crate::server::ActivityRefusal;
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
pub fn attestation_error(e: crate::server::AttestationRefusal) -> NodeError {
    use crate::server::AttestationRefusal;
    match e {
        AttestationRefusal::NotEntitled(m) => NodeError::NotEntitled(m),
        AttestationRefusal::Invalid(m) => NodeError::Invalid(m),
        AttestationRefusal::Audit(e) => NodeError::Unavailable(e.to_string()),
    }
}

/// The agent's view of the server.
#[tonic::async_trait]
pub trait NodeApi: Send + Sync + 'static {
    /// The base trust domain.
    fn base(&self) -> &TrustDomain;
    /// Policy, following every change.
    fn policy(&self) -> watch::Receiver<Arc<PolicySnapshot>>;
    /// Bundles, following every change.
    fn bundles(&self) -> watch::Receiver<Arc<BundleSet>>;
    /// The longest TTL any SVID may have: how long revocations must be remembered.
    fn max_svid_ttl(&self) -> std::time::Duration;
    /// Signs CSRs, each for an identity policy entitles some workload to now; one result
    /// per CSR, in order.
    async fn sign_x509_batch(
        &self,
        csrs: Vec<(SpiffeId, Vec<u8>)>,
    ) -> Vec<Result<SignedX509, NodeError>>;
    /// Signs a JWT-SVID for `spiffe_id` and `audience`.
    async fn sign_jwt(
        &self,
        spiffe_id: &SpiffeId,
        audience: Vec<String>,
    ) -> Result<String, NodeError>;
    /// Files a grant request for a workload holding `requested_by`, attested as `uid`.
    async fn request_grant(
        &self,
        request: GrantRequest,
        requested_by: &SpiffeId,
        uid: Option<u32>,
    ) -> Result<Grant, NodeError>;
    /// Records `activity` by a workload holding `spiffe_id` and the X.509-SVID `serial`
    /// (empty if none yet); returns the audit record's index.
    async fn record_activity(
        &self,
        activity: &Activity,
        spiffe_id: &SpiffeId,
        serial: &str,
    ) -> Result<u64, NodeError>;
    /// Records that this agent attested a workload as `selectors` (wire form) and served
    /// it `spiffe_id` for the first time; returns the audit record's index.
    async fn record_attestation(
        &self,
        spiffe_id: &SpiffeId,
        selectors: &[String],
    ) -> Result<u64, NodeError>;
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

fn node_error(e: IssueError) -> NodeError {
    match e {
        IssueError::NotEntitled(_) => NodeError::NotEntitled(e.to_string()),
        IssueError::Ca(ca) if ca.is_invalid_argument() => NodeError::Invalid(ca.to_string()),
        IssueError::Ca(ca) => {
            tracing::error!(error = %ca, "signing failed");
            NodeError::Unavailable("signing failed".into())
        }
        IssueError::Audit(e) => NodeError::Unavailable(e.to_string()),
    }
}

#[tonic::async_trait]
impl NodeApi for LocalNode {
    fn base(&self) -> &TrustDomain {
        self.issuer.cas.base()
    }

    fn policy(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.issuer.registry.subscribe()
    }

    fn bundles(&self) -> watch::Receiver<Arc<BundleSet>> {
        self.issuer.bundles.subscribe()
    }

    fn max_svid_ttl(&self) -> std::time::Duration {
        self.issuer.config.ca.max_svid_ttl
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
                        serial: minted.serial,
                        not_after: minted.not_after,
                    })
                    .map_err(node_error)
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
            .map_err(node_error)
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
            .map_err(registry_error)
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
            .map_err(activity_error)
    }

    async fn record_attestation(
        &self,
        spiffe_id: &SpiffeId,
        selectors: &[String],
    ) -> Result<u64, NodeError> {
        self.issuer
            .record_attestation(spiffe_id, selectors, LOCAL_NODE)
            .await
            .map_err(attestation_error)
    }
}
