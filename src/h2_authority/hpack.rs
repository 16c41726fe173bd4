//! HPACK ([RFC 7541]) as h2's decoder applies it to a client's header blocks: just enough
//! to know, for every field, whether it is an `:authority` literal, and to keep the
//! dynamic table's entry sizes exactly in step with h2.
//!
//! Only three things need the field's bytes: `:authority` values (to check and fix them),
//! names of new-name literals (to know whether they are `:authority`), and values of
//! incremental-indexing literals (only their decoded length, for the entry size). All other
//! strings are skipped by their length prefix, Huffman or not.
//!
//! It must never disagree with h2 about the table while both accept a block: an entry
//! evicted too early or sized wrongly shifts every later index. Where h2 would accept
//! something this model does not (see [`HpackError`]), the caller stops rewriting.
//!
//! [RFC 7541]: https://www.rfc-editor.org/rfc/rfc7541

use std::collections::VecDeque;
use std::ops::Range;

use super::huffman::{self, HuffmanError};

/// The dynamic table limit. h2 and hyper never send SETTINGS_HEADER_TABLE_SIZE, so the
/// protocol default of 4,096 bytes applies ([RFC 7540 Section 6.5.2]).
///
/// [RFC 7540 Section 6.5.2]: https://www.rfc-editor.org/rfc/rfc7540#section-6.5.2
pub(super) const MAX_TABLE_SIZE: usize = 4096;

/// The size of a table entry: name and value lengths plus 32 ([RFC 7541 Section 4.1]).
///
/// [RFC 7541 Section 4.1]: https://www.rfc-editor.org/rfc/rfc7541#section-4.1
pub(super) const fn entry_size(name_len: usize, value_len: usize) -> usize {
    name_len + value_len + 32
}

/// The static table ([RFC 7541 Appendix A]), index 1 first.
///
/// [RFC 7541 Appendix A]: https://www.rfc-editor.org/rfc/rfc7541#appendix-A
pub(super) const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

const STATIC_LEN: usize = STATIC_TABLE.len();
const AUTHORITY: &[u8] = b":authority";

/// Why a header block was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum HpackError {
    /// The block ends inside a representation.
    #[error("header block ends inside a field")]
    Truncated,
    /// An integer uses more octets than h2 accepts.
    #[error("hpack integer too long")]
    IntegerOverflow,
    /// An index points past the static and dynamic tables, or is zero.
    #[error("hpack index {0} out of range")]
    Index(usize),
    /// A dynamic table size update after a field. RFC 7541 forbids it, but h2 accepts
    /// one at the start of a CONTINUATION frame, so the two could disagree.
    #[error("dynamic table size update after a field")]
    LateSizeUpdate,
    /// A dynamic table size update above the limit h2 enforces.
    #[error("dynamic table size update to {0}, above {MAX_TABLE_SIZE}")]
    SizeTooLarge(usize),
    /// A Huffman string that does not decode.
    #[error(transparent)]
    Huffman(#[from] HuffmanError),
}

/// The dynamic table ([RFC 7541 Section 2.3.2]): newest entry first, each with its size
/// and a payload of the caller's choice.
///
/// [RFC 7541 Section 2.3.2]: https://www.rfc-editor.org/rfc/rfc7541#section-2.3.2
#[derive(Debug, Clone)]
pub(super) struct Table<T> {
    entries: VecDeque<(usize, T)>,
    size: usize,
    max_size: usize,
}

impl<T> Table<T> {
    pub(super) fn new(max_size: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// The entry at a combined index (62 is the newest dynamic entry).
    pub(super) fn get(&self, index: usize) -> Option<&T> {
        let at = index.checked_sub(STATIC_LEN + 1)?;
        self.entries.get(at).map(|(_, payload)| payload)
    }

    /// Adds an entry, evicting from the oldest end until it fits; an entry larger than
    /// the whole table empties it and is not added ([RFC 7541 Section 4.4]).
    ///
    /// [RFC 7541 Section 4.4]: https://www.rfc-editor.org/rfc/rfc7541#section-4.4
    pub(super) fn insert(&mut self, size: usize, payload: T) {
        self.evict_to(self.max_size.saturating_sub(size));
        if size <= self.max_size {
            self.size += size;
            self.entries.push_front((size, payload));
        }
    }

    /// Applies a dynamic table size update ([RFC 7541 Section 4.3]).
    ///
    /// [RFC 7541 Section 4.3]: https://www.rfc-editor.org/rfc/rfc7541#section-4.3
    pub(super) fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some((size, _)) => self.size -= size,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    #[cfg(test)]
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// Entries newest first, with their sizes.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &(usize, T)> {
        self.entries.iter()
    }
}

