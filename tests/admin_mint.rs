//! Issue 10, finding 7: `writ x509 mint` and `writ jwt mint` through the real `writ`
//! binary against a real `writ dev`. An operator mints exactly what policy gives some
//! workload this instant, whatever flags name the identity: no remediation identity for
//! a revoked grant, no identity of a closed incident, none for an agent with no profile,
//! no sensitive scope in the investigative band. Every refusal is one `error:` line, and
//! nothing is issued (no certificate stored, no issuance in the audit log).
//!
//! The grant needs an approver other than the requester, run through `setpriv`: needs
//! root (see `common::require_root`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod common;

use common::bin::{As, DevProcess, RESTART_PLAN, json_lines, restart_args};

const ALICE: u32 = 65534;

const INV: &str = "spiffe://investigate.example.org/agent/fixer/incident/INC-1";

/// `writ dev` with approver alice; profile `fixer` (both bands, `logs:read` and the
/// sensitive `deploy:restart`), service profile `logs-api`; INC-1 open naming both scopes,
/// INC-0 closed; and an active grant of fixer on INC-1 for `deploy:restart`, returned.
fn setup(dir: &Path) -> (DevProcess, String) {
    // alice's uid must reach the admin socket inside.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev = DevProcess::start(
        &dir.join("data"),
        &["--operator", &format!("alice={ALICE}:approver")],
    );
    dev.create_fixer();
    dev.ok(&[
        "profile",
        "create",
        "logs-api",
        "--selector",
        "unix:uid:1003",
        "--service",
    ]);
    for id in ["INC-0", "INC-1"] {
        dev.ok(&[
            "incident",
            "open",
            id,
            "--title",
            "checkout 500s",
            "--severity",
            "sev3",
            "--assign",
            "fixer",
            "--scope",
            "logs:read",
            "--scope",
            "deploy:restart",
        ]);
    }
    dev.ok(&["incident", "close", "INC-0"]);
    let plan = dir.join("plan.txt");
    std::fs::write(&plan, RESTART_PLAN).unwrap();
    let mut request = restart_args("INC-1", plan.to_str().unwrap());
    request.extend(["--scope", "deploy:restart"]);
    let grant = dev.ok(&request).trim().to_owned();
    dev.ok_as(As::Uid(ALICE), &["grant", "approve", &grant]);
    assert_eq!(dev.json(&["grant", "show", &grant])["state"], "active");
    (dev, grant)
}

