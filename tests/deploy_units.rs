//! The systemd units in deploy/systemd (docs/operations.md, "Install with systemd"): each
//! keeps every hardening directive it ships with (removing one fails here), they agree
//! with the example configurations on where state and sockets live, and
//! `systemd-analyze verify` accepts them with the built binary as ExecStart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The unit's `[Service]` settings: each key with every value it is given, in order.
fn service(unit: &str) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
    let mut section = String::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section == "[Service]" {
            let (key, value) = line.split_once('=').unwrap();
            out.entry(key.to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }
    out
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match unit.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key}: expected one value, found {other:?}"),
    }
}

/// What both units must say, whatever else they do.
const COMMON: &[(&str, &str)] = &[
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("Restart", "on-failure"),
    ("StateDirectoryMode", "0700"),
    ("RuntimeDirectoryMode", "0755"),
    ("UMask", "0077"),
];

fn check_common(name: &str, unit: &BTreeMap<String, Vec<String>>) {
    for (key, value) in COMMON {
        assert_eq!(one(unit, key), *value, "{name}: {key}");
    }
    let filters = &unit["SystemCallFilter"];
    assert!(
        filters.iter().any(|f| f == "@system-service"),
        "{name}: {filters:?}"
    );
    assert!(
        filters.iter().any(|f| f == "~@privileged"),
        "{name}: {filters:?}"
    );
    // A stable owner for state that must outlive the unit: never a dynamic user.
    assert!(!unit.contains_key("DynamicUser"), "{name}");
}

/// The value of `key` in one of deploy/'s example configurations.
fn config_value(file: &str, key: &str) -> String {
    let text = std::fs::read_to_string(deploy().join(file)).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    value[key].as_str().unwrap().to_owned()
}

#[test]
fn the_server_unit_is_hardened_and_holds_no_capability() {
    let unit = service("writ-server.service");
    check_common("writ-server", &unit);
    assert_eq!(one(&unit, "User"), "writ");
    assert_eq!(one(&unit, "ProtectHome"), "yes");
    assert_eq!(one(&unit, "CapabilityBoundingSet"), "");
    assert_eq!(one(&unit, "AmbientCapabilities"), "");
    assert_eq!(one(&unit, "ProtectProc"), "invisible");
    assert_eq!(
        one(&unit, "ExecStart"),
        "/usr/local/bin/writ server --config /etc/writ/server.toml"
    );
    // Its state directory is the example configuration's data_dir.
    assert_eq!(
        format!("/var/lib/{}", one(&unit, "StateDirectory")),
        config_value("server.toml", "data_dir")
    );
    assert_eq!(one(&unit, "RuntimeDirectory"), "writ-server");
}

#[test]
fn the_agent_unit_is_hardened_with_only_ptrace_read_access() {
    let unit = service("writ-agent.service");
    check_common("writ-agent", &unit);
    assert_eq!(one(&unit, "User"), "writ-agent");
    assert_eq!(one(&unit, "ProtectHome"), "read-only");
    assert_eq!(one(&unit, "CapabilityBoundingSet"), "CAP_SYS_PTRACE");
    assert_eq!(one(&unit, "AmbientCapabilities"), "CAP_SYS_PTRACE");
    assert!(
        !unit.contains_key("ProtectProc"),
        "the agent reads callers' /proc"
    );
    assert_eq!(
        one(&unit, "ExecStart"),
        "/usr/local/bin/writ agent --config /etc/writ/agent.toml"
    );
    assert_eq!(
        format!("/var/lib/{}", one(&unit, "StateDirectory")),
        config_value("agent.toml", "data_dir")
    );
    // The Workload API socket is in the runtime directory every user can enter.
    let socket = config_value("agent.toml", "workload_socket");
    assert_eq!(
        Path::new(&socket).parent().unwrap(),
        Path::new("/run").join(one(&unit, "RuntimeDirectory"))
    );
}

#[test]
fn the_users_are_declared_for_sysusers() {
    let text = std::fs::read_to_string(deploy().join("systemd/writ.sysusers")).unwrap();
    for (user, home) in [
        ("writ", "/var/lib/writ"),
        ("writ-agent", "/var/lib/writ-agent"),
    ] {
        assert!(
            text.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&"u") && f.get(1) == Some(&user) && f.last() == Some(&home)
            }),
            "{user}"
        );
    }
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing in CI (apt-get install systemd)"
        );
        println!("skipped: systemd-analyze is not installed here");
        return;
    };
    // ExecStart must name an executable that exists: the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in ["writ-server.service", "writ-agent.service"] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(name)).unwrap();
        assert!(text.contains("/usr/local/bin/writ "), "{name}");
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            text.replace(
                "/usr/local/bin/writ ",
                &format!("{} ", env!("CARGO_BIN_EXE_writ")),
            ),
        )
        .unwrap();
        units.push(path);
    }
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown or misspelt directives are only warnings to systemd: refuse them here.
    for line in stderr.lines() {
        assert!(
            !line.contains("Unknown") && !line.contains("ignoring") && !line.contains("writ-"),
            "systemd-analyze: {line}"
        );
    }
}
