//! The agent's SVIDs: one key and certificate per identity, made on first use, renewed
//! at half-life (±10 % jitter), dropped when policy no longer entitles anyone to them.
//! A certificate whose serial policy lists as revoked is never handed out again: it is
//! dropped, and its identity, if still entitled, gets a fresh certificate
//! (docs/architecture.md, "Revocation").
//!
//! Keys are generated here, on the workload's host, and never sent anywhere: the server
//! sees only a CSR. Every certificate the server returns is checked against the bundle
//! of its trust domain with our own verifier before it is handed to any workload.

use super::endpoints::NodeHealth;
use crate::backoff::Backoff;
use crate::ca::BundleSet;
use crate::clock::SharedClock;
use crate::node_api::{NodeApi, NodeError};
use crate::policy::{Entitlement, PolicySnapshot, entitlement_for};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// One identity's current SVID and key.
pub struct CachedSvid {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// DER of the leaf.
    pub cert_der: Vec<u8>,
    /// DER of the intermediates that follow the leaf, nearest first (never the root).
    pub chain: Vec<Vec<u8>>,
    /// Unencrypted PKCS#8 of the key (what the Workload API hands out).
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// Serial, lowercase hex.
    pub serial: String,
    /// When it was issued (seconds since the epoch).
    pub issued_at: i64,
    /// notAfter (seconds since the epoch).
    pub not_after: i64,
    /// When to renew it.
    pub renew_at: i64,
    /// The authority its chain ends at ([`writ_verifier::authority_key_id`]): if that is
    /// tainted, it is re-issued at once.
    pub authority: String,
}

impl std::fmt::Debug for CachedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// When to renew an SVID that lives from `not_before` to `not_after` (seconds since the
/// epoch), decided at `now`, with `jitter` a uniform sample in [0, 1].
///
/// Normally at half-life, ±10 % of it (docs/architecture.md, "Identities"), at least a
/// second after `not_before`. When the agent has just come back from being cut off from
/// every server (`cut_off`), an SVID past a third of its life is renewed at once rather
/// than at half-life (the outage ate into its margin) — at once meaning within
/// [`RECOVERY_SPREAD`] (less when it expires sooner), spread by `jitter`, so a recovery
/// of ten thousand agents is not a thundering herd on the servers.
///
/// `not_before` is when the agent asked for the SVID: the certificate's own notBefore
/// may be backdated by the server and would make every SVID look older than it is.
pub fn renew_at(not_before: i64, not_after: i64, now: i64, cut_off: bool, jitter: f64) -> i64 {
    let jitter = if jitter.is_nan() {
        0.5
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let lifetime = (not_after - not_before).max(1);
    if cut_off && past_a_third(not_before, not_after, now) {
        let left = (not_after - now).max(0);
        let spread = RECOVERY_SPREAD.as_secs().min((left / 3) as u64) as f64;
        return now + (spread * jitter) as i64;
    }
    let half_life_share = 0.5 + (jitter * 2.0 - 1.0) * 0.05;
    not_before + ((lifetime as f64 * half_life_share) as i64).max(1)
}

/// Whether an SVID living from `not_before` to `not_after` is past a third of its life.
fn past_a_third(not_before: i64, not_after: i64, now: i64) -> bool {
    (now - not_before).saturating_mul(3) >= (not_after - not_before).max(1)
}

/// The window over which SVIDs due after a cut-off are renewed.
pub const RECOVERY_SPREAD: Duration = Duration::from_secs(30);

/// Retrying a failed renewal: it never waits past the SVID's expiry.
const RENEW_RETRY_BASE: Duration = Duration::from_secs(1);
const RENEW_RETRY_CAP: Duration = Duration::from_secs(30);

/// The SVIDs this agent holds.
pub struct SvidCache {
    node: Arc<dyn NodeApi>,
    clock: SharedClock,
    entries: Mutex<HashMap<String, Arc<CachedSvid>>>,
    issuing: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
    added: tokio::sync::Notify,
    retry: Mutex<Backoff>,
}

impl std::fmt::Debug for SvidCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SvidCache")
    }
}

