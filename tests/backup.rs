//! Backup and restore through the real `writ` binary (issue 17, item 7; docs/operations.md,
//! "Back up and restore"): a running `writ dev` is backed up to a passphrase and to an age
//! public key; the data directory is wiped and restored from each; the restored server
//! verifies its audit log and serves byte-identical bundles, its tenants' too. The
//! archives hold no key in clear, every backup is audited with its digest, and a wrong
//! passphrase, a damaged archive or a non-empty target is a clear error that writes
//! nothing. A non-admin operator is refused, and the refusal audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Classic X25519 age keys (deprecated for new recipients) are what operators have.
#![allow(deprecated)]

use age::secrecy::ExposeSecret;
use serde_json::Value;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

use common::bin::{As, DevProcess, WRIT, json_lines, open_args};

const PASSPHRASE: &str = "correct horse battery staple";

/// What a restored server must serve exactly as the original did.
fn served(dev: &DevProcess) -> Vec<String> {
    vec![
        dev.ok(&["bundle", "show"]),
        dev.ok(&["bundle", "show", "--format", "jwks"]),
        dev.ok(&["bundle", "show", "--tenant", "acme"]),
        dev.ok(&["authority", "show", "--json"]),
        dev.ok(&["incident", "show", "INC-1", "--json"]),
        dev.ok(&["profile", "show", "triage", "--json"]),
    ]
}

/// `writ restore ARGS`, without a server.
fn restore(args: &[&str], passphrase: Option<&str>) -> std::process::Output {
    let mut c = Command::new(WRIT);
    c.arg("restore").args(args).stdin(Stdio::null());
    match passphrase {
        Some(p) => c.env("WRIT_BACKUP_PASSPHRASE", p),
        None => c.env_remove("WRIT_BACKUP_PASSPHRASE"),
    };
    c.output().unwrap()
}

fn error_line(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "should have failed");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// Every regular file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// No 16-byte run of any key file under `keys` appears in `archive`, nor a PEM label.
fn no_key_in_clear(archive: &[u8], keys: &Path) {
    let windows: HashSet<&[u8]> = archive.windows(16).collect();
    let key_files = files(keys);
    assert!(key_files.len() >= 8, "{key_files:?}");
    for key in key_files {
        let bytes = std::fs::read(&key).unwrap();
        for run in bytes.windows(16) {
            assert!(
                !windows.contains(run),
                "{} appears in clear in the archive",
                key.display()
            );
        }
    }
    assert!(!archive.windows(11).any(|w| w == b"PRIVATE KEY"));
}

fn backup_records(dev: &DevProcess) -> Vec<Value> {
    json_lines(&dev.ok(&["audit", "export"]))
        .into_iter()
        .filter(|r| r["action"] == "backup.created")
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    writ::hex::sha256(bytes)
}

