//! Nodes and the server itself: join tokens for agents to attest with, and health.

use super::AdminService;
use crate::policy::roles::Operation;
use crate::proto::admin as pb;
use tonic::{Request, Response, Status};

/// The longest a join token may live.
const MAX_JOIN_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

impl AdminService {
    pub(super) async fn create_join_token_rpc(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let (token, expires_at) = self
            .call(
                request,
                Operation::CreateJoinToken,
                |issuer, _, body| {
                    let ttl = body.ttl_seconds.unwrap_or(600);
                    if ttl == 0 || ttl > MAX_JOIN_TOKEN_TTL_SECS {
                        return Err(Status::invalid_argument(
                            "token TTL must be between 1s and 7 days",
                        ));
                    }
                    crate::server::node::create_join_token(issuer, ttl)
                },
                // The node API logs every token it creates (never the token).
                |_, _| (),
            )
            .await?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token,
            expires_at,
        }))
    }

    pub(super) async fn health_rpc(
        &self,
        request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        self.authorize(&request, Operation::Health)?;
        Ok(Response::new(pb::HealthResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            trust_domain: self.issuer.cas.base().to_string(),
            trust_domains: self
                .issuer
                .cas
                .iter()
                .map(|ca| ca.trust_domain().to_string())
                .collect(),
        }))
    }
}
