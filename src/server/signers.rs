//! Signing replicas (docs/ha.md, "Signing replicas"): a server on the shared store without
//! the roots' keys signs X.509-SVIDs through its own intermediate per CA (each band of the
//! deployment, each band of every active tenant), which the server that holds the roots
//! certifies once an operator has admitted its key.
//!
//! * The replica makes each CA's intermediate key on its own host, logs the keys'
//!   SHA-256 and posts CSRs into the store (`intermediate_requests`), each naming the
//!   trust domain whose CA is to certify it; it signs once a certificate comes back
//!   ([`obtain_intermediates`]). Tenants created on another server after it started are
//!   opened as the policy brings them ([`open_new_tenants`]).
//! * The root's holder certifies a request only if the key the CSR carries (hashed here,
//!   from the CSR, never from the request's own column) is in [`Admissions`]: a file on
//!   the root holder's host, written by `writ replica admit` through its admin API and
//!   audited. Write access to the database alone admits nothing ([`certify_admitted`]).
//! * Renewal at half-life re-certifies the same admitted key.
//!
//! Must never: certify a key no operator admitted, read admissions from the database, or
//! let a replica sign with a certificate that does not certify its own key.

use crate::audit::{Kind, Record};
use crate::ca::intermediate::{key_sha256, verify_intermediate_csr};
use crate::ca::{CaSet, TrustDomainCa};
use crate::server::Issuer;
use crate::store::{IntermediateAnswer, IntermediateRequest, NewIntermediateRequest};
use spiffe::TrustDomain;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often the root's holder looks for requests, and a replica for its certificates.
pub const POLL: Duration = Duration::from_millis(500);

/// The admissions file, in the root holder's key directory.
pub const ADMISSIONS_FILE: &str = "admitted-replica-keys";

/// Why an admission could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// Not a SHA-256 in hex.
    #[error("not a key SHA-256 (64 hex digits): {0:?}")]
    BadHash(String),
    /// The file could not be read or written.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

/// A key SHA-256 as an operator types it: 64 hex digits, any case; lowercase out.
pub fn parse_key_sha256(text: &str) -> Result<String, AdmissionError> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(AdmissionError::BadHash(text.chars().take(80).collect()))
    }
}

/// The admitted keys, one SHA-256 per line, in a file (0600) on the root holder's host.
#[derive(Debug, Clone)]
pub struct Admissions {
    path: PathBuf,
}

impl Admissions {
    /// The admissions kept in `key_dir`.
    pub fn in_dir(key_dir: &Path) -> Self {
        Admissions {
            path: key_dir.join(ADMISSIONS_FILE),
        }
    }

    /// Every admitted key; none when the file does not exist. A line that is not a
    /// SHA-256 admits nothing.
    pub fn load(&self) -> Result<BTreeSet<String>, AdmissionError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|line| parse_key_sha256(line).ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(AdmissionError::Io(
                format!("read {}", self.path.display()),
                e,
            )),
        }
    }

    /// Adds `hashes` (already parsed) and makes the file durable; returns those that
    /// were not admitted before.
    pub fn admit(&self, hashes: &[String]) -> Result<Vec<String>, AdmissionError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let known = self.load()?;
        let fresh: Vec<String> = hashes
            .iter()
            .filter(|h| !known.contains(*h))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if fresh.is_empty() {
            return Ok(fresh);
        }
        let io = |what: &str, e| AdmissionError::Io(format!("{what} {}", self.path.display()), e);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| io("open", e))?;
        let text: String = fresh.iter().map(|h| format!("{h}\n")).collect();
        file.write_all(text.as_bytes())
            .map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        Ok(fresh)
    }
}

