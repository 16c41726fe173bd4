//! `writ.revocation.v1`: the revocation feed verifiers watch on the agent's socket
//! (docs/architecture.md, "Revocation").
//!
//! One task per agent follows the policy and a timer and keeps the current set (see
//! [`crate::policy::revocation`]) in a watch channel; every `Watch` stream sends its
//! caller's part of that set at once and again whenever it changes, always whole. Calls
//! must carry the Workload API's security header, and the caller is attested from the
//! socket's kernel credentials, as on the Workload API: identity or not (a verifier may
//! hold none), it is sent the entries of the trust domains it sees bundles of (its
//! tenants' and the deployment's, [`visible_trust_domains`]) and the list of them
//! (`covers`); writ-verifier refuses a peer of a trust domain the list does not name, so
//! sending a verifier less never lets it accept more (docs/multi-tenant.md).
//!
//! Must never: drop an entry before its window has passed, send a partial set of a trust
//! domain it covers, or send a caller another tenant's entries.

use super::Agent;
use crate::ca::BundleSet;
use crate::policy::revocation::{
    CloseEpochs, Revocation as Revoked, RevocationKind, next_expiry, revocations,
};
use crate::policy::{PolicySnapshot, Selector, visible_trust_domains};
use crate::proto::revocation::{self as pb, entry::Kind, revocation_server::Revocation};
use spiffe::TrustDomain;
use std::collections::BTreeSet;
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
    agent: Arc<Agent>,
    feed: watch::Receiver<Arc<Published>>,
    /// The agent's stop signal: open watches end with `Unavailable`.
    stopping: watch::Receiver<bool>,
}

/// What the feed task publishes to every stream.
#[derive(Debug, PartialEq)]
struct Published {
    /// The whole set, every tenant's.
    set: pb::RevocationSet,
    /// Who belongs to which tenant (profiles' selectors and tenants' bases): a stream
    /// works out its caller's trust domains again when it changes.
    membership: Membership,
}

/// The parts of a policy that decide which trust domains a caller sees.
type Membership = Vec<(String, BTreeSet<Selector>, Option<String>)>;

fn membership(policy: &PolicySnapshot, base: &TrustDomain) -> Membership {
    policy
        .profiles
        .values()
        .map(|p| {
            let tenant_base = policy.base_of(base, &p.tenant).map(|b| b.to_string());
            (p.tenant.clone(), p.selectors.clone(), tenant_base)
        })
        .collect()
}

impl RevocationService {
    /// A feed of `agent`'s policy reaching back `window`, which must be at least the
    /// longest SVID lifetime the CA issues (its `max_svid_ttl`): a shorter window drops
    /// entries whose SVIDs are still valid.
    ///
    /// Computes the first set now and spawns the task that keeps it current, so it must
    /// be called within a Tokio runtime. The task ends once this service and every
    /// stream it opened are gone, or when the agent's policy source closes.
    pub fn new(agent: &Arc<Agent>, window: Duration) -> Self {
        Self::with_window(agent, Window::Fixed(secs(window)))
    }

    /// A feed whose window is the server's longest SVID lifetime, read again at every
    /// change: a remote server restarted with a longer `max_svid_ttl` widens it without
    /// an agent restart.
    pub fn following_server(agent: &Arc<Agent>) -> Self {
        Self::with_window(agent, Window::Server(Arc::clone(&agent.node)))
    }

