//! Remediation grants: a plan, approved by a quorum of named humans, active for a bounded
//! window (docs/architecture.md, "Policy objects").
//!
//! Every decision here is a pure function of the grant, its incident, the caller and the
//! time. What approvers approve is the plan's SHA-256: an approval names the digest it saw,
//! and counts only while it matches.

use super::{Incident, PolicyError, Severity, check_name, check_scope, text};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Largest plan accepted (text or diff).
pub const MAX_PLAN_LEN: usize = 256 * 1024;
/// Most bytes of targets in one grant (they are carried in every SVID's claims).
pub const MAX_TARGETS_LEN: usize = 4 * 1024;
/// Longest grant window.
pub const MAX_WINDOW_SECS: u64 = 4 * 3600;
/// Default grant window (docs/architecture.md, "Identities").
pub const DEFAULT_WINDOW_SECS: u64 = 600;
/// Longest action, and longest reason a grant is denied or revoked with.
pub const MAX_LINE_LEN: usize = 1024;

/// Scope prefixes that touch deployment, IAM or secrets: refused unless the incident names
/// them, and never in the investigative band.
pub const SENSITIVE_SCOPE_PREFIXES: [&str; 3] = ["deploy:", "iam:", "secrets:"];

/// The remediation knobs (config `[remediation]`), carried in the policy so servers and
/// agents decide alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemediationRules {
    /// Approvals needed for a sev1 incident's grants.
    pub quorum_sev1: usize,
    /// … sev2.
    pub quorum_sev2: usize,
    /// … sev3.
    pub quorum_sev3: usize,
    /// … sev4.
    pub quorum_sev4: usize,
    /// Scope prefixes that touch deployment, IAM or secrets.
    pub sensitive_scope_prefixes: Vec<String>,
    /// Approvals needed, at least, when a grant asks for a sensitive scope.
    pub sensitive_quorum: usize,
    /// Most pending grant requests per incident.
    pub pending_per_incident: usize,
    /// Most grant requests per agent per hour.
    pub per_agent_per_hour: usize,
    /// Whether an approval by the uid that requested a grant counts. Only
    /// `writ dev --demo-single-user` sets it, for a one-user demo: no config file can
    /// (`serde(skip)`), and agents never see it.
    #[serde(skip)]
    pub demo_single_user: bool,
}

impl Default for RemediationRules {
    fn default() -> Self {
        RemediationRules {
            quorum_sev1: 2,
            quorum_sev2: 2,
            quorum_sev3: 1,
            quorum_sev4: 1,
            sensitive_scope_prefixes: SENSITIVE_SCOPE_PREFIXES
                .iter()
                .map(|p| p.to_string())
                .collect(),
            // Raise it to demand more humans for deploy/IAM/secrets scopes; 1 keeps the
            // severity quorum alone in force.
            sensitive_quorum: 1,
            pending_per_incident: 5,
            per_agent_per_hour: 20,
            demo_single_user: false,
        }
    }
}

impl RemediationRules {
    /// Approvals an ordinary grant needs: by the incident's severity, and at least
    /// `sensitive_quorum` when it asks for a sensitive scope. Never below one. Callers
    /// ask [`required_approvals`], which knows playbook activations too.
    fn quorum(&self, severity: Severity, scopes: &BTreeSet<String>) -> usize {
        let by_severity = match severity {
            Severity::Sev1 => self.quorum_sev1,
            Severity::Sev2 => self.quorum_sev2,
            Severity::Sev3 => self.quorum_sev3,
            Severity::Sev4 => self.quorum_sev4,
        };
        let by_scope = if scopes.iter().any(|s| self.is_sensitive(s)) {
            self.sensitive_quorum
        } else {
            0
        };
        by_severity.max(by_scope).max(1)
    }

    /// Whether `scope` is sensitive under these rules.
    pub fn is_sensitive(&self, scope: &str) -> bool {
        self.sensitive_scope_prefixes
            .iter()
            .any(|p| scope.starts_with(p.as_str()))
    }

