//! Incidents: opened by an incident commander for named agents and scopes, extended up to
//! the configured ceiling, closed (which ends every identity issued under them; see
//! [`crate::server::registry::Registry::close_incident`]).

use super::AdminService;
use super::call::{bounded, name_arg};
use crate::policy::roles::Operation;
use crate::policy::{Incident, IncidentState, Severity};
use crate::proto::admin as pb;
use crate::server::registry::RegistryError;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The most an incident may be extended by at once.
const MAX_EXTENSION_SECS: u64 = 7 * 24 * 3600;

/// Parses an incident request; the registry checks the whole object again. Its lifetime
/// may not pass `ceiling_secs` (config `max_incident_lifetime`).
fn parse_incident(
    tenant: &str,
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
    let severity: Severity = body.severity.parse()?;
    let max_lifetime = body
        .max_lifetime_seconds
        .unwrap_or(crate::policy::DEFAULT_INCIDENT_LIFETIME_SECS.min(ceiling_secs));
    if max_lifetime == 0 {
        return Err(Status::invalid_argument("max lifetime must be at least 1s"));
    }
    let incident = Incident {
        tenant: tenant.to_owned(),
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
        source: None,
    };
    incident.validate()?;
    // Bad input here (at extend time the same rule is a matter of the incident's age).
    incident
        .check_lifetime(ceiling_secs)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(incident)
}

/// An incident as the API shows it.
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
        source: incident.source.as_ref().map(|s| pb::IncidentSource {
            name: s.name.clone(),
            kind: s.kind.clone(),
            incident_id: s.incident_id.clone(),
            url: s.url.clone(),
        }),
    }
}

impl AdminService {
    pub(super) async fn open_incident_rpc(
        &self,
        request: Request<pb::OpenIncidentRequest>,
    ) -> Result<Response<pb::OpenIncidentResponse>, Status> {
        let incident = self
            .call(
                request,
                Operation::CommandIncident,
                |issuer, caller, body| {
                    let incident = parse_incident(
                        &caller.tenant,
                        body,
                        caller.name.clone(),
                        issuer.cas.now(),
                        issuer.config.max_incident_lifetime_secs,
                    )?;
                    Ok(issuer.registry.open_incident(incident)?)
                },
                |_, incident| {
                    tracing::info!(
                        incident = %incident.id,
                        severity = %incident.severity,
                        assigned = ?incident.assigned,
                        by = %incident.opened_by,
                        "incident opened"
                    );
                },
            )
            .await?;
        Ok(Response::new(pb::OpenIncidentResponse {
            incident: Some(incident_to_proto(&incident)),
        }))
    }

    pub(super) async fn close_incident_rpc(
        &self,
        request: Request<pb::CloseIncidentRequest>,
    ) -> Result<Response<pb::CloseIncidentResponse>, Status> {
        let (incident, unconfirmed_replicas) = self
            .call(
                request,
                Operation::CommandIncident,
                |issuer, caller, body| {
                    name_arg("incident", &body.id)?;
                    let now = issuer.cas.now();
                    Ok(issuer.registry.close_incident_confirmed(
                        &caller.tenant,
                        &body.id,
                        &caller.name,
                        now,
                    )?)
                },
                |caller, (incident, _)| {
                    tracing::info!(incident = %incident.id, by = %caller.name, "incident closed");
                },
            )
            .await?;
        Ok(Response::new(pb::CloseIncidentResponse {
            incident: Some(incident_to_proto(&incident)),
            unconfirmed_replicas,
        }))
    }

    pub(super) async fn extend_incident_rpc(
        &self,
        request: Request<pb::ExtendIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        let incident = self
            .call(
                request,
                Operation::CommandIncident,
                |issuer, caller, body| {
                    name_arg("incident", &body.id)?;
                    if body.by_seconds == 0 || body.by_seconds > MAX_EXTENSION_SECS {
                        return Err(Status::invalid_argument(
                            "--by must be between 1s and 7 days",
                        ));
                    }
                    let ceiling = issuer.config.max_incident_lifetime_secs;
                    let now = issuer.cas.now();
                    Ok(issuer.registry.extend_incident(
                        &caller.tenant,
                        &body.id,
                        body.by_seconds,
                        ceiling,
                        &caller.name,
                        now,
                    )?)
                },
                |caller, incident| {
                    tracing::info!(incident = %incident.id, by = %caller.name, max_lifetime_secs = incident.max_lifetime_secs, "incident extended");
                },
            )
            .await?;
        Ok(Response::new(pb::GetIncidentResponse {
            incident: Some(incident_to_proto(&incident)),
        }))
    }

    pub(super) async fn list_incidents_rpc(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let tenant = self.authorize(&request, Operation::ReadIncidents)?;
        // History is in the store (the registry keeps only live state in memory).
        let issuer = Arc::clone(&self.issuer);
        let incidents = tokio::task::spawn_blocking(move || issuer.registry.all_incidents(&tenant))
            .await
            .map_err(|_| Status::internal("listing incidents failed"))??;
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents: incidents.iter().map(incident_to_proto).collect(),
        }))
    }

    pub(super) async fn get_incident_rpc(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        let tenant = self.authorize(&request, Operation::ReadIncidents)?;
        let id = request.into_inner().id;
        name_arg("incident", &id)?;
        let issuer = Arc::clone(&self.issuer);
        let lookup = id.clone();
        let incident =
            tokio::task::spawn_blocking(move || issuer.registry.incident(&tenant, &lookup))
                .await
                .map_err(|_| Status::internal("reading the incident failed"))??
                .ok_or(RegistryError::NotFound {
                    what: "incident",
                    name: id,
                })?;
        Ok(Response::new(pb::GetIncidentResponse {
            incident: Some(incident_to_proto(&incident)),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tonic::Code;

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
    fn incidents_are_parsed_with_a_default_lifetime() {
        let incident = parse_incident(
            "default",
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
            let status =
                parse_incident("default", request, "uid:0".into(), 0, CEILING).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    }
}