impl Admissions {
    /// Removes `hashes` and makes the file durable (written whole beside it, then
    /// renamed over it); returns those that were admitted. A removed key's intermediate
    /// is not renewed: it stops signing when its certificate expires.
    pub fn withdraw(&self, hashes: &[String]) -> Result<Vec<String>, AdmissionError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let known = self.load()?;
        let removed: Vec<String> = hashes
            .iter()
            .filter(|h| known.contains(*h))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if removed.is_empty() {
            return Ok(removed);
        }
        let io = |what: &str, e| AdmissionError::Io(format!("{what} {}", self.path.display()), e);
        let keep: String = known
            .iter()
            .filter(|h| !removed.contains(*h))
            .map(|h| format!("{h}\n"))
            .collect();
        let next = self.path.with_extension("next");
        let _ = std::fs::remove_file(&next);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&next)
            .map_err(|e| io("create", e))?;
        file.write_all(keep.as_bytes())
            .map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        std::fs::rename(&next, &self.path).map_err(|e| io("replace", e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync the directory of", e))?;
        }
        Ok(removed)
    }
}

/// Text read from the shared store (a replica's name, a refusal), as logs show it:
/// bounded here, and logged with `?` so control characters are escaped. Whoever can
/// write the database can write these.
fn shown(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The trust domain `request` asks a certificate in: the one it names, or, for a row
/// posted before requests named one (PostgreSQL schema 5 and earlier, when the exchange
/// covered the deployment's bands only), the deployment's trust domain of its band.
pub fn requested_trust_domain(cas: &CaSet, request: &NewIntermediateRequest) -> TrustDomain {
    match &request.trust_domain {
        Some(trust_domain) => trust_domain.clone(),
        None => cas.ca(request.band).trust_domain().clone(),
    }
}

/// The CA that is to certify `request`: the one of the trust domain it asks in, whose band
/// must be the one it states. `Err` is the refusal: a trust domain this server does not
/// hold (a tenant it never had), or a band that is not that CA's.
fn requested_ca(
    cas: &CaSet,
    request: &NewIntermediateRequest,
) -> Result<Arc<TrustDomainCa>, String> {
    let trust_domain = requested_trust_domain(cas, request);
    let ca = cas
        .ca_in(&trust_domain)
        .ok_or_else(|| format!("this server holds no CA of trust domain {trust_domain}"))?;
    if ca.band() != request.band {
        return Err(format!(
            "trust domain {trust_domain} is a CA of band {}, not {}",
            ca.band(),
            request.band
        ));
    }
    Ok(ca)
}

/// What the root's holder does with one pending request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Certify it: the CSR is good and its key is admitted.
    Certify,
    /// Leave it pending: a good CSR whose key no operator has admitted (yet).
    Wait {
        /// The key's SHA-256, computed from the CSR.
        key_sha256: String,
    },
    /// Answer it with a refusal: the CSR is bad, or it misstates its key.
    Refuse(String),
}

/// The decision on `request`, given the admitted keys. The key's hash is computed from
/// the CSR; the request's own `key_sha256` column only has to agree with it.
pub fn decide(
    request: &NewIntermediateRequest,
    trust_domain: &spiffe::TrustDomain,
    admitted: &BTreeSet<String>,
) -> Decision {
    let spki = match verify_intermediate_csr(&request.csr, trust_domain) {
        Ok(spki) => spki,
        Err(e) => return Decision::Refuse(e.to_string()),
    };
    let key_sha256 = key_sha256(&spki);
    if key_sha256 != request.key_sha256 {
        return Decision::Refuse("the request's key_sha256 is not its CSR's key".into());
    }
    if admitted.contains(&key_sha256) {
        Decision::Certify
    } else {
        Decision::Wait { key_sha256 }
    }
}

