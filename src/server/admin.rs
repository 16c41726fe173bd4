//! The admin API (`writ.admin.v1`): minting, bundles, profiles and incidents for
//! operators.
//!
//! Errors are mapped to `tonic::Status` in one place per source: `status` for the CAs,
//! `registry_status` for the registry. Every field of a policy request is parsed here,
//! whatever the CLI already checked. Callers are identified by SO_PEERCRED (or their mTLS
//! certificate) and checked against the role matrix (docs/roles.md) at every RPC.

mod audit;
mod playbooks;
pub mod refusals;
mod svids;

use super::Issuer;
use super::registry::RegistryError;
use crate::ca::{CaError, SubjectKey, SvidRequest};
use crate::identity::agent_spiffe_id;
use crate::policy::grant::Principal;
use crate::policy::mint::operator_entitlement;
use crate::policy::roles::{Operation, allowed, check_profile, operator_uids};
use crate::policy::{
    Grant, GrantRequest, GrantState, Incident, IncidentState, MAX_ITEMS, PolicyError, Profile,
    Role, Selector, Severity, check_name, check_scope,
};
use crate::proto::admin::{self as pb, admin_server::Admin};
use spiffe::SpiffeId;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use writ_verifier::Band;

/// Upper bound on scopes in one request.
const MAX_SCOPES: usize = 64;

/// An incident's maximum lifetime when the request names none (DESIGN.md §7), or the
/// configured ceiling if that is shorter.
const DEFAULT_INCIDENT_LIFETIME: Duration = Duration::from_secs(4 * 3600);

/// An operator making a call.
#[derive(Debug)]
struct Caller {
    /// The name recorded for their actions.
    name: String,
    /// The uid they act as: the kernel's word on the local socket, the configured one over
    /// mTLS (if any).
    uid: Option<u32>,
    /// Their roles.
    roles: BTreeSet<Role>,
}

impl Caller {
    /// As grants record and compare requesters and approvers.
    fn principal(&self) -> Principal<'_> {
        Principal {
            name: &self.name,
            uid: self.uid,
        }
    }
}

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    issuer: Arc<Issuer>,
    server_uid: u32,
}

/// The admin API as served: the service, its refusals audited.
pub fn server(
    issuer: Arc<Issuer>,
) -> anyhow::Result<
    refusals::AuditRefusals<crate::proto::admin::admin_server::AdminServer<AdminService>>,
> {
    let log = Arc::clone(&issuer.audit);
    let clock = issuer.cas.clock();
    let service = AdminService::new(issuer)?;
    Ok(refusals::AuditRefusals::new(
        crate::proto::admin::admin_server::AdminServer::new(service),
        log,
        clock,
    ))
}

impl AdminService {
    /// A service answering for `issuer`.
    pub fn new(issuer: Arc<Issuer>) -> anyhow::Result<Self> {
        // /proc/self belongs to the process's effective uid.
        let server_uid = std::fs::metadata("/proc/self")?.uid();
        Ok(AdminService { issuer, server_uid })
    }

    /// The operator calling, if the role matrix ([`crate::policy::roles`], docs/roles.md)
    /// lets them perform `operation`: the one place an admin RPC checks roles. Returns the
    /// name recorded for their actions. Refusals are logged.
    fn authorize<T>(&self, request: &Request<T>, operation: Operation) -> Result<String, Status> {
        self.caller(request, operation).map(|caller| caller.name)
    }

    /// [`AdminService::authorize`], with the uid the caller acts as.
    fn caller<T>(&self, request: &Request<T>, operation: Operation) -> Result<Caller, Status> {
        let caller = self.operator(request)?;
        if allowed(&caller.roles, operation) {
            return Ok(caller);
        }
        let wanted: Vec<String> = operation
            .roles()
            .iter()
            .map(crate::policy::wire_name)
            .collect();
        tracing::warn!(operator = %caller.name, ?operation, ?wanted, "admin call refused: missing role");
        Err(Status::permission_denied(format!(
            "{} needs the role {}",
            caller.name,
            wanted.join(" or ")
        )))
    }

