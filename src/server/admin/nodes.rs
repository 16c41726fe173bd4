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
        let issuer = std::sync::Arc::clone(&self.issuer);
        let (not_signing, replication) = tokio::task::spawn_blocking(move || {
            // The same check as grpc.health.v1's (server::health), with its reason.
            let not_signing = match issuer.readiness() {
                crate::health::Readiness::Ready => String::new(),
                crate::health::Readiness::NotReady(why) => why,
            };
            (not_signing, replication(&issuer))
        })
        .await
        .map_err(|_| Status::internal("reading the server's health failed"))?;
        Ok(Response::new(pb::HealthResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            trust_domain: self.issuer.cas.base().to_string(),
            trust_domains: self
                .issuer
                .cas
                .iter()
                .map(|ca| ca.trust_domain().to_string())
                .collect(),
            signing: not_signing.is_empty(),
            not_signing,
            replication,
        }))
    }
}

/// The cluster as this server sees it (`None` with a store of its own).
fn replication(issuer: &crate::server::Issuer) -> Option<pb::Replication> {
    let me = issuer.registry.replica_name()?;
    let applied = issuer.registry.applied_version().unwrap_or(0);
    let read = issuer
        .store
        .policy_version()
        .and_then(|head| Ok((head, issuer.store.replicas()?)));
    Some(match read {
        Ok((head, rows)) => pb::Replication {
            this_replica: me.to_owned(),
            policy_version: head,
            applied_version: applied,
            // A start is a new replica name: those silent for an hour are history.
            replicas: rows
                .iter()
                .filter(|r| r.heartbeat_age_ms < 3_600_000)
                .map(|r| pb::ReplicaStatus {
                    name: r.name.clone(),
                    state: crate::server::replica::state(r, head).into(),
                    applied_version: r.applied_version,
                    heartbeat_age_ms: r.heartbeat_age_ms,
                    lease_age_ms: r.lease_age_ms.unwrap_or(-1),
                })
                .collect(),
            store_error: String::new(),
        },
        Err(e) => pb::Replication {
            this_replica: me.to_owned(),
            policy_version: 0,
            applied_version: applied,
            replicas: Vec::new(),
            store_error: e.to_string(),
        },
    })
}
