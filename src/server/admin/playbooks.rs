//! Admin RPCs for guardrail playbooks (docs/architecture.md, "Policy objects"): an admin
//! creates one, two approvers (never its creator) approve its digest in advance, one
//! incident commander activates it for an open incident.

use super::AdminService;
use super::call::{bounded, name_arg};
use crate::policy::playbook::{self, ActivationRequest, Playbook, PlaybookSpec};
use crate::policy::roles::Operation;
use crate::proto::admin as pb;
use tonic::{Request, Response, Status};

fn response(book: &Playbook) -> Response<pb::PlaybookResponse> {
    Response::new(pb::PlaybookResponse {
        playbook: Some(playbook_to_proto(book)),
    })
}

/// A playbook as the API shows it, with its canonical form and digest so an approver can
/// check what they approve.
pub(super) fn playbook_to_proto(book: &Playbook) -> pb::Playbook {
    pb::Playbook {
        name: book.name.clone(),
        action: book.action.clone(),
        description: book.description.clone(),
        allowed_targets: book.allowed_targets.iter().cloned().collect(),
        scopes: book.scopes.iter().cloned().collect(),
        max_window_seconds: book.max_window_secs,
        created_by: book.created_by.clone(),
        created_at: book.created_at,
        approvals: book
            .approvals
            .iter()
            .map(|a| pb::GrantApproval {
                by: a.by.clone(),
                at: a.at,
                plan_digest: a.plan_digest.clone(),
            })
            .collect(),
        state: book.state.as_str().into(),
        digest: book.digest(),
        canonical: book.canonical(),
        quorum: playbook::QUORUM as u32,
        retired_at: book.retired.as_ref().map(|r| r.at),
        retired_by: book
            .retired
            .as_ref()
            .map(|r| r.by.clone())
            .unwrap_or_default(),
        retire_reason: book
            .retired
            .as_ref()
            .map(|r| r.reason.clone())
            .unwrap_or_default(),
    }
}

impl AdminService {
    pub(super) async fn create_playbook_rpc(
        &self,
        request: Request<pb::CreatePlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        let book = self
            .call(
                request,
                Operation::CreatePlaybook,
                |issuer, caller, body| {
                    name_arg("playbook", &body.name)?;
                    bounded("targets", &body.allowed_targets)?;
                    bounded("scopes", &body.scopes)?;
                    let spec = PlaybookSpec {
                        name: body.name,
                        action: body.action,
                        description: body.description,
                        allowed_targets: body.allowed_targets.into_iter().collect(),
                        scopes: body.scopes.into_iter().collect(),
                        max_window_secs: body.max_window_seconds,
                    };
                    let book = playbook::new_playbook(&caller.tenant, spec, &caller.name, issuer.cas.now())?;
                    Ok(issuer.registry.create_playbook(book)?)
                },
                |caller, book| {
                    tracing::info!(playbook = %book.name, digest = %book.digest(), targets = ?book.allowed_targets, max_window_secs = book.max_window_secs, by = %caller.name, "playbook created");
                },
            )
            .await?;
        Ok(response(&book))
    }

    pub(super) async fn approve_playbook_rpc(
        &self,
        request: Request<pb::ApprovePlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        let book = self
            .call(
                request,
                Operation::Approve,
                |issuer, caller, body| {
                    name_arg("playbook", &body.name)?;
                    if body.digest.is_empty() {
                        return Err(Status::invalid_argument(
                            "give the digest of the playbook you approve (writ playbook show NAME)",
                        ));
                    }
                    let now = issuer.cas.now();
                    Ok(issuer.registry.approve_playbook(
                        &caller.tenant,
                        &body.name,
                        &caller.name,
                        &body.digest,
                        now,
                    )?)
                },
                |caller, book| {
                    tracing::info!(playbook = %book.name, by = %caller.name, state = book.state.as_str(), approvals = book.approvals.len(), "playbook approved");
                },
            )
            .await?;
        Ok(response(&book))
    }

