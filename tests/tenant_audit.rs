//! The audit log of a deployment with tenants (issue 13, item 5; docs/architecture.md,
//! "Audit"): one log, every record saying its tenant; a tenant's auditor reads only its
//! tenant's records and proves each is in the signed log by its inclusion proof; the
//! default tenant's auditor does not see another tenant's incidents.
//!
//! The real `writ` binary, the CLI run as each auditor (by uid, through `setpriv`): these
//! tests need root (see `common::require_root`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

mod common;

use common::bin::{As, DevProcess, json_lines};

const ACME_AUDITOR: As = As::Uid(65531);
const AUDITOR: As = As::Uid(65530);

/// The `tenant` of an exported record (absent: the default tenant).
fn tenant(record: &Value) -> &str {
    record["tenant"].as_str().unwrap_or("default")
}

fn actions(records: &[Value]) -> Vec<(&str, &str, &str)> {
    records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                tenant(r),
                r["incident"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

#[test]
fn a_tenants_auditor_reads_and_proves_only_its_tenants_records() {
    if !common::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The auditors' uids must reach the admin socket inside.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev = DevProcess::start(
        &dir.path().join("data"),
        &[
            "--operator",
            "acme-auditor=65531:auditor@acme",
            "--operator",
            "auditor=65530:auditor",
        ],
    )
    .in_dir(dir.path());

    // Two tenants with the same names: acme's INC-1 and the default tenant's INC-1.
    dev.ok(&["tenant", "create", "acme", "--trust-domain", "acme.test"]);
    for (tenant, uid) in [("acme", "1001"), ("default", "1002")] {
        let selector = format!("unix:uid:{uid}");
        dev.ok(&[
            "profile",
            "create",
            "fixer",
            "--selector",
            &selector,
            "--tenant",
            tenant,
        ]);
        dev.ok(&[
            "incident",
            "open",
            "INC-1",
            "--title",
            "db down",
            "--severity",
            "sev3",
            "--assign",
            "fixer",
            "--tenant",
            tenant,
        ]);
    }
    // An identity of acme's issued: its issuance record is acme's.
    let out = dir.path().join("minted");
    std::fs::create_dir(&out).unwrap();
    dev.ok(&[
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://investigate.acme.test/agent/fixer/incident/INC-1",
        "--out",
        out.to_str().unwrap(),
        "--tenant",
        "acme",
    ]);
    // A refused call in acme by its auditor is acme's to see; a call naming a tenant the
    // caller holds no role in is the deployment's.
    let refused = dev.run_as(
        ACME_AUDITOR,
        &["incident", "close", "INC-1", "--tenant", "acme"],
    );
    assert!(!refused.status.success());
    let refused = dev.run_as(ACME_AUDITOR, &["audit", "export", "--tenant", "default"]);
    assert!(
        !refused.status.success(),
        "acme's auditor read the default tenant's log"
    );

    // acme's auditor: acme's records only, its profile, incident and refusal.
    let theirs = json_lines(&dev.ok_as(ACME_AUDITOR, &["audit", "export", "--tenant", "acme"]));
    assert!(theirs.iter().all(|r| tenant(r) == "acme"), "{theirs:?}");
    let seen = actions(&theirs);
    assert!(seen.contains(&("profile.create", "acme", "")), "{seen:?}");
    assert!(
        seen.contains(&("incident.open", "acme", "INC-1")),
        "{seen:?}"
    );
    assert!(seen.contains(&("admin.refused", "acme", "")), "{seen:?}");
    assert!(
        seen.contains(&("svid.issue.investigative", "acme", "INC-1")),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|(a, _, _)| *a == "tenant.create"));
    // The incident's timeline is acme's INC-1, not the default tenant's.
    let timeline = json_lines(&dev.ok_as(
        ACME_AUDITOR,
        &[
            "incident", "timeline", "INC-1", "--tenant", "acme", "--json",
        ],
    ));
    assert_eq!(
        actions(&timeline),
        [
            ("incident.open", "acme", "INC-1"),
            ("svid.issue.investigative", "acme", "INC-1")
        ],
        "{timeline:?}"
    );

    // Each of them proven in the signed log, whose other records acme's auditor never sees.
    let verified = dev.ok_as(ACME_AUDITOR, &["audit", "verify", "--tenant", "acme"]);
    assert!(
        verified.contains(&format!(
            "{} records of tenant acme, each proven included in the signed log of size",
            theirs.len()
        )),
        "{verified}"
    );
    let report = dev.json_as(ACME_AUDITOR, &["audit", "verify", "--tenant", "acme"]);
    assert_eq!(report["intact"], true);
    assert_eq!(report["proven"], "inclusion");
    assert!(report["records"].as_u64().unwrap() >= theirs.len() as u64);
    let size = report["size"].as_u64().unwrap();
    assert!(size > report["records"].as_u64().unwrap(), "{report}");

    // The default tenant's auditor: its own incident and the tenant's creation, never
    // acme's incident; the refused read of its log by acme's auditor is the deployment's.
    let ours = json_lines(&dev.ok_as(AUDITOR, &["audit", "export"]));
    assert!(ours.iter().all(|r| tenant(r) == "default"), "{ours:?}");
    let seen = actions(&ours);
    assert!(seen.contains(&("tenant.create", "default", "")), "{seen:?}");
    assert!(
        seen.contains(&("incident.open", "default", "INC-1")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|(a, _, _)| a.starts_with("svid.issue")),
        "{seen:?}"
    );
    assert_eq!(
        ours.iter()
            .filter(|r| r["action"] == "admin.refused" && r["actor"] == "uid:65531")
            .count(),
        1,
        "{ours:?}"
    );
    let indexes = |records: &[Value]| -> Vec<u64> {
        records
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect()
    };
    assert!(
        indexes(&ours).iter().all(|i| !indexes(&theirs).contains(i)),
        "a record both tenants see"
    );
    // It too sees part of the log now, and proves that part.
    let verified = dev.ok_as(AUDITOR, &["audit", "verify"]);
    assert!(
        verified.contains("records of tenant default, each proven included"),
        "{verified}"
    );
}
