//! A small DER writer for the one structure we build by hand: the X.509-SVID leaf.
//!
//! Why not rcgen for leaves: the claims extension's OID sits under the UUID arc 2.25,
//! whose second arc is a 126-bit integer; rcgen takes OIDs as `&[u64]` arcs and cannot
//! express it. The leaf is a fixed shape (RFC 5280 §4.1) and every byte of it is checked
//! in tests by rustls-webpki, x509-parser, the `spiffe` crate and `openssl verify`.
//! CA certificates, which carry no private extension, are built by rcgen.

/// Appends a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Appends one tag-length-value.
pub(crate) fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    push_len(out, content.len());
    out.extend_from_slice(content);
}

/// Appends a tag whose content is written by `f`.
pub(crate) fn nested(out: &mut Vec<u8>, tag: u8, f: impl FnOnce(&mut Vec<u8>)) {
    let mut content = Vec::with_capacity(128);
    f(&mut content);
    tlv(out, tag, &content);
}

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BOOLEAN: u8 = 0x01;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const OID: u8 = 0x06;
pub(crate) const UTF8_STRING: u8 = 0x0c;
pub(crate) const UTC_TIME: u8 = 0x17;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;

/// Appends a positive INTEGER from big-endian magnitude bytes, minimally encoded.
pub(crate) fn unsigned_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let trimmed = match magnitude.iter().position(|b| *b != 0) {
        Some(i) => &magnitude[i..],
        None => &[0u8][..],
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(out, INTEGER, &content);
}

/// Appends a BIT STRING with no unused bits.
pub(crate) fn bit_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(out, BIT_STRING, &content);
}

/// Appends a time as RFC 5280 §4.1.2.5 demands: UTCTime through 2049, then
/// GeneralizedTime; always UTC with seconds and no fraction.
pub(crate) fn time(out: &mut Vec<u8>, t: time::OffsetDateTime) {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    let rest = format!(
        "{:02}{:02}{:02}{:02}{:02}Z",
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    if (1950..2050).contains(&year) {
        tlv(out, UTC_TIME, format!("{:02}{rest}", year % 100).as_bytes());
    } else {
        tlv(out, GENERALIZED_TIME, format!("{year:04}{rest}").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_use_the_minimal_long_form() {
        let mut out = Vec::new();
        tlv(&mut out, OCTET_STRING, &[7u8; 300]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let mut short = Vec::new();
        tlv(&mut short, OCTET_STRING, &[7u8; 0x7f]);
        assert_eq!(&short[..2], &[0x04, 0x7f]);
        let mut edge = Vec::new();
        tlv(&mut edge, OCTET_STRING, &[7u8; 0x80]);
        assert_eq!(&edge[..3], &[0x04, 0x81, 0x80]);
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        let mut out = Vec::new();
        unsigned_integer(&mut out, &[0, 0, 0x80]);
        assert_eq!(out, [0x02, 0x02, 0x00, 0x80]);
        let mut zero = Vec::new();
        unsigned_integer(&mut zero, &[0, 0]);
        assert_eq!(zero, [0x02, 0x01, 0x00]);
    }

    #[test]
    fn times_switch_encoding_in_2050() {
        let mut utc = Vec::new();
        time(&mut utc, time::macros::datetime!(2049-12-31 23:59:59 UTC));
        assert_eq!(&utc[2..], b"491231235959Z");
        assert_eq!(utc[0], UTC_TIME);
        let mut gen_time = Vec::new();
        time(
            &mut gen_time,
            time::macros::datetime!(2050-01-01 00:00:00 UTC),
        );
        assert_eq!(gen_time[0], GENERALIZED_TIME);
        assert_eq!(&gen_time[2..], b"20500101000000Z");
    }
}
