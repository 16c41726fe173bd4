//! The HPACK Huffman code ([RFC 7541 Appendix B]) as a canonical code built from its 257
//! code lengths, and a bit-at-a-time decoder for it.
//!
//! The code is canonical (codes of one length are consecutive and ordered by symbol), so
//! the lengths alone determine every code; the decode tables are computed at compile time.
//! Only the adapter's few decodes use it (`:authority` values, names of new-name literals,
//! lengths of indexed entries), so a compact decoder beats a large state table here.
//!
//! [RFC 7541 Appendix B]: https://www.rfc-editor.org/rfc/rfc7541#appendix-B

/// Code length in bits of every symbol: the byte values 0–255, then EOS (256).
/// Transcribed from the "len" column of RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    // 0–15
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    // 16–31
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    // 32–47: ' ' ! " # $ % & ' ( ) * + , - . /
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    // 48–63: 0–9 : ; < = > ?
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    // 64–79: @ A–O
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    // 80–95: P–Z [ \ ] ^ _
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    // 96–111: ` a–o
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    // 112–127: p–z { | } ~ DEL
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    // 128–143
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    // 144–159
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    // 160–175
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    // 176–191
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    // 192–207
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    // 208–223
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    // 224–239
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    // 240–255
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    // 256: EOS
    30,
];

const MAX_LEN: usize = 30;
const EOS: u16 = 256;

/// The canonical code in decoding form: for each length, the first code, how many codes
/// have that length, and where their symbols start in `symbols` (sorted by length, then
/// symbol).
struct Canonical {
    first: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    symbols: [u16; 257],
}

const fn canonical() -> Canonical {
    let mut count = [0u32; MAX_LEN + 1];
    let mut i = 0;
    while i < 257 {
        count[CODE_LENGTHS[i] as usize] += 1;
        i += 1;
    }

    let mut first = [0u32; MAX_LEN + 1];
    let mut offset = [0u16; MAX_LEN + 1];
    let mut code = 0u32;
    let mut at = 0u16;
    let mut len = 1;
    while len <= MAX_LEN {
        first[len] = code;
        offset[len] = at;
        code = (code + count[len]) << 1;
        at += count[len] as u16;
        len += 1;
    }

    let mut symbols = [0u16; 257];
    let mut fill = offset;
    let mut sym = 0;
    while sym < 257 {
        let len = CODE_LENGTHS[sym] as usize;
        symbols[fill[len] as usize] = sym as u16;
        fill[len] += 1;
        sym += 1;
    }

    Canonical {
        first,
        count,
        offset,
        symbols,
    }
}

static CODE: Canonical = canonical();

/// Why a Huffman string is not valid ([RFC 7541 Section 5.2]).
///
/// [RFC 7541 Section 5.2]: https://www.rfc-editor.org/rfc/rfc7541#section-5.2
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum HuffmanError {
    /// The string contains the EOS symbol.
    #[error("huffman string contains EOS")]
    Eos,
    /// The final bits are longer than 7 or not a prefix of EOS (all ones).
    #[error("huffman string has invalid padding")]
    Padding,
}

/// Decodes `src`, calling `emit` for each decoded byte.
fn walk(src: &[u8], mut emit: impl FnMut(u8)) -> Result<(), HuffmanError> {
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let first = CODE.first[len];
            if code >= first && code - first < CODE.count[len] {
                let index = usize::from(CODE.offset[len]) + (code - first) as usize;
                match CODE.symbols.get(index) {
                    Some(&EOS) | None => return Err(HuffmanError::Eos),
                    Some(&sym) => emit(sym as u8),
                }
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                // Only EOS is 30 bits long and all its prefixes were checked above, so a
                // full-length miss is the EOS code itself.
                return Err(HuffmanError::Eos);
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (the most significant bits of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

/// Decodes `src` and appends the bytes to `out`.
pub(super) fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    walk(src, |b| out.push(b))
}

/// The length of `src` once decoded, without keeping the bytes.
pub(super) fn decoded_len(src: &[u8]) -> Result<usize, HuffmanError> {
    let mut n = 0usize;
    walk(src, |_| n += 1)?;
    Ok(n)
}

/// The code of every byte value as (code, length), for encoders in tests.
#[cfg(test)]
pub(super) fn codes() -> Vec<(u32, u8)> {
    let mut out = vec![(0u32, 0u8); 257];
    for (len, ((&first, &count), &offset)) in CODE
        .first
        .iter()
        .zip(&CODE.count)
        .zip(&CODE.offset)
        .enumerate()
    {
        for k in 0..count {
            let sym = CODE.symbols[usize::from(offset) + k as usize];
            out[usize::from(sym)] = (first + k, len as u8);
        }
    }
    out
}

/// Huffman-encodes `src` (padding with the EOS prefix), for tests.
#[cfg(test)]
pub(super) fn encode(src: &[u8]) -> Vec<u8> {
    let codes = codes();
    let mut out = Vec::new();
    let mut acc = 0u64;
    let mut bits = 0u32;
    for &b in src {
        let (code, len) = codes[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1u64 << pad) - 1)) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn code_is_complete() {
        // Kraft sum of a complete prefix code is exactly 1.
        let sum: u64 = CODE_LENGTHS
            .iter()
            .map(|&l| 1u64 << (MAX_LEN - usize::from(l)))
            .sum();
        assert_eq!(sum, 1u64 << MAX_LEN);
    }

    #[test]
    fn canonical_codes_match_rfc_samples() {
        // A handful of (symbol, code, length) rows of RFC 7541 Appendix B.
        let rows: &[(usize, u32, u8)] = &[
            (0, 0x1ff8, 13),
            (1, 0x7fffd8, 23),
            (10, 0x3ffffffc, 30),
            (b' ' as usize, 0x14, 6),
            (b'%' as usize, 0x15, 6),
            (b'0' as usize, 0x0, 5),
            (b':' as usize, 0x5c, 7),
            (b'X' as usize, 0xfc, 8),
            (b'Z' as usize, 0xfd, 8),
            (b'\\' as usize, 0x7fff0, 19),
            (b'a' as usize, 0x3, 5),
            (b'~' as usize, 0x1ffd, 13),
            (127, 0xffffffc, 28),
            (128, 0xfffe6, 20),
            (255, 0x3ffffee, 26),
            (256, 0x3fffffff, 30),
        ];
        let codes = codes();
        for &(sym, code, len) in rows {
            assert_eq!(codes[sym], (code, len), "symbol {sym}");
        }
    }

    #[test]
    fn round_trips_all_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        let enc = encode(&all);
        let mut out = Vec::new();
        decode(&enc, &mut out).unwrap();
        assert_eq!(out, all);
        assert_eq!(decoded_len(&enc).unwrap(), 256);
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        // 'a' is 00011 (5 bits); pad with zeros instead of ones.
        assert_eq!(decoded_len(&[0b0001_1000]), Err(HuffmanError::Padding));
        // A whole byte of ones is padding longer than 7 bits.
        assert_eq!(
            decoded_len(&[0b0001_1111, 0xff]),
            Err(HuffmanError::Padding)
        );
        // EOS (30 ones) followed by two padding ones.
        assert_eq!(
            decoded_len(&[0xff, 0xff, 0xff, 0xff]),
            Err(HuffmanError::Eos)
        );
        assert_eq!(decoded_len(&[]), Ok(0));
    }
}
