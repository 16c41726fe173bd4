//! A hostile workload, for the attestation tests (tests/workload_peer.rs): connects to
//! the Workload API socket, waits until the agent has accepted the connection (its
//! HTTP/2 SETTINGS arrive, peeked, not read), hands the connected socket to another
//! process over a rendezvous socket (SCM_RIGHTS), then changes what it is — execs
//! another binary, or changes its gids — while the other process asks over the socket.
//!
//! ```text
//! connect-handoff WORKLOAD_SOCKET RENDEZVOUS_SOCKET [--gid-after GID] [--exec PATH ARG…]
//! ```
//! Without `--exec` it stays alive (sleeping) until killed.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use rustix::net::{RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = args.next().expect("WORKLOAD_SOCKET");
    let rendezvous = args.next().expect("RENDEZVOUS_SOCKET");
    let mut gid_after = None;
    let mut exec = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--gid-after" => gid_after = Some(args.next().expect("GID").parse::<u32>().unwrap()),
            "--exec" => exec = args.by_ref().collect(),
            other => panic!("unknown argument {other}"),
        }
    }

    let socket = UnixStream::connect(&workload).expect("connect to the Workload API");
    // The server speaks first (its SETTINGS): once a byte is there, the agent has
    // accepted and attested this connection. Peek, so the byte stays for the real client.
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut byte = [0u8; 1];
    let (_, n) = rustix::net::recv(&socket, &mut byte, RecvFlags::PEEK).expect("peek");
    assert_eq!(n, 1, "the agent closed the connection");

    if let Some(gid) = gid_after {
        let gid = rustix::process::Gid::from_raw(gid);
        rustix::thread::set_thread_groups(&[gid]).expect("setgroups (needs root)");
        rustix::thread::set_thread_res_gid(gid, gid, gid).expect("setresgid (needs root)");
    }

    let handoff = UnixStream::connect(&rendezvous).expect("connect to the rendezvous");
    let fds = [socket.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        &handoff,
        &[IoSlice::new(b"x")],
        &mut control,
        SendFlags::empty(),
    )
    .expect("send the socket");

    if let Some((path, rest)) = exec.split_first() {
        // Same pid, same start time: only the executable changes.
        let error = std::process::Command::new(path).args(rest).exec();
        panic!("exec {path}: {error}");
    }
    std::thread::sleep(Duration::from_secs(300));
}
