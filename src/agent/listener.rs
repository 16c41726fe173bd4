//! The Workload API socket's accept loop: who may hold a connection, for how long, and
//! what is known about each one before its first request.
//!
//! The socket is world-writable by design (any local process may ask who it is), so any
//! local user can also try to exhaust writ's file descriptors. Each accepted connection:
//! - counts against a global limit and a per-uid limit ([`admit`]); over either, it is
//!   closed at once (a client sees the connection end and retries);
//! - is attested once, then and there, from the kernel's socket credentials and /proc
//!   ([`ConnectedPeer`], docs/threat-model.md), which every request on it carries;
//! - must deliver the HTTP/2 preface and its first request's HEADERS within the handshake
//!   timeout, or it is closed (a silent or trickling client holds nothing for long);
//!   after that, HTTP/2 keepalive pings close connections whose peer is gone.
//!
//! Accept errors (EMFILE when the process is out of descriptors) back off instead of
//! spinning, and repeated log lines are throttled ([`crate::throttle`]).
//!
//! Must never: block the accept loop on a client, or hash an executable here.

use super::Agent;
use super::attest::{ConnectedPeer, socket_credentials};
use crate::backoff::Backoff;
use crate::h2_authority::AuthorityRewrite;
use crate::throttle::Throttle;
use crate::ttl::Ttl;
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

/// `[workload_api]` in the server, dev and agent config files.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadApiConfig {
    /// Open connections on the socket, all callers together (default 1024).
    pub max_connections: usize,
    /// Open connections from one uid (default 128).
    pub max_connections_per_uid: usize,
    /// Time a new connection has to send the HTTP/2 preface and its first request
    /// (default 10s).
    pub handshake_timeout: Ttl,
    /// Largest executable hashed for `unix:sha256:` selectors, in bytes (default 256 MiB).
    pub max_exe_hash_bytes: u64,
}

/// Descriptors kept free for the admin socket, the store, the audit log and the node API:
/// a quarter of the open-files limit, at most this many.
const FD_RESERVE: u64 = 256;

impl Default for WorkloadApiConfig {
    fn default() -> Self {
        WorkloadApiConfig {
            max_connections: 1024,
            max_connections_per_uid: 128,
            handshake_timeout: const { Ttl::constant(10) },
            max_exe_hash_bytes: super::attest::DEFAULT_MAX_HASH_BYTES,
        }
    }
}

impl WorkloadApiConfig {
    /// Refuses limits that would make the socket useless.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_connections >= 1,
            "workload_api.max_connections must be at least 1"
        );
        anyhow::ensure!(
            (1..=self.max_connections).contains(&self.max_connections_per_uid),
            "workload_api.max_connections_per_uid must be between 1 and max_connections ({})",
            self.max_connections
        );
        anyhow::ensure!(
            self.handshake_timeout.secs() <= 300,
            "workload_api.handshake_timeout must be at most 5m"
        );
        anyhow::ensure!(
            self.max_exe_hash_bytes >= 1,
            "workload_api.max_exe_hash_bytes must be positive"
        );
        Ok(())
    }

    /// The global limit lowered, if need be, to fit the process's open-files limit with
    /// a reserve to spare (a quarter, at most 256): a flood of the Workload API must leave
    /// descriptors for the admin socket.
    pub fn fit_to_fd_limit(&self, nofile: u64) -> usize {
        let reserve = (nofile / 4).min(FD_RESERVE);
        let room = nofile.saturating_sub(reserve).max(1);
        self.max_connections
            .min(usize::try_from(room).unwrap_or(usize::MAX))
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// All connections are taken.
    #[error("{0} connections open on the Workload API socket (max_connections)")]
    Global(usize),
    /// This uid holds its share.
    #[error("uid {uid} holds {open} connections (max_connections_per_uid)")]
    PerUid {
        /// The caller's uid.
        uid: u32,
        /// Its open connections.
        open: usize,
    },
}

/// Whether one more connection from `uid` may be accepted, given the open ones.
pub fn admit(
    open_total: usize,
    open_for_uid: usize,
    uid: u32,
    max_total: usize,
    max_per_uid: usize,
) -> Result<(), Refusal> {
    if open_total >= max_total {
        return Err(Refusal::Global(open_total));
    }
    if open_for_uid >= max_per_uid {
        return Err(Refusal::PerUid {
            uid,
            open: open_for_uid,
        });
    }
    Ok(())
}

