//! What writ does with a verified delivery: the mapping rules of one incident source
//! (`[[incident_source.rule]]`) and [`decide`], a pure function from a delivery, the rules
//! and what is already known of its incident to one [`Decision`]. The caller reads what
//! is known from the store, applies the decision through the registry, and audits it.
//!
//! Rules of the decision:
//! * a delivery already handled (its id seen) does nothing;
//! * a close for an incident writ never opened leaves a tombstone, so a trigger that
//!   arrives late opens nothing;
//! * an open that matches no rule is refused, never guessed;
//! * ids are never reused: the first writ incident for source incident `X` is
//!   `PREFIX-X`, each reopening after a close is `PREFIX-X-r2`, `PREFIX-X-r3`, …

use super::{Action, SourceEvent};
use crate::policy::Severity;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One mapping rule: which source service it is for and what a writ incident opened from
/// it holds.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The source's service, team or incident type this rule is for; `*` for any.
    pub service: String,
    /// The writ agents (profiles) assigned to the incident.
    pub assign: BTreeSet<String>,
    /// The incident's scopes.
    #[serde(default)]
    pub scopes: BTreeSet<String>,
    /// Source severity names (PagerDuty priority or urgency, incident.io severity) to
    /// writ severities.
    #[serde(default)]
    pub severity: BTreeMap<String, Severity>,
    /// The severity of an incident whose source severity is missing or not in `severity`.
    #[serde(default = "default_severity")]
    pub default_severity: Severity,
    /// The longest the incident may be open (`"4h"`; writ's default for incidents if
    /// unset). Never past the server's `max_incident_lifetime`.
    #[serde(default)]
    pub max_lifetime: Option<crate::ttl::Ttl>,
}

fn default_severity() -> Severity {
    Severity::Sev3
}

impl Rule {
    fn matches(&self, service: Option<&str>) -> bool {
        self.service == "*" || service == Some(self.service.as_str())
    }

    fn severity_of(&self, source: Option<&str>) -> Severity {
        source
            .and_then(|name| self.severity.get(name))
            .copied()
            .unwrap_or(self.default_severity)
    }
}

/// What is already known of one source incident, read from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// This delivery's id was handled before.
    pub delivery_seen: bool,
    /// A close arrived before any open: nothing is to be opened for it.
    pub tombstone: bool,
    /// The writ incidents opened for it, oldest first, and whether each is still open.
    pub opened: Vec<(String, bool)>,
}

/// The most delivery ids kept per source incident for dedupe: a source sends a handful
/// per incident (trigger, acknowledgements, priority changes, resolve), so older ones
/// than these are long past any retry.
pub const MAX_DELIVERIES_KEPT: usize = 64;

/// What the store keeps of one source incident: the writ incidents opened for it, whether
/// it ended before writ opened anything, and the deliveries already handled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceIncident {
    /// The tenant of the writ incidents.
    pub tenant: String,
    /// The configured source's name.
    pub source: String,
    /// The source's incident id.
    pub incident_id: String,
    /// It ended before any open was heard.
    #[serde(default)]
    pub tombstone: bool,
    /// The writ incidents opened for it, oldest first.
    #[serde(default)]
    pub opened: Vec<String>,
    /// The latest handled delivery ids, oldest first, at most [`MAX_DELIVERIES_KEPT`].
    #[serde(default)]
    pub deliveries: Vec<String>,
}

impl SourceIncident {
    /// A new row for an incident writ has heard nothing of.
    pub fn new(tenant: &str, source: &str, incident_id: &str) -> SourceIncident {
        SourceIncident {
            tenant: tenant.into(),
            source: source.into(),
            incident_id: incident_id.into(),
            ..SourceIncident::default()
        }
    }

    /// What [`decide`] needs to know for `delivery_id`, `is_open` telling whether a writ
    /// incident is open.
    pub fn known(&self, delivery_id: &str, is_open: impl Fn(&str) -> bool) -> Known {
        Known {
            delivery_seen: self.deliveries.iter().any(|d| d == delivery_id),
            tombstone: self.tombstone,
            opened: self
                .opened
                .iter()
                .map(|id| (id.clone(), is_open(id)))
                .collect(),
        }
    }

