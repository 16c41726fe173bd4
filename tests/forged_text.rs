//! Text that forges what approvers read (issue 10, finding 5), against the real `writ`
//! binary and a real `writ dev`:
//! * free text with a newline, a carriage return, an escape sequence or a bidi override is
//!   refused at the API — from an operator's CLI and from an agent's workload on the
//!   agent socket — with one error line; nothing is stored and only the refusal is
//!   audited;
//! * text that reached the store anyway (written behind writ's back) is printed escaped by
//!   every human-facing printer: `grant show | list | approve`, `incident show | list |
//!   timeline`, `audit tail`; a plan is fenced with its digest and cannot close the fence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::bin::{DevProcess, json_lines, restart_args};
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use writ::audit::{AuditLog, Kind, Record};
use writ::policy::{Grant, GrantState, Incident, IncidentState, Severity};

/// The uid the agent's workload runs as (no operator has it).
const WORKLOAD: u32 = 65530;

/// A temp directory every uid can enter, with `writ dev` in `data/` and readable files
/// in `files/` (where the CLI runs).
fn start(root: &Path) -> DevProcess {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let files = root.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o755)).unwrap();
    DevProcess::start(&root.join("data"), &[]).in_dir(&files)
}

fn file(root: &Path, name: &str, content: &str) -> String {
    let path = root.join("files").join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn audit(dev: &DevProcess) -> Vec<Value> {
    json_lines(&dev.ok(&["audit", "export"]))
}

/// A profile `fixer` for the workload's uid that may hold remediation identities, and an
/// open sev3 incident INC-1 assigned to it.
fn fixer_on_incident(dev: &DevProcess) {
    dev.ok(&[
        "profile",
        "create",
        "fixer",
        "--selector",
        &format!("unix:uid:{WORKLOAD}"),
        "--band",
        "investigative,remediation",
        "--scope",
        "deploy:restart",
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
}

/// Hostile one-line fields: each would print a line of its own, rewrite the line it is
/// on, or read in another order than its bytes.
const HOSTILE: [&str; 6] = [
    "restart checkout\napproved:   bob at 2026-01-01T00:00:00Z",
    "restart\r\nscopes:      iam:admin",
    "restart\rall clear",
    "restart \u{1b}[2K\u{1b}[1Aapproved",
    "restart gnp.\u{202e}exe",
    "restart\u{2028}approved:   bob",
];

#[test]
fn forged_text_is_refused_at_the_api_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dev = start(root.path());
    fixer_on_incident(&dev);
    let plan = file(
        root.path(),
        "plan.txt",
        "kubectl rollout restart deploy/x\n",
    );
    // A well-formed request goes through, and is the one grant later denied with a bad
    // reason.
    let good = dev.ok(&restart_args("INC-1", &plan)).trim().to_owned();
    let grants = dev.ok(&["grant", "list", "--json"]);
    let incidents = dev.ok(&["incident", "list", "--json"]);
    let playbooks = dev.ok(&["playbook", "list", "--json"]);

    for text in HOSTILE {
        let base = [
            "grant",
            "request",
            "--incident",
            "INC-1",
            "--agent",
            "fixer",
            "--plan",
            &plan,
        ];
        let cases: [(Vec<&str>, &str); 7] = [
            ([&base[..], &["--action", text]].concat(), "action"),
            (
                [&base[..], &["--action", "restart", "--target", text]].concat(),
                "target",
            ),
            (
                [&base[..], &["--action", "restart", "--evidence", text]].concat(),
                "evidence",
            ),
            (
                vec![
                    "incident",
                    "open",
                    "INC-2",
                    "--title",
                    text,
                    "--severity",
                    "sev3",
                    "--assign",
                    "fixer",
                ],
                "title",
            ),
            (vec!["grant", "deny", &good, "--reason", text], "reason"),
            (
                vec![
                    "playbook",
                    "create",
                    "isolate",
                    "--action",
                    "isolate host",
                    "--target",
                    "host/web-1",
                    "--description",
                    text,
                ],
                "description",
            ),
            (
                vec![
                    "playbook", "create", "isolate", "--action", "isolate", "--target", text,
                ],
                "target",
            ),
        ];
        for (args, field) in cases {
            let before = audit(&dev).len();
            let out = dev.run(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{args:?} was not refused: {err}"
            );
            assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
            assert_eq!(err.lines().count(), 1, "one error line: {err}");
            assert!(
                err.starts_with("error: ")
                    && err.contains(&format!("invalid {field}"))
                    && err.contains("one line of visible text"),
                "{args:?}: {err}"
            );
            // Nothing stored, nothing audited but the refusal.
            assert_eq!(dev.ok(&["grant", "list", "--json"]), grants, "{args:?}");
            assert_eq!(dev.ok(&["incident", "list", "--json"]), incidents);
            assert_eq!(dev.ok(&["playbook", "list", "--json"]), playbooks);
            let after = audit(&dev);
            assert_eq!(after.len(), before + 1, "{args:?}");
            assert_eq!(after[before]["kind"], "refusal", "{}", after[before]);
            assert_eq!(
                after[before]["detail"]["code"], "InvalidArgument",
                "{}",
                after[before]
            );
        }
    }
}

/// Set in the child: a JSON array of the agent socket and the request's action, target
/// and evidence (empty: none).
const CHILD_ENV: &str = "WRIT_FORGED_TEXT_CHILD";

/// The workload: asks for a grant on `writ.agent.v1` as itself, prints the gRPC code and
/// message (or `OK id`) on one line of JSON.
#[tokio::test]
#[ignore = "runs only as the workload child of a_workload_cannot_forge_text_through_the_agent_socket"]
async fn workload_child() {
    use writ::proto::agent::{RequestGrantRequest, agent_api_client::AgentApiClient};
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<String> = serde_json::from_str(&spec).unwrap();
    let [socket, action, target, evidence] = &parts[..] else {
        panic!("bad child spec {spec:?}");
    };
    let channel = writ::uds::channel(Path::new(socket)).await.unwrap();
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned()).into_iter().collect();
    let mut request = tonic::Request::new(RequestGrantRequest {
        incident: "INC-1".into(),
        action: action.clone(),
        targets: nonempty(target),
        evidence: nonempty(evidence),
        plan: "kubectl rollout restart deploy/x\n".into(),
        scopes: Vec::new(),
        window_seconds: None,
    });
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let answer = match AgentApiClient::new(channel).request_grant(request).await {
        Ok(r) => serde_json::json!({ "ok": r.into_inner().grant_id }),
        Err(status) => serde_json::json!({
            "code": format!("{:?}", status.code()),
            "message": status.message(),
        }),
    };
    println!("CHILD {answer}");
}

/// Runs [`workload_child`] as the workload's uid; returns its answer.
fn as_workload(socket: &Path, action: &str, target: &str, evidence: &str) -> Value {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={WORKLOAD}"),
            &format!("--regid={WORKLOAD}"),
            "--clear-groups",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "workload_child",
            "--include-ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env(
            CHILD_ENV,
            serde_json::json!([socket, action, target, evidence]).to_string(),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD ").map(|(_, answer)| answer))
        .unwrap_or_else(|| {
            panic!(
                "the workload child did not answer: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_workload_cannot_forge_text_through_the_agent_socket() {
    if !common::require_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dev = start(root.path());
    fixer_on_incident(&dev);
    let socket = dev.data_dir.join("workload.sock");
    // The workload is entitled: a plain request is filed.
    let ok = as_workload(&socket, "restart checkout", "deploy/x", "");
    assert!(
        ok["ok"].as_str().is_some_and(|id| id.starts_with("g-")),
        "{ok}"
    );
    let grants = dev.ok(&["grant", "list", "--json"]);
    for text in HOSTILE {
        for (action, target, evidence, field) in [
            (text, "deploy/x", "", "action"),
            ("restart", text, "", "target"),
            ("restart", "deploy/x", text, "evidence"),
        ] {
            let before = audit(&dev).len();
            let answer = as_workload(&socket, action, target, evidence);
            assert_eq!(
                answer["code"], "InvalidArgument",
                "{field} {text:?}: {answer}"
            );
            let message = answer["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("invalid {field}"))
                    && message.contains("one line of visible text"),
                "{message}"
            );
            assert_eq!(
                dev.ok(&["grant", "list", "--json"]),
                grants,
                "{field} {text:?}"
            );
            // The server refused it and recorded that, and nothing else.
            let after = audit(&dev);
            assert_eq!(after.len(), before + 1, "{field} {text:?}");
            assert_eq!(after[before]["action"], "grant.request.refused");
        }
    }
}

/// A marker in every forged line, to find where each one printed.
const MARK: &str = "FORGED";

/// Asserts that no forged text printed a line of its own: every line holding [`MARK`] is
/// either an escaped field (its forged part behind an escape on the same line) or a plan
/// line inside the fence; and nothing hidden reached the terminal.
fn assert_contained(label: &str, out: &str) {
    assert!(
        out.contains(MARK),
        "{label}: the forged text is not shown at all:\n{out}"
    );
    for c in out.chars() {
        assert!(
            c == '\n' || !writ::policy::text::is_hidden(c),
            "{label}: printed U+{:04X} raw:\n{out}",
            c as u32
        );
    }
    for line in out.lines() {
        if let Some(at) = line.find(MARK) {
            // An escape (`\n`, `\r`, `\u{202e}`) before the mark: it is part of a field.
            let escaped = line[..at].contains('\\');
            assert!(
                escaped || line.starts_with("  | ") || line.starts_with("    | "),
                "{label}: a forged line printed on its own: {line:?}\n{out}"
            );
        }
    }
}

#[test]
fn printers_escape_text_that_reached_the_store_anyway() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let dev = start(root.path());
    fixer_on_incident(&dev);
    let origin = dev.json(&["audit", "checkpoint"])["origin"]
        .as_str()
        .unwrap()
        .to_owned();
    dev.terminate();

    // Behind writ's back: an incident, a grant and audit records holding text the API now
    // refuses, as an older writ or a restored backup could have stored them.
    let now = common::system_now();
    let incident = Incident {
        tenant: "default".into(),
        id: "INC-9".into(),
        title: format!("db down\nstate:         closed {MARK}"),
        severity: Severity::Sev4,
        assigned: BTreeSet::from(["fixer".to_string()]),
        scopes: BTreeSet::new(),
        state: IncidentState::Open,
        opened_by: "uid:0".into(),
        opened_at: now,
        closed_by: None,
        closed_at: None,
        max_lifetime_secs: 3600,
        source: None,
    };
    let plan = format!(
        "kubectl rollout restart deploy/x\n  end of plan sha256 {}\nidentity:    spiffe://evil {MARK}\n\u{1b}[2K\u{202e}{MARK}\n",
        "0".repeat(64)
    );
    let grant = Grant {
        tenant: "default".into(),
        id: "g-00000000f0f0".into(),
        incident: "INC-9".into(),
        agent: "fixer".into(),
        action: format!("restart checkout\napproved:   bob at 2026-01-01T00:00:00Z {MARK}"),
        targets: BTreeSet::from([format!("deploy/x\nscopes:      iam:admin {MARK}")]),
        evidence: vec![format!(
            "https://logs/q\r\n\u{1b}[31mplan (sha256 00, 1 line(s)): {MARK}"
        )],
        plan_digest: writ::policy::grant::plan_digest(&plan),
        plan,
        scopes: BTreeSet::new(),
        window_secs: 600,
        requested_by: format!("uid:0\u{202e}{MARK}"),
        requested_by_uid: None,
        requested_at: now,
        approvals: Vec::new(),
        state: GrantState::Pending,
        activated_at: None,
        expires_at: None,
        ended: None,
        playbook: None,
    };
    {
        let store = writ::store::Store::open(&data.join("writ.redb")).unwrap();
        store
            .put_policy_changes(
                std::slice::from_ref(&incident),
                std::slice::from_ref(&grant),
            )
            .unwrap();
    }
    {
        let log = AuditLog::open(&data.join("audit.redb"), &data.join("keys"), &origin).unwrap();
        log.append(
            &Record::new(now, Kind::AdminChange, "grant.request", "uid:0")
                .incident(Some("INC-9"))
                .detail(serde_json::json!({ "grants": [grant] })),
        )
        .unwrap();
        let spiffe_id = "spiffe://investigate.example.org/agent/fixer/incident/INC-9";
        log.append(
            &Record::new(now, Kind::Activity, "activity.prompt", spiffe_id)
                .incident(Some("INC-9"))
                .spiffe_id(spiffe_id.to_string())
                .detail(serde_json::json!({
                    "digest": "a".repeat(64),
                    "summary": format!("read the logs\n     7  approved bob {MARK}"),
                    "node": "local",
                })),
        )
        .unwrap();
    }

    let dev = DevProcess::start(&data, &[]).in_dir(&root.path().join("files"));
    // The stored text is what the JSON output carries, byte for byte (serde escapes it).
    assert_eq!(
        dev.json(&["grant", "show", &grant.id])["action"],
        grant.action
    );

    let show = dev.ok(&["grant", "show", &grant.id]);
    assert_contained("grant show", &show);
    assert!(
        show.contains("action:      restart checkout\\napproved:   bob"),
        "{show}"
    );
    // The plan: a header and a closing line with its digest; every plan line fenced; the
    // plan's own "end of plan" line does not close it.
    let lines: Vec<&str> = show.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with(&format!("plan (sha256 {}", grant.plan_digest)))
        .expect("plan header");
    let closing = format!("  end of plan sha256 {}", grant.plan_digest);
    assert_eq!(lines.last(), Some(&closing.as_str()), "{show}");
    assert_eq!(lines.len() - header - 2, 4, "four plan lines: {show}");
    for line in &lines[header + 1..lines.len() - 1] {
        assert!(line.starts_with("  | "), "unfenced plan line {line:?}");
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("plan (sha256"))
            .count(),
        1,
        "{show}"
    );

    assert_contained("grant list", &dev.ok(&["grant", "list"]));
    assert_contained("incident show", &dev.ok(&["incident", "show", "INC-9"]));
    assert_contained("incident list", &dev.ok(&["incident", "list"]));
    assert_contained(
        "incident timeline",
        &dev.ok(&["incident", "timeline", "INC-9"]),
    );
    let tail = dev.ok(&["audit", "tail", "-n", "2"]);
    assert_contained("audit tail", &tail);
    assert_eq!(tail.lines().count(), 2, "one line per record: {tail}");

    // `grant approve` echoes what was approved on stderr, escaped the same way.
    let approved = dev.run(&["grant", "approve", &grant.id]);
    let echo = String::from_utf8_lossy(&approved.stderr);
    assert!(approved.status.success(), "{echo}");
    assert_contained("grant approve", &echo);
}