/// A string literal in a block: where its length prefix starts, where its octets are,
/// and whether they are Huffman-coded.
#[derive(Debug, Clone)]
pub(super) struct Str {
    pub(super) start: usize,
    pub(super) data: Range<usize>,
    pub(super) huffman: bool,
}

/// How a literal affects the dynamic table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Indexing {
    /// Literal with incremental indexing: inserted into the table.
    Incremental,
    /// Literal without indexing.
    Without,
    /// Literal never indexed.
    Never,
}

/// Where a literal's name comes from.
#[derive(Debug, Clone)]
pub(super) enum NameRef {
    /// A static or dynamic table entry's name.
    Index(usize),
    /// A string literal.
    Literal(Str),
}

/// One representation of a header block ([RFC 7541 Section 6]).
///
/// [RFC 7541 Section 6]: https://www.rfc-editor.org/rfc/rfc7541#section-6
#[derive(Debug, Clone)]
pub(super) enum Repr {
    Indexed(usize),
    Literal {
        indexing: Indexing,
        name: NameRef,
        value: Str,
    },
    SizeUpdate(usize),
}

/// Walks a complete header block representation by representation.
pub(super) struct Reader<'a> {
    block: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(block: &'a [u8]) -> Self {
        Self { block, pos: 0 }
    }

    fn byte(&mut self) -> Result<u8, HpackError> {
        let b = *self.block.get(self.pos).ok_or(HpackError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// An integer with an N-bit prefix ([RFC 7541 Section 5.1]), limited as h2 limits it:
    /// at most five octets including the prefix octet.
    ///
    /// [RFC 7541 Section 5.1]: https://www.rfc-editor.org/rfc/rfc7541#section-5.1
    fn int(&mut self, prefix_bits: u32) -> Result<usize, HpackError> {
        let mask = (1usize << prefix_bits) - 1;
        let mut value = usize::from(self.byte()?) & mask;
        if value < mask {
            return Ok(value);
        }
        let mut shift = 0;
        for octets in 2..=5 {
            let b = self.byte()?;
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            if octets == 5 {
                break;
            }
        }
        Err(HpackError::IntegerOverflow)
    }

    fn string(&mut self) -> Result<Str, HpackError> {
        let start = self.pos;
        let huffman = self.block.get(self.pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.int(7)?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.block.len())
            .ok_or(HpackError::Truncated)?;
        let data = self.pos..end;
        self.pos = end;
        Ok(Str {
            start,
            data,
            huffman,
        })
    }

    fn literal(&mut self, indexing: Indexing, prefix_bits: u32) -> Result<Repr, HpackError> {
        let index = self.int(prefix_bits)?;
        let name = if index == 0 {
            NameRef::Literal(self.string()?)
        } else {
            NameRef::Index(index)
        };
        let value = self.string()?;
        Ok(Repr::Literal {
            indexing,
            name,
            value,
        })
    }

    fn next_repr(&mut self) -> Result<Repr, HpackError> {
        let first = *self.block.get(self.pos).ok_or(HpackError::Truncated)?;
        if first & 0x80 != 0 {
            Ok(Repr::Indexed(self.int(7)?))
        } else if first & 0x40 != 0 {
            self.literal(Indexing::Incremental, 6)
        } else if first & 0x20 != 0 {
            Ok(Repr::SizeUpdate(self.int(5)?))
        } else if first & 0x10 != 0 {
            self.literal(Indexing::Never, 4)
        } else {
            self.literal(Indexing::Without, 4)
        }
    }
}

impl Iterator for Reader<'_> {
    type Item = Result<Repr, HpackError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.block.len() {
            return None;
        }
        let item = self.next_repr();
        if item.is_err() {
            // Stop after the first error.
            self.pos = self.block.len();
        }
        Some(item)
    }
}

/// What the adapter keeps per dynamic entry: its name's length and whether the name is
/// `:authority`. Values are not kept; an entry's size is kept by the table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Name {
    authority: bool,
    len: usize,
}