    /// This row after `decision` on `delivery_id`; `None` when the decision changes
    /// nothing to keep (a duplicate).
    pub fn after(&self, delivery_id: &str, decision: &Decision) -> Option<SourceIncident> {
        let mut next = self.clone();
        match decision {
            Decision::Duplicate => return None,
            Decision::Open { id, .. } => next.opened.push(id.clone()),
            Decision::Tombstone => next.tombstone = true,
            Decision::Close { .. }
            | Decision::Severity { .. }
            | Decision::Refused(_)
            | Decision::Nothing(_) => {}
        }
        next.deliveries.push(delivery_id.into());
        let over = next.deliveries.len().saturating_sub(MAX_DELIVERIES_KEPT);
        next.deliveries.drain(..over);
        Some(next)
    }

    /// The writ incident id its audit records are filed under: the latest opened, or the
    /// first it would have (so `writ incident timeline` shows refusals too); `None` if the
    /// source's id cannot make one.
    pub fn timeline_id(&self, prefix: &str) -> Option<String> {
        if self.incident_id.is_empty() {
            return None;
        }
        match self.opened.last() {
            Some(id) => Some(id.clone()),
            None => writ_id(prefix, &self.incident_id, 1).ok(),
        }
    }
}

/// What writ does with one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Already handled: nothing changes.
    Duplicate,
    /// Open writ incident `id` under `rule`.
    Open {
        /// The new incident's id.
        id: String,
        /// The agents assigned.
        assign: BTreeSet<String>,
        /// Its scopes.
        scopes: BTreeSet<String>,
        /// Its severity.
        severity: Severity,
        /// Its longest lifetime, if the rule sets one.
        max_lifetime_secs: Option<u64>,
    },
    /// Close writ incident `id`.
    Close {
        /// The open incident.
        id: String,
    },
    /// Remember that the source incident ended before writ opened anything for it.
    Tombstone,
    /// Set the severity of open writ incident `id`.
    Severity {
        /// The open incident.
        id: String,
        /// Its new severity.
        severity: Severity,
    },
    /// Refused, and why (recorded; the source is answered 2xx, it must not retry).
    Refused(String),
    /// Nothing to do, and why (recorded).
    Nothing(String),
}

/// The writ incident id for source incident `source_id`, `generation` 1 for the first
/// and 2, 3, … for reopenings; refused if the result is not a valid incident id.
pub fn writ_id(prefix: &str, source_id: &str, generation: usize) -> Result<String, String> {
    let id = match generation {
        0 | 1 => format!("{prefix}-{source_id}"),
        n => format!("{prefix}-{source_id}-r{n}"),
    };
    crate::policy::check_name("incident", &id)
        .map(|()| id)
        .map_err(|e| e.to_string())
}

/// Decides what one verified delivery does (see the module docs).
pub fn decide(event: &SourceEvent, rules: &[Rule], prefix: &str, known: &Known) -> Decision {
    if known.delivery_seen {
        return Decision::Duplicate;
    }
    let latest = known.opened.last();
    let open_now = latest.filter(|(_, open)| *open).map(|(id, _)| id.clone());
    match &event.action {
        Action::Ignore(why) => Decision::Nothing(format!("nothing to do for {why}")),
        Action::Close => match (open_now, latest) {
            (Some(id), _) => Decision::Close { id },
            (None, Some(_)) => Decision::Nothing("already closed".into()),
            (None, None) if known.tombstone => Decision::Nothing("already ended".into()),
            (None, None) => Decision::Tombstone,
        },
        Action::Severity => match open_now {
            Some(id) => match rule_for(event, rules) {
                Some(rule) => Decision::Severity {
                    id,
                    severity: rule.severity_of(event.severity.as_deref()),
                },
                None => Decision::Refused(unmapped(event)),
            },
            None => Decision::Nothing("no open incident to change".into()),
        },
        Action::Open | Action::Reopen => {
            if known.tombstone && latest.is_none() {
                return Decision::Refused(
                    "the source ended this incident before writ heard it begin".into(),
                );
            }
            if open_now.is_some() {
                return Decision::Nothing("already open".into());
            }
            if latest.is_some() && event.action == Action::Open {
                // A second trigger for an incident that ended: only a reopening opens
                // again.
                return Decision::Nothing("already opened and closed; not reopened".into());
            }
            let Some(rule) = rule_for(event, rules) else {
                return Decision::Refused(unmapped(event));
            };
            match writ_id(prefix, &event.incident_id, known.opened.len() + 1) {
                Ok(id) => Decision::Open {
                    id,
                    assign: rule.assign.clone(),
                    scopes: rule.scopes.clone(),
                    severity: rule.severity_of(event.severity.as_deref()),
                    max_lifetime_secs: rule.max_lifetime.map(|t| t.secs()),
                },
                Err(why) => Decision::Refused(why),
            }
        }
    }
}