/// On the root's holder: answers every pending request once (see [`decide`]); requests
/// waiting for admission are logged the first time they are seen (`told`).
pub fn certify_admitted(
    issuer: &Issuer,
    admissions: &Admissions,
    told: &mut BTreeSet<i64>,
) -> Result<(), String> {
    let pending = issuer
        .store
        .pending_intermediate_requests()
        .map_err(|e| e.to_string())?;
    if pending.is_empty() {
        return Ok(());
    }
    let admitted = admissions.load().map_err(|e| e.to_string())?;
    for IntermediateRequest { id, request, .. } in pending {
        let trust_domain = requested_trust_domain(&issuer.cas, &request);
        let decision = match requested_ca(&issuer.cas, &request) {
            Ok(ca) => decide(&request, ca.trust_domain(), &admitted),
            Err(why) => Decision::Refuse(why),
        };
        let answer = match decision {
            Decision::Wait { key_sha256 } => {
                if told.insert(id) {
                    tracing::warn!(request = id, replica = ?shown(&request.replica), %trust_domain, band = %request.band, %key_sha256,
                        "a replica asks for an intermediate for {trust_domain}; admit its key on this server with `writ replica admit --key-sha256 {key_sha256}` if it is yours");
                }
                continue;
            }
            Decision::Refuse(why) => IntermediateAnswer::Refused(why),
            Decision::Certify => {
                let now = issuer.cas.now();
                let not_after = now.saturating_add(
                    i64::try_from(issuer.config.ca.intermediate_ttl.as_secs()).unwrap_or(i64::MAX),
                );
                // Audited before the certificate exists anywhere but here.
                let record = Record::new(now, Kind::AdminChange, "intermediate.certify", "writ")
                    .detail(serde_json::json!({
                        "replica": request.replica,
                        "trust_domain": trust_domain.to_string(),
                        "band": request.band.as_str(),
                        "key_sha256": request.key_sha256,
                        "request": id,
                    }));
                issuer.audit.append(&record).map_err(|e| e.to_string())?;
                match issuer
                    .cas
                    .certify_intermediate(&trust_domain, &request.csr, not_after)
                {
                    Ok(cert) => IntermediateAnswer::Certified(cert),
                    Err(e) => IntermediateAnswer::Refused(e.to_string()),
                }
            }
        };
        if issuer
            .store
            .answer_intermediate_request(id, &answer)
            .map_err(|e| e.to_string())?
        {
            match answer {
                IntermediateAnswer::Certified(_) => {
                    tracing::info!(request = id, replica = ?shown(&request.replica), %trust_domain, band = %request.band, key_sha256 = %request.key_sha256, "certified a replica's intermediate")
                }
                IntermediateAnswer::Refused(why) => {
                    tracing::warn!(request = id, replica = ?shown(&request.replica), %trust_domain, band = %request.band, reason = ?shown(&why), "refused a replica's intermediate request")
                }
            }
        }
        told.remove(&id);
    }
    Ok(())
}

/// The CAs a replica signs through intermediates of its own: the deployment's, then each
/// active tenant's pair. A disabled tenant issues nothing ever again: its CAs stay open
/// (its bundles still verify what it issued), but nobody is asked to admit keys for them.
pub fn signing_cas(issuer: &Issuer) -> Vec<Arc<TrustDomainCa>> {
    let mut cas = issuer.cas.band_cas(issuer.cas.base());
    for tenant in issuer.registry.snapshot().tenants.values() {
        if let (true, Ok(base)) = (tenant.is_active(), tenant.trust_domain()) {
            cas.extend(issuer.cas.band_cas(&base));
        }
    }
    cas
}

/// Whether `ca` is one of the deployment's (not a tenant's).
fn is_deployments(issuer: &Issuer, ca: &TrustDomainCa) -> bool {
    issuer
        .cas
        .iter()
        .any(|own| own.trust_domain() == ca.trust_domain())
}

