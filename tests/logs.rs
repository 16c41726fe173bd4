//! Logs (issue 17, item 5): a whole scenario, every process logging JSON at `debug` for
//! every module (dependencies included), and not one key, join token or JWT in what they
//! wrote. `writ dev` serves the node API too, so a real `writ agent` joins it with the
//! join token (its node key on disk); stock SPIFFE clients fetch X.509- and JWT-SVIDs from
//! both sockets; an operator mints both kinds by hand, a grant is requested and approved,
//! and the incident closes. The CLI's own logs, at the same level, are searched too.
//!
//! Also: the logs are there (JSON, one object per line) and say who did what: an admin
//! call's line carries the operator in its span, a Workload API call's the caller's uid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::bin::{As, DevProcess, RESTART_PLAN, open_args, restart_args};
use common::procs::AgentProc;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Every process of the scenario logs like this: JSON, everything at debug.
const LOGS: [&str; 4] = ["--log-format", "json", "--log-level", "debug"];

/// How a secret could show in a log line, for the bytes of a PKCS#8 key: its base64 (as
/// in a PEM, whole and line by line), and its private scalar in hex and as a `Debug`
/// byte list.
fn key_forms(der: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut forms: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|line| String::from_utf8(line.to_vec()).unwrap())
        .filter(|line| line.len() >= 16)
        .collect();
    forms.push(b64);
    forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(der));
    // The scalar: an OCTET STRING of 32 bytes (04 20) inside the ECPrivateKey.
    let at = der
        .windows(2)
        .skip(8)
        .position(|w| w == [0x04, 0x20])
        .map(|i| i + 8 + 2)
        .unwrap_or_else(|| panic!("no P-256 scalar in a {}-byte key", der.len()));
    let scalar = &der[at..at + 32];
    forms.push(scalar.iter().map(|b| format!("{b:02x}")).collect());
    let listed = format!("{:?}", &scalar[..12]);
    forms.push(listed.trim_matches(['[', ']']).to_owned());
    forms
}

/// A key file as it is on disk: PEM (its body lines), a signed-note key (its text and
/// its base64 key part; the origin name before it is public) or PKCS#8 DER.
fn file_forms(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => text
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_owned)
            .collect(),
        Ok(text) => {
            let mut forms = vec![text.trim().to_owned()];
            forms.extend(
                text.trim()
                    .split('+')
                    .filter(|p| p.len() >= 40)
                    .map(str::to_owned),
            );
            forms
        }
        Err(_) => key_forms(&bytes),
    }
}

/// Every `*.key` file under `dir`.
fn key_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            key_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "key") {
            out.push(path);
        }
    }
}

/// A JWT, whole and its signature alone.
fn jwt_forms(token: &str) -> Vec<String> {
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    vec![
        token.to_owned(),
        token.split('.').nth(2).unwrap().to_owned(),
    ]
}

/// An approver: another uid than the requester's.
const ALICE: u32 = 1001;

/// The CLI, logging like the servers; its stderr kept in `logs`.
fn cli(dev: &DevProcess, logs: &mut String, args: &[&str]) -> String {
    cli_as(dev, As::Me, logs, args)
}