impl SvidCache {
    /// An empty cache signing through `node`, deciding renewal and expiry by `clock`.
    pub fn new(node: Arc<dyn NodeApi>, clock: SharedClock) -> Self {
        SvidCache {
            node,
            clock,
            entries: Mutex::new(HashMap::new()),
            issuing: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
            added: tokio::sync::Notify::new(),
            retry: Mutex::new(Backoff::new(RENEW_RETRY_BASE, RENEW_RETRY_CAP)),
        }
    }

    /// Ticks whenever an SVID is renewed or dropped.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How many times the cached SVIDs have changed: what [`SvidCache::subscribe`] follows.
    pub fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    /// The held SVID for `id`, unless it has expired or its serial is revoked. Checked
    /// against the policy of this instant, so a stream that wakes on a revocation never
    /// sends the revoked certificate, even before [`SvidCache::maintain`] has run.
    fn cached(&self, id: &str, now: i64) -> Option<Arc<CachedSvid>> {
        let policy = self.node.policy().borrow().clone();
        let entries = self.entries.lock().ok()?;
        entries
            .get(id)
            .filter(|svid| {
                svid.not_after > now && !policy.revoked_serials.contains_key(&svid.serial)
            })
            .cloned()
    }

    /// The unexpired SVID held now for `spiffe_id`, without issuing one.
    pub fn current(&self, spiffe_id: &str) -> Option<Arc<CachedSvid>> {
        self.cached(spiffe_id, self.clock.unix())
    }