    /// The first of `scopes` that is sensitive under these rules and that `incident` does
    /// not declare. A grant or a playbook activation asking for it is refused: sensitive
    /// scopes are held only when the incident names them.
    pub fn undeclared_sensitive_scope<'a>(
        &self,
        scopes: &'a BTreeSet<String>,
        incident: &Incident,
    ) -> Option<&'a str> {
        scopes
            .iter()
            .find(|s| self.is_sensitive(s) && !incident.scopes.contains(*s))
            .map(String::as_str)
    }

    /// Checks the rules make sense (quorums at least one, limits at least one).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let quorums = [
            self.quorum_sev1,
            self.quorum_sev2,
            self.quorum_sev3,
            self.quorum_sev4,
        ];
        if quorums.contains(&0) || self.pending_per_incident == 0 || self.per_agent_per_hour == 0 {
            return Err(PolicyError::BadText {
                what: "[remediation] settings".into(),
                reason: "quorums and limits must be at least 1".into(),
            });
        }
        if self.sensitive_scope_prefixes.iter().any(|p| p.is_empty()) {
            return Err(PolicyError::BadText {
                what: "sensitive_scope_prefixes".into(),
                reason: "an empty prefix would make every scope sensitive".into(),
            });
        }
        Ok(())
    }
}

/// Approvals `grant` needs, its incident being of `severity`. A playbook activation rests
/// on its playbook's quorum and its activator; any other grant needs the quorum `rules`
/// set for the severity and its scopes.
pub fn required_approvals(rules: &RemediationRules, severity: Severity, grant: &Grant) -> usize {
    match grant.playbook {
        Some(_) => super::playbook::QUORUM + 1,
        None => rules.quorum(severity, &grant.scopes),
    }
}

/// Whether `grant`'s approvals still carry it (after some were withdrawn), its incident
/// being of `severity`. A playbook activation needs its playbook's approvers and its
/// activator's approval of the plan, not merely enough approvals.
pub fn still_approved(rules: &RemediationRules, severity: Severity, grant: &Grant) -> bool {
    match grant.playbook {
        Some(_) => super::playbook::activation_still_approved(grant),
        None => grant.approvals.len() >= required_approvals(rules, severity, grant),
    }
}

/// Where a grant is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantState {
    /// Waiting for approvals.
    Pending,
    /// Approved: the agent holds a remediation identity until `expires_at`.
    Active,
    /// Refused by an approver.
    Denied,
    /// Ended by an operator or by the incident closing.
    Revoked,
    /// Its window ran out.
    Expired,
}

/// One human's approval of one plan digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The operator.
    pub by: String,
    /// Seconds since the epoch.
    pub at: i64,
    /// The plan digest they approved.
    pub plan_digest: String,
}

/// A request for remediation authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The tenant it belongs to: its incident's.
    #[serde(default = "super::tenant::default_tenant")]
    pub tenant: String,
    /// `g-` and 12 hex characters.
    pub id: String,
    /// The incident it acts on.
    pub incident: String,
    /// The agent (profile) that will hold the identity.
    pub agent: String,
    /// What will be done, in a line.
    pub action: String,
    /// What it will be done to.
    pub targets: BTreeSet<String>,
    /// References to the evidence behind the plan (URIs, log queries, ticket ids).
    pub evidence: Vec<String>,
    /// The plan: proposed fix text or diff.
    pub plan: String,
    /// SHA-256 of the plan, lowercase hex: what approvers approve.
    pub plan_digest: String,
    /// Scopes the remediation identity will carry (∩ profile ∩ incident).
    pub scopes: BTreeSet<String>,
    /// How long the grant is active once approved.
    pub window_secs: u64,
    /// Operator name, or the requesting agent's SPIFFE ID.
    pub requested_by: String,
    /// The uid that requested it: the operator's, or the one the requesting workload was
    /// attested with. No approval by this uid counts. `None` when unknown (an operator
    /// over mTLS without a configured uid, grants filed before writ recorded it).
    #[serde(default)]
    pub requested_by_uid: Option<u32>,
    /// Seconds since the epoch.
    pub requested_at: i64,
    /// Approvals so far.
    pub approvals: Vec<Approval>,
    /// State.
    pub state: GrantState,
    /// When it became active.
    #[serde(default)]
    pub activated_at: Option<i64>,
    /// When the active window ends (≤ the incident's end).
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// When it was denied, revoked or expired, by whom and why.
    #[serde(default)]
    pub ended: Option<Ending>,
    /// The guardrail playbook it was activated from, if any (see [`super::playbook`]).
    #[serde(default)]
    pub playbook: Option<String>,
}