/// The result of [`Model::rewrite_block`].
#[derive(Debug)]
pub(super) enum Outcome {
    /// Nothing to fix; the block is untouched.
    Unchanged,
    /// `fields` `:authority` values were fixed. With `rebuilt`, the block had to grow (a
    /// Huffman value became a raw one) and this is the new block; without it, the block
    /// was fixed in place and keeps its length.
    Rewritten {
        fields: usize,
        rebuilt: Option<Vec<u8>>,
    },
}

/// A value to fix: where it is, and, if it was Huffman-coded, its decoded octets.
struct Fix {
    value: Str,
    decoded: Option<Vec<u8>>,
}

/// The adapter's HPACK decoder state for one connection.
#[derive(Debug)]
pub(super) struct Model {
    table: Table<Name>,
    scratch: Vec<u8>,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            table: Table::new(MAX_TABLE_SIZE),
            scratch: Vec::new(),
        }
    }
}

impl Model {
    fn name(&mut self, block: &[u8], name: &NameRef) -> Result<Name, HpackError> {
        match name {
            NameRef::Index(index) => match index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
                Some((name, _)) => Ok(Name {
                    authority: *index == 1,
                    len: name.len(),
                }),
                None => self
                    .table
                    .get(*index)
                    .copied()
                    .ok_or(HpackError::Index(*index)),
            },
            NameRef::Literal(s) => {
                let raw = &block[s.data.clone()];
                if s.huffman {
                    self.scratch.clear();
                    huffman::decode(raw, &mut self.scratch)?;
                    Ok(Name {
                        authority: self.scratch == AUTHORITY,
                        len: self.scratch.len(),
                    })
                } else {
                    Ok(Name {
                        authority: raw == AUTHORITY,
                        len: raw.len(),
                    })
                }
            }
        }
    }

    /// Follows one complete header block through the table, and fixes every literal
    /// `:authority` value that `http::uri::Authority` rejects: same representation, raw
    /// (non-Huffman) octets, same decoded length, each octet outside the reg-name set
    /// replaced by `_`. Keeping the length keeps the entry's size, so h2's table stays
    /// as this model predicts and later indexed references resolve to the fixed value.
    ///
    /// An empty value can't be fixed at the same length and is left as it is.
    pub(super) fn rewrite_block(&mut self, block: &mut [u8]) -> Result<Outcome, HpackError> {
        let mut fixes: Vec<Fix> = Vec::new();
        let mut seen_field = false;
        for repr in Reader::new(block) {
            match repr? {
                Repr::SizeUpdate(size) => {
                    if seen_field {
                        return Err(HpackError::LateSizeUpdate);
                    }
                    if size > MAX_TABLE_SIZE {
                        return Err(HpackError::SizeTooLarge(size));
                    }
                    self.table.set_max_size(size);
                }
                Repr::Indexed(index) => {
                    seen_field = true;
                    if index == 0 || (index > STATIC_LEN && self.table.get(index).is_none()) {
                        return Err(HpackError::Index(index));
                    }
                }
                Repr::Literal {
                    indexing,
                    name,
                    value,
                } => {
                    seen_field = true;
                    let name = self.name(block, &name)?;
                    let raw = &block[value.data.clone()];
                    let value_len = if name.authority {
                        let decoded = if value.huffman {
                            let mut out = Vec::new();
                            huffman::decode(raw, &mut out)?;
                            Some(out)
                        } else {
                            None
                        };
                        let octets = decoded.as_deref().unwrap_or(raw);
                        let len = octets.len();
                        let rejected = len > 0 && http::uri::Authority::try_from(octets).is_err();
                        if rejected {
                            fixes.push(Fix { value, decoded });
                        }
                        len
                    } else if indexing == Indexing::Incremental {
                        if value.huffman {
                            huffman::decoded_len(raw)?
                        } else {
                            raw.len()
                        }
                    } else {
                        0
                    };
                    if indexing == Indexing::Incremental {
                        self.table.insert(entry_size(name.len, value_len), name);
                    }
                }
            }
        }

        if fixes.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        let fields = fixes.len();
        if fixes.iter().all(|f| f.decoded.is_none()) {
            for fix in &fixes {
                block[fix.value.data.clone()]
                    .iter_mut()
                    .for_each(|b| *b = sanitize(*b));
            }
            return Ok(Outcome::Rewritten {
                fields,
                rebuilt: None,
            });
        }

        let mut out = Vec::with_capacity(block.len() + 64);
        let mut copied = 0;
        for fix in &fixes {
            out.extend_from_slice(&block[copied..fix.value.start]);
            let octets = match &fix.decoded {
                Some(decoded) => decoded.as_slice(),
                None => &block[fix.value.data.clone()],
            };
            encode_int(&mut out, 0x00, 7, octets.len());
            out.extend(octets.iter().map(|&b| sanitize(b)));
            copied = fix.value.data.end;
        }
        out.extend_from_slice(&block[copied..]);
        Ok(Outcome::Rewritten {
            fields,
            rebuilt: Some(out),
        })
    }
}

