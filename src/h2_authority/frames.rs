//! The client-to-server HTTP/2 byte stream as a sequence of units ([RFC 9113 Section 4]):
//! the connection preface, frames passed through as they are, and whole header blocks
//! (HEADERS plus CONTINUATION frames) handed to the HPACK model.
//!
//! The scanner decides over a window of bytes that always starts at the beginning of the
//! unit it is looking at; it never needs more than one unit at a time, and holds a header
//! block only up to [`MAX_BLOCK_BYTES`].
//!
//! [RFC 9113 Section 4]: https://www.rfc-editor.org/rfc/rfc9113#section-4

use super::hpack::{HpackError, Model, Outcome};

/// The client connection preface ([RFC 9113 Section 3.4]).
///
/// [RFC 9113 Section 3.4]: https://www.rfc-editor.org/rfc/rfc9113#section-3.4
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(super) const FRAME_HEADER_LEN: usize = 9;

/// Rewritten header blocks are cut into frames no larger than the smallest
/// SETTINGS_MAX_FRAME_SIZE a server may have ([RFC 9113 Section 4.2]).
///
/// [RFC 9113 Section 4.2]: https://www.rfc-editor.org/rfc/rfc9113#section-4.2
pub(super) const MAX_FRAME_PAYLOAD: usize = 16_384;

/// The most a header block may take on the wire (all its frames) before the adapter gives
/// up on the connection and passes it through. hyper's default header list limit is
/// 16 KiB, and h2 closes connections whose decoded list is four times that.
pub(super) const MAX_BLOCK_BYTES: usize = 128 * 1024;

pub(super) const TYPE_HEADERS: u8 = 0x1;
pub(super) const TYPE_PUSH_PROMISE: u8 = 0x5;
pub(super) const TYPE_CONTINUATION: u8 = 0x9;

pub(super) const FLAG_END_STREAM: u8 = 0x1;
pub(super) const FLAG_END_HEADERS: u8 = 0x4;
pub(super) const FLAG_PADDED: u8 = 0x8;
pub(super) const FLAG_PRIORITY: u8 = 0x20;

/// Why the adapter stopped following a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Anomaly {
    /// The connection does not start with the HTTP/2 client preface.
    #[error("not an HTTP/2 client preface")]
    Preface,
    /// A CONTINUATION frame with no header block open.
    #[error("continuation frame outside a header block")]
    StrayContinuation,
    /// Another frame, or another stream's, inside a header block.
    #[error("frame interleaved in a header block")]
    Interleaved,
    /// PUSH_PROMISE, which a client never sends.
    #[error("push promise from a client")]
    PushPromise,
    /// A HEADERS frame h2 refuses before decoding (stream 0, bad padding or priority).
    #[error("malformed headers frame")]
    MalformedHeaders,
    /// A header block larger than the adapter holds.
    #[error("header block over {MAX_BLOCK_BYTES} bytes")]
    TooLarge,
    /// A header block the HPACK model can't follow.
    #[error("hpack: {0}")]
    Hpack(#[from] HpackError),
}

/// What to do with the bytes at the start of the window given to [`Scanner::step`].
#[derive(Debug)]
pub(super) enum Step {
    /// Release the first `n` bytes as they are.
    Pass(usize),
    /// Release the first `len` bytes, which were fixed in place (`fields` values).
    Edited { len: usize, fields: usize },
    /// Drop the first `consumed` bytes and release `frames` instead.
    Replace {
        consumed: usize,
        frames: Vec<u8>,
        fields: usize,
    },
    /// The unit at the start is incomplete; call again with more bytes after these.
    NeedMore,
    /// Stop following the connection: release everything from here on as it is.
    Fallback(Anomaly),
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// In the preface, this many bytes matched.
    Preface(usize),
    /// At a frame header.
    Frame,
    /// Inside a passed-through frame's payload, this many bytes left.
    Skip(usize),
    /// At a header block's HEADERS frame; the frames before offset `next` have been
    /// checked already.
    Block { next: usize },
}