/// On a replica: opens the CAs of tenants created on another server since this one
/// started, as the policy follower brings them (the root's holder stores a tenant's
/// authorities before it records the tenant), so that their bundles are served and
/// [`obtain_intermediates`] asks for their intermediates. Disabled tenants' too, as at
/// start. Every tenant is tried; the first failure is returned.
pub fn open_new_tenants(issuer: &Issuer) -> Result<(), String> {
    let held: BTreeSet<TrustDomain> = issuer.cas.tenants().into_iter().collect();
    let mut opened = false;
    let mut first_error = None;
    for tenant in issuer.registry.snapshot().tenants.values() {
        let opening = tenant
            .trust_domain()
            .map_err(|e| e.to_string())
            .and_then(|base| {
                if held.contains(&base) {
                    return Ok(false);
                }
                issuer
                    .cas
                    .add_tenant(&base)
                    .map(|()| true)
                    .map_err(|e| e.to_string())
            });
        match opening {
            Ok(fresh) => opened |= fresh,
            Err(e) => {
                tracing::warn!(tenant = ?shown(&tenant.name), error = %e, "opening a tenant's CAs failed; will retry");
                first_error.get_or_insert(e);
            }
        }
    }
    if opened {
        issuer.publish_bundles();
    }
    first_error.map_or(Ok(()), Err)
}

/// On a replica: for every CA of [`signing_cas`] whose intermediate is missing or due,
/// posts a request naming its trust domain (once: `asked` remembers it) and installs the
/// certificate when it has come. Returns whether every one of them now has an
/// intermediate.
pub fn obtain_intermediates(
    issuer: &Issuer,
    me: &str,
    asked: &mut BTreeMap<TrustDomain, i64>,
) -> Result<bool, String> {
    let now = issuer.cas.now();
    let cas = signing_cas(issuer);
    // A tenant disabled since it was asked for: its answer is nobody's business now.
    asked.retain(|trust_domain, _| cas.iter().any(|ca| ca.trust_domain() == trust_domain));
    for ca in &cas {
        let trust_domain = ca.trust_domain().clone();
        let wanted = ca.intermediate_wanted(now).map_err(|e| e.to_string())?;
        let Some(wanted) = wanted else {
            asked.remove(&trust_domain);
            continue;
        };
        let signing = ca.intermediate_cert().is_some();
        let id = match asked.get(&trust_domain) {
            Some(id) => *id,
            None => {
                let id = issuer
                    .store
                    .post_intermediate_request(&NewIntermediateRequest {
                        replica: me.to_owned(),
                        trust_domain: Some(trust_domain.clone()),
                        band: ca.band(),
                        csr: wanted.csr,
                        key_sha256: wanted.key_sha256.clone(),
                    })
                    .map_err(|e| e.to_string())?;
                if signing {
                    tracing::info!(%trust_domain, request = id, key_sha256 = %wanted.key_sha256, "asked the server holding the roots to renew an intermediate");
                } else {
                    // Its first certificate: an operator must admit the key (a renewal
                    // of an admitted key needs no one).
                    tracing::warn!(%trust_domain, request = id, key_sha256 = %wanted.key_sha256,
                        "asked the server holding the roots for an intermediate for {trust_domain}; until it is certified this replica signs nothing in {trust_domain}. Admit the key there with `writ replica admit --key-sha256 {}`", wanted.key_sha256);
                }
                asked.insert(trust_domain.clone(), id);
                id
            }
        };
        let Some(row) = issuer
            .store
            .intermediate_request(id)
            .map_err(|e| e.to_string())?
        else {
            asked.remove(&trust_domain);
            continue;
        };
        if let Some(why) = row.refused {
            tracing::error!(%trust_domain, request = id, reason = ?shown(&why), "the server holding the roots refused this replica's intermediate; asking again");
            asked.remove(&trust_domain);
            continue;
        }
        if let Some(cert) = row.certificate {
            match ca.install_intermediate(&cert, now) {
                Ok(()) => {
                    asked.remove(&trust_domain);
                    if !signing {
                        tracing::info!(%trust_domain, band = %ca.band(), "this replica signs X.509-SVIDs in {trust_domain} through its own intermediate");
                    }
                }
                Err(e) => {
                    tracing::error!(%trust_domain, request = id, error = %e, "the certificate in answer to this replica's request is not usable; asking again");
                    asked.remove(&trust_domain);
                }
            }
        }
    }
    Ok(cas.iter().all(|ca| ca.intermediate_cert().is_some()))
}