/// Maps an octet outside `A–Z a–z 0–9 - . _ ~ ! $ & ' ( ) * + , ; =` (URI unreserved and
/// sub-delims, [RFC 3986 Section 3.2.2]'s reg-name without percent-encoding) to `_`.
///
/// [RFC 3986 Section 3.2.2]: https://www.rfc-editor.org/rfc/rfc3986#section-3.2.2
pub(super) fn sanitize(b: u8) -> u8 {
    match b {
        b'A'..=b'Z'
        | b'a'..=b'z'
        | b'0'..=b'9'
        | b'-'
        | b'.'
        | b'_'
        | b'~'
        | b'!'
        | b'$'
        | b'&'
        | b'\''
        | b'('
        | b')'
        | b'*'
        | b'+'
        | b','
        | b';'
        | b'=' => b,
        _ => b'_',
    }
}

/// Appends an integer with an N-bit prefix; `flags` are the first octet's high bits.
pub(super) fn encode_int(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: usize) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A decoded header field, for tests.
#[cfg(test)]
pub(super) type Field = (Vec<u8>, Vec<u8>);

/// A full decoder on the same reader and table, for the RFC vectors.
#[cfg(test)]
pub(super) fn decode_full(
    table: &mut Table<Field>,
    block: &[u8],
) -> Result<Vec<Field>, HpackError> {
    let string = |s: &Str| -> Result<Vec<u8>, HpackError> {
        let raw = &block[s.data.clone()];
        if s.huffman {
            let mut out = Vec::new();
            huffman::decode(raw, &mut out)?;
            Ok(out)
        } else {
            Ok(raw.to_vec())
        }
    };
    let lookup = |table: &Table<Field>, index: usize| match index
        .checked_sub(1)
        .and_then(|i| STATIC_TABLE.get(i))
    {
        Some((n, v)) => Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec())),
        None => table.get(index).cloned().ok_or(HpackError::Index(index)),
    };
    let mut fields = Vec::new();
    for repr in Reader::new(block) {
        match repr? {
            Repr::SizeUpdate(size) => table.set_max_size(size),
            Repr::Indexed(index) => fields.push(lookup(table, index)?),
            Repr::Literal {
                indexing,
                name,
                value,
            } => {
                let name = match name {
                    NameRef::Index(index) => lookup(table, index)?.0,
                    NameRef::Literal(s) => string(&s)?,
                };
                let value = string(&value)?;
                if indexing == Indexing::Incremental {
                    table.insert(
                        entry_size(name.len(), value.len()),
                        (name.clone(), value.clone()),
                    );
                }
                fields.push((name, value));
            }
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn table_state(table: &Table<Field>) -> Vec<(usize, String, String)> {
        table
            .iter()
            .map(|(s, (n, v))| {
                (
                    *s,
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect()
    }

    type Vector<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [(usize, &'a str, &'a str)],
        usize,
    );

    /// Runs a sequence of RFC 7541 Appendix C blocks through `decode_full` and through
    /// the adapter's model, checking decoded lists, table entries and sizes.
    fn run(max: usize, vectors: &[Vector<'_>]) {
        let mut table = Table::new(max);
        let mut model = Model {
            table: Table::new(max),
            scratch: Vec::new(),
        };
        for (i, (block, expected, entries, size)) in vectors.iter().enumerate() {
            let bytes = hex(block);
            let decoded = decode_full(&mut table, &bytes).unwrap();
            assert_eq!(decoded, fields(expected), "block {i}");
            let state: Vec<(usize, String, String)> = entries
                .iter()
                .map(|(s, n, v)| (*s, n.to_string(), v.to_string()))
                .collect();
            assert_eq!(table_state(&table), state, "block {i}");
            assert_eq!(table.size(), *size, "block {i}");

            // The adapter's model keeps the same sizes and leaves valid blocks alone.
            let mut copy = bytes.clone();
            assert!(matches!(
                model.rewrite_block(&mut copy).unwrap(),
                Outcome::Unchanged
            ));
            assert_eq!(copy, bytes);
            let sizes: Vec<usize> = model.table.iter().map(|(s, _)| *s).collect();
            let want: Vec<usize> = entries.iter().map(|(s, _, _)| *s).collect();
            assert_eq!(sizes, want, "model sizes, block {i}");
        }
    }

    const C3_1: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    const C3_2: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ];
    const C3_3: &[(&str, &str)] = &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    const C3_T1: &[(usize, &str, &str)] = &[(57, ":authority", "www.example.com")];
    const C3_T2: &[(usize, &str, &str)] = &[
        (53, "cache-control", "no-cache"),
        (57, ":authority", "www.example.com"),
    ];
    const C3_T3: &[(usize, &str, &str)] = &[
        (54, "custom-key", "custom-value"),
        (53, "cache-control", "no-cache"),
        (57, ":authority", "www.example.com"),
    ];

    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        run(
            4096,
            &[
                (
                    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                    C3_1,
                    C3_T1,
                    57,
                ),
                ("8286 84be 5808 6e6f 2d63 6163 6865", C3_2, C3_T2, 110),
                (
                    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
                    C3_3,
                    C3_T3,
                    164,
                ),
            ],
        );
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        run(
            4096,
            &[
                (
                    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                    C3_1,
                    C3_T1,
                    57,
                ),
                ("8286 84be 5886 a8eb 1064 9cbf", C3_2, C3_T2, 110),
                (
                    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                    C3_3,
                    C3_T3,
                    164,
                ),
            ],
        );
    }

    const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const LOC: &str = "https://www.example.com";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

    fn c5_c6(blocks: [&str; 3]) {
        run(
            256,
            &[
                (
                    blocks[0],
                    &[
                        (":status", "302"),
                        ("cache-control", "private"),
                        ("date", DATE1),
                        ("location", LOC),
                    ],
                    &[
                        (63, "location", LOC),
                        (65, "date", DATE1),
                        (52, "cache-control", "private"),
                        (42, ":status", "302"),
                    ],
                    222,
                ),
                (
                    blocks[1],
                    &[
                        (":status", "307"),
                        ("cache-control", "private"),
                        ("date", DATE1),
                        ("location", LOC),
                    ],
                    &[
                        (42, ":status", "307"),
                        (63, "location", LOC),
                        (65, "date", DATE1),
                        (52, "cache-control", "private"),
                    ],
                    222,
                ),
                (
                    blocks[2],
                    &[
                        (":status", "200"),
                        ("cache-control", "private"),
                        ("date", DATE2),
                        ("location", LOC),
                        ("content-encoding", "gzip"),
                        ("set-cookie", COOKIE),
                    ],
                    &[
                        (98, "set-cookie", COOKIE),
                        (52, "content-encoding", "gzip"),
                        (65, "date", DATE2),
                    ],
                    215,
                ),
            ],
        );
    }

    #[test]
    fn rfc7541_c5_responses_with_evictions() {
        c5_c6([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
             3d31",
        ]);
    }

    #[test]
    fn rfc7541_c6_responses_with_huffman_and_evictions() {
        c5_c6([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn integers_round_trip_and_limits() {
        for prefix in 1..=8u32 {
            for value in [0usize, 1, 30, 31, 127, 128, 1337, 4096, 1 << 20] {
                let mut out = Vec::new();
                encode_int(&mut out, 0, prefix, value);
                assert_eq!(Reader::new(&out).int(prefix), Ok(value), "prefix {prefix}");
            }
        }
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        encode_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        // Five continuation octets is more than h2 takes.
        assert_eq!(
            Reader::new(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0x01]).int(7),
            Err(HpackError::IntegerOverflow)
        );
        assert_eq!(
            Reader::new(&[0x7f, 0xff]).int(7),
            Err(HpackError::Truncated)
        );
    }

    #[test]
    fn grpcio_pattern_is_fixed_in_place_and_keeps_sizes() {
        // 0x40: literal with incremental indexing, new name; raw name and value.
        let value = b"run%2Fwrit%2Fworkload.sock";
        let mut block = vec![0x83, 0x86, 0x44, 0x05];
        block.extend_from_slice(b"/a/bc");
        block.push(0x40);
        block.push(AUTHORITY.len() as u8);
        block.extend_from_slice(AUTHORITY);
        block.push(value.len() as u8);
        block.extend_from_slice(value);
        let mut model = Model::default();
        let before = block.clone();
        match model.rewrite_block(&mut block).unwrap() {
            Outcome::Rewritten {
                fields: 1,
                rebuilt: None,
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(block.len(), before.len());
        assert!(block.ends_with(b"run_2Fwrit_2Fworkload.sock"));
        // Newest first: the authority entry, then the :path entry.
        let sizes: Vec<usize> = model.table.iter().map(|(s, _)| *s).collect();
        assert_eq!(sizes, [10 + value.len() + 32, 5 + 5 + 32]);
        // A later indexed reference (62 = the authority entry) is left alone.
        let mut next = vec![0x83, 0x86, 0xbe, 0x04, 0x02, b'/', b'x'];
        assert!(matches!(
            model.rewrite_block(&mut next).unwrap(),
            Outcome::Unchanged
        ));
        // A literal on the dynamic :authority name (index 62) is found and fixed.
        let mut again = vec![0x7e, 0x03, b'a', b'%', b'b'];
        assert!(matches!(
            model.rewrite_block(&mut again).unwrap(),
            Outcome::Rewritten {
                fields: 1,
                rebuilt: None
            }
        ));
        assert_eq!(again, [0x7e, 0x03, b'a', b'_', b'b']);
    }

    #[test]
    fn huffman_authority_is_rebuilt_raw() {
        let value = b"a b%c";
        let enc = huffman::encode(value);
        let mut block = vec![0x01];
        block.push(0x80 | enc.len() as u8);
        block.extend_from_slice(&enc);
        let mut model = Model::default();
        match model.rewrite_block(&mut block).unwrap() {
            Outcome::Rewritten {
                fields: 1,
                rebuilt: Some(out),
            } => assert_eq!(out, [0x01, 0x05, b'a', b'_', b'b', b'_', b'c']),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn valid_and_empty_authorities_are_left() {
        let mut model = Model::default();
        for value in [&b"localhost"[..], b"example.com:8080", b"user@host", b""] {
            let mut block = vec![0x41, value.len() as u8];
            block.extend_from_slice(value);
            assert!(matches!(
                model.rewrite_block(&mut block).unwrap(),
                Outcome::Unchanged
            ));
        }
    }

    #[test]
    fn rejects_what_h2_would_treat_differently() {
        let mut model = Model::default();
        assert_eq!(
            model.rewrite_block(&mut [0x82, 0x20]).unwrap_err(),
            HpackError::LateSizeUpdate
        );
        let mut big = Vec::new();
        encode_int(&mut big, 0x20, 5, 4097);
        assert_eq!(
            model.rewrite_block(&mut big).unwrap_err(),
            HpackError::SizeTooLarge(4097)
        );
        assert_eq!(
            model.rewrite_block(&mut [0xbe]).unwrap_err(),
            HpackError::Index(62)
        );
        assert_eq!(
            model.rewrite_block(&mut [0x80]).unwrap_err(),
            HpackError::Index(0)
        );
        assert_eq!(
            model.rewrite_block(&mut [0x41, 0x05, b'a']).unwrap_err(),
            HpackError::Truncated
        );
    }

    #[test]
    fn sanitized_values_are_accepted() {
        let all: Vec<u8> = (0..=255u8).map(sanitize).collect();
        assert!(http::uri::Authority::try_from(&all[..]).is_ok());
        for b in 0..=255u8 {
            assert!(
                http::uri::Authority::try_from(&[sanitize(b)][..]).is_ok(),
                "{b}"
            );
        }
    }

    #[test]
    fn oversized_entry_empties_the_table() {
        let mut t = Table::new(100);
        t.insert(60, 1);
        t.insert(40, 2);
        assert_eq!(t.size(), 100);
        t.insert(50, 3); // evicts 1 (the oldest), keeps 2
        assert_eq!(t.iter().map(|e| e.1).collect::<Vec<_>>(), [3, 2]);
        t.insert(101, 4);
        assert_eq!(t.size(), 0);
        assert_eq!(t.iter().count(), 0);
        t.insert(10, 5);
        t.set_max_size(0);
        assert_eq!(t.size(), 0);
    }
}
