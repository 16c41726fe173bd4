//! Who may do what on the admin API: the role matrix, and the rules a set of configured
//! operators must follow (docs/roles.md).
//!
//! This is the one home of both: every admin RPC asks [`allowed`] with its [`Operation`],
//! and never lists roles itself. Pure: roles and operations in, a decision out.

use super::{Operator, PolicyError, Role};
use std::collections::{BTreeMap, BTreeSet};

/// One admin API call, as the role matrix names it (one per `writ.admin.v1` RPC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// `writ healthcheck`.
    Health,
    /// `writ bundle show`.
    GetBundles,
    /// `writ authority show`.
    ShowAuthorities,
    /// `writ tenant list | show`, `writ replica list` (the deployment's).
    ReadDeployment,
    /// `writ operator list | show`.
    ListOperators,
    /// `writ profile list | show`.
    ReadProfiles,
    /// `writ incident list | show`.
    ReadIncidents,
    /// `writ grant list | show`.
    ReadGrants,
    /// `writ playbook list | show`.
    ReadPlaybooks,
    /// `writ svid list`.
    ListSvids,
    /// `writ audit tail | export | checkpoint | verify`, `writ incident timeline`.
    ReadAudit,
    /// `writ x509 mint`, `writ jwt mint`.
    MintSvid,
    /// `writ authority prepare | activate`.
    RotateAuthority,
    /// `writ replica admit | remove` (what the roots sign).
    ManageReplicas,
    /// `writ tenant create | disable`.
    ManageTenants,
    /// `writ token create`.
    CreateJoinToken,
    /// `writ profile create | delete`.
    ManageProfiles,
    /// `writ playbook create`.
    CreatePlaybook,
    /// `writ incident open | close | extend`.
    CommandIncident,
    /// `writ grant request`.
    RequestGrant,
    /// `writ grant revoke`.
    RevokeGrant,
    /// `writ svid revoke`.
    RevokeSvid,
    /// `writ playbook retire`.
    RetirePlaybook,
    /// `writ playbook activate`.
    ActivatePlaybook,
    /// `writ grant approve`, `writ playbook approve`.
    Approve,
    /// `writ grant deny`.
    DenyGrant,
    /// `writ backup` (the whole deployment's state and keys, encrypted).
    Backup,
}

use Role::{Admin, Approver, Auditor, IncidentCommander};

/// Every role: reading policy and state is open to any operator.
const ANY: &[Role] = &[Admin, IncidentCommander, Approver, Auditor];

impl Operation {
    /// Every operation, in the order docs/roles.md lists them.
    pub const ALL: [Operation; 27] = [
        Operation::Health,
        Operation::GetBundles,
        Operation::ShowAuthorities,
        Operation::ReadDeployment,
        Operation::ListOperators,
        Operation::ReadProfiles,
        Operation::ReadIncidents,
        Operation::ReadGrants,
        Operation::ReadPlaybooks,
        Operation::ListSvids,
        Operation::ReadAudit,
        Operation::MintSvid,
        Operation::RotateAuthority,
        Operation::ManageReplicas,
        Operation::ManageTenants,
        Operation::CreateJoinToken,
        Operation::ManageProfiles,
        Operation::CreatePlaybook,
        Operation::CommandIncident,
        Operation::RequestGrant,
        Operation::RevokeGrant,
        Operation::RevokeSvid,
        Operation::RetirePlaybook,
        Operation::ActivatePlaybook,
        Operation::Approve,
        Operation::DenyGrant,
        Operation::Backup,
    ];

