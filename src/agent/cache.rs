//! The agent's SVIDs: one key and certificate per identity, made on first use, renewed
//! at half-life (±10 % jitter), dropped when policy no longer entitles anyone to them.
//! A certificate whose serial policy lists as revoked is never handed out again: it is
//! dropped, and its identity, if still entitled, gets a fresh certificate
//! (docs/architecture.md, "Revocation").
//!
//! Keys are generated here, on the workload's host, and never sent anywhere: the server
//! sees only a CSR. Every certificate the server returns is checked against the bundle
//! of its trust domain with our own verifier before it is handed to any workload.

use crate::clock::SharedClock;
use crate::node_api::{NodeApi, NodeError};
use crate::policy::{Entitlement, PolicySnapshot, entitlement_for};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::HashMap;
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

/// Renewal instant: half the lifetime, ±10 % jitter (docs/architecture.md, "Identities"),
/// at least a second.
pub fn renew_at(issued_at: i64, not_after: i64, jitter: f64) -> i64 {
    let lifetime = (not_after - issued_at).max(1) as f64;
    let jitter = jitter.clamp(-1.0, 1.0) * 0.1;
    issued_at + ((lifetime * (0.5 + jitter * 0.5)) as i64).max(1)
}

/// The SVIDs this agent holds.
pub struct SvidCache {
    node: Arc<dyn NodeApi>,
    clock: SharedClock,
    entries: Mutex<HashMap<String, Arc<CachedSvid>>>,
    issuing: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
    added: tokio::sync::Notify,
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
        }
    }

    /// Ticks whenever an SVID is renewed or dropped.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
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
                self.check(
                    &entitlement.spiffe_id.to_string(),
                    &signed.cert_der,
                    &signed.chain,
                )?;
                let jitter = rand::random::<f64>() * 2.0 - 1.0;
                tracing::debug!(spiffe_id = %entitlement.spiffe_id, serial = %signed.serial, "issued workload svid");
                Ok(CachedSvid {
                    spiffe_id: entitlement.spiffe_id.to_string(),
                    cert_der: signed.cert_der,
                    chain: signed.chain,
                    key_pkcs8: Zeroizing::new(key.serialize_der()),
                    serial: signed.serial,
                    issued_at,
                    not_after: signed.not_after,
                    renew_at: renew_at(issued_at, signed.not_after, jitter),
                })
            })
            .collect()
    }

    /// Verifies a certificate from the server before anyone sees it: it must chain to the
    /// bundle of its own trust domain and carry the SPIFFE ID we asked for.
    fn check(&self, want_id: &str, cert_der: &[u8], chain: &[Vec<u8>]) -> Result<(), NodeError> {
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
        Ok(())
    }

    /// Renews what is due, drops what policy no longer entitles, and replaces SVIDs whose
    /// serials are revoked (dropped at once; re-issued when the identity is still
    /// entitled). Returns the next instant anything is due (seconds since the epoch).
    pub async fn maintain(&self, policy: &PolicySnapshot) -> Option<i64> {
        let now = self.clock.unix();
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
            match entitlement_for(policy, self.node.base(), &id) {
                None => {
                    self.remove(&svid.spiffe_id);
                    changed = true;
                }
                Some(entitlement) if revoked => {
                    tracing::info!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, "svid revoked; dropped and re-issued");
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
            for (entitlement, result) in due.iter().zip(self.issue(&refs).await) {
                let id = entitlement.spiffe_id.to_string();
                match result {
                    Ok(fresh) => {
                        if let Ok(mut entries) = self.entries.lock() {
                            entries.insert(id, Arc::new(fresh));
                        }
                        changed = true;
                    }
                    Err(NodeError::NotEntitled(_)) => {
                        self.remove(&id);
                        changed = true;
                    }
                    Err(e) => {
                        tracing::warn!(spiffe_id = %id, error = %e, "renewal failed; will retry")
                    }
                }
            }
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        let entries = self.entries.lock().ok()?;
        entries.values().map(|s| s.renew_at.max(now + 1)).min()
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
    /// `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut policy_rx = self.node.policy();
        loop {
            let policy = policy_rx.borrow_and_update().clone();
            let next = self.maintain(&policy).await;
            let wait = next
                .map(|at| (at - self.clock.unix()).clamp(1, 3600) as u64)
                .unwrap_or(3600);
            tokio::select! {
                () = &mut shutdown => return,
                changed = policy_rx.changed() => if changed.is_err() { return },
                () = self.added.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
        }
    }
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
    use super::*;

    #[test]
    fn renewal_is_at_half_life_within_ten_percent() {
        assert_eq!(renew_at(0, 300, 0.0), 150);
        assert_eq!(renew_at(0, 300, 1.0), 165);
        assert_eq!(renew_at(0, 300, -1.0), 135);
        assert_eq!(renew_at(0, 300, 7.0), 165);
        assert!(renew_at(100, 100, 0.0) > 100);
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
