//! Guardrail playbooks: pre-approved containment actions (isolate a host, disable a
//! token) with bounds, approved by a quorum in advance; one incident commander activates
//! one for an open incident, for at most ten minutes (docs/architecture.md,
//! "Policy objects").
//!
//! Pure: every decision is a function of the playbook, the incident, the agent's profile,
//! the caller and the time. An activation is an ordinary remediation [`Grant`], active at
//! once, whose plan is the playbook's canonical form plus the chosen targets; revocation,
//! expiry and issuance then need nothing new. An activation must never widen what the
//! quorum approved: targets only from the allow-list, a window only up to the playbook's
//! maximum, sensitive scopes only when the incident names them.

use super::grant::{self, Approval, Ending, Grant, GrantState, RemediationRules, plan_digest};
use super::{Incident, MAX_ITEMS, PolicyError, Profile, check_name, check_scope, text};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use writ_verifier::Band;

/// Distinct approvers a playbook needs before it can be activated (its creator never
/// counts).
pub const QUORUM: usize = 2;
/// The longest an activation may last, whatever a playbook says (docs/architecture.md,
/// "Policy objects").
pub const MAX_WINDOW_SECS: u64 = 600;
/// Longest target string.
pub const MAX_TARGET_LEN: usize = 512;
/// Most bytes of targets, all together: an activation's targets travel in every SVID's
/// claims, which are bounded (`writ_verifier::claims::MAX_CLAIMS_LEN`).
pub const MAX_TARGETS_LEN: usize = 4096;
/// Longest description (one line, like every free text but a plan).
pub const MAX_DESCRIPTION_LEN: usize = 4096;

/// Where a playbook is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaybookState {
    /// Waiting for its quorum.
    Pending,
    /// Approved: an incident commander may activate it.
    Approved,
    /// Withdrawn for good; its name is never reused.
    Retired,
}

impl PlaybookState {
    /// The state as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            PlaybookState::Pending => "pending",
            PlaybookState::Approved => "approved",
            PlaybookState::Retired => "retired",
        }
    }
}

/// A pre-approved containment action with its bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// The tenant it belongs to.
    #[serde(default = "super::tenant::default_tenant")]
    pub tenant: String,
    /// Unique in its tenant, never reused (SVIDs carry it).
    pub name: String,
    /// What is done, in a line (e.g. "isolate host from the network").
    pub action: String,
    /// Longer human text: when to use it, how to undo it. Not part of the digest.
    pub description: String,
    /// The only targets an activation may name, compared byte for byte.
    pub allowed_targets: BTreeSet<String>,
    /// Scopes the remediation identity carries (∩ profile ∩ incident).
    pub scopes: BTreeSet<String>,
    /// Longest activation window, at most [`MAX_WINDOW_SECS`].
    pub max_window_secs: u64,
    /// The operator who created it; never counts toward its quorum.
    pub created_by: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// Approvals of [`Playbook::digest`].
    pub approvals: Vec<Approval>,
    /// State.
    pub state: PlaybookState,
    /// When, by whom and why it was retired.
    #[serde(default)]
    pub retired: Option<Ending>,
}

/// What an operator gives to create a playbook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlaybookSpec {
    /// Name.
    pub name: String,
    /// One-line action.
    pub action: String,
    /// Human description (may be empty).
    pub description: String,
    /// Target allow-list (at least one).
    pub allowed_targets: BTreeSet<String>,
    /// Scopes.
    pub scopes: BTreeSet<String>,
    /// Longest window; `None` takes [`MAX_WINDOW_SECS`].
    pub max_window_secs: Option<u64>,
}

/// What an incident commander gives to activate a playbook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivationRequest {
    /// The agent (profile) that will hold the remediation identity.
    pub agent: String,
    /// Targets from the allow-list; empty means the only one when the list has one.
    pub targets: BTreeSet<String>,
    /// The window; `None` takes the playbook's maximum.
    pub window_secs: Option<u64>,
}

