//! Roles allow what their names say, and bounded authority stays bounded (issue 10,
//! finding 9): the role matrix of docs/roles.md through the real `writ` binary, the CLI
//! run as each operator (by uid, through `setpriv`); one playbook activation in force per
//! playbook and incident, however many are asked for at once; and no incident extended
//! past `max_incident_lifetime`.
//!
//! Every refusal is a non-zero exit, one `error:` line naming the problem, and no change.
//! These tests run the CLI under other uids and need root (see `common::require_root`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;

use common::bin::{As, DevProcess, RESTART_PLAN, WRIT, json_lines, restart_args};

const ALICE: As = As::Uid(65534); // approver
const BOB: As = As::Uid(65533); // approver
const CAROL: As = As::Uid(65532); // incident-commander
const DORA: As = As::Uid(65531); // auditor

const OPERATORS: [&str; 8] = [
    "--operator",
    "alice=65534:approver",
    "--operator",
    "bob=65533:approver",
    "--operator",
    "carol=65532:incident-commander",
    "--operator",
    "dora=65531:auditor",
];

/// `writ dev` with the four operators, a remediable profile `fixer`, and a directory every
/// operator can read, where the CLI runs.
struct Dev {
    process: DevProcess,
    files: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Dev {
    type Target = DevProcess;
    fn deref(&self) -> &DevProcess {
        &self.process
    }
}

impl Dev {
    fn start(extra: &[&str]) -> Option<Dev> {
        if !common::require_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // The operators' uids must reach the admin socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o755)).unwrap();
        let args = [&OPERATORS[..], extra].concat();
        let process = DevProcess::start(&dir.path().join("data"), &args).in_dir(&files);
        let dev = Dev {
            process,
            files,
            _dir: dir,
        };
        dev.ok(&[
            "profile",
            "create",
            "fixer",
            "--selector",
            "unix:uid:1001",
            "--band",
            "investigative,remediation",
        ]);
        Some(dev)
    }

    fn plan(&self) -> String {
        let path = self.files.join("plan.txt");
        std::fs::write(&path, RESTART_PLAN).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn open(&self, id: &str) {
        self.ok(&[
            "incident",
            "open",
            id,
            "--title",
            "checkout 500s",
            "--severity",
            "sev3",
            "--assign",
            "fixer",
        ]);
    }

    fn grants(&self) -> Vec<Value> {
        json_lines(&self.ok(&["grant", "list", "--json"]))
    }

    /// `writ ARGS` as `who` must be refused, saying `reason`, and change no grant.
    fn refused_as(&self, who: As, args: &[&str], reason: &str) {
        let before = self.grants();
        self.refusal(who, args, Some(1), reason);
        assert_eq!(self.grants(), before, "writ {args:?} changed a grant");
    }

    /// Starts `writ ARGS` as `uid` without waiting for it.
    fn spawn_as(&self, uid: u32, args: &[&str]) -> std::process::Child {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ])
            .arg(WRIT)
            .args(args)
            .env("WRIT_ADMIN_SOCKET", self.socket())
            .env_remove("WRIT_LOG")
            .current_dir(&self.files)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[test]
fn only_incident_commanders_and_admins_ask_for_grants_and_auditors_only_read() {
    let Some(dev) = Dev::start(&[]) else { return };
    dev.open("INC-1");
    let plan = dev.plan();
    let request = restart_args("INC-1", &plan);
    dev.refused_as(
        DORA,
        &request,
        "dora needs the role incident-commander or admin",
    );
    dev.refused_as(
        ALICE,
        &request,
        "alice needs the role incident-commander or admin",
    );
    let by_carol = dev.ok_as(CAROL, &request).trim().to_owned();
    let by_root = dev.ok(&request).trim().to_owned();
    let mut requesters: Vec<String> = dev
        .grants()
        .iter()
        .map(|g| g["requested_by"].as_str().unwrap().to_owned())
        .collect();
    requesters.sort();
    assert_eq!(requesters, ["carol", "uid:0"], "{by_carol} {by_root}");

    // The auditor reads policy, state and the log, and changes nothing.
    assert_eq!(
        json_lines(&dev.ok_as(DORA, &["grant", "list", "--json"])).len(),
        2
    );
    dev.ok_as(DORA, &["incident", "show", "INC-1"]);
    dev.ok_as(DORA, &["audit", "export"]);
    dev.refused_as(
        DORA,
        &["incident", "extend", "INC-1", "--by", "1h"],
        "dora needs the role incident-commander or admin",
    );
    dev.refused_as(
        DORA,
        &["grant", "approve", &by_carol],
        "dora needs the role approver",
    );
    dev.refused_as(
        DORA,
        &["grant", "revoke", &by_carol],
        "dora needs the role incident-commander or admin",
    );
    // The log is the auditors' (and admins'), not every role's.
    dev.refused_as(
        CAROL,
        &["audit", "export"],
        "carol needs the role auditor or admin",
    );
    // An incident commander asks; approving stays with approvers.
    dev.refused_as(
        CAROL,
        &["grant", "approve", &by_root],
        "carol needs the role approver",
    );
    dev.ok_as(ALICE, &["grant", "approve", &by_carol]);
}

#[test]
fn one_activation_of_a_playbook_is_in_force_per_incident() {
    let Some(dev) = Dev::start(&[]) else { return };
    let create = [
        "playbook",
        "create",
        "isolate-host",
        "--action",
        "isolate host",
        "--target",
        "host/web-1",
        "--max-window",
        "10m",
    ];
    dev.refusal(ALICE, &create, Some(1), "alice needs the role admin");
    dev.ok(&create);
    dev.refusal(
        CAROL,
        &["playbook", "approve", "isolate-host"],
        Some(1),
        "carol needs the role approver",
    );
    dev.ok_as(ALICE, &["playbook", "approve", "isolate-host"]);
    dev.ok_as(BOB, &["playbook", "approve", "isolate-host"]);
    dev.open("INC-1");
    dev.open("INC-2");
    let activate = |incident: &'static str| {
        [
            "playbook",
            "activate",
            "isolate-host",
            "--incident",
            incident,
            "--agent",
            "fixer",
        ]
    };
    dev.refused_as(
        ALICE,
        &activate("INC-1"),
        "alice needs the role incident-commander",
    );

