//! PagerDuty Webhooks v3 bodies, signature already checked, into a [`SourceEvent`].
//!
//! The fields read (everything else in the body is ignored):
//!
//! ```text
//! {"event": {"id", "event_type",
//!            "data": {"id", "type": "incident", "urgency", "priority": {"summary"} | null,
//!                     "title", "html_url", "service": {"id"}}}}
//! ```
//!
//! | `event_type`                | action                 |
//! |-----------------------------|------------------------|
//! | `incident.triggered`        | [`Action::Open`]       |
//! | `incident.resolved`         | [`Action::Close`]      |
//! | `incident.reopened`         | [`Action::Reopen`]     |
//! | `incident.priority_updated` | [`Action::Severity`]   |
//! | anything else               | [`Action::Ignore`] with the event type |
//!
//! Severity is the priority's summary when the incident has one, else its urgency.
//!
//! Must never: act on an event whose `data` is not an incident, or let a field past the
//! bounds in [`super`] (refused, never cut).

use serde::Deserialize;

use super::{Action, ParseError, SourceEvent, SourceKind, bounds};

/// The whole body: one event per delivery.
#[derive(Deserialize)]
struct Body {
    #[serde(default, deserialize_with = "bounds::nested")]
    event: Option<Event>,
}

/// The envelope. `data` stays untyped until the event type says whether writ acts on it:
/// PagerDuty sends other resources (services, notes, responders) in the same envelope,
/// and an event writ ignores must not be refused for having a different shape.
#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `event.data` when it is an incident.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Incident {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    urgency: Option<String>,
    #[serde(deserialize_with = "bounds::nested")]
    priority: Option<Priority>,
    title: Option<String>,
    html_url: Option<String>,
    #[serde(deserialize_with = "bounds::nested")]
    service: Option<Reference>,
}

/// An incident's priority (`null` when it has none).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Priority {
    summary: Option<String>,
}

/// A reference to another PagerDuty object.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Reference {
    id: Option<String>,
}

