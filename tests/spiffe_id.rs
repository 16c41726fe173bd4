//! SPIFFE ID and trust domain parsing (SPIFFE-ID.md §2) against the spec vectors in
//! tests/data/spiffe_ids.json, an exhaustive ASCII charset sweep, and property tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use serde::Deserialize;
use writ_verifier::{IdError, parse_spiffe_id, parse_trust_domain};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Vectors {
    #[allow(dead_code)]
    about: String,
    spiffe_ids: IdVectors,
    trust_domains: TrustDomainVectors,
    generated: Vec<Generated>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdVectors {
    valid: Vec<ValidId>,
    invalid: Vec<InvalidId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidId {
    id: String,
    trust_domain: String,
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidId {
    id: String,
    error: Expected,
    why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustDomainVectors {
    valid: Vec<String>,
    invalid: Vec<InvalidTrustDomain>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidTrustDomain {
    name: String,
    error: Expected,
    why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Generated {
    kind: Kind,
    prefix: String,
    fill: String,
    count: usize,
    suffix: String,
    len: usize,
    error: Option<Expected>,
    why: String,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    SpiffeId,
    TrustDomain,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Expected {
    Syntax,
    NotCanonical,
    TooLong,
}

fn vectors() -> Vectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/spiffe_ids.json");
    let text = std::fs::read_to_string(path).expect("read spiffe_ids.json");
    serde_json::from_str(&text).expect("parse spiffe_ids.json")
}

fn kind_of(err: &IdError) -> Expected {
    match err {
        IdError::Syntax { .. } => Expected::Syntax,
        IdError::NotCanonical(_) => Expected::NotCanonical,
        IdError::TooLong => Expected::TooLong,
        other => panic!("unexpected IdError variant: {other:?}"),
    }
}

fn check_id(input: &str, expected: Option<Expected>, why: &str) {
    let shown = if input.len() > 80 {
        format!("{}… ({} bytes)", &input[..60], input.len())
    } else {
        format!("{input:?}")
    };
    match (parse_spiffe_id(input), expected) {
        (Ok(id), None) => assert_eq!(id.to_string(), input, "{shown}: not round-tripped"),
        (Ok(id), Some(e)) => panic!("{shown} ({why}) accepted as {id}, expected {e:?}"),
        (Err(err), None) => panic!("{shown} ({why}) refused: {err}"),
        (Err(err), Some(e)) => assert_eq!(kind_of(&err), e, "{shown} ({why}): {err}"),
    }
}

fn check_trust_domain(input: &str, expected: Option<Expected>, why: &str) {
    match (parse_trust_domain(input), expected) {
        (Ok(td), None) => assert_eq!(td.as_str(), input, "{input:?}: not round-tripped"),
        (Ok(td), Some(e)) => panic!("{input:?} ({why}) accepted as {td}, expected {e:?}"),
        (Err(err), None) => panic!("{input:?} ({why}) refused: {err}"),
        (Err(err), Some(e)) => assert_eq!(kind_of(&err), e, "{input:?} ({why}): {err}"),
    }
}

#[test]
fn valid_spiffe_ids_parse_and_round_trip() {
    let v = vectors();
    assert!(
        v.spiffe_ids.valid.len() >= 10,
        "vector file lost its valid IDs"
    );
    for case in &v.spiffe_ids.valid {
        let id = parse_spiffe_id(&case.id).unwrap_or_else(|e| panic!("{:?} refused: {e}", case.id));
        assert_eq!(id.to_string(), case.id);
        assert_eq!(id.trust_domain().as_str(), case.trust_domain, "{}", case.id);
        assert_eq!(id.path(), case.path, "{}", case.id);
        // The trust domain of every valid ID is a valid trust domain name on its own.
        check_trust_domain(&case.trust_domain, None, "trust domain of a valid ID");
    }
}

#[test]
fn invalid_spiffe_ids_are_refused_with_the_right_error() {
    let v = vectors();
    assert!(
        v.spiffe_ids.invalid.len() >= 40,
        "vector file lost its invalid IDs"
    );
    for case in &v.spiffe_ids.invalid {
        check_id(&case.id, Some(case.error), &case.why);
    }
}

#[test]
fn trust_domain_vectors() {
    let v = vectors();
    for name in &v.trust_domains.valid {
        check_trust_domain(name, None, "valid vector");
    }
    for case in &v.trust_domains.invalid {
        check_trust_domain(&case.name, Some(case.error), &case.why);
    }
}

#[test]
fn generated_length_vectors() {
    let v = vectors();
    assert!(!v.generated.is_empty());
    for case in &v.generated {
        let input = format!(
            "{}{}{}",
            case.prefix,
            case.fill.repeat(case.count),
            case.suffix
        );
        assert_eq!(input.len(), case.len, "{}: vector arithmetic", case.why);
        match case.kind {
            Kind::SpiffeId => check_id(&input, case.error, &case.why),
            Kind::TrustDomain => check_trust_domain(&input, case.error, &case.why),
        }
    }
}

fn path_byte_allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn trust_domain_byte_allowed(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

#[test]
fn every_ascii_byte_in_a_path_segment() {
    // '/' is the separator, not segment content: "a/b" is two valid segments.
    for b in (0u8..=127).filter(|b| *b != b'/') {
        let input = format!("spiffe://example.org/a{}b", b as char);
        let expected = (!path_byte_allowed(b)).then_some(Expected::Syntax);
        check_id(
            &input,
            expected,
            &format!("byte 0x{b:02x} in a path segment"),
        );
    }
}

#[test]
fn every_ascii_byte_in_a_trust_domain() {
    for b in (0u8..=127).filter(|b| *b != b'/') {
        let name = format!("ex{}mple.org", b as char);
        let expected = if trust_domain_byte_allowed(b) {
            None
        } else if b.is_ascii_uppercase() {
            Some(Expected::NotCanonical)
        } else {
            Some(Expected::Syntax)
        };
        let why = format!("byte 0x{b:02x} in a trust domain");
        check_trust_domain(&name, expected, &why);
        check_id(&format!("spiffe://{name}/x"), expected, &why);
    }
}

#[test]
fn leaf_ids_need_a_path_but_trust_domain_ids_do_not() {
    // SPIFFE-ID.md: spiffe://td alone is the trust domain's ID, valid as an ID; only a
    // leaf SVID needs a path (X509-SVID.md §2). writ-verifier's leaf check enforces it.
    let td_id = parse_spiffe_id("spiffe://example.org").expect("trust domain ID");
    assert!(td_id.path().is_empty());
    let leaf = parse_spiffe_id("spiffe://example.org/w").expect("leaf ID");
    assert_eq!(leaf.path(), "/w");
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,16}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
}

fn trust_domain_name() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

proptest! {
    #[test]
    fn ids_built_from_valid_parts_parse_and_round_trip(
        td in trust_domain_name(),
        segments in prop::collection::vec(segment(), 0..8),
    ) {
        let path: String = segments.iter().map(|s| format!("/{s}")).collect();
        let input = format!("spiffe://{td}{path}");
        let id = parse_spiffe_id(&input).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(id.to_string(), input);
        prop_assert_eq!(id.trust_domain().as_str(), td.as_str());
        prop_assert_eq!(id.path(), path.as_str());
        prop_assert!(parse_trust_domain(&td).is_ok());
    }

    #[test]
    fn one_foreign_byte_in_a_segment_is_refused(
        before in "[A-Za-z0-9]{0,8}",
        bad in any::<char>().prop_filter("not path charset, not '/'", |c| {
            *c != '/' && !(c.is_ascii() && path_byte_allowed(*c as u8))
        }),
        after in "[A-Za-z0-9]{0,8}",
    ) {
        let input = format!("spiffe://example.org/{before}{bad}{after}");
        prop_assert!(parse_spiffe_id(&input).is_err(), "{:?} accepted", input);
    }

    #[test]
    fn uppercase_in_the_trust_domain_is_never_silently_lowered(
        td in "[a-z]{1,10}\\.[a-z]{1,5}",
        index in any::<prop::sample::Index>(),
    ) {
        let mut bytes = td.clone().into_bytes();
        let letters: Vec<usize> = (0..bytes.len()).filter(|i| bytes[*i].is_ascii_lowercase()).collect();
        let i = letters[index.index(letters.len())];
        bytes[i] = bytes[i].to_ascii_uppercase();
        let upper = String::from_utf8(bytes).unwrap();
        prop_assert!(
            matches!(parse_trust_domain(&upper), Err(IdError::NotCanonical(_))),
            "{:?}", upper
        );
        let id = format!("spiffe://{upper}/x");
        prop_assert!(
            matches!(parse_spiffe_id(&id), Err(IdError::NotCanonical(_))),
            "{:?}", id
        );
    }
}
