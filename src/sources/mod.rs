//! Incidents from where they live (issue 14, docs/incident-sources.md, not written yet):
//! PagerDuty, incident.io and a generic signed webhook open and close writ incidents.
//!
//! Built so far: the pure parts, each unit-tested. [`signature`] checks a delivery's
//! signature (and, for Standard Webhooks, its timestamp) before anything reads the body;
//! [`pagerduty`], [`incident_io`] and [`generic`] turn a verified body into a [`SourceEvent`];
//! [`rules`] decides what writ does with it (open, close, tombstone, refuse). Not built
//! yet: the configuration blocks, the HTTPS listener, applying a decision through the
//! registry with its audit record, the store of seen deliveries and tombstones, and
//! approver notifications.
//!
//! Must never: read a body before its signature is checked, act on a stale or replayed
//! delivery, or let text from a source reach a log or a human unescaped and unbounded.

mod bounds;
pub mod config;
pub mod generic;
pub mod incident_io;
pub mod pagerduty;
pub mod rules;
pub mod signature;

/// The largest webhook body read, in bytes; a longer one is refused before it is parsed.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// The longest id (a source's incident id, a delivery id, a service id) kept, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// The longest title, URL or severity kept, in bytes; longer text is refused, not cut.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Which kind of source sent a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    /// PagerDuty Webhooks v3.
    PagerDuty,
    /// incident.io (Standard Webhooks signing).
    IncidentIo,
    /// writ's own documented shape, Standard Webhooks signing.
    Generic,
}

impl SourceKind {
    /// The name used in configuration and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::PagerDuty => "pagerduty",
            SourceKind::IncidentIo => "incident-io",
            SourceKind::Generic => "generic",
        }
    }
}

/// What a delivery asks of writ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The incident began: open a writ incident for it.
    Open,
    /// The incident ended (resolved, closed, declined, merged, canceled): close it.
    Close,
    /// An ended incident began again: a new writ incident (ids are never reused).
    Reopen,
    /// Only its severity changed.
    Severity,
    /// Nothing for writ to do (acknowledged, a status that ends nothing, an event type
    /// writ does not act on); says which.
    Ignore(String),
}

/// One delivery, signature checked and body parsed: every field bounded, none trusted
/// beyond its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEvent {
    /// Who sent it.
    pub source: SourceKind,
    /// The delivery's own id (PagerDuty: `event.id`; Standard Webhooks: `webhook-id`), for
    /// dedupe.
    pub delivery_id: String,
    /// The source's incident id.
    pub incident_id: String,
    /// What it asks.
    pub action: Action,
    /// The source's service (PagerDuty `service.id`), team or incident type, as the
    /// mapping rules match it.
    pub service: Option<String>,
    /// The source's severity name (PagerDuty priority summary, else urgency; incident.io
    /// severity name).
    pub severity: Option<String>,
    /// The incident's title.
    pub title: Option<String>,
    /// A link to the incident in the source.
    pub url: Option<String>,
}

/// Why a delivery's body is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Longer than [`MAX_BODY_BYTES`].
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// Not JSON, or not the source's shape.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// A field the event needs is missing or empty.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A field is longer than its bound.
    #[error("field {0} too long")]
    TooLong(&'static str),
}
