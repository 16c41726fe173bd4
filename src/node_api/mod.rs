//! The contract between the writ server and its agents, which neither side owns
//! (docs/architecture.md, "The node API contract"): the [`NodeApi`] trait the agent is
//! written against, the errors it returns and their one mapping to gRPC statuses, the
//! protocol constants both sides must agree on, and the wire form of the policy agents
//! receive ([`wire`]).
//!
//! `writ dev` answers the trait in process (`server::local_node::LocalNode`); `writ agent`
//! answers it over the network (`agent::remote::RemoteNode`, the gRPC client of
//! `proto/writ/node/v1/node.proto`). The agent's code depends on this module, never on
//! the server's.

pub mod wire;

use crate::audit::activity::Activity;
use crate::ca::BundleSet;
use crate::policy::{Grant, GrantRequest, PolicySnapshot};
use spiffe::{SpiffeId, TrustDomain};
use std::sync::Arc;
use tokio::sync::watch;

/// Most CSRs in one signing batch.
pub const MAX_BATCH: usize = 256;
/// What an x509pop answer signs, before the nonce.
pub const X509POP_CONTEXT: &[u8] = b"writ x509pop v1";
/// Most selectors in one workload attestation record.
pub const MAX_ATTESTATION_SELECTORS: usize = 32;

/// The server's SPIFFE ID, the only one an agent accepts on the node API:
/// `spiffe://<base>/writ/server`.
pub fn server_id(base: &TrustDomain) -> Result<SpiffeId, spiffe::SpiffeIdError> {
    SpiffeId::from_segments(base.clone(), &["writ", "server"])
}

/// A signed X.509-SVID leaf.
#[derive(Clone, Debug)]
pub struct SignedX509 {
    /// DER of the leaf.
    pub cert_der: Vec<u8>,
    /// DER of the intermediates that follow the leaf, nearest first (never the root).
    pub chain: Vec<Vec<u8>>,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

/// Why the server would not do what an agent asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// Builds the refusal a gRPC code stands for.
type FromMessage = fn(String) -> NodeError;

impl NodeError {
    /// The gRPC code each refusal travels as, on both hops (agent → workload, server →
    /// agent): the one table, read both ways.
    /// With each code, its name in a batch's per-CSR error (`SignedSvid.error`).
    const CODES: [(tonic::Code, &'static str, FromMessage); 5] = [
        (
            tonic::Code::PermissionDenied,
            "not_entitled",
            NodeError::NotEntitled,
        ),
        (tonic::Code::InvalidArgument, "invalid", NodeError::Invalid),
        (
            tonic::Code::FailedPrecondition,
            "refused",
            NodeError::Refused,
        ),
        (
            tonic::Code::ResourceExhausted,
            "limited",
            NodeError::Limited,
        ),
        (
            tonic::Code::Unavailable,
            "unavailable",
            NodeError::Unavailable,
        ),
    ];

    fn code(&self) -> tonic::Code {
        match self {
            NodeError::NotEntitled(_) => tonic::Code::PermissionDenied,
            NodeError::Invalid(_) => tonic::Code::InvalidArgument,
            NodeError::Refused(_) => tonic::Code::FailedPrecondition,
            NodeError::Limited(_) => tonic::Code::ResourceExhausted,
            NodeError::Unavailable(_) => tonic::Code::Unavailable,
        }
    }

    fn message(&self) -> &str {
        match self {
            NodeError::NotEntitled(m)
            | NodeError::Invalid(m)
            | NodeError::Refused(m)
            | NodeError::Limited(m)
            | NodeError::Unavailable(m) => m,
        }
    }

    /// How one refused CSR of a batch is written in `SignedSvid.error`: the code's name,
    /// a colon, the reason.
    pub fn to_batch_error(&self) -> String {
        let code = self.code();
        let tag = Self::CODES
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or("unavailable", |(_, tag, _)| *tag);
        format!("{tag}: {}", self.message())
    }

    /// Reads [`NodeError::to_batch_error`]; anything else is the server being unable.
    pub fn from_batch_error(error: String) -> NodeError {
        error
            .split_once(':')
            .and_then(|(tag, reason)| {
                Self::CODES
                    .iter()
                    .find(|(_, name, _)| *name == tag)
                    .map(|(_, _, make)| make(reason.trim().to_owned()))
            })
            .unwrap_or(NodeError::Unavailable(error))
    }
}

/// How a refusal reaches a gRPC caller (a workload on the agent socket, or an agent on the
/// node API): the same code on both hops.
impl From<NodeError> for tonic::Status {
    fn from(error: NodeError) -> tonic::Status {
        tonic::Status::new(error.code(), error.message())
    }
}

/// How the agent reads a status from the server: the same table, the other way; a code
/// outside it (Internal, DeadlineExceeded, a reset) is the server being unable.
impl From<tonic::Status> for NodeError {
    fn from(status: tonic::Status) -> NodeError {
        let make = Self::CODES
            .iter()
            .find(|(code, _, _)| *code == status.code())
            .map_or(NodeError::Unavailable as FromMessage, |(_, _, make)| *make);
        make(status.message().to_owned())
    }
}

/// The agent's view of the server.
#[tonic::async_trait]
pub trait NodeApi: Send + Sync + 'static {
    /// The base trust domain.
    fn base(&self) -> &TrustDomain;
    /// The policy agents need ([`agent_view`](fn@crate::policy::agent_view)), following every change.
    fn policy(&self) -> watch::Receiver<Arc<PolicySnapshot>>;
    /// Bundles, following every change.
    fn bundles(&self) -> watch::Receiver<Arc<BundleSet>>;
    /// The longest TTL any SVID may have: how long revocations must be remembered.
    fn max_svid_ttl(&self) -> std::time::Duration;
    /// Whether the agent can have SVIDs signed now, as its Workload API's
    /// `grpc.health.v1` says it (docs/architecture.md, "Health and reflection"): an agent
    /// of remote servers while it holds an unexpired node SVID; `writ dev`'s agent in
    /// process while its issuer is ready. May block.
    fn readiness(&self) -> crate::health::Readiness;
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
    /// The grant comes back as agents see grants: without its plan and evidence.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn every_error() -> Vec<NodeError> {
        vec![
            NodeError::NotEntitled("no profile".into()),
            NodeError::Invalid("bad csr".into()),
            NodeError::Refused("incident closed".into()),
            NodeError::Limited("too many".into()),
            NodeError::Unavailable("down".into()),
        ]
    }

    #[test]
    fn every_error_survives_the_status_hop_and_the_batch_hop() {
        for error in every_error() {
            let status = tonic::Status::from(error.clone());
            assert_eq!(NodeError::from(status), error);
            assert_eq!(NodeError::from_batch_error(error.to_batch_error()), error);
        }
    }

    #[test]
    fn codes_outside_the_contract_are_the_server_being_unable() {
        let internal = NodeError::from(tonic::Status::internal("boom"));
        assert_eq!(internal, NodeError::Unavailable("boom".into()));
        let odd = NodeError::from_batch_error("surprise: x".into());
        assert_eq!(odd, NodeError::Unavailable("surprise: x".into()));
        assert_eq!(
            tonic::Status::from(NodeError::NotEntitled("n".into())).code(),
            tonic::Code::PermissionDenied
        );
    }
}
