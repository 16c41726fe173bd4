//! Prometheus metrics (docs/metrics.md): one [`Metrics`] per process, holding the
//! registry and typed handles that the parts which count are given (the `Issuer` and the
//! `Agent` each hold an `Arc`; `writ dev` gives both the same one). [`http`] serves it.
//!
//! Counting is an atomic add (a family's series are made once, here, so the hot path
//! never takes the family's write lock); a histogram observation takes the lock
//! prometheus-client keeps per histogram. What can be read from state that already exists
//! (CA authorities, audit counters, open streams) is not counted twice: those parts
//! register a [`Collector`] that reads it at scrape time, so it is never stale.
//!
//! Labels are bounded by construction: every label value here is a `&'static str` from a
//! fixed set (bands, SVID kinds, refusal reasons, attestation kinds, outcomes). Must
//! never: take an incident id, a SPIFFE ID, a serial or any caller text as a label value.
//! This module uses nothing else of the crate, so every part may use it.

pub mod http;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Duration;

/// The bands' label values, and the one for an identity of no band writ holds.
pub const BANDS: [&str; 4] = ["investigative", "remediation", "base", UNKNOWN_BAND];
/// The band label of a refusal whose identity is in no trust domain writ holds.
pub const UNKNOWN_BAND: &str = "unknown";

/// An SVID's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SvidKind {
    /// An X.509-SVID.
    X509,
    /// A JWT-SVID.
    Jwt,
}

impl SvidKind {
    const ALL: [SvidKind; 2] = [SvidKind::X509, SvidKind::Jwt];

    fn as_str(self) -> &'static str {
        match self {
            SvidKind::X509 => "x509",
            SvidKind::Jwt => "jwt",
        }
    }
}

/// Why the issuer refused to sign: its error kinds, one label value each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Policy gives no workload the identity now.
    NotEntitled,
    /// The CA refused the request or failed.
    Ca,
    /// The issuance could not be audited.
    Audit,
    /// This server cannot prove its policy current (docs/ha.md).
    NotCurrent,
}

impl DenyReason {
    const ALL: [DenyReason; 4] = [
        DenyReason::NotEntitled,
        DenyReason::Ca,
        DenyReason::Audit,
        DenyReason::NotCurrent,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DenyReason::NotEntitled => "not_entitled",
            DenyReason::Ca => "ca",
            DenyReason::Audit => "audit",
            DenyReason::NotCurrent => "not_current",
        }
    }
}

/// What kind of attestation failed: a node's, on the server, or a workload's, on the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttestationKind {
    /// A node with a join token.
    JoinToken,
    /// A node by x509pop.
    X509Pop,
    /// A node by Kubernetes projected service-account token.
    K8sPsat,
    /// A workload, from its socket's kernel credentials.
    Unix,
    /// A workload's pod, from the kubelet.
    K8s,
}

impl AttestationKind {
    const ALL: [AttestationKind; 5] = [
        AttestationKind::JoinToken,
        AttestationKind::X509Pop,
        AttestationKind::K8sPsat,
        AttestationKind::Unix,
        AttestationKind::K8s,
    ];

    fn as_str(self) -> &'static str {
        match self {
            AttestationKind::JoinToken => "join_token",
            AttestationKind::X509Pop => "x509pop",
            AttestationKind::K8sPsat => "k8s_psat",
            AttestationKind::Unix => "unix",
            AttestationKind::K8s => "k8s",
        }
    }
}

/// What became of an incident source's webhook delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryOutcome {
    /// Decided and answered 200 (a refused decision included: it was handled).
    Handled,
    /// Signature or timestamp missing or wrong (401).
    Unauthenticated,
    /// Signed, but not a body writ can read, or too large (400, 413).
    Malformed,
    /// Over the tenant's limits (429).
    RateLimited,
    /// Not recorded or not applied; the source retries (503).
    Failed,
    /// Any other refusal before the signature was checked (method, timeouts).
    Refused,
}