/// Why a playbook decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaybookError {
    /// A name or scope is invalid.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// Another field is invalid; the message says which and why.
    #[error("{0}")]
    BadField(String),
    /// Approving a playbook that is already approved or retired.
    #[error("playbook {name:?} is {}, not pending", state.as_str())]
    NotPending {
        /// The playbook.
        name: String,
        /// Its state.
        state: PlaybookState,
    },
    /// Activating a playbook that has no quorum yet, or was retired.
    #[error("playbook {name:?} is {}, not approved", state.as_str())]
    NotApproved {
        /// The playbook.
        name: String,
        /// Its state.
        state: PlaybookState,
    },
    /// Retiring a playbook twice.
    #[error("playbook {0:?} is already retired")]
    AlreadyRetired(String),
    /// The creator may not approve their own playbook.
    #[error("{0} created this playbook and cannot approve it")]
    OwnPlaybook(String),
    /// The approver already approved.
    #[error("{0} has already approved this playbook")]
    AlreadyApproved(String),
    /// The approver saw a different playbook.
    #[error("playbook digest mismatch: the playbook is {expected}, you approved {given}")]
    DigestMismatch {
        /// The playbook's digest.
        expected: String,
        /// The approver's.
        given: String,
    },
    /// The incident is closed, or past its maximum lifetime.
    #[error("incident {0:?} is closed")]
    IncidentClosed(String),
    /// The agent is not assigned to the incident, its profile excludes remediation, or a
    /// sensitive scope is not named by the incident.
    #[error("{0}")]
    NotEligible(String),
    /// A target or window beyond what the quorum approved.
    #[error("{0}")]
    OutOfBounds(String),
    /// No target named, and the allow-list has more than one.
    #[error("name the targets to act on (--target), from: {0}")]
    NoTargets(String),
    /// The playbook is already active on the incident: a second activation would stretch
    /// its bounded window.
    #[error(
        "playbook {name:?} is already active on incident {incident:?} (grant {grant}, {left_secs}s left): revoke it first, or let it end"
    )]
    AlreadyActive {
        /// The playbook.
        name: String,
        /// The incident.
        incident: String,
        /// The activation in force.
        grant: String,
        /// Seconds until it ends.
        left_secs: i64,
    },
}

fn bad(message: String) -> PlaybookError {
    PlaybookError::BadField(message)
}