    /// Who is calling and with which roles: on the local socket, a configured operator by
    /// the kernel-reported uid, or root / the uid running writ (every role); over mTLS, the
    /// configured operator named by the verified client certificate.
    fn operator<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let operators = &self.issuer.config.operators;
        if let Some(peer) = request.extensions().get::<super::tls::AdminPeer>() {
            let name = peer.operator.as_deref().ok_or_else(|| {
                Status::unauthenticated("an operator client certificate is required")
            })?;
            return match operators.iter().find(|o| o.name == name) {
                // The uid configured for them is the one they act as locally too.
                Some(o) => Ok(Caller {
                    name: o.name.clone(),
                    uid: o.uid,
                    roles: o.roles.clone(),
                }),
                None => {
                    tracing::warn!(operator = %name, "admin call refused: certificate names no configured operator");
                    Err(Status::permission_denied(format!(
                        "{name} is not a writ operator"
                    )))
                }
            };
        }
        let uid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid())
            .ok_or_else(|| Status::permission_denied("caller credentials unavailable"))?;
        if let Some(o) = operators.iter().find(|o| o.uid == Some(uid)) {
            Ok(Caller {
                name: o.name.clone(),
                uid: Some(uid),
                roles: o.roles.clone(),
            })
        } else if uid == 0 || uid == self.server_uid {
            Ok(Caller {
                name: caller_name(uid),
                uid: Some(uid),
                roles: Role::ALL.into_iter().collect(),
            })
        } else {
            tracing::warn!(uid, "admin call refused: not an operator");
            Err(Status::permission_denied(format!(
                "uid {uid} is not a writ operator"
            )))
        }
    }

    /// Resolves the request's identity to the SPIFFE ID it names and the scopes asked
    /// for; whether anyone holds it is [`operator_request`]'s question.
    fn resolve(&self, identity: Option<pb::Identity>) -> Result<(SpiffeId, Vec<String>), Status> {
        let identity = identity.ok_or_else(|| Status::invalid_argument("identity is required"))?;
        if identity.scopes.len() > MAX_SCOPES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_SCOPES} scopes"
            )));
        }
        for scope in &identity.scopes {
            check_scope(scope).map_err(invalid)?;
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
                crate::ca::check_svid_id(&id).map_err(status)?;
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
                let id =
                    agent_spiffe_id(cas.base(), band, &identity.agent, &identity.incident, grant)
                        .map_err(|e| status(e.into()))?;
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
}