impl Grant {
    /// Where it lives in the policy.
    pub fn key(&self) -> super::Key {
        super::key(&self.tenant, &self.id)
    }
}

/// How a grant ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ending {
    /// Seconds since the epoch.
    pub at: i64,
    /// Operator name, or `writ` for the server's own decisions.
    pub by: String,
    /// Why.
    pub reason: String,
}

/// Why a grant decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// A field is invalid.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// The incident is closed.
    #[error("incident {0:?} is closed")]
    IncidentClosed(String),
    /// The agent is not assigned to the incident, or its profile excludes remediation.
    #[error("{0}")]
    NotEligible(String),
    /// The grant is not pending (already active, denied, revoked or expired).
    #[error("grant {id} is {state:?}, not pending")]
    NotPending {
        /// The grant.
        id: String,
        /// Its state.
        state: GrantState,
    },
    /// The grant is not pending or active.
    #[error("grant {id} has already ended ({state:?})")]
    Ended {
        /// The grant.
        id: String,
        /// Its state.
        state: GrantState,
    },
    /// The requester may not approve their own request.
    #[error("{0} requested this grant and cannot approve it")]
    OwnRequest(String),
    /// The approver runs as the uid that requested the grant: one person, two votes.
    #[error(
        "{approver} runs as uid {uid}, which requested this grant: the requester never approves its own grant (run agents as their own users)"
    )]
    SameUid {
        /// The approver.
        approver: String,
        /// The uid they share with the requester.
        uid: u32,
    },
    /// The approver already approved.
    #[error("{0} has already approved this grant")]
    AlreadyApproved(String),
    /// The approver saw a different plan.
    #[error("plan digest mismatch: the grant's plan is {expected}, you approved {given}")]
    DigestMismatch {
        /// The grant's digest.
        expected: String,
        /// The approver's.
        given: String,
    },
}

/// Who files or approves: a name and, when the kernel (or the configuration, for an
/// operator over mTLS) says, the uid acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal<'a> {
    /// Operator name, or a workload's SPIFFE ID.
    pub name: &'a str,
    /// The uid, if known.
    pub uid: Option<u32>,
}

impl<'a> From<&'a str> for Principal<'a> {
    /// A name alone: no uid is known.
    fn from(name: &'a str) -> Self {
        Principal { name, uid: None }
    }
}

/// What a request carries, before writ assigns id, digest and times.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantRequest {
    /// The incident.
    pub incident: String,
    /// The agent (profile).
    pub agent: String,
    /// One-line action.
    pub action: String,
    /// Targets.
    pub targets: BTreeSet<String>,
    /// Evidence references.
    pub evidence: Vec<String>,
    /// The plan.
    pub plan: String,
    /// Scopes wanted.
    pub scopes: BTreeSet<String>,
    /// Active window; `None` takes the default.
    pub window_secs: Option<u64>,
}

/// Whether `incident` has run past its maximum lifetime at `now`.
pub fn incident_ended(incident: &Incident, now: i64) -> bool {
    incident.opened_at + incident.max_lifetime_secs as i64 <= now
}

/// SHA-256 of a plan, lowercase hex.
pub fn plan_digest(plan: &str) -> String {
    crate::hex::sha256(plan.as_bytes())
}

