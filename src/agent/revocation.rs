//! `writ.revocation.v1`: the revocation feed verifiers watch on the agent's socket
//! (docs/architecture.md, "Revocation").
//!
//! One task per agent follows the policy and a timer and keeps the current set (see
//! [`crate::policy::revocation`]) in a watch channel; every `Watch` stream sends that
//! set at once and again whenever it changes, always whole. Calls must carry the
//! Workload API's security header, but the caller is not attested: a verifier may hold
//! no identity, and the feed reveals nothing a caller could use to obtain one.
//!
//! Must never: drop an entry before its window has passed, or send a partial set.

use super::Agent;
use crate::policy::PolicySnapshot;
use crate::policy::revocation::{
    CloseEpochs, Revocation as Revoked, RevocationKind, next_expiry, revocations,
};
use crate::proto::revocation::{self as pb, entry::Kind, revocation_server::Revocation};
use spiffe::TrustDomain;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use writ_verifier::Band;
use writ_verifier::revocation::{
    RevocationEntry, RevocationKind as VerifierKind, RevocationSnapshot,
};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The revocation feed service.
#[derive(Debug, Clone)]
pub struct RevocationService {
    feed: watch::Receiver<Arc<pb::RevocationSet>>,
    /// The agent's stop signal: open watches end with `Unavailable`.
    stopping: watch::Receiver<bool>,
}

impl RevocationService {
    /// A feed of `agent`'s policy reaching back `window`, which must be at least the
    /// longest SVID lifetime the CA issues (its `max_svid_ttl`): a shorter window drops
    /// entries whose SVIDs are still valid.
    ///
    /// Computes the first set now and spawns the task that keeps it current, so it must
    /// be called within a Tokio runtime. The task ends once this service and every
    /// stream it opened are gone, or when the agent's policy source closes.
    pub fn new(agent: &Agent, window: Duration) -> Self {
        Self::with_window(agent, Window::Fixed(secs(window)))
    }

    /// A feed whose window is the server's longest SVID lifetime, read again at every
    /// change: a remote server restarted with a longer `max_svid_ttl` widens it without
    /// an agent restart.
    pub fn following_server(agent: &Agent) -> Self {
        Self::with_window(agent, Window::Server(Arc::clone(&agent.node)))
    }

    fn with_window(agent: &Agent, window: Window) -> Self {
        let base = agent.node.base().clone();
        let mut policy = agent.node.policy();
        let mut feed = Feed {
            base,
            window,
            epochs: CloseEpochs::default(),
        };
        let clock = Arc::clone(&agent.clock);
        let (first, mut next) = feed.compute(&policy.borrow_and_update(), clock.unix());
        let (tx, rx) = watch::channel(Arc::new(first));
        tokio::spawn(async move {
            loop {
                let wait = next.map(|at| at.saturating_sub(clock.unix()).max(1));
                tokio::select! {
                    changed = policy.changed() => if changed.is_err() { break },
                    () = sleep_secs(wait) => {}
                    () = tx.closed() => break,
                }
                let (set, expiry) = feed.compute(&policy.borrow_and_update(), clock.unix());
                next = expiry;
                tx.send_if_modified(|current| {
                    let changed = **current != set;
                    if changed {
                        tracing::debug!(
                            generation = set.generation,
                            entries = set.entries.len(),
                            "revocation set changed"
                        );
                        *current = Arc::new(set);
                    }
                    changed
                });
            }
            tracing::debug!("revocation feed stopped");
        });
        RevocationService {
            feed: rx,
            stopping: agent.stopping.subscribe(),
        }
    }
}

