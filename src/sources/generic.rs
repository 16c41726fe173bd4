//! writ's own webhook body, for any tool without a parser of its own (Grafana IRM, Jira
//! automation, in-house tools), signature already checked, into a [`SourceEvent`].
//!
//! The body is one JSON object:
//!
//! ```json
//! {
//!   "incident_id": "INC-2291",
//!   "action": "open",
//!   "service": "checkout",
//!   "severity": "SEV2",
//!   "title": "Checkout is returning 502s",
//!   "url": "https://irm.example.com/incidents/2291"
//! }
//! ```
//!
//! | field         | required | rules                                                      |
//! |---------------|----------|------------------------------------------------------------|
//! | `incident_id` | yes      | 1 to 128 bytes of printable ASCII, no spaces               |
//! | `action`      | yes      | `"open"`, `"close"`, `"reopen"` or `"severity"`            |
//! | `service`     | no       | as `incident_id`                                           |
//! | `severity`    | for `"severity"` | any UTF-8 up to 1024 bytes, no control characters  |
//! | `title`       | no       | as `severity`                                              |
//! | `url`         | no       | as `severity`                                              |
//!
//! Every value is a JSON string; an optional one may also be `null`, left out, or `""`,
//! which all mean absent. Any other field, a field given twice, or an action not in the
//! list refuses the whole body: this shape is writ's, so a mistake in it is better
//! reported to whoever wrote the sender than guessed at. Too long or badly formed values
//! are refused, never cut. The body is at most 256 KiB. The delivery id is the Standard
//! Webhooks `webhook-id` header, held to the same rules as `incident_id`.
//!
//! `open` starts a writ incident, `close` ends it, `reopen` starts a new writ incident for
//! a source incident that ended, and `severity` changes only its severity.
//!
//! Must never: accept a field or an action it does not know, or let a field past the
//! bounds in [`super`].

use serde::Deserialize;

use super::{Action, ParseError, SourceEvent, SourceKind, bounds};