    /// The roles that may perform it: holding any one is enough. This match is the role
    /// matrix; docs/roles.md is checked against it.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Operation::Health
            | Operation::GetBundles
            | Operation::ShowAuthorities
            | Operation::ListOperators
            | Operation::ReadProfiles
            | Operation::ReadIncidents
            | Operation::ReadGrants
            | Operation::ReadPlaybooks
            | Operation::ListSvids => ANY,
            // The log records what every role did: its readers are those who answer for
            // the system, not those it records.
            Operation::ReadAudit | Operation::ReadDeployment => &[Auditor, Admin],
            Operation::MintSvid
            | Operation::RotateAuthority
            | Operation::ManageReplicas
            | Operation::ManageTenants
            | Operation::CreateJoinToken
            | Operation::ManageProfiles
            | Operation::CreatePlaybook
            | Operation::Backup => &[Admin],
            Operation::CommandIncident
            | Operation::RequestGrant
            | Operation::RevokeGrant
            | Operation::RevokeSvid => &[IncidentCommander, Admin],
            // Retiring only ever takes authority away.
            Operation::RetirePlaybook => &[Admin, IncidentCommander],
            // One on-call human takes the containment decision (docs/architecture.md,
            // "Policy objects").
            Operation::ActivatePlaybook => &[IncidentCommander],
            Operation::Approve => &[Approver],
            Operation::DenyGrant => &[Approver, IncidentCommander],
        }
    }

    /// What the operator types, for the docs and refusals.
    pub fn commands(self) -> &'static str {
        match self {
            Operation::Health => "healthcheck",
            Operation::GetBundles => "bundle show",
            Operation::ShowAuthorities => "authority show",
            Operation::ReadDeployment => "tenant list, show; replica list",
            Operation::ListOperators => "operator list, show",
            Operation::ReadProfiles => "profile list, show",
            Operation::ReadIncidents => "incident list, show",
            Operation::ReadGrants => "grant list, show",
            Operation::ReadPlaybooks => "playbook list, show",
            Operation::ListSvids => "svid list",
            Operation::ReadAudit => "audit tail, export, checkpoint, verify; incident timeline",
            Operation::MintSvid => "x509 mint, jwt mint",
            Operation::RotateAuthority => "authority prepare, activate, taint, revoke",
            Operation::ManageReplicas => "replica admit, remove",
            Operation::ManageTenants => "tenant create, disable",
            Operation::CreateJoinToken => "token create",
            Operation::ManageProfiles => "profile create, delete",
            Operation::CreatePlaybook => "playbook create",
            Operation::CommandIncident => "incident open, close, extend",
            Operation::RequestGrant => "grant request",
            Operation::RevokeGrant => "grant revoke",
            Operation::RevokeSvid => "svid revoke",
            Operation::RetirePlaybook => "playbook retire",
            Operation::ActivatePlaybook => "playbook activate",
            Operation::Approve => "grant approve, playbook approve",
            Operation::DenyGrant => "grant deny",
            Operation::Backup => "backup",
        }
    }
}

impl Operation {
    /// Whether it acts on the deployment (its nodes, replicas and tenants) rather than in
    /// one tenant: the caller needs the role in the default tenant, whatever `--tenant`
    /// names (docs/multi-tenant.md).
    pub fn deployment_wide(self) -> bool {
        matches!(
            self,
            Operation::ReadDeployment
                | Operation::ManageReplicas
                | Operation::ManageTenants
                | Operation::CreateJoinToken
                | Operation::Backup
        )
    }
}

/// Whether an operator holding `held` may perform `operation`.
pub fn allowed(held: &BTreeSet<Role>, operation: Operation) -> bool {
    operation.roles().iter().any(|r| held.contains(r))
}

/// The role matrix as the Markdown table in docs/roles.md.
pub fn matrix_markdown() -> String {
    let mut out = String::from("| `writ …` | admin | incident-commander | approver | auditor |\n");
    out.push_str("|---|:-:|:-:|:-:|:-:|\n");
    for op in Operation::ALL {
        out.push_str(&format!("| {} |", op.commands()));
        for role in Role::ALL {
            out.push_str(if op.roles().contains(&role) {
                " ✓ |"
            } else {
                "   |"
            });
        }
        out.push('\n');
    }
    out
}