#[test]
fn a_backup_restored_into_a_wiped_directory_serves_the_same_bundles_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = DevProcess::start(&data, &[]);
    dev.ok(&[
        "profile",
        "create",
        "triage",
        "--selector",
        "unix:uid:1001",
        "--scope",
        "logs:read",
    ]);
    dev.ok(&open_args("INC-1", "triage"));
    dev.ok(&["tenant", "create", "acme", "--trust-domain", "acme.example"]);
    dev.ok(&["authority", "prepare"]);
    let before = served(&dev);

    // To a passphrase (from a file), and to an age public key.
    let pass_file = tmp.path().join("pass");
    std::fs::write(&pass_file, format!("{PASSPHRASE}\n")).unwrap();
    let by_pass = tmp.path().join("by-pass.age");
    let made = dev.json(&[
        "backup",
        "--out",
        by_pass.to_str().unwrap(),
        "--passphrase-file",
        pass_file.to_str().unwrap(),
    ]);
    let identity = age::x25519::Identity::generate();
    let identity_file = tmp.path().join("identity.txt");
    std::fs::write(&identity_file, identity.to_string().expose_secret()).unwrap();
    let recipient = identity.to_public().to_string();
    let by_key = tmp.path().join("by-key.age");
    dev.ok(&[
        "backup",
        "--out",
        by_key.to_str().unwrap(),
        "--recipient",
        &recipient,
    ]);

    for file in [&by_pass, &by_key] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
        no_key_in_clear(&std::fs::read(file).unwrap(), &data.join("keys"));
    }
    // Each backup is audited with its file's digest, and no secret.
    let pass_bytes = std::fs::read(&by_pass).unwrap();
    assert_eq!(made["sha256"], sha256_hex(&pass_bytes));
    let records = backup_records(&dev);
    let digests: Vec<&str> = records
        .iter()
        .map(|r| r["detail"]["sha256"].as_str().unwrap())
        .collect();
    assert_eq!(
        digests,
        [
            sha256_hex(&pass_bytes),
            sha256_hex(&std::fs::read(&by_key).unwrap())
        ]
    );
    assert!(!records[0].to_string().contains(PASSPHRASE));
    assert_eq!(records[1]["detail"]["encrypted_to"], "recipients");
    // An existing file is never overwritten.
    let out = dev.run(&[
        "backup",
        "--out",
        by_key.to_str().unwrap(),
        "--recipient",
        &recipient,
    ]);
    assert!(error_line(&out).contains("exists"));
    dev.terminate();

    for (archive, key, pass) in [
        (&by_pass, vec![], Some(PASSPHRASE)),
        (
            &by_key,
            vec!["--identity", identity_file.to_str().unwrap()],
            None,
        ),
    ] {
        std::fs::remove_dir_all(&data).unwrap();
        let archive = archive.to_str().unwrap();
        let target = data.to_str().unwrap();
        let out = restore(&[&[archive, "--data-dir", target], &key[..]].concat(), pass);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mode = |p: &str| {
            std::fs::metadata(data.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("keys"), 0o700);
        assert_eq!(mode("keys/audit.key"), 0o600);
        assert_eq!(mode("writ.redb"), 0o600);

        let dev = DevProcess::start(&data, &[]);
        let verified = dev.run(&["audit", "verify"]);
        assert!(
            verified.status.success(),
            "{}",
            String::from_utf8_lossy(&verified.stderr)
        );
        assert_eq!(served(&dev), before, "restored from {archive}");
        dev.terminate();
        // At rest too, as an operator checks a restored copy before starting on it.
        let at_rest = Command::new(WRIT)
            .args(["audit", "verify", "--data-dir", target])
            .output()
            .unwrap();
        assert!(at_rest.status.success());
    }

    // A wrong passphrase, a damaged archive and a non-empty target: one clear error
    // line each, nothing written.
    let fresh = tmp.path().join("fresh");
    let target = fresh.to_str().unwrap();
    let out = restore(
        &[by_pass.to_str().unwrap(), "--data-dir", target],
        Some("not it"),
    );
    assert!(error_line(&out).contains("wrong passphrase"));
    let out = restore(
        &[by_key.to_str().unwrap(), "--data-dir", target],
        Some(PASSPHRASE),
    );
    assert!(error_line(&out).contains("--identity"));
    let mut damaged = std::fs::read(&by_key).unwrap();
    let at = damaged.len() * 2 / 3;
    damaged[at] ^= 0x40;
    let damaged_file = tmp.path().join("damaged.age");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let out = restore(
        &[
            damaged_file.to_str().unwrap(),
            "--data-dir",
            target,
            "--identity",
            identity_file.to_str().unwrap(),
        ],
        None,
    );
    assert!(error_line(&out).contains("damaged"));
    assert!(!fresh.exists());
    let out = restore(
        &[
            by_key.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--identity",
            identity_file.to_str().unwrap(),
        ],
        None,
    );
    assert!(error_line(&out).contains("is not empty"));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore") || n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_backup_needs_encryption_and_the_admin_role() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = DevProcess::start(&data, &["--operator", "dora=65531:auditor"]);
    let out_file = tmp.path().join("b.age");
    let out = out_file.to_str().unwrap();
    // No passphrase and no recipient: refused before anything is asked of the server.
    dev.refusal(
        As::Me,
        &["backup", "--out", out],
        None,
        "holds private keys",
    );
    dev.refusal(
        As::Me,
        &["backup", "--out", out, "--recipient", "age1notakey"],
        None,
        "recipient 1 is not an age public key",
    );
    assert!(!out_file.exists());
    assert!(backup_records(&dev).is_empty());

    if !common::require_root() {
        return;
    }
    // An auditor (not an admin), in a directory it may write.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pass_file = open.join("pass");
    std::fs::write(&pass_file, PASSPHRASE).unwrap();
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let theirs = open.join("b.age");
    dev.refusal(
        As::Uid(65531),
        &[
            "backup",
            "--out",
            theirs.to_str().unwrap(),
            "--passphrase-file",
            pass_file.to_str().unwrap(),
        ],
        None,
        "needs the role admin",
    );
    assert!(!theirs.exists());
    assert_eq!(
        std::fs::read_dir(&open).unwrap().count(),
        1,
        "only the passphrase file"
    );
    assert!(backup_records(&dev).is_empty());
    let refused: Vec<Value> = json_lines(&dev.ok(&["audit", "export"]))
        .into_iter()
        .filter(|r| r["action"] == "admin.refused" && r["actor"] == "uid:65531")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0]["detail"]["method"],
        "/writ.admin.v1.Admin/Backup"
    );
    assert_eq!(refused[0]["detail"]["code"], "PermissionDenied");
}

