//! Trust bundles and CA authorities: show each band's bundle and authorities, and rotate
//! them (prepare the next authority, then activate it) on an operator's word.

use super::AdminService;
use crate::audit::{Kind, Record};
use crate::ca::{AuthorityRecord, TrustDomainCa};
use crate::policy::roles::Operation;
use crate::proto::admin as pb;
use crate::server::Issuer;
use crate::server::signers::{Admissions, parse_key_sha256};
use std::sync::Arc;
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

/// The CAs of `tenant` that a request for `band` (empty: all) names: the deployment's
/// three in the default tenant, the tenant's band pair in any other. With `with_base`, a
/// tenant's request may also read the deployment's base CA (its bundle is public: it
/// verifies the server), never rotate it.
fn tenant_cas(
    issuer: &Issuer,
    tenant: &str,
    band: &str,
    with_base: bool,
) -> Result<Vec<Arc<TrustDomainCa>>, Status> {
    let bands = bands_of(band)?;
    let base = issuer
        .registry
        .snapshot()
        .base_of(issuer.cas.base(), tenant)
        .ok_or_else(|| Status::not_found(format!("tenant {tenant:?} not found")))?;
    let mut cas = issuer.cas.band_cas(&base);
    if with_base && base != *issuer.cas.base() {
        cas.extend(
            issuer
                .cas
                .band_cas(issuer.cas.base())
                .into_iter()
                .filter(|ca| ca.band() == Band::Base),
        );
    }
    cas.retain(|ca| bands.contains(&ca.band()));
    if cas.is_empty() {
        return Err(Status::invalid_argument(format!(
            "tenant {tenant:?} has no {band} band (a tenant has investigative and remediation)"
        )));
    }
    Ok(cas)
}

/// The authorities of `cas`, as the API shows them.
fn authorities(cas: &[Arc<TrustDomainCa>]) -> pb::AuthoritiesResponse {
    let mut authorities = Vec::new();
    for ca in cas {
        for record in ca.authorities() {
            authorities.push(shown(ca, record));
        }
    }
    pb::AuthoritiesResponse { authorities }
}

/// One authority of `ca`, as the API shows it.
fn shown(ca: &TrustDomainCa, record: AuthorityRecord) -> pb::Authority {
    pb::Authority {
        band: ca.band().to_string(),
        trust_domain: ca.trust_domain().to_string(),
        key_id: key_id(&record),
        id: record.id,
        state: crate::policy::wire_name(&record.state),
        not_before: record.not_before,
        not_after: record.not_after,
        jwt_kid: record.jwt_kid,
        tainted_at: record.tainted_at.unwrap_or(0),
    }
}

/// The key id verifiers name an authority by (empty if its certificate does not parse,
/// which a certificate this server made never does).
fn key_id(record: &AuthorityRecord) -> String {
    writ_verifier::authority_key_id(&rustls_pki_types::CertificateDer::from(
        record.cert_der.as_slice(),
    ))
    .unwrap_or_default()
}

/// An operator's answer to a compromised CA key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Compromise {
    /// `writ authority taint`.
    Taint,
    /// `writ authority revoke`.
    Revoke,
}

/// Refuses to revoke `record` while SVIDs it signed are unexpired (the store keeps a
/// record of each until it expires), unless the operator forces it: they would stop
/// verifying at once.
fn check_revoke(
    issuer: &Issuer,
    ca: &TrustDomainCa,
    record: &AuthorityRecord,
    force: bool,
    now: i64,
) -> Result<(), Status> {
    if force {
        return Ok(());
    }
    let trust_domain = ca.trust_domain().to_string();
    let valid: Vec<i64> = issuer
        .store
        .svids()
        .map_err(crate::server::status::internal)?
        .into_iter()
        .filter(|s| {
            s.authority_id == record.id
                && s.band == ca.band()
                && s.not_after > now
                && writ_verifier::parse_spiffe_id(&s.spiffe_id)
                    .is_ok_and(|id| id.trust_domain_name() == trust_domain)
        })
        .map(|s| s.not_after)
        .collect();
    match valid.iter().max() {
        None => Ok(()),
        Some(last) => Err(Status::failed_precondition(format!(
            "{} SVIDs signed by authority {} of {trust_domain} are valid until {}: holders \
             were re-issued when it was tainted; revoke it then, or now with --force (they \
             stop verifying at once)",
            valid.len(),
            record.id,
            time::OffsetDateTime::from_unix_timestamp(*last)
                .ok()
                .and_then(|t| t
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok())
                .unwrap_or_else(|| last.to_string()),
        ))),
    }
}

