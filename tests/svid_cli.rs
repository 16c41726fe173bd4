//! `writ svid list | revoke` through the real `writ` binary (docs/architecture.md,
//! "Revocation" and "The CLI"): `writ dev` on a temp data directory, the CLI run as root
//! and, through `setpriv`, as an auditor and as a uid that is no operator.
//!
//! Every refusal must be a non-zero exit, exactly one `error:` line on stderr naming the
//! problem, nothing on stdout, and no change to any SVID's state. The tests that run the
//! CLI under other uids need root (see `common::require_root`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod common;

use common::bin::{As, DevProcess, json_lines};

const AUDITOR: u32 = 65530;
const STRANGER: u32 = 65531;

/// `writ dev` with an auditor operator.
struct Dev(DevProcess);

impl std::ops::Deref for Dev {
    type Target = DevProcess;
    fn deref(&self) -> &DevProcess {
        &self.0
    }
}

impl Dev {
    fn start(dir: &Path) -> Dev {
        let auditor = format!("dora={AUDITOR}:auditor");
        Dev(DevProcess::start(
            &dir.join("data"),
            &["--operator", &auditor],
        ))
    }

    /// `svid list --json` (plus `extra`) as `who`: one JSON object per line.
    fn svids_as(&self, who: As, extra: &[&str]) -> Vec<Value> {
        let args = [&["svid", "list", "--json"][..], extra].concat();
        json_lines(&self.ok_as(who, &args))
    }

    fn svids(&self) -> Vec<Value> {
        self.svids_as(As::Me, &[])
    }

    /// `writ ARGS` as `who` must be refused with one `error:` line mentioning `reason`,
    /// nothing on stdout, and no SVID's state changed.
    fn refused_as(&self, who: As, args: &[&str], reason: &str) {
        let before = self.svids();
        self.refusal(who, args, Some(1), reason);
        assert_eq!(self.svids(), before, "writ {args:?} changed an SVID");
    }

    fn refused(&self, args: &[&str], reason: &str) {
        self.refused_as(As::Me, args, reason);
    }
}

/// `writ dev` with a profile, an open incident and one SVID minted for it; returns the
/// SVID's serial.
fn setup() -> (tempfile::TempDir, Dev, String) {
    let dir = tempfile::tempdir().unwrap();
    // Other uids must reach the admin socket inside.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev = Dev::start(dir.path());
    dev.ok(&["profile", "create", "triage", "--selector", "unix:uid:1001"]);
    dev.ok(&[
        "incident",
        "open",
        "INC-1",
        "--title",
        "db down",
        "--severity",
        "sev2",
        "--assign",
        "triage",
    ]);
    let out = dir.path().join("svid");
    let minted: Value = serde_json::from_str(&dev.ok(&[
        "x509",
        "mint",
        "--agent",
        "triage",
        "--incident",
        "INC-1",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let serial = minted["serial"].as_str().unwrap().to_owned();
    (dir, dev, serial)
}

#[test]
fn list_then_revoke_by_serial() {
    let (_dir, dev, serial) = setup();
    let listed = dev.svids();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let svid = &listed[0];
    assert_eq!(svid["serial"], serial.as_str());
    assert_eq!(
        svid["spiffe_id"],
        "spiffe://investigate.example.org/agent/triage/incident/INC-1"
    );
    assert_eq!(svid["band"], "investigative");
    assert_eq!(svid["trust_domain"], "investigate.example.org");
    assert_eq!(svid["incident"], "INC-1");
    assert_eq!(svid["grant"], Value::Null);
    assert_eq!(svid["revoked"], false);
    assert!(svid["not_before"].as_i64().unwrap() < svid["not_after"].as_i64().unwrap());
    assert_eq!(dev.svids_as(As::Me, &["--incident", "INC-1"]), listed);
    assert!(dev.svids_as(As::Me, &["--incident", "INC-2"]).is_empty());
    // The table names the serial too.
    assert!(dev.ok(&["svid", "list"]).contains(&serial));

    let out = dev.ok(&["svid", "revoke", &serial]);
    assert!(out.starts_with(&format!("revoked svid {serial} ")), "{out}");
    let after = dev.svids();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["revoked"], true);
    assert!(after[0]["revoked_at"].is_i64());
    assert!(after[0]["revoked_by"].as_str().unwrap().starts_with("uid:"));
    dev.refused(&["svid", "revoke", &serial], "already revoked");
}

#[test]
fn bad_serials_are_refused_and_change_nothing() {
    let (_dir, dev, serial) = setup();
    dev.refused(&["svid", "revoke", "not-a-serial"], "invalid serial");
    dev.refused(&["svid", "revoke", "abc"], "invalid serial");
    // Well formed, but writ never issued it.
    let unknown = if serial.starts_with("40") {
        "41ff"
    } else {
        "40ff"
    };
    dev.refused(&["svid", "revoke", unknown], "unknown serial");
    dev.refused(
        &["svid", "list", "--incident", "a/b"],
        "invalid incident name",
    );
    assert_eq!(dev.svids()[0]["revoked"], false);
}

#[test]
fn only_admins_and_incident_commanders_revoke_and_strangers_see_nothing() {
    if !common::require_root() {
        return;
    }
    let (_dir, dev, serial) = setup();
    // An auditor reads the list, but may not revoke.
    assert_eq!(dev.svids_as(As::Uid(AUDITOR), &[]), dev.svids());
    dev.refused_as(
        As::Uid(AUDITOR),
        &["svid", "revoke", &serial],
        "needs the role incident-commander or admin",
    );
    let not = "uid 65531 is not a writ operator";
    dev.refused_as(As::Uid(STRANGER), &["svid", "list"], not);
    dev.refused_as(As::Uid(STRANGER), &["svid", "revoke", &serial], not);
    assert_eq!(dev.svids()[0]["revoked"], false);
}