/// Parses a verified PagerDuty Webhooks v3 body.
///
/// `delivery_id` is the delivery's id from its headers, if the listener has one; when it is
/// empty, `event.id` is used instead (PagerDuty keeps it across retries of one event, so it
/// dedupes as well). Either is checked as an id.
///
/// An event writ ignores still names its incident when its `data` is one; when it is not
/// (a service event, a note), the [`SourceEvent`] has an empty `incident_id` and no other
/// fields.
pub fn parse(body: &[u8], delivery_id: &str) -> Result<SourceEvent, ParseError> {
    bounds::body(body)?;
    let body: Body = bounds::object(body)?;
    let event = body.event.ok_or(ParseError::Missing("event"))?;
    let delivery_id = if delivery_id.is_empty() {
        bounds::id("event.id", event.id)?
    } else {
        bounds::id("delivery_id", Some(delivery_id.to_owned()))?
    };
    let event_type = bounds::id("event.event_type", event.event_type)?;
    let action = match event_type.as_str() {
        "incident.triggered" => Action::Open,
        "incident.resolved" => Action::Close,
        "incident.reopened" => Action::Reopen,
        "incident.priority_updated" => Action::Severity,
        _ => Action::Ignore(event_type),
    };

    let incident = if let Action::Ignore(_) = action {
        let incident = event
            .data
            .and_then(|data| bounds::from_object::<Incident>("event.data", data.into()).ok())
            .filter(|incident| incident.kind.as_deref() == Some("incident"));
        let Some(incident) = incident else {
            return Ok(SourceEvent {
                source: SourceKind::PagerDuty,
                delivery_id,
                incident_id: String::new(),
                action,
                service: None,
                severity: None,
                title: None,
                url: None,
            });
        };
        incident
    } else {
        let data = event.data.ok_or(ParseError::Missing("event.data"))?;
        let incident: Incident = bounds::from_object("event.data", data.into())?;
        match incident.kind.as_deref() {
            Some("incident") => {}
            Some(_) => {
                return Err(ParseError::Malformed(
                    "field event.data.type is not incident".to_owned(),
                ));
            }
            None => return Err(ParseError::Missing("event.data.type")),
        }
        incident
    };

    let priority = bounds::text(
        "event.data.priority.summary",
        incident.priority.and_then(|p| p.summary),
    )?;
    let urgency = bounds::text("event.data.urgency", incident.urgency)?;
    Ok(SourceEvent {
        source: SourceKind::PagerDuty,
        delivery_id,
        incident_id: bounds::id("event.data.id", incident.id)?,
        action,
        service: bounds::optional_id("event.data.service.id", incident.service.and_then(|s| s.id))?,
        severity: priority.or(urgency),
        title: bounds::text("event.data.title", incident.title)?,
        url: bounds::text("event.data.html_url", incident.html_url)?,
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

    /// A v3 body in PagerDuty's documented shape, built here.
    fn delivery(event_type: &str) -> Value {
        json!({"event": {
            "id": "01DEVT7Q2Z",
            "event_type": event_type,
            "resource_type": "incident",
            "occurred_at": "2024-05-01T10:00:00.000Z",
            "agent": null,
            "data": {
                "id": "Q2INC9",
                "type": "incident",
                "self": "https://api.pagerduty.com/incidents/Q2INC9",
                "html_url": "https://acme.pagerduty.com/incidents/Q2INC9",
                "number": 42,
                "status": "triggered",
                "title": "Checkout is returning 502s",
                "urgency": "high",
                "priority": {"id": "PPRI1", "type": "priority_reference", "summary": "P1"},
                "service": {"id": "PSVC77", "type": "service_reference", "summary": "checkout"}
            }
        }})
    }

    fn parse_value(body: &Value) -> Result<SourceEvent, ParseError> {
        parse(&serde_json::to_vec(body).unwrap(), "")
    }

    #[test]
    fn each_incident_event_type_maps_to_its_action() {
        for (event_type, action) in [
            ("incident.triggered", Action::Open),
            ("incident.resolved", Action::Close),
            ("incident.reopened", Action::Reopen),
            ("incident.priority_updated", Action::Severity),
            (
                "incident.acknowledged",
                Action::Ignore("incident.acknowledged".into()),
            ),
            (
                "incident.escalated",
                Action::Ignore("incident.escalated".into()),
            ),
        ] {
            let event = parse_value(&delivery(event_type)).unwrap();
            assert_eq!(
                event,
                SourceEvent {
                    source: SourceKind::PagerDuty,
                    delivery_id: "01DEVT7Q2Z".into(),
                    incident_id: "Q2INC9".into(),
                    action,
                    service: Some("PSVC77".into()),
                    severity: Some("P1".into()),
                    title: Some("Checkout is returning 502s".into()),
                    url: Some("https://acme.pagerduty.com/incidents/Q2INC9".into()),
                },
                "{event_type}"
            );
        }
    }

    #[test]
    fn severity_is_the_priority_else_the_urgency() {
        let mut body = delivery("incident.triggered");
        body["event"]["data"]["priority"] = Value::Null;
        assert_eq!(
            parse_value(&body).unwrap().severity.as_deref(),
            Some("high")
        );
        body["event"]["data"]["priority"] = json!({"summary": ""});
        assert_eq!(
            parse_value(&body).unwrap().severity.as_deref(),
            Some("high")
        );
        body["event"]["data"]
            .as_object_mut()
            .unwrap()
            .remove("urgency");
        assert_eq!(parse_value(&body).unwrap().severity, None);
    }

    #[test]
    fn the_header_delivery_id_wins_over_the_event_id() {
        let body = serde_json::to_vec(&delivery("incident.triggered")).unwrap();
        assert_eq!(parse(&body, "hdr-5").unwrap().delivery_id, "hdr-5");
        assert_eq!(parse(&body, "").unwrap().delivery_id, "01DEVT7Q2Z");
        assert!(matches!(
            parse(&body, "hdr\n5"),
            Err(ParseError::Malformed(_))
        ));
        assert_eq!(
            parse(&body, &"d".repeat(MAX_ID_BYTES + 1)),
            Err(ParseError::TooLong("delivery_id"))
        );
        let mut no_id = delivery("incident.triggered");
        no_id["event"]["id"] = json!("");
        assert_eq!(parse_value(&no_id), Err(ParseError::Missing("event.id")));
    }

    #[test]
    fn a_missing_or_empty_incident_id_is_refused() {
        let mut body = delivery("incident.resolved");
        body["event"]["data"]["id"] = json!("");
        assert_eq!(
            parse_value(&body),
            Err(ParseError::Missing("event.data.id"))
        );
        body["event"]["data"].as_object_mut().unwrap().remove("id");
        assert_eq!(
            parse_value(&body),
            Err(ParseError::Missing("event.data.id"))
        );
        let mut no_type = delivery("incident.resolved");
        no_type["event"]
            .as_object_mut()
            .unwrap()
            .remove("event_type");
        assert_eq!(
            parse_value(&no_type),
            Err(ParseError::Missing("event.event_type"))
        );
        assert_eq!(parse_value(&json!({})), Err(ParseError::Missing("event")));
        let mut no_data = delivery("incident.resolved");
        no_data["event"].as_object_mut().unwrap().remove("data");
        assert_eq!(
            parse_value(&no_data),
            Err(ParseError::Missing("event.data"))
        );
    }

    #[test]
    fn ids_with_spaces_or_controls_are_refused() {
        for bad in ["Q2 INC9", "Q2\u{0}INC9", "Q2\u{1b}INC9", "Q2INC9\n"] {
            let mut body = delivery("incident.triggered");
            body["event"]["data"]["id"] = json!(bad);
            assert!(is_malformed(parse_value(&body)), "incident id {bad:?}");
            let mut body = delivery("incident.triggered");
            body["event"]["data"]["service"]["id"] = json!(bad);
            assert!(is_malformed(parse_value(&body)), "service id {bad:?}");
        }
    }

    #[test]
    fn long_fields_are_refused_not_cut() {
        let mut body = delivery("incident.triggered");
        body["event"]["data"]["title"] = json!("t".repeat(MAX_TEXT_BYTES));
        assert!(parse_value(&body).is_ok());
        body["event"]["data"]["title"] = json!("t".repeat(MAX_TEXT_BYTES + 1));
        assert_eq!(
            parse_value(&body),
            Err(ParseError::TooLong("event.data.title"))
        );
        let mut body = delivery("incident.triggered");
        body["event"]["data"]["id"] = json!("i".repeat(MAX_ID_BYTES + 1));
        assert_eq!(
            parse_value(&body),
            Err(ParseError::TooLong("event.data.id"))
        );
    }

    #[test]
    fn text_with_control_characters_is_refused() {
        let mut body = delivery("incident.triggered");
        body["event"]["data"]["title"] = json!("fine\r\nINFO forged log line");
        assert!(is_malformed(parse_value(&body)));
        let mut body = delivery("incident.triggered");
        body["event"]["data"]["html_url"] = json!("https://x/\u{202e}gpj.exe");
        assert!(is_malformed(parse_value(&body)));
    }

    #[test]
    fn an_oversized_body_is_refused_before_parsing() {
        // Not JSON at all: TooLarge (not Malformed) shows the size is checked first.
        assert_eq!(
            parse(&vec![b'{'; MAX_BODY_BYTES + 1], ""),
            Err(ParseError::TooLarge)
        );
        // A valid body padded to exactly the bound is read.
        let mut exact = serde_json::to_vec(&delivery("incident.triggered")).unwrap();
        exact.resize(MAX_BODY_BYTES, b' ');
        assert_eq!(parse(&exact, "").unwrap().action, Action::Open);
        exact.push(b' ');
        assert_eq!(parse(&exact, ""), Err(ParseError::TooLarge));
    }

    #[test]
    fn malformed_json_and_wrong_types_are_refused() {
        let positional =
            br#"[["01DEVT", "incident.triggered", {"id": "Q2INC9", "type": "incident"}]]"#;
        for body in [
            &b""[..],
            b"{",
            b"null",
            b"[1,2]",
            b"{\"event\": \"x\"}",
            positional,
        ] {
            assert!(is_malformed(parse(body, "")), "{body:?}");
        }
        for (path, value) in [
            ("id", json!(5)),
            ("title", json!(["a"])),
            ("priority", json!("P1")),
            ("service", json!("PSVC77")),
            // An array where an object belongs is not read by position.
            ("service", json!(["PSVC77"])),
            ("priority", json!(["P1"])),
            ("type", json!("service")),
        ] {
            let mut body = delivery("incident.triggered");
            body["event"]["data"][path] = value;
            assert!(is_malformed(parse_value(&body)), "data.{path}");
        }
        let mut body = delivery("incident.triggered");
        body["event"]["event_type"] = json!(7);
        assert!(is_malformed(parse_value(&body)));
    }

    #[test]
    fn unknown_event_types_are_ignored_not_refused() {
        let event = parse_value(&delivery("incident.some_future_event")).unwrap();
        assert_eq!(
            event.action,
            Action::Ignore("incident.some_future_event".into())
        );
        assert_eq!(event.incident_id, "Q2INC9");

        // Data that is not an incident (here a service) is ignored, naming no incident.
        let service = json!({"event": {
            "id": "01DEVT8",
            "event_type": "service.updated",
            "data": {"id": "PSVC77", "type": "service", "name": "checkout", "priority": 3}
        }});
        let event = parse_value(&service).unwrap();
        assert_eq!(event.action, Action::Ignore("service.updated".into()));
        assert_eq!(event.incident_id, "");
        assert_eq!((event.service, event.title), (None, None));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(event) = parse(&bytes, "") {
                assert_bounded(&event);
            }
        }

        #[test]
        fn accepted_events_respect_the_bounds(
            event_type in prop_oneof![
                Just("incident.triggered".to_owned()),
                Just("incident.resolved".to_owned()),
                Just("incident.acknowledged".to_owned()),
                "[ -~]{0,20}",
            ],
            delivery_id in "[ -~\\n]{0,140}",
            id in any_text(),
            service in any_text(),
            urgency in any_text(),
            priority in any_text(),
            title in any_text(),
            url in any_text(),
        ) {
            let body = json!({"event": {
                "id": "01DEVT7Q2Z",
                "event_type": event_type,
                "data": {
                    "id": id, "type": "incident", "urgency": urgency,
                    "priority": {"summary": priority}, "title": title,
                    "html_url": url, "service": {"id": service}
                }
            }});
            let bytes = serde_json::to_vec(&body).unwrap();
            if let Ok(event) = parse(&bytes, &delivery_id) {
                assert_bounded(&event);
                prop_assert_eq!(Some(event.incident_id.as_str()), id.as_deref());
            }
        }
    }
}