/// Open connections, in all and per uid.
#[derive(Debug, Default)]
pub struct Connections {
    open: Mutex<(usize, HashMap<u32, usize>)>,
}

impl Connections {
    /// Takes a slot for `uid` if [`admit`] allows it; the slot frees itself when dropped.
    fn take(
        self: &Arc<Self>,
        uid: u32,
        max_total: usize,
        max_per_uid: usize,
    ) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_uid) = &mut *open;
        admit(
            *total,
            per_uid.get(&uid).copied().unwrap_or(0),
            uid,
            max_total,
            max_per_uid,
        )?;
        *total += 1;
        *per_uid.entry(uid).or_default() += 1;
        Ok(Slot {
            connections: Arc::clone(self),
            uid,
        })
    }

    /// Open connections in all.
    pub fn total(&self) -> usize {
        self.open.lock().map(|o| o.0).unwrap_or(0)
    }
}

/// One admitted connection's place in [`Connections`].
#[derive(Debug)]
struct Slot {
    connections: Arc<Connections>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (total, per_uid) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_uid.remove(&self.uid);
            }
        }
    }
}

/// An admitted Workload API connection, as handed to tonic.
pub type WorkloadConn = AuthorityRewrite<Admitted>;

/// Accepts connections on `listener` until `shutdown` resolves, admitting, attesting and
/// wrapping each; tonic serves what comes out.
pub fn accept(
    listener: tokio::net::UnixListener,
    agent: Arc<Agent>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<WorkloadConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let limits = agent.workload_api.clone();
    let max_total = limits.fit_to_fd_limit(agent.nofile_limit);
    if max_total < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            in_force = max_total,
            nofile = agent.nofile_limit,
            "workload_api.max_connections lowered to fit the open-files limit"
        );
    }
    let max_per_uid = limits.max_connections_per_uid.min(max_total);
    let handshake = limits.handshake_timeout.duration();
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let refused_log = Throttle::new(Duration::from_secs(10));
        let error_log = Throttle::new(Duration::from_secs(10));
        // Out of descriptors (EMFILE/ENFILE) or memory: the condition persists until
        // connections close, so wait instead of spinning a core.
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = &mut shutdown => return,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff.reset();
                    stream
                }
                Err(e) => {
                    let retry_in = backoff.next_delay();
                    if let Some(suppressed) = error_log.allow() {
                        tracing::warn!(error = %e, suppressed, ?retry_in, "Workload API accept failed");
                    }
                    tokio::time::sleep(retry_in).await;
                    continue;
                }
            };
            let (cred, groups) = match socket_credentials(&stream) {
                Ok(found) => found,
                Err(e) => {
                    if let Some(suppressed) = refused_log.allow() {
                        tracing::warn!(error = %e, suppressed, "Workload API connection without credentials closed");
                    }
                    continue;
                }
            };
            let slot = match agent.connections.take(cred.uid, max_total, max_per_uid) {
                Ok(slot) => slot,
                Err(refusal) => {
                    if let Some(suppressed) = refused_log.allow() {
                        tracing::warn!(pid = cred.pid, %refusal, suppressed, "Workload API connection refused");
                    }
                    continue;
                }
            };
            let peer = Arc::new(ConnectedPeer {
                cred,
                groups,
                process: agent.attestor.at_accept(cred),
            });
            let conn = Admitted {
                inner: stream,
                peer,
                _slot: slot,
                handshake: Handshake::new(handshake),
            };
            let conn = AuthorityRewrite::with_stats(conn, Arc::clone(&agent.authority_stats));
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An accepted, admitted Unix stream: holds its connection slot and its accept-time
/// attestation, and closes itself if the handshake does not complete in time.
#[derive(Debug)]
pub struct Admitted {
    inner: UnixStream,
    peer: Arc<ConnectedPeer>,
    _slot: Slot,
    handshake: Handshake,
}