impl DeliveryOutcome {
    const ALL: [DeliveryOutcome; 6] = [
        DeliveryOutcome::Handled,
        DeliveryOutcome::Unauthenticated,
        DeliveryOutcome::Malformed,
        DeliveryOutcome::RateLimited,
        DeliveryOutcome::Failed,
        DeliveryOutcome::Refused,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Handled => "handled",
            DeliveryOutcome::Unauthenticated => "unauthenticated",
            DeliveryOutcome::Malformed => "malformed",
            DeliveryOutcome::RateLimited => "rate_limited",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Refused => "refused",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuedLabels {
    band: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    band: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    source_kind: &'static str,
    outcome: &'static str,
}

/// Latency buckets, in seconds: 1 ms to about 33 s, doubling. Issuance is a signature and
/// an fsync (milliseconds); a revocation's propagation is bounded by the agent's streams.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

/// Approval buckets, in seconds: 10 s to about 11 h, doubling (humans approve).
fn approval_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(10.0, 2.0, 13)
}

/// One process's metrics: the registry and the handles that count into it.
pub struct Metrics {
    /// Locked only to register a collector and to encode a scrape, never to count.
    registry: Mutex<Registry>,
    issued: Family<IssuedLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
    issuance: Family<KindLabel, Histogram, fn() -> Histogram>,
    propagation: Histogram,
    attestation_failures: Family<KindLabel, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    approval: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The process's metrics, every series of the fixed label sets present (at zero), so
    /// that a rate over a series that has not moved yet is 0, not absent.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let issued = Family::<IssuedLabels, Counter>::default();
        let denied = Family::<DeniedLabels, Counter>::default();
        let issuance: Family<KindLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(latency_buckets()));
        let propagation = Histogram::new(latency_buckets());
        let attestation_failures = Family::<KindLabel, Counter>::default();
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let approval = Histogram::new(approval_buckets());
        for band in BANDS {
            for kind in SvidKind::ALL {
                issued.get_or_create_owned(&IssuedLabels {
                    band,
                    kind: kind.as_str(),
                });
            }
            for reason in DenyReason::ALL {
                denied.get_or_create_owned(&DeniedLabels {
                    band,
                    reason: reason.as_str(),
                });
            }
        }
        for kind in SvidKind::ALL {
            issuance.get_or_create_owned(&KindLabel {
                kind: kind.as_str(),
            });
        }
        for kind in AttestationKind::ALL {
            attestation_failures.get_or_create_owned(&KindLabel {
                kind: kind.as_str(),
            });
        }
        registry.register(
            "writ_svids_issued",
            "SVIDs issued, by band and kind (x509, jwt)",
            issued.clone(),
        );
        registry.register(
            "writ_svids_denied",
            "SVID requests the issuer refused, by band and reason",
            denied.clone(),
        );
        registry.register(
            "writ_issuance_seconds",
            "Time from an issuance request reaching the issuer to its SVID being durable and answered, by kind",
            issuance.clone(),
        );
        registry.register(
            "writ_revocation_propagation_seconds",
            "Agent: time from a revoking policy change reaching the agent to each affected Workload API stream's update",
            propagation.clone(),
        );
        registry.register(
            "writ_attestation_failures",
            "Failed attestations: nodes on the server (join_token, x509pop, k8s_psat), workloads on the agent (unix, k8s)",
            attestation_failures.clone(),
        );
        registry.register(
            "writ_webhook_deliveries",
            "Incident source webhook deliveries, by source kind and outcome",
            deliveries.clone(),
        );
        registry.register(
            "writ_grant_approval_seconds",
            "Time from a grant's request to its approval by quorum",
            approval.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            issued,
            denied,
            issuance,
            propagation,
            attestation_failures,
            deliveries,
            approval,
        }
    }

    /// Adds a collector, read at every scrape (state that is read, not counted).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    /// An SVID issued in `band` (a [`BANDS`] value) `elapsed` after its request arrived.
    pub fn svid_issued(&self, band: &'static str, kind: SvidKind, elapsed: Duration) {
        self.issued
            .get_or_create(&IssuedLabels {
                band,
                kind: kind.as_str(),
            })
            .inc();
        self.issuance
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// An SVID request the issuer refused.
    pub fn svid_denied(&self, band: &'static str, reason: DenyReason) {
        self.denied
            .get_or_create(&DeniedLabels {
                band,
                reason: reason.as_str(),
            })
            .inc();
    }

    /// A failed attestation.
    pub fn attestation_failed(&self, kind: AttestationKind) {
        self.attestation_failures
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// A Workload API stream updated `elapsed` after a revoking change reached the agent.
    pub fn revocation_propagated(&self, elapsed: Duration) {
        self.propagation.observe(elapsed.as_secs_f64());
    }

    /// An incident source's delivery; `source_kind` is the source's `kind` as configured
    /// (`pagerduty`, `incident-io`, `generic`).
    pub fn webhook_delivery(&self, source_kind: &'static str, outcome: DeliveryOutcome) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                source_kind,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Makes the delivery series of `source_kind` present at zero (a configured source).
    pub fn webhook_source(&self, source_kind: &'static str) {
        for outcome in DeliveryOutcome::ALL {
            self.deliveries.get_or_create_owned(&DeliveryLabels {
                source_kind,
                outcome: outcome.as_str(),
            });
        }
    }

    /// A grant approved by quorum `latency` after it was requested.
    pub fn grant_approved(&self, latency: Duration) {
        self.approval.observe(latency.as_secs_f64());
    }

    /// Every metric, in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// Writes the family `name` of `metric_type`, one series per label set; for collectors.
fn encode_series<S: EncodeLabelSet, M: prometheus_client::encoding::EncodeMetric>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: prometheus_client::metrics::MetricType,
    series: impl IntoIterator<Item = (S, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes a gauge of one series per label set; for collectors.
pub fn encode_gauges<S: EncodeLabelSet>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, i64)>,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::{MetricType, gauge::ConstGauge};
    let series = series.into_iter().map(|(s, v)| (s, ConstGauge::new(v)));
    encode_series(encoder, name, help, MetricType::Gauge, series)
}

/// Writes a counter of one series per label set (`name` without `_total`, which the
/// encoder appends); for collectors of counters kept elsewhere.
pub fn encode_counters<S: EncodeLabelSet>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, u64)>,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::{MetricType, counter::ConstCounter};
    let series = series.into_iter().map(|(s, v)| (s, ConstCounter::new(v)));
    encode_series(encoder, name, help, MetricType::Counter, series)
}

