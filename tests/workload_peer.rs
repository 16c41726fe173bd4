//! Workload attestation against a hostile workload (docs/threat-model.md, issue 10
//! finding 1): real processes, real sockets, a real agent. A process connects to the
//! Workload API, hands the connected socket to this test (SCM_RIGHTS), then changes
//! what it is — execs an entitled binary, or takes another gid — and the test asks over
//! the socket. The identity must be the one the process had when it connected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::dev::{Dev, start};
use hyper_util::rt::TokioIo;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Endpoint, Uri};
use writ::ca::CaConfig;
use writ::policy::Selector;
use writ::proto::workload as pb;

/// Bound on every wait here (never a duration the test asserts).
const PATIENCE: Duration = Duration::from_secs(30);

fn id_of(agent: &str, incident: &str) -> String {
    format!("spiffe://investigate.example.org/agent/{agent}/incident/{incident}")
}

/// The hostile workload, built by `cargo test` beside this test.
fn handoff_bin() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    deps.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/connect-handoff")
}

/// Lets other uids reach sockets inside the dev's temp dir.
fn open_up(dev: &Dev) {
    use std::os::unix::fs::PermissionsExt;
    let mut dir = dev.socket.parent().unwrap().to_path_buf();
    while dir.starts_with(std::env::temp_dir()) && dir != std::env::temp_dir() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir = dir.parent().unwrap().to_path_buf();
    }
}

/// A running hostile workload, killed when dropped.
struct Hostile {
    child: Child,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hostile {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts the hostile workload (as `uid`, or as this process) and receives the Workload
/// API connection it hands over.
fn handoff(dev: &Dev, uid: Option<u32>, extra: &[&str]) -> (Hostile, UnixStream) {
    use std::os::unix::fs::PermissionsExt;
    let rendezvous = dev
        .socket
        .with_file_name(format!("rv-{}.sock", extra.len()));
    let _ = std::fs::remove_file(&rendezvous);
    let listener = UnixListener::bind(&rendezvous).unwrap();
    std::fs::set_permissions(&rendezvous, std::fs::Permissions::from_mode(0o777)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut command = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
            ])
            .arg(handoff_bin());
            c
        }
        None => Command::new(handoff_bin()),
    };
    let child = command
        .arg(&dev.socket)
        .arg(&rendezvous)
        .args(extra)
        .spawn()
        .expect("spawn connect-handoff");
    let mut hostile = Hostile { child };
    let deadline = Instant::now() + PATIENCE;
    let conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = hostile.child.try_wait().unwrap() {
                    panic!("connect-handoff exited ({status}) before handing over");
                }
                assert!(Instant::now() < deadline, "no handoff in time");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("rendezvous accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::empty(),
    )
    .expect("receive the socket");
    let fd = control
        .drain()
        .find_map(|message| match message {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .expect("a file descriptor");
    (hostile, UnixStream::from(fd))
}

/// Asks for X.509-SVIDs over an already connected socket, with writ's raw client.
async fn ask(socket: UnixStream) -> Result<pb::X509svidResponse, tonic::Status> {
    socket.set_nonblocking(true).unwrap();
    let socket = Arc::new(Mutex::new(Some(
        tokio::net::UnixStream::from_std(socket).unwrap(),
    )));
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let taken = socket.lock().unwrap().take();
            async move {
                taken
                    .map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the handed-over socket is used up"))
            }
        }))
        .await
        .unwrap();
    let mut client = pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let mut request = tonic::Request::new(pb::X509svidRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = tokio::time::timeout(PATIENCE, client.fetch_x509svid(request))
        .await
        .expect("an answer in time")?
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a first message in time")?;
    Ok(first.expect("a first message"))
}

/// Waits until `pid` runs `exe`.
fn wait_for_exe(pid: u32, exe: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .as_deref()
        != Some(exe)
    {
        assert!(
            Instant::now() < deadline,
            "pid {pid} never ran {}",
            exe.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ids(response: &pb::X509svidResponse) -> Vec<String> {
    response.svids.iter().map(|s| s.spiffe_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_execs_after_connecting_gets_nothing() {
    if !common::require_root() {
        return;
    }
    const UID: u32 = 64_711;
    let dev = start(CaConfig::default()).await;
    open_up(&dev);
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    let handoff_exe = std::fs::canonicalize(handoff_bin()).unwrap();
    // `sleeper` is what the attacker wants; `handoff` is what it is.
    let path = |p: &Path| Selector::Path(p.to_str().unwrap().into());
    dev.profile("sleeper", &[Selector::Uid(UID), path(&sleep)], &[]);
    dev.profile("handoff", &[Selector::Uid(UID), path(&handoff_exe)], &[]);
    dev.open("INC-S", "sleeper", 1);
    dev.open("INC-H", "handoff", 2);

    // Control: the same handover without the exec gets the identity it is entitled to,
    // so a refusal below is the exec's doing, not the handover's.
    let (_honest, socket) = handoff(&dev, Some(UID), &[]);
    let answer = ask(socket).await.expect("the honest process is served");
    assert_eq!(ids(&answer), vec![id_of("handoff", "INC-H")]);

    // The attack: connect as `connect-handoff`, exec `sleep` (same pid, same start
    // time), ask from the process holding the socket.
    let (attacker, socket) = handoff(&dev, Some(UID), &["--exec", "/usr/bin/sleep", "300"]);
    wait_for_exe(attacker.pid(), &sleep);
    let status = ask(socket)
        .await
        .expect_err("an exec after connect is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("another executable than when it connected"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_the_sockets_at_connect_not_procs_now() {
    if !common::require_root() {
        return;
    }
    const NEW_GID: u32 = 64_712;
    let dev = start(CaConfig::default()).await;
    let handoff_exe = std::fs::canonicalize(handoff_bin()).unwrap();
    let path = Selector::Path(handoff_exe.to_str().unwrap().into());
    let connect_gid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .unwrap();
    dev.profile(
        "at-connect",
        &[Selector::Gid(connect_gid), path.clone()],
        &[],
    );
    dev.profile("after-setgid", &[Selector::Gid(NEW_GID), path], &[]);
    dev.open("INC-C", "at-connect", 1);
    dev.open("INC-G", "after-setgid", 2);

    // Connects with this process's gids, then takes NEW_GID as its only gid and group
    // (same pid, same executable) before handing the socket over.
    let (workload, socket) = handoff(&dev, None, &["--gid-after", &NEW_GID.to_string()]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", workload.pid())).unwrap();
    let gid_line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
    assert!(gid_line.contains(&NEW_GID.to_string()), "{gid_line}");

    let answer = ask(socket)
        .await
        .expect("the connect-time identity is served");
    assert_eq!(
        ids(&answer),
        vec![id_of("at-connect", "INC-C")],
        "gids come from the socket's credentials at connect, not from /proc"
    );
}