/// Checks configured operators (config `[[operator]]` and `writ dev --operator`) against
/// the uid running writ: each name and each uid names one operator; every operator holds a
/// role; root and `server_uid` appear only with every role. Root and the uid running writ
/// can read writ's keys and store, so naming them with fewer roles would only pretend to
/// take authority away (and silently change who they are in the audit log).
pub fn check_operators(operators: &[Operator], server_uid: u32) -> Result<(), PolicyError> {
    let bad = |reason: String| Err(PolicyError::BadOperators(reason));
    let mut names = BTreeSet::new();
    let mut uids: BTreeMap<u32, &str> = BTreeMap::new();
    for o in operators {
        super::check_name("operator", &o.name)?;
        if !names.insert(o.name.as_str()) {
            return bad(format!("operator {:?} is configured twice", o.name));
        }
        if o.roles.is_empty() {
            return bad(format!(
                "operator {:?} has no roles (give admin, incident-commander, approver or auditor)",
                o.name
            ));
        }
        let Some(uid) = o.uid else { continue };
        if let Some(first) = uids.insert(uid, &o.name) {
            return bad(format!(
                "operators {first:?} and {:?} both have uid {uid}: the kernel reports one uid per caller, so one of them would never be used",
                o.name
            ));
        }
        if (uid == 0 || uid == server_uid)
            && o.roles_in(super::DEFAULT_TENANT).len() < Role::ALL.len()
        {
            let who = if uid == 0 {
                "root".to_owned()
            } else {
                "the uid running writ".to_owned()
            };
            return bad(format!(
                "operator {:?} has uid {uid}, which is {who}: it holds every role (it can read writ's keys), so name it with all four roles or not at all",
                o.name
            ));
        }
    }
    Ok(())
}

/// The uids that act as operators on the local admin socket: every configured operator's,
/// root's, and `server_uid` (the uid running writ). A workload running as one of them could
/// approve what it asks for.
pub fn operator_uids(operators: &[Operator], server_uid: u32) -> BTreeSet<u32> {
    operators
        .iter()
        .filter_map(|o| o.uid)
        .chain([0, server_uid])
        .collect()
}

