//! Trust bundles and CA authorities: show each band's bundle and authorities, and rotate
//! them (prepare the next authority, then activate it) on an operator's word.

use super::AdminService;
use crate::audit::{Kind, Record};
use crate::policy::roles::Operation;
use crate::proto::admin as pb;
use crate::server::Issuer;
use crate::server::signers::{Admissions, parse_key_sha256};
use tonic::{Request, Response, Status};
use writ_verifier::Band;

/// The bands a request names: one, or all when it names none.
fn bands_of(band: &str) -> Result<Vec<Band>, Status> {
    if band.is_empty() {
        return Ok(Band::ALL.to_vec());
    }
    band.parse::<Band>()
        .map(|b| vec![b])
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The authorities of `bands`, as the API shows them.
fn authorities(issuer: &Issuer, bands: &[Band]) -> pb::AuthoritiesResponse {
    let mut authorities = Vec::new();
    for band in bands {
        let ca = issuer.cas.ca(*band);
        for record in ca.authorities() {
            authorities.push(pb::Authority {
                band: band.to_string(),
                trust_domain: ca.trust_domain().to_string(),
                id: record.id,
                state: crate::policy::wire_name(&record.state),
                not_before: record.not_before,
                not_after: record.not_after,
                jwt_kid: record.jwt_kid,
            });
        }
    }
    pb::AuthoritiesResponse { authorities }
}

impl AdminService {
    pub(super) async fn get_bundles_rpc(
        &self,
        request: Request<pb::GetBundlesRequest>,
    ) -> Result<Response<pb::GetBundlesResponse>, Status> {
        self.authorize(&request, Operation::GetBundles)?;
        let bands = bands_of(&request.into_inner().band)?;
        let mut bundles = Vec::with_capacity(bands.len());
        for band in bands {
            let ca = self.issuer.cas.ca(band);
            bundles.push(pb::Bundle {
                band: band.to_string(),
                trust_domain: ca.trust_domain().to_string(),
                x509_authorities: ca.x509_bundle(),
                jwks: ca.jwks()?.to_string(),
                sequence: ca.sequence(),
            });
        }
        Ok(Response::new(pb::GetBundlesResponse { bundles }))
    }

    pub(super) async fn show_authorities_rpc(
        &self,
        request: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        self.authorize(&request, Operation::ShowAuthorities)?;
        let bands = bands_of(&request.into_inner().band)?;
        Ok(Response::new(authorities(&self.issuer, &bands)))
    }

    /// Prepares (or, with `activate`, activates) the next authority of each band the
    /// request names, then republishes the bundles.
    pub(super) async fn rotate_rpc(
        &self,
        request: Request<pb::AuthorityRequest>,
        activate: bool,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        let bands = self
            .call(
                request,
                Operation::RotateAuthority,
                move |issuer, caller, body| {
                    let bands = bands_of(&body.band)?;
                    let now = issuer.cas.now();
                    for band in &bands {
                        let ca = issuer.cas.ca(*band);
                        if activate {
                            ca.activate(now)?;
                        } else {
                            ca.prepare(now)?;
                        }
                        tracing::info!(%band, by = %caller.name, activate, "CA authority rotated by an operator");
                    }
                    issuer.publish_bundles();
                    Ok(bands)
                },
                // Logged band by band as each rotates.
                |_, _| (),
            )
            .await?;
        Ok(Response::new(authorities(&self.issuer, &bands)))
    }
}

impl AdminService {
    /// Admits signing replicas' intermediate keys on this server, which must hold the
    /// roots: audited first, then kept in its key directory (never in the database).
    pub(super) async fn admit_replica_rpc(
        &self,
        request: Request<pb::AdmitReplicaRequest>,
    ) -> Result<Response<pb::AdmitReplicaResponse>, Status> {
        let admitted = self
            .call(
                request,
                Operation::RotateAuthority,
                |issuer, caller, body| {
                    if !issuer.cas.holds_roots() {
                        return Err(Status::failed_precondition(
                            "this server does not hold the roots: admit replicas on the server that does",
                        ));
                    }
                    if body.key_sha256.is_empty() || body.key_sha256.len() > 64 {
                        return Err(Status::invalid_argument(
                            "give between 1 and 64 key hashes (--key-sha256)",
                        ));
                    }
                    let hashes = body
                        .key_sha256
                        .iter()
                        .map(|h| parse_key_sha256(h))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                    let record = Record::new(
                        issuer.cas.now(),
                        Kind::AdminChange,
                        "replica.admit",
                        &caller.name,
                    )
                    .detail(serde_json::json!({ "key_sha256": hashes }));
                    issuer.audit.append(&record)?;
                    Admissions::in_dir(&issuer.config.data_dir.join("keys"))
                        .admit(&hashes)
                        .map_err(crate::server::status::internal)
                },
                |caller, admitted: &Vec<String>| {
                    tracing::info!(by = %caller.name, admitted = ?admitted, "replica keys admitted");
                },
            )
            .await?;
        Ok(Response::new(pb::AdmitReplicaResponse { admitted }))
    }
}