/// Sleeps `secs` seconds, or forever when there is nothing to wait for.
async fn sleep_secs(secs: Option<i64>) {
    match secs {
        Some(secs) => tokio::time::sleep(Duration::from_secs(secs.unsigned_abs())).await,
        None => std::future::pending().await,
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// How far back the feed reaches.
enum Window {
    /// A fixed window (tests).
    Fixed(i64),
    /// The server's max SVID TTL as the node API last reported it.
    Server(Arc<dyn crate::node_api::NodeApi>),
}

impl Window {
    fn secs(&self) -> i64 {
        match self {
            Window::Fixed(s) => *s,
            Window::Server(node) => secs(node.max_svid_ttl()),
        }
    }
}

/// What the feed task carries from one set to the next.
struct Feed {
    base: TrustDomain,
    window: Window,
    epochs: CloseEpochs,
}

impl Feed {
    /// The set for `policy` at `now`, and when it next changes by itself (an entry
    /// leaving the window).
    fn compute(&mut self, policy: &PolicySnapshot, now: i64) -> (pb::RevocationSet, Option<i64>) {
        let window = self.window.secs();
        let set = revocations(policy, now, window);
        self.epochs.observe(&set, policy.generation);
        let entries = set
            .iter()
            .filter_map(|r| {
                let (kind, epoch) = match r.kind {
                    RevocationKind::Incident => (
                        Kind::Incident,
                        self.epochs
                            .epoch(&r.tenant, &r.id)
                            .unwrap_or(policy.generation),
                    ),
                    RevocationKind::Grant => (Kind::Grant, 0),
                    RevocationKind::Serial => (Kind::Serial, 0),
                };
                let entry = entry(r, policy, &self.base)?;
                Some(pb::Entry {
                    kind: kind.into(),
                    id: entry.id,
                    revoked_at: entry.revoked_at,
                    trust_domain: entry.trust_domain,
                    epoch,
                })
            })
            .collect();
        let message = pb::RevocationSet {
            generation: policy.generation,
            entries,
            window_seconds: window,
        };
        (message, next_expiry(&set, window))
    }
}

/// One entry of the set as the feed names it and writ-verifier looks it up: an incident
/// under its tenant's base trust domain (both bands), a grant under its tenant's
/// remediation trust domain, a serial under its certificate's trust domain. `None` only
/// for an incident or grant of a tenant `policy` does not name, which a consistent policy
/// never holds (its objects and tenants come in one snapshot).
fn entry(r: &Revoked, policy: &PolicySnapshot, base: &TrustDomain) -> Option<RevocationEntry> {
    let tenant_base = || {
        let found = policy.base_of(base, &r.tenant);
        if found.is_none() {
            tracing::error!(tenant = ?r.tenant, id = %r.id, "a revocation names a tenant the policy does not hold");
        }
        found
    };
    let (kind, trust_domain) = match r.kind {
        RevocationKind::Incident => (VerifierKind::Incident, tenant_base()?.as_str().to_owned()),
        RevocationKind::Grant => (
            VerifierKind::Grant,
            Band::Remediation.trust_domain_name(tenant_base()?.as_str()),
        ),
        RevocationKind::Serial => (
            VerifierKind::Serial,
            r.serial
                .as_ref()
                .map(|s| s.trust_domain.clone())
                .unwrap_or_default(),
        ),
    };
    Some(RevocationEntry {
        kind,
        id: r.id.clone(),
        trust_domain,
        revoked_at: r.revoked_at,
    })
}

/// The set `agent`'s feed publishes at `now` (seconds since the epoch), as writ-verifier's
/// lookup set: the agent's own `ValidateJWTSVID` decides with it, so a token is refused
/// there exactly when a verifier watching this agent's feed refuses it. Computed from the
/// policy the agent holds this instant (no feed task in between), over the same window.
pub(crate) fn verifier_snapshot(agent: &Agent, now: i64) -> RevocationSnapshot {
    let policy = Arc::clone(&agent.node.policy().borrow());
    let base = agent.node.base();
    let window = secs(agent.node.max_svid_ttl());
    let set = revocations(&policy, now, window);
    RevocationSnapshot::new(
        policy.generation,
        set.iter().filter_map(|r| entry(r, &policy, base)),
    )
}

/// The Workload API's rule for every call on its socket (SPIFFE_Workload_API.md): the
/// header shows a deliberate local client, not a request forged through a proxy.
fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("workload.spiffe.io") {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

#[tonic::async_trait]
impl Revocation for RevocationService {
    type WatchStream = ResponseStream<pb::RevocationSet>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        check_header(&request)?;
        let mut feed = self.feed.clone();
        let mut stopping = self.stopping.clone();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                if *stopping.borrow_and_update() {
                    break;
                }
                // Whole sets only: a slow reader skips to the newest, never sees a delta.
                let set = Arc::clone(&feed.borrow_and_update());
                if tx.send(Ok((*set).clone())).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = feed.changed() => if changed.is_err() { break },
                    r = stopping.changed() => if r.is_err() { break },
                    () = tx.closed() => return,
                }
            }
            let _ = tx
                .send(Err(Status::unavailable("revocation feed stopped")))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