/// A frame header ([RFC 9113 Section 4.1]).
///
/// [RFC 9113 Section 4.1]: https://www.rfc-editor.org/rfc/rfc9113#section-4.1
#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Head {
    fn parse(b: &[u8]) -> Option<Self> {
        match *b {
            [l0, l1, l2, kind, flags, s0, s1, s2, s3, ..] => Some(Self {
                len: usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2),
                kind,
                flags,
                stream: u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]),
            }),
            _ => None,
        }
    }
}

pub(super) fn write_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// The parts of a HEADERS frame's payload ([RFC 9113 Section 6.2]).
///
/// [RFC 9113 Section 6.2]: https://www.rfc-editor.org/rfc/rfc9113#section-6.2
struct HeadersPayload {
    /// The header block fragment, relative to the payload.
    fragment: std::ops::Range<usize>,
    /// Stream dependency, exclusive bit and weight, if the PRIORITY flag is set.
    priority: Option<[u8; 5]>,
}

enum Parsed {
    Headers(HeadersPayload),
    /// The stream depends on itself: h2 resets it without decoding the block.
    SelfDependent,
}

/// Splits a HEADERS payload in the order h2 checks it: padding length, then priority
/// (a self-dependency resets the stream before anything else is looked at), then the
/// padding's size.
fn parse_headers(head: &Head, payload: &[u8]) -> Result<Parsed, Anomaly> {
    if head.stream == 0 {
        return Err(Anomaly::MalformedHeaders);
    }
    let mut start = 0;
    let mut pad = 0;
    if head.flags & FLAG_PADDED != 0 {
        pad = usize::from(*payload.first().ok_or(Anomaly::MalformedHeaders)?);
        start = 1;
    }
    let mut priority = None;
    if head.flags & FLAG_PRIORITY != 0 {
        let p: [u8; 5] = payload
            .get(start..start + 5)
            .and_then(|p| p.try_into().ok())
            .ok_or(Anomaly::MalformedHeaders)?;
        if u32::from_be_bytes([p[0] & 0x7f, p[1], p[2], p[3]]) == head.stream {
            return Ok(Parsed::SelfDependent);
        }
        priority = Some(p);
        start += 5;
    }
    let end = payload
        .len()
        .checked_sub(pad)
        .filter(|&end| end >= start)
        .ok_or(Anomaly::MalformedHeaders)?;
    Ok(Parsed::Headers(HeadersPayload {
        fragment: start..end,
        priority,
    }))
}

/// Cuts a header block into a HEADERS frame and CONTINUATION frames of at most
/// [`MAX_FRAME_PAYLOAD`] bytes each, without padding, keeping END_STREAM and the priority
/// fields, with END_HEADERS on the last frame.
pub(super) fn reframe(stream: u32, flags: u8, priority: Option<[u8; 5]>, block: &[u8]) -> Vec<u8> {
    let frames = block.len() / MAX_FRAME_PAYLOAD + 1;
    let mut out = Vec::with_capacity(block.len() + frames * FRAME_HEADER_LEN + 5);
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let first_len = block.len().min(MAX_FRAME_PAYLOAD - prio_len);
    let (first, mut rest) = block.split_at(first_len);
    let mut head_flags = flags & (FLAG_END_STREAM | FLAG_PRIORITY);
    if rest.is_empty() {
        head_flags |= FLAG_END_HEADERS;
    }
    write_head(
        &mut out,
        first.len() + prio_len,
        TYPE_HEADERS,
        head_flags,
        stream,
    );
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_head(&mut out, chunk.len(), TYPE_CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
        rest = tail;
    }
    out
}

/// Follows the client-to-server stream of one connection.
#[derive(Debug)]
pub(super) struct Scanner {
    state: State,
    hpack: Model,
    /// A multi-frame header block, reassembled (reused between blocks).
    block: Vec<u8>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            state: State::Preface(0),
            hpack: Model::default(),
            block: Vec::new(),
        }
    }
}