/// [`cli`] as `who`.
fn cli_as(dev: &DevProcess, who: As, logs: &mut String, args: &[&str]) -> String {
    let out = dev.run_as(who, &[args, &LOGS[..]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "writ {args:?}: {stderr}");
    logs.push_str(&stderr);
    String::from_utf8(out.stdout).unwrap()
}

/// Each line of a JSON log, parsed; a line that is not an object fails, named.
fn parse(what: &str, log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| panic!("{what}: a log line that is not a JSON object: {line}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_scenario_logged_at_debug_shows_no_key_token_or_jwt() {
    // An approver of another uid approves the grant.
    if !common::require_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let port = common::free_port();
    let config = common::write(
        &dir.join("writ.toml"),
        &format!("node_listen = \"127.0.0.1:{port}\"\n"),
    );
    let data = dir.join("data");
    // One user is operator and workload here: the demo switch allows that profile.
    let dev = DevProcess::start(
        &data,
        &[
            &[
                "--config",
                config.to_str().unwrap(),
                "--demo-single-user",
                "--operator",
                &format!("alice={ALICE}:approver"),
            ],
            &LOGS[..],
        ]
        .concat(),
    );
    let mut cli_logs = String::new();
    let me = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    dev.create_fixer_for(me);
    cli(
        &dev,
        &mut cli_logs,
        &[
            &open_args("INC-1", "fixer")[..],
            &["--scope", "logs:read", "--scope", "deploy:restart"],
        ]
        .concat(),
    );
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut secret = |what: &str, forms: Vec<String>| {
        secrets.extend(forms.into_iter().map(|f| (what.to_owned(), f)));
    };

    // An agent joins with a join token, and logs as its config file says.
    let token = cli(&dev, &mut cli_logs, &["token", "create"])
        .trim()
        .to_owned();
    secret("the join token", vec![token.clone()]);
    let bundle = common::write(
        &dir.join("base.pem"),
        &cli(&dev, &mut cli_logs, &["bundle", "show", "--band", "base"]),
    );
    let agent = AgentProc::start(
        dir,
        "agent",
        &common::toml_string(&format!("127.0.0.1:{port}")),
        &bundle,
        &token,
        "log_format = \"json\"\nlog_level = \"debug\"\n",
        None,
    );

    // Stock SPIFFE clients on both sockets: an X.509-SVID (its key made by the agent
    // serving it) and a JWT-SVID each.
    for socket in [data.join("workload.sock"), agent.socket()] {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
            .await
            .unwrap();
        let svid = client.fetch_x509_svid().await.unwrap();
        secret(
            "a workload's X.509-SVID key",
            key_forms(svid.private_key().as_bytes()),
        );
        let jwt = client.fetch_jwt_token(&["logs-api"], None).await.unwrap();
        secret("a JWT-SVID fetched by a workload", jwt_forms(&jwt));
    }

    // A grant, requested and approved; then the operator mints its identity's JWT and an
    // investigative X.509-SVID whose key the CLI writes.
    let plan = common::write(&dir.join("plan.txt"), RESTART_PLAN);
    let mut request = restart_args("INC-1", plan.to_str().unwrap());
    request.extend(["--scope", "deploy:restart"]);
    let grant = cli(&dev, &mut cli_logs, &request).trim().to_owned();
    cli_as(
        &dev,
        As::Uid(ALICE),
        &mut cli_logs,
        &["grant", "approve", &grant],
    );
    let jwt = cli(
        &dev,
        &mut cli_logs,
        &[
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
        ],
    );
    secret("a minted JWT-SVID", jwt_forms(&jwt));
    let out = dir.join("minted");
    cli(
        &dev,
        &mut cli_logs,
        &[
            "x509",
            "mint",
            "--agent",
            "fixer",
            "--incident",
            "INC-1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    secret("the minted key.pem", file_forms(&out.join("key.pem")));
    cli(&dev, &mut cli_logs, &["incident", "close", "INC-1"]);

    // The server's keys (CAs, audit log) and the agent's node key.
    let mut keys = Vec::new();
    key_files(&data, &mut keys);
    key_files(&agent.data_dir, &mut keys);
    assert!(
        keys.iter().any(|k| k.ends_with("node.key")),
        "the agent's node key: {keys:?}"
    );
    assert!(keys.len() >= 4, "the CA keys too: {keys:?}");
    for key in &keys {
        secret(&key.display().to_string(), file_forms(key));
    }

    let logs = [
        ("writ dev", dev.log()),
        ("writ agent", agent.log()),
        ("the CLI", cli_logs),
    ];
    for (who, log) in &logs {
        for (what, form) in &secrets {
            assert!(
                !log.contains(form.as_str()),
                "{who}'s log shows {what} ({form}):\n{}",
                log.lines()
                    .filter(|l| l.contains(form.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }

    // The logs are there, JSON, and say who: the operator of an admin call, the uid of a
    // Workload API caller, the node of a node API call.
    println!(
        "{} forms of {} secrets searched; writ dev logged {} lines, the agent {}, the CLI {}",
        secrets.len(),
        secrets
            .iter()
            .map(|(what, _)| what)
            .collect::<BTreeSet<_>>()
            .len(),
        logs[0].1.lines().count(),
        logs[1].1.lines().count(),
        logs[2].1.lines().count()
    );
    let server = parse("writ dev", &logs[0].1);
    let agent_lines = parse("writ agent", &logs[1].1);
    // The CLI also tells its user things on stderr (a token's expiry): those are no logs.
    let cli_lines = logs[2].1.lines().filter(|l| l.starts_with('{'));
    assert!(
        parse("the CLI", &cli_lines.collect::<Vec<_>>().join("\n")).len() > 10,
        "the CLI logged: {}",
        logs[2].1
    );
    assert!(server.len() > 20, "writ dev logged {} lines", server.len());
    let in_span = |lines: &[Value], span: &str, field: &str, value: &str| {
        lines.iter().any(|l| {
            l["span"]["name"] == span
                && l["span"][field]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| l["span"][field].as_u64().map(|n| n.to_string()))
                    .is_some_and(|v| v.contains(value))
        })
    };
    let me_operator = format!("uid:{me}");
    let me_uid = me.to_string();
    for (who, lines, span, field, value) in [
        (
            "writ dev",
            &server,
            "admin",
            "operator",
            me_operator.as_str(),
        ),
        ("writ dev", &server, "admin", "operator", "alice"),
        ("writ dev", &server, "admin", "method", "CloseIncident"),
        (
            "writ dev",
            &server,
            "node_api",
            "node",
            "spiffe://example.org/",
        ),
        ("writ agent", &agent_lines, "workload_api", "uid", &me_uid),
        (
            "writ agent",
            &agent_lines,
            "workload_api",
            "spiffe_ids",
            "/agent/fixer/incident/INC-1",
        ),
    ] {
        assert!(
            in_span(lines, span, field, value),
            "{who}: no line in a {span} span whose {field} has {value:?}:\n{}",
            logs.iter().find(|(w, _)| *w == who).unwrap().1
        );
    }
}

#[test]
fn an_invalid_log_level_stops_writ_at_start_saying_so() {
    let root = tempfile::tempdir().unwrap();
    for (args, env, says) in [
        (
            vec!["--log-level", "writ=loud"],
            None,
            "--log-level or WRIT_LOG",
        ),
        (vec![], Some("info,writ=loud"), "--log-level or WRIT_LOG"),
    ] {
        let mut command = Command::new(common::bin::WRIT);
        command
            .args(["bundle", "show"])
            .args(&args)
            .env("WRIT_ADMIN_SOCKET", root.path().join("none.sock"));
        match env {
            Some(filter) => command.env("WRIT_LOG", filter),
            None => command.env_remove("WRIT_LOG"),
        };
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?}: {stderr}");
        assert!(stderr.starts_with("error: log level"), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert_eq!(
            stderr.matches("error parsing level filter").count(),
            1,
            "the cause once: {stderr}"
        );
    }
    // In the config file of a long-running process, the same.
    let config = common::write(
        &root.path().join("writ.toml"),
        "log_level = \"writ=nonsense\"\n",
    );
    let out = Command::new(common::bin::WRIT)
        .args(["dev", "--data-dir"])
        .arg(root.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env_remove("WRIT_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("log_level in the config file"), "{stderr}");
    assert!(
        !root.path().join("data").exists(),
        "nothing was made before the refusal"
    );
}

#[test]
fn the_config_file_sets_the_format_and_the_command_line_beats_it() {
    let root = tempfile::tempdir().unwrap();
    // A config that writ dev refuses after installing its logs: what it logs on the way
    // is in the format chosen, and the last line is the error.
    let config = common::write(
        &root.path().join("writ.toml"),
        "log_format = \"json\"\nlog_level = \"debug\"\nmax_incident_lifetime = \"400d\"\n",
    );
    let run = |extra: &[&str]| {
        let out = Command::new(common::bin::WRIT)
            .arg("dev")
            .args(extra)
            .arg("--data-dir")
            .arg(root.path().join("data"))
            .arg("--config")
            .arg(&config)
            .arg("--demo-single-user")
            .env_remove("WRIT_LOG")
            .env_remove("WRIT_LOG_FORMAT")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let json = run(&[]);
    let lines: Vec<&str> = json.lines().collect();
    let (error, logged) = lines.split_last().unwrap();
    assert!(
        error.starts_with("error: ") && error.contains("365d"),
        "{json}"
    );
    assert!(!logged.is_empty(), "the demo warnings are logged: {json}");
    for line in logged {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("{json}"));
        assert_eq!(value["level"], "WARN", "{line}");
    }
    let text = run(&["--log-format", "text"]);
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with("WARNING: --demo-single-user")),
        "{text}"
    );
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{text}"
    );
}