/// The first rule, in configuration order, for the delivery's service.
fn rule_for<'a>(event: &SourceEvent, rules: &'a [Rule]) -> Option<&'a Rule> {
    rules.iter().find(|r| r.matches(event.service.as_deref()))
}

fn unmapped(event: &SourceEvent) -> String {
    match &event.service {
        Some(service) => format!("no rule maps service {service:?}"),
        None => "no rule maps an incident without a service".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sources::SourceKind;

    fn event(action: Action, service: Option<&str>, severity: Option<&str>) -> SourceEvent {
        SourceEvent {
            source: SourceKind::PagerDuty,
            delivery_id: "d-1".into(),
            incident_id: "Q1ABC".into(),
            action,
            service: service.map(String::from),
            severity: severity.map(String::from),
            title: Some("checkout 500s".into()),
            url: None,
        }
    }

    fn rules() -> Vec<Rule> {
        vec![Rule {
            service: "PCHECKOUT".into(),
            assign: BTreeSet::from(["triage".to_owned()]),
            scopes: BTreeSet::from(["logs:read".to_owned()]),
            severity: BTreeMap::from([
                ("P1".to_owned(), Severity::Sev1),
                ("high".to_owned(), Severity::Sev2),
            ]),
            default_severity: Severity::Sev4,
            max_lifetime: Some(crate::ttl::Ttl::constant(3600)),
        }]
    }

    #[test]
    fn the_row_remembers_opens_tombstones_and_a_bounded_tail_of_deliveries() {
        let row = SourceIncident::new("default", "pd", "Q1ABC");
        assert_eq!(row.timeline_id("pd").as_deref(), Some("pd-Q1ABC"));
        let open = Decision::Open {
            id: "pd-Q1ABC".into(),
            assign: BTreeSet::from(["triage".to_owned()]),
            scopes: BTreeSet::new(),
            severity: Severity::Sev3,
            max_lifetime_secs: None,
        };
        let row = row.after("d-1", &open).unwrap();
        assert_eq!(row.opened, ["pd-Q1ABC"]);
        let known = row.known("d-1", |id| id == "pd-Q1ABC");
        assert!(known.delivery_seen);
        assert_eq!(known.opened, [("pd-Q1ABC".to_owned(), true)]);
        assert!(!row.known("d-2", |_| false).delivery_seen);
        // A duplicate keeps nothing new.
        assert_eq!(row.after("d-1", &Decision::Duplicate), None);
        let mut tail = row.clone();
        for n in 0..200 {
            tail = tail
                .after(&format!("n-{n}"), &Decision::Nothing("ack".into()))
                .unwrap();
        }
        assert_eq!(tail.deliveries.len(), MAX_DELIVERIES_KEPT);
        assert_eq!(tail.deliveries.last().map(String::as_str), Some("n-199"));
        assert_eq!(tail.opened, ["pd-Q1ABC"]);
        let ended = SourceIncident::new("default", "pd", "Q2")
            .after("d-9", &Decision::Tombstone)
            .unwrap();
        assert!(ended.tombstone && ended.known("d-10", |_| false).tombstone);
        // A source id that cannot be an incident id files under nothing.
        assert_eq!(
            SourceIncident::new("default", "pd", "a/b").timeline_id("pd"),
            None
        );
        // So does an event that names no incident.
        assert_eq!(
            SourceIncident::new("default", "pd", "").timeline_id("pd"),
            None
        );
    }

    #[test]
    fn a_mapped_trigger_opens_and_a_resolve_closes() {
        let open = decide(
            &event(Action::Open, Some("PCHECKOUT"), Some("P1")),
            &rules(),
            "PD",
            &Known::default(),
        );
        assert_eq!(
            open,
            Decision::Open {
                id: "PD-Q1ABC".into(),
                assign: BTreeSet::from(["triage".to_owned()]),
                scopes: BTreeSet::from(["logs:read".to_owned()]),
                severity: Severity::Sev1,
                max_lifetime_secs: Some(3600),
            }
        );
        let known = Known {
            opened: vec![("PD-Q1ABC".into(), true)],
            ..Known::default()
        };
        assert_eq!(
            decide(
                &event(Action::Close, Some("PCHECKOUT"), None),
                &rules(),
                "PD",
                &known
            ),
            Decision::Close {
                id: "PD-Q1ABC".into()
            }
        );
    }

    #[test]
    fn duplicates_unmapped_services_and_ignored_events_change_nothing() {
        let seen = Known {
            delivery_seen: true,
            ..Known::default()
        };
        assert_eq!(
            decide(
                &event(Action::Open, Some("PCHECKOUT"), None),
                &rules(),
                "PD",
                &seen
            ),
            Decision::Duplicate
        );
        assert!(matches!(
            decide(&event(Action::Open, Some("POTHER"), None), &rules(), "PD", &Known::default()),
            Decision::Refused(why) if why.contains("POTHER")
        ));
        assert!(matches!(
            decide(
                &event(Action::Open, None, None),
                &rules(),
                "PD",
                &Known::default()
            ),
            Decision::Refused(_)
        ));
        assert!(matches!(
            decide(&event(Action::Ignore("incident.acknowledged".into()), Some("PCHECKOUT"), None), &rules(), "PD", &Known::default()),
            Decision::Nothing(why) if why.contains("acknowledged")
        ));
        let open = Known {
            opened: vec![("PD-Q1ABC".into(), true)],
            ..Known::default()
        };
        assert!(matches!(
            decide(
                &event(Action::Open, Some("PCHECKOUT"), None),
                &rules(),
                "PD",
                &open
            ),
            Decision::Nothing(_)
        ));
    }

    #[test]
    fn a_resolve_before_its_trigger_leaves_a_tombstone_and_the_late_trigger_opens_nothing() {
        let close = event(Action::Close, Some("PCHECKOUT"), None);
        assert_eq!(
            decide(&close, &rules(), "PD", &Known::default()),
            Decision::Tombstone
        );
        let tomb = Known {
            tombstone: true,
            ..Known::default()
        };
        assert!(matches!(
            decide(&event(Action::Open, Some("PCHECKOUT"), None), &rules(), "PD", &tomb),
            Decision::Refused(why) if why.contains("before")
        ));
        assert!(matches!(
            decide(&close, &rules(), "PD", &tomb),
            Decision::Nothing(_)
        ));
    }

    #[test]
    fn a_reopening_is_a_new_incident_and_ids_are_never_reused() {
        let closed = Known {
            opened: vec![("PD-Q1ABC".into(), false)],
            ..Known::default()
        };
        let reopen = decide(
            &event(Action::Reopen, Some("PCHECKOUT"), Some("high")),
            &rules(),
            "PD",
            &closed,
        );
        assert!(
            matches!(&reopen, Decision::Open { id, severity: Severity::Sev2, .. } if id == "PD-Q1ABC-r2")
        );
        let twice = Known {
            opened: vec![("PD-Q1ABC".into(), false), ("PD-Q1ABC-r2".into(), false)],
            ..Known::default()
        };
        assert!(matches!(
            decide(&event(Action::Reopen, Some("PCHECKOUT"), None), &rules(), "PD", &twice),
            Decision::Open { id, severity: Severity::Sev4, .. } if id == "PD-Q1ABC-r3"
        ));
        // A plain trigger after the close does not reopen.
        assert!(matches!(
            decide(
                &event(Action::Open, Some("PCHECKOUT"), None),
                &rules(),
                "PD",
                &closed
            ),
            Decision::Nothing(_)
        ));
        assert!(matches!(
            decide(
                &event(Action::Close, Some("PCHECKOUT"), None),
                &rules(),
                "PD",
                &closed
            ),
            Decision::Nothing(_)
        ));
    }

    #[test]
    fn severity_changes_apply_to_the_open_incident_only_and_ids_must_be_valid() {
        let open = Known {
            opened: vec![("PD-Q1ABC".into(), true)],
            ..Known::default()
        };
        assert_eq!(
            decide(
                &event(Action::Severity, Some("PCHECKOUT"), Some("P1")),
                &rules(),
                "PD",
                &open
            ),
            Decision::Severity {
                id: "PD-Q1ABC".into(),
                severity: Severity::Sev1
            }
        );
        assert!(matches!(
            decide(
                &event(Action::Severity, Some("PCHECKOUT"), Some("P1")),
                &rules(),
                "PD",
                &Known::default()
            ),
            Decision::Nothing(_)
        ));
        let mut odd = event(Action::Open, Some("PCHECKOUT"), None);
        odd.incident_id = "a/b".into();
        assert!(matches!(
            decide(&odd, &rules(), "PD", &Known::default()),
            Decision::Refused(_)
        ));
        assert_eq!(writ_id("IIO", "01H", 1).unwrap(), "IIO-01H");
        assert!(writ_id("PD", &"x".repeat(200), 1).is_err());
    }
}
