//! The bounds every parsed field is held to, shared by the three parsers so that a
//! PagerDuty id and a generic one are refused for the same reasons.
//!
//! Must never: cut a field to fit (a shortened id names a different incident), or put
//! text from the body into an error unescaped and unbounded (errors reach logs).

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{MAX_BODY_BYTES, MAX_ID_BYTES, MAX_TEXT_BYTES, ParseError};

/// Refuses a body longer than [`MAX_BODY_BYTES`], before anything parses it.
pub(super) fn body(body: &[u8]) -> Result<(), ParseError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ParseError::TooLarge);
    }
    Ok(())
}

// serde lets a struct be written as a JSON array of its fields, in order. Every shape
// read here is documented as objects, so the helpers below refuse an array where an
// object belongs rather than read it by position.

/// The body as `T`, refused unless it is a JSON object.
pub(super) fn object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ParseError::Malformed(
            "body is not a json object".to_owned(),
        ));
    }
    serde_json::from_slice(body).map_err(malformed)
}

/// A JSON value already parsed as `T`, refused unless it is an object.
pub(super) fn from_object<T: DeserializeOwned>(
    field: &'static str,
    value: Value,
) -> Result<T, ParseError> {
    match value {
        Value::Object(map) => T::deserialize(Value::Object(map)).map_err(malformed),
        _ => Err(ParseError::Malformed(format!(
            "field {field} is not an object"
        ))),
    }
}

/// For `#[serde(deserialize_with)]` on a nested optional struct: an object, `null` or
/// absent (with `#[serde(default)]`), never an array.
pub(super) fn nested<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Map<String, Value>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(map) => T::deserialize(Value::Object(map))
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// A required id: present, not empty, at most [`MAX_ID_BYTES`], and printable ASCII
/// without spaces, because ids end up in SPIFFE-like names, audit records and logs.
pub(super) fn id(field: &'static str, value: Option<String>) -> Result<String, ParseError> {
    match optional_id(field, value)? {
        Some(value) => Ok(value),
        None => Err(ParseError::Missing(field)),
    }
}

/// An id that may be absent; empty counts as absent. Otherwise as [`id`].
pub(super) fn optional_id(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<String>, ParseError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.len() > MAX_ID_BYTES {
        return Err(ParseError::TooLong(field));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::Malformed(format!(
            "field {field} is not printable ascii without spaces"
        )));
    }
    Ok(Some(value))
}

/// Free text (a title, a URL, a severity or type name) that may be absent; empty counts as
/// absent. Any UTF-8 up to [`MAX_TEXT_BYTES`], but no control characters and no
/// bidirectional overrides: both can make a log line or a terminal show something other
/// than what was sent.
pub(super) fn text(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<String>, ParseError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.len() > MAX_TEXT_BYTES {
        return Err(ParseError::TooLong(field));
    }
    if value.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(ParseError::Malformed(format!(
            "field {field} holds a control character"
        )));
    }
    Ok(Some(value))
}

/// The Unicode bidirectional embedding, override and isolate characters (the "Trojan
/// Source" set, CVE-2021-42574).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The longest serde message kept in [`ParseError::Malformed`], in characters.
const MAX_ERROR_CHARS: usize = 200;

