//! An agent never approves its own grant through an operator who shares its uid (issue 10,
//! finding 6), through the real `writ dev`, the real agent socket and the CLI run under
//! other uids (`setpriv`):
//!
//! * a workload attested as uid X asks for a grant (the stock `request-grant` example);
//!   the operator with uid X is refused when approving it; another approver counts;
//! * profiles that select an operator's uid, by number or by user name, are refused;
//! * `writ dev --demo-single-user` allows both, and says so loudly when it starts.
//!
//! Needs root (to run processes as other uids) and the examples (`cargo build --examples`;
//! scripts/test builds them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

use common::bin::{As, DevProcess, WRIT, json_lines};

const ALICE: u32 = 65534; // approver; also the uid the agent's workload runs as
const BOB: u32 = 65533; // approver
/// The agent's group: its profile selects this, not a uid, so that writ accepts it.
const AGENT_GID: u32 = 65500;

const PLAN: &str = "kubectl -n shop rollout restart deploy/checkout\n";

fn example(name: &str) -> PathBuf {
    let bin = Path::new(WRIT)
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the examples first (`cargo build --examples`; scripts/test does)",
        bin.display()
    );
    bin
}

/// A temp directory every uid can enter, with a plan file every uid can read.
fn shared_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let plan = dir.path().join("plan.txt");
    std::fs::write(&plan, PLAN).unwrap();
    std::fs::set_permissions(&plan, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, plan)
}

fn grants(dev: &DevProcess) -> Vec<Value> {
    json_lines(&dev.ok(&["grant", "list", "--json"]))
}

#[test]
fn an_approver_running_as_the_requesting_workloads_uid_is_refused() {
    if !common::require_root() {
        return;
    }
    let request_grant = example("request-grant");
    let (dir, plan) = shared_dir();
    let dev = DevProcess::start(
        &dir.path().join("data"),
        &[
            "--operator",
            &format!("alice={ALICE}:approver"),
            "--operator",
            &format!("bob={BOB}:approver"),
        ],
    )
    .in_dir(dir.path());
    dev.ok(&[
        "profile",
        "create",
        "fixer",
        "--selector",
        &format!("unix:gid:{AGENT_GID}"),
        "--band",
        "investigative,remediation",
    ]);
    dev.ok(&[
        "incident",
        "open",
        "INC-1",
        "--title",
        "checkout 500s",
        "--severity",
        "sev3",
        "--assign",
        "fixer",
    ]);

    // The agent's workload runs as alice's uid (in the agent's group) and asks, on the
    // agent socket, under its own attested identity.
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={ALICE}"),
            &format!("--regid={AGENT_GID}"),
            "--clear-groups",
        ])
        .arg(&request_grant)
        .args(["--incident", "INC-1", "--action", "restart checkout"])
        .arg("--plan")
        .arg(&plan)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", dev.data_dir.join("workload.sock").display()),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "request-grant: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        dev.json(&["grant", "show", &id])["requested_by"],
        "spiffe://investigate.example.org/agent/fixer/incident/INC-1"
    );

    // Alice is that uid: her approval would be the agent approving itself.
    let before = grants(&dev);
    dev.refusal(
        As::Uid(ALICE),
        &["grant", "approve", &id],
        Some(1),
        &format!("alice runs as uid {ALICE}, which requested this grant"),
    );
    assert_eq!(grants(&dev), before, "the refused approval changed nothing");
    // Bob is someone else: his approval counts (sev3: one is the quorum).
    let approved = dev.json_as(As::Uid(BOB), &["grant", "approve", &id]);
    assert_eq!(approved["state"], "active");
    let approvers: Vec<&str> = approved["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["by"].as_str().unwrap())
        .collect();
    assert_eq!(approvers, ["bob"]);
}

#[test]
fn profiles_that_select_an_operators_uid_are_refused() {
    let (dir, _) = shared_dir();
    let dev = DevProcess::start(
        &dir.path().join("data"),
        &["--operator", "alice=65534:approver"],
    );
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    for (selector, uid) in [
        ("unix:uid:65534".to_owned(), 65534),
        // nobody is uid 65534 in /etc/passwd: the same person by name.
        ("unix:user:nobody".to_owned(), 65534),
        ("unix:uid:0".to_owned(), 0),
        (format!("unix:uid:{me}"), me),
    ] {
        dev.refusal(
            As::Me,
            &["profile", "create", "fixer", "--selector", &selector],
            Some(1),
            &format!("profile \"fixer\" selects {selector}, which is uid {uid}, an operator's"),
        );
    }
    assert!(dev.ok(&["profile", "list", "--json"]).is_empty());
    dev.ok(&["profile", "create", "fixer", "--selector", "unix:uid:4242"]);
}

#[test]
fn the_one_user_demo_is_an_explicit_loud_switch() {
    let (dir, _) = shared_dir();
    let dev = DevProcess::start(&dir.path().join("data"), &["--demo-single-user"]);
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    dev.ok(&[
        "profile",
        "create",
        "fixer",
        "--selector",
        &format!("unix:uid:{me}"),
    ]);
    let log = dev.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.starts_with("WARNING: ")).collect();
    assert!(
        warnings
            .first()
            .is_some_and(|w| w.contains("--demo-single-user")),
        "{log}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("never run writ like this")),
        "{log}"
    );
    // `writ server` has no such switch, and no config file can turn it on.
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "[remediation]\ndemo_single_user = true\n").unwrap();
    let out = Command::new(WRIT)
        .args(["dev", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field `demo_single_user`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