/// The CAs of [`signing_cas`] this replica has no intermediate for yet, and the
/// `--key-sha256 HEX` arguments that admit their keys.
fn missing(issuer: &Issuer) -> (Vec<Arc<TrustDomainCa>>, String) {
    let missing: Vec<_> = signing_cas(issuer)
        .into_iter()
        .filter(|ca| !ca.holds_roots() && ca.intermediate_cert().is_none())
        .collect();
    let keys = missing
        .iter()
        .filter_map(|ca| ca.replica_key_sha256())
        .map(|k| format!("--key-sha256 {k}"))
        .collect::<Vec<_>>()
        .join(" ");
    (missing, keys)
}

/// Why a signing replica cannot sign X.509-SVIDs yet, as `writ healthcheck` says it: some
/// band of the deployment has no intermediate (then every missing one is named, tenants'
/// too, with the keys to admit). `None` on the root's holder and on a replica that signs
/// for the deployment: a tenant's intermediate still to be admitted does not make it
/// unhealthy (it serves everything else; for that tenant's identities it answers
/// Unavailable and agents ask the root's holder), so creating a tenant never takes
/// running replicas out of service. Its log says what to admit.
pub fn not_signing(issuer: &Issuer) -> Option<String> {
    let (missing, keys) = missing(issuer);
    if !missing.iter().any(|ca| is_deployments(issuer, ca)) {
        return None;
    }
    let names: Vec<String> = missing
        .iter()
        .map(|ca| ca.trust_domain().to_string())
        .collect();
    Some(format!(
        "a signing replica without its intermediate for {}: run `writ replica admit {keys}` on the server that holds the roots",
        names.join(", "),
    ))
}

/// How long a replica starting without intermediates waits for them to be certified
/// before it gives up (and exits, saying what to do).
pub const ADMISSION_WAIT: Duration = Duration::from_secs(15 * 60);

