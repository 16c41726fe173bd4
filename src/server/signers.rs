//! Signing replicas (docs/ha.md, "Signing replicas"): a server on the shared store without
//! the roots' keys signs X.509-SVIDs through its own intermediate per band, which the
//! server that holds the roots certifies once an operator has admitted its key.
//!
//! * The replica makes each band's intermediate key on its own host, logs the keys'
//!   SHA-256 and posts CSRs into the store (`intermediate_requests`); it signs once a
//!   certificate comes back ([`obtain_intermediates`]).
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
use crate::server::Issuer;
use crate::store::{IntermediateAnswer, IntermediateRequest, NewIntermediateRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use writ_verifier::Band;

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
        let ca = issuer.cas.ca(request.band);
        let answer = match decide(&request, ca.trust_domain(), &admitted) {
            Decision::Wait { key_sha256 } => {
                if told.insert(id) {
                    tracing::warn!(request = id, replica = ?shown(&request.replica), band = %request.band, %key_sha256,
                        "a replica asks for an intermediate; admit its key on this server with `writ replica admit --key-sha256 {key_sha256}` if it is yours");
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
                        "band": request.band.as_str(),
                        "key_sha256": request.key_sha256,
                        "request": id,
                    }));
                issuer.audit.append(&record).map_err(|e| e.to_string())?;
                match issuer
                    .cas
                    .certify_intermediate(request.band, &request.csr, not_after)
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
                    tracing::info!(request = id, replica = ?shown(&request.replica), band = %request.band, key_sha256 = %request.key_sha256, "certified a replica's intermediate")
                }
                IntermediateAnswer::Refused(why) => {
                    tracing::warn!(request = id, replica = ?shown(&request.replica), band = %request.band, reason = ?shown(&why), "refused a replica's intermediate request")
                }
            }
        }
        told.remove(&id);
    }
    Ok(())
}

/// On a replica: for every band whose intermediate is missing or due, posts a request
/// (once: `asked` remembers it) and installs the certificate when it has come. Returns
/// whether every band now has an intermediate.
pub fn obtain_intermediates(
    issuer: &Issuer,
    me: &str,
    asked: &mut BTreeMap<Band, i64>,
) -> Result<bool, String> {
    let now = issuer.cas.now();
    for ca in issuer.cas.iter() {
        let band = ca.band();
        let wanted = ca.intermediate_wanted(now).map_err(|e| e.to_string())?;
        let Some(wanted) = wanted else {
            asked.remove(&band);
            continue;
        };
        let signing = ca.intermediate_cert().is_some();
        let id = match asked.get(&band) {
            Some(id) => *id,
            None => {
                let id = issuer
                    .store
                    .post_intermediate_request(&NewIntermediateRequest {
                        replica: me.to_owned(),
                        band,
                        csr: wanted.csr,
                        key_sha256: wanted.key_sha256.clone(),
                    })
                    .map_err(|e| e.to_string())?;
                tracing::info!(%band, request = id, key_sha256 = %wanted.key_sha256, "asked the server holding the roots for an intermediate");
                asked.insert(band, id);
                id
            }
        };
        let Some(row) = issuer
            .store
            .intermediate_request(id)
            .map_err(|e| e.to_string())?
        else {
            asked.remove(&band);
            continue;
        };
        if let Some(why) = row.refused {
            tracing::error!(%band, request = id, reason = ?shown(&why), "the server holding the roots refused this replica's intermediate; asking again");
            asked.remove(&band);
            continue;
        }
        if let Some(cert) = row.certificate {
            match ca.install_intermediate(&cert, now) {
                Ok(()) => {
                    asked.remove(&band);
                    if !signing {
                        tracing::info!(%band, "this replica signs X.509-SVIDs through its own intermediate");
                    }
                }
                Err(e) => {
                    tracing::error!(%band, request = id, error = %e, "the certificate in answer to this replica's request is not usable; asking again");
                    asked.remove(&band);
                }
            }
        }
    }
    Ok(issuer.cas.iter().all(|ca| ca.intermediate_cert().is_some()))
}

/// Why a signing replica cannot sign X.509-SVIDs yet, as `writ healthcheck` says it:
/// some band has no intermediate. `None` on the root's holder and on a ready replica.
pub fn not_signing(issuer: &Issuer) -> Option<String> {
    let missing: Vec<String> = issuer
        .cas
        .iter()
        .filter(|ca| !ca.holds_roots() && ca.intermediate_cert().is_none())
        .map(|ca| ca.trust_domain().to_string())
        .collect();
    if missing.is_empty() {
        return None;
    }
    let keys: Vec<String> = issuer
        .cas
        .iter()
        .filter_map(|ca| ca.replica_key_sha256())
        .map(|k| format!("--key-sha256 {k}"))
        .collect();
    Some(format!(
        "a signing replica without its intermediate for {}: run `writ replica admit {}` on the server that holds the roots",
        missing.join(", "),
        keys.join(" ")
    ))
}

/// How long a replica starting without intermediates waits for them to be certified
/// before it gives up (and exits, saying what to do).
pub const ADMISSION_WAIT: Duration = Duration::from_secs(15 * 60);

/// Waits until every band of this replica has an intermediate (the exchange itself runs
/// in [`run`]), reminding the operator what to do every 30 s; fails after `bound`.
pub async fn await_intermediates(issuer: &Issuer, bound: Duration) -> anyhow::Result<()> {
    let keys: Vec<String> = issuer
        .cas
        .iter()
        .filter_map(|ca| ca.replica_key_sha256())
        .map(|k| format!("--key-sha256 {k}"))
        .collect();
    let started = tokio::time::Instant::now();
    let mut reminded = started;
    while !issuer.cas.iter().all(|ca| ca.intermediate_cert().is_some()) {
        if started.elapsed() >= bound {
            anyhow::bail!(
                "no intermediate was certified within {}: on the server that holds the roots, run `writ replica admit {}`, then start this server again",
                humantime::format_duration(bound),
                keys.join(" ")
            );
        }
        if reminded.elapsed() >= Duration::from_secs(30) {
            reminded = tokio::time::Instant::now();
            tracing::warn!(
                "still waiting for the server that holds the roots to certify this replica's intermediates: run `writ replica admit {}` there",
                keys.join(" ")
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
        let keys: Vec<String> = issuer
            .cas
            .iter()
            .filter_map(|ca| ca.replica_key_sha256())
            .collect();
        tracing::warn!(replica = %me, keys = ?keys,
            "this server does not hold the roots: it signs X.509-SVIDs once the server that holds them has certified its intermediates; admit it there with `writ replica admit {}`",
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
                    obtain_intermediates(&issuer, &me, &mut asked_now).map(|_| ())
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
            band: Band::Base,
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
