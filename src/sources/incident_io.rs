//! incident.io webhook bodies, signature already checked, into a [`SourceEvent`].
//!
//! An incident.io body names its event type and carries the payload under a key of the
//! same name. The two event types writ acts on, and the fields read (everything else is
//! ignored):
//!
//! ```text
//! {"event_type": "public_incident.incident_created_v2",
//!  "public_incident.incident_created_v2": INCIDENT}
//!
//! {"event_type": "public_incident.incident_status_updated_v2",
//!  "public_incident.incident_status_updated_v2":
//!      {"incident": INCIDENT, "new_status": {"category"}}}
//!
//! INCIDENT = {"id", "name", "permalink", "severity": {"name"},
//!             "incident_status": {"category"}, "incident_type": {"name"}}
//! ```
//!
//! A created incident is the incident itself, not wrapped in `{"incident": …}` (the
//! status update is); this follows incident.io's webhook schema (`WebhookIncidentV2`).
//!
//! | event                                   | action                                 |
//! |-----------------------------------------|----------------------------------------|
//! | created, status triage/live/active/paused | [`Action::Open`]                     |
//! | created, any other status               | [`Action::Ignore`]: it is already past its live part (closed, declined, merged, canceled, or a retrospective one in learning/post-incident), or a status writ does not know |
//! | status updated to closed/resolved/declined/merged/canceled | [`Action::Close`]   |
//! | status updated to anything else         | [`Action::Ignore`]                     |
//! | any other event type (private incidents, follow-ups, alerts) | [`Action::Ignore`], naming no incident |
//!
//! The title is the incident's name, the URL its permalink, the severity its severity's
//! name and the service its incident type's name.
//!
//! Must never: open a writ incident for an incident that has already ended, or let a
//! field past the bounds in [`super`] (refused, never cut).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Action, ParseError, SourceEvent, SourceKind, bounds};

/// `public_incident.incident_created_v2`: the payload is the incident.
const CREATED: &str = "public_incident.incident_created_v2";
/// `public_incident.incident_status_updated_v2`: the incident and its new status.
const STATUS_UPDATED: &str = "public_incident.incident_status_updated_v2";

/// Status categories of an incident that is still live: a new one in these opens.
const LIVE: &[&str] = &["triage", "live", "active", "paused"];
/// Status categories that end an incident: a change to one of these closes.
const ENDED: &[&str] = &["closed", "resolved", "declined", "merged", "canceled"];

/// An incident as incident.io's webhooks send it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Incident {
    id: Option<String>,
    name: Option<String>,
    permalink: Option<String>,
    #[serde(deserialize_with = "bounds::nested")]
    severity: Option<Named>,
    #[serde(deserialize_with = "bounds::nested")]
    incident_status: Option<Status>,
    #[serde(deserialize_with = "bounds::nested")]
    incident_type: Option<Named>,
}

/// The payload of a status update.
#[derive(Deserialize, Default)]
#[serde(default)]
struct StatusUpdate {
    #[serde(deserialize_with = "bounds::nested")]
    incident: Option<Incident>,
    #[serde(deserialize_with = "bounds::nested")]
    new_status: Option<Status>,
}

/// A severity or an incident type.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Named {
    name: Option<String>,
}

/// An incident status; writ reads only its category, since names are each
/// organisation's own.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Status {
    category: Option<String>,
}