/// Waits until every band of the deployment has an intermediate on this replica (the
/// exchange itself runs in [`run`]), reminding the operator what to do every 30 s; fails
/// after `bound`. Tenants' intermediates are asked for at the same time and named in the
/// reminders, but not waited for: the replica serves the deployment without them.
pub async fn await_intermediates(issuer: &Issuer, bound: Duration) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let mut reminded = started;
    while !issuer.cas.iter().all(|ca| ca.intermediate_cert().is_some()) {
        if started.elapsed() >= bound {
            anyhow::bail!(
                "no intermediate was certified within {}: on the server that holds the roots, run `writ replica admit {}`, then start this server again",
                humantime::format_duration(bound),
                missing(issuer).1
            );
        }
        if reminded.elapsed() >= Duration::from_secs(30) {
            reminded = tokio::time::Instant::now();
            tracing::warn!(
                "still waiting for the server that holds the roots to certify this replica's intermediates: run `writ replica admit {}` there",
                missing(issuer).1
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Runs the side of the intermediate exchange this server has until `shutdown`: the
/// root's holder certifies admitted requests; a replica obtains and renews its
/// intermediates. Nothing without a shared store.
pub async fn run(issuer: Arc<Issuer>, shutdown: impl std::future::Future<Output = ()>) {
    if !issuer.store.shared() {
        return;
    }
    tokio::pin!(shutdown);
    let me = issuer.registry.replica_name().unwrap_or("writ").to_owned();
    let holds_roots = issuer.cas.holds_roots();
    if !holds_roots {
        let cas = signing_cas(&issuer);
        let trust_domains: Vec<String> =
            cas.iter().map(|ca| ca.trust_domain().to_string()).collect();
        let keys: Vec<String> = cas
            .iter()
            .filter_map(|ca| ca.replica_key_sha256())
            .collect();
        tracing::warn!(replica = %me, trust_domains = ?trust_domains, keys = ?keys,
            "this server does not hold the roots: it signs X.509-SVIDs once the server that holds them has certified its intermediates (one key per trust domain); admit it there with `writ replica admit {}`",
            keys.iter().map(|k| format!("--key-sha256 {k}")).collect::<Vec<_>>().join(" "));
    }
    let admissions = Admissions::in_dir(&issuer.config.data_dir.join("keys"));
    let mut told = BTreeSet::new();
    let mut asked = BTreeMap::new();
    loop {
        let step = {
            let issuer = Arc::clone(&issuer);
            let admissions = admissions.clone();
            let me = me.clone();
            let (mut told_now, mut asked_now) =
                (std::mem::take(&mut told), std::mem::take(&mut asked));
            tokio::task::spawn_blocking(move || {
                let outcome = if holds_roots {
                    certify_admitted(&issuer, &admissions, &mut told_now)
                } else {
                    // Tenants first, so a new tenant's intermediates are asked for in
                    // the same round; one that cannot be opened holds up no other.
                    let opened = open_new_tenants(&issuer);
                    obtain_intermediates(&issuer, &me, &mut asked_now).and(opened)
                };
                (outcome, told_now, asked_now)
            })
            .await
        };
        match step {
            Ok((outcome, told_now, asked_now)) => {
                told = told_now;
                asked = asked_now;
                // Bundles hold the roots only: an intermediate changes none of them.
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "intermediate exchange failed; will retry");
                }
            }
            Err(_) => return,
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ca::intermediate_csr;
    use crate::ca::keys::{EcKey, SignatureEncoding};

    fn td() -> spiffe::TrustDomain {
        spiffe::TrustDomain::new("a.example.org").unwrap()
    }

    fn request(key: &EcKey) -> NewIntermediateRequest {
        NewIntermediateRequest {
            replica: "b".into(),
            trust_domain: Some(td()),
            band: writ_verifier::Band::Base,
            csr: intermediate_csr(&td(), key).unwrap(),
            key_sha256: key_sha256(&key.spki_der()),
        }
    }

    #[test]
    fn only_an_admitted_key_is_certified() {
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let req = request(&key);
        let hash = key_sha256(&key.spki_der());
        assert_eq!(
            decide(&req, &td(), &BTreeSet::new()),
            Decision::Wait {
                key_sha256: hash.clone()
            }
        );
        let admitted = BTreeSet::from([hash]);
        assert_eq!(decide(&req, &td(), &admitted), Decision::Certify);
    }

    #[test]
    fn a_row_naming_an_admitted_hash_for_another_key_is_refused() {
        // A database writer copies an admitted key's hash onto its own CSR.
        let admitted_key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let forger = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let admitted = BTreeSet::from([key_sha256(&admitted_key.spki_der())]);
        let mut forged = request(&forger);
        forged.key_sha256 = key_sha256(&admitted_key.spki_der());
        assert!(matches!(
            decide(&forged, &td(), &admitted),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn a_bad_csr_is_refused_whatever_is_admitted() {
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let mut req = request(&key);
        let admitted = BTreeSet::from([req.key_sha256.clone()]);
        let last = req.csr.len() - 1;
        req.csr[last] ^= 1;
        assert!(matches!(
            decide(&req, &td(), &admitted),
            Decision::Refuse(_)
        ));
        let other = spiffe::TrustDomain::new("b.example.org").unwrap();
        assert!(matches!(
            decide(&request(&key), &other, &admitted),
            Decision::Refuse(_)
        ));
    }

    /// The root's holder finds the CA by the request's trust domain, a tenant's as well as
    /// the deployment's; a row from before trust domains were recorded is the
    /// deployment's of its band; a trust domain not held, or a band that is not its CA's,
    /// is refused, and nothing is certified in a trust domain not held.
    #[test]
    fn a_request_is_certified_by_its_trust_domains_ca_only() {
        use writ_verifier::Band;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(&dir.path().join("writ.redb")).unwrap());
        let name = |n: &str| TrustDomain::new(n).unwrap();
        let cas = CaSet::open(
            name("example.org"),
            &[name("acme.test")],
            &dir.path().join("keys"),
            store,
            crate::ca::CaConfig::default(),
            Arc::new(crate::clock::ManualClock::at(1_700_000_000)),
        )
        .unwrap();
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let asking = |trust_domain: Option<&str>, band: Band| NewIntermediateRequest {
            replica: "b".into(),
            trust_domain: trust_domain.map(name),
            band,
            csr: intermediate_csr(&name(trust_domain.unwrap_or("remediate.example.org")), &key)
                .unwrap(),
            key_sha256: key_sha256(&key.spki_der()),
        };

        let tenant = asking(Some("investigate.acme.test"), Band::Investigative);
        let ca = requested_ca(&cas, &tenant).unwrap();
        assert_eq!(ca.trust_domain(), &name("investigate.acme.test"));
        let cert = cas
            .certify_intermediate(ca.trust_domain(), &tenant.csr, 1_700_003_600)
            .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [x509_parser::extensions::GeneralName::URI(
                "spiffe://investigate.acme.test"
            )]
        );

        let old = asking(None, Band::Remediation);
        assert_eq!(
            requested_trust_domain(&cas, &old),
            name("remediate.example.org")
        );
        assert_eq!(
            requested_ca(&cas, &old).unwrap().trust_domain(),
            &name("remediate.example.org")
        );

        let unheld = asking(Some("investigate.globex.test"), Band::Investigative);
        let why = requested_ca(&cas, &unheld).unwrap_err();
        assert!(
            why.contains("holds no CA of trust domain investigate.globex.test"),
            "{why}"
        );
        assert!(
            cas.certify_intermediate(&name("investigate.globex.test"), &unheld.csr, 1_700_003_600)
                .is_err()
        );
        let mislabelled = asking(Some("investigate.acme.test"), Band::Remediation);
        let why = requested_ca(&cas, &mislabelled).unwrap_err();
        assert!(why.contains("band investigative, not remediation"), "{why}");
    }

    #[test]
    fn admissions_are_hashes_kept_in_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let admissions = Admissions::in_dir(dir.path());
        assert!(admissions.load().unwrap().is_empty());
        let a = "A".repeat(64);
        let parsed = parse_key_sha256(&a).unwrap();
        assert_eq!(parsed, "a".repeat(64));
        assert_eq!(
            admissions.admit(std::slice::from_ref(&parsed)).unwrap(),
            vec![parsed.clone()]
        );
        // Admitting again changes nothing.
        assert!(
            admissions
                .admit(std::slice::from_ref(&parsed))
                .unwrap()
                .is_empty()
        );
        assert_eq!(admissions.load().unwrap(), BTreeSet::from([parsed.clone()]));
        let mode = std::fs::metadata(dir.path().join(ADMISSIONS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Withdrawn: only the named key goes, the file stays private.
        let b = "b".repeat(64);
        admissions.admit(std::slice::from_ref(&b)).unwrap();
        assert_eq!(
            admissions
                .withdraw(&[parsed.clone(), "c".repeat(64)])
                .unwrap(),
            vec![parsed.clone()]
        );
        assert_eq!(admissions.load().unwrap(), BTreeSet::from([b]));
        assert!(admissions.withdraw(&[parsed]).unwrap().is_empty());
        let mode = std::fs::metadata(dir.path().join(ADMISSIONS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_hash_must_be_64_hex_digits() {
        assert!(parse_key_sha256(&"0".repeat(63)).is_err());
        assert!(parse_key_sha256(&"g".repeat(64)).is_err());
        assert!(parse_key_sha256(&format!("{} ", "0".repeat(64))).is_ok());
    }
}