/// Builds a pending grant from a request under `rules`, checking it against its incident
/// and whether the agent's profile allows the remediation band, and recording the
/// requester (and their uid, when known).
pub fn new_grant<'a>(
    rules: &RemediationRules,
    request: GrantRequest,
    incident: &Incident,
    profile_allows_remediation: bool,
    requested_by: impl Into<Principal<'a>>,
    id: String,
    now: i64,
) -> Result<Grant, GrantError> {
    let requested_by = requested_by.into();
    check_name("agent", &request.agent)?;
    text::line("action", &request.action, MAX_LINE_LEN)?;
    if request.plan.is_empty() || request.plan.len() > MAX_PLAN_LEN {
        return Err(PolicyError::BadText {
            what: "plan".into(),
            reason: format!("must be 1 to {MAX_PLAN_LEN} bytes"),
        }
        .into());
    }
    if request.targets.len() > super::MAX_ITEMS
        || request.evidence.len() > super::MAX_ITEMS
        || request.scopes.len() > super::MAX_ITEMS
    {
        return Err(PolicyError::TooMany("targets, evidence or scopes").into());
    }
    for target in &request.targets {
        text::line("target", target, 512)?;
    }
    // Targets travel in every SVID's claims (capped at 16 KiB): keep them well under.
    if request.targets.iter().map(String::len).sum::<usize>() > MAX_TARGETS_LEN {
        return Err(PolicyError::TooMany("target bytes (4 KiB in all)").into());
    }
    for evidence in &request.evidence {
        text::line("evidence reference", evidence, 2048)?;
    }
    for scope in &request.scopes {
        check_scope(scope)?;
    }
    let window_secs = request.window_secs.unwrap_or(DEFAULT_WINDOW_SECS);
    if window_secs == 0 || window_secs > MAX_WINDOW_SECS {
        return Err(PolicyError::BadText {
            what: "window".into(),
            reason: format!("must be 1s to {MAX_WINDOW_SECS}s, not {window_secs}s"),
        }
        .into());
    }
    if !incident.is_open() || incident_ended(incident, now) {
        return Err(GrantError::IncidentClosed(incident.id.clone()));
    }
    if !incident.assigned.contains(&request.agent) {
        return Err(GrantError::NotEligible(format!(
            "agent {:?} is not assigned to incident {:?}",
            request.agent, incident.id
        )));
    }
    if !profile_allows_remediation {
        return Err(GrantError::NotEligible(format!(
            "profile {:?} does not allow the remediation band (advisory-only agents never hold remediation identities)",
            request.agent
        )));
    }
    if let Some(scope) = rules.undeclared_sensitive_scope(&request.scopes, incident) {
        return Err(GrantError::NotEligible(format!(
            "scope {scope:?} touches deployment, IAM or secrets and incident {:?} does not name it",
            incident.id
        )));
    }
    Ok(Grant {
        tenant: incident.tenant.clone(),
        id,
        incident: request.incident,
        agent: request.agent,
        action: request.action,
        targets: request.targets,
        evidence: request.evidence,
        plan_digest: plan_digest(&request.plan),
        plan: request.plan,
        scopes: request.scopes,
        window_secs,
        requested_by: requested_by.name.to_owned(),
        requested_by_uid: requested_by.uid,
        requested_at: now,
        approvals: Vec::new(),
        state: GrantState::Pending,
        activated_at: None,
        expires_at: None,
        ended: None,
        playbook: None,
    })
}