impl Scanner {
    /// Looks at `data`, which starts where the previous step left off (or, after
    /// [`Step::NeedMore`], at the same place with more bytes). `data` is never empty.
    pub(super) fn step(&mut self, data: &mut [u8]) -> Step {
        match self.state {
            State::Preface(seen) => {
                let want = &PREFACE[seen..];
                let n = want.len().min(data.len());
                if data[..n] != want[..n] {
                    return Step::Fallback(Anomaly::Preface);
                }
                self.state = if seen + n == PREFACE.len() {
                    State::Frame
                } else {
                    State::Preface(seen + n)
                };
                Step::Pass(n)
            }
            State::Skip(left) => {
                let n = left.min(data.len());
                self.state = if n == left {
                    State::Frame
                } else {
                    State::Skip(left - n)
                };
                Step::Pass(n)
            }
            State::Frame => {
                let Some(head) = Head::parse(data) else {
                    return Step::NeedMore;
                };
                match head.kind {
                    TYPE_HEADERS => {
                        self.state = State::Block { next: 0 };
                        self.block_step(data, 0)
                    }
                    TYPE_CONTINUATION => Step::Fallback(Anomaly::StrayContinuation),
                    TYPE_PUSH_PROMISE => Step::Fallback(Anomaly::PushPromise),
                    _ => {
                        self.state = if head.len == 0 {
                            State::Frame
                        } else {
                            State::Skip(head.len)
                        };
                        Step::Pass(FRAME_HEADER_LEN)
                    }
                }
            }
            State::Block { next } => self.block_step(data, next),
        }
    }

    /// Waits for a whole header block, then hands it to the HPACK model.
    fn block_step(&mut self, data: &mut [u8], mut next: usize) -> Step {
        let Some(first) = Head::parse(data) else {
            return Step::NeedMore;
        };
        loop {
            let Some(head) = data.get(next..).and_then(Head::parse) else {
                self.state = State::Block { next };
                return Step::NeedMore;
            };
            if next > 0 && (head.kind != TYPE_CONTINUATION || head.stream != first.stream) {
                return Step::Fallback(Anomaly::Interleaved);
            }
            let end = next + FRAME_HEADER_LEN + head.len;
            if end > MAX_BLOCK_BYTES {
                return Step::Fallback(Anomaly::TooLarge);
            }
            if end > data.len() {
                self.state = State::Block { next };
                return Step::NeedMore;
            }
            if next == 0 {
                let payload = &data[FRAME_HEADER_LEN..end];
                match parse_headers(&first, payload) {
                    Err(anomaly) => return Step::Fallback(anomaly),
                    Ok(Parsed::SelfDependent) => {
                        // h2 resets the stream and never decodes this block; so neither
                        // do we. A CONTINUATION after it makes h2 close the connection.
                        self.state = State::Frame;
                        return Step::Pass(end);
                    }
                    Ok(Parsed::Headers(_)) => {}
                }
            }
            next = end;
            if head.flags & FLAG_END_HEADERS != 0 {
                break;
            }
        }
        self.state = State::Frame;
        self.finish_block(first, &mut data[..next])
    }

