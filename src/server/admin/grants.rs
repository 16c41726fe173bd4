//! Remediation grants (docs/architecture.md, "Policy objects"): requested with a plan,
//! approved by a quorum of operators other than the requester, denied or revoked; read with
//! the quorum they need and the identity they grant.

use super::AdminService;
use super::call::name_arg;
use crate::identity::agent_spiffe_id;
use crate::policy::grant::{RemediationRules, required_approvals};
use crate::policy::roles::Operation;
use crate::policy::{Grant, GrantRequest, GrantState, Severity};
use crate::proto::admin as pb;
use crate::server::Issuer;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use writ_verifier::Band;

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

/// A grant as the API shows it, with the quorum it needs and the identity it grants.
/// Its incident may be history (closed longer ago than the live window): then it is read
/// from the store.
pub(super) fn grant_to_proto(grant: &Grant, issuer: &Issuer) -> pb::Grant {
    let severity = issuer
        .registry
        .incident(&grant.tenant, &grant.incident)
        .ok()
        .flatten()
        .map(|i| i.severity);
    grant_proto(grant, issuer, &issuer.registry.snapshot().rules, severity)
}

/// [`grant_to_proto`] with the incident's severity already known (a list reads every
/// incident once, not once per grant).
fn grant_proto(
    grant: &Grant,
    issuer: &Issuer,
    rules: &RemediationRules,
    severity: Option<Severity>,
) -> pb::Grant {
    let quorum = severity
        .map(|s| required_approvals(rules, s, grant) as u32)
        .unwrap_or(0);
    let spiffe_id = issuer
        .registry
        .snapshot()
        .base_of(issuer.cas.base(), &grant.tenant)
        .and_then(|base| {
            agent_spiffe_id(
                &base,
                Band::Remediation,
                &grant.agent,
                &grant.incident,
                Some(&grant.id),
            )
            .ok()
        })
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

impl AdminService {
    pub(super) fn grant_response(&self, grant: &Grant) -> Response<pb::GrantResponse> {
        self.grant_response_confirmed(grant, Vec::new())
    }

    /// With the servers that did not confirm the change (see `Registry::end_grant_confirmed`).
    fn grant_response_confirmed(
        &self,
        grant: &Grant,
        unconfirmed_replicas: Vec<String>,
    ) -> Response<pb::GrantResponse> {
        Response::new(pb::GrantResponse {
            grant: Some(grant_to_proto(grant, &self.issuer)),
            unconfirmed_replicas,
        })
    }

    pub(super) async fn request_grant_rpc(
        &self,
        request: Request<pb::RequestGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let grant = self
            .call(
                request,
                Operation::RequestGrant,
                |issuer, caller, body| {
                    let request = GrantRequest {
                        incident: body.incident,
                        agent: body.agent,
                        action: body.action,
                        targets: body.targets.into_iter().collect(),
                        evidence: body.evidence,
                        plan: body.plan,
                        scopes: body.scopes.into_iter().collect(),
                        window_secs: body.window_seconds,
                    };
                    name_arg("incident", &request.incident)?;
                    name_arg("agent", &request.agent)?;
                    check_grant_sizes(&request)?;
                    let now = issuer.cas.now();
                    Ok(issuer
                        .registry
                        .request_grant(&caller.tenant, request, caller.principal(), now)?)
                },
                |caller, grant| {
                    tracing::info!(grant = %grant.id, incident = %grant.incident, agent = %grant.agent, plan_digest = %grant.plan_digest, by = %caller.name, uid = ?caller.uid, "grant requested");
                },
            )
            .await?;
        Ok(self.grant_response(&grant))
    }

    pub(super) async fn approve_grant_rpc(
        &self,
        request: Request<pb::ApproveGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let grant = self
            .call(
                request,
                Operation::Approve,
                |issuer, caller, body| {
                    name_arg("grant", &body.id)?;
                    let approval_ttl = issuer.config.approval_ttl_secs as i64;
                    let now = issuer.cas.now();
                    let grant = issuer.registry.approve_grant(
                        &caller.tenant,
                        &body.id,
                        caller.principal(),
                        &body.plan_digest,
                        approval_ttl,
                        now,
                    )?;
                    // This approval made the quorum: the request waited this long.
                    if grant.state == GrantState::Active && grant.activated_at == Some(now) {
                        let waited = now.saturating_sub(grant.requested_at).max(0) as u64;
                        issuer
                            .metrics
                            .grant_approved(Duration::from_secs(waited));
                    }
                    Ok(grant)
                },
                |caller, grant| {
                    tracing::info!(grant = %grant.id, by = %caller.name, state = ?grant.state, approvals = grant.approvals.len(), "grant approved");
                },
            )
            .await?;
        Ok(self.grant_response(&grant))
    }

    /// Denies (`state` Denied) or revokes (Revoked) a grant; each has its own operation
    /// in the role matrix.
    pub(super) async fn end_grant_rpc(
        &self,
        request: Request<pb::EndGrantRequest>,
        state: GrantState,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let operation = match state {
            GrantState::Denied => Operation::DenyGrant,
            _ => Operation::RevokeGrant,
        };
        let (grant, unconfirmed) = self
            .call(
                request,
                operation,
                move |issuer, caller, body| {
                    name_arg("grant", &body.id)?;
                    // The reason is checked by the policy (one line of visible text); empty
                    // takes a default. Only the state is lowercased: operator names keep
                    // their case.
                    let reason = if body.reason.is_empty() {
                        let ended = format!("{state:?}").to_lowercase();
                        format!("{ended} by {}", caller.name)
                    } else {
                        body.reason
                    };
                    let now = issuer.cas.now();
                    Ok(issuer
                        .registry
                        .end_grant_confirmed(
                        &caller.tenant,
                        &body.id,
                        state,
                        &caller.name,
                        &reason,
                        now,
                    )?)
                },
                |caller, (grant, _)| {
                    tracing::info!(grant = %grant.id, by = %caller.name, state = ?grant.state, "grant ended");
                },
            )
            .await?;
        Ok(self.grant_response_confirmed(&grant, unconfirmed))
    }

    pub(super) async fn get_grant_rpc(
        &self,
        request: Request<pb::GetGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let tenant = self.authorize(&request, Operation::ReadGrants)?;
        let id = request.into_inner().id;
        name_arg("grant", &id)?;
        let issuer = Arc::clone(&self.issuer);
        let lookup = id.clone();
        let grant = tokio::task::spawn_blocking(move || issuer.registry.grant(&tenant, &lookup))
            .await
            .map_err(|_| Status::internal("reading the grant failed"))??
            .ok_or_else(|| Status::not_found(format!("unknown grant {id:?}")))?;
        Ok(self.grant_response(&grant))
    }

    pub(super) async fn list_grants_rpc(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let tenant = self.authorize(&request, Operation::ReadGrants)?;
        let incident = request.into_inner().incident;
        // History is in the store (the registry keeps only live state in memory).
        let issuer = Arc::clone(&self.issuer);
        let grants = tokio::task::spawn_blocking(move || -> Result<_, Status> {
            let mut grants: Vec<Grant> = issuer
                .registry
                .all_grants(&tenant)?
                .into_iter()
                .filter(|g| incident.is_empty() || g.incident == incident)
                .collect();
            grants.sort_by(|a, b| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)));
            let severities: BTreeMap<String, Severity> = issuer
                .registry
                .all_incidents(&tenant)?
                .into_iter()
                .map(|i| (i.id, i.severity))
                .collect();
            let rules = &issuer.registry.snapshot().rules;
            Ok(grants
                .iter()
                .map(|g| grant_proto(g, &issuer, rules, severities.get(&g.incident).copied()))
                .collect())
        })
        .await
        .map_err(|_| Status::internal("listing grants failed"))??;
        Ok(Response::new(pb::ListGrantsResponse { grants }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tonic::Code;

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
}
