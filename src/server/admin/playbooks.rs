//! Admin RPCs for guardrail playbooks (DESIGN.md §4): an admin creates one, two approvers
//! (never its creator) approve its digest in advance, one incident commander activates it
//! for an open incident. Errors map through the admin service's `registry_status`.

use super::{AdminService, blocking, bounded, grant_to_proto, name_arg, registry_status};
use crate::policy::playbook::{self, ActivationRequest, Playbook, PlaybookSpec};
use crate::policy::roles::Operation;
use crate::proto::admin as pb;
use std::sync::Arc;
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
        let who = self.authorize(&request, Operation::CreatePlaybook)?;
        let body = request.into_inner();
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
        let book = playbook::new_playbook(spec, &who, self.issuer.cas.now())
            .map_err(|e| registry_status(e.into()))?;
        let issuer = Arc::clone(&self.issuer);
        let book = blocking(
            move || issuer.registry.create_playbook(book),
            registry_status,
        )
        .await?;
        tracing::info!(playbook = %book.name, digest = %book.digest(), targets = ?book.allowed_targets, max_window_secs = book.max_window_secs, by = %who, "playbook created");
        Ok(response(&book))
    }

    pub(super) async fn approve_playbook_rpc(
        &self,
        request: Request<pb::ApprovePlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        let who = self.authorize(&request, Operation::Approve)?;
        let body = request.into_inner();
        name_arg("playbook", &body.name)?;
        if body.digest.is_empty() {
            return Err(Status::invalid_argument(
                "give the digest of the playbook you approve (writ playbook show NAME)",
            ));
        }
        let issuer = Arc::clone(&self.issuer);
        let approver = who.clone();
        let book = blocking(
            move || {
                let now = issuer.cas.now();
                issuer
                    .registry
                    .approve_playbook(&body.name, &approver, &body.digest, now)
            },
            registry_status,
        )
        .await?;
        tracing::info!(playbook = %book.name, by = %who, state = book.state.as_str(), approvals = book.approvals.len(), "playbook approved");
        Ok(response(&book))
    }

    pub(super) async fn list_playbooks_rpc(
        &self,
        request: Request<pb::ListPlaybooksRequest>,
    ) -> Result<Response<pb::ListPlaybooksResponse>, Status> {
        self.authorize(&request, Operation::ReadPlaybooks)?;
        let policy = self.issuer.registry.snapshot();
        Ok(Response::new(pb::ListPlaybooksResponse {
            playbooks: policy.playbooks.values().map(playbook_to_proto).collect(),
        }))
    }

    pub(super) async fn get_playbook_rpc(
        &self,
        request: Request<pb::GetPlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        self.authorize(&request, Operation::ReadPlaybooks)?;
        let name = request.into_inner().name;
        name_arg("playbook", &name)?;
        let policy = self.issuer.registry.snapshot();
        let book = policy
            .playbooks
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("unknown playbook {name:?}")))?;
        Ok(response(book))
    }

    pub(super) async fn retire_playbook_rpc(
        &self,
        request: Request<pb::RetirePlaybookRequest>,
    ) -> Result<Response<pb::RetirePlaybookResponse>, Status> {
        // Retiring only ever takes authority away, so incident commanders may too.
        let who = self.authorize(&request, Operation::RetirePlaybook)?;
        let body = request.into_inner();
        name_arg("playbook", &body.name)?;
        // The policy checks the reason (one line of visible text); empty takes a default.
        let reason = if body.reason.is_empty() {
            format!("retired by {who}")
        } else {
            body.reason
        };
        let issuer = Arc::clone(&self.issuer);
        let by = who.clone();
        let (book, revoked) = blocking(
            move || {
                let now = issuer.cas.now();
                issuer
                    .registry
                    .retire_playbook(&body.name, &by, &reason, now)
            },
            registry_status,
        )
        .await?;
        let revoked: Vec<String> = revoked.into_iter().map(|g| g.id).collect();
        tracing::info!(playbook = %book.name, by = %who, ?revoked, "playbook retired");
        Ok(Response::new(pb::RetirePlaybookResponse {
            playbook: Some(playbook_to_proto(&book)),
            revoked_grants: revoked,
        }))
    }

    pub(super) async fn activate_playbook_rpc(
        &self,
        request: Request<pb::ActivatePlaybookRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let who = self.authorize(&request, Operation::ActivatePlaybook)?;
        let body = request.into_inner();
        name_arg("playbook", &body.name)?;
        name_arg("incident", &body.incident)?;
        name_arg("agent", &body.agent)?;
        bounded("targets", &body.targets)?;
        let activation = ActivationRequest {
            agent: body.agent,
            targets: body.targets.into_iter().collect(),
            window_secs: body.window_seconds,
        };
        let issuer = Arc::clone(&self.issuer);
        let activator = who.clone();
        let (name, incident) = (body.name, body.incident);
        let (book, inc) = (name.clone(), incident.clone());
        let grant = blocking(
            move || {
                let now = issuer.cas.now();
                issuer
                    .registry
                    .activate_playbook(&book, &inc, activation, &activator, now)
            },
            registry_status,
        )
        .await
        .inspect_err(|status| {
            tracing::info!(playbook = %name, incident = %incident, by = %who, reason = %status.message(), "playbook activation refused");
        })?;
        tracing::info!(
            playbook = %name,
            grant = %grant.id,
            incident = %grant.incident,
            agent = %grant.agent,
            targets = ?grant.targets,
            expires_at = ?grant.expires_at,
            by = %who,
            "playbook activated"
        );
        Ok(Response::new(pb::GrantResponse {
            grant: Some(grant_to_proto(&grant, &self.issuer)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::RegistryError;
    use super::*;
    use crate::policy::PolicyError;
    use crate::policy::playbook::{PlaybookError, PlaybookState};
    use tonic::Code;

    #[test]
    fn playbook_errors_map_to_codes() {
        let state = PlaybookState::Pending;
        let cases = [
            (
                PlaybookError::Invalid(PolicyError::NoSelectors),
                Code::InvalidArgument,
            ),
            (PlaybookError::BadField("x".into()), Code::InvalidArgument),
            (
                PlaybookError::NoTargets("a, b".into()),
                Code::InvalidArgument,
            ),
            (
                PlaybookError::DigestMismatch {
                    expected: "a".into(),
                    given: "b".into(),
                },
                Code::InvalidArgument,
            ),
            (
                PlaybookError::OwnPlaybook("root".into()),
                Code::PermissionDenied,
            ),
            (
                PlaybookError::NotEligible("x".into()),
                Code::PermissionDenied,
            ),
            (
                PlaybookError::OutOfBounds("x".into()),
                Code::PermissionDenied,
            ),
            (
                PlaybookError::NotApproved {
                    name: "p".into(),
                    state,
                },
                Code::FailedPrecondition,
            ),
            (
                PlaybookError::NotPending {
                    name: "p".into(),
                    state,
                },
                Code::FailedPrecondition,
            ),
            (
                PlaybookError::AlreadyApproved("a".into()),
                Code::FailedPrecondition,
            ),
            (
                PlaybookError::AlreadyRetired("p".into()),
                Code::FailedPrecondition,
            ),
            (
                PlaybookError::IncidentClosed("i".into()),
                Code::FailedPrecondition,
            ),
        ];
        for (error, code) in cases {
            let status = registry_status(RegistryError::Playbook(error));
            assert_eq!(status.code(), code, "{status:?}");
        }
    }
}
