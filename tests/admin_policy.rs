//! Profiles and incidents through the real `writ` binary: `writ dev` on a temp data
//! directory, the CLI against its admin socket (docs/architecture.md, "Policy objects" and
//! "The CLI").
//!
//! Every refusal must be one `error:` line on stderr, a non-zero exit, and no change to
//! what the server holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

mod common;

use common::bin::{As, DevProcess, WRIT, json_lines, open_args};

/// A running `writ dev`, killed when dropped.
struct Dev(DevProcess);

impl std::ops::Deref for Dev {
    type Target = DevProcess;
    fn deref(&self) -> &DevProcess {
        &self.0
    }
}

impl Dev {
    /// Starts `writ dev` on `data_dir` and waits until its admin socket answers.
    fn start(data_dir: &Path) -> Dev {
        Dev::start_with(data_dir, &[])
    }

    fn start_with(data_dir: &Path, extra: &[&str]) -> Dev {
        Dev(DevProcess::start(data_dir, extra))
    }

    /// Runs `writ ARGS`, which must be refused with exactly one `error:` line mentioning
    /// `reason`, and print nothing on stdout.
    fn refused(&self, args: &[&str], reason: &str) {
        self.refusal(As::Me, args, None, reason);
    }

    fn profiles(&self) -> Vec<Value> {
        json_lines(&self.ok(&["profile", "list", "--json"]))
    }

    fn incidents(&self) -> Vec<Value> {
        json_lines(&self.ok(&["incident", "list", "--json"]))
    }

    /// Every profile and incident, to compare before and after a refused command.
    fn state(&self) -> (Vec<Value>, Vec<Value>) {
        (self.profiles(), self.incidents())
    }

    /// Stops the server the hard way: whatever it acknowledged must already be durable.
    fn kill(mut self) -> PathBuf {
        self.0.kill();
        self.0.data_dir.clone()
    }
}