    // Four activations asked for at once: one is in force, the others are refused.
    let children: Vec<_> = (0..4)
        .map(|_| dev.spawn_as(65532, &activate("INC-1")))
        .collect();
    let outcomes: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won = outcomes.iter().filter(|o| o.status.success()).count();
    assert_eq!(won, 1, "exactly one activation wins: {outcomes:?}");
    for lost in outcomes.iter().filter(|o| !o.status.success()) {
        let stderr = String::from_utf8_lossy(&lost.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ")
                && stderr
                    .contains(r#"playbook "isolate-host" is already active on incident "INC-1""#),
            "{stderr}"
        );
    }
    let active: Vec<Value> = dev
        .grants()
        .into_iter()
        .filter(|g| g["playbook"] == "isolate-host" && g["state"] == "active")
        .collect();
    assert_eq!(active.len(), 1, "{active:?}");
    // Again, later: still refused while the first is in force.
    dev.refused_as(CAROL, &activate("INC-1"), "already active");
    // Another incident is another decision.
    dev.ok_as(CAROL, &activate("INC-2"));
    // Once the first ends, the playbook may be activated on INC-1 again.
    let first = active[0]["id"].as_str().unwrap();
    dev.ok_as(CAROL, &["grant", "revoke", first]);
    dev.ok_as(CAROL, &activate("INC-1"));
}

#[test]
fn incidents_are_never_extended_past_max_incident_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("writ.toml");
    std::fs::write(&config, "max_incident_lifetime = \"6h\"\n").unwrap();
    let Some(dev) = Dev::start(&["--config", config.to_str().unwrap()]) else {
        return;
    };
    let lifetime = |dev: &Dev| {
        dev.json(&["incident", "show", "INC-1"])["max_lifetime_seconds"]
            .as_u64()
            .unwrap()
    };
    let open = |extra: &[&'static str]| -> Vec<&'static str> {
        let base = [
            "incident",
            "open",
            "INC-1",
            "--title",
            "t",
            "--severity",
            "sev3",
            "--assign",
            "fixer",
        ];
        [&base[..], extra].concat()
    };
    dev.refusal(
        As::Me,
        &open(&["--max-lifetime", "7h"]),
        Some(1),
        "longer than max_incident_lifetime (6h) allows",
    );
    dev.ok(&open(&[]));
    assert_eq!(lifetime(&dev), 4 * 3600, "the default, under the ceiling");
    for _ in 0..2 {
        dev.ok_as(CAROL, &["incident", "extend", "INC-1", "--by", "1h"]);
    }
    assert_eq!(lifetime(&dev), 6 * 3600, "up to the ceiling");
    let before = dev.json(&["incident", "show", "INC-1"]);
    dev.refusal(
        CAROL,
        &["incident", "extend", "INC-1", "--by", "1s"],
        Some(1),
        r#"incident "INC-1" would be open for 6h 1s, longer than max_incident_lifetime (6h) allows"#,
    );
    assert_eq!(
        dev.json(&["incident", "show", "INC-1"]),
        before,
        "unchanged"
    );
}