/// Parses a verified incident.io webhook body. `delivery_id` is the Standard Webhooks
/// `webhook-id` header, checked as an id.
pub fn parse(body: &[u8], delivery_id: &str) -> Result<SourceEvent, ParseError> {
    bounds::body(body)?;
    let mut body: Map<String, Value> = serde_json::from_slice(body).map_err(bounds::malformed)?;
    let delivery_id = bounds::id("delivery_id", Some(delivery_id.to_owned()))?;
    let event_type = match body.remove("event_type") {
        Some(Value::String(event_type)) => Some(event_type),
        Some(Value::Null) | None => None,
        Some(_) => {
            return Err(ParseError::Malformed(
                "field event_type is not a string".to_owned(),
            ));
        }
    };
    let event_type = bounds::id("event_type", event_type)?;
    let payload = body.remove(&event_type);

    let (incident, action) = match event_type.as_str() {
        CREATED => {
            let payload = payload.ok_or(ParseError::Missing(CREATED))?;
            let incident: Incident = bounds::from_object(CREATED, payload)?;
            let category = bounds::id(
                "incident.incident_status.category",
                incident
                    .incident_status
                    .as_ref()
                    .and_then(|s| s.category.clone()),
            )?;
            let action = if LIVE.contains(&category.as_str()) {
                Action::Open
            } else {
                Action::Ignore(format!("{event_type}: status {category}"))
            };
            (incident, action)
        }
        STATUS_UPDATED => {
            let payload = payload.ok_or(ParseError::Missing(STATUS_UPDATED))?;
            let update: StatusUpdate = bounds::from_object(STATUS_UPDATED, payload)?;
            let incident = update.incident.ok_or(ParseError::Missing("incident"))?;
            let category = bounds::id(
                "new_status.category",
                update.new_status.and_then(|s| s.category),
            )?;
            let action = if ENDED.contains(&category.as_str()) {
                Action::Close
            } else {
                Action::Ignore(format!("{event_type}: status {category}"))
            };
            (incident, action)
        }
        _ => {
            return Ok(SourceEvent {
                source: SourceKind::IncidentIo,
                delivery_id,
                incident_id: String::new(),
                action: Action::Ignore(event_type),
                service: None,
                severity: None,
                title: None,
                url: None,
            });
        }
    };

    Ok(SourceEvent {
        source: SourceKind::IncidentIo,
        delivery_id,
        incident_id: bounds::id("incident.id", incident.id)?,
        action,
        service: bounds::text(
            "incident.incident_type.name",
            incident.incident_type.and_then(|t| t.name),
        )?,
        severity: bounds::text(
            "incident.severity.name",
            incident.severity.and_then(|s| s.name),
        )?,
        title: bounds::text("incident.name", incident.name)?,
        url: bounds::text("incident.permalink", incident.permalink)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::sources::bounds::tests::{any_text, assert_bounded, is_malformed};
    use crate::sources::{MAX_BODY_BYTES, MAX_ID_BYTES, MAX_TEXT_BYTES};

    /// An incident in incident.io's documented shape, built here.
    fn incident(category: &str) -> Value {
        json!({
            "id": "01HZX4K9M2",
            "reference": "INC-88",
            "name": "Payments API latency",
            "permalink": "https://app.incident.io/acme/incidents/88",
            "mode": "standard",
            "visibility": "public",
            "severity": {"id": "01SEV", "name": "Major", "rank": 2},
            "incident_status": {"id": "01ST", "name": "Investigating", "category": category},
            "incident_type": {"id": "01TY", "name": "Production outage"}
        })
    }

    fn created(category: &str) -> Value {
        json!({"event_type": CREATED, CREATED: incident(category)})
    }

    fn status_updated(category: &str) -> Value {
        json!({"event_type": STATUS_UPDATED, STATUS_UPDATED: {
            "incident": incident(category),
            "message": "Rolled back the deploy",
            "previous_status": {"id": "01ST", "name": "Fixing", "category": "live"},
            "new_status": {"id": "01ST2", "name": "Closed", "category": category}
        }})
    }

    fn parse_value(body: &Value) -> Result<SourceEvent, ParseError> {
        parse(&serde_json::to_vec(body).unwrap(), "msg_2Kx9")
    }

    #[test]
    fn a_live_created_incident_opens_with_its_fields() {
        assert_eq!(
            parse_value(&created("live")).unwrap(),
            SourceEvent {
                source: SourceKind::IncidentIo,
                delivery_id: "msg_2Kx9".into(),
                incident_id: "01HZX4K9M2".into(),
                action: Action::Open,
                service: Some("Production outage".into()),
                severity: Some("Major".into()),
                title: Some("Payments API latency".into()),
                url: Some("https://app.incident.io/acme/incidents/88".into()),
            }
        );
        for category in ["triage", "active", "paused"] {
            assert_eq!(
                parse_value(&created(category)).unwrap().action,
                Action::Open,
                "{category}"
            );
        }
    }

    #[test]
    fn an_incident_created_already_past_its_live_part_is_ignored() {
        for category in [
            "closed",
            "declined",
            "merged",
            "canceled",
            "learning",
            "post-incident",
            "unheard-of",
        ] {
            let event = parse_value(&created(category)).unwrap();
            assert_eq!(
                event.action,
                Action::Ignore(format!("{CREATED}: status {category}")),
                "{category}"
            );
            assert_eq!(event.incident_id, "01HZX4K9M2");
        }
    }

    #[test]
    fn a_status_update_that_ends_the_incident_closes_it() {
        for category in ["closed", "resolved", "declined", "merged", "canceled"] {
            let event = parse_value(&status_updated(category)).unwrap();
            assert_eq!(event.action, Action::Close, "{category}");
            assert_eq!(event.incident_id, "01HZX4K9M2");
            assert_eq!(event.severity.as_deref(), Some("Major"));
        }
        for category in ["triage", "live", "learning", "post-incident", "paused"] {
            assert_eq!(
                parse_value(&status_updated(category)).unwrap().action,
                Action::Ignore(format!("{STATUS_UPDATED}: status {category}")),
                "{category}"
            );
        }
    }

    #[test]
    fn optional_fields_may_be_absent_or_null() {
        let mut body = created("live");
        let incident = body[CREATED].as_object_mut().unwrap();
        incident.insert("severity".into(), Value::Null);
        incident.remove("incident_type");
        incident.remove("permalink");
        let event = parse_value(&body).unwrap();
        assert_eq!(
            (event.service, event.severity, event.url),
            (None, None, None)
        );
        assert_eq!(event.action, Action::Open);
    }

    #[test]
    fn missing_ids_and_payloads_are_refused() {
        let mut body = created("live");
        body[CREATED]["id"] = json!("");
        assert_eq!(parse_value(&body), Err(ParseError::Missing("incident.id")));
        body[CREATED].as_object_mut().unwrap().remove("id");
        assert_eq!(parse_value(&body), Err(ParseError::Missing("incident.id")));

        let mut body = created("live");
        body.as_object_mut().unwrap().remove(CREATED);
        assert_eq!(parse_value(&body), Err(ParseError::Missing(CREATED)));

        let mut body = status_updated("closed");
        body[STATUS_UPDATED]
            .as_object_mut()
            .unwrap()
            .remove("incident");
        assert_eq!(parse_value(&body), Err(ParseError::Missing("incident")));

        let mut body = status_updated("closed");
        body[STATUS_UPDATED]
            .as_object_mut()
            .unwrap()
            .remove("new_status");
        assert_eq!(
            parse_value(&body),
            Err(ParseError::Missing("new_status.category"))
        );

        assert_eq!(
            parse_value(&json!({"x": 1})),
            Err(ParseError::Missing("event_type"))
        );
        let body = serde_json::to_vec(&created("live")).unwrap();
        assert_eq!(parse(&body, ""), Err(ParseError::Missing("delivery_id")));
    }

    #[test]
    fn ids_with_spaces_or_controls_are_refused() {
        for bad in ["01HZX 4K9M2", "01HZX\u{7}", "01HZX\r\n"] {
            let mut body = created("live");
            body[CREATED]["id"] = json!(bad);
            assert!(is_malformed(parse_value(&body)), "incident id {bad:?}");
            let body = serde_json::to_vec(&created("live")).unwrap();
            assert!(is_malformed(parse(&body, bad)), "delivery id {bad:?}");
        }
        let mut body = created("live");
        body["event_type"] = json!("public_incident.\u{1b}[2J");
        assert!(is_malformed(parse_value(&body)));
    }

    #[test]
    fn long_fields_are_refused_not_cut() {
        let mut body = created("live");
        body[CREATED]["name"] = json!("n".repeat(MAX_TEXT_BYTES + 1));
        assert_eq!(
            parse_value(&body),
            Err(ParseError::TooLong("incident.name"))
        );
        let mut body = created("live");
        body[CREATED]["severity"]["name"] = json!("s".repeat(MAX_TEXT_BYTES + 1));
        assert_eq!(
            parse_value(&body),
            Err(ParseError::TooLong("incident.severity.name"))
        );
        let mut body = created("live");
        body[CREATED]["id"] = json!("i".repeat(MAX_ID_BYTES + 1));
        assert_eq!(parse_value(&body), Err(ParseError::TooLong("incident.id")));
    }

    #[test]
    fn text_with_control_characters_is_refused() {
        let mut body = created("live");
        body[CREATED]["name"] = json!("latency\u{1b}]8;;https://evil\u{7}");
        assert!(is_malformed(parse_value(&body)));
    }

    #[test]
    fn an_oversized_body_is_refused_before_parsing() {
        assert_eq!(
            parse(&vec![b'['; MAX_BODY_BYTES + 1], "msg_2Kx9"),
            Err(ParseError::TooLarge)
        );
        let mut exact = serde_json::to_vec(&created("live")).unwrap();
        exact.resize(MAX_BODY_BYTES, b'\n');
        assert_eq!(parse(&exact, "msg_2Kx9").unwrap().action, Action::Open);
    }

    #[test]
    fn malformed_json_and_wrong_types_are_refused() {
        for body in [&b""[..], b"{\"event_type\":", b"[]", b"\"x\""] {
            assert!(is_malformed(parse(body, "msg_2Kx9")), "{body:?}");
        }
        let mut body = created("live");
        body["event_type"] = json!(["x"]);
        assert!(is_malformed(parse_value(&body)));
        for (field, value) in [
            ("id", json!(12)),
            ("severity", json!("Major")),
            ("incident_status", json!(["live"])),
        ] {
            let mut body = created("live");
            body[CREATED][field] = value;
            assert!(is_malformed(parse_value(&body)), "{field}");
        }
        let mut body = status_updated("closed");
        body[STATUS_UPDATED]["new_status"] = json!("closed");
        assert!(is_malformed(parse_value(&body)));
    }

    #[test]
    fn other_event_types_are_ignored_not_refused() {
        for event_type in [
            "private_incident.incident_created_v2",
            "public_incident.follow_up_created_v2",
            "public_incident.incident_updated_v2",
        ] {
            let body = json!({"event_type": event_type, event_type: {"id": 5, "x": [null]}});
            let event = parse_value(&body).unwrap();
            assert_eq!(event.action, Action::Ignore(event_type.into()));
            assert_eq!(event.incident_id, "");
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
            updated in any::<bool>(),
            delivery_id in "[ -~\\t]{0,140}",
            id in any_text(),
            category in any_text(),
            name in any_text(),
            permalink in any_text(),
            severity in any_text(),
            kind in any_text(),
        ) {
            let incident = json!({
                "id": id, "name": name, "permalink": permalink,
                "severity": {"name": severity},
                "incident_status": {"category": category},
                "incident_type": {"name": kind}
            });
            let body = if updated {
                json!({"event_type": STATUS_UPDATED, STATUS_UPDATED: {
                    "incident": incident, "new_status": {"category": category}
                }})
            } else {
                json!({"event_type": CREATED, CREATED: incident})
            };
            let bytes = serde_json::to_vec(&body).unwrap();
            if let Ok(event) = parse(&bytes, &delivery_id) {
                assert_bounded(&event);
                prop_assert_eq!(Some(event.incident_id.as_str()), id.as_deref());
                prop_assert_eq!(event.delivery_id, delivery_id);
            }
        }
    }
}
