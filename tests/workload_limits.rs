//! The Workload API socket under abuse, against the real `writ dev` binary
//! (docs/threat-model.md, issue 10 findings 3 and 11): per-uid connection limits, the
//! handshake timeout, throttled log lines, the admin socket still serving, and a SIGTERM
//! that ends open streams with a status clients retry on and exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::bin::{DevProcess, open_args};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Bound on every wait (never a duration the test asserts).
const PATIENCE: Duration = Duration::from_secs(30);

fn start_with(dir: &Path, config: &str) -> DevProcess {
    let file = dir.join("writ.toml");
    std::fs::write(&file, config).unwrap();
    DevProcess::start(&dir.join("data"), &["--config", file.to_str().unwrap()])
}

fn workload_socket(dev: &DevProcess) -> std::path::PathBuf {
    dev.data_dir.join("workload.sock")
}

/// A raw connection the server has accepted and served: its HTTP/2 SETTINGS arrived.
fn served(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut byte = [0u8; 1];
    let (_, n) = rustix::net::recv(&stream, &mut byte, rustix::net::RecvFlags::PEEK).unwrap();
    assert_eq!(n, 1, "the server closed a connection it should serve");
    stream
}

/// Reads until the server closes `stream`; false if it is still open after PATIENCE.
fn closed_by_server(mut stream: UnixStream) -> bool {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn a_uid_over_its_share_is_closed_and_silent_connections_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_with(
        dir.path(),
        "[workload_api]\nmax_connections = 32\nmax_connections_per_uid = 8\nhandshake_timeout = \"2s\"\n",
    );
    let socket = workload_socket(&dev);

    // This uid's share: served, although they say nothing.
    let held: Vec<UnixStream> = (0..8).map(|_| served(&socket)).collect();
    // Beyond it: closed at once, each of them.
    for i in 0..20 {
        let extra = UnixStream::connect(&socket).unwrap();
        assert!(
            closed_by_server(extra),
            "connection {i} over the per-uid limit stayed open"
        );
    }
    // The admin socket still answers while the Workload API is at its limit.
    let health = dev.json(&["healthcheck"]);
    assert_eq!(health["status"], "ok", "{health}");

    // Twenty refusals, throttled to a line or two (a window is 10 s).
    let log = dev.log();
    let refused = log.matches("Workload API connection refused").count();
    assert!(
        (1..=3).contains(&refused),
        "{refused} refusal lines for 20 refusals:\n{log}"
    );

    // Connections that never send a request are closed after the handshake timeout...
    for (i, stream) in held.into_iter().enumerate() {
        assert!(
            closed_by_server(stream),
            "silent connection {i} was never closed"
        );
    }
    // ...which gives their slots back.
    let _again = served(&socket);
}

#[test]
fn bad_limits_are_refused_at_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("writ.toml");
    for (config, reason) in [
        (
            "[workload_api]\nmax_connections = 4\nmax_connections_per_uid = 8\n",
            "max_connections_per_uid must be between 1 and max_connections",
        ),
        (
            "[workload_api]\nmax_connections = 0\n",
            "max_connections must be at least 1",
        ),
        (
            "shutdown_grace = \"2h\"\n",
            "shutdown_grace must be at most 1m",
        ),
        ("[workload_api]\nsurprise = 1\n", "unknown field"),
    ] {
        std::fs::write(&file, config).unwrap();
        let out = std::process::Command::new(common::bin::WRIT)
            .args(["dev", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config}");
        assert!(stderr.contains(reason), "{config}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{config}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_with_unavailable_and_exits() {
    use writ::proto::workload as pb;
    let dir = tempfile::tempdir().unwrap();
    let dev = start_with(dir.path(), "shutdown_grace = \"20s\"\n");
    // This process is the workload; it runs as an operator's uid, so the profile selects
    // its executable.
    let exe = std::env::current_exe().unwrap();
    dev.ok(&[
        "profile",
        "create",
        "triage",
        "--selector",
        &format!("unix:path:{}", exe.display()),
    ]);
    dev.ok(&open_args("INC-1", "triage"));

    let channel = writ::uds::channel(&workload_socket(&dev)).await.unwrap();
    let mut client = pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let mut request = tonic::Request::new(pb::X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = client.fetch_x509svid(request).await.unwrap().into_inner();
    let first = stream
        .message()
        .await
        .unwrap()
        .expect("a first X.509 response");
    assert_eq!(first.svids.len(), 1);

    // The stream is open; the process is told to stop.
    let exit = tokio::task::spawn_blocking(move || dev.signal_and_wait("TERM"));
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream ends when writ stops");
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    let exit = exit.await.unwrap();
    assert!(exit.success(), "writ dev exited with {exit}");
}