    /// `data` is a complete header block: a HEADERS frame and its CONTINUATION frames.
    fn finish_block(&mut self, first: Head, data: &mut [u8]) -> Step {
        let total = data.len();
        let first_end = FRAME_HEADER_LEN + first.len;
        let payload = match parse_headers(&first, &data[FRAME_HEADER_LEN..first_end]) {
            Ok(Parsed::Headers(p)) => p,
            // Checked in `block_step`.
            Ok(Parsed::SelfDependent) => return Step::Pass(total),
            Err(anomaly) => return Step::Fallback(anomaly),
        };
        let fragment =
            FRAME_HEADER_LEN + payload.fragment.start..FRAME_HEADER_LEN + payload.fragment.end;

        if first_end == total {
            // One frame: follow the block where it lies.
            return match self.hpack.rewrite_block(&mut data[fragment]) {
                Err(e) => Step::Fallback(e.into()),
                Ok(Outcome::Unchanged) => Step::Pass(total),
                Ok(Outcome::Rewritten {
                    fields,
                    rebuilt: None,
                }) => Step::Edited { len: total, fields },
                Ok(Outcome::Rewritten {
                    fields,
                    rebuilt: Some(block),
                }) => Step::Replace {
                    consumed: total,
                    frames: reframe(first.stream, first.flags, payload.priority, &block),
                    fields,
                },
            };
        }

        self.block.clear();
        self.block.extend_from_slice(&data[fragment]);
        let mut at = first_end;
        while let Some(head) = data.get(at..).and_then(Head::parse) {
            let start = at + FRAME_HEADER_LEN;
            at = start + head.len;
            if let Some(fragment) = data.get(start..at) {
                self.block.extend_from_slice(fragment);
            }
        }
        match self.hpack.rewrite_block(&mut self.block) {
            Err(e) => Step::Fallback(e.into()),
            Ok(Outcome::Unchanged) => Step::Pass(total),
            Ok(Outcome::Rewritten { fields, rebuilt }) => {
                let block = rebuilt.as_deref().unwrap_or(&self.block);
                Step::Replace {
                    consumed: total,
                    frames: reframe(first.stream, first.flags, payload.priority, block),
                    fields,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::h2_authority::hpack;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_head(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    fn grpcio_block(value: &[u8]) -> Vec<u8> {
        let mut block = vec![0x83, 0x86, 0x04, 0x02, b'/', b'x', 0x40, 0x0a];
        block.extend_from_slice(b":authority");
        hpack::encode_int(&mut block, 0, 7, value.len());
        block.extend_from_slice(value);
        block
    }

    /// Runs `input` through a fresh scanner in one window, as the adapter's in-place path
    /// would, returning the output bytes.
    fn run(input: &[u8]) -> (Vec<u8>, usize, Option<Anomaly>) {
        let mut s = Scanner::default();
        let mut data = input.to_vec();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut fields = 0;
        while pos < data.len() {
            match s.step(&mut data[pos..]) {
                Step::Pass(n) => {
                    out.extend_from_slice(&data[pos..pos + n]);
                    pos += n;
                }
                Step::Edited { len, fields: f } => {
                    out.extend_from_slice(&data[pos..pos + len]);
                    pos += len;
                    fields += f;
                }
                Step::Replace {
                    consumed,
                    frames,
                    fields: f,
                } => {
                    out.extend_from_slice(&frames);
                    pos += consumed;
                    fields += f;
                }
                Step::NeedMore => break,
                Step::Fallback(a) => {
                    out.extend_from_slice(&data[pos..]);
                    return (out, fields, Some(a));
                }
            }
        }
        out.extend_from_slice(&data[pos..]);
        (out, fields, None)
    }

    #[test]
    fn padded_priority_block_is_reframed_without_padding() {
        let value = vec![b'%'; 20_000];
        let block = grpcio_block(&value);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 1, 200]); // exclusive on stream 1, weight
        payload.extend_from_slice(&block[..10_000]);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            3,
            &payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 3, &block[10_000..]));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[]));
        let (out, fields, anomaly) = run(&input);
        assert_eq!((fields, anomaly), (1, None));

