//! The issuer's state as metrics (docs/metrics.md), read at every scrape so it is never
//! stale: each CA authority's state and notAfter, the audit log's counters and checkpointed
//! size, pending grants, and approver notifications' counters. The counts the issuer makes
//! as it works (issuance, refusals, attestation failures, deliveries) are in
//! [`crate::metrics::Metrics`].

use super::Issuer;
use crate::ca::AuthorityState;
use crate::metrics::{encode_counter, encode_counters, encode_gauge, encode_gauges};
use crate::policy::GrantState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

/// Registers the issuer's collector with its metrics. It holds the issuer weakly: the
/// metrics are the issuer's, and must not keep it alive.
pub(super) fn register(issuer: &Arc<Issuer>) {
    issuer
        .metrics
        .register_collector(Box::new(IssuerState(Arc::downgrade(issuer))));
}

struct IssuerState(Weak<Issuer>);

impl std::fmt::Debug for IssuerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerState").finish_non_exhaustive()
    }
}

fn state_name(state: AuthorityState) -> &'static str {
    match state {
        AuthorityState::Prepared => "prepared",
        AuthorityState::Active => "active",
        AuthorityState::Retired => "retired",
    }
}

impl Collector for IssuerState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(issuer) = self.0.upgrade() else {
            return Ok(());
        };
        // Every held CA's authorities: one series per authority (bounded by rotation:
        // prepared, active and retired-until-expiry), and counts per band and state.
        let mut expiry = Vec::new();
        let mut counts: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
        for ca in issuer.cas.all() {
            let band = ca.band().as_str();
            for state in ["prepared", "active", "retired"] {
                counts.entry((band, state)).or_default();
            }
            for authority in ca.authorities() {
                let state = state_name(authority.state);
                *counts.entry((band, state)).or_default() += 1;
                expiry.push((
                    [
                        ("trust_domain", ca.trust_domain().to_string()),
                        ("band", band.to_owned()),
                        ("state", state.to_owned()),
                        ("authority", authority.id),
                    ],
                    authority.not_after,
                ));
            }
        }
        encode_gauges(
            &mut encoder,
            "writ_ca_authority_not_after_seconds",
            "Each CA authority's notAfter, seconds since the epoch, by trust domain, band, state and authority id",
            expiry,
        )?;
        encode_gauges(
            &mut encoder,
            "writ_ca_authorities",
            "CA authorities held, by band and state",
            counts
                .into_iter()
                .map(|((band, state), n)| ([("band", band), ("state", state)], n)),
        )?;
        let audit = issuer.audit.counters();
        encode_counter(
            &mut encoder,
            "writ_audit_appends",
            "Audit records made durable by this process",
            audit.appended,
        )?;
        encode_counter(
            &mut encoder,
            "writ_audit_commits",
            "Audit log commits by this process (each one fsync and one signed checkpoint)",
            audit.commits,
        )?;
        encode_counter(
            &mut encoder,
            "writ_audit_failures",
            "Audit records refused because their commit failed: nothing they stood for happened",
            audit.failed,
        )?;
        encode_gauge(
            &mut encoder,
            "writ_audit_verified_size",
            "Records in the audit log's tree as of its latest signed checkpoint",
            i64::try_from(issuer.audit.size()).unwrap_or(i64::MAX),
        )?;
        let pending = issuer
            .registry
            .snapshot()
            .grants
            .values()
            .filter(|g| g.state == GrantState::Pending)
            .count();
        encode_gauge(
            &mut encoder,
            "writ_grants_pending",
            "Remediation grants waiting for approvals",
            i64::try_from(pending).unwrap_or(i64::MAX),
        )?;
        let mut totals = crate::notify::CounterValues::default();
        for (_, counters) in issuer.notify.targets() {
            let v = counters.values();
            totals.delivered += v.delivered;
            totals.retried += v.retried;
            totals.failed += v.failed;
            totals.dropped += v.dropped;
        }
        encode_counters(
            &mut encoder,
            "writ_notifications",
            "Approver notifications, by outcome (delivered, retried attempts, failed, dropped when the queue was full)",
            [
                ("delivered", totals.delivered),
                ("retried", totals.retried),
                ("failed", totals.failed),
                ("dropped", totals.dropped),
            ]
            .map(|(outcome, n)| ([("outcome", outcome)], n)),
        )
    }
}