/// A serde error as [`ParseError::Malformed`]. serde quotes the offending input in some
/// messages (an unknown field's name, a bad string value), so control characters are
/// escaped and the message is cut: it is a diagnosis, not a field, and may be shortened.
pub(super) fn malformed(error: serde_json::Error) -> ParseError {
    let message = error.to_string();
    let mut escaped = message.chars().flat_map(|c| {
        let escape = c.is_control() || is_bidi_control(c);
        let (plain, escaped) = if escape {
            (None, Some(c.escape_default()))
        } else {
            (Some(c), None)
        };
        plain.into_iter().chain(escaped.into_iter().flatten())
    });
    let mut kept: String = escaped.by_ref().take(MAX_ERROR_CHARS).collect();
    if escaped.next().is_some() {
        kept.push('…');
    }
    ParseError::Malformed(kept)
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::sources::SourceEvent;
    use proptest::prelude::*;

    /// Optional text for the parsers' proptests: absent, any string, printable ASCII, or
    /// around the text bound.
    pub(crate) fn any_text() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            any::<String>().prop_map(Some),
            "[ -~]{0,140}".prop_map(Some),
            (0usize..MAX_TEXT_BYTES + 40).prop_map(|n| Some("x".repeat(n))),
        ]
    }

    /// Whether a parse was refused as malformed.
    pub(crate) fn is_malformed(result: Result<SourceEvent, ParseError>) -> bool {
        matches!(result, Err(ParseError::Malformed(_)))
    }

    /// Asserts that an accepted event holds every bound, whatever body it came from.
    pub(crate) fn assert_bounded(event: &SourceEvent) {
        let is_id = |v: &str| {
            !v.is_empty() && v.len() <= MAX_ID_BYTES && v.bytes().all(|b| b.is_ascii_graphic())
        };
        let is_text = |v: &str| {
            !v.is_empty()
                && v.len() <= MAX_TEXT_BYTES
                && !v.chars().any(|c| c.is_control() || is_bidi_control(c))
        };
        assert!(
            is_id(&event.delivery_id),
            "delivery id {:?}",
            event.delivery_id
        );
        // An ignored event may name no incident; one writ acts on always does.
        if !matches!(event.action, crate::sources::Action::Ignore(_))
            || !event.incident_id.is_empty()
        {
            assert!(
                is_id(&event.incident_id),
                "incident id {:?}",
                event.incident_id
            );
        }
        if let crate::sources::Action::Ignore(why) = &event.action {
            assert!(is_text(why), "ignore reason {why:?}");
        }
        for text in [&event.severity, &event.title, &event.url]
            .into_iter()
            .flatten()
        {
            assert!(is_text(text), "text {text:?}");
        }
        if let Some(service) = &event.service {
            assert!(is_text(service), "service {service:?}");
        }
    }

    #[test]
    fn ids_are_bounded_printable_and_required() {
        assert_eq!(id("x", Some("P1".into())), Ok("P1".into()));
        assert_eq!(id("x", None), Err(ParseError::Missing("x")));
        assert_eq!(id("x", Some(String::new())), Err(ParseError::Missing("x")));
        assert_eq!(
            id("x", Some("a".repeat(MAX_ID_BYTES))),
            Ok("a".repeat(MAX_ID_BYTES))
        );
        assert_eq!(
            id("x", Some("a".repeat(MAX_ID_BYTES + 1))),
            Err(ParseError::TooLong("x"))
        );
        for bad in ["a b", "a\nb", "a\u{7f}", "é", "a\tb"] {
            assert!(
                matches!(id("x", Some(bad.into())), Err(ParseError::Malformed(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn text_is_bounded_and_free_of_controls() {
        assert_eq!(
            text("t", Some("Disk full — café".into())),
            Ok(Some("Disk full — café".into()))
        );
        assert_eq!(text("t", Some(String::new())), Ok(None));
        assert_eq!(
            text("t", Some("a".repeat(MAX_TEXT_BYTES + 1))),
            Err(ParseError::TooLong("t"))
        );
        for bad in ["a\nb", "\u{1b}[31m", "a\u{202e}b", "\u{2066}"] {
            assert!(
                matches!(text("t", Some(bad.into())), Err(ParseError::Malformed(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn serde_messages_are_escaped_and_cut() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        let long = format!("{{\"\\u001b[31m{}\": 1}}", "x".repeat(1000));
        let error = serde_json::from_str::<Empty>(&long).unwrap_err();
        let ParseError::Malformed(message) = malformed(error) else {
            panic!("not malformed");
        };
        assert!(!message.contains('\u{1b}'), "{message}");
        assert!(message.contains("\\u{1b}"), "{message}");
        assert!(message.chars().count() <= MAX_ERROR_CHARS + 1, "{message}");
    }
}