fn names(values: &[Value], key: &str) -> Vec<String> {
    values
        .iter()
        .map(|v| v[key].as_str().expect("string field").to_owned())
        .collect()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// How the server records this process's user as opener and closer.
fn me() -> String {
    format!(
        "uid:{}",
        std::fs::metadata("/proc/self").expect("/proc/self").uid()
    )
}

fn temp_dev() -> (tempfile::TempDir, Dev) {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(&dir.path().join("data"));
    (dir, dev)
}

#[test]
fn profile_create_list_show_delete() {
    let (_dir, dev) = temp_dev();
    assert!(dev.profiles().is_empty());
    let before = now();

    let triage = dev.json(&[
        "profile",
        "create",
        "triage",
        "--selector",
        "unix:uid:1001",
        "--selector",
        "unix:path:/usr/bin/sre-agent",
        "--scope",
        "logs:read",
        "--scope",
        "metrics:read",
    ]);
    assert_eq!(triage["name"], "triage");
    assert_eq!(triage["service"], false);
    assert_eq!(
        triage["selectors"],
        serde_json::json!(["unix:uid:1001", "unix:path:/usr/bin/sre-agent"])
    );
    // Advisory-only unless asked otherwise.
    assert_eq!(triage["bands"], serde_json::json!(["investigative"]));
    assert_eq!(
        triage["scopes"],
        serde_json::json!(["logs:read", "metrics:read"])
    );
    let created = triage["created_at"].as_i64().unwrap();
    assert!((before - 1..=now() + 1).contains(&created), "{created}");

    let fixer = dev.json(&[
        "profile",
        "create",
        "fixer",
        "--selector",
        "unix:uid:1002",
        "--band",
        "investigative,remediation",
    ]);
    assert_eq!(
        fixer["bands"],
        serde_json::json!(["investigative", "remediation"])
    );

    let service = dev.json(&[
        "profile",
        "create",
        "logs-api",
        "--selector",
        "unix:user:logs",
        "--service",
    ]);
    assert_eq!(service["service"], true);
    assert_eq!(service["bands"], serde_json::json!(["base"]));

    let listed = dev.profiles();
    assert_eq!(names(&listed, "name"), ["fixer", "logs-api", "triage"]);
    assert_eq!(listed[2], triage);
    assert_eq!(dev.json(&["profile", "show", "triage"]), triage);

    let human = dev.ok(&["profile", "show", "triage"]);
    for field in [
        "triage",
        "agent",
        "investigative",
        "unix:uid:1001",
        "unix:path:/usr/bin/sre-agent",
        "logs:read",
        "metrics:read",
        "created:",
    ] {
        assert!(human.contains(field), "{field} missing from:\n{human}");
    }
    let table = dev.ok(&["profile", "list"]);
    assert_eq!(table.lines().count(), 4, "header and three rows:\n{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("logs-api") && l.contains("service"))
    );

    assert_eq!(dev.json(&["profile", "delete", "fixer"]), fixer);
    assert_eq!(names(&dev.profiles(), "name"), ["logs-api", "triage"]);
    let state = dev.state();
    dev.refused(&["profile", "show", "fixer"], "unknown profile");
    dev.refused(&["profile", "delete", "fixer"], "unknown profile");
    assert_eq!(dev.state(), state);
}

#[test]
fn incident_open_list_show_close() {
    let (_dir, dev) = temp_dev();
    dev.ok(&["profile", "create", "triage", "--selector", "unix:uid:1001"]);
    let before = now();

    let human = dev.ok(&[
        "incident",
        "open",
        "INC-1",
        "--title",
        "db down",
        "--severity",
        "sev2",
        "--assign",
        "triage",
        "--scope",
        "logs:read",
    ]);
    assert!(
        human.contains("INC-1") && human.contains("db down"),
        "{human}"
    );
    assert!(
        human.lines().any(|l| l.starts_with("hint:")),
        "a hint line expected:\n{human}"
    );

    let inc1 = dev.json(&["incident", "show", "INC-1"]);
    assert_eq!(inc1["id"], "INC-1");
    assert_eq!(inc1["title"], "db down");
    assert_eq!(inc1["severity"], "sev2");
    assert_eq!(inc1["state"], "open");
    assert_eq!(inc1["assigned"], serde_json::json!(["triage"]));
    assert_eq!(inc1["scopes"], serde_json::json!(["logs:read"]));
    assert_eq!(inc1["opened_by"], me());
    assert_eq!(inc1["max_lifetime_seconds"], 4 * 3600);
    assert_eq!(inc1["closed_by"], Value::Null);
    assert_eq!(inc1["closed_at"], Value::Null);
    let opened = inc1["opened_at"].as_i64().unwrap();
    assert!((before - 1..=now() + 1).contains(&opened), "{opened}");

    let inc2 = dev.json(&[
        "incident",
        "open",
        "INC-2",
        "--title",
        "disk full",
        "--severity",
        "sev4",
        "--assign",
        "triage",
        "--assign",
        "other",
        "--max-lifetime",
        "90m",
    ]);
    assert_eq!(inc2["state"], "open");
    assert_eq!(inc2["assigned"], serde_json::json!(["other", "triage"]));
    assert_eq!(inc2["scopes"], serde_json::json!([]));
    assert_eq!(inc2["max_lifetime_seconds"], 90 * 60);

    let listed = dev.incidents();
    assert_eq!(names(&listed, "id"), ["INC-1", "INC-2"]);
    assert_eq!(listed[0], inc1);
    assert_eq!(listed[1], inc2);
    let table = dev.ok(&["incident", "list"]);
    assert_eq!(table.lines().count(), 3, "header and two rows:\n{table}");

    let closed = dev.json(&["incident", "close", "INC-1"]);
    assert_eq!(closed["id"], "INC-1");
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["closed_by"], me());
    assert!(closed["closed_at"].as_i64().unwrap() >= opened);
    assert_eq!(closed["opened_at"], inc1["opened_at"]);
    assert_eq!(dev.json(&["incident", "show", "INC-1"]), closed);
    assert_eq!(dev.incidents()[1], inc2, "closing INC-1 leaves INC-2 alone");

    let human = dev.ok(&["incident", "show", "INC-1"]);
    for field in [
        "INC-1",
        "db down",
        "sev2",
        "closed",
        "triage",
        "logs:read",
        &me(),
        "4h",
    ] {
        assert!(human.contains(field), "{field} missing from:\n{human}");
    }
}