#[test]
fn a_server_on_postgresql_refuses_and_points_to_pg_dump() {
    let Some(pg) = common::postgres::Postgres::start() else {
        return;
    };
    pg.create_database("writ");
    let tmp = tempfile::tempdir().unwrap();
    let server = common::procs::ServerProc::start(
        tmp.path(),
        "a",
        &format!("store = {}\n", common::toml_string(&pg.url("writ"))),
    );
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let out_file = tmp.path().join("b.age");
    let out = server.run(&[
        "backup",
        "--out",
        out_file.to_str().unwrap(),
        "--recipient",
        &recipient,
    ]);
    let line = error_line(&out);
    assert!(line.contains("pg_dump"), "{line}");
    assert!(line.contains("docs/operations.md"), "{line}");
    assert!(!out_file.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_backup_taken_while_incidents_open_is_a_state_the_server_could_have_stopped_in() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = DevProcess::start(&data, &[]);
    dev.ok(&["profile", "create", "triage", "--selector", "unix:uid:1001"]);
    let identity = age::x25519::Identity::generate();
    let identity_file = tmp.path().join("identity.txt");
    std::fs::write(&identity_file, identity.to_string().expose_secret()).unwrap();
    let recipient = identity.to_public().to_string();
    // Incidents open one after another while backups are taken.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let archives: Vec<PathBuf> = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut opened = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && opened < 500 {
                dev.ok(&open_args(&format!("W-{opened}"), "triage"));
                opened += 1;
            }
            opened
        });
        let archives = (0..3)
            .map(|i| {
                let file = tmp.path().join(format!("during-{i}.age"));
                dev.ok(&[
                    "backup",
                    "--out",
                    file.to_str().unwrap(),
                    "--recipient",
                    &recipient,
                ]);
                file
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 0);
        archives
    });
    dev.terminate();

    let mut seen = 0;
    for (i, archive) in archives.iter().enumerate() {
        let restored = tmp.path().join(format!("restored-{i}"));
        let out = restore(
            &[
                archive.to_str().unwrap(),
                "--data-dir",
                restored.to_str().unwrap(),
                "--identity",
                identity_file.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = DevProcess::start(&restored, &[]);
        assert!(dev.run(&["audit", "verify"]).status.success());
        // Every incident the restored store holds has its audit record in the restored
        // log (a record is durable before its row is written).
        let recorded: HashSet<String> = json_lines(&dev.ok(&["audit", "export"]))
            .into_iter()
            .filter(|r| r["action"] == "incident.open")
            .map(|r| r["incident"].as_str().unwrap().to_owned())
            .collect();
        let stored = json_lines(&dev.ok(&["incident", "list", "--json"]));
        seen += stored.len();
        for incident in &stored {
            let id = incident["id"].as_str().unwrap();
            assert!(
                recorded.contains(id),
                "{id} stored without its record ({archive:?})"
            );
        }
        dev.terminate();
    }
    assert!(seen > 0, "no backup caught an incident");
}