/// What was issued so far: every stored X.509-SVID, and the issuance records of the audit
/// log (X.509 and JWT alike).
fn issued(dev: &DevProcess) -> (Vec<Value>, usize) {
    let svids = json_lines(&dev.ok(&["svid", "list", "--json"]));
    let issuances = json_lines(&dev.ok(&["audit", "export"]))
        .iter()
        .filter(|r| {
            r["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("svid.issue"))
        })
        .count();
    (svids, issuances)
}

/// `x509 mint IDENTITY…` and `jwt mint IDENTITY…` must both be refused naming `reason`,
/// and the X.509 mint must write no file.
fn both_refused(dev: &DevProcess, out: &Path, identity: &[&str], reason: &str) {
    let dir = out.to_str().unwrap();
    dev.refusal(
        As::Me,
        &[&["x509", "mint", "--out", dir][..], identity].concat(),
        Some(1),
        reason,
    );
    assert!(!out.exists(), "x509 mint {identity:?} wrote {dir}");
    dev.refusal(
        As::Me,
        &[&["jwt", "mint", "--audience", "ops-api"][..], identity].concat(),
        Some(1),
        reason,
    );
}

/// The claims of a minted JWT-SVID (unverified: the token came from the server just now).
fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.trim().split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn admin_mints_pass_the_entitlement_rules_of_the_workload_api() {
    if !common::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (dev, grant) = setup(dir.path());
    let remediation =
        format!("spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/{grant}");
    // While the grant is active, its remediation identity is minted, by either flags.
    let token = dev.ok(&[
        "jwt",
        "mint",
        "--agent",
        "fixer",
        "--incident",
        "INC-1",
        "--grant",
        &grant,
        "--audience",
        "ops-api",
    ]);
    assert_eq!(jwt_claims(&token)["sub"], remediation.as_str());
    dev.ok(&["x509", "mint", "--spiffe-id", &remediation, "--json"]);
    dev.ok(&["grant", "revoke", &grant]);
    let before = issued(&dev);
    let out = dir.path().join("out");

    // 1. A remediation identity of a revoked grant.
    let revoked = format!("grant \"{grant}\" is revoked, not active");
    both_refused(&dev, &out, &["--spiffe-id", &remediation], &revoked);
    both_refused(
        &dev,
        &out,
        &["--agent", "fixer", "--incident", "INC-1", "--grant", &grant],
        &revoked,
    );
    // 2. An investigative identity of a closed incident.
    let closed = "incident \"INC-0\" is closed";
    both_refused(
        &dev,
        &out,
        &[
            "--spiffe-id",
            "spiffe://investigate.example.org/agent/fixer/incident/INC-0",
        ],
        closed,
    );
    both_refused(
        &dev,
        &out,
        &["--agent", "fixer", "--incident", "INC-0"],
        closed,
    );
    // 3. An agent with no profile.
    let nobody = "no profile for agent \"ghost\"";
    both_refused(
        &dev,
        &out,
        &[
            "--spiffe-id",
            "spiffe://investigate.example.org/agent/ghost/incident/INC-1",
        ],
        nobody,
    );
    both_refused(
        &dev,
        &out,
        &["--agent", "ghost", "--incident", "INC-1"],
        nobody,
    );
    // 4. A sensitive scope in the investigative band, although profile and incident name
    // it: the Workload API would never put it there.
    let sensitive = "scope \"deploy:restart\" is not among the scopes policy gives";
    both_refused(
        &dev,
        &out,
        &["--spiffe-id", INV, "--scope", "deploy:restart"],
        sensitive,
    );
    both_refused(
        &dev,
        &out,
        &[
            "--agent",
            "fixer",
            "--incident",
            "INC-1",
            "--scope",
            "deploy:restart",
        ],
        sensitive,
    );
    // And a base identity no service profile holds.
    both_refused(
        &dev,
        &out,
        &["--spiffe-id", "spiffe://example.org/service/web"],
        "no service profile \"web\"",
    );

    assert_eq!(issued(&dev), before, "a refused mint issued something");
}

#[test]
fn an_operator_mints_what_policy_gives_with_its_claims_and_no_more() {
    if !common::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (dev, grant) = setup(dir.path());
    // The service identity a service profile holds (README: `--band base --spiffe-id`).
    let service = dev.json(&[
        "x509",
        "mint",
        "--band",
        "base",
        "--spiffe-id",
        "spiffe://example.org/service/logs-api",
    ]);
    assert_eq!(
        service["spiffe_id"],
        "spiffe://example.org/service/logs-api"
    );
    // An investigative identity carries what policy derives: the sensitive scope is
    // dropped, as the Workload API drops it.
    let claims = |token: &str| jwt_claims(token)[writ_verifier::claims::JWT_CLAIMS_KEY].clone();
    let token = dev.ok(&["jwt", "mint", "--spiffe-id", INV, "--audience", "ops-api"]);
    assert_eq!(claims(&token)["scopes"], serde_json::json!(["logs:read"]));
    // A remediation identity carries the grant's plan digest and approver, not the
    // operator's say.
    let token = dev.ok(&[
        "jwt",
        "mint",
        "--agent",
        "fixer",
        "--incident",
        "INC-1",
        "--grant",
        &grant,
        "--audience",
        "ops-api",
        "--scope",
        "deploy:restart",
    ]);
    let shown = dev.json(&["grant", "show", &grant]);
    let c = claims(&token);
    assert_eq!(c["grant"], grant.as_str());
    assert_eq!(c["plan_digest"], shown["plan_digest"]);
    assert_eq!(c["approvers"], serde_json::json!(["alice"]));
    assert_eq!(c["scopes"], serde_json::json!(["deploy:restart"]));
}