    /// The SVIDs for `wanted`, in order, issuing every missing one in a single batch
    /// (single flight: many callers asking at once cause one signature per identity).
    pub async fn get_all(&self, wanted: &[Entitlement]) -> Vec<Result<Arc<CachedSvid>, NodeError>> {
        let lookup = |now| -> Vec<Option<Arc<CachedSvid>>> {
            wanted
                .iter()
                .map(|e| self.cached(&e.spiffe_id.to_string(), now))
                .collect()
        };
        let found = lookup(self.clock.unix());
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().map(Ok).collect();
        }
        let _one = self.issuing.lock().await;
        let found = lookup(self.clock.unix());
        let missing: Vec<&Entitlement> = wanted
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(e, _)| e)
            .collect();
        let mut issued = self.issue(&missing).await.into_iter();
        let mut out = Vec::with_capacity(wanted.len());
        for (entitlement, cached) in wanted.iter().zip(found) {
            out.push(match cached {
                Some(svid) => Ok(svid),
                None => match issued.next() {
                    Some(Ok(svid)) => {
                        let svid = Arc::new(svid);
                        if let Ok(mut entries) = self.entries.lock() {
                            entries.insert(entitlement.spiffe_id.to_string(), Arc::clone(&svid));
                        }
                        Ok(svid)
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(NodeError::Unavailable(
                        "signing returned too few results".into(),
                    )),
                },
            });
        }
        // The maintenance loop may be asleep until a later renewal: wake it.
        self.added.notify_one();
        out
    }

    /// The SVID for one entitlement (see [`SvidCache::get_all`]).
    pub async fn get(&self, entitlement: &Entitlement) -> Result<Arc<CachedSvid>, NodeError> {
        self.get_all(std::slice::from_ref(entitlement))
            .await
            .pop()
            .unwrap_or_else(|| Err(NodeError::Unavailable("no result".into())))
    }

    /// Makes a key and CSR per entitlement here on the host, has the server sign them all
    /// in one batch, and checks every certificate before keeping it.
    async fn issue(&self, wanted: &[&Entitlement]) -> Vec<Result<CachedSvid, NodeError>> {
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut keys = Vec::with_capacity(wanted.len());
        let mut csrs = Vec::with_capacity(wanted.len());
        for entitlement in wanted {
            let made = rcgen::KeyPair::generate().and_then(|key| {
                let mut params = rcgen::CertificateParams::default();
                params.distinguished_name = rcgen::DistinguishedName::new();
                let csr = params.serialize_request(&key)?;
                Ok((key, csr.der().to_vec()))
            });
            match made {
                Ok((key, csr)) => {
                    keys.push(Some(key));
                    csrs.push((entitlement.spiffe_id.clone(), csr));
                }
                Err(e) => {
                    tracing::error!(error = %e, "key generation failed");
                    return wanted
                        .iter()
                        .map(|_| Err(NodeError::Unavailable("key generation failed".into())))
                        .collect();
                }
            }
        }
        let issued_at = self.clock.unix();
        let signed = self.node.sign_x509_batch(csrs).await;
        wanted
            .iter()
            .zip(keys)
            .zip(signed)
            .map(|((entitlement, key), signed)| {
                let signed = signed?;
                let key = key.ok_or_else(|| NodeError::Unavailable("key missing".into()))?;
                let authority = self.check(
                    &entitlement.spiffe_id.to_string(),
                    &signed.cert_der,
                    &signed.chain,
                )?;
                tracing::debug!(spiffe_id = %entitlement.spiffe_id, serial = %signed.serial, "issued workload svid");
                Ok(CachedSvid {
                    spiffe_id: entitlement.spiffe_id.to_string(),
                    cert_der: signed.cert_der,
                    chain: signed.chain,
                    key_pkcs8: Zeroizing::new(key.serialize_der()),
                    serial: signed.serial,
                    issued_at,
                    not_after: signed.not_after,
                    renew_at: renew_at(
                        issued_at,
                        signed.not_after,
                        issued_at,
                        false,
                        rand::random::<f64>(),
                    ),
                    authority,
                })
            })
            .collect()
    }

    /// Verifies a certificate from the server before anyone sees it: it must chain to the
    /// bundle of its own trust domain, to an authority that is not tainted, and carry the
    /// SPIFFE ID we asked for. Returns the authority it chains to.
    fn check(
        &self,
        want_id: &str,
        cert_der: &[u8],
        chain: &[Vec<u8>],
    ) -> Result<String, NodeError> {
        let bundles = self.node.bundles().borrow().clone();
        let td_name = want_id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let bundle = bundles
            .by_name(td_name)
            .ok_or_else(|| NodeError::Unavailable(format!("no bundle for {td_name}")))?;
        let cas = split_der(&bundle.x509_der);
        let td = writ_verifier::parse_trust_domain(td_name)
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let presented: Vec<CertificateDer<'_>> = std::iter::once(cert_der)
            .chain(chain.iter().map(Vec::as_slice))
            .map(CertificateDer::from)
            .collect();
        let verified = writ_verifier::verify_x509_svid(
            &presented,
            &cas,
            &td,
            writ_verifier::x509::Usage::Client,
            UnixTime::since_unix_epoch(
                self.clock
                    .now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
        )
        .map_err(|e| {
            NodeError::Unavailable(format!("server returned an SVID that does not verify: {e}"))
        })?;
        if verified.spiffe_id.to_string() != want_id {
            return Err(NodeError::Unavailable(
                "server returned an SVID for another identity".into(),
            ));
        }
        if tainted_key_ids(&bundles).contains(&verified.authority) {
            return Err(NodeError::Unavailable(
                "server returned an SVID signed by a tainted authority".into(),
            ));
        }
        Ok(verified.authority)
    }

    /// Renews what is due, drops what policy no longer entitles or what has expired
    /// (an SVID is never served past its notAfter, whether or not a server answers), and
    /// replaces SVIDs whose serials are revoked (dropped at once; re-issued when the
    /// identity is still entitled). A failed renewal is retried with backoff, never later
    /// than the expiry. Returns the next instant anything is due (seconds since the epoch).
    pub async fn maintain(&self, policy: &PolicySnapshot) -> Option<i64> {
        let now = self.clock.unix();
        let tainted = tainted_key_ids(&self.node.bundles().borrow());
        let snapshot: Vec<Arc<CachedSvid>> = match self.entries.lock() {
            Ok(entries) => entries.values().cloned().collect(),
            Err(_) => return None,
        };
        let mut changed = false;
        let mut due: Vec<Entitlement> = Vec::new();
        for svid in snapshot {
            let Ok(id) = writ_verifier::parse_spiffe_id(&svid.spiffe_id) else {
                continue;
            };
            let revoked = policy.revoked_serials.contains_key(&svid.serial);
            let tainted = tainted.contains(&svid.authority);
            match entitlement_for(policy, self.node.base(), &id) {
                None => {
                    self.remove(&svid.spiffe_id);
                    changed = true;
                }
                Some(entitlement) if revoked || tainted => {
                    let why = if revoked {
                        "revoked"
                    } else {
                        "signed by a tainted authority"
                    };
                    tracing::info!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, why, "svid dropped and re-issued");
                    self.remove_serial(&svid.spiffe_id, &svid.serial);
                    changed = true;
                    due.push(entitlement);
                }
                Some(entitlement) if svid.not_after <= now => {
                    tracing::warn!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, "svid expired before it could be renewed; withdrawn");
                    self.remove_serial(&svid.spiffe_id, &svid.serial);
                    changed = true;
                    due.push(entitlement);
                }
                Some(entitlement) if svid.renew_at <= now => due.push(entitlement),
                Some(_) => {}
            }
        }
        if changed {
            // Streams send the state without the dropped SVIDs now, not after re-issuing.
            self.changed.send_modify(|n| *n += 1);
            changed = false;
        }
        if !due.is_empty() {
            let _one = self.issuing.lock().await;
            // A stream may have issued some of these while we waited (single flight):
            // keep what is current.
            due.retain(|e| {
                self.cached(&e.spiffe_id.to_string(), now)
                    .is_none_or(|svid| svid.renew_at <= now)
            });
            let refs: Vec<&Entitlement> = due.iter().collect();
            // One retry instant and one log line per pass, however many renewals failed:
            // an outage must not become a log flood or jump the backoff to its cap.
            let mut retry: Option<(i64, Duration)> = None;
            let mut failed: Vec<(String, NodeError)> = Vec::new();
            for (entitlement, result) in due.iter().zip(self.issue(&refs).await) {
                let id = entitlement.spiffe_id.to_string();
                match result {
                    Ok(fresh) => {
                        if let Ok(mut entries) = self.entries.lock() {
                            entries.insert(id, Arc::new(fresh));
                        }
                        self.lock_retry().reset();
                        changed = true;
                    }
                    Err(NodeError::NotEntitled(_)) => {
                        self.remove(&id);
                        changed = true;
                    }
                    Err(e) => {
                        let (retry_at, _) = *retry.get_or_insert_with(|| {
                            let retry_in = self.lock_retry().next_delay();
                            (now + retry_in.as_secs().max(1) as i64, retry_in)
                        });
                        self.reschedule(&id, |svid| retry_at.min(svid.not_after));
                        failed.push((id, e));
                    }
                }
            }
            if let (Some((_, retry_in)), Some((spiffe_id, error))) = (retry, failed.first()) {
                tracing::warn!(%spiffe_id, %error, failed = failed.len(), ?retry_in, "renewal failed; will retry (served until expiry meanwhile)");
            }
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        let entries = self.entries.lock().ok()?;
        entries
            .values()
            .map(|s| s.renew_at.min(s.not_after).max(now + 1))
            .min()
    }

    fn lock_retry(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.retry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves `id`'s renewal to `at(svid)` (the SVID itself is unchanged).
    fn reschedule(&self, id: &str, at: impl FnOnce(&CachedSvid) -> i64) {
        if let Ok(mut entries) = self.entries.lock()
            && let Some(svid) = entries.get_mut(id)
        {
            let renew_at = at(svid);
            if renew_at != svid.renew_at {
                *svid = Arc::new(CachedSvid {
                    spiffe_id: svid.spiffe_id.clone(),
                    cert_der: svid.cert_der.clone(),
                    chain: svid.chain.clone(),
                    key_pkcs8: svid.key_pkcs8.clone(),
                    serial: svid.serial.clone(),
                    issued_at: svid.issued_at,
                    not_after: svid.not_after,
                    renew_at,
                    authority: svid.authority.clone(),
                });
            }
        }
    }

    /// The agent is back after being cut off from every server: SVIDs past a third of
    /// their life are renewed now, each at its own jittered instant (see [`renew_at`]).
    /// Returns how many were brought forward.
    pub fn renew_early_after_cut_off(&self) -> usize {
        let now = self.clock.unix();
        let ids: Vec<String> = match self.entries.lock() {
            Ok(entries) => entries.keys().cloned().collect(),
            Err(_) => return 0,
        };
        let mut moved = 0;
        for id in ids {
            self.reschedule(&id, |svid| {
                if !past_a_third(svid.issued_at, svid.not_after, now) {
                    return svid.renew_at;
                }
                let early = renew_at(
                    svid.issued_at,
                    svid.not_after,
                    now,
                    true,
                    rand::random::<f64>(),
                );
                if early < svid.renew_at {
                    moved += 1;
                    early
                } else {
                    svid.renew_at
                }
            });
        }
        self.lock_retry().reset();
        self.added.notify_one();
        moved
    }

    fn remove(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }

    /// Removes `id`'s SVID if it is still the one with `serial` (a stream may already
    /// have replaced it with a fresh one).
    fn remove_serial(&self, id: &str, serial: &str) {
        if let Ok(mut entries) = self.entries.lock()
            && entries.get(id).is_some_and(|svid| svid.serial == serial)
        {
            entries.remove(id);
        }
    }

    /// Runs [`SvidCache::maintain`] whenever policy changes or something is due, until
    /// `shutdown` resolves. With `link` (a remote server), renews early each time the
    /// agent reconnects after being cut off.
    pub async fn run(
        self: Arc<Self>,
        mut link: Option<watch::Receiver<NodeHealth>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut policy_rx = self.node.policy();
        // A tainted authority comes with the bundles: its SVIDs are re-issued at once.
        let mut bundles_rx = self.node.bundles();
        let mut recoveries = link.as_ref().map_or(0, |l| l.borrow().recoveries);
        loop {
            let policy = policy_rx.borrow_and_update().clone();
            let next = self.maintain(&policy).await;
            let wait = next
                .map(|at| (at - self.clock.unix()).clamp(1, 3600) as u64)
                .unwrap_or(3600);
            let link_changed = async {
                match link.as_mut() {
                    Some(l) => l.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                changed = policy_rx.changed() => if changed.is_err() { return },
                changed = bundles_rx.changed() => if changed.is_err() { return },
                () = self.added.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
                open = link_changed => {
                    if !open {
                        link = None;
                    } else if let Some(now) = link.as_ref().map(|l| l.borrow().recoveries)
                        && now != recoveries
                    {
                        recoveries = now;
                        let moved = self.renew_early_after_cut_off();
                        tracing::info!(svids = moved, spread = ?RECOVERY_SPREAD, "back from a cut-off: renewing SVIDs past a third of their life early");
                    }
                }
            }
        }
    }
}

/// The key ids of every tainted authority in `bundles`.
fn tainted_key_ids(bundles: &BundleSet) -> HashSet<String> {
    bundles
        .bundles
        .iter()
        .flat_map(|b| &b.tainted)
        .filter_map(crate::ca::TaintedAuthority::key_id)
        .collect()
}

/// Splits concatenated DER certificates (bundle form) into single ones.
pub fn split_der(mut der: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while der.len() >= 2 && der[0] == 0x30 {
        let (len, header): (usize, usize) = match der[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81 if der.len() >= 3 => (usize::from(der[2]), 3),
            0x82 if der.len() >= 4 => ((usize::from(der[2]) << 8) | usize::from(der[3]), 4),
            0x83 if der.len() >= 5 => (
                (usize::from(der[2]) << 16) | (usize::from(der[3]) << 8) | usize::from(der[4]),
                5,
            ),
            _ => break,
        };
        let Some(end) = header.checked_add(len).filter(|end| *end <= der.len()) else {
            break;
        };
        out.push(CertificateDer::from(der[..end].to_vec()));
        der = &der[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::activity::Activity;
    use crate::ca::BundleSet;
    use crate::clock::ManualClock;
    use crate::node_api::SignedX509;
    use crate::policy::{Grant, GrantRequest, Profile, Selector};
    use spiffe::{SpiffeId, TrustDomain};

    const ID: &str = "spiffe://example.org/service/log-store";

    /// A server that is down: every call fails as unavailable; policy entitles `ID`.
    struct Down {
        base: TrustDomain,
        policy: watch::Sender<Arc<PolicySnapshot>>,
        bundles: watch::Sender<Arc<BundleSet>>,
    }

    impl Down {
        fn new() -> Arc<Self> {
            let mut policy = PolicySnapshot::default();
            policy.profiles.insert(
                crate::policy::key("default", "log-store"),
                Profile {
                    tenant: "default".into(),
                    name: "log-store".into(),
                    selectors: [Selector::Uid(4242)].into(),
                    bands: Default::default(),
                    scopes: Default::default(),
                    service: true,
                    created_at: 0,
                },
            );
            Arc::new(Down {
                base: TrustDomain::new("example.org").unwrap(),
                policy: watch::channel(Arc::new(policy)).0,
                bundles: watch::channel(Arc::new(BundleSet::default())).0,
            })
        }
    }

    fn down() -> NodeError {
        NodeError::Unavailable("no server answered".into())
    }

    #[tonic::async_trait]
    impl NodeApi for Down {
        fn base(&self) -> &TrustDomain {
            &self.base
        }
        fn policy(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
            self.policy.subscribe()
        }
        fn bundles(&self) -> watch::Receiver<Arc<BundleSet>> {
            self.bundles.subscribe()
        }
        fn max_svid_ttl(&self) -> Duration {
            Duration::from_secs(3600)
        }
        fn readiness(&self) -> crate::health::Readiness {
            crate::health::Readiness::NotReady("no server answered".into())
        }
        async fn sign_x509_batch(
            &self,
            csrs: Vec<(SpiffeId, Vec<u8>)>,
        ) -> Vec<Result<SignedX509, NodeError>> {
            csrs.iter().map(|_| Err(down())).collect()
        }
        async fn sign_jwt(&self, _: &SpiffeId, _: Vec<String>) -> Result<String, NodeError> {
            Err(down())
        }
        async fn request_grant(
            &self,
            _: GrantRequest,
            _: &SpiffeId,
            _: Option<u32>,
        ) -> Result<Grant, NodeError> {
            Err(down())
        }
        async fn record_activity(
            &self,
            _: &Activity,
            _: &SpiffeId,
            _: &str,
        ) -> Result<u64, NodeError> {
            Err(down())
        }
        async fn record_attestation(&self, _: &SpiffeId, _: &[String]) -> Result<u64, NodeError> {
            Err(down())
        }
    }

    fn held(issued_at: i64, not_after: i64, renew_at: i64) -> Arc<CachedSvid> {
        Arc::new(CachedSvid {
            spiffe_id: ID.into(),
            cert_der: vec![0x30, 0x00],
            chain: Vec::new(),
            key_pkcs8: Zeroizing::new(vec![1, 2, 3]),
            serial: "0a".into(),
            issued_at,
            not_after,
            renew_at,
            authority: "a1".into(),
        })
    }

    fn cache_holding(svid: Arc<CachedSvid>, clock: &ManualClock) -> (Arc<Down>, SvidCache) {
        let node = Down::new();
        let cache = SvidCache::new(
            Arc::clone(&node) as Arc<dyn NodeApi>,
            Arc::new(clock.clone()),
        );
        cache.entries.lock().unwrap().insert(ID.into(), svid);
        (node, cache)
    }

    #[tokio::test]
    async fn while_the_server_is_down_an_svid_is_served_until_it_expires_then_withdrawn() {
        let t = 1_000_000;
        let clock = ManualClock::at(t);
        // Due for renewal, 20 s of life left.
        let (node, cache) = cache_holding(held(t - 40, t + 20, t - 10), &clock);
        let policy = node.policy.borrow().clone();
        let changed = cache.subscribe();
        let next = cache.maintain(&policy).await.unwrap();
        // The renewal failed: still served, retried later but no later than the expiry.
        assert_eq!(cache.current(ID).unwrap().serial, "0a");
        let retry = cache.current(ID).unwrap().renew_at;
        assert!(retry > t && retry <= t + 20, "retry at {retry}");
        assert!(next > t && next <= t + 20, "next wake-up at {next}");
        assert!(
            !changed.has_changed().unwrap(),
            "nothing changed for streams"
        );

        clock.advance(Duration::from_secs(19));
        cache.maintain(&policy).await;
        assert!(
            cache.current(ID).is_some(),
            "a second of life left: still served"
        );

        clock.advance(Duration::from_secs(1));
        cache.maintain(&policy).await;
        assert!(cache.current(ID).is_none());
        assert!(
            cache.entries.lock().unwrap().is_empty(),
            "expired SVID dropped"
        );
        assert!(
            changed.has_changed().unwrap(),
            "streams woken to withdraw it"
        );
        // And a stream asking again is told the server is unavailable, not served it.
        let entitlement = entitlement_for(
            &policy,
            &node.base,
            &writ_verifier::parse_spiffe_id(ID).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            cache.get(&entitlement).await,
            Err(NodeError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn back_from_a_cut_off_svids_past_a_third_of_their_life_are_due_soon() {
        let t = 1_000_000;
        let clock = ManualClock::at(t);
        // 180 s of life, 60 s gone: a third. Normally due at half-life, t + 30; now
        // within the 30 s spread (a jitter sample is below 1, so strictly before).
        let (_node, cache) = cache_holding(held(t - 60, t + 120, t + 30), &clock);
        assert_eq!(cache.renew_early_after_cut_off(), 1);
        let at = cache.current(ID).unwrap().renew_at;
        assert!((t..t + 30).contains(&at), "renew at {at}");
        // Younger than a third: left on its schedule.
        let (_node, young) = cache_holding(held(t - 29, t + 61, t + 16), &clock);
        assert_eq!(young.renew_early_after_cut_off(), 0);
        assert_eq!(young.current(ID).unwrap().renew_at, t + 16);
    }

    #[test]
    fn renewal_is_at_half_life_within_ten_percent() {
        for now in [0, 100, 290] {
            assert_eq!(renew_at(0, 300, now, false, 0.5), 150);
            assert_eq!(renew_at(0, 300, now, false, 1.0), 165);
            assert_eq!(renew_at(0, 300, now, false, 0.0), 135);
        }
        assert_eq!(renew_at(0, 300, 0, false, 7.0), 165);
        assert_eq!(renew_at(0, 300, 0, false, f64::NAN), 150);
        assert!(renew_at(100, 100, 100, false, 0.5) > 100);
    }

    #[test]
    fn after_a_cut_off_svids_past_a_third_renew_at_once_spread_out() {
        // Younger than a third: the normal half-life schedule.
        assert_eq!(renew_at(0, 300, 99, true, 0.5), 150);
        // Past a third: now, plus at most the recovery spread.
        assert_eq!(renew_at(0, 300, 100, true, 0.0), 100);
        assert_eq!(renew_at(0, 300, 100, true, 0.5), 115);
        assert_eq!(renew_at(0, 300, 100, true, 1.0), 130);
        // Past half-life already (its renewal failed while cut off): still spread, not
        // all at the same instant.
        assert_eq!(renew_at(0, 300, 200, true, 0.0), 200);
        assert_eq!(renew_at(0, 300, 200, true, 1.0), 230);
        // Close to expiry the spread shrinks to a third of what is left.
        assert_eq!(renew_at(0, 300, 270, true, 1.0), 280);
        assert_eq!(renew_at(0, 300, 299, true, 1.0), 299);
        // Expired (the cache withdraws it; renewing is still the way back): at once.
        assert_eq!(renew_at(0, 300, 400, true, 1.0), 400);
        let spread: std::collections::BTreeSet<i64> = (0..=10)
            .map(|k| renew_at(0, 300, 150, true, f64::from(k) / 10.0))
            .collect();
        assert_eq!(
            spread.len(),
            11,
            "one instant per jitter sample: {spread:?}"
        );
        assert!(spread.iter().all(|at| (150..=180).contains(at)));
    }

    #[test]
    fn split_der_walks_concatenated_certificates() {
        let a = [0x30, 0x03, 1, 2, 3];
        let mut b = vec![0x30, 0x81, 0x80];
        b.extend([7u8; 0x80]);
        let joined = [&a[..], &b[..]].concat();
        let parts = split_der(&joined);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].as_ref(), &b[..]);
        assert_eq!(split_der(&[0x30, 0x05, 1]).len(), 0);
    }
}
