//! Arbitrary client bytes through `AuthorityRewrite`, read in arbitrary chunk sizes.
//!
//! Run: `cargo +nightly fuzz run h2_authority` (from the repository root).
//! Checks that the adapter never panics or stalls, and that a connection it neither
//! rewrote nor gave up on comes out byte for byte as it went in.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use writ::h2_authority::AuthorityRewrite;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Hands out `data` at most `chunk` bytes per read.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&sizes, rest)) = input.split_first() else {
        return;
    };
    // Start with the preface most of the time, so the fuzzer works on frames.
    let mut data = Vec::new();
    if sizes & 0x80 == 0 {
        data.extend_from_slice(PREFACE);
    }
    data.extend_from_slice(rest);
    let chunk = 1 + usize::from(sizes & 0x0f) * 37;
    let read_size = 1 + usize::from((sizes >> 4) & 0x07) * 613;

    let mut io = AuthorityRewrite::new(Chunked {
        data: data.clone(),
        pos: 0,
        chunk,
    });
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut buf = vec![0u8; read_size];
    // Every read of the in-memory stream is ready, so every poll must be too; bound the
    // loop so a stall shows up as a failure rather than a hang.
    for _ in 0..(4 * data.len() + 64) {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut io).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                let stats = io.stats();
                if stats.rewrites() == 0 {
                    assert_eq!(out, data, "bytes changed without a rewrite");
                }
                assert!(stats.fallbacks() <= 1);
                return;
            }
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(e)) => panic!("in-memory read failed: {e}"),
            Poll::Pending => panic!("pending on a ready stream"),
        }
    }
    panic!("no EOF after {} reads", 4 * data.len() + 64);
});
