//! Configuration that contradicts itself or goes out of bounds is refused by the real
//! `writ dev` with one `error:` line naming the real problem (issue 10, finding 10), and
//! sockets are created without ever chmod-ing a path someone else can swap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WRIT: &str = env!("CARGO_BIN_EXE_writ");

/// How long a refused `writ dev` may take to exit before the test calls it a failure (a
/// `writ dev` that accepted the configuration never exits on its own).
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs `writ dev --data-dir DIR/data ARGS`, which must exit non-zero with one `error: …`
/// line on stderr mentioning `reason`; returns that line.
fn dev_refused(dir: &Path, args: &[&str], reason: &str) -> String {
    let mut child = Command::new(WRIT)
        .arg("dev")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env_remove("WRIT_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "writ dev {args:?} started instead of refusing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "writ dev {args:?} should fail");
    // Log lines may come too (the CAs are created before the sockets are bound); the
    // error is one line.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "writ dev {args:?}: one error line: {stderr}"
    );
    assert!(
        errors[0].contains(reason),
        "writ dev {args:?}: should say {reason:?}: {stderr}"
    );
    errors[0].to_owned()
}

fn config(dir: &Path, toml: &str) -> String {
    let path = dir.join("writ.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn operators_that_contradict_each_other_or_demote_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    dev_refused(
        dir,
        &["--operator", "alice=4001", "--operator", "bob=4001:admin"],
        r#"operators "alice" and "bob" both have uid 4001"#,
    );
    dev_refused(
        dir,
        &["--operator", "alice=4001", "--operator", "alice=4002"],
        r#"operator "alice" is configured twice"#,
    );
    dev_refused(
        dir,
        &["--operator", "audit=0:auditor"],
        "has uid 0, which is root",
    );
    dev_refused(
        dir,
        &[
            "--config",
            &config(
                dir,
                "[[operator]]\nname = \"a\"\nuid = 4001\n\n[[operator]]\nname = \"b\"\nuid = 4001\nroles = [\"auditor\"]\n",
            ),
        ],
        "both have uid 4001",
    );
    // Nothing was created for a refused start.
    assert!(!dir.join("data").exists());
}

#[test]
fn a_bad_operator_flag_names_the_part_that_is_wrong() {
    for (flag, says) in [
        ("alice=abc", r#"uid "abc" is not a number"#),
        ("alice=1001:root", r#"unknown role "root""#),
        ("alice", "no '='"),
    ] {
        let out = Command::new(WRIT)
            .args(["dev", "--operator", flag])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flag}: {stderr}");
        assert!(stderr.contains(says), "{flag}: {stderr}");
        assert!(!stderr.contains("bad name"), "{flag}: {stderr}");
    }
}

#[test]
fn out_of_bounds_lifetimes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    dev_refused(
        dir,
        &["--config", &config(dir, "[ca]\nbackdate = \"100h\"\n")],
        "backdate (4days 4h) must be at most 5m",
    );
    dev_refused(
        dir,
        &[
            "--config",
            &config(dir, "max_incident_lifetime = \"400d\"\n"),
        ],
        "max_incident_lifetime must be at most 365d",
    );
}

#[test]
fn a_socket_path_that_is_a_symlink_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let victim = dir.join("victim");
    std::fs::write(&victim, "secret").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.join("workload.sock");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    dev_refused(
        dir,
        &["--socket", link.to_str().unwrap()],
        "exists and is not a socket",
    );
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
}

/// The race behind "chmod after bind": a symlink swapped in between `bind` and `chmod`
/// makes writ chmod whatever it names. An attacker thread swaps one in the moment a socket
/// appears at the path, while writ binds there again and again: the file it names must keep
/// its mode, and each socket writ hands out has exactly the mode asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_never_chmods_through_a_symlink_swapped_in_after_bind() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "secret").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.path().join("w.sock");

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, swaps, path, victim) = (
            Arc::clone(&stop),
            Arc::clone(&swaps),
            path.clone(),
            victim.clone(),
        );
        let staged = dir.path().join("link");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let is_socket =
                    std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
                if is_socket {
                    let _ = std::fs::remove_file(&staged);
                    if std::os::unix::fs::symlink(&victim, &staged).is_ok()
                        && std::fs::rename(&staged, &path).is_ok()
                    {
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut bound = 0;
    for _ in 0..3000 {
        let _ = std::fs::remove_file(&path);
        if let Ok(listener) = writ::server::bind_unix(&path, 0o666).await {
            bound += 1;
            drop(listener);
        }
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "writ chmod-ed the symlink's target");
        if swaps.load(Ordering::Relaxed) >= 200 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    assert!(bound > 0, "no bind succeeded");
    assert!(
        swaps.load(Ordering::Relaxed) > 0,
        "the attacker never swapped: the test proved nothing"
    );

    // Unattacked, the socket has exactly the mode asked for, whatever the umask, and
    // nothing is left beside it.
    let quiet = tempfile::tempdir().unwrap();
    for mode in [0o600, 0o666] {
        let path = quiet.path().join(format!("{mode:o}.sock"));
        let _listener = writ::server::bind_unix(&path, mode).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, mode);
        tokio::net::UnixStream::connect(&path).await.unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(quiet.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