#[test]
fn duplicates_unknowns_and_closed_incidents_are_refused() {
    let (_dir, dev) = temp_dev();
    dev.ok(&["profile", "create", "triage", "--selector", "unix:uid:1001"]);
    dev.ok(&[
        "incident",
        "open",
        "INC-1",
        "--title",
        "t",
        "--severity",
        "sev1",
        "--assign",
        "triage",
    ]);
    let state = dev.state();

    dev.refused(
        &["profile", "create", "triage", "--selector", "unix:uid:2002"],
        "already exists",
    );
    dev.refused(
        &[
            "incident",
            "open",
            "INC-1",
            "--title",
            "again",
            "--severity",
            "sev3",
            "--assign",
            "triage",
        ],
        "already exists",
    );
    dev.refused(&["incident", "close", "NOPE-1"], "unknown incident");
    dev.refused(&["incident", "show", "NOPE-1"], "unknown incident");
    dev.refused(&["profile", "show", "nobody"], "unknown profile");
    dev.refused(&["profile", "delete", "nobody"], "unknown profile");
    assert_eq!(dev.state(), state);

    let closed = dev.json(&["incident", "close", "INC-1"]);
    let state = dev.state();
    dev.refused(&["incident", "close", "INC-1"], "already closed");
    // Ids are never reused: a closed incident is not reopened under the same id.
    dev.refused(
        &[
            "incident",
            "open",
            "INC-1",
            "--title",
            "again",
            "--severity",
            "sev3",
            "--assign",
            "triage",
        ],
        "already exists",
    );
    assert_eq!(dev.state(), state);
    assert_eq!(dev.json(&["incident", "show", "INC-1"]), closed);
}

/// `writ profile create NAME FLAGS`.
fn create<'a>(name: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    [&["profile", "create", name][..], flags].concat()
}

/// `writ incident open ID --title "db down" FLAGS`.
fn open<'a>(id: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    [&["incident", "open", id, "--title", "db down"][..], flags].concat()
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (_dir, dev) = temp_dev();
    let state = dev.state();

    for selector in [
        "uid:1001",
        "unix:uid:abc",
        "unix:uid:-1",
        "unix:path:relative/bin",
        "unix:sha256:ABC",
        "k8s:ns:Default",
        "k8s:cluster:east",
    ] {
        dev.refused(&create("triage", &["--selector", selector]), "selector");
    }
    // One bad selector among good ones still refuses the whole profile.
    dev.refused(
        &create(
            "triage",
            &["--selector", "unix:uid:1001", "--selector", "unix:gid:x"],
        ),
        "selector",
    );
    dev.refused(&create("triage", &[]), "selector");
    dev.refused(
        &create("triage", &["--selector", "unix:uid:1", "--band", "admin"]),
        "band",
    );
    dev.refused(
        &create("triage", &["--selector", "unix:uid:1", "--band", "base"]),
        "band",
    );
    dev.refused(
        &create(
            "logs-api",
            &[
                "--selector",
                "unix:uid:1",
                "--service",
                "--band",
                "remediation",
            ],
        ),
        "band",
    );
    dev.refused(
        &create("triage", &["--selector", "unix:uid:1", "--scope", "LOGS"]),
        "scope",
    );
    dev.refused(&create("a/b", &["--selector", "unix:uid:1"]), "name");
    assert_eq!(dev.state(), state);

    dev.ok(&["profile", "create", "triage", "--selector", "unix:uid:1001"]);
    let state = dev.state();
    dev.refused(
        &open("INC-1", &["--severity", "sev9", "--assign", "triage"]),
        "severity",
    );
    dev.refused(
        &open("INC-1", &["--severity", "SEV1", "--assign", "triage"]),
        "severity",
    );
    dev.refused(&open("INC-1", &["--severity", "sev1"]), "--assign");
    dev.refused(
        &open("INC-1", &["--severity", "sev1", "--assign", "bad/agent"]),
        "name",
    );
    dev.refused(
        &open(
            "INC-1",
            &[
                "--severity",
                "sev1",
                "--assign",
                "triage",
                "--scope",
                "logs",
            ],
        ),
        "scope",
    );
    dev.refused(
        &open("../INC-1", &["--severity", "sev1", "--assign", "triage"]),
        "name",
    );
    dev.refused(
        &[
            "incident",
            "open",
            "INC-1",
            "--title",
            "",
            "--severity",
            "sev1",
            "--assign",
            "triage",
        ],
        "title",
    );
    dev.refused(
        &open(
            "INC-1",
            &[
                "--severity",
                "sev1",
                "--assign",
                "triage",
                "--max-lifetime",
                "400d",
            ],
        ),
        "lifetime",
    );
    assert_eq!(dev.state(), state);
}