    fn with_window(agent: &Arc<Agent>, window: Window) -> Self {
        let base = agent.node.base().clone();
        let mut policy = agent.node.policy();
        let mut feed = Feed {
            base,
            window,
            epochs: CloseEpochs::default(),
        };
        let mut bundles = agent.node.bundles();
        let clock = Arc::clone(&agent.clock);
        let (first, mut next) = feed.compute(
            &policy.borrow_and_update(),
            &bundles.borrow_and_update(),
            clock.unix(),
        );
        let (tx, rx) = watch::channel(Arc::new(first));
        let stopping = agent.stopping.subscribe();
        let agent = Arc::clone(agent);
        tokio::spawn(async move {
            loop {
                let wait = next.map(|at| at.saturating_sub(clock.unix()).max(1));
                tokio::select! {
                    changed = policy.changed() => if changed.is_err() { break },
                    // A tainted authority travels with the bundles, not the policy.
                    changed = bundles.changed() => if changed.is_err() { break },
                    () = sleep_secs(wait) => {}
                    () = tx.closed() => break,
                }
                let (set, expiry) = feed.compute(
                    &policy.borrow_and_update(),
                    &bundles.borrow_and_update(),
                    clock.unix(),
                );
                next = expiry;
                tx.send_if_modified(|current| {
                    let changed = **current != set;
                    if changed {
                        tracing::debug!(
                            generation = set.set.generation,
                            entries = set.set.entries.len(),
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
            agent,
            feed: rx,
            stopping,
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
    /// The set for `policy` and the tainted authorities of `bundles` at `now`, and when
    /// it next changes by itself (an entry leaving the window).
    fn compute(
        &mut self,
        policy: &PolicySnapshot,
        bundles: &BundleSet,
        now: i64,
    ) -> (Published, Option<i64>) {
        let window = self.window.secs();
        let set = revocations(policy, now, window);
        self.epochs.observe(&set, policy.generation);
        let mut entries: Vec<pb::Entry> = set
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
        entries.extend(tainted_authorities(bundles).into_iter().map(|e| {
            pb::Entry {
                kind: match e.kind {
                    VerifierKind::JwtAuthority => Kind::JwtAuthority,
                    _ => Kind::Authority,
                }
                .into(),
                id: e.id,
                revoked_at: e.revoked_at,
                trust_domain: e.trust_domain,
                epoch: 0,
            }
        }));
        // The order the feed promises: revoked_at, then kind, then id.
        entries.sort_by(|a, b| {
            (a.revoked_at, a.kind, &a.id, &a.trust_domain).cmp(&(
                b.revoked_at,
                b.kind,
                &b.id,
                &b.trust_domain,
            ))
        });
        let message = pb::RevocationSet {
            generation: policy.generation,
            entries,
            window_seconds: window,
            covers: Vec::new(),
        };
        let published = Published {
            set: message,
            membership: membership(policy, &self.base),
        };
        (published, next_expiry(&set, window))
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

/// The entries of the tainted authorities in `bundles` (docs/operations.md, "A
/// compromised CA"): each names its X.509 key and its JWT key under its trust domain,
/// from when it was tainted, for as long as it is in the bundle (no window: an attacker
/// holding the key can sign certificates of any lifetime).
fn tainted_authorities(bundles: &BundleSet) -> Vec<RevocationEntry> {
    let mut entries = Vec::new();
    for bundle in &bundles.bundles {
        for tainted in &bundle.tainted {
            match tainted.key_id() {
                Some(key_id) => entries.push(RevocationEntry {
                    kind: VerifierKind::Authority,
                    id: key_id,
                    trust_domain: bundle.trust_domain.clone(),
                    revoked_at: tainted.tainted_at,
                }),
                None => {
                    tracing::error!(trust_domain = %bundle.trust_domain, "a tainted authority's certificate does not parse");
                }
            }
            entries.push(RevocationEntry {
                kind: VerifierKind::JwtAuthority,
                id: tainted.jwt_kid.clone(),
                trust_domain: bundle.trust_domain.clone(),
                revoked_at: tainted.tainted_at,
            });
        }
    }
    entries
}

/// The part of `set` for a caller that sees the bundles of `visible` trust domains: the
/// entries that can name an identity of one of them, and `covers` naming them all. An
/// incident entry names its tenant's base and so both band trust domains under it.
fn for_caller(set: &pb::RevocationSet, visible: &BTreeSet<String>) -> pb::RevocationSet {
    let names_visible = |e: &pb::Entry| match Kind::try_from(e.kind) {
        Ok(Kind::Incident) => [Band::Investigative, Band::Remediation]
            .iter()
            .any(|band| visible.contains(&band.trust_domain_name(&e.trust_domain))),
        _ => visible.contains(&e.trust_domain),
    };
    pb::RevocationSet {
        generation: set.generation,
        entries: set
            .entries
            .iter()
            .filter(|e| names_visible(e))
            .cloned()
            .collect(),
        window_seconds: set.window_seconds,
        covers: visible.iter().cloned().collect(),
    }
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
    let bundles = Arc::clone(&agent.node.bundles().borrow());
    RevocationSnapshot::new(
        policy.generation,
        set.iter()
            .filter_map(|r| entry(r, &policy, base))
            .chain(tainted_authorities(&bundles)),
    )
}

#[tonic::async_trait]
impl Revocation for RevocationService {
    type WatchStream = ResponseStream<pb::RevocationSet>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let selectors = super::workload::attest_caller(&self.agent, &request).await?;
        let mut feed = self.feed.clone();
        let mut stopping = self.stopping.clone();
        let agent = Arc::clone(&self.agent);
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut sent: Option<pb::RevocationSet> = None;
            loop {
                if *stopping.borrow_and_update() {
                    break;
                }
                // Whole sets only: a slow reader skips to the newest, never sees a delta.
                let published = Arc::clone(&feed.borrow_and_update());
                let visible = {
                    let policy = agent.node.policy().borrow().clone();
                    visible_trust_domains(&policy, agent.node.base(), &selectors)
                };
                let mine = for_caller(&published.set, &visible);
                // Another tenant's change is not news to this caller.
                let news = sent.as_ref().is_none_or(|last| {
                    (&last.entries, &last.covers, last.window_seconds)
                        != (&mine.entries, &mine.covers, mine.window_seconds)
                });
                if news {
                    if tx.send(Ok(mine.clone())).await.is_err() {
                        return;
                    }
                    sent = Some(mine);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, id: &str, trust_domain: &str) -> pb::Entry {
        pb::Entry {
            kind: kind.into(),
            id: id.into(),
            revoked_at: 1,
            trust_domain: trust_domain.into(),
            epoch: 0,
        }
    }

    #[test]
    fn a_caller_gets_the_entries_of_the_trust_domains_it_sees_and_their_list() {
        let set = pb::RevocationSet {
            generation: 7,
            entries: vec![
                entry(Kind::Incident, "INC-1", "example.org"),
                entry(Kind::Incident, "INC-1", "acme.test"),
                entry(Kind::Incident, "INC-9", "globex.test"),
                entry(Kind::Grant, "g-1", "remediate.acme.test"),
                entry(Kind::Grant, "g-2", "remediate.globex.test"),
                entry(Kind::Serial, "0a", "investigate.acme.test"),
                entry(Kind::Serial, "0b", "investigate.globex.test"),
                entry(Kind::Serial, "0c", "example.org"),
            ],
            window_seconds: 3600,
            covers: Vec::new(),
        };
        // A workload of acme: acme's band trust domains and the deployment's base.
        let acme: BTreeSet<String> = [
            "example.org",
            "investigate.acme.test",
            "remediate.acme.test",
        ]
        .map(String::from)
        .into();
        let mine = for_caller(&set, &acme);
        let ids: Vec<(&str, &str)> = mine
            .entries
            .iter()
            .map(|e| (e.id.as_str(), e.trust_domain.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("INC-1", "acme.test"),
                ("g-1", "remediate.acme.test"),
                ("0a", "investigate.acme.test"),
                ("0c", "example.org"),
            ],
            "acme's and the deployment's services', never globex's nor the default tenant's incidents"
        );
        assert_eq!(mine.covers, Vec::from_iter(acme.iter().cloned()));
        assert_eq!((mine.generation, mine.window_seconds), (7, 3600));
        // The default tenant's workload: its bands, not acme's.
        let default: BTreeSet<String> = [
            "example.org",
            "investigate.example.org",
            "remediate.example.org",
        ]
        .map(String::from)
        .into();
        let theirs = for_caller(&set, &default);
        let ids: Vec<&str> = theirs.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["INC-1", "0c"]);
        assert_eq!(theirs.entries[0].trust_domain, "example.org");
    }
}