impl AdminService {
    pub(super) async fn get_bundles_rpc(
        &self,
        request: Request<pb::GetBundlesRequest>,
    ) -> Result<Response<pb::GetBundlesResponse>, Status> {
        let tenant = self.authorize(&request, Operation::GetBundles)?;
        let cas = tenant_cas(&self.issuer, &tenant, &request.into_inner().band, true)?;
        let mut bundles = Vec::with_capacity(cas.len());
        for ca in cas {
            bundles.push(pb::Bundle {
                band: ca.band().to_string(),
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
        let tenant = self.authorize(&request, Operation::ShowAuthorities)?;
        let cas = tenant_cas(&self.issuer, &tenant, &request.into_inner().band, false)?;
        Ok(Response::new(authorities(&cas)))
    }

    /// Prepares (or, with `activate`, activates) the next authority of each of the
    /// caller's tenant's bands the request names, then republishes the bundles.
    pub(super) async fn rotate_rpc(
        &self,
        request: Request<pb::AuthorityRequest>,
        activate: bool,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        let cas = self
            .call(
                request,
                Operation::RotateAuthority,
                move |issuer, caller, body| {
                    let cas = tenant_cas(issuer, &caller.tenant, &body.band, false)?;
                    let now = issuer.cas.now();
                    for ca in &cas {
                        if activate {
                            ca.activate(now)?;
                        } else {
                            ca.prepare(now)?;
                        }
                        tracing::info!(band = %ca.band(), trust_domain = %ca.trust_domain(), by = %caller.name, activate, "CA authority rotated by an operator");
                    }
                    issuer.publish_bundles();
                    Ok(cas)
                },
                // Logged CA by CA as each rotates.
                |_, _| (),
            )
            .await?;
        Ok(Response::new(authorities(&cas)))
    }
}

impl AdminService {
    /// Taints or revokes an authority of each of the caller's tenant's bands the request
    /// names (with an id: the one band's CA that has it), audited before each change, then
    /// republishes the bundles. Answers with the authorities changed.
    pub(super) async fn compromise_rpc(
        &self,
        request: Request<pb::AuthorityRequest>,
        what: Compromise,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        let changed = self
            .call(
                request,
                Operation::RotateAuthority,
                move |issuer, caller, body| {
                    let id = (!body.id.is_empty()).then_some(body.id.as_str());
                    if let Some(id) = id
                        && (id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
                    {
                        return Err(Status::invalid_argument(
                            "an authority id is hex, as `writ authority show` lists it",
                        ));
                    }
                    let mut cas = tenant_cas(issuer, &caller.tenant, &body.band, false)?;
                    if let Some(id) = id {
                        cas.retain(|ca| ca.authorities().iter().any(|r| r.id == id));
                        if cas.is_empty() {
                            return Err(Status::not_found(format!("no authority {id}")));
                        }
                    }
                    let now = issuer.cas.now();
                    let mut changed = Vec::new();
                    for ca in &cas {
                        let before = |record: &AuthorityRecord| -> Result<(), Status> {
                            let action = match what {
                                Compromise::Taint => "authority.taint",
                                Compromise::Revoke => {
                                    check_revoke(issuer, ca, record, body.force, now)?;
                                    "authority.revoke"
                                }
                            };
                            let audited = Record::new(now, Kind::Revocation, action, &caller.name)
                                .detail(serde_json::json!({
                                    "band": ca.band().as_str(),
                                    "trust_domain": ca.trust_domain().to_string(),
                                    "authority": record.id,
                                    "key_id": key_id(record),
                                    "jwt_kid": record.jwt_kid,
                                    "forced": what == Compromise::Revoke && body.force,
                                }));
                            issuer.audit.append(&audited)?;
                            Ok(())
                        };
                        let record = match what {
                            Compromise::Taint => ca.taint(id, now, before)?,
                            Compromise::Revoke => ca.revoke(id, now, before)?,
                        };
                        tracing::warn!(band = %ca.band(), trust_domain = %ca.trust_domain(), authority = %record.id, by = %caller.name, action = ?what, "CA authority changed by an operator after a compromise");
                        changed.push(shown(ca, record));
                    }
                    issuer.publish_bundles();
                    Ok(changed)
                },
                // Logged CA by CA as each changes.
                |_, _| (),
            )
            .await?;
        Ok(Response::new(pb::AuthoritiesResponse {
            authorities: changed,
        }))
    }

    /// Admits signing replicas' intermediate keys on this server, which must hold the
    /// roots: audited first, then kept in its key directory (never in the database).
    pub(super) async fn admit_replica_rpc(
        &self,
        request: Request<pb::AdmitReplicaRequest>,
    ) -> Result<Response<pb::AdmitReplicaResponse>, Status> {
        let admitted = self
            .call(
                request,
                Operation::ManageReplicas,
                |issuer, caller, body| {
                    change_admissions(issuer, &caller.name, &body.key_sha256, Admission::Admit)
                },
                |caller, admitted: &Vec<String>| {
                    tracing::info!(by = %caller.name, admitted = ?admitted, "replica keys admitted");
                },
            )
            .await?;
        Ok(Response::new(pb::AdmitReplicaResponse { admitted }))
    }

    /// Withdraws admitted replica keys on this server, which must hold the roots:
    /// audited first. Their intermediates are not renewed.
    pub(super) async fn remove_replica_rpc(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::RemoveReplicaResponse>, Status> {
        let removed = self
            .call(
                request,
                Operation::ManageReplicas,
                |issuer, caller, body| {
                    change_admissions(issuer, &caller.name, &body.key_sha256, Admission::Remove)
                },
                |caller, removed: &Vec<String>| {
                    tracing::info!(by = %caller.name, removed = ?removed, "replica keys removed");
                },
            )
            .await?;
        Ok(Response::new(pb::RemoveReplicaResponse { removed }))
    }

    /// Every replica key that asked for an intermediate, with its latest request's
    /// state, and (on the root holder) whether it is admitted.
    pub(super) async fn list_replica_keys_rpc(
        &self,
        request: Request<pb::ListReplicaKeysRequest>,
    ) -> Result<Response<pb::ListReplicaKeysResponse>, Status> {
        let keys = self
            .call(
                request,
                Operation::ReadDeployment,
                |issuer, _, _| {
                    let admitted = if issuer.cas.holds_roots() {
                        Some(
                            Admissions::in_dir(&issuer.config.data_dir.join("keys"))
                                .load()
                                .map_err(crate::server::status::internal)?,
                        )
                    } else {
                        None
                    };
                    let requests = issuer
                        .store
                        .latest_intermediate_requests()
                        .map_err(crate::server::status::internal)?;
                    Ok(requests
                        .into_iter()
                        .map(|r| {
                            let state = match (&r.certificate, &r.refused) {
                                (Some(_), _) => "certified",
                                (None, Some(_)) => "refused",
                                (None, None) => "pending",
                            };
                            pb::ReplicaKey {
                                admitted: admitted
                                    .as_ref()
                                    .is_some_and(|a| a.contains(&r.request.key_sha256)),
                                admission_known: admitted.is_some(),
                                trust_domain: crate::server::signers::requested_trust_domain(
                                    &issuer.cas,
                                    &r.request,
                                )
                                .to_string(),
                                key_sha256: r.request.key_sha256,
                                replica: r.request.replica,
                                band: r.request.band.to_string(),
                                state: state.to_owned(),
                                refused: r.refused.unwrap_or_default(),
                            }
                        })
                        .collect::<Vec<_>>())
                },
                // A read: nothing to log.
                |_, _| (),
            )
            .await?;
        Ok(Response::new(pb::ListReplicaKeysResponse { keys }))
    }
}

/// Which way an operator changes the admissions.
#[derive(Clone, Copy)]
enum Admission {
    Admit,
    Remove,
}

/// Admits or removes replica keys on this server, which must hold the roots: the hashes
/// checked, the change audited, then made in the admissions file. Returns the keys whose
/// admission changed.
fn change_admissions(
    issuer: &Issuer,
    by: &str,
    given: &[String],
    change: Admission,
) -> Result<Vec<String>, Status> {
    let (verb, kind, action) = match change {
        Admission::Admit => ("admit", Kind::AdminChange, "replica.admit"),
        Admission::Remove => ("remove", Kind::Revocation, "replica.remove"),
    };
    if !issuer.cas.holds_roots() {
        return Err(Status::failed_precondition(format!(
            "this server does not hold the roots: {verb} replicas on the server that does"
        )));
    }
    let hashes = key_hashes(given)?;
    let record = Record::new(issuer.cas.now(), kind, action, by)
        .detail(serde_json::json!({ "key_sha256": hashes }));
    issuer.audit.append(&record)?;
    let admissions = Admissions::in_dir(&issuer.config.data_dir.join("keys"));
    match change {
        Admission::Admit => admissions.admit(&hashes),
        Admission::Remove => admissions.withdraw(&hashes),
    }
    .map_err(crate::server::status::internal)
}

/// Key hashes as an operator gave them: 1 to 64, each 64 hex digits.
fn key_hashes(given: &[String]) -> Result<Vec<String>, Status> {
    if given.is_empty() || given.len() > 64 {
        return Err(Status::invalid_argument(
            "give between 1 and 64 key hashes (--key-sha256)",
        ));
    }
    given
        .iter()
        .map(|h| parse_key_sha256(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}
