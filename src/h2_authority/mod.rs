//! Lets grpcio (C-core) clients, and so py-spiffe, talk to a stock tonic server on a Unix
//! socket.
//!
//! grpcio sends the socket path, percent-encoded, as the HTTP/2 `:authority`
//! (`run%2Fwrit%2Fworkload.sock`); h2 parses `:authority` with `http::uri::Authority`,
//! which refuses `%` there, and resets every such stream (hyperium/h2 issue 487). h2 and
//! tonic have no setting for it, so [`AuthorityRewrite`] wraps each accepted stream and
//! rewrites the client-to-server bytes before h2 reads them: every *literal* `:authority`
//! value that `Authority` rejects is re-emitted, same representation and same length, with
//! each octet outside the reg-name set mapped to `_`. Keeping the length keeps HPACK entry
//! sizes, so the adapter's copy of the dynamic table and h2's never part, and later
//! indexed references resolve in h2 to the fixed value.
//!
//! What it owns: following the preface, the frames and the HPACK dynamic table of one
//! connection, exactly as h2's decoder does. What it must never do: change any other byte,
//! buffer more than one header block, or make a connection fail that h2 alone would have
//! served. On anything it does not expect it stops and passes the rest of the connection
//! through as it is (counted in [`Stats::fallbacks`]); the server then behaves as stock.
//!
//! The server-to-client direction is passed through untouched.

mod frames;
mod hpack;
mod huffman;

#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use frames::{Anomaly, Scanner, Step};

/// Counters of what the adapter did, shareable across connections.
#[derive(Debug, Default)]
pub struct Stats {
    rewrites: AtomicU64,
    fallbacks: AtomicU64,
}

impl Stats {
    /// How many `:authority` fields were rewritten.
    pub fn rewrites(&self) -> u64 {
        self.rewrites.load(Ordering::Relaxed)
    }

    /// How many connections stopped being followed and were passed through as they were.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
}

/// An accepted stream whose client-to-server HTTP/2 bytes have unparseable literal
/// `:authority` values fixed; see the [module documentation](self).
///
/// ```no_run
/// # async fn f(listener: tokio::net::UnixListener) -> std::io::Result<()> {
/// use writ::h2_authority::AuthorityRewrite;
/// let (stream, _) = listener.accept().await?;
/// let stream = AuthorityRewrite::new(stream); // then hand it to tonic
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AuthorityRewrite<S> {
    inner: S,
    /// `None` once the connection is passed through.
    scanner: Option<Scanner>,
    /// Bytes read from `inner` but not yet released: the start of an incomplete unit.
    tail: Vec<u8>,
    /// Bytes released but not yet delivered (`out[out_pos..]`).
    out: Vec<u8>,
    out_pos: usize,
    stats: Arc<Stats>,
}

impl<S> AuthorityRewrite<S> {
    /// Wraps a freshly accepted stream, with its own counters.
    pub fn new(inner: S) -> Self {
        Self::with_stats(inner, Arc::default())
    }

    /// Wraps a freshly accepted stream, counting into `stats`.
    pub fn with_stats(inner: S, stats: Arc<Stats>) -> Self {
        Self {
            inner,
            scanner: Some(Scanner::default()),
            tail: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            stats,
        }
    }

    /// The counters this stream adds to.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn fall_back(&mut self, anomaly: Anomaly) {
        self.scanner = None;
        self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(reason = %anomaly, "h2 authority rewrite: passing connection through");
    }

    fn count(&self, fields: usize) {
        self.stats
            .rewrites
            .fetch_add(fields as u64, Ordering::Relaxed);
    }

    /// Scans freshly read bytes where they lie. Returns how many leading bytes can be
    /// released there (some perhaps fixed in place) and where the unreleased rest starts;
    /// a replacement for the bytes in between, if any, is left in `out`.
    fn scan_in_place(&mut self, data: &mut [u8]) -> (usize, usize) {
        let mut pos = 0;
        while pos < data.len() {
            let Some(scanner) = self.scanner.as_mut() else {
                return (data.len(), data.len());
            };
            match scanner.step(&mut data[pos..]) {
                Step::Pass(n) => pos += n,
                Step::Edited { len, fields } => {
                    self.count(fields);
                    pos += len;
                }
                Step::Replace {
                    consumed,
                    frames,
                    fields,
                } => {
                    self.count(fields);
                    self.out = frames;
                    self.out_pos = 0;
                    return (pos, pos + consumed);
                }
                Step::NeedMore => return (pos, pos),
                Step::Fallback(anomaly) => {
                    self.fall_back(anomaly);
                    return (data.len(), data.len());
                }
            }
        }
        (pos, pos)
    }

    /// Scans `tail`, moving everything that can be released to `out`; what stays in
    /// `tail` is an incomplete unit.
    fn scan_tail(&mut self) {
        let mut tail = std::mem::take(&mut self.tail);
        let mut pos = 0;
        while pos < tail.len() {
            let Some(scanner) = self.scanner.as_mut() else {
                self.out.extend_from_slice(&tail[pos..]);
                pos = tail.len();
                break;
            };
            match scanner.step(&mut tail[pos..]) {
                Step::Pass(n) => {
                    self.out.extend_from_slice(&tail[pos..pos + n]);
                    pos += n;
                }
                Step::Edited { len, fields } => {
                    self.count(fields);
                    self.out.extend_from_slice(&tail[pos..pos + len]);
                    pos += len;
                }
                Step::Replace {
                    consumed,
                    frames,
                    fields,
                } => {
                    self.count(fields);
                    self.out.extend_from_slice(&frames);
                    pos += consumed;
                }
                Step::NeedMore => break,
                Step::Fallback(anomaly) => self.fall_back(anomaly),
            }
        }
        tail.drain(..pos);
        self.tail = tail;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // With no room, reading from `inner` would return nothing, which reads as EOF.
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.scanner.is_none() && this.tail.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }

            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let end = buf.filled().len();

            if this.tail.is_empty() {
                // Fast path: scan in the caller's buffer; hold back only an incomplete
                // unit, or what follows a block that had to grow.
                if end == start {
                    return Poll::Ready(Ok(()));
                }
                let (release, rest) = this.scan_in_place(&mut buf.filled_mut()[start..end]);
                this.tail
                    .extend_from_slice(&buf.filled()[start + rest..end]);
                buf.set_filled(start + release);
                if rest > release {
                    // A replacement sits in `out`; what follows it is not scanned yet.
                    this.scan_tail();
                }
                if release > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                // Slow path: a unit straddles reads; collect it in `tail`.
                let fresh = &buf.filled()[start..end];
                if fresh.is_empty() {
                    // EOF inside a unit: hand over what there is; h2 reports the rest.
                    this.scanner = None;
                    this.out.append(&mut this.tail);
                    continue;
                }
                this.tail.extend_from_slice(fresh);
                buf.set_filled(start);
                this.scan_tail();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Keeps the inner stream's connection info (for a `UnixStream`, `UdsConnectInfo` with
/// the peer's SO_PEERCRED), which workload attestation depends on.
impl<S: Connected> Connected for AuthorityRewrite<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
