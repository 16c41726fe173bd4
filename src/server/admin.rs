//! The admin API (`writ.admin.v1`): minting and bundles for operators.
//!
//! Errors are mapped to `tonic::Status` in one place, [`status`]. Callers are
//! identified by SO_PEERCRED: for now only the uid running the server and root may call
//! (operators with roles arrive with the policy work).

use super::Issuer;
use crate::ca::{CaError, SubjectKey, SvidRequest};
use crate::identity::agent_spiffe_id;
use crate::proto::admin::{self as pb, admin_server::Admin};
use spiffe::SpiffeId;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use writ_verifier::{Band, WritClaims};

/// Upper bound on scopes in one request.
const MAX_SCOPES: usize = 64;

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    issuer: Arc<Issuer>,
    server_uid: u32,
}

impl AdminService {
    /// A service answering for `issuer`.
    pub fn new(issuer: Arc<Issuer>) -> anyhow::Result<Self> {
        // /proc/self belongs to the process's effective uid.
        let server_uid = std::fs::metadata("/proc/self")?.uid();
        Ok(AdminService { issuer, server_uid })
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<u32, Status> {
        let uid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid())
            .ok_or_else(|| Status::permission_denied("caller credentials unavailable"))?;
        if uid == 0 || uid == self.server_uid {
            Ok(uid)
        } else {
            tracing::warn!(uid, "admin call refused: not an operator");
            Err(Status::permission_denied(format!(
                "uid {uid} is not a writ operator"
            )))
        }
    }

    /// Resolves the request's identity to a band, SPIFFE ID and claims.
    fn resolve(&self, identity: Option<pb::Identity>) -> Result<(Band, SvidRequest), Status> {
        let identity = identity.ok_or_else(|| Status::invalid_argument("identity is required"))?;
        if identity.scopes.len() > MAX_SCOPES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_SCOPES} scopes"
            )));
        }
        let band = if identity.band.is_empty() {
            None
        } else {
            Some(
                identity
                    .band
                    .parse::<Band>()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        let cas = &self.issuer.cas;
        match (identity.spiffe_id.is_empty(), identity.agent.is_empty()) {
            (false, true) => {
                if !identity.incident.is_empty() || !identity.grant.is_empty() {
                    return Err(Status::invalid_argument(
                        "give either a SPIFFE ID or an agent and incident, not both",
                    ));
                }
                let id = writ_verifier::parse_spiffe_id(&identity.spiffe_id)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let id_band = cas.band_of(&id).map_err(status)?;
                if band.is_some_and(|b| b != id_band) {
                    return Err(Status::invalid_argument(format!(
                        "{id} is in the {id_band} band, not {}",
                        identity.band
                    )));
                }
                let claims = if identity.scopes.is_empty() {
                    None
                } else {
                    let mut claims = WritClaims::new(id_band);
                    claims.scopes = identity.scopes;
                    Some(claims)
                };
                Ok((id_band, request(id, claims)))
            }
            (true, false) => {
                if identity.incident.is_empty() {
                    return Err(Status::invalid_argument(
                        "an agent identity needs an incident",
                    ));
                }
                let band = band.unwrap_or(if identity.grant.is_empty() {
                    Band::Investigative
                } else {
                    Band::Remediation
                });
                let grant = (!identity.grant.is_empty()).then_some(identity.grant.as_str());
                let id =
                    agent_spiffe_id(cas.base(), band, &identity.agent, &identity.incident, grant)
                        .map_err(status)?;
                let mut claims = WritClaims::new(band);
                claims.incident = Some(identity.incident.clone());
                claims.grant = grant.map(str::to_owned);
                claims.scopes = identity.scopes;
                Ok((band, request(id, Some(claims))))
            }
            (true, true) => Err(Status::invalid_argument(
                "give a SPIFFE ID, or an agent and an incident",
            )),
            (false, false) => Err(Status::invalid_argument(
                "give either a SPIFFE ID or an agent and incident, not both",
            )),
        }
    }
}

fn request(spiffe_id: SpiffeId, claims: Option<WritClaims>) -> SvidRequest {
    SvidRequest {
        spiffe_id,
        ttl: None,
        claims,
        dns_names: Vec::new(),
    }
}

/// Maps a CA error to a gRPC status: bad input is InvalidArgument with the reason;
/// anything else is logged and reported generically.
fn status(error: CaError) -> Status {
    if error.is_invalid_argument() {
        return Status::invalid_argument(error.to_string());
    }
    match error {
        CaError::NoAuthority(_) => Status::unavailable(error.to_string()),
        other => {
            tracing::error!(error = %other, "admin request failed");
            Status::internal("internal error; see the server log")
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CaError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "blocking task failed");
            Status::internal("internal error; see the server log")
        })?
        .map_err(status)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn mint_x509_svid(
        &self,
        request: Request<pb::MintX509SvidRequest>,
    ) -> Result<Response<pb::MintX509SvidResponse>, Status> {
        self.authorize(&request)?;
        let body = request.into_inner();
        let (band, mut svid) = self.resolve(body.identity)?;
        svid.ttl = body.ttl_seconds.map(Duration::from_secs);
        svid.dns_names = body.dns_names;
        let issuer = Arc::clone(&self.issuer);
        let spiffe_id = svid.spiffe_id.to_string();
        let minted = blocking(move || {
            issuer
                .cas
                .mint_x509(band, SubjectKey::Csr(&body.csr), &svid)
        })
        .await?;
        Ok(Response::new(pb::MintX509SvidResponse {
            spiffe_id,
            certificate: minted.cert_der,
            bundle: self.issuer.cas.ca(band).x509_bundle(),
            serial: minted.serial,
            not_after: minted.not_after,
        }))
    }

    async fn mint_jwt_svid(
        &self,
        request: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        self.authorize(&request)?;
        let body = request.into_inner();
        let (band, mut svid) = self.resolve(body.identity)?;
        svid.ttl = body.ttl_seconds.map(Duration::from_secs);
        let minted = self
            .issuer
            .cas
            .mint_jwt(band, &svid, &body.audience)
            .map_err(status)?;
        Ok(Response::new(pb::MintJwtSvidResponse {
            spiffe_id: svid.spiffe_id.to_string(),
            token: minted.token,
            expires_at: minted.expires_at,
        }))
    }

    async fn get_bundles(
        &self,
        request: Request<pb::GetBundlesRequest>,
    ) -> Result<Response<pb::GetBundlesResponse>, Status> {
        self.authorize(&request)?;
        let body = request.into_inner();
        let bands: Vec<Band> =
            if body.band.is_empty() {
                Band::ALL.to_vec()
            } else {
                vec![body.band.parse().map_err(|e: writ_verifier::ClaimsError| {
                    Status::invalid_argument(e.to_string())
                })?]
            };
        let mut bundles = Vec::with_capacity(bands.len());
        for band in bands {
            let ca = self.issuer.cas.ca(band);
            bundles.push(pb::Bundle {
                band: band.to_string(),
                trust_domain: ca.trust_domain().to_string(),
                x509_authorities: ca.x509_bundle(),
                jwks: ca.jwks().map_err(status)?.to_string(),
                sequence: ca.sequence(),
            });
        }
        Ok(Response::new(pb::GetBundlesResponse { bundles }))
    }

    async fn health(
        &self,
        request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        self.authorize(&request)?;
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
