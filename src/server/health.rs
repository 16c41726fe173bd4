//! The issuer's readiness, as `grpc.health.v1` reports it on the admin socket, the remote
//! admin listener and the node API (docs/architecture.md, "Health and reflection").
//!
//! SERVING once the CAs can sign (a signing replica: once its intermediates are
//! certified), policy is current (a replica of a shared store: it holds the lease) and
//! the store and the audit log answer; NOT_SERVING while any of these fails, checked
//! every [`crate::health::RECHECK`] and at once when audit commits start or stop failing.
//! The admin `Health` RPC (`writ healthcheck`'s detail) says why from the same check.

use super::Issuer;
use crate::health::{Health, Readiness};
use std::future::Future;
use std::sync::Arc;

/// The services whose status the issuer's health reports, beside the overall one (`""`).
pub const SERVICES: [&str; 2] = [
    crate::proto::admin::admin_server::SERVICE_NAME,
    crate::proto::node::node_server::SERVICE_NAME,
];

/// Whether the issuer may serve, from what each check found (`Some`: why not). Signing
/// comes first in the reason: it is what an operator acts on (`writ replica admit`).
pub fn decide(signing: Option<String>, store: Option<String>, audit: Option<String>) -> Readiness {
    let reasons: Vec<String> = [
        signing,
        store.map(|e| format!("store: {e}")),
        audit.map(|e| format!("audit log: {e}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    match reasons.is_empty() {
        true => Readiness::Ready,
        false => Readiness::NotReady(reasons.join("; ")),
    }
}

impl Issuer {
    /// Has the readiness checked again now, not at the next period: for changes that do
    /// not show in a failure (intermediates certified, audit commits working again).
    pub fn recheck_readiness(&self) {
        self.readiness_wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Checks, now, what the issuer needs to serve (see the module docs). Blocking: it
    /// reads the store.
    pub fn readiness(&self) -> Readiness {
        let signing = match self.registry.issuance_gate() {
            Ok(_) => super::signers::not_signing(self),
            Err(e) => Some(e.to_string()),
        };
        decide(
            signing,
            self.store.check().err().map(|e| e.to_string()),
            self.audit.check().err().map(|e| e.to_string()),
        )
    }
}

/// The issuer's `grpc.health.v1`, with its first check published, followed until
/// `shutdown` by a task this spawns. Add [`Health::service`] to each server.
pub async fn start(
    issuer: &Arc<Issuer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Health {
    let health = Health::new(&SERVICES).await;
    // Audit commits starting or stopping to fail are checked at once. (Weak: this task
    // must not keep the issuer, and so the log, alive.)
    let mut failures = issuer.audit.failures();
    let weak = Arc::downgrade(issuer);
    tokio::spawn(async move {
        while failures.changed().await.is_ok() {
            match weak.upgrade() {
                Some(issuer) => issuer.recheck_readiness(),
                None => break,
            }
        }
    });
    let checked = Arc::clone(issuer);
    drop(
        health
            .clone()
            .follow(
                move || checked.readiness(),
                Some(issuer.readiness_wake.subscribe()),
                shutdown,
            )
            .await,
    );
    health
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_it_signs_and_the_store_and_audit_log_answer() {
        assert_eq!(decide(None, None, None), Readiness::Ready);
        let cases = [
            (
                Some("no intermediate yet".to_owned()),
                None,
                None,
                "no intermediate yet",
            ),
            (None, Some("gone".to_owned()), None, "store: gone"),
            (
                None,
                None,
                Some("commit failed".to_owned()),
                "audit log: commit failed",
            ),
        ];
        for (signing, store, audit, why) in cases {
            assert_eq!(
                decide(signing, store, audit),
                Readiness::NotReady(why.into())
            );
        }
        assert_eq!(
            decide(Some("a".into()), Some("b".into()), Some("c".into())),
            Readiness::NotReady("a; store: b; audit log: c".into())
        );
    }

    #[test]
    fn the_services_are_the_admin_and_node_apis() {
        assert_eq!(SERVICES, ["writ.admin.v1.Admin", "writ.node.v1.Node"]);
    }
}
