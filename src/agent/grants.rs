//! `writ.agent.v1`: what an agent's workload asks of writ under its attested identity.
//!
//! A workload may request remediation only for an incident it is investigating right
//! now: the caller is attested exactly as on the Workload API, must hold the
//! investigative identity of that incident, and the request is filed under that SPIFFE
//! ID and the caller's uid, neither of which can ever approve it.
//!
//! A workload reports what it did (prompts, tool calls, evidence, proposed fixes) under
//! the identity it holds for the incident; the server appends the audit record. Reports
//! carry digests, never content.

use super::Agent;
use super::workload::attest_caller;
use crate::audit::activity::{Activity, RawActivity};
use crate::policy::{GrantRequest, Selector, entitlements};
use crate::proto::agent::{self as pb, agent_api_server::AgentApi};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use writ_verifier::Band;

/// The agent API service.
#[derive(Debug, Clone)]
pub struct AgentService {
    agent: Arc<Agent>,
}

impl AgentService {
    /// A service for `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        AgentService { agent }
    }
}

/// The wire name of a proto activity kind; unspecified and unknown values become names
/// [`Activity::parse`] refuses.
fn kind_name(kind: i32) -> String {
    match pb::ActivityKind::try_from(kind) {
        Ok(pb::ActivityKind::Prompt) => "prompt".into(),
        Ok(pb::ActivityKind::ToolCall) => "tool_call".into(),
        Ok(pb::ActivityKind::Evidence) => "evidence".into(),
        Ok(pb::ActivityKind::ProposedFix) => "proposed_fix".into(),
        Ok(pb::ActivityKind::Unspecified) => "unspecified".into(),
        Err(_) => kind.to_string(),
    }
}

#[tonic::async_trait]
impl AgentApi for AgentService {
    async fn request_grant(
        &self,
        request: Request<pb::RequestGrantRequest>,
    ) -> Result<Response<pb::RequestGrantResponse>, Status> {
        let selectors = attest_caller(&self.agent, &request).await?;
        let body = request.into_inner();
        let policy = self.agent.node.policy().borrow().clone();
        let held = entitlements(&policy, self.agent.node.base(), &selectors)
            .into_iter()
            .find(|e| {
                e.band == Band::Investigative
                    && e.claims.incident.as_deref() == Some(body.incident.as_str())
            })
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "this workload holds no investigative identity for incident {:?}",
                    body.incident.chars().take(64).collect::<String>()
                ))
            })?;
        // The uid the kernel reported for the caller: an operator with this uid must never
        // approve what this workload asks for.
        let uid = selectors.iter().find_map(|s| match s {
            Selector::Uid(uid) => Some(*uid),
            _ => None,
        });
        let agent_name = held
            .spiffe_id
            .path()
            .split('/')
            .nth(2)
            .unwrap_or_default()
            .to_owned();
        let grant = self
            .agent
            .node
            .request_grant(
                GrantRequest {
                    incident: body.incident,
                    agent: agent_name,
                    action: body.action,
                    targets: body.targets.into_iter().collect(),
                    evidence: body.evidence,
                    plan: body.plan,
                    scopes: body.scopes.into_iter().collect(),
                    window_secs: body.window_seconds,
                },
                &held.spiffe_id,
                uid,
            )
            .await
            .map_err(Status::from)?;
        let quorum = policy
            .incident(&grant.tenant, &grant.incident)
            .map(|i| {
                crate::policy::grant::required_approvals(&policy.rules, i.severity, &grant) as u32
            })
            .unwrap_or(0);
        Ok(Response::new(pb::RequestGrantResponse {
            grant_id: grant.id,
            plan_digest: grant.plan_digest,
            state: crate::policy::wire_name(&grant.state),
            quorum,
            requested_by: grant.requested_by,
        }))
    }

    async fn record_activity(
        &self,
        request: Request<pb::RecordActivityRequest>,
    ) -> Result<Response<pb::RecordActivityResponse>, Status> {
        let selectors = attest_caller(&self.agent, &request).await?;
        let body = request.into_inner();
        let activity = Activity::parse(&RawActivity {
            incident: body.incident,
            kind: kind_name(body.kind),
            digest: body.digest,
            tool: body.tool,
            uri: body.uri,
            summary: body.summary,
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let policy = self.agent.node.policy().borrow().clone();
        let held: Vec<_> = entitlements(&policy, self.agent.node.base(), &selectors)
            .into_iter()
            .filter(|e| {
                matches!(e.band, Band::Investigative | Band::Remediation)
                    && e.claims.incident.as_deref() == Some(activity.incident())
            })
            .collect();
        // Act under the strongest identity held: what was done with remediation authority
        // must be attributed to it.
        let identity = held
            .iter()
            .find(|e| e.band == Band::Remediation)
            .or_else(|| held.first())
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "this workload holds no identity for incident {:?}",
                    activity.incident()
                ))
            })?;
        let spiffe_id = identity.spiffe_id.to_string();
        let serial = self
            .agent
            .cache
            .current(&spiffe_id)
            .map(|svid| svid.serial.clone())
            .unwrap_or_default();
        let index = self
            .agent
            .node
            .record_activity(&activity, &identity.spiffe_id, &serial)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::RecordActivityResponse {
            index,
            spiffe_id,
            serial,
        }))
    }
}