fn bands_of(band: &str) -> Result<Vec<Band>, Status> {
    if band.is_empty() {
        return Ok(Band::ALL.to_vec());
    }
    band.parse::<Band>()
        .map(|b| vec![b])
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

impl AdminService {
    fn authorities(&self, bands: &[Band]) -> pb::AuthoritiesResponse {
        let mut authorities = Vec::new();
        for band in bands {
            let ca = self.issuer.cas.ca(*band);
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

    /// Prepares (or activates) the next authority of each band, then republishes bundles.
    async fn rotate(&self, bands: Vec<Band>, who: String, activate: bool) -> Result<(), Status> {
        let issuer = Arc::clone(&self.issuer);
        blocking(
            move || {
                let now = issuer.cas.now();
                for band in &bands {
                    let ca = issuer.cas.ca(*band);
                    if activate {
                        ca.activate(now)?;
                    } else {
                        ca.prepare(now)?;
                    }
                    tracing::info!(%band, by = %who, activate, "CA authority rotated by an operator");
                }
                issuer.publish_bundles();
                Ok(())
            },
            status,
        )
        .await
    }
}

impl AdminService {
    async fn end_grant(
        &self,
        body: pb::EndGrantRequest,
        who: String,
        state: GrantState,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        name_arg("grant", &body.id)?;
        let issuer = Arc::clone(&self.issuer);
        let by = who.clone();
        // The reason is checked by the policy (one line of visible text); empty takes a
        // default. Only the state is lowercased: operator names keep their case.
        let reason = if body.reason.is_empty() {
            format!("{} by {who}", format!("{state:?}").to_lowercase())
        } else {
            body.reason
        };
        let grant = blocking(
            move || {
                let now = issuer.cas.now();
                issuer
                    .registry
                    .end_grant(&body.id, state, &by, &reason, now)
            },
            registry_status,
        )
        .await?;
        tracing::info!(grant = %grant.id, by = %who, state = ?grant.state, "grant ended");
        Ok(Response::new(pb::GrantResponse {
            grant: Some(grant_to_proto(&grant, &self.issuer)),
        }))
    }
}

/// What an operator's mint of `spiffe_id` signs, decided under the issuance gate (the
/// caller holds it): exactly what policy gives some workload this instant, as the
/// Workload API would issue it, with fewer scopes if asked and living `ttl` at most (a
/// grant's window cuts it). No identity is minted that policy does not entitle: there is
/// no break-glass path (issue 10, finding 7).
fn operator_request(
    issuer: &Issuer,
    spiffe_id: &SpiffeId,
    scopes: &[String],
    ttl: Duration,
) -> Result<(Band, SvidRequest), Status> {
    let policy = issuer.registry.snapshot();
    let entitlement = operator_entitlement(&policy, issuer.cas.base(), spiffe_id, scopes)
        .map_err(|e| Status::permission_denied(e.to_string()))?;
    issuer
        .entitled_request(entitlement, ttl)
        .map_err(issue_status)
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

/// Maps an issuance error to a gRPC status.
fn issue_status(error: super::IssueError) -> Status {
    match error {
        super::IssueError::Ca(e) => status(e),
        e @ super::IssueError::NotEntitled(_) => Status::failed_precondition(e.to_string()),
        e @ super::IssueError::Audit(_) => Status::unavailable(e.to_string()),
    }
}

/// Maps a registry error to a gRPC status: the caller's mistakes carry their reason;
/// a store failure is logged and reported generically (nothing changed).
fn registry_status(error: RegistryError) -> Status {
    use crate::policy::GrantError;
    use crate::policy::playbook::PlaybookError;
    match error {
        // Extending is valid input; the incident's age is what refuses it.
        RegistryError::Invalid(e @ PolicyError::PastLifetimeCeiling { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        RegistryError::Invalid(e) => Status::invalid_argument(e.to_string()),
        RegistryError::Grant(GrantError::Invalid(e)) => Status::invalid_argument(e.to_string()),
        RegistryError::Grant(
            e @ (GrantError::OwnRequest(_)
            | GrantError::SameUid { .. }
            | GrantError::NotEligible(_)),
        ) => Status::permission_denied(e.to_string()),
        RegistryError::Grant(e @ GrantError::DigestMismatch { .. }) => {
            Status::invalid_argument(e.to_string())
        }
        RegistryError::Grant(e) => Status::failed_precondition(e.to_string()),
        RegistryError::Playbook(
            e @ (PlaybookError::Invalid(_)
            | PlaybookError::BadField(_)
            | PlaybookError::DigestMismatch { .. }
            | PlaybookError::NoTargets(_)),
        ) => Status::invalid_argument(e.to_string()),
        RegistryError::Playbook(
            e @ (PlaybookError::OwnPlaybook(_)
            | PlaybookError::NotEligible(_)
            | PlaybookError::OutOfBounds(_)),
        ) => Status::permission_denied(e.to_string()),
        RegistryError::Playbook(e) => Status::failed_precondition(e.to_string()),
        RegistryError::Serial(e @ crate::policy::SerialError::Malformed(_)) => {
            Status::invalid_argument(e.to_string())
        }
        RegistryError::Serial(e) => Status::failed_precondition(e.to_string()),
        e @ RegistryError::RateLimited(_) => Status::resource_exhausted(e.to_string()),
        e @ RegistryError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        e @ RegistryError::NotFound { .. } => Status::not_found(e.to_string()),
        e @ RegistryError::AlreadyClosed(_) => Status::failed_precondition(e.to_string()),
        other => {
            tracing::error!(error = %other, "admin policy request failed");
            Status::internal("internal error; see the server log")
        }
    }
}

/// Runs `f` (which may fsync) off the async workers, mapping its error with `map`.
async fn blocking<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
    map: fn(E) -> Status,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "blocking task failed");
            Status::internal("internal error; see the server log")
        })?
        .map_err(map)
}

/// How the caller is recorded as opener or closer until operators have names.
fn caller_name(uid: u32) -> String {
    format!("uid:{uid}")
}

fn invalid(error: PolicyError) -> Status {
    registry_status(RegistryError::Invalid(error))
}

fn invalid_serial(error: crate::policy::SerialError) -> Status {
    registry_status(RegistryError::Serial(error))
}

/// A name of `what` given in a request, checked before it is looked up or echoed.
fn name_arg(what: &str, name: &str) -> Result<(), Status> {
    check_name(what, name).map_err(invalid)
}

/// Refuses oversized lists before parsing their items.
fn bounded(what: &'static str, items: &[String]) -> Result<(), Status> {
    if items.len() > MAX_ITEMS {
        return Err(invalid(PolicyError::TooMany(what)));
    }
    Ok(())
}

/// The plan and window of a grant request, refused with a message that says what is
/// wrong (the policy checks them again; its refusal reads as if they were names).
fn check_grant_sizes(request: &GrantRequest) -> Result<(), Status> {
    use crate::policy::grant::{MAX_PLAN_LEN, MAX_WINDOW_SECS};
    if request.plan.is_empty() || request.plan.len() > MAX_PLAN_LEN {
        return Err(Status::invalid_argument(format!(
            "the plan must be 1 to {MAX_PLAN_LEN} bytes (it is {})",
            request.plan.len()
        )));
    }
    if let Some(secs) = request.window_secs
        && (secs == 0 || secs > MAX_WINDOW_SECS)
    {
        return Err(Status::invalid_argument(format!(
            "the grant window must be between 1s and {}",
            humantime::format_duration(Duration::from_secs(MAX_WINDOW_SECS))
        )));
    }
    Ok(())
}

/// Parses a profile request; the registry checks the whole object again.
fn parse_profile(body: pb::CreateProfileRequest, now: i64) -> Result<Profile, Status> {
    bounded("selectors", &body.selectors)?;
    bounded("bands", &body.bands)?;
    bounded("scopes", &body.scopes)?;
    let selectors = body
        .selectors
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|e| invalid(e.into()))?;
    let mut bands = body
        .bands
        .iter()
        .map(|b| {
            b.parse::<Band>().map_err(|_| {
                let b: String = b.chars().take(32).collect();
                invalid(PolicyError::BadBands(format!(
                    "unknown band {b:?} (use investigative, remediation, or base for a service)"
                )))
            })
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    if bands.is_empty() {
        // Advisory-only by default; a service holds only its standing base identity.
        bands.insert(if body.service {
            Band::Base
        } else {
            Band::Investigative
        });
    }
    let profile = Profile {
        name: body.name,
        selectors,
        bands,
        scopes: body.scopes.into_iter().collect(),
        service: body.service,
        created_at: now,
    };
    profile.validate().map_err(invalid)?;
    Ok(profile)
}

/// Parses an incident request; the registry checks the whole object again. Its lifetime
/// may not pass `ceiling_secs` (config `max_incident_lifetime`).
fn parse_incident(
    body: pb::OpenIncidentRequest,
    by: String,
    now: i64,
    ceiling_secs: u64,
) -> Result<Incident, Status> {
    bounded("assigned agents", &body.assigned)?;
    bounded("scopes", &body.scopes)?;
    if body.title.trim().is_empty() {
        return Err(Status::invalid_argument(
            "an incident needs a title (--title)",
        ));
    }
    let severity: Severity = body.severity.parse().map_err(invalid)?;
    let max_lifetime = body
        .max_lifetime_seconds
        .unwrap_or(DEFAULT_INCIDENT_LIFETIME.as_secs().min(ceiling_secs));
    if max_lifetime == 0 {
        return Err(Status::invalid_argument("max lifetime must be at least 1s"));
    }
    let incident = Incident {
        id: body.id,
        title: body.title,
        severity,
        assigned: body.assigned.into_iter().collect(),
        scopes: body.scopes.into_iter().collect(),
        state: IncidentState::Open,
        opened_by: by,
        opened_at: now,
        closed_by: None,
        closed_at: None,
        max_lifetime_secs: max_lifetime,
    };
    incident.validate().map_err(invalid)?;
    // Bad input here (at extend time the same rule is a matter of the incident's age).
    incident
        .check_lifetime(ceiling_secs)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(incident)
}

fn profile_to_proto(profile: &Profile) -> pb::Profile {
    pb::Profile {
        name: profile.name.clone(),
        selectors: profile.selectors.iter().map(ToString::to_string).collect(),
        bands: profile.bands.iter().map(ToString::to_string).collect(),
        scopes: profile.scopes.iter().cloned().collect(),
        service: profile.service,
        created_at: profile.created_at,
    }
}

/// A grant as the API shows it, with the quorum its incident needs and the identity it
/// grants.
fn grant_to_proto(grant: &Grant, issuer: &Issuer) -> pb::Grant {
    let policy = issuer.registry.snapshot();
    let quorum = policy
        .incidents
        .get(&grant.incident)
        .map(|i| policy.rules.quorum(i.severity, &grant.scopes) as u32)
        .unwrap_or(0);
    // A playbook activation rests on the playbook's quorum and its activator.
    let quorum = match grant.playbook {
        Some(_) => crate::policy::playbook::QUORUM as u32 + 1,
        None => quorum,
    };
    let spiffe_id = agent_spiffe_id(
        issuer.cas.base(),
        Band::Remediation,
        &grant.agent,
        &grant.incident,
        Some(&grant.id),
    )
    .map(|id| id.to_string())
    .unwrap_or_default();
    pb::Grant {
        id: grant.id.clone(),
        incident: grant.incident.clone(),
        agent: grant.agent.clone(),
        action: grant.action.clone(),
        targets: grant.targets.iter().cloned().collect(),
        evidence: grant.evidence.clone(),
        plan: grant.plan.clone(),
        plan_digest: grant.plan_digest.clone(),
        scopes: grant.scopes.iter().cloned().collect(),
        window_seconds: grant.window_secs,
        requested_by: grant.requested_by.clone(),
        requested_at: grant.requested_at,
        approvals: grant
            .approvals
            .iter()
            .map(|a| pb::GrantApproval {
                by: a.by.clone(),
                at: a.at,
                plan_digest: a.plan_digest.clone(),
            })
            .collect(),
        state: crate::policy::wire_name(&grant.state),
        activated_at: grant.activated_at,
        expires_at: grant.expires_at,
        ended_at: grant.ended.as_ref().map(|e| e.at),
        ended_by: grant
            .ended
            .as_ref()
            .map(|e| e.by.clone())
            .unwrap_or_default(),
        end_reason: grant
            .ended
            .as_ref()
            .map(|e| e.reason.clone())
            .unwrap_or_default(),
        quorum,
        spiffe_id,
        playbook: grant.playbook.clone().unwrap_or_default(),
    }
}

fn incident_to_proto(incident: &Incident) -> pb::Incident {
    pb::Incident {
        id: incident.id.clone(),
        title: incident.title.clone(),
        severity: incident.severity.to_string(),
        assigned: incident.assigned.iter().cloned().collect(),
        scopes: incident.scopes.iter().cloned().collect(),
        state: match incident.state {
            IncidentState::Open => "open",
            IncidentState::Closed => "closed",
        }
        .into(),
        opened_by: incident.opened_by.clone(),
        opened_at: incident.opened_at,
        closed_by: incident.closed_by.clone(),
        closed_at: incident.closed_at,
        max_lifetime_seconds: incident.max_lifetime_secs,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    type ReadAuditStream = audit::AuditStream;

    async fn read_audit(
        &self,
        request: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<Self::ReadAuditStream>, Status> {
        self.read_audit_rpc(request).await
    }

    async fn get_audit_checkpoint(
        &self,
        request: Request<pb::GetAuditCheckpointRequest>,
    ) -> Result<Response<pb::AuditCheckpoint>, Status> {
        self.get_audit_checkpoint_rpc(request).await
    }

    async fn mint_x509_svid(
        &self,
        request: Request<pb::MintX509SvidRequest>,
    ) -> Result<Response<pb::MintX509SvidResponse>, Status> {
        let who = self.authorize(&request, Operation::MintSvid)?;
        let body = request.into_inner();
        let (spiffe_id, scopes) = self.resolve(body.identity)?;
        let id = spiffe_id.to_string();
        let issuer = Arc::clone(&self.issuer);
        let (band, minted) = blocking(
            move || {
                let _gate = issuer.registry.issuance_gate();
                let ttl = body
                    .ttl_seconds
                    .map_or(issuer.config.ca.x509_svid_ttl, Duration::from_secs);
                let (band, mut svid) = operator_request(&issuer, &spiffe_id, &scopes, ttl)?;
                svid.dns_names = body.dns_names;
                issuer
                    .issue_x509(band, SubjectKey::Csr(&body.csr), svid, &who)
                    .map(|minted| (band, minted))
                    .map_err(issue_status)
            },
            std::convert::identity,
        )
        .await?;
        Ok(Response::new(pb::MintX509SvidResponse {
            spiffe_id: id,
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
        let who = self.authorize(&request, Operation::MintSvid)?;
        let body = request.into_inner();
        let (spiffe_id, scopes) = self.resolve(body.identity)?;
        let id = spiffe_id.to_string();
        let issuer = Arc::clone(&self.issuer);
        let minted = blocking(
            move || {
                let _gate = issuer.registry.issuance_gate();
                let ttl = body
                    .ttl_seconds
                    .map_or(issuer.config.ca.jwt_svid_ttl, Duration::from_secs);
                let (band, svid) = operator_request(&issuer, &spiffe_id, &scopes, ttl)?;
                issuer
                    .issue_jwt(band, svid, &body.audience, &who)
                    .map_err(issue_status)
            },
            std::convert::identity,
        )
        .await?;
        Ok(Response::new(pb::MintJwtSvidResponse {
            spiffe_id: id,
            token: minted.token,
            expires_at: minted.expires_at,
        }))
    }

    async fn get_bundles(
        &self,
        request: Request<pb::GetBundlesRequest>,
    ) -> Result<Response<pb::GetBundlesResponse>, Status> {
        self.authorize(&request, Operation::GetBundles)?;
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

    async fn show_authorities(
        &self,
        request: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        self.authorize(&request, Operation::ShowAuthorities)?;
        let bands = bands_of(&request.into_inner().band)?;
        Ok(Response::new(self.authorities(&bands)))
    }

    async fn prepare_authority(
        &self,
        request: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        let who = self.authorize(&request, Operation::RotateAuthority)?;
        let bands = bands_of(&request.into_inner().band)?;
        self.rotate(bands.clone(), who, false).await?;
        Ok(Response::new(self.authorities(&bands)))
    }

    async fn activate_authority(
        &self,
        request: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        let who = self.authorize(&request, Operation::RotateAuthority)?;
        let bands = bands_of(&request.into_inner().band)?;
        self.rotate(bands.clone(), who, true).await?;
        Ok(Response::new(self.authorities(&bands)))
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        self.authorize(&request, Operation::ListOperators)?;
        let role_names = |roles: &mut dyn Iterator<Item = &Role>| -> Vec<String> {
            roles.map(crate::policy::wire_name).collect()
        };
        let mut operators: Vec<pb::Operator> = self
            .issuer
            .config
            .operators
            .iter()
            .map(|o| pb::Operator {
                name: o.name.clone(),
                uid: o.uid,
                roles: role_names(&mut o.roles.iter()),
                implicit: false,
            })
            .collect();
        let mut implicit = vec![0];
        if self.server_uid != 0 {
            implicit.push(self.server_uid);
        }
        for uid in implicit {
            if !operators.iter().any(|o| o.uid == Some(uid)) {
                operators.push(pb::Operator {
                    name: caller_name(uid),
                    uid: Some(uid),
                    roles: role_names(&mut Role::ALL.iter()),
                    implicit: true,
                });
            }
        }
        Ok(Response::new(pb::ListOperatorsResponse { operators }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        self.authorize(&request, Operation::CreateJoinToken)?;
        let ttl = request.into_inner().ttl_seconds.unwrap_or(600);
        if ttl == 0 || ttl > 7 * 24 * 3600 {
            return Err(Status::invalid_argument(
                "token TTL must be between 1s and 7 days",
            ));
        }
        let issuer = Arc::clone(&self.issuer);
        let (token, expires_at) =
            tokio::task::spawn_blocking(move || super::node::create_join_token(&issuer, ttl))
                .await
                .map_err(|_| Status::internal("internal error; see the server log"))??;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token,
            expires_at,
        }))
    }

    async fn health(
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

    async fn create_profile(
        &self,
        request: Request<pb::CreateProfileRequest>,
    ) -> Result<Response<pb::CreateProfileResponse>, Status> {
        let uid = self.authorize(&request, Operation::ManageProfiles)?;
        let profile = parse_profile(request.into_inner(), self.issuer.cas.now())?;
        let issuer = Arc::clone(&self.issuer);
        let by = uid.clone();
        let operator_uids = operator_uids(&self.issuer.config.operators, self.server_uid);
        let profile = blocking(
            move || {
                // Operators and workloads are different people: a profile may not make an
                // operator's uid an agent (docs/roles.md), save in the one-user demo.
                match check_profile(&profile, &operator_uids, crate::passwd::uid_of) {
                    Err(e) if issuer.config.remediation.demo_single_user => {
                        tracing::warn!(%e, "accepted for the one-user demo (writ dev --demo-single-user)");
                    }
                    checked => checked?,
                }
                issuer.registry.create_profile(profile, &by)
            },
            registry_status,
        )
        .await?;
        tracing::info!(
            profile = %profile.name,
            service = profile.service,
            by = %uid.clone(),
            "profile created"
        );
        Ok(Response::new(pb::CreateProfileResponse {
            profile: Some(profile_to_proto(&profile)),
        }))
    }

    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        self.authorize(&request, Operation::ReadProfiles)?;
        let policy = self.issuer.registry.snapshot();
        Ok(Response::new(pb::ListProfilesResponse {
            profiles: policy.profiles.values().map(profile_to_proto).collect(),
        }))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        self.authorize(&request, Operation::ReadProfiles)?;
        let name = request.into_inner().name;
        name_arg("profile", &name)?;
        let policy = self.issuer.registry.snapshot();
        let profile = policy.profiles.get(&name).ok_or_else(|| {
            registry_status(RegistryError::NotFound {
                what: "profile",
                name,
            })
        })?;
        Ok(Response::new(pb::GetProfileResponse {
            profile: Some(profile_to_proto(profile)),
        }))
    }

    async fn delete_profile(
        &self,
        request: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        let uid = self.authorize(&request, Operation::ManageProfiles)?;
        let name = request.into_inner().name;
        name_arg("profile", &name)?;
        let issuer = Arc::clone(&self.issuer);
        let by = uid.clone();
        let profile = blocking(
            move || issuer.registry.delete_profile(&name, &by),
            registry_status,
        )
        .await?;
        tracing::info!(profile = %profile.name, by = %uid.clone(), "profile deleted");
        Ok(Response::new(pb::DeleteProfileResponse {
            profile: Some(profile_to_proto(&profile)),
        }))
    }

    async fn open_incident(
        &self,
        request: Request<pb::OpenIncidentRequest>,
    ) -> Result<Response<pb::OpenIncidentResponse>, Status> {
        let uid = self.authorize(&request, Operation::CommandIncident)?;
        let incident = parse_incident(
            request.into_inner(),
            uid.clone(),
            self.issuer.cas.now(),
            self.issuer.config.max_incident_lifetime_secs,
        )?;
        let issuer = Arc::clone(&self.issuer);
        let incident = blocking(
            move || issuer.registry.open_incident(incident),
            registry_status,
        )
        .await?;
        tracing::info!(
            incident = %incident.id,
            severity = %incident.severity,
            assigned = ?incident.assigned,
            by = %incident.opened_by,
            "incident opened"
        );
        Ok(Response::new(pb::OpenIncidentResponse {
            incident: Some(incident_to_proto(&incident)),
        }))
    }

    async fn close_incident(
        &self,
        request: Request<pb::CloseIncidentRequest>,
    ) -> Result<Response<pb::CloseIncidentResponse>, Status> {
        let uid = self.authorize(&request, Operation::CommandIncident)?;
        let id = request.into_inner().id;
        name_arg("incident", &id)?;
        let issuer = Arc::clone(&self.issuer);
        let by = uid.clone();
        let incident = blocking(
            move || {
                let now = issuer.cas.now();
                issuer.registry.close_incident(&id, &by, now)
            },
            registry_status,
        )
        .await?;
        tracing::info!(incident = %incident.id, by = %uid.clone(), "incident closed");
        Ok(Response::new(pb::CloseIncidentResponse {
            incident: Some(incident_to_proto(&incident)),
        }))
    }

    async fn extend_incident(
        &self,
        request: Request<pb::ExtendIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        let who = self.authorize(&request, Operation::CommandIncident)?;
        let body = request.into_inner();
        name_arg("incident", &body.id)?;
        if body.by_seconds == 0 || body.by_seconds > 7 * 24 * 3600 {
            return Err(Status::invalid_argument(
                "--by must be between 1s and 7 days",
            ));
        }
        let issuer = Arc::clone(&self.issuer);
        let by = who.clone();
        let ceiling = self.issuer.config.max_incident_lifetime_secs;
        let incident = blocking(
            move || {
                let now = issuer.cas.now();
                issuer
                    .registry
                    .extend_incident(&body.id, body.by_seconds, ceiling, &by, now)
            },
            registry_status,
        )
        .await?;
        tracing::info!(incident = %incident.id, by = %who, max_lifetime_secs = incident.max_lifetime_secs, "incident extended");
        Ok(Response::new(pb::GetIncidentResponse {
            incident: Some(incident_to_proto(&incident)),
        }))
    }

    async fn request_grant(
        &self,
        request: Request<pb::RequestGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let caller = self.caller(&request, Operation::RequestGrant)?;
        let body = request.into_inner();
        let grant_request = GrantRequest {
            incident: body.incident,
            agent: body.agent,
            action: body.action,
            targets: body.targets.into_iter().collect(),
            evidence: body.evidence,
            plan: body.plan,
            scopes: body.scopes.into_iter().collect(),
            window_secs: body.window_seconds,
        };
        name_arg("incident", &grant_request.incident)?;
        name_arg("agent", &grant_request.agent)?;
        check_grant_sizes(&grant_request)?;
        let issuer = Arc::clone(&self.issuer);
        let (who, uid) = (caller.name.clone(), caller.uid);
        let grant = blocking(
            move || {
                let now = issuer.cas.now();
                issuer
                    .registry
                    .request_grant(grant_request, caller.principal(), now)
            },
            registry_status,
        )
        .await?;
        tracing::info!(grant = %grant.id, incident = %grant.incident, agent = %grant.agent, plan_digest = %grant.plan_digest, by = %who, ?uid, "grant requested");
        Ok(Response::new(pb::GrantResponse {
            grant: Some(grant_to_proto(&grant, &self.issuer)),
        }))
    }

    async fn approve_grant(
        &self,
        request: Request<pb::ApproveGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let approver = self.caller(&request, Operation::Approve)?;
        let body = request.into_inner();
        name_arg("grant", &body.id)?;
        let issuer = Arc::clone(&self.issuer);
        let who = approver.name.clone();
        let approval_ttl = self.issuer.config.approval_ttl_secs as i64;
        let grant = blocking(
            move || {
                let now = issuer.cas.now();
                issuer.registry.approve_grant(
                    &body.id,
                    approver.principal(),
                    &body.plan_digest,
                    approval_ttl,
                    now,
                )
            },
            registry_status,
        )
        .await?;
        tracing::info!(grant = %grant.id, by = %who, state = ?grant.state, approvals = grant.approvals.len(), "grant approved");
        Ok(Response::new(pb::GrantResponse {
            grant: Some(grant_to_proto(&grant, &self.issuer)),
        }))
    }

    async fn deny_grant(
        &self,
        request: Request<pb::EndGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let who = self.authorize(&request, Operation::DenyGrant)?;
        self.end_grant(request.into_inner(), who, GrantState::Denied)
            .await
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::EndGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let who = self.authorize(&request, Operation::RevokeGrant)?;
        self.end_grant(request.into_inner(), who, GrantState::Revoked)
            .await
    }

    async fn get_grant(
        &self,
        request: Request<pb::GetGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.authorize(&request, Operation::ReadGrants)?;
        let id = request.into_inner().id;
        name_arg("grant", &id)?;
        let policy = self.issuer.registry.snapshot();
        let grant = policy
            .grants
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("unknown grant {id:?}")))?;
        Ok(Response::new(pb::GrantResponse {
            grant: Some(grant_to_proto(grant, &self.issuer)),
        }))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        self.authorize(&request, Operation::ReadGrants)?;
        let incident = request.into_inner().incident;
        let policy = self.issuer.registry.snapshot();
        let mut grants: Vec<&Grant> = policy
            .grants
            .values()
            .filter(|g| incident.is_empty() || g.incident == incident)
            .collect();
        grants.sort_by(|a, b| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)));
        Ok(Response::new(pb::ListGrantsResponse {
            grants: grants
                .into_iter()
                .map(|g| grant_to_proto(g, &self.issuer))
                .collect(),
        }))
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        self.authorize(&request, Operation::ReadIncidents)?;
        let policy = self.issuer.registry.snapshot();
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents: policy.incidents.values().map(incident_to_proto).collect(),
        }))
    }

    async fn get_incident(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        self.authorize(&request, Operation::ReadIncidents)?;
        let id = request.into_inner().id;
        name_arg("incident", &id)?;
        let policy = self.issuer.registry.snapshot();
        let incident = policy.incidents.get(&id).ok_or_else(|| {
            registry_status(RegistryError::NotFound {
                what: "incident",
                name: id,
            })
        })?;
        Ok(Response::new(pb::GetIncidentResponse {
            incident: Some(incident_to_proto(incident)),
        }))
    }

    // Guardrail playbooks: see `playbooks.rs`.

    async fn create_playbook(
        &self,
        request: Request<pb::CreatePlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        self.create_playbook_rpc(request).await
    }

    async fn approve_playbook(
        &self,
        request: Request<pb::ApprovePlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        self.approve_playbook_rpc(request).await
    }

    async fn list_playbooks(
        &self,
        request: Request<pb::ListPlaybooksRequest>,
    ) -> Result<Response<pb::ListPlaybooksResponse>, Status> {
        self.list_playbooks_rpc(request).await
    }

    async fn get_playbook(
        &self,
        request: Request<pb::GetPlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        self.get_playbook_rpc(request).await
    }

    async fn retire_playbook(
        &self,
        request: Request<pb::RetirePlaybookRequest>,
    ) -> Result<Response<pb::RetirePlaybookResponse>, Status> {
        self.retire_playbook_rpc(request).await
    }

    async fn activate_playbook(
        &self,
        request: Request<pb::ActivatePlaybookRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.activate_playbook_rpc(request).await
    }

    // Issued SVIDs: see `svids.rs`.

    async fn list_svids(
        &self,
        request: Request<pb::ListSvidsRequest>,
    ) -> Result<Response<pb::ListSvidsResponse>, Status> {
        self.list_svids_rpc(request).await
    }

    async fn revoke_svid(
        &self,
        request: Request<pb::RevokeSvidRequest>,
    ) -> Result<Response<pb::SvidResponse>, Status> {
        self.revoke_svid_rpc(request).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::StoreError;
    use tonic::Code;

    fn profile_request(
        selectors: &[&str],
        bands: &[&str],
        service: bool,
    ) -> pb::CreateProfileRequest {
        pb::CreateProfileRequest {
            name: "triage".into(),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            bands: bands.iter().map(|s| s.to_string()).collect(),
            scopes: vec!["logs:read".into()],
            service,
        }
    }

    const CEILING: u64 = crate::policy::DEFAULT_MAX_INCIDENT_LIFETIME_SECS;

    fn incident_request(severity: &str, assigned: &[&str]) -> pb::OpenIncidentRequest {
        pb::OpenIncidentRequest {
            id: "INC-1".into(),
            title: "db down".into(),
            severity: severity.into(),
            assigned: assigned.iter().map(|s| s.to_string()).collect(),
            scopes: Vec::new(),
            max_lifetime_seconds: None,
        }
    }

    #[test]
    fn grant_plans_and_windows_out_of_bounds_say_so() {
        use crate::policy::grant::{MAX_PLAN_LEN, MAX_WINDOW_SECS};
        let request = |plan: String, window_secs: Option<u64>| GrantRequest {
            incident: "INC-1".into(),
            agent: "fixer".into(),
            action: "restart".into(),
            plan,
            window_secs,
            ..GrantRequest::default()
        };
        assert!(check_grant_sizes(&request("p".into(), None)).is_ok());
        assert!(check_grant_sizes(&request("p".into(), Some(MAX_WINDOW_SECS))).is_ok());
        for (bad, says) in [
            (request(String::new(), None), "plan"),
            (request("x".repeat(MAX_PLAN_LEN + 1), None), "plan"),
            (request("p".into(), Some(0)), "window"),
            (request("p".into(), Some(MAX_WINDOW_SECS + 1)), "window"),
        ] {
            let status = check_grant_sizes(&bad).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains(says), "{status:?}");
            assert!(!status.message().contains("name"), "{status:?}");
        }
    }

    #[test]
    fn registry_errors_map_to_codes_and_store_detail_stays_in_the_log() {
        let cases = [
            (
                RegistryError::Invalid(PolicyError::NoSelectors),
                Code::InvalidArgument,
            ),
            (
                RegistryError::AlreadyExists {
                    what: "profile",
                    name: "a".into(),
                },
                Code::AlreadyExists,
            ),
            (
                RegistryError::NotFound {
                    what: "incident",
                    name: "a".into(),
                },
                Code::NotFound,
            ),
            (
                RegistryError::AlreadyClosed("a".into()),
                Code::FailedPrecondition,
            ),
            (
                RegistryError::Store(StoreError::Db("disk /secret/path failed".into())),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let status = registry_status(error);
            assert_eq!(status.code(), code);
            assert!(!status.message().contains("/secret/path"));
        }
    }

    #[test]
    fn profiles_default_to_the_investigative_band_and_services_to_base() {
        let agent = parse_profile(profile_request(&["unix:uid:1001"], &[], false), 7).unwrap();
        assert_eq!(agent.bands, BTreeSet::from([Band::Investigative]));
        assert_eq!(agent.created_at, 7);
        let service = parse_profile(profile_request(&["unix:uid:1001"], &[], true), 7).unwrap();
        assert_eq!(service.bands, BTreeSet::from([Band::Base]));
        let both = parse_profile(
            profile_request(&["unix:uid:1001"], &["investigative", "remediation"], false),
            7,
        )
        .unwrap();
        assert_eq!(both.bands.len(), 2);
    }

    #[test]
    fn bad_profile_fields_are_invalid_arguments() {
        for request in [
            profile_request(&["uid:1001"], &[], false),
            profile_request(&["unix:uid:abc"], &[], false),
            profile_request(&[], &[], false),
            profile_request(&["unix:uid:1"], &["nope"], false),
            profile_request(&["unix:uid:1"], &["base"], false),
            profile_request(&["unix:uid:1"], &["remediation"], true),
            profile_request(&["unix:uid:1"; MAX_ITEMS + 1], &[], false),
        ] {
            let status = parse_profile(request, 0).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    }

    #[test]
    fn incidents_are_parsed_with_a_default_lifetime() {
        let incident = parse_incident(
            incident_request("sev2", &["triage"]),
            "uid:0".into(),
            9,
            CEILING,
        )
        .unwrap();
        assert_eq!(incident.severity, Severity::Sev2);
        assert_eq!(incident.max_lifetime_secs, 4 * 3600);
        assert_eq!(incident.opened_by, "uid:0");
        assert_eq!(incident.opened_at, 9);
        assert!(incident.is_open());

        let mut too_long = incident_request("sev2", &["triage"]);
        too_long.max_lifetime_seconds = Some(CEILING + 1);
        let mut zero = incident_request("sev2", &["triage"]);
        zero.max_lifetime_seconds = Some(0);
        let mut untitled = incident_request("sev2", &["triage"]);
        untitled.title = " ".into();
        for request in [
            incident_request("sev5", &["triage"]),
            incident_request("", &["triage"]),
            incident_request("sev1", &[]),
            incident_request("sev1", &["a/b"]),
            too_long,
            zero,
            untitled,
        ] {
            let status = parse_incident(request, "uid:0".into(), 0, CEILING).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    }
}