impl Connected for Admitted {
    type ConnectInfo = Arc<ConnectedPeer>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Arc::clone(&self.peer)
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.handshake.scan.feed(&buf.filled()[before..]);
        }
        if !this.handshake.scan.done() {
            if let Some(deadline) = this.handshake.deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 request within the handshake timeout",
                )));
            }
        } else {
            this.handshake.deadline = None;
        }
        polled
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The handshake deadline of one connection.
#[derive(Debug)]
struct Handshake {
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    scan: FirstRequest,
}

impl Handshake {
    fn new(timeout: Duration) -> Self {
        Handshake {
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            scan: FirstRequest::default(),
        }
    }
}

/// Length of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
/// HTTP/2 frame header length and the HEADERS frame type (RFC 9113 §4.1, §6.2).
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;

/// Follows the client's bytes just far enough to see the preface and one whole HEADERS
/// frame: the first request. It does not check them (h2 does); it only counts.
#[derive(Debug, Default)]
struct FirstRequest {
    preface_seen: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
    in_headers: bool,
    done: bool,
}

impl FirstRequest {
    fn done(&self) -> bool {
        self.done
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !self.done && !bytes.is_empty() {
            if self.preface_seen < PREFACE_LEN {
                let n = (PREFACE_LEN - self.preface_seen).min(bytes.len());
                self.preface_seen += n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 && self.in_headers {
                    self.done = true;
                }
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == FRAME_HEADER_LEN {
                    self.header_len = 0;
                    let [a, b, c, kind, ..] = self.header;
                    self.payload_left = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                    self.in_headers = kind == HEADERS;
                    if self.in_headers && self.payload_left == 0 {
                        self.done = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn admission_follows_both_limits() {
        assert_eq!(admit(0, 0, 7, 10, 2), Ok(()));
        assert_eq!(admit(9, 1, 7, 10, 2), Ok(()));
        assert_eq!(admit(10, 0, 7, 10, 2), Err(Refusal::Global(10)));
        assert_eq!(
            admit(5, 2, 7, 10, 2),
            Err(Refusal::PerUid { uid: 7, open: 2 })
        );
    }

    #[test]
    fn slots_free_themselves() {
        let connections = Arc::new(Connections::default());
        let a = connections.take(1, 3, 2).unwrap();
        let _b = connections.take(1, 3, 2).unwrap();
        assert!(matches!(
            connections.take(1, 3, 2),
            Err(Refusal::PerUid { uid: 1, open: 2 })
        ));
        let _c = connections.take(2, 3, 2).unwrap();
        assert!(matches!(connections.take(3, 3, 2), Err(Refusal::Global(3))));
        drop(a);
        assert_eq!(connections.total(), 2);
        assert!(connections.take(1, 3, 2).is_ok());
    }

    #[test]
    fn the_first_request_is_the_first_whole_headers_frame() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend([0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]); // SETTINGS
        bytes.extend([0, 0, 3, HEADERS, 0x4, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
        let headers_end = bytes.len();
        // Byte by byte: done exactly when the HEADERS payload is complete.
        let mut scan = FirstRequest::default();
        for (i, byte) in bytes.iter().enumerate() {
            assert!(!scan.done(), "done early at byte {i}");
            scan.feed(std::slice::from_ref(byte));
        }
        assert!(scan.done());
        // In one piece too; and a preface with only SETTINGS is not a request.
        let mut whole = FirstRequest::default();
        whole.feed(&bytes);
        assert!(whole.done());
        let mut settings_only = FirstRequest::default();
        settings_only.feed(&bytes[..headers_end - 12]);
        assert!(!settings_only.done());
    }

    #[test]
    fn the_global_limit_leaves_descriptors_in_reserve() {
        let config = WorkloadApiConfig::default();
        assert_eq!(config.fit_to_fd_limit(1 << 20), 1024);
        assert_eq!(config.fit_to_fd_limit(1024), 1024 - 256);
        assert_eq!(config.fit_to_fd_limit(64), 48);
        assert_eq!(config.fit_to_fd_limit(1), 1);
    }

    #[test]
    fn useless_limits_are_refused() {
        let bad = WorkloadApiConfig {
            max_connections_per_uid: 2000,
            ..WorkloadApiConfig::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("per_uid"));
        assert!(WorkloadApiConfig::default().validate().is_ok());
    }
}