/// The documented shape, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    incident_id: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// Parses a verified body in writ's own shape (see the module docs).
pub fn parse(body: &[u8], delivery_id: &str) -> Result<SourceEvent, ParseError> {
    bounds::body(body)?;
    let body: Body = bounds::object(body)?;
    let delivery_id = bounds::id("delivery_id", Some(delivery_id.to_owned()))?;
    // Matched by hand rather than by a serde enum, so that an unknown action's text never
    // reaches the error.
    let action = match body.action.as_deref() {
        Some("open") => Action::Open,
        Some("close") => Action::Close,
        Some("reopen") => Action::Reopen,
        Some("severity") => Action::Severity,
        None | Some("") => return Err(ParseError::Missing("action")),
        Some(_) => {
            return Err(ParseError::Malformed(
                "field action is not open, close, reopen or severity".to_owned(),
            ));
        }
    };
    let severity = bounds::text("severity", body.severity)?;
    if action == Action::Severity && severity.is_none() {
        return Err(ParseError::Missing("severity"));
    }
    Ok(SourceEvent {
        source: SourceKind::Generic,
        delivery_id,
        incident_id: bounds::id("incident_id", body.incident_id)?,
        action,
        service: bounds::optional_id("service", body.service)?,
        severity,
        title: bounds::text("title", body.title)?,
        url: bounds::text("url", body.url)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::sources::bounds::tests::{any_text, assert_bounded, is_malformed};
    use crate::sources::{MAX_BODY_BYTES, MAX_ID_BYTES, MAX_TEXT_BYTES};

    fn body(action: &str) -> Value {
        json!({
            "incident_id": "INC-2291",
            "action": action,
            "service": "checkout",
            "severity": "SEV2",
            "title": "Checkout is returning 502s",
            "url": "https://irm.example.com/incidents/2291"
        })
    }

    fn parse_value(body: &Value) -> Result<SourceEvent, ParseError> {
        parse(&serde_json::to_vec(body).unwrap(), "msg_77")
    }

    #[test]
    fn each_action_maps() {
        for (name, action) in [
            ("open", Action::Open),
            ("close", Action::Close),
            ("reopen", Action::Reopen),
            ("severity", Action::Severity),
        ] {
            assert_eq!(
                parse_value(&body(name)).unwrap(),
                SourceEvent {
                    source: SourceKind::Generic,
                    delivery_id: "msg_77".into(),
                    incident_id: "INC-2291".into(),
                    action,
                    service: Some("checkout".into()),
                    severity: Some("SEV2".into()),
                    title: Some("Checkout is returning 502s".into()),
                    url: Some("https://irm.example.com/incidents/2291".into()),
                },
                "{name}"
            );
        }
    }

    #[test]
    fn only_the_id_and_action_are_required() {
        let event =
            parse_value(&json!({"incident_id": "x", "action": "close", "title": null})).unwrap();
        assert_eq!(event.action, Action::Close);
        assert_eq!(
            (event.service, event.severity, event.title, event.url),
            (None, None, None, None)
        );
    }

    #[test]
    fn unknown_actions_and_fields_are_refused() {
        for action in ["Open", "resolve", "ignore", " open"] {
            assert!(is_malformed(parse_value(&body(action))), "{action:?}");
        }
        let mut extra = body("open");
        extra["priority"] = json!("P1");
        assert!(is_malformed(parse_value(&extra)));
        let twice = br#"{"incident_id": "a", "action": "open", "action": "close"}"#;
        assert!(is_malformed(parse(twice, "msg_77")));
    }

    #[test]
    fn missing_or_empty_required_fields_are_refused() {
        for field in ["incident_id", "action"] {
            let mut empty = body("open");
            empty[field] = json!("");
            assert_eq!(parse_value(&empty), Err(ParseError::Missing(field)));
            let mut absent = body("open");
            absent.as_object_mut().unwrap().remove(field);
            assert_eq!(parse_value(&absent), Err(ParseError::Missing(field)));
        }
        let mut no_severity = body("severity");
        no_severity["severity"] = Value::Null;
        assert_eq!(
            parse_value(&no_severity),
            Err(ParseError::Missing("severity"))
        );
        let bytes = serde_json::to_vec(&body("open")).unwrap();
        assert_eq!(parse(&bytes, ""), Err(ParseError::Missing("delivery_id")));
    }

    #[test]
    fn ids_with_spaces_or_controls_are_refused() {
        for bad in ["INC 2291", "INC\u{0}", "INC\u{85}", "INC-2291\n"] {
            for field in ["incident_id", "service"] {
                let mut body = body("open");
                body[field] = json!(bad);
                assert!(is_malformed(parse_value(&body)), "{field} {bad:?}");
            }
            let bytes = serde_json::to_vec(&body("open")).unwrap();
            assert!(is_malformed(parse(&bytes, bad)), "delivery id {bad:?}");
        }
    }

    #[test]
    fn long_fields_are_refused_not_cut() {
        for (field, limit) in [
            ("incident_id", MAX_ID_BYTES),
            ("service", MAX_ID_BYTES),
            ("severity", MAX_TEXT_BYTES),
            ("title", MAX_TEXT_BYTES),
            ("url", MAX_TEXT_BYTES),
        ] {
            let mut body = body("open");
            body[field] = json!("a".repeat(limit));
            assert!(parse_value(&body).is_ok(), "{field} at its bound");
            body[field] = json!("a".repeat(limit + 1));
            assert_eq!(parse_value(&body), Err(ParseError::TooLong(field)));
        }
    }

    #[test]
    fn text_with_control_characters_is_refused() {
        for field in ["severity", "title", "url"] {
            let mut body = body("open");
            body[field] = json!("ok\u{1b}[8m hidden");
            assert!(is_malformed(parse_value(&body)), "{field}");
        }
        let mut unicode = body("open");
        unicode["title"] = json!("Paiement refusé — 支払い");
        assert!(parse_value(&unicode).is_ok());
    }

    #[test]
    fn an_oversized_body_is_refused_before_parsing() {
        assert_eq!(
            parse(&vec![b'x'; MAX_BODY_BYTES + 1], "msg_77"),
            Err(ParseError::TooLarge)
        );
        let mut exact = serde_json::to_vec(&body("open")).unwrap();
        exact.resize(MAX_BODY_BYTES, b'\t');
        assert_eq!(parse(&exact, "msg_77").unwrap().action, Action::Open);
    }

    #[test]
    fn malformed_json_and_wrong_types_are_refused() {
        for bytes in [
            &b""[..],
            b"{",
            b"null",
            b"[\"INC\", \"open\"]",
            b"{\"incident_id\": \"a\",}",
        ] {
            assert!(is_malformed(parse(bytes, "msg_77")), "{bytes:?}");
        }
        for (field, value) in [
            ("incident_id", json!(2291)),
            ("action", json!(true)),
            ("service", json!({"id": "checkout"})),
            ("title", json!(["a"])),
        ] {
            let mut body = body("open");
            body[field] = value;
            assert!(is_malformed(parse_value(&body)), "{field}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(event) = parse(&bytes, "msg_1") {
                assert_bounded(&event);
            }
        }

        #[test]
        fn accepted_events_respect_the_bounds(
            action in prop_oneof![Just("open".to_owned()), Just("severity".to_owned()), ".{0,10}"],
            delivery_id in "[ -~\\x7f]{0,140}",
            incident_id in any_text(),
            service in any_text(),
            severity in any_text(),
            title in any_text(),
            url in any_text(),
        ) {
            let body = json!({
                "incident_id": incident_id, "action": action, "service": service,
                "severity": severity, "title": title, "url": url
            });
            let bytes = serde_json::to_vec(&body).unwrap();
            if let Ok(event) = parse(&bytes, &delivery_id) {
                assert_bounded(&event);
                prop_assert_eq!(Some(event.incident_id.as_str()), incident_id.as_deref());
                prop_assert!(matches!(action.as_str(), "open" | "close" | "reopen" | "severity"));
                if let Some(service) = &event.service {
                    prop_assert!(service.len() <= MAX_ID_BYTES && !service.contains(' '));
                }
            }
        }
    }
}
