//! Operator mints (issue 10, finding 7): an X.509- or JWT-SVID for exactly an identity
//! policy gives some workload this instant. There is no break-glass path: what no
//! workload is entitled to, no operator can mint.

use super::AdminService;
use crate::ca::{SubjectKey, SvidRequest};
use crate::identity::agent_spiffe_id;
use crate::policy::check_scope;
use crate::policy::mint::operator_entitlement;
use crate::policy::roles::Operation;
use crate::proto::admin as pb;
use crate::server::Issuer;
use spiffe::SpiffeId;
use std::time::Duration;
use tonic::{Request, Response, Status};
use writ_verifier::Band;

/// Upper bound on scopes in one request.
const MAX_SCOPES: usize = 64;

impl AdminService {
    pub(super) async fn mint_x509_svid_rpc(
        &self,
        request: Request<pb::MintX509SvidRequest>,
    ) -> Result<Response<pb::MintX509SvidResponse>, Status> {
        let (spiffe_id, minted) = self
            .call(
                request,
                Operation::MintSvid,
                |issuer, caller, body| {
                    let (spiffe_id, scopes) = resolve(issuer, &caller.tenant, body.identity)?;
                    let _gate = issuer.registry.issuance_gate();
                    let ttl = body
                        .ttl_seconds
                        .map_or(issuer.config.ca.x509_svid_ttl, Duration::from_secs);
                    let (band, mut svid) =
                        operator_request(issuer, &caller.tenant, &spiffe_id, &scopes, ttl)?;
                    svid.dns_names = body.dns_names;
                    let minted =
                        issuer.issue_x509(band, SubjectKey::Csr(&body.csr), svid, &caller.name)?;
                    Ok((spiffe_id, minted))
                },
                // The issuer logs and audits every issuance.
                |_, _| (),
            )
            .await?;
        Ok(Response::new(pb::MintX509SvidResponse {
            spiffe_id: spiffe_id.to_string(),
            certificate: minted.cert_der,
            intermediates: minted.chain,
            // The bundle of the trust domain it was minted in (a tenant's, perhaps).
            bundle: self.issuer.cas.ca_of(&spiffe_id)?.x509_bundle(),
            serial: minted.serial,
            not_after: minted.not_after,
        }))
    }

    pub(super) async fn mint_jwt_svid_rpc(
        &self,
        request: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let (spiffe_id, minted) = self
            .call(
                request,
                Operation::MintSvid,
                |issuer, caller, body| {
                    issuer.signs_jwt()?;
                    let (spiffe_id, scopes) = resolve(issuer, &caller.tenant, body.identity)?;
                    let _gate = issuer.registry.issuance_gate();
                    let ttl = body
                        .ttl_seconds
                        .map_or(issuer.config.ca.jwt_svid_ttl, Duration::from_secs);
                    let (band, svid) =
                        operator_request(issuer, &caller.tenant, &spiffe_id, &scopes, ttl)?;
                    let minted = issuer.issue_jwt(band, svid, &body.audience, &caller.name)?;
                    Ok((spiffe_id, minted))
                },
                // The issuer logs and audits every issuance.
                |_, _| (),
            )
            .await?;
        Ok(Response::new(pb::MintJwtSvidResponse {
            spiffe_id: spiffe_id.to_string(),
            token: minted.token,
            expires_at: minted.expires_at,
        }))
    }
}

/// Resolves the request's identity to the SPIFFE ID it names in `tenant` and the scopes
/// asked for; whether anyone holds it is [`operator_request`]'s question.
fn resolve(
    issuer: &Issuer,
    tenant: &str,
    identity: Option<pb::Identity>,
) -> Result<(SpiffeId, Vec<String>), Status> {
    let cas = &issuer.cas;
    let identity = identity.ok_or_else(|| Status::invalid_argument("identity is required"))?;
    if identity.scopes.len() > MAX_SCOPES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_SCOPES} scopes"
        )));
    }
    for scope in &identity.scopes {
        check_scope(scope)?;
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
    match (identity.spiffe_id.is_empty(), identity.agent.is_empty()) {
        (false, true) => {
            if !identity.incident.is_empty() || !identity.grant.is_empty() {
                return Err(Status::invalid_argument(
                    "give either a SPIFFE ID or an agent and incident, not both",
                ));
            }
            let id = writ_verifier::parse_spiffe_id(&identity.spiffe_id)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            // Only the caller's tenant's trust domains: another tenant's is answered as
            // one no one holds, so a tenant learns nothing of the others.
            let policy = issuer.registry.snapshot();
            let ours =
                crate::policy::tenant_of_trust_domain(&policy, cas.base(), id.trust_domain_name())
                    .is_some_and(|(t, _)| t == tenant);
            if !ours {
                return Err(Status::invalid_argument(format!(
                    "{id} is not in a trust domain of tenant {tenant:?}"
                )));
            }
            let id_band = cas.band_of(&id)?;
            if band.is_some_and(|b| b != id_band) {
                return Err(Status::invalid_argument(format!(
                    "{id} is in the {id_band} band, not {}",
                    identity.band
                )));
            }
            crate::ca::check_svid_id(&id)?;
            Ok((id, identity.scopes))
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
            let base = issuer
                .registry
                .snapshot()
                .tenant_base(cas.base(), tenant)
                .ok_or_else(|| {
                    Status::failed_precondition(format!("tenant {tenant:?} is disabled"))
                })?;
            let id = agent_spiffe_id(&base, band, &identity.agent, &identity.incident, grant)
                .map_err(crate::ca::CaError::from)?;
            Ok((id, identity.scopes))
        }
        (true, true) => Err(Status::invalid_argument(
            "give a SPIFFE ID, or an agent and an incident",
        )),
        (false, false) => Err(Status::invalid_argument(
            "give either a SPIFFE ID or an agent and incident, not both",
        )),
    }
}

/// What an operator's mint of `spiffe_id` signs, decided under the issuance gate (the
/// caller holds it): exactly what policy gives some workload this instant, as the
/// Workload API would issue it, with fewer scopes if asked and living `ttl` at most (a
/// grant's window cuts it).
fn operator_request(
    issuer: &Issuer,
    tenant: &str,
    spiffe_id: &SpiffeId,
    scopes: &[String],
    ttl: Duration,
) -> Result<(Band, SvidRequest), Status> {
    let policy = issuer.registry.snapshot();
    let entitlement = operator_entitlement(&policy, issuer.cas.base(), tenant, spiffe_id, scopes)
        .map_err(|e| Status::permission_denied(e.to_string()))?;
    Ok(issuer.entitled_request(entitlement, ttl)?)
}