/// Writes one unlabelled gauge; for collectors.
pub fn encode_gauge(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    use prometheus_client::metrics::{MetricType, gauge::ConstGauge};
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// Writes one unlabelled counter (`name` without `_total`); for collectors.
pub fn encode_counter(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    use prometheus_client::metrics::{MetricType, counter::ConstCounter};
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The value of the sample `line_start` (name and labels as encoded), if present.
    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
    }

    #[test]
    fn counts_show_in_the_text_format_under_their_conventional_names() {
        let metrics = Metrics::new();
        let before = metrics.encode().unwrap();
        assert_eq!(
            sample(
                &before,
                "writ_svids_issued_total{band=\"investigative\",kind=\"x509\"}"
            ),
            Some(0.0),
            "{before}"
        );
        metrics.svid_issued("investigative", SvidKind::X509, Duration::from_millis(3));
        metrics.svid_issued("investigative", SvidKind::X509, Duration::from_millis(5));
        metrics.svid_denied("remediation", DenyReason::NotEntitled);
        metrics.attestation_failed(AttestationKind::JoinToken);
        let text = metrics.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                "writ_svids_issued_total{band=\"investigative\",kind=\"x509\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "writ_svids_denied_total{band=\"remediation\",reason=\"not_entitled\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "writ_issuance_seconds_count{kind=\"x509\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "writ_attestation_failures_total{kind=\"join_token\"}"
            ),
            Some(1.0)
        );
        assert!(
            text.contains("# TYPE writ_issuance_seconds histogram"),
            "{text}"
        );
    }

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(
            &self,
            mut encoder: prometheus_client::encoding::DescriptorEncoder,
        ) -> Result<(), std::fmt::Error> {
            encode_gauges(
                &mut encoder,
                "writ_test_gauge",
                "a test gauge",
                [([("band", "base")], 7)],
            )?;
            encode_counter(&mut encoder, "writ_test", "a test counter", 3)
        }
    }

    #[test]
    fn collectors_are_read_at_scrape_time() {
        let metrics = Metrics::new();
        metrics.register_collector(Box::new(Fixed));
        let text = metrics.encode().unwrap();
        assert_eq!(
            sample(&text, "writ_test_gauge{band=\"base\"}"),
            Some(7.0),
            "{text}"
        );
        assert_eq!(sample(&text, "writ_test_total"), Some(3.0), "{text}");
    }
}