    pub(super) async fn list_playbooks_rpc(
        &self,
        request: Request<pb::ListPlaybooksRequest>,
    ) -> Result<Response<pb::ListPlaybooksResponse>, Status> {
        let tenant = self.authorize(&request, Operation::ReadPlaybooks)?;
        let policy = self.issuer.registry.snapshot();
        Ok(Response::new(pb::ListPlaybooksResponse {
            playbooks: policy
                .playbooks
                .values()
                .filter(|p| p.tenant == tenant)
                .map(playbook_to_proto)
                .collect(),
        }))
    }

    pub(super) async fn get_playbook_rpc(
        &self,
        request: Request<pb::GetPlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        let tenant = self.authorize(&request, Operation::ReadPlaybooks)?;
        let name = request.into_inner().name;
        name_arg("playbook", &name)?;
        let policy = self.issuer.registry.snapshot();
        let book = policy
            .playbook(&tenant, &name)
            .ok_or_else(|| Status::not_found(format!("unknown playbook {name:?}")))?;
        Ok(response(book))
    }

    pub(super) async fn retire_playbook_rpc(
        &self,
        request: Request<pb::RetirePlaybookRequest>,
    ) -> Result<Response<pb::RetirePlaybookResponse>, Status> {
        // Retiring only ever takes authority away, so incident commanders may too.
        let (book, revoked) = self
            .call(
                request,
                Operation::RetirePlaybook,
                |issuer, caller, body| {
                    name_arg("playbook", &body.name)?;
                    // The policy checks the reason (one line of visible text); empty takes
                    // a default.
                    let reason = if body.reason.is_empty() {
                        format!("retired by {}", caller.name)
                    } else {
                        body.reason
                    };
                    let now = issuer.cas.now();
                    let (book, revoked) = issuer.registry.retire_playbook(
                        &caller.tenant,
                        &body.name,
                        &caller.name,
                        &reason,
                        now,
                    )?;
                    let revoked: Vec<String> = revoked.into_iter().map(|g| g.id).collect();
                    Ok((book, revoked))
                },
                |caller, (book, revoked)| {
                    tracing::info!(playbook = %book.name, by = %caller.name, ?revoked, "playbook retired");
                },
            )
            .await?;
        Ok(Response::new(pb::RetirePlaybookResponse {
            playbook: Some(playbook_to_proto(&book)),
            revoked_grants: revoked,
        }))
    }

    pub(super) async fn activate_playbook_rpc(
        &self,
        request: Request<pb::ActivatePlaybookRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let grant = self
            .call(
                request,
                Operation::ActivatePlaybook,
                |issuer, caller, body| {
                    name_arg("playbook", &body.name)?;
                    name_arg("incident", &body.incident)?;
                    name_arg("agent", &body.agent)?;
                    bounded("targets", &body.targets)?;
                    let activation = ActivationRequest {
                        agent: body.agent,
                        targets: body.targets.into_iter().collect(),
                        window_secs: body.window_seconds,
                    };
                    let now = issuer.cas.now();
                    let activated = issuer
                        .registry
                        .activate_playbook(
                            &caller.tenant,
                            &body.name,
                            &body.incident,
                            activation,
                            &caller.name,
                            now,
                        )
                        .inspect_err(|e| {
                            tracing::info!(playbook = %body.name, incident = %body.incident, by = %caller.name, reason = %e, "playbook activation refused");
                        })?;
                    Ok(activated)
                },
                |caller, grant| {
                    tracing::info!(
                        playbook = grant.playbook.as_deref().unwrap_or_default(),
                        grant = %grant.id,
                        incident = %grant.incident,
                        agent = %grant.agent,
                        targets = ?grant.targets,
                        expires_at = ?grant.expires_at,
                        by = %caller.name,
                        "playbook activated"
                    );
                },
            )
            .await?;
        Ok(self.grant_response(&grant))
    }
}