        let mut expect_block = block.clone();
        let n = expect_block.len();
        expect_block[n - value.len()..].fill(b'_');
        let mut expect = PREFACE.to_vec();
        let mut first = vec![0x80, 0, 0, 1, 200];
        first.extend_from_slice(&expect_block[..MAX_FRAME_PAYLOAD - 5]);
        expect.extend(frame(
            TYPE_HEADERS,
            FLAG_PRIORITY | FLAG_END_STREAM,
            3,
            &first,
        ));
        expect.extend(frame(
            TYPE_CONTINUATION,
            FLAG_END_HEADERS,
            3,
            &expect_block[MAX_FRAME_PAYLOAD - 5..],
        ));
        assert_eq!(out, expect);
    }

    #[test]
    fn single_frame_is_fixed_in_place() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(4, 0, 0, &[]));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &grpcio_block(b"a%2Fb"),
        ));
        let (out, fields, anomaly) = run(&input);
        assert_eq!((fields, anomaly), (1, None));
        let mut expect = PREFACE.to_vec();
        expect.extend(frame(4, 0, 0, &[]));
        expect.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &grpcio_block(b"a_2Fb"),
        ));
        assert_eq!(out, expect);
    }

    #[test]
    fn self_dependent_block_is_not_decoded() {
        let mut input = PREFACE.to_vec();
        let mut payload = vec![0, 0, 0, 1, 16];
        payload.extend_from_slice(&grpcio_block(b"a%b"));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PRIORITY | FLAG_END_HEADERS,
            1,
            &payload,
        ));
        // If the block above had been decoded, 62 would be its authority entry; h2 has no
        // entry 62, and neither must the scanner.
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0xbe]));
        let (out, fields, anomaly) = run(&input);
        assert_eq!(fields, 0);
        assert_eq!(anomaly, Some(Anomaly::Hpack(HpackError::Index(62))));
        assert_eq!(out, input);
    }

    #[test]
    fn anomalies_fall_back_verbatim() {
        let cases: Vec<(Vec<u8>, Anomaly)> = vec![
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), Anomaly::Preface),
            (
                [&PREFACE[..], &frame(TYPE_CONTINUATION, 4, 1, &[])].concat(),
                Anomaly::StrayContinuation,
            ),
            (
                [&PREFACE[..], &frame(TYPE_PUSH_PROMISE, 4, 1, &[0, 0, 0, 2])].concat(),
                Anomaly::PushPromise,
            ),
            (
                [
                    &PREFACE[..],
                    &frame(TYPE_HEADERS, 0, 1, &[0x82]),
                    &frame(0, 0, 1, &[]),
                ]
                .concat(),
                Anomaly::Interleaved,
            ),
            (
                [
                    &PREFACE[..],
                    &frame(TYPE_HEADERS, 0, 1, &[0x82]),
                    &frame(TYPE_CONTINUATION, 4, 3, &[]),
                ]
                .concat(),
                Anomaly::Interleaved,
            ),
            (
                [
                    &PREFACE[..],
                    &frame(TYPE_HEADERS, FLAG_PADDED | 4, 1, &[5, 0x82]),
                ]
                .concat(),
                Anomaly::MalformedHeaders,
            ),
            (
                [&PREFACE[..], &frame(TYPE_HEADERS, 4, 0, &[0x82])].concat(),
                Anomaly::MalformedHeaders,
            ),
            (
                [
                    &PREFACE[..],
                    &frame(TYPE_HEADERS, 0, 1, &vec![0x82; MAX_BLOCK_BYTES]),
                ]
                .concat(),
                Anomaly::TooLarge,
            ),
        ];
        for (input, want) in cases {
            let (out, _, anomaly) = run(&input);
            assert_eq!(anomaly, Some(want));
            assert_eq!(out, input);
        }
    }

    #[test]
    fn incomplete_units_need_more() {
        let mut s = Scanner::default();
        let mut data = PREFACE.to_vec();
        assert!(matches!(s.step(&mut data[..10]), Step::Pass(10)));
        assert!(matches!(s.step(&mut data[10..]), Step::Pass(14)));
        let mut f = frame(TYPE_HEADERS, 0, 1, &[0x82]);
        f.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x86]));
        for cut in 0..f.len() {
            let mut s2 = Scanner {
                state: State::Frame,
                ..Scanner::default()
            };
            assert!(
                matches!(s2.step(&mut f[..cut.max(1)]), Step::NeedMore),
                "cut {cut}"
            );
            assert!(
                matches!(s2.step(&mut f), Step::Pass(n) if n == f.len()),
                "cut {cut}"
            );
        }
    }
}