#[test]
fn profiles_and_closed_incidents_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(&dir.path().join("data"));
    let profile = dev.json(&["profile", "create", "triage", "--selector", "unix:uid:1001"]);
    dev.ok(&[
        "incident",
        "open",
        "INC-1",
        "--title",
        "t",
        "--severity",
        "sev2",
        "--assign",
        "triage",
    ]);
    let closed = dev.json(&["incident", "close", "INC-1"]);
    let still_open = dev.json(&open_args("INC-2", "triage"));
    let data_dir = dev.kill();

    let dev = Dev::start(&data_dir);
    assert_eq!(dev.profiles(), [profile]);
    assert_eq!(dev.incidents(), [closed.clone(), still_open]);
    assert_eq!(dev.json(&["incident", "show", "INC-1"])["state"], "closed");
    let state = dev.state();
    dev.refused(&["incident", "close", "INC-1"], "already closed");
    dev.refused(
        &[
            "incident",
            "open",
            "INC-1",
            "--title",
            "t",
            "--severity",
            "sev2",
            "--assign",
            "triage",
        ],
        "already exists",
    );
    assert_eq!(dev.state(), state);
}

/// Runs `writ ARGS` as another uid against `dev`'s admin socket.
fn run_as(uid: u32, dev: &Dev, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(WRIT)
        .args(args)
        .env("WRIT_ADMIN_SOCKET", dev.socket())
        .output()
        .expect("setpriv runs")
}

#[test]
fn configured_operators_are_named_and_strangers_refused() {
    if !common::require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dev = Dev::start_with(
        &dir.path().join("data"),
        &["--operator", "alice=65534:incident-commander"],
    );
    dev.ok(&["profile", "create", "triage", "--selector", "unix:uid:1"]);
    let opened = run_as(65534, &dev, &open_args("INC-1", "triage"));
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let shown = dev.json(&["incident", "show", "INC-1"]);
    assert_eq!(shown["opened_by"], "alice", "{shown}");
    let stranger = run_as(65533, &dev, &["incident", "close", "INC-1"]);
    assert!(!stranger.status.success());
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(stderr.contains("not a writ operator"), "{stderr}");
    assert_eq!(dev.json(&["incident", "show", "INC-1"])["state"], "open");

    let operators = json_lines(&dev.ok(&["operator", "list", "--json"]));
    let alice = operators
        .iter()
        .find(|o| o["name"] == "alice")
        .expect("alice listed");
    assert_eq!(alice["uid"], 65534);
    assert_eq!(alice["roles"], serde_json::json!(["incident-commander"]));
    assert!(
        operators
            .iter()
            .any(|o| o["uid"] == 0 && o["implicit"] == true)
    );
    assert_eq!(dev.json(&["operator", "show", "alice"])["uid"], 65534);
    // Alice may not approve (no approver role); strangers may not even list.
    let refused = run_as(
        65534,
        &dev,
        &["profile", "create", "x", "--selector", "unix:uid:5"],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("needs the role admin"));
    assert!(!run_as(65533, &dev, &["operator", "list"]).status.success());
}