/// Records `approver`'s approval of `digest` under `rules`. Approvals older than
/// `approval_ttl` no longer count. At quorum the grant becomes active for its window,
/// never past the incident's end. The requester never counts: not by name, and not by
/// uid (a workload and an operator sharing a uid are one person), unless
/// `rules.demo_single_user`.
pub fn approve<'a>(
    rules: &RemediationRules,
    grant: &Grant,
    incident: &Incident,
    approver: impl Into<Principal<'a>>,
    digest: &str,
    approval_ttl: i64,
    now: i64,
) -> Result<Grant, GrantError> {
    let Principal {
        name: approver,
        uid: approver_uid,
    } = approver.into();
    if grant.state != GrantState::Pending {
        return Err(GrantError::NotPending {
            id: grant.id.clone(),
            state: grant.state,
        });
    }
    // An incident past its maximum lifetime is closed, whether or not the expiry timer
    // has written that down yet.
    if !incident.is_open() || incident_ended(incident, now) {
        return Err(GrantError::IncidentClosed(incident.id.clone()));
    }
    if approver == grant.requested_by {
        return Err(GrantError::OwnRequest(approver.to_owned()));
    }
    if let Some(uid) = approver_uid.filter(|u| Some(*u) == grant.requested_by_uid)
        && !rules.demo_single_user
    {
        return Err(GrantError::SameUid {
            approver: approver.to_owned(),
            uid,
        });
    }
    if digest != grant.plan_digest {
        return Err(GrantError::DigestMismatch {
            expected: grant.plan_digest.clone(),
            given: digest.chars().take(64).collect(),
        });
    }
    let mut next = grant.clone();
    next.approvals
        .retain(|a| now - a.at < approval_ttl && a.plan_digest == grant.plan_digest);
    if next.approvals.iter().any(|a| a.by == approver) {
        return Err(GrantError::AlreadyApproved(approver.to_owned()));
    }
    next.approvals.push(Approval {
        by: approver.to_owned(),
        at: now,
        plan_digest: digest.to_owned(),
    });
    if next.approvals.len() >= required_approvals(rules, incident.severity, grant) {
        let incident_end = incident.opened_at + incident.max_lifetime_secs as i64;
        next.state = GrantState::Active;
        next.activated_at = Some(now);
        next.expires_at = Some((now + next.window_secs as i64).min(incident_end));
    }
    Ok(next)
}