/// A target: one line of 1 to [`MAX_TARGET_LEN`] bytes ([`text::line`]), no surrounding
/// whitespace (it is matched exactly, so invisible differences are refused rather than
/// compared).
fn check_target(target: &str) -> Result<(), PlaybookError> {
    text::line("target", target, MAX_TARGET_LEN)?;
    if target.trim() != target {
        return Err(bad(format!(
            "invalid target {:?}: remove the surrounding spaces",
            target.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

fn strings(set: &BTreeSet<String>) -> Value {
    Value::Array(set.iter().cloned().map(Value::String).collect())
}

impl Playbook {
    /// Where it lives in the policy.
    pub fn key(&self) -> super::Key {
        super::key(&self.tenant, &self.name)
    }

    /// Checks every field; a stored or created playbook must pass.
    pub fn validate(&self) -> Result<(), PlaybookError> {
        check_name("playbook", &self.name)?;
        text::line("action (--action)", &self.action, grant::MAX_LINE_LEN)?;
        if !self.description.is_empty() {
            text::line(
                "description (--description)",
                &self.description,
                MAX_DESCRIPTION_LEN,
            )?;
        }
        if self.allowed_targets.is_empty() {
            return Err(bad(
                "a playbook needs at least one allowed target (--target)".into(),
            ));
        }
        if self.allowed_targets.len() > MAX_ITEMS || self.scopes.len() > MAX_ITEMS {
            return Err(PolicyError::TooMany("targets or scopes").into());
        }
        for target in &self.allowed_targets {
            check_target(target)?;
        }
        if self.allowed_targets.iter().map(String::len).sum::<usize>() > MAX_TARGETS_LEN {
            return Err(bad(format!(
                "the allowed targets may total at most {MAX_TARGETS_LEN} bytes (they travel in every SVID)"
            )));
        }
        for scope in &self.scopes {
            check_scope(scope)?;
        }
        if self.max_window_secs == 0 || self.max_window_secs > MAX_WINDOW_SECS {
            return Err(bad(format!(
                "the maximum window must be between 1s and {MAX_WINDOW_SECS}s (it is {}s)",
                self.max_window_secs
            )));
        }
        Ok(())
    }

    /// The canonical JSON of what approvers approve: name, action, allowed targets, scopes
    /// and maximum window, keys sorted, no whitespace (RFC 8785 for these types). The
    /// description is not in it: it grants nothing.
    pub fn canonical(&self) -> String {
        self.canonical_value().to_string()
    }

    fn canonical_value(&self) -> Value {
        // Keys are inserted in sorted order, so the text is the same whether or not
        // serde_json preserves insertion order.
        let mut map = serde_json::Map::new();
        map.insert("action".into(), Value::String(self.action.clone()));
        map.insert("allowed_targets".into(), strings(&self.allowed_targets));
        map.insert("max_window_secs".into(), self.max_window_secs.into());
        map.insert("name".into(), Value::String(self.name.clone()));
        map.insert("scopes".into(), strings(&self.scopes));
        Value::Object(map)
    }

    /// SHA-256 of [`Playbook::canonical`], lowercase hex: what approvers approve.
    pub fn digest(&self) -> String {
        plan_digest(&self.canonical())
    }

    /// Approvals that count: of this playbook's digest, by distinct operators other than
    /// its creator.
    pub fn counting_approvals(&self) -> Vec<&Approval> {
        let digest = self.digest();
        let mut seen = BTreeSet::new();
        self.approvals
            .iter()
            .filter(|a| a.plan_digest == digest && a.by != self.created_by)
            .filter(|a| seen.insert(a.by.as_str()))
            .collect()
    }

    /// Whether it is approved and still holds its quorum.
    pub fn is_approved(&self) -> bool {
        self.state == PlaybookState::Approved && self.counting_approvals().len() >= QUORUM
    }
}

/// Builds a pending playbook of `tenant`.
pub fn new_playbook(
    tenant: &str,
    spec: PlaybookSpec,
    created_by: &str,
    now: i64,
) -> Result<Playbook, PlaybookError> {
    let playbook = Playbook {
        tenant: tenant.to_owned(),
        name: spec.name,
        action: spec.action,
        description: spec.description,
        allowed_targets: spec.allowed_targets,
        scopes: spec.scopes,
        max_window_secs: spec.max_window_secs.unwrap_or(MAX_WINDOW_SECS),
        created_by: created_by.to_owned(),
        created_at: now,
        approvals: Vec::new(),
        state: PlaybookState::Pending,
        retired: None,
    };
    playbook.validate()?;
    Ok(playbook)
}

/// Records `approver`'s approval of `digest`; at [`QUORUM`] the playbook is approved.
/// Approvals of a playbook do not expire: it is approved in advance, and retired when it
/// should no longer be used.
pub fn approve(
    playbook: &Playbook,
    approver: &str,
    digest: &str,
    now: i64,
) -> Result<Playbook, PlaybookError> {
    if playbook.state != PlaybookState::Pending {
        return Err(PlaybookError::NotPending {
            name: playbook.name.clone(),
            state: playbook.state,
        });
    }
    if approver == playbook.created_by {
        return Err(PlaybookError::OwnPlaybook(approver.to_owned()));
    }
    let expected = playbook.digest();
    if digest != expected {
        return Err(PlaybookError::DigestMismatch {
            expected,
            given: digest.chars().take(64).collect(),
        });
    }
    if playbook.approvals.iter().any(|a| a.by == approver) {
        return Err(PlaybookError::AlreadyApproved(approver.to_owned()));
    }
    let mut next = playbook.clone();
    next.approvals.push(Approval {
        by: approver.to_owned(),
        at: now,
        plan_digest: expected,
    });
    if next.counting_approvals().len() >= QUORUM {
        next.state = PlaybookState::Approved;
    }
    Ok(next)
}

/// Retires a pending or approved playbook for good.
pub fn retire(
    playbook: &Playbook,
    by: &str,
    reason: &str,
    now: i64,
) -> Result<Playbook, PlaybookError> {
    if !reason.is_empty() {
        text::line("reason", reason, grant::MAX_LINE_LEN)?;
    }
    if playbook.state == PlaybookState::Retired {
        return Err(PlaybookError::AlreadyRetired(playbook.name.clone()));
    }
    let mut next = playbook.clone();
    next.state = PlaybookState::Retired;
    next.retired = Some(Ending {
        at: now,
        by: by.to_owned(),
        reason: reason.to_owned(),
    });
    Ok(next)
}

/// The playbook without the approvals of people who are no longer operators, back to
/// pending if that costs it its quorum; `None` if nothing changes.
pub fn without_approvers(
    playbook: &Playbook,
    is_operator: impl Fn(&str) -> bool,
) -> Option<Playbook> {
    if playbook.state == PlaybookState::Retired
        || playbook.approvals.iter().all(|a| is_operator(&a.by))
    {
        return None;
    }
    let mut next = playbook.clone();
    next.approvals.retain(|a| is_operator(&a.by));
    if next.counting_approvals().len() < QUORUM {
        next.state = PlaybookState::Pending;
    }
    Some(next)
}

/// Activates an approved playbook for `incident`: a remediation grant for
/// `request.agent`, active at once for the chosen window (never past the incident's end),
/// whose approvals are the playbook's quorum plus the activator's approval of this
/// activation's plan. Its scopes are held to `rules`' sensitive prefixes as a grant's are.
///
/// At most one activation of a playbook is in force per incident (`grants` are the
/// policy's grants): otherwise activating it again and again would hold its authority
/// open far past the window its quorum approved.
#[allow(clippy::too_many_arguments)]
pub fn activate<'a>(
    rules: &RemediationRules,
    playbook: &Playbook,
    incident: &Incident,
    profile: Option<&Profile>,
    request: ActivationRequest,
    activator: &str,
    now: i64,
    id: String,
    grants: impl IntoIterator<Item = &'a Grant>,
) -> Result<Grant, PlaybookError> {
    check_name("agent", &request.agent)?;
    if request.targets.len() > MAX_ITEMS {
        return Err(PolicyError::TooMany("targets").into());
    }
    for target in &request.targets {
        check_target(target)?;
    }
    let window_secs = request.window_secs.unwrap_or(playbook.max_window_secs);
    if window_secs == 0 {
        return Err(bad("the window must be at least 1s".into()));
    }
    if !playbook.is_approved() {
        return Err(PlaybookError::NotApproved {
            name: playbook.name.clone(),
            state: match playbook.state {
                PlaybookState::Approved => PlaybookState::Pending,
                other => other,
            },
        });
    }
    let max_window = playbook.max_window_secs.min(MAX_WINDOW_SECS);
    if window_secs > max_window {
        return Err(PlaybookError::OutOfBounds(format!(
            "window {window_secs}s is longer than playbook {:?} allows ({max_window}s)",
            playbook.name
        )));
    }
    let incident_end = incident.opened_at + incident.max_lifetime_secs as i64;
    if !incident.is_open() || incident_end <= now {
        return Err(PlaybookError::IncidentClosed(incident.id.clone()));
    }
    if !incident.assigned.contains(&request.agent) {
        return Err(PlaybookError::NotEligible(format!(
            "agent {:?} is not assigned to incident {:?}",
            request.agent, incident.id
        )));
    }
    let remediation = profile.is_some_and(|p| !p.service && p.bands.contains(&Band::Remediation));
    if !remediation {
        return Err(PlaybookError::NotEligible(format!(
            "profile {:?} does not allow the remediation band (advisory-only agents never hold remediation identities)",
            request.agent
        )));
    }
    // In force: active and its window not over (the expiry task may not have run yet).
    if let Some(active) = grants.into_iter().find(|g| {
        g.playbook.as_deref() == Some(playbook.name.as_str())
            && g.incident == incident.id
            && g.state == GrantState::Active
            && g.expires_at.is_none_or(|at| at > now)
    }) {
        return Err(PlaybookError::AlreadyActive {
            name: playbook.name.clone(),
            incident: incident.id.clone(),
            grant: active.id.clone(),
            left_secs: active.expires_at.map_or(0, |at| at - now),
        });
    }
    let targets = if request.targets.is_empty() {
        if playbook.allowed_targets.len() != 1 {
            let allowed: Vec<&str> = playbook
                .allowed_targets
                .iter()
                .map(String::as_str)
                .collect();
            return Err(PlaybookError::NoTargets(allowed.join(", ")));
        }
        playbook.allowed_targets.clone()
    } else {
        request.targets
    };
    if let Some(target) = targets
        .iter()
        .find(|t| !playbook.allowed_targets.contains(*t))
    {
        return Err(PlaybookError::OutOfBounds(format!(
            "target {:?} is not in playbook {:?}'s allow-list",
            target.chars().take(64).collect::<String>(),
            playbook.name
        )));
    }
    if let Some(scope) = rules.undeclared_sensitive_scope(&playbook.scopes, incident) {
        return Err(PlaybookError::NotEligible(format!(
            "scope {scope:?} is sensitive and incident {:?} does not name it",
            incident.id
        )));
    }
    let plan = activation_plan(playbook, &targets);
    let digest = plan_digest(&plan);
    let mut approvals: Vec<Approval> = playbook.counting_approvals().into_iter().cloned().collect();
    approvals.push(Approval {
        by: activator.to_owned(),
        at: now,
        plan_digest: digest.clone(),
    });
    Ok(Grant {
        tenant: incident.tenant.clone(),
        id,
        incident: incident.id.clone(),
        agent: request.agent,
        action: playbook.action.clone(),
        targets,
        evidence: Vec::new(),
        plan,
        plan_digest: digest,
        scopes: playbook.scopes.clone(),
        window_secs,
        requested_by: activator.to_owned(),
        requested_by_uid: None,
        requested_at: now,
        approvals,
        state: GrantState::Active,
        activated_at: Some(now),
        expires_at: Some((now + window_secs as i64).min(incident_end)),
        ended: None,
        playbook: Some(playbook.name.clone()),
    })
}

/// The plan of an activation: the playbook's canonical form and the chosen targets, as
/// canonical JSON (`{"playbook":…,"targets":[…]}`).
pub fn activation_plan(playbook: &Playbook, targets: &BTreeSet<String>) -> String {
    let mut map = serde_json::Map::new();
    map.insert("playbook".into(), playbook.canonical_value());
    map.insert("targets".into(), strings(targets));
    Value::Object(map).to_string()
}

/// Whether an active playbook grant still holds what made it: [`QUORUM`] distinct
/// approvals of the playbook and the activator's approval of the activation's plan.
/// (Removing an operator withdraws their approvals; see the registry.)
pub fn activation_still_approved(grant: &Grant) -> bool {
    let playbook_approvers: BTreeSet<&str> = grant
        .approvals
        .iter()
        .filter(|a| a.plan_digest != grant.plan_digest)
        .map(|a| a.by.as_str())
        .collect();
    playbook_approvers.len() >= QUORUM
        && grant
            .approvals
            .iter()
            .any(|a| a.plan_digest == grant.plan_digest)
}

/// Ends the active grants activated from `playbook` (it was retired).
pub fn end_activations<'a>(
    grants: impl Iterator<Item = &'a Grant>,
    playbook: &str,
    by: &str,
    now: i64,
) -> Vec<Grant> {
    grants
        .filter(|g| g.playbook.as_deref() == Some(playbook) && g.state == GrantState::Active)
        .filter_map(|g| grant::end(g, GrantState::Revoked, by, "playbook retired", now).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::{IncidentState, Severity};

    fn spec() -> PlaybookSpec {
        PlaybookSpec {
            name: "isolate-host".into(),
            action: "isolate host from the network".into(),
            description: "Cuts a host off; undo with `netctl rejoin`.".into(),
            allowed_targets: BTreeSet::from(["host/web-1".to_string(), "host/web-2".to_string()]),
            scopes: BTreeSet::from(["net:isolate".to_string()]),
            max_window_secs: Some(300),
        }
    }

    fn pending() -> Playbook {
        new_playbook("default", spec(), "root", 10).unwrap()
    }

    fn approved() -> Playbook {
        let p = pending();
        let d = p.digest();
        let p = approve(&p, "alice", &d, 11).unwrap();
        approve(&p, "bob", &d, 12).unwrap()
    }

    fn incident() -> Incident {
        Incident {
            tenant: "default".into(),
            id: "INC-1".into(),
            title: "t".into(),
            severity: Severity::Sev1,
            assigned: BTreeSet::from(["fixer".to_string()]),
            scopes: BTreeSet::new(),
            state: IncidentState::Open,
            opened_by: "root".into(),
            opened_at: 0,
            closed_by: None,
            closed_at: None,
            max_lifetime_secs: 3600,
            source: None,
        }
    }

    fn fixer(bands: &[Band]) -> Profile {
        Profile {
            tenant: "default".into(),
            name: "fixer".into(),
            selectors: BTreeSet::from(["unix:uid:1".parse().unwrap()]),
            bands: bands.iter().copied().collect(),
            scopes: BTreeSet::from(["net:isolate".to_string()]),
            service: false,
            created_at: 0,
        }
    }

    fn request(targets: &[&str], window: Option<u64>) -> ActivationRequest {
        ActivationRequest {
            agent: "fixer".into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            window_secs: window,
        }
    }

    fn activate_now(
        playbook: &Playbook,
        incident: &Incident,
        profile: &Profile,
        request: ActivationRequest,
    ) -> Result<Grant, PlaybookError> {
        activate(
            &RemediationRules::default(),
            playbook,
            incident,
            Some(profile),
            request,
            "carol",
            1000,
            "g-1".into(),
            [],
        )
    }

    #[test]
    fn the_digest_covers_the_bounds_not_the_description() {
        let p = pending();
        assert_eq!(p.digest().len(), 64);
        assert_eq!(
            p.canonical(),
            r#"{"action":"isolate host from the network","allowed_targets":["host/web-1","host/web-2"],"max_window_secs":300,"name":"isolate-host","scopes":["net:isolate"]}"#
        );
        let mut described = p.clone();
        described.description = "other words".into();
        assert_eq!(described.digest(), p.digest());
        for change in [
            |p: &mut Playbook| p.max_window_secs = 600,
            |p: &mut Playbook| {
                p.allowed_targets.insert("host/db-1".into());
            },
            |p: &mut Playbook| {
                p.scopes.insert("net:admin".into());
            },
            |p: &mut Playbook| p.action = "wipe host".into(),
        ] {
            let mut other = p.clone();
            change(&mut other);
            assert_ne!(other.digest(), p.digest());
        }
    }

    #[test]
    fn quorum_is_two_distinct_approvers_of_the_digest() {
        let p = pending();
        let d = p.digest();
        assert!(matches!(
            approve(&p, "alice", &"0".repeat(64), 11),
            Err(PlaybookError::DigestMismatch { .. })
        ));
        let one = approve(&p, "alice", &d, 11).unwrap();
        assert_eq!(one.state, PlaybookState::Pending);
        assert!(matches!(
            approve(&one, "alice", &d, 12),
            Err(PlaybookError::AlreadyApproved(_))
        ));
        let two = approve(&one, "bob", &d, 12).unwrap();
        assert_eq!(two.state, PlaybookState::Approved);
        assert!(two.is_approved());
        assert!(matches!(
            approve(&two, "dave", &d, 13),
            Err(PlaybookError::NotPending { .. })
        ));
    }

    #[test]
    fn the_creator_cannot_approve() {
        let p = pending();
        assert!(matches!(
            approve(&p, "root", &p.digest(), 11),
            Err(PlaybookError::OwnPlaybook(_))
        ));
        // Nor does a creator's approval smuggled into the record count.
        let mut forged = approve(&p, "alice", &p.digest(), 11).unwrap();
        forged.approvals.push(Approval {
            by: "root".into(),
            at: 12,
            plan_digest: p.digest(),
        });
        forged.state = PlaybookState::Approved;
        assert!(!forged.is_approved());
    }

    #[test]
    fn bad_playbooks_are_refused() {
        let cases: [fn(&mut PlaybookSpec); 13] = [
            |s| s.action = "isolate\napproved:    bob".into(),
            |s| s.description = "two\nlines".into(),
            |s| s.description = "hidden\u{200b}".into(),
            |s| s.name = "a/b".into(),
            |s| s.action = " ".into(),
            |s| s.allowed_targets.clear(),
            |s| {
                s.allowed_targets.insert(" host/web-3".into());
            },
            |s| {
                s.allowed_targets.insert("host\nweb".into());
            },
            |s| {
                s.allowed_targets.insert("host/web-\u{202E}1".into());
            },
            |s| {
                s.scopes.insert("NET".into());
            },
            |s| s.max_window_secs = Some(601),
            |s| s.max_window_secs = Some(0),
            |s| s.allowed_targets = (0..9).map(|i| format!("{i}{}", "x".repeat(500))).collect(),
        ];
        for (i, change) in cases.into_iter().enumerate() {
            let mut s = spec();
            change(&mut s);
            assert!(
                matches!(
                    new_playbook("default", s, "root", 0),
                    Err(PlaybookError::Invalid(_) | PlaybookError::BadField(_))
                ),
                "case {i}"
            );
        }
        let mut default_window = spec();
        default_window.max_window_secs = None;
        assert_eq!(
            new_playbook("default", default_window, "root", 0)
                .unwrap()
                .max_window_secs,
            MAX_WINDOW_SECS
        );
    }

    #[test]
    fn activation_is_an_active_grant_within_the_bounds() {
        let p = approved();
        let g = activate_now(
            &p,
            &incident(),
            &fixer(&[Band::Investigative, Band::Remediation]),
            request(&["host/web-1"], Some(120)),
        )
        .unwrap();
        assert_eq!(g.state, GrantState::Active);
        assert_eq!(g.playbook.as_deref(), Some("isolate-host"));
        assert_eq!(g.targets, BTreeSet::from(["host/web-1".to_string()]));
        assert_eq!(g.scopes, p.scopes);
        assert_eq!(g.action, p.action);
        assert_eq!((g.activated_at, g.expires_at), (Some(1000), Some(1120)));
        assert_eq!(g.plan, activation_plan(&p, &g.targets));
        assert!(g.plan.contains(&p.canonical()));
        assert_eq!(g.plan_digest, plan_digest(&g.plan));
        let by: Vec<&str> = g.approvals.iter().map(|a| a.by.as_str()).collect();
        assert_eq!(by, ["alice", "bob", "carol"]);
        assert_eq!(g.approvals[2].plan_digest, g.plan_digest);
        assert_eq!(g.requested_by, "carol");
        assert!(activation_still_approved(&g));
        // The default window is the playbook's maximum.
        let g = activate_now(
            &p,
            &incident(),
            &fixer(&[Band::Remediation]),
            request(&["host/web-2"], None),
        )
        .unwrap();
        assert_eq!(g.window_secs, 300);
    }

    #[test]
    fn unapproved_and_retired_playbooks_cannot_be_activated() {
        let profile = fixer(&[Band::Remediation]);
        let one = approve(&pending(), "alice", &pending().digest(), 11).unwrap();
        for p in [
            pending(),
            one,
            retire(&approved(), "root", "obsolete", 20).unwrap(),
        ] {
            assert!(matches!(
                activate_now(&p, &incident(), &profile, request(&["host/web-1"], None)),
                Err(PlaybookError::NotApproved { .. })
            ));
        }
        assert!(matches!(
            retire(
                &retire(&approved(), "root", "", 20).unwrap(),
                "root",
                "",
                21
            ),
            Err(PlaybookError::AlreadyRetired(_))
        ));
        assert!(matches!(
            retire(&approved(), "root", "done\nretired:     by bob", 20),
            Err(PlaybookError::Invalid(PolicyError::BadText { .. }))
        ));
    }

    #[test]
    fn targets_outside_the_allow_list_are_refused() {
        let p = approved();
        let profile = fixer(&[Band::Remediation]);
        for targets in [
            &["host/db-1"][..],
            &["host/web-1", "host/db-1"],
            &["host/web-10"],
            &["HOST/WEB-1"],
        ] {
            assert!(
                matches!(
                    activate_now(&p, &incident(), &profile, request(targets, None)),
                    Err(PlaybookError::OutOfBounds(_))
                ),
                "{targets:?}"
            );
        }
        // No target with two allowed: the commander must choose.
        assert!(matches!(
            activate_now(&p, &incident(), &profile, request(&[], None)),
            Err(PlaybookError::NoTargets(_))
        ));
        // With one allowed, that one.
        let mut single_spec = spec();
        single_spec.allowed_targets = BTreeSet::from(["token/ci-bot".to_string()]);
        let single = new_playbook("default", single_spec, "root", 0).unwrap();
        let d = single.digest();
        let single = approve(&approve(&single, "a", &d, 1).unwrap(), "b", &d, 2).unwrap();
        let g = activate_now(&single, &incident(), &profile, request(&[], None)).unwrap();
        assert_eq!(g.targets, single.allowed_targets);
    }

    #[test]
    fn windows_over_the_playbook_max_or_ten_minutes_are_refused() {
        let p = approved();
        let profile = fixer(&[Band::Remediation]);
        for window in [301, 600, 601, 3600] {
            assert!(
                matches!(
                    activate_now(
                        &p,
                        &incident(),
                        &profile,
                        request(&["host/web-1"], Some(window))
                    ),
                    Err(PlaybookError::OutOfBounds(_))
                ),
                "{window}"
            );
        }
        assert!(matches!(
            activate_now(&p, &incident(), &profile, request(&["host/web-1"], Some(0))),
            Err(PlaybookError::BadField(_))
        ));
        // A record claiming more than ten minutes is still held to ten.
        let mut stretched = p.clone();
        stretched.max_window_secs = 3600;
        let d = stretched.digest();
        stretched.approvals = vec![
            Approval {
                by: "alice".into(),
                at: 1,
                plan_digest: d.clone(),
            },
            Approval {
                by: "bob".into(),
                at: 1,
                plan_digest: d,
            },
        ];
        assert!(matches!(
            activate_now(
                &stretched,
                &incident(),
                &profile,
                request(&["host/web-1"], Some(601))
            ),
            Err(PlaybookError::OutOfBounds(_))
        ));
        // Never past the incident's end.
        let mut ending = incident();
        ending.max_lifetime_secs = 1060;
        let g = activate_now(&p, &ending, &profile, request(&["host/web-1"], Some(300))).unwrap();
        assert_eq!(g.expires_at, Some(1060));
    }

    #[test]
    fn closed_or_expired_incidents_are_refused() {
        let p = approved();
        let profile = fixer(&[Band::Remediation]);
        let mut closed = incident();
        closed.state = IncidentState::Closed;
        let mut ran_out = incident();
        ran_out.max_lifetime_secs = 1000;
        for inc in [closed, ran_out] {
            assert!(matches!(
                activate_now(&p, &inc, &profile, request(&["host/web-1"], None)),
                Err(PlaybookError::IncidentClosed(_))
            ));
        }
    }

    #[test]
    fn one_activation_per_playbook_and_incident_is_in_force() {
        let p = approved();
        let inc = incident();
        let profile = fixer(&[Band::Remediation]);
        let first = activate_now(&p, &inc, &profile, request(&["host/web-1"], None)).unwrap();
        let again = |grants: &[&Grant], now: i64| {
            activate(
                &RemediationRules::default(),
                &p,
                &inc,
                Some(&profile),
                request(&["host/web-2"], None),
                "carol",
                now,
                "g-2".into(),
                grants.iter().copied(),
            )
        };
        let refused = again(&[&first], 1001).unwrap_err();
        assert!(
            matches!(&refused, PlaybookError::AlreadyActive { grant, .. } if grant == "g-1"),
            "{refused}"
        );
        // Over, whether or not the expiry task has written it down; or ended.
        let until = first.expires_at.unwrap();
        assert!(again(&[&first], until).is_ok());
        let revoked = grant::end(&first, GrantState::Revoked, "carol", "", 1001).unwrap();
        assert!(again(&[&revoked], 1001).is_ok());
        // Another incident's activation is no obstacle.
        let mut elsewhere = first.clone();
        elsewhere.incident = "INC-2".into();
        assert!(again(&[&elsewhere], 1001).is_ok());
    }

    #[test]
    fn advisory_only_and_unassigned_agents_are_refused() {
        let p = approved();
        for profile in [fixer(&[Band::Investigative]), {
            let mut svc = fixer(&[Band::Base]);
            svc.service = true;
            svc
        }] {
            assert!(matches!(
                activate_now(&p, &incident(), &profile, request(&["host/web-1"], None)),
                Err(PlaybookError::NotEligible(_))
            ));
        }
        assert!(matches!(
            activate(
                &RemediationRules::default(),
                &p,
                &incident(),
                None,
                request(&["host/web-1"], None),
                "carol",
                1000,
                "g".into(),
                []
            ),
            Err(PlaybookError::NotEligible(_))
        ));
        let mut other = request(&["host/web-1"], None);
        other.agent = "stranger".into();
        assert!(matches!(
            activate_now(&p, &incident(), &fixer(&[Band::Remediation]), other),
            Err(PlaybookError::NotEligible(_))
        ));
    }

    #[test]
    fn sensitive_scopes_need_the_incident_to_name_them() {
        let mut s = spec();
        s.scopes = BTreeSet::from(["iam:disable-token".to_string()]);
        let p = new_playbook("default", s, "root", 0).unwrap();
        let d = p.digest();
        let p = approve(&approve(&p, "alice", &d, 1).unwrap(), "bob", &d, 2).unwrap();
        let profile = fixer(&[Band::Remediation]);
        assert!(matches!(
            activate_now(&p, &incident(), &profile, request(&["host/web-1"], None)),
            Err(PlaybookError::NotEligible(_))
        ));
        let mut naming = incident();
        naming.scopes.insert("iam:disable-token".into());
        assert!(activate_now(&p, &naming, &profile, request(&["host/web-1"], None)).is_ok());
    }

    #[test]
    fn a_configured_sensitive_prefix_is_honoured_by_activation() {
        // "net:" is not sensitive by default; configured, the incident must declare it.
        let p = approved();
        let profile = fixer(&[Band::Remediation]);
        let rules = RemediationRules {
            sensitive_scope_prefixes: vec!["net:".into()],
            ..RemediationRules::default()
        };
        let activate_under = |rules: &RemediationRules, incident: &Incident| {
            activate(
                rules,
                &p,
                incident,
                Some(&profile),
                request(&["host/web-1"], None),
                "carol",
                1000,
                "g-1".into(),
                [],
            )
        };
        assert!(activate_under(&RemediationRules::default(), &incident()).is_ok());
        let refused = activate_under(&rules, &incident()).unwrap_err();
        assert!(
            matches!(&refused, PlaybookError::NotEligible(why) if why.contains("net:isolate")),
            "{refused}"
        );
        let mut declaring = incident();
        declaring.scopes.insert("net:isolate".into());
        assert!(activate_under(&rules, &declaring).is_ok());
        // Configured prefixes replace the defaults: "iam:" is no longer sensitive.
        let mut iam = spec();
        iam.scopes = BTreeSet::from(["iam:disable-token".to_string()]);
        let iam = new_playbook("default", iam, "root", 0).unwrap();
        let d = iam.digest();
        let iam = approve(&approve(&iam, "alice", &d, 1).unwrap(), "bob", &d, 2).unwrap();
        assert!(
            activate(
                &rules,
                &iam,
                &incident(),
                Some(&profile),
                request(&["host/web-1"], None),
                "carol",
                1000,
                "g-2".into(),
                [],
            )
            .is_ok()
        );
    }

    #[test]
    fn removed_approvers_cost_the_quorum_and_the_activation() {
        let p = approved();
        assert!(without_approvers(&p, |_| true).is_none());
        let back = without_approvers(&p, |name| name != "bob").unwrap();
        assert_eq!(back.state, PlaybookState::Pending);
        assert_eq!(back.approvals.len(), 1);
        let g = activate_now(
            &p,
            &incident(),
            &fixer(&[Band::Remediation]),
            request(&["host/web-1"], None),
        )
        .unwrap();
        let mut lost = g.clone();
        lost.approvals.retain(|a| a.by != "bob");
        assert!(!activation_still_approved(&lost));
        let mut no_activator = g.clone();
        no_activator.approvals.retain(|a| a.by != "carol");
        assert!(!activation_still_approved(&no_activator));
        let ended = end_activations([&g].into_iter(), "isolate-host", "root", 2000);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].state, GrantState::Revoked);
        assert!(end_activations([&g].into_iter(), "other", "root", 2000).is_empty());
    }
}