/// Checks that `profile` does not make an operator a workload: no `unix:uid:` selector
/// naming one of `operator_uids`, and no `unix:user:` selector whose user has one
/// (`uid_of_user` looks names up). Without this separation, a workload running as an
/// operator asks for a grant and its operator approves it: one person, two votes.
pub fn check_profile(
    profile: &super::Profile,
    operator_uids: &BTreeSet<u32>,
    uid_of_user: impl Fn(&str) -> Option<u32>,
) -> Result<(), PolicyError> {
    for selector in &profile.selectors {
        let uid = match selector {
            super::Selector::Uid(uid) => Some(*uid),
            super::Selector::User(name) => uid_of_user(name),
            _ => None,
        };
        if let Some(uid) = uid.filter(|u| operator_uids.contains(u)) {
            return Err(PolicyError::SelectsOperator {
                profile: profile.name.clone(),
                selector: selector.to_string(),
                uid,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn roles(r: &[Role]) -> BTreeSet<Role> {
        r.iter().copied().collect()
    }

    #[test]
    fn docs_roles_md_holds_the_matrix_in_force() {
        let doc = include_str!("../../docs/roles.md");
        assert!(
            doc.contains(&matrix_markdown()),
            "docs/roles.md must contain, byte for byte:\n{}",
            matrix_markdown()
        );
    }

    #[test]
    fn every_operation_is_someones_and_roles_do_what_their_names_say() {
        for op in Operation::ALL {
            assert!(!op.roles().is_empty(), "{op:?}");
        }
        let auditor = roles(&[Auditor]);
        let approver = roles(&[Approver]);
        let commander = roles(&[IncidentCommander]);
        // Auditors read; nothing else.
        for op in Operation::ALL {
            let reads = matches!(
                op,
                Operation::Health
                    | Operation::GetBundles
                    | Operation::ShowAuthorities
                    | Operation::ListOperators
                    | Operation::ReadProfiles
                    | Operation::ReadIncidents
                    | Operation::ReadGrants
                    | Operation::ReadPlaybooks
                    | Operation::ListSvids
                    | Operation::ReadAudit
                    | Operation::ReadDeployment
            );
            assert_eq!(allowed(&auditor, op), reads, "auditor, {op:?}");
        }
        // Approvers approve and deny; they never ask for authority.
        assert!(allowed(&approver, Operation::Approve));
        assert!(!allowed(&approver, Operation::RequestGrant));
        assert!(!allowed(&approver, Operation::ReadAudit));
        // Incident commanders run the response, but approve nothing and configure nothing.
        assert!(allowed(&commander, Operation::RequestGrant));
        assert!(allowed(&commander, Operation::ActivatePlaybook));
        assert!(!allowed(&commander, Operation::Approve));
        assert!(!allowed(&commander, Operation::ManageProfiles));
        assert!(!allowed(&commander, Operation::MintSvid));
        assert!(!allowed(&BTreeSet::new(), Operation::Health));
    }

    fn op(s: &str) -> Operator {
        s.parse().unwrap()
    }

    #[test]
    fn operator_sets_name_one_operator_per_uid_and_never_demote_root() {
        assert!(check_operators(&[op("alice=1001"), op("bob=1002:auditor")], 1000).is_ok());
        assert!(
            check_operators(
                &[op("root=0:admin,incident-commander,approver,auditor")],
                1000
            )
            .is_ok()
        );
        for (set, says) in [
            (
                vec![op("alice=1001"), op("bob=1001:admin")],
                "both have uid 1001",
            ),
            (vec![op("alice=1001"), op("alice=1002")], "configured twice"),
            (vec![op("carol=0:auditor")], "which is root"),
            (vec![op("me=1000:approver")], "the uid running writ"),
        ] {
            let e = check_operators(&set, 1000).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let mut roleless = op("dave=1003");
        roleless.roles.clear();
        assert!(
            check_operators(&[roleless], 1000)
                .unwrap_err()
                .to_string()
                .contains("no roles")
        );
        assert_eq!(
            operator_uids(&[op("alice=1001")], 1000),
            BTreeSet::from([0, 1000, 1001])
        );
    }

    #[test]
    fn profiles_never_select_an_operators_uid_by_number_or_by_name() {
        let profile = |selectors: &[&str]| super::super::Profile {
            tenant: "default".into(),
            name: "fixer".into(),
            selectors: selectors.iter().map(|s| s.parse().unwrap()).collect(),
            bands: BTreeSet::from([writ_verifier::Band::Investigative]),
            scopes: BTreeSet::new(),
            service: false,
            created_at: 0,
        };
        let operators = BTreeSet::from([0, 1000, 1001]);
        let users = |name: &str| match name {
            "alice" => Some(1001),
            "agent" => Some(2001),
            _ => None,
        };
        for ok in [
            &["unix:uid:2001"][..],
            &["unix:user:agent"],
            &["unix:user:nobody-here"],
            &["unix:gid:1001", "unix:path:/usr/bin/agent"],
        ] {
            assert!(
                check_profile(&profile(ok), &operators, users).is_ok(),
                "{ok:?}"
            );
        }
        for (bad, uid) in [
            (&["unix:uid:1001"][..], 1001),
            (&["unix:uid:0", "unix:path:/usr/bin/agent"], 0),
            (&["unix:user:alice"], 1001),
        ] {
            let e = check_profile(&profile(bad), &operators, users).unwrap_err();
            assert!(
                matches!(&e, PolicyError::SelectsOperator { uid: u, .. } if *u == uid),
                "{e}"
            );
            assert!(e.to_string().contains(&bad[0].to_string()), "{e}");
        }
    }
}