/// Ends a pending or active grant (deny, revoke, incident close, expiry). A reason, when
/// given, is one line of text (see [`text::line`]).
pub fn end(
    grant: &Grant,
    state: GrantState,
    by: &str,
    reason: &str,
    now: i64,
) -> Result<Grant, GrantError> {
    if !reason.is_empty() {
        text::line("reason", reason, MAX_LINE_LEN)?;
    }
    if !matches!(grant.state, GrantState::Pending | GrantState::Active) {
        return Err(GrantError::Ended {
            id: grant.id.clone(),
            state: grant.state,
        });
    }
    if state == GrantState::Denied && grant.state != GrantState::Pending {
        return Err(GrantError::NotPending {
            id: grant.id.clone(),
            state: grant.state,
        });
    }
    let mut next = grant.clone();
    next.state = state;
    next.ended = Some(Ending {
        at: now,
        by: by.to_owned(),
        reason: reason.to_owned(),
    });
    Ok(next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::IncidentState;

    fn incident(severity: Severity) -> Incident {
        Incident {
            tenant: "default".into(),
            id: "INC-1".into(),
            title: "t".into(),
            severity,
            assigned: BTreeSet::from(["fixer".to_string()]),
            scopes: BTreeSet::from(["deploy:restart".to_string()]),
            state: IncidentState::Open,
            opened_by: "root".into(),
            opened_at: 0,
            closed_by: None,
            closed_at: None,
            max_lifetime_secs: 3600,
            source: None,
        }
    }

    fn request() -> GrantRequest {
        GrantRequest {
            incident: "INC-1".into(),
            agent: "fixer".into(),
            action: "restart checkout".into(),
            targets: BTreeSet::from(["deploy/checkout".to_string()]),
            evidence: vec!["https://logs/q?id=1".into()],
            plan: "kubectl rollout restart deploy/checkout\n".into(),
            scopes: BTreeSet::from(["deploy:restart".to_string()]),
            window_secs: None,
        }
    }

    fn pending(severity: Severity) -> (Grant, Incident) {
        let inc = incident(severity);
        (
            new_grant(
                &RemediationRules::default(),
                request(),
                &inc,
                true,
                "agent-x",
                "g-1".into(),
                100,
            )
            .unwrap(),
            inc,
        )
    }

    #[test]
    fn digest_is_the_plans_sha256() {
        let (g, _) = pending(Severity::Sev2);
        assert_eq!(
            g.plan_digest,
            plan_digest("kubectl rollout restart deploy/checkout\n")
        );
        assert_eq!(g.plan_digest.len(), 64);
    }

    #[test]
    fn sev2_needs_two_distinct_approvers_and_not_the_requester() {
        let (g, inc) = pending(Severity::Sev2);
        let d = g.plan_digest.clone();
        assert!(matches!(
            approve(
                &RemediationRules::default(),
                &g,
                &inc,
                "agent-x",
                &d,
                3600,
                101
            ),
            Err(GrantError::OwnRequest(_))
        ));
        let one = approve(
            &RemediationRules::default(),
            &g,
            &inc,
            "alice",
            &d,
            3600,
            101,
        )
        .unwrap();
        assert_eq!(one.state, GrantState::Pending);
        assert!(matches!(
            approve(
                &RemediationRules::default(),
                &one,
                &inc,
                "alice",
                &d,
                3600,
                102
            ),
            Err(GrantError::AlreadyApproved(_))
        ));
        let two = approve(
            &RemediationRules::default(),
            &one,
            &inc,
            "bob",
            &d,
            3600,
            102,
        )
        .unwrap();
        assert_eq!(two.state, GrantState::Active);
        assert_eq!(two.expires_at, Some(102 + 600));
        assert!(matches!(
            approve(
                &RemediationRules::default(),
                &two,
                &inc,
                "carol",
                &d,
                3600,
                103
            ),
            Err(GrantError::NotPending { .. })
        ));
    }

    #[test]
    fn sev3_needs_one_and_the_window_stops_at_the_incident_end() {
        let (mut g, inc) = pending(Severity::Sev3);
        g.window_secs = 3000;
        let active = approve(
            &RemediationRules::default(),
            &g,
            &inc,
            "alice",
            &g.plan_digest.clone(),
            3600,
            1000,
        )
        .unwrap();
        assert_eq!(active.state, GrantState::Active);
        assert_eq!(
            active.expires_at,
            Some(3600),
            "never past the incident's max lifetime"
        );
    }

    #[test]
    fn wrong_digest_and_stale_approvals_do_not_count() {
        let (g, inc) = pending(Severity::Sev2);
        let d = g.plan_digest.clone();
        assert!(matches!(
            approve(
                &RemediationRules::default(),
                &g,
                &inc,
                "alice",
                &"0".repeat(64),
                3600,
                101
            ),
            Err(GrantError::DigestMismatch { .. })
        ));
        let one = approve(&RemediationRules::default(), &g, &inc, "alice", &d, 60, 101).unwrap();
        // Alice's approval is older than the approval TTL by the time Bob approves.
        let two = approve(&RemediationRules::default(), &one, &inc, "bob", &d, 60, 500).unwrap();
        assert_eq!(two.state, GrantState::Pending);
        assert_eq!(two.approvals.len(), 1);
    }

    #[test]
    fn closed_incidents_and_ineligible_agents_are_refused() {
        let mut inc = incident(Severity::Sev3);
        assert!(matches!(
            new_grant(
                &RemediationRules::default(),
                request(),
                &inc,
                false,
                "x",
                "g".into(),
                1
            ),
            Err(GrantError::NotEligible(_))
        ));
        let mut other = request();
        other.agent = "stranger".into();
        assert!(matches!(
            new_grant(
                &RemediationRules::default(),
                other,
                &inc,
                true,
                "x",
                "g".into(),
                1
            ),
            Err(GrantError::NotEligible(_))
        ));
        let mut iam = request();
        iam.scopes = BTreeSet::from(["iam:write".to_string()]);
        assert!(matches!(
            new_grant(
                &RemediationRules::default(),
                iam,
                &inc,
                true,
                "x",
                "g".into(),
                1
            ),
            Err(GrantError::NotEligible(_))
        ));
        let (g, _) = pending(Severity::Sev3);
        inc.state = IncidentState::Closed;
        assert!(matches!(
            new_grant(
                &RemediationRules::default(),
                request(),
                &inc,
                true,
                "x",
                "g".into(),
                1
            ),
            Err(GrantError::IncidentClosed(_))
        ));
        assert!(matches!(
            approve(
                &RemediationRules::default(),
                &g,
                &inc,
                "alice",
                &g.plan_digest.clone(),
                3600,
                2
            ),
            Err(GrantError::IncidentClosed(_))
        ));
    }

    #[test]
    fn deny_only_pending_and_nothing_after_the_end() {
        let (g, inc) = pending(Severity::Sev3);
        let denied = end(&g, GrantState::Denied, "alice", "risky", 5).unwrap();
        assert_eq!(denied.state, GrantState::Denied);
        assert!(matches!(
            approve(
                &RemediationRules::default(),
                &denied,
                &inc,
                "bob",
                &g.plan_digest,
                3600,
                6
            ),
            Err(GrantError::NotPending { .. })
        ));
        assert!(matches!(
            end(&denied, GrantState::Revoked, "bob", "", 7),
            Err(GrantError::Ended { .. })
        ));
        let active = approve(
            &RemediationRules::default(),
            &g,
            &inc,
            "alice",
            &g.plan_digest,
            3600,
            6,
        )
        .unwrap();
        assert!(matches!(
            end(&active, GrantState::Denied, "bob", "", 7),
            Err(GrantError::NotPending { .. })
        ));
        assert_eq!(
            end(&active, GrantState::Revoked, "bob", "done", 7)
                .unwrap()
                .state,
            GrantState::Revoked
        );
    }

    #[test]
    fn configured_rules_change_quorum_and_sensitivity() {
        let rules = RemediationRules {
            quorum_sev3: 2,
            sensitive_scope_prefixes: vec!["deploy:".into(), "db:".into()],
            sensitive_quorum: 3,
            ..RemediationRules::default()
        };
        assert!(rules.validate().is_ok());
        assert_eq!(rules.quorum(Severity::Sev3, &BTreeSet::new()), 2);
        let sensitive = BTreeSet::from(["db:write".to_string()]);
        assert_eq!(
            rules.quorum(Severity::Sev4, &sensitive),
            3,
            "a sensitive scope raises the quorum"
        );
        assert!(rules.is_sensitive("db:write") && !rules.is_sensitive("iam:write"));
        let (g, inc) = pending(Severity::Sev3);
        let one = approve(&rules, &g, &inc, "alice", &g.plan_digest, 3600, 101).unwrap();
        assert_eq!(
            one.state,
            GrantState::Pending,
            "sev3 needs two under these rules"
        );
        assert!(
            RemediationRules {
                quorum_sev1: 0,
                ..RemediationRules::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            RemediationRules {
                sensitive_scope_prefixes: vec![String::new()],
                ..RemediationRules::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn an_approver_running_as_the_requesting_uid_never_counts() {
        let inc = incident(Severity::Sev3);
        let rules = RemediationRules::default();
        let workload = Principal {
            name: "spiffe://investigate.example.org/agent/fixer/incident/INC-1",
            uid: Some(1001),
        };
        let g = new_grant(&rules, request(), &inc, true, workload, "g-1".into(), 100).unwrap();
        assert_eq!(g.requested_by_uid, Some(1001));
        let as_uid = |uid| Principal {
            name: "alice",
            uid: Some(uid),
        };
        assert!(matches!(
            approve(&rules, &g, &inc, as_uid(1001), &g.plan_digest, 3600, 101),
            Err(GrantError::SameUid { uid: 1001, .. })
        ));
        // Another uid, or one writ does not know, counts.
        for approver in [as_uid(1002), "alice".into()] {
            let active = approve(&rules, &g, &inc, approver, &g.plan_digest, 3600, 101).unwrap();
            assert_eq!(active.state, GrantState::Active);
        }
        // Only the one-user demo lets the same uid approve.
        let demo = RemediationRules {
            demo_single_user: true,
            ..RemediationRules::default()
        };
        let active = approve(&demo, &g, &inc, as_uid(1001), &g.plan_digest, 3600, 101).unwrap();
        assert_eq!(active.state, GrantState::Active);
    }

    #[test]
    fn free_text_is_one_line_of_visible_text() {
        let inc = incident(Severity::Sev3);
        let forged = "restart\napproved:   bob at 2026-01-01T00:00:00Z";
        let cases: [fn(&mut GrantRequest, &str); 3] = [
            |r, t| r.action = t.into(),
            |r, t| {
                r.targets.insert(t.into());
            },
            |r, t| r.evidence.push(t.into()),
        ];
        for (i, set) in cases.iter().enumerate() {
            for text in [forged, "ok\u{202e}", "ok\r", "a\tb"] {
                let mut r = request();
                set(&mut r, text);
                assert!(
                    matches!(
                        new_grant(
                            &RemediationRules::default(),
                            r,
                            &inc,
                            true,
                            "x",
                            "g".into(),
                            1
                        ),
                        Err(GrantError::Invalid(PolicyError::BadText { .. }))
                    ),
                    "case {i}: {text:?}"
                );
            }
        }
        // The plan is the one multi-line field.
        let mut multi = request();
        multi.plan = "line one\n\tline two\r\n".into();
        assert!(
            new_grant(
                &RemediationRules::default(),
                multi,
                &inc,
                true,
                "x",
                "g".into(),
                1
            )
            .is_ok()
        );
        // Reasons too, when given; nothing changes when refused.
        let (g, _) = pending(Severity::Sev3);
        assert!(matches!(
            end(&g, GrantState::Denied, "alice", "no\nscopes: iam:*", 5),
            Err(GrantError::Invalid(PolicyError::BadText { .. }))
        ));
        assert!(end(&g, GrantState::Denied, "alice", "", 5).is_ok());
    }

    #[test]
    fn the_default_rules_mark_deploy_iam_and_secrets_sensitive() {
        let rules = RemediationRules::default();
        assert!(rules.is_sensitive("deploy:restart"));
        assert!(rules.is_sensitive("secrets:read"));
        assert!(!rules.is_sensitive("logs:read"));
        let (g, _) = pending(Severity::Sev1);
        assert_eq!(required_approvals(&rules, Severity::Sev1, &g), 2);
        assert_eq!(required_approvals(&rules, Severity::Sev4, &g), 1);
    }

    #[test]
    fn a_playbook_activation_needs_its_playbooks_quorum_and_its_activator() {
        let rules = RemediationRules {
            quorum_sev4: 5,
            ..RemediationRules::default()
        };
        let (mut g, _) = pending(Severity::Sev4);
        assert_eq!(required_approvals(&rules, Severity::Sev4, &g), 5);
        g.playbook = Some("isolate-host".into());
        assert_eq!(
            required_approvals(&rules, Severity::Sev4, &g),
            crate::policy::playbook::QUORUM + 1,
            "the incident's severity does not set an activation's quorum"
        );
        // Three approvals of other digests and none of the plan: enough in number, but
        // the activator's approval of the plan is missing.
        g.approvals = ["alice", "bob", "carol"]
            .map(|by| Approval {
                by: by.into(),
                at: 1,
                plan_digest: "0".repeat(64),
            })
            .to_vec();
        assert!(!still_approved(&rules, Severity::Sev4, &g));
        g.approvals[2].plan_digest = g.plan_digest.clone();
        assert!(still_approved(&rules, Severity::Sev4, &g));
        g.playbook = None;
        assert!(
            !still_approved(&rules, Severity::Sev4, &g),
            "an ordinary grant needs the quorum the rules set"
        );
    }

    #[test]
    fn an_undeclared_sensitive_scope_is_found_under_the_configured_prefixes() {
        let rules = RemediationRules {
            sensitive_scope_prefixes: vec!["db:".into()],
            ..RemediationRules::default()
        };
        let inc = incident(Severity::Sev3);
        let scopes = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            rules.undeclared_sensitive_scope(&scopes(&["logs:read", "db:write"]), &inc),
            Some("db:write")
        );
        assert_eq!(
            rules.undeclared_sensitive_scope(&scopes(&["iam:write"]), &inc),
            None,
            "only the configured prefixes are sensitive"
        );
        assert_eq!(
            rules.undeclared_sensitive_scope(&scopes(&["deploy:restart"]), &inc),
            None
        );
        let mut declared = inc.clone();
        declared.scopes.insert("db:write".into());
        assert_eq!(
            rules.undeclared_sensitive_scope(&scopes(&["db:write"]), &declared),
            None,
            "a scope the incident declares is allowed"
        );
    }
}
