//! Trust-domain certificate authorities: one per band of the deployment and of each tenant,
//! each with its own keys.
//!
//! Owns: CA keys (ECDSA P-256 through ring), self-signed roots, rotation, minting of
//! X.509-SVIDs and JWT-SVIDs, and the bundles. Authorities persist through
//! [`AuthorityStore`], an interface this module owns and the store implements; SVID
//! records are the issuer's to write. Must never: copy anything but the public key out of
//! a CSR, sign with one band's key for another band's trust domain (nor with one
//! tenant's for another's or the deployment's), log or return a CA private key, mint past
//! the issuing authority's notAfter, or import the store, the server or policy (the
//! dependency runs the other way).

pub mod authority;
pub mod bundle;
pub mod csr;
mod der;
pub mod intermediate;
pub mod jwt;
pub mod keys;
pub mod x509;

pub use authority::{
    AuthorityError, AuthorityRecord, AuthorityState, RotationStep, revoke_steps, rotation_steps,
    taint_steps,
};
pub use intermediate::intermediate_csr;

use crate::clock::SharedClock;
use crate::identity::IdError;
use keys::{EcKey, SignatureEncoding};
use ring::rand::SecureRandom;
use serde::Deserialize;
use spiffe::{SpiffeId, TrustDomain};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use writ_verifier::{Band, ClaimsError, WritClaims};

/// The longest SPIFFE ID writ will put in an SVID (SPIFFE-ID.md §2.3: SHOULD NOT exceed).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Upper bound on DNS SANs in one SVID.
pub const MAX_DNS_NAMES: usize = 16;

/// Why a CA operation failed. Every variant but `Io`, `Crypto`, `Store` and
/// `Certificate` is the caller's mistake and maps to "invalid argument".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The SPIFFE ID is malformed, has no path, or is too long.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    BadSpiffeId {
        /// What was given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The SPIFFE ID belongs to another trust domain than the CA asked to sign it.
    #[error("SPIFFE ID {id} is not in trust domain {trust_domain}")]
    WrongTrustDomain {
        /// The SPIFFE ID.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// The TTL is zero or longer than the CA guarantees.
    #[error("invalid TTL: {0}")]
    BadTtl(String),
    /// The CSR is malformed, its signature fails, or it asks for too much.
    #[error("malformed CSR: {0}")]
    BadCsr(String),
    /// The public key is malformed or of an unsupported type.
    #[error("unsupported public key: {0}")]
    BadKey(String),
    /// Another request field is invalid.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The claims could not be encoded.
    #[error(transparent)]
    Claims(#[from] ClaimsError),
    /// The configuration is inconsistent.
    #[error("invalid CA configuration: {0}")]
    Config(String),
    /// rcgen refused to build a CA certificate.
    #[error("building CA certificate: {0}")]
    Certificate(String),
    /// A cryptographic primitive failed.
    #[error("crypto: {0}")]
    Crypto(&'static str),
    /// A key file could not be read or written.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// The authority store failed (see [`AuthorityStore`]).
    #[error(transparent)]
    Store(AuthorityStoreError),
    /// No authority of the trust domain can sign right now.
    #[error("no active authority for trust domain {0}")]
    NoAuthority(String),
    /// This server does not hold the roots' keys (a signing replica, docs/ha.md): it
    /// signs X.509-SVIDs only through its own intermediate, and no JWT-SVIDs.
    #[error("this server does not hold the keys of trust domain {0}'s authorities")]
    RootsElsewhere(String),
    /// An operator's taint or revoke was refused (see [`authority::taint_steps`]).
    #[error("trust domain {trust_domain}: {error}")]
    Authority {
        /// The trust domain of the authority.
        trust_domain: String,
        /// Why.
        error: AuthorityError,
    },
}

impl From<IdError> for CaError {
    fn from(e: IdError) -> Self {
        CaError::BadSpiffeId {
            id: e.id().to_owned(),
            reason: e.reason().to_owned(),
        }
    }
}

impl CaError {
    /// Whether the error is the caller's (bad input) rather than the server's.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            CaError::BadSpiffeId { .. }
                | CaError::WrongTrustDomain { .. }
                | CaError::BadTtl(_)
                | CaError::BadCsr(_)
                | CaError::BadKey(_)
                | CaError::BadRequest(_)
                | CaError::Claims(_)
        )
    }
}

/// The most notBefore may be backdated (config `[ca] backdate`; default 10s).
pub const MAX_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Lifetimes, as configured. Defaults follow docs/architecture.md, "Identities".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// Lifetime of each CA authority.
    #[serde(with = "humantime_serde_secs")]
    pub ca_ttl: Duration,
    /// Default X.509-SVID TTL.
    #[serde(with = "humantime_serde_secs")]
    pub x509_svid_ttl: Duration,
    /// Default JWT-SVID TTL.
    #[serde(with = "humantime_serde_secs")]
    pub jwt_svid_ttl: Duration,
    /// The longest TTL any SVID may have; the CA lifetime must be ≥ 6 × this.
    #[serde(with = "humantime_serde_secs")]
    pub max_svid_ttl: Duration,
    /// `spiffe_refresh_hint` in bundles.
    #[serde(with = "humantime_serde_secs")]
    pub refresh_hint: Duration,
    /// How far notBefore is backdated for clock skew.
    #[serde(with = "humantime_serde_secs")]
    pub backdate: Duration,
    /// Sign leaves through an intermediate CA certified by the band's root, rather than
    /// with the root itself (off by default).
    pub sign_with_intermediate: bool,
    /// Lifetime of each intermediate (renewed at half-life, never past its root).
    #[serde(with = "humantime_serde_secs")]
    pub intermediate_ttl: Duration,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            ca_ttl: Duration::from_secs(24 * 3600),
            x509_svid_ttl: Duration::from_secs(5 * 60),
            jwt_svid_ttl: Duration::from_secs(5 * 60),
            max_svid_ttl: Duration::from_secs(3600),
            refresh_hint: Duration::from_secs(60),
            backdate: Duration::from_secs(10),
            sign_with_intermediate: false,
            intermediate_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl CaConfig {
    /// Checks the invariants: CA lifetime ≥ 6 × the longest SVID TTL (so rotation at
    /// half-life leaves every SVID its full TTL), defaults within the maximum.
    pub fn validate(&self) -> Result<(), CaError> {
        let secs = |d: Duration| d.as_secs();
        if secs(self.max_svid_ttl) == 0
            || secs(self.x509_svid_ttl) == 0
            || secs(self.jwt_svid_ttl) == 0
        {
            return Err(CaError::Config("TTLs must be at least one second".into()));
        }
        if self.x509_svid_ttl > self.max_svid_ttl || self.jwt_svid_ttl > self.max_svid_ttl {
            return Err(CaError::Config(
                "default SVID TTLs exceed max_svid_ttl".into(),
            ));
        }
        // Backdating only absorbs clock skew between hosts; more would make an SVID valid
        // for a time before it was issued (before its incident opened, say).
        if self.backdate > MAX_BACKDATE {
            return Err(CaError::Config(format!(
                "backdate ({}) must be at most {}: it only absorbs clock skew",
                humantime::format_duration(self.backdate),
                humantime::format_duration(MAX_BACKDATE)
            )));
        }
        if secs(self.ca_ttl) < 6 * secs(self.max_svid_ttl) {
            return Err(CaError::Config(format!(
                "ca_ttl ({}s) must be at least 6 x max_svid_ttl ({}s)",
                secs(self.ca_ttl),
                secs(self.max_svid_ttl)
            )));
        }
        // Renewal at half-life leaves a fresh intermediate at least half its lifetime, so
        // that much keeps every leaf its full TTL.
        if self.sign_with_intermediate && secs(self.intermediate_ttl) < 2 * secs(self.max_svid_ttl)
        {
            return Err(CaError::Config(format!(
                "intermediate_ttl ({}s) must be at least 2 x max_svid_ttl ({}s)",
                secs(self.intermediate_ttl),
                secs(self.max_svid_ttl)
            )));
        }
        Ok(())
    }
}

mod humantime_serde_secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// What an [`AuthorityStore`] failed with, in the store's own terms.
pub type AuthorityStoreError = Box<dyn std::error::Error + Send + Sync>;

/// Where the CAs keep their authority records and bundle sequence numbers, durably.
///
/// The CA owns this interface and the store implements it, so that the CA never depends
/// on the database (nor on what else the database holds).
pub trait AuthorityStore: Send + Sync {
    /// The authorities of `trust_domain`, in the order they were created, and its bundle
    /// sequence number: none and 0 for a trust domain never stored.
    fn authorities(
        &self,
        trust_domain: &str,
    ) -> Result<(Vec<AuthorityRecord>, u64), AuthorityStoreError>;

    /// Replaces the authorities of `trust_domain` and its bundle sequence number in one
    /// step: durable when this returns `Ok`, unchanged when it fails.
    fn put_authorities(
        &self,
        trust_domain: &str,
        records: &[AuthorityRecord],
        sequence: u64,
    ) -> Result<(), AuthorityStoreError>;
}

/// One loaded authority: its record and, on the host that holds them, its keys, with
/// what minting needs pre-parsed.
pub struct Authority {
    record: AuthorityRecord,
    /// `None` on a signing replica: it has the certificates only (docs/ha.md).
    keys: Option<RootKeys>,
    x509_point: Vec<u8>,
    jwt_point: Vec<u8>,
    subject_der: Vec<u8>,
    key_id: Vec<u8>,
}

/// An authority's private keys, on the one host that made them.
#[derive(Clone)]
struct RootKeys {
    x509: Arc<EcKey>,
    jwt: Arc<EcKey>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("id", &self.record.id)
            .field("state", &self.record.state)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// The durable record.
    pub fn record(&self) -> &AuthorityRecord {
        &self.record
    }

    /// The authority with its keys (on the root's holder). Fills in the record's JWT
    /// public key if it was written before records carried it.
    fn from_parts(
        mut record: AuthorityRecord,
        x509_key: EcKey,
        jwt_key: EcKey,
    ) -> Result<Self, CaError> {
        match &record.jwt_public {
            Some(point) if point.as_slice() != jwt_key.public_point() => {
                return Err(CaError::Certificate(format!(
                    "authority {}: JWT key file does not match its record",
                    record.id
                )));
            }
            Some(_) => {}
            None => record.jwt_public = Some(jwt_key.public_point().to_vec()),
        }
        let mut authority = Self::from_certificate(record)?;
        if authority.x509_point != x509_key.public_point() {
            return Err(CaError::Certificate(format!(
                "authority {}: key file does not match its certificate",
                authority.record.id
            )));
        }
        authority.keys = Some(RootKeys {
            x509: Arc::new(x509_key),
            jwt: Arc::new(jwt_key),
        });
        Ok(authority)
    }

    /// The authority from its record alone, without keys (on a signing replica).
    fn from_certificate(record: AuthorityRecord) -> Result<Self, CaError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(&record.cert_der)
            .map_err(|e| CaError::Certificate(format!("stored CA certificate unreadable: {e}")))?;
        let jwt_point = record.jwt_public.clone().ok_or_else(|| {
            CaError::Certificate(format!(
                "authority {} has no JWT public key in the store: start the server that holds \
                 the roots once, which records it",
                record.id
            ))
        })?;
        let x509_point = cert.public_key().subject_public_key.data.to_vec();
        let subject_der = cert.tbs_certificate.subject.as_raw().to_vec();
        let key_id = x509::key_identifier(cert.public_key().raw);
        Ok(Authority {
            record,
            keys: None,
            x509_point,
            jwt_point,
            subject_der,
            key_id,
        })
    }

    fn keys(&self, trust_domain: &TrustDomain) -> Result<&RootKeys, CaError> {
        self.keys
            .as_ref()
            .ok_or_else(|| CaError::RootsElsewhere(trust_domain.to_string()))
    }
}

/// What to put in an X.509 or JWT SVID, beside the key or audience.
#[derive(Clone, Debug)]
pub struct SvidRequest {
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// Requested lifetime; `None` takes the CA's default.
    pub ttl: Option<Duration>,
    /// writ's claims; `None` mints a plain SPIFFE SVID.
    pub claims: Option<WritClaims>,
    /// DNS SANs (X.509 only).
    pub dns_names: Vec<String>,
}

/// The subject's key, as a CSR or as a bare public key.
#[derive(Clone, Copy, Debug)]
pub enum SubjectKey<'a> {
    /// A PKCS#10 CSR (DER); its signature is verified and only its key is used.
    Csr(&'a [u8]),
    /// A DER SubjectPublicKeyInfo.
    PublicKey(&'a [u8]),
}

/// This host's intermediate of one band: its key, certificate, and what minting needs.
struct Intermediate {
    id: String,
    life: intermediate::IntermediateLife,
    key: Arc<EcKey>,
    cert_der: Vec<u8>,
    subject_der: Vec<u8>,
    key_id: Vec<u8>,
}

/// A freshly minted X.509-SVID.
#[derive(Clone, Debug)]
pub struct MintedX509 {
    /// DER of the leaf.
    pub cert_der: Vec<u8>,
    /// DER of the intermediates that follow the leaf, nearest first; empty when the root
    /// signed the leaf. Never the root: that is in the bundle.
    pub chain: Vec<Vec<u8>>,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Seconds since the epoch.
    pub not_before: i64,
    /// Seconds since the epoch.
    pub not_after: i64,
    /// The authority (root) it chains to.
    pub authority_id: String,
}

impl MintedX509 {
    /// The leaf followed by its intermediates: what a TLS stack presents, and the
    /// Workload API's `x509_svid` once concatenated.
    pub fn full_chain(&self) -> Vec<Vec<u8>> {
        let mut chain = Vec::with_capacity(1 + self.chain.len());
        chain.push(self.cert_der.clone());
        chain.extend(self.chain.iter().cloned());
        chain
    }
}

/// A freshly minted JWT-SVID.
#[derive(Clone, Debug)]
pub struct MintedJwt {
    /// The compact JWS.
    pub token: String,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
}

struct CaState {
    authorities: Vec<Arc<Authority>>,
    sequence: u64,
}

impl CaState {
    fn active(&self) -> Option<&Arc<Authority>> {
        self.authorities
            .iter()
            .find(|a| a.record.state == AuthorityState::Active)
    }
}

/// The CA of one trust domain (one band).
pub struct TrustDomainCa {
    band: Band,
    trust_domain: TrustDomain,
    key_dir: PathBuf,
    store: Arc<dyn AuthorityStore>,
    config: CaConfig,
    state: RwLock<Arc<CaState>>,
    rotation: Mutex<()>,
    intermediate: RwLock<Option<Arc<Intermediate>>>,
    /// On a signing replica (no root keys here), its own intermediate key: made once,
    /// kept in the key directory, certified by the root's holder (docs/ha.md).
    replica_key: Option<Arc<EcKey>>,
}

/// Where a CA's roots' keys are made and kept, as [`CaSet`] opens it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Roots {
    /// Here (a server alone on its store): a stored authority's missing key file is an
    /// error.
    Here,
    /// Here, unless none of the stored authorities' key files is (a shared store: then
    /// this server is a signing replica of the trust domain, see [`holds_roots`]).
    HereOrFollow,
    /// Elsewhere, even before anything is stored: a signing replica's tenant CAs follow
    /// what the root's holder stores and never make roots of their own.
    Follow,
}

/// Whether this host holds a trust domain's root keys, given whether each stored
/// authority's key file is here. A server that may follow (a shared store) and has none
/// of them is a signing replica; one that has some but not all is broken, and opening
/// the keys says which is missing. No authorities yet: this server makes the first.
pub fn holds_roots(key_files_here: &[bool], may_follow: bool) -> bool {
    !(may_follow && !key_files_here.is_empty() && key_files_here.iter().all(|here| !here))
}

/// What a signing replica asks the root's holder to certify for one band.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntermediateWanted {
    /// The PKCS#10 CSR (DER) of the replica's intermediate key.
    pub csr: Vec<u8>,
    /// SHA-256 of the key's SubjectPublicKeyInfo, lowercase hex: what an operator admits.
    pub key_sha256: String,
}

impl std::fmt::Debug for TrustDomainCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustDomainCa")
            .field("trust_domain", &self.trust_domain.to_string())
            .finish_non_exhaustive()
    }
}

fn unix_to_datetime(unix: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CaError::Crypto("time out of range"))
}

fn random_hex(bytes: usize) -> Result<String, CaError> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| CaError::Crypto("no randomness"))?;
    Ok(crate::hex::lower(&buf))
}

impl TrustDomainCa {
    /// Loads the trust domain's authorities from `store` and `key_dir`, creating the
    /// first one if there is none, and applies any rotation that is due at `now`.
    pub fn open(
        band: Band,
        trust_domain: TrustDomain,
        key_dir: &Path,
        store: Arc<impl AuthorityStore + 'static>,
        config: CaConfig,
        now: i64,
    ) -> Result<Self, CaError> {
        Self::open_dyn(band, trust_domain, key_dir, store, config, now, Roots::Here)
    }

    /// [`TrustDomainCa::open`] over a shared trait object ([`CaSet`] gives every band's
    /// CA the same store).
    ///
    /// Key files live in `key_dir/<trust domain>/`, named by authority id: a directory
    /// per trust domain, so two trust domains (the deployment's bands, or two tenants'
    /// bands) never share a key file, and the deployment's keys stay where every earlier
    /// version put them.
    fn open_dyn(
        band: Band,
        trust_domain: TrustDomain,
        key_dir: &Path,
        store: Arc<dyn AuthorityStore>,
        config: CaConfig,
        now: i64,
        roots: Roots,
    ) -> Result<Self, CaError> {
        config.validate()?;
        let key_dir = key_dir.join(trust_domain.to_string());
        create_private_dir(&key_dir)?;
        let (records, sequence) = store
            .authorities(trust_domain.as_ref())
            .map_err(CaError::Store)?;
        let here: Vec<bool> = records
            .iter()
            .map(|r| key_path(&key_dir, &r.id, "x509").exists())
            .collect();
        let roots_here = match roots {
            Roots::Here => holds_roots(&here, false),
            Roots::HereOrFollow => holds_roots(&here, true),
            Roots::Follow => false,
        };
        if !roots_here {
            return Self::open_replica(band, trust_domain, key_dir, store, config, now);
        }
        let mut authorities = Vec::with_capacity(records.len());
        let mut filled_in = false;
        for record in records {
            let x509_key = EcKey::read(
                &key_path(&key_dir, &record.id, "x509"),
                SignatureEncoding::Asn1,
            )?;
            let jwt_key = EcKey::read(
                &key_path(&key_dir, &record.id, "jwt"),
                SignatureEncoding::Fixed,
            )?;
            filled_in |= record.jwt_public.is_none();
            authorities.push(Arc::new(Authority::from_parts(record, x509_key, jwt_key)?));
        }
        if filled_in {
            // Records from before replicas existed: publish the JWT public keys so that
            // a replica serves the same JWKS. The bundle itself is unchanged.
            let records: Vec<_> = authorities.iter().map(|a| a.record.clone()).collect();
            store
                .put_authorities(trust_domain.as_ref(), &records, sequence)
                .map_err(CaError::Store)?;
        }
        let intermediate = if config.sign_with_intermediate {
            load_intermediate(&key_dir, &authorities)
        } else {
            None
        };
        let ca = TrustDomainCa {
            band,
            trust_domain,
            key_dir,
            store,
            config,
            state: RwLock::new(Arc::new(CaState {
                authorities,
                sequence,
            })),
            rotation: Mutex::new(()),
            intermediate: RwLock::new(intermediate.map(Arc::new)),
            replica_key: None,
        };
        ca.rotate(now)?;
        Ok(ca)
    }

    /// Opens a signing replica's CA: the authorities from their certificates (another
    /// host holds their keys and rotates them), and this host's own intermediate key,
    /// made on first start and kept, with its certificate once the root's holder has
    /// certified it.
    fn open_replica(
        band: Band,
        trust_domain: TrustDomain,
        key_dir: PathBuf,
        store: Arc<dyn AuthorityStore>,
        config: CaConfig,
        now: i64,
    ) -> Result<Self, CaError> {
        let key_file = key_dir.join(REPLICA_KEY);
        let key = if key_file.exists() {
            EcKey::read(&key_file, SignatureEncoding::Asn1)?
        } else {
            let key = EcKey::generate(SignatureEncoding::Asn1)?;
            key.write_new(&key_file)?;
            key
        };
        let ca = TrustDomainCa {
            band,
            trust_domain,
            key_dir,
            store,
            config,
            state: RwLock::new(Arc::new(CaState {
                authorities: Vec::new(),
                sequence: 0,
            })),
            rotation: Mutex::new(()),
            intermediate: RwLock::new(None),
            replica_key: Some(Arc::new(key)),
        };
        ca.reload()?;
        if let Ok(cert_der) = std::fs::read(ca.key_dir.join(REPLICA_CERT)) {
            // A certificate from a previous run keeps signing if it is still good;
            // otherwise the replica asks for a new one.
            if let Err(e) = ca.install_intermediate(&cert_der, now) {
                tracing::warn!(trust_domain = %ca.trust_domain, error = %e, "the intermediate of a previous run is no longer usable");
            }
        }
        Ok(ca)
    }

    /// Whether this host holds the roots' keys (otherwise it is a signing replica).
    pub fn holds_roots(&self) -> bool {
        self.replica_key.is_none()
    }

    /// A replica: re-reads the authorities the root's holder keeps in the store (it
    /// prepares, activates and prunes them). Returns whether they changed.
    fn reload(&self) -> Result<bool, CaError> {
        let (records, sequence) = self
            .store
            .authorities(self.trust_domain.as_ref())
            .map_err(CaError::Store)?;
        let current = self.snapshot();
        let unchanged = current.sequence == sequence
            && current.authorities.len() == records.len()
            && current
                .authorities
                .iter()
                .zip(&records)
                .all(|(a, r)| &a.record == r);
        if unchanged {
            return Ok(false);
        }
        let authorities = records
            .into_iter()
            .map(|r| Authority::from_certificate(r).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut guard = match self.state.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(CaState {
            authorities,
            sequence,
        });
        tracing::info!(trust_domain = %self.trust_domain, sequence, "followed the roots' authorities");
        Ok(true)
    }

    /// On a signing replica whose intermediate is missing or due for renewal at `now`:
    /// the CSR of its (kept) key for the root's holder to certify. `None` otherwise, and
    /// always on the root's holder, which certifies its own.
    pub fn intermediate_wanted(&self, now: i64) -> Result<Option<IntermediateWanted>, CaError> {
        let Some(key) = &self.replica_key else {
            return Ok(None);
        };
        let Some(root_id) = self.snapshot().active().map(|a| a.record.id.clone()) else {
            return Ok(None);
        };
        let current = self.current_intermediate();
        if !intermediate::renewal_due(current.as_ref().map(|i| &i.life), &root_id, now) {
            return Ok(None);
        }
        Ok(Some(IntermediateWanted {
            csr: intermediate_csr(&self.trust_domain, key)?,
            key_sha256: intermediate::key_sha256(&key.spki_der()),
        }))
    }

    /// SHA-256 of a replica's intermediate key, as operators admit it (`None` on the
    /// root's holder).
    pub fn replica_key_sha256(&self) -> Option<String> {
        self.replica_key
            .as_ref()
            .map(|key| intermediate::key_sha256(&key.spki_der()))
    }

    /// On a signing replica: checks that `cert_der` certifies this host's intermediate
    /// key for this trust domain, is signed by one of the trust domain's authorities and
    /// is valid at `now`; then keeps it (in the key directory) and signs with it.
    pub fn install_intermediate(&self, cert_der: &[u8], now: i64) -> Result<(), CaError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let key = self.replica_key.as_ref().ok_or_else(|| {
            CaError::BadRequest("this host certifies its own intermediates".into())
        })?;
        let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| {
            CaError::Certificate(format!("intermediate certificate unreadable: {e}"))
        })?;
        let state = self.snapshot();
        let root = state
            .authorities
            .iter()
            .find(|a| {
                a.subject_der == cert.tbs_certificate.issuer.as_raw()
                    && X509Certificate::from_der(&a.record.cert_der)
                        .ok()
                        .is_some_and(|(_, root)| {
                            cert.verify_signature(Some(root.public_key())).is_ok()
                        })
            })
            .ok_or_else(|| {
                CaError::Certificate(format!(
                    "the intermediate is not signed by an authority of {}",
                    self.trust_domain
                ))
            })?;
        let fresh = intermediate_from_parts(
            REPLICA_CERT.to_owned(),
            Arc::clone(key),
            cert_der.to_vec(),
            &root.record.id,
        )?;
        let names_us = cert.subject_alternative_name().ok().flatten().is_some_and(|san| {
            matches!(san.value.general_names.as_slice(),
                [x509_parser::extensions::GeneralName::URI(uri)] if *uri == self.trust_domain.id_string())
        });
        if !names_us {
            return Err(CaError::Certificate(format!(
                "the intermediate does not name exactly {}",
                self.trust_domain.id_string()
            )));
        }
        if now < fresh.life.not_before || now >= fresh.life.not_after {
            return Err(CaError::Certificate(
                "the intermediate is not valid now".into(),
            ));
        }
        // Durable before it signs: replace the kept certificate through a new file.
        let path = self.key_dir.join(REPLICA_CERT);
        let staged = self.key_dir.join(format!("{REPLICA_CERT}.new"));
        let _ = std::fs::remove_file(&staged);
        keys::write_new_private(&staged, cert_der)?;
        std::fs::rename(&staged, &path)
            .map_err(|e| CaError::Io(format!("rename {}", staged.display()), e))?;
        tracing::info!(trust_domain = %self.trust_domain, not_after = fresh.life.not_after, "installed the intermediate the root's holder certified");
        let mut guard = match self.intermediate.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Some(Arc::new(fresh));
        Ok(())
    }

    /// The band this CA serves.
    pub fn band(&self) -> Band {
        self.band
    }

    /// The trust domain this CA serves.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The configuration in force.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    fn snapshot(&self) -> Arc<CaState> {
        match self.state.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Every authority, in the order they were created.
    pub fn authorities(&self) -> Vec<AuthorityRecord> {
        self.snapshot()
            .authorities
            .iter()
            .map(|a| a.record.clone())
            .collect()
    }

    /// Applies whatever [`rotation_steps`] asks for at `now`. Returns whether anything
    /// changed. Persists before publishing: a crash leaves the old state, or the new.
    pub fn rotate(&self, now: i64) -> Result<bool, CaError> {
        if !self.holds_roots() {
            // The root's holder rotates; a replica follows what it stored.
            return self.reload();
        }
        let steps = {
            let snapshot = self.snapshot();
            let records: Vec<_> = snapshot
                .authorities
                .iter()
                .map(|a| a.record.clone())
                .collect();
            rotation_steps(&records, now)
        };
        let changed = self.apply(&steps, now)?;
        self.refresh_intermediate(now)?;
        Ok(changed)
    }

    fn current_intermediate(&self) -> Option<Arc<Intermediate>> {
        match self.intermediate.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// DER of the intermediate this host signs leaves with, if it signs through one.
    pub fn intermediate_cert(&self) -> Option<Vec<u8>> {
        self.current_intermediate().map(|i| i.cert_der.clone())
    }

    /// When this host's intermediate is next due for renewal, if it signs through one.
    fn intermediate_renew_at(&self) -> Option<i64> {
        self.current_intermediate()
            .map(|i| intermediate::renew_at(&i.life))
    }

    /// Makes and installs a new intermediate if [`intermediate::renewal_due`] says so:
    /// key generated here, CSR certified by the active root, both written to the key
    /// directory before the intermediate signs anything.
    fn refresh_intermediate(&self, now: i64) -> Result<(), CaError> {
        if !self.config.sign_with_intermediate || !self.holds_roots() {
            return Ok(());
        }
        // One renewal at a time (the rotation loop and `authority activate` may race):
        // a loser would leave a key on disk that nothing uses.
        let _serial = self
            .rotation
            .lock()
            .map_err(|_| CaError::Crypto("rotation lock poisoned"))?;
        let Some(root_id) = self.snapshot().active().map(|a| a.record.id.clone()) else {
            return Ok(());
        };
        let current = self.current_intermediate();
        if !intermediate::renewal_due(current.as_ref().map(|i| &i.life), &root_id, now) {
            return Ok(());
        }
        let key = EcKey::generate(SignatureEncoding::Asn1)?;
        let csr = intermediate_csr(&self.trust_domain, &key)?;
        let not_after = now.saturating_add(self.config.intermediate_ttl.as_secs() as i64);
        let cert_der = self.certify_intermediate(&csr, not_after, now)?;
        let id = random_hex(8)?;
        key.write_new(&key_path(&self.key_dir, &id, "intermediate"))?;
        keys::write_new_private(&intermediate_cert_path(&self.key_dir, &id), &cert_der)?;
        let fresh = intermediate_from_parts(id, Arc::new(key), cert_der, &root_id)?;
        tracing::info!(trust_domain = %self.trust_domain, intermediate = %fresh.id, not_after = fresh.life.not_after, "installed a new intermediate CA");
        {
            let mut guard = match self.intermediate.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            *guard = Some(Arc::new(fresh));
        }
        if let Some(old) = current {
            // Leaves it signed carry its certificate; its key signs nothing more.
            let _ = std::fs::remove_file(key_path(&self.key_dir, &old.id, "intermediate"));
            let _ = std::fs::remove_file(intermediate_cert_path(&self.key_dir, &old.id));
        }
        Ok(())
    }

    /// Certifies the intermediate key of `csr_der` with this band's active root, until
    /// `not_after` or the root's notAfter, whichever is first. The CSR must verify and ask
    /// for this trust domain's ID and nothing else.
    pub fn certify_intermediate(
        &self,
        csr_der: &[u8],
        not_after: i64,
        now: i64,
    ) -> Result<Vec<u8>, CaError> {
        let spki_der = intermediate::verify_intermediate_csr(csr_der, &self.trust_domain)?;
        let state = self.snapshot();
        let root = state
            .active()
            .ok_or_else(|| CaError::NoAuthority(self.trust_domain.to_string()))?;
        let root_key = &root.keys(&self.trust_domain)?.x509;
        let not_after = not_after.min(root.record.not_after);
        if not_after <= now {
            return Err(CaError::NoAuthority(self.trust_domain.to_string()));
        }
        let mut serial = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut serial)
            .map_err(|_| CaError::Crypto("no randomness"))?;
        let common_name = format!(
            "{} intermediate {}",
            self.trust_domain.id_string(),
            crate::hex::lower(&serial[..8])
        );
        x509::build_intermediate(
            &x509::IssuerRef {
                subject_der: &root.subject_der,
                key_id: &root.key_id,
                key: root_key,
            },
            &x509::IntermediateSpec {
                trust_domain: &self.trust_domain,
                common_name: &common_name,
                spki_der: &spki_der,
                not_before: unix_to_datetime(now - self.config.backdate.as_secs() as i64)?,
                not_after: unix_to_datetime(not_after)?,
                serial,
            },
        )
    }

    /// Prepares the next authority now, whatever the schedule says (`writ authority
    /// prepare`). Refused if one is already prepared.
    pub fn prepare(&self, now: i64) -> Result<(), CaError> {
        if !self.holds_roots() {
            return Err(CaError::RootsElsewhere(self.trust_domain.to_string()));
        }
        if self
            .authorities()
            .iter()
            .any(|r| r.state == AuthorityState::Prepared && !r.tainted())
        {
            return Err(CaError::BadRequest(
                "an authority is already prepared".into(),
            ));
        }
        self.apply(&[RotationStep::Prepare], now).map(|_| ())
    }

    /// Activates the prepared authority now (`writ authority activate`).
    pub fn activate(&self, now: i64) -> Result<(), CaError> {
        if !self.holds_roots() {
            return Err(CaError::RootsElsewhere(self.trust_domain.to_string()));
        }
        let prepared = self
            .authorities()
            .into_iter()
            .find(|r| r.state == AuthorityState::Prepared && !r.tainted())
            .ok_or_else(|| CaError::BadRequest("no prepared authority to activate".into()))?;
        self.apply(&[RotationStep::Activate(prepared.id)], now)?;
        self.refresh_intermediate(now)
    }

    /// Taints authority `id`, by default the active one (`writ authority taint`; see
    /// [`taint_steps`]). `before` is given the authority once the change is decided and
    /// before it is made (the caller audits it there; an error changes nothing). Returns
    /// the record as tainted.
    pub fn taint<E: From<CaError>>(
        &self,
        id: Option<&str>,
        now: i64,
        before: impl FnOnce(&AuthorityRecord) -> Result<(), E>,
    ) -> Result<AuthorityRecord, E> {
        self.operator_change(now, |records| taint_steps(records, id, now), before)
    }

    /// Revokes tainted authority `id`, by default the one tainted (`writ authority
    /// revoke`; see [`revoke_steps`]): it leaves the bundle and its keys are deleted.
    /// `before` as for [`TrustDomainCa::taint`]. Returns the record as it was.
    pub fn revoke<E: From<CaError>>(
        &self,
        id: Option<&str>,
        now: i64,
        before: impl FnOnce(&AuthorityRecord) -> Result<(), E>,
    ) -> Result<AuthorityRecord, E> {
        self.operator_change(now, |records| revoke_steps(records, id), before)
    }

    /// Decides the steps of an operator's change from the current records, shows
    /// `before` the authority the last step names, then applies them, all under the
    /// rotation lock: no rotation or other operator change comes in between.
    fn operator_change<E: From<CaError>>(
        &self,
        now: i64,
        decide: impl FnOnce(&[AuthorityRecord]) -> Result<Vec<RotationStep>, AuthorityError>,
        before: impl FnOnce(&AuthorityRecord) -> Result<(), E>,
    ) -> Result<AuthorityRecord, E> {
        if !self.holds_roots() {
            return Err(CaError::RootsElsewhere(self.trust_domain.to_string()).into());
        }
        let _serial = self
            .rotation
            .lock()
            .map_err(|_| CaError::Crypto("rotation lock poisoned"))?;
        let records = self.authorities();
        let steps = decide(&records).map_err(|error| CaError::Authority {
            trust_domain: self.trust_domain.to_string(),
            error,
        })?;
        let target = match steps.last() {
            Some(RotationStep::Taint(id) | RotationStep::Prune(id)) => id.clone(),
            _ => return Err(CaError::Crypto("an operator change names no authority").into()),
        };
        let named = records
            .iter()
            .find(|r| r.id == target)
            .cloned()
            .ok_or(CaError::Crypto("the authority named is gone"))?;
        before(&named)?;
        self.apply_held(&steps, now)?;
        drop(_serial);
        self.refresh_intermediate(now)?;
        Ok(self
            .authorities()
            .into_iter()
            .find(|r| r.id == target)
            .unwrap_or(named))
    }

    fn apply(&self, steps: &[RotationStep], now: i64) -> Result<bool, CaError> {
        if steps.is_empty() {
            return Ok(false);
        }
        let _serial = self
            .rotation
            .lock()
            .map_err(|_| CaError::Crypto("rotation lock poisoned"))?;
        self.apply_held(steps, now)
    }

    /// [`TrustDomainCa::apply`], the rotation lock held by the caller.
    fn apply_held(&self, steps: &[RotationStep], now: i64) -> Result<bool, CaError> {
        let current = self.snapshot();
        let mut authorities: Vec<Arc<Authority>> = current.authorities.clone();
        let mut sequence = current.sequence;
        let mut pruned = Vec::new();
        for step in steps {
            match step {
                RotationStep::Bootstrap | RotationStep::Prepare => {
                    let state = if *step == RotationStep::Bootstrap {
                        AuthorityState::Active
                    } else {
                        AuthorityState::Prepared
                    };
                    if state == AuthorityState::Active {
                        retire_active(&mut authorities);
                    }
                    authorities.push(Arc::new(self.create_authority(state, now)?));
                    sequence += 1;
                }
                RotationStep::Activate(id) => {
                    let Some(index) = authorities.iter().position(|a| &a.record.id == id) else {
                        continue;
                    };
                    retire_active(&mut authorities);
                    authorities[index] =
                        Arc::new(with_state(&authorities[index], AuthorityState::Active));
                    // The key set is unchanged, but consumers keyed on the sequence
                    // should still learn that the signer changed.
                    sequence += 1;
                }
                RotationStep::Prune(id) => {
                    if let Some(index) = authorities.iter().position(|a| &a.record.id == id) {
                        pruned.push(authorities.remove(index));
                        sequence += 1;
                    }
                }
                RotationStep::Taint(id) => {
                    if let Some(slot) = authorities.iter_mut().find(|a| &a.record.id == id) {
                        let mut tainted = with_state(slot, slot.record.state);
                        tainted.record.tainted_at = Some(now);
                        *slot = Arc::new(tainted);
                        sequence += 1;
                    }
                }
            }
        }
        let records: Vec<_> = authorities.iter().map(|a| a.record.clone()).collect();
        self.store
            .put_authorities(self.trust_domain.as_ref(), &records, sequence)
            .map_err(CaError::Store)?;
        {
            let mut guard = match self.state.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            *guard = Arc::new(CaState {
                authorities,
                sequence,
            });
        }
        for authority in pruned {
            for kind in ["x509", "jwt"] {
                // Best effort: the record is gone, so a leftover file is never used.
                let _ = std::fs::remove_file(key_path(&self.key_dir, &authority.record.id, kind));
            }
        }
        tracing::info!(trust_domain = %self.trust_domain, ?steps, sequence, "rotated CA authorities");
        Ok(true)
    }

    fn create_authority(&self, state: AuthorityState, now: i64) -> Result<Authority, CaError> {
        let id = random_hex(8)?;
        let x509_key = EcKey::generate(SignatureEncoding::Asn1)?;
        let jwt_key = EcKey::generate(SignatureEncoding::Fixed)?;
        let not_before = now - self.config.backdate.as_secs() as i64;
        let not_after = now + self.config.ca_ttl.as_secs() as i64;
        let cert_der = x509::build_ca_cert(
            &self.trust_domain,
            &id,
            &x509_key,
            unix_to_datetime(not_before)?,
            unix_to_datetime(not_after)?,
        )?;
        // Keys are durable before the record that names them is written.
        x509_key.write_new(&key_path(&self.key_dir, &id, "x509"))?;
        jwt_key.write_new(&key_path(&self.key_dir, &id, "jwt"))?;
        let record = AuthorityRecord {
            jwt_kid: jwt::key_id(jwt_key.public_point())?,
            jwt_public: Some(jwt_key.public_point().to_vec()),
            id,
            state,
            cert_der,
            not_before,
            not_after,
            tainted_at: None,
        };
        Authority::from_parts(record, x509_key, jwt_key)
    }

    fn check_request(
        &self,
        request: &SvidRequest,
        default_ttl: Duration,
    ) -> Result<Duration, CaError> {
        if request.spiffe_id.trust_domain() != &self.trust_domain {
            return Err(CaError::WrongTrustDomain {
                id: request.spiffe_id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        check_svid_id(&request.spiffe_id)?;
        if let Some(claims) = &request.claims
            && claims.band != Some(self.band)
        {
            return Err(CaError::BadRequest(format!(
                "claims name band {:?}, but this CA is the {} band",
                claims.band.map(|b| b.as_str()),
                self.band
            )));
        }
        let ttl = request.ttl.unwrap_or(default_ttl);
        if ttl.as_secs() == 0 {
            return Err(CaError::BadTtl("must be at least one second".into()));
        }
        if ttl > self.config.max_svid_ttl {
            return Err(CaError::BadTtl(format!(
                "{} exceeds the maximum of {}",
                humantime::format_duration(ttl),
                humantime::format_duration(self.config.max_svid_ttl)
            )));
        }
        Ok(ttl)
    }

    /// Checks what minting an X.509-SVID for `request` with `key` needs, signing
    /// nothing: the request, and the subject's key (a CSR's signature is verified).
    /// Returns the TTL and the key's SubjectPublicKeyInfo. Issuers call it before taking
    /// an audit index, so a bad request never costs one.
    pub fn check_x509(
        &self,
        key: SubjectKey<'_>,
        request: &SvidRequest,
    ) -> Result<(Duration, Vec<u8>), CaError> {
        let ttl = self.check_request(request, self.config.x509_svid_ttl)?;
        if request.dns_names.len() > MAX_DNS_NAMES {
            return Err(CaError::BadRequest(format!(
                "at most {MAX_DNS_NAMES} DNS names"
            )));
        }
        for name in &request.dns_names {
            rustls_pki_types::DnsName::try_from(name.as_str())
                .map_err(|_| CaError::BadRequest(format!("invalid DNS name {name:?}")))?;
        }
        let spki_der = match key {
            SubjectKey::Csr(der) => csr::verify_csr(der, &request.spiffe_id)?.spki_der,
            SubjectKey::PublicKey(der) => csr::verify_spki(der)?,
        };
        Ok((ttl, spki_der))
    }

    /// Checks what minting a JWT-SVID for `request` and `audience` needs, signing
    /// nothing; returns the TTL.
    pub fn check_jwt(
        &self,
        request: &SvidRequest,
        audience: &[String],
    ) -> Result<Duration, CaError> {
        let ttl = self.check_request(request, self.config.jwt_svid_ttl)?;
        jwt::check_audience(audience)?;
        Ok(ttl)
    }

    /// Mints an X.509-SVID for `request`, with the subject's key from `key`.
    pub fn mint_x509(
        &self,
        key: SubjectKey<'_>,
        request: &SvidRequest,
        now: i64,
    ) -> Result<MintedX509, CaError> {
        let (ttl, spki_der) = self.check_x509(key, request)?;
        let claims_der = request
            .claims
            .as_ref()
            .map(WritClaims::to_der)
            .transpose()?;
        let state = self.snapshot();
        let authority = state
            .active()
            .ok_or_else(|| CaError::NoAuthority(self.trust_domain.to_string()))?;
        // With intermediates on, the root never signs a leaf: no intermediate, no SVID.
        // A replica has no root key to sign with: only its intermediate.
        let via = if self.config.sign_with_intermediate || !self.holds_roots() {
            Some(
                self.current_intermediate()
                    .ok_or_else(|| CaError::NoAuthority(self.trust_domain.to_string()))?,
            )
        } else {
            None
        };
        let (issuer, authority_id, ca_not_after, chain) = match &via {
            Some(inter) => (
                x509::IssuerRef {
                    subject_der: &inter.subject_der,
                    key_id: &inter.key_id,
                    key: &inter.key,
                },
                inter.life.issuer.clone(),
                inter.life.not_after,
                vec![inter.cert_der.clone()],
            ),
            None => (
                x509::IssuerRef {
                    subject_der: &authority.subject_der,
                    key_id: &authority.key_id,
                    key: &authority.keys(&self.trust_domain)?.x509,
                },
                authority.record.id.clone(),
                authority.record.not_after,
                Vec::new(),
            ),
        };
        let not_before = now - self.config.backdate.as_secs() as i64;
        let not_after = (now + ttl.as_secs() as i64).min(ca_not_after);
        if not_after <= now {
            return Err(CaError::NoAuthority(self.trust_domain.to_string()));
        }
        let mut serial = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut serial)
            .map_err(|_| CaError::Crypto("no randomness"))?;
        serial[0] = (serial[0] & 0x7f) | 0x40;
        let cert_der = x509::build_leaf(
            &issuer,
            &x509::LeafSpec {
                spiffe_id: &request.spiffe_id,
                dns_names: &request.dns_names,
                spki_der: &spki_der,
                not_before: unix_to_datetime(not_before)?,
                not_after: unix_to_datetime(not_after)?,
                claims_der: claims_der.as_deref(),
                serial,
            },
        )?;
        Ok(MintedX509 {
            cert_der,
            chain,
            serial: crate::hex::lower(&serial),
            not_before,
            not_after,
            authority_id,
        })
    }

    /// Mints a JWT-SVID for `request` and `audience`.
    pub fn mint_jwt(
        &self,
        request: &SvidRequest,
        audience: &[String],
        now: i64,
    ) -> Result<MintedJwt, CaError> {
        let ttl = self.check_jwt(request, audience)?;
        let state = self.snapshot();
        let authority = state
            .active()
            .ok_or_else(|| CaError::NoAuthority(self.trust_domain.to_string()))?;
        let expires_at = (now + ttl.as_secs() as i64).min(authority.record.not_after);
        // As for X.509: an expired authority signs nothing (not an already-expired token).
        if expires_at <= now {
            return Err(CaError::NoAuthority(self.trust_domain.to_string()));
        }
        let token = jwt::sign_jwt(
            &authority.keys(&self.trust_domain)?.jwt,
            &authority.record.jwt_kid,
            &jwt::JwtSpec {
                spiffe_id: &request.spiffe_id,
                audience,
                issued_at: now,
                expires_at,
                claims: request.claims.as_ref(),
            },
        )?;
        Ok(MintedJwt { token, expires_at })
    }

    /// The X.509 bundle: every published CA certificate (prepared, active, retired).
    pub fn x509_bundle(&self) -> Vec<Vec<u8>> {
        self.snapshot()
            .authorities
            .iter()
            .map(|a| a.record.cert_der.clone())
            .collect()
    }

    /// The bundle's sequence number (`spiffe_sequence`).
    pub fn sequence(&self) -> u64 {
        self.snapshot().sequence
    }

    /// The SPIFFE bundle as a JWKS document.
    pub fn jwks(&self) -> Result<serde_json::Value, CaError> {
        let state = self.snapshot();
        let x509: Vec<_> = state
            .authorities
            .iter()
            .map(|a| bundle::X509Authority {
                cert_der: &a.record.cert_der,
                point: &a.x509_point,
            })
            .collect();
        let jwt: Vec<_> = state
            .authorities
            .iter()
            .map(|a| bundle::JwtAuthority {
                kid: &a.record.jwt_kid,
                point: &a.jwt_point,
            })
            .collect();
        bundle::jwks(
            &x509,
            &jwt,
            state.sequence,
            self.config.refresh_hint.as_secs(),
        )
    }

    /// Only the JWT keys, as FetchJWTBundles serves them.
    pub fn jwt_jwks(&self) -> Result<serde_json::Value, CaError> {
        let state = self.snapshot();
        let jwt: Vec<_> = state
            .authorities
            .iter()
            .map(|a| bundle::JwtAuthority {
                kid: &a.record.jwt_kid,
                point: &a.jwt_point,
            })
            .collect();
        bundle::jwt_jwks(&jwt)
    }
}

fn retire_active(authorities: &mut [Arc<Authority>]) {
    for slot in authorities.iter_mut() {
        if slot.record.state == AuthorityState::Active {
            *slot = Arc::new(with_state(slot, AuthorityState::Retired));
        }
    }
}

fn with_state(authority: &Authority, state: AuthorityState) -> Authority {
    let mut record = authority.record.clone();
    record.state = state;
    Authority {
        record,
        keys: authority.keys.clone(),
        x509_point: authority.x509_point.clone(),
        jwt_point: authority.jwt_point.clone(),
        subject_der: authority.subject_der.clone(),
        key_id: authority.key_id.clone(),
    }
}

fn key_path(dir: &Path, id: &str, kind: &str) -> PathBuf {
    dir.join(format!("{id}.{kind}.key"))
}

/// A signing replica's intermediate key and certificate, in each band's key directory.
const REPLICA_KEY: &str = "replica-intermediate.key";
const REPLICA_CERT: &str = "replica-intermediate.der";

fn intermediate_cert_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.intermediate.der"))
}

fn intermediate_from_parts(
    id: String,
    key: Arc<EcKey>,
    cert_der: Vec<u8>,
    issuer: &str,
) -> Result<Intermediate, CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(&cert_der)
        .map_err(|e| CaError::Certificate(format!("intermediate certificate unreadable: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_point() {
        return Err(CaError::Certificate(format!(
            "intermediate {id}: key file does not match its certificate"
        )));
    }
    let life = intermediate::IntermediateLife {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        issuer: issuer.to_owned(),
    };
    let subject_der = cert.tbs_certificate.subject.as_raw().to_vec();
    let key_id = x509::key_identifier(&key.spki_der());
    Ok(Intermediate {
        id,
        life,
        key,
        cert_der,
        subject_der,
        key_id,
    })
}

/// The intermediate a previous run left in `dir` that one of `authorities` certified (the
/// latest, if several): a restart keeps signing with it rather than making another. Any
/// unreadable or foreign file is ignored; rotation then makes a fresh intermediate.
fn load_intermediate(dir: &Path, authorities: &[Arc<Authority>]) -> Option<Intermediate> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let entries = std::fs::read_dir(dir).ok()?;
    let mut best: Option<Intermediate> = None;
    let mut seen = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".intermediate.der"))
        else {
            continue;
        };
        seen.push(id.to_owned());
        let Ok(cert_der) = std::fs::read(entry.path()) else {
            continue;
        };
        let Ok((_, cert)) = X509Certificate::from_der(&cert_der) else {
            continue;
        };
        let Some(root) = authorities.iter().find(|a| {
            a.subject_der == cert.tbs_certificate.issuer.as_raw()
                && X509Certificate::from_der(&a.record.cert_der)
                    .ok()
                    .is_some_and(|(_, root)| cert.verify_signature(Some(root.public_key())).is_ok())
        }) else {
            continue;
        };
        let Ok(key) = EcKey::read(&key_path(dir, id, "intermediate"), SignatureEncoding::Asn1)
        else {
            continue;
        };
        let Ok(loaded) =
            intermediate_from_parts(id.to_owned(), Arc::new(key), cert_der, &root.record.id)
        else {
            continue;
        };
        if best
            .as_ref()
            .is_none_or(|b| b.life.not_after < loaded.life.not_after)
        {
            best = Some(loaded);
        }
    }
    // Only the one kept may sign again: the others' keys go.
    for id in seen {
        if best.as_ref().is_none_or(|b| b.id != id) {
            let _ = std::fs::remove_file(key_path(dir, &id, "intermediate"));
            let _ = std::fs::remove_file(intermediate_cert_path(dir, &id));
        }
    }
    best
}

/// Creates `dir` (and parents) readable only by its owner.
pub fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CaError::Io(format!("create {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| CaError::Io(format!("chmod {}", dir.display()), e))
}

/// The rules on the SPIFFE ID of any SVID, whoever asks for it: a path, and a bounded
/// length. Callers that decide policy on an ID check it first, so that a malformed one is
/// refused as such rather than as not entitled.
pub fn check_svid_id(spiffe_id: &SpiffeId) -> Result<(), CaError> {
    let id = spiffe_id.to_string();
    if spiffe_id.path().is_empty() {
        return Err(CaError::BadSpiffeId {
            id,
            reason: "an SVID's SPIFFE ID must have a path".into(),
        });
    }
    if id.len() > MAX_SPIFFE_ID_LEN {
        return Err(CaError::BadSpiffeId {
            id: format!("{}…", &id[..64]),
            reason: format!("longer than {MAX_SPIFFE_ID_LEN} bytes"),
        });
    }
    Ok(())
}

/// One trust domain's bundle as the Workload API serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    /// The band.
    pub band: Band,
    /// `spiffe://<trust domain>`: the key of Workload API bundle maps.
    pub trust_domain_id: String,
    /// The trust domain name.
    pub trust_domain: String,
    /// Concatenated DER of every published CA certificate.
    pub x509_der: Vec<u8>,
    /// JWKS of the `jwt-svid` keys only (FetchJWTBundles must not carry other uses).
    pub jwt_jwks: Vec<u8>,
    /// kid → uncompressed P-256 point, for validating JWT-SVIDs.
    pub jwt_keys: BTreeMap<String, Vec<u8>>,
    /// The authorities of the bundle that are tainted: still published (what they signed
    /// is being re-issued), refused by writ's verifiers.
    pub tainted: Vec<TaintedAuthority>,
}

/// A tainted authority as agents learn of it (docs/operations.md, "A compromised CA").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaintedAuthority {
    /// DER of its CA certificate (one of the bundle's).
    pub cert_der: Vec<u8>,
    /// Its JWT signing key's `kid`.
    pub jwt_kid: String,
    /// When it was tainted, seconds since the epoch.
    pub tainted_at: i64,
}

impl TaintedAuthority {
    /// Its key id as verifiers name it ([`writ_verifier::authority_key_id`]); `None` if
    /// its certificate does not parse.
    pub fn key_id(&self) -> Option<String> {
        writ_verifier::authority_key_id(&rustls_pki_types::CertificateDer::from(
            self.cert_der.as_slice(),
        ))
        .ok()
    }
}

/// Every held trust domain's bundle; changes whenever an authority is prepared,
/// activated or pruned, and when a tenant is added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleSet {
    /// The deployment's, in band order (investigative, remediation, base), then each
    /// tenant's pair (investigative, remediation), tenants in the order of their base.
    pub bundles: Vec<TrustBundle>,
}

impl BundleSet {
    /// The bundle of the trust domain named `name`.
    pub fn by_name(&self, name: &str) -> Option<&TrustBundle> {
        self.bundles.iter().find(|b| b.trust_domain == name)
    }

    /// The deployment's bundle of `band`: the first of that band, since the deployment's
    /// come first (a tenant's are found by [`BundleSet::by_name`]).
    pub fn by_band(&self, band: Band) -> Option<&TrustBundle> {
        self.bundles.iter().find(|b| b.band == band)
    }
}

/// The bands a tenant has a CA for: it has no nodes or services of its own, so no base.
pub const TENANT_BANDS: [Band; 2] = [Band::Investigative, Band::Remediation];

/// The trust domain of `band` under `base`.
fn band_trust_domain(band: Band, base: &str) -> Result<TrustDomain, CaError> {
    TrustDomain::new(band.trust_domain_name(base))
        .map_err(|e| CaError::Config(format!("trust domain for band {band} under {base}: {e}")))
}

/// The CAs this server holds, and the clock: the deployment's, one per band under its
/// base trust domain (nodes, services and the server live in the base), and each
/// tenant's pair, `investigate.<tenant base>` and `remediate.<tenant base>`, each with
/// its own keys, authorities and bundle. Minting picks the CA by the SPIFFE ID's trust
/// domain. The issuer records what it hands out; nothing here writes SVID records.
///
/// Every CA keeps its key files in `<key dir>/<its trust domain>/`: a tenant's never
/// share a file with another tenant's or the deployment's, and the deployment's are where
/// a server without tenants has always kept them.
pub struct CaSet {
    base: TrustDomain,
    /// The deployment's CAs by band: always there, so [`CaSet::ca`] takes no lock.
    deployment: BTreeMap<Band, Arc<TrustDomainCa>>,
    /// Every CA held and the tenants; replaced whole when a tenant is added.
    held: RwLock<Arc<Held>>,
    /// One tenant added at a time: two callers adding the same tenant must not both make
    /// its first authorities.
    adding: Mutex<()>,
    key_dir: PathBuf,
    store: Arc<dyn AuthorityStore>,
    config: CaConfig,
    /// Where tenants' roots are: here if the deployment's are (this server makes and
    /// rotates them), elsewhere on a signing replica (it follows the store).
    tenant_roots: Roots,
    clock: SharedClock,
}

/// What [`CaSet`] holds besides the deployment's CAs by band.
#[derive(Clone, Default)]
struct Held {
    /// Every CA, the deployment's and the tenants', by its trust domain's name.
    by_trust_domain: BTreeMap<String, HeldCa>,
    /// Each tenant's base trust domain.
    tenants: BTreeSet<String>,
}

#[derive(Clone)]
struct HeldCa {
    /// The base trust domain the CA's band is under: the deployment's or a tenant's.
    base: String,
    ca: Arc<TrustDomainCa>,
}

impl std::fmt::Debug for CaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaSet")
            .field("base", &self.base.to_string())
            .field("tenants", &self.held().tenants.len())
            .finish_non_exhaustive()
    }
}

/// The trust domain names a base claims: itself and its bands'.
fn claimed_names(base: &str) -> [String; 3] {
    Band::ALL.map(|band| band.trust_domain_name(base))
}

impl CaSet {
    /// Opens (creating on first start) the CA of every band under `base`, and the band
    /// CAs of every tenant base in `tenants` (see [`CaSet::add_tenant`]).
    pub fn open(
        base: TrustDomain,
        tenants: &[TrustDomain],
        key_dir: &Path,
        store: Arc<impl AuthorityStore + 'static>,
        config: CaConfig,
        clock: SharedClock,
    ) -> Result<Self, CaError> {
        Self::open_with(base, tenants, key_dir, store, config, clock, Roots::Here)
    }

    /// [`CaSet::open`] on a store several servers share: where the stored authorities'
    /// keys are not in `key_dir`, this server is a signing replica of that band (see
    /// [`holds_roots`]): it signs through its own intermediate, once the root's holder
    /// has certified it ([`TrustDomainCa::intermediate_wanted`]). A replica's tenant CAs
    /// always follow the store (the server holding the deployment's roots makes and
    /// rotates the tenants' too), and it signs for them through intermediates of their
    /// own, obtained the same way (`server::signers`).
    pub fn open_shared(
        base: TrustDomain,
        tenants: &[TrustDomain],
        key_dir: &Path,
        store: Arc<impl AuthorityStore + 'static>,
        config: CaConfig,
        clock: SharedClock,
    ) -> Result<Self, CaError> {
        Self::open_with(
            base,
            tenants,
            key_dir,
            store,
            config,
            clock,
            Roots::HereOrFollow,
        )
    }

    fn open_with(
        base: TrustDomain,
        tenants: &[TrustDomain],
        key_dir: &Path,
        store: Arc<impl AuthorityStore + 'static>,
        config: CaConfig,
        clock: SharedClock,
        roots: Roots,
    ) -> Result<Self, CaError> {
        let store: Arc<dyn AuthorityStore> = store;
        let now = clock.unix();
        let mut deployment = BTreeMap::new();
        let mut held = Held::default();
        for band in Band::ALL {
            let ca = Arc::new(TrustDomainCa::open_dyn(
                band,
                band_trust_domain(band, base.as_ref())?,
                key_dir,
                Arc::clone(&store),
                config,
                now,
                roots,
            )?);
            held.by_trust_domain.insert(
                ca.trust_domain().to_string(),
                HeldCa {
                    base: base.to_string(),
                    ca: Arc::clone(&ca),
                },
            );
            deployment.insert(band, ca);
        }
        let tenant_roots = if deployment.values().all(|ca| ca.holds_roots()) {
            Roots::Here
        } else {
            Roots::Follow
        };
        let set = CaSet {
            base,
            deployment,
            held: RwLock::new(Arc::new(held)),
            adding: Mutex::new(()),
            key_dir: key_dir.to_path_buf(),
            store,
            config,
            tenant_roots,
            clock,
        };
        for tenant in tenants {
            set.add_tenant(tenant)?;
        }
        Ok(set)
    }

    fn held(&self) -> Arc<Held> {
        match self.held.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Opens the CAs of the tenant whose base trust domain is `base`, creating their
    /// first authorities if the store has none: `investigate.<base>` and
    /// `remediate.<base>`. Does nothing if the tenant is held already. Refuses a base
    /// whose trust domains (itself or its bands') are the deployment's or another
    /// tenant's, so that no trust domain has two owners.
    pub fn add_tenant(&self, base: &TrustDomain) -> Result<(), CaError> {
        let _one = match self.adding.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let held = self.held();
        let name = base.to_string();
        if held.tenants.contains(&name) {
            return Ok(());
        }
        if name == self.base.as_ref() {
            return Err(CaError::Config(format!(
                "tenant base {name} is the deployment's base trust domain"
            )));
        }
        let wanted = claimed_names(&name);
        let owners = std::iter::once((self.base.as_ref(), "the deployment's")).chain(
            held.tenants
                .iter()
                .map(|t| (t.as_str(), "another tenant's")),
        );
        for (owner, whose) in owners {
            if let Some(taken) = claimed_names(owner).iter().find(|n| wanted.contains(n)) {
                return Err(CaError::Config(format!(
                    "tenant base {name}: trust domain {taken} is already {whose}"
                )));
            }
        }
        let now = self.now();
        let mut opened = Vec::with_capacity(TENANT_BANDS.len());
        for band in TENANT_BANDS {
            opened.push(Arc::new(TrustDomainCa::open_dyn(
                band,
                band_trust_domain(band, &name)?,
                &self.key_dir,
                Arc::clone(&self.store),
                self.config,
                now,
                self.tenant_roots,
            )?));
        }
        let mut next = Held::clone(&held);
        for ca in opened {
            next.by_trust_domain.insert(
                ca.trust_domain().to_string(),
                HeldCa {
                    base: name.clone(),
                    ca,
                },
            );
        }
        next.tenants.insert(name);
        let mut guard = match self.held.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(next);
        tracing::info!(tenant = %base, "opened the tenant's CAs");
        Ok(())
    }

    /// The tenants' base trust domains, in order.
    pub fn tenants(&self) -> Vec<TrustDomain> {
        self.held()
            .tenants
            .iter()
            .filter_map(|t| TrustDomain::new(t).ok())
            .collect()
    }

    /// Whether this server holds the roots' keys of every CA (otherwise it is a signing
    /// replica: no JWT-SVIDs, X.509 only through its own intermediates).
    pub fn holds_roots(&self) -> bool {
        self.all().iter().all(|ca| ca.holds_roots())
    }

    /// The deployment's base trust domain.
    pub fn base(&self) -> &TrustDomain {
        &self.base
    }

    /// The deployment's CA of `band`.
    pub fn ca(&self, band: Band) -> &TrustDomainCa {
        // Every band is inserted by `open`; indexing cannot miss.
        &self.deployment[&band]
    }

    /// The deployment's CAs, one per band (the ones a signing replica must have
    /// intermediates for before it serves); [`CaSet::all`] adds the tenants'.
    pub fn iter(&self) -> impl Iterator<Item = &TrustDomainCa> {
        self.deployment.values().map(|ca| &**ca)
    }

    /// Every CA held: the deployment's in band order, then each tenant's pair.
    pub fn all(&self) -> Vec<Arc<TrustDomainCa>> {
        let held = self.held();
        let mut all: Vec<_> = self.deployment.values().cloned().collect();
        for tenant in &held.tenants {
            all.extend(TENANT_BANDS.iter().filter_map(|band| {
                held.by_trust_domain
                    .get(&band.trust_domain_name(tenant))
                    .map(|h| Arc::clone(&h.ca))
            }));
        }
        all
    }

    /// Runs `f` with every held CA's rotation held off, so that the authorities `f` reads
    /// from the store and the key files it reads from the key directory are of one
    /// instant (a rotation writes the record, then removes retired keys' files). A backup
    /// uses it (docs/operations.md, "Back up and restore"). Locks in [`CaSet::all`]'s
    /// order; no rotation holds two CAs' locks, so none waits on this in reverse.
    pub fn with_rotations_held<T>(&self, f: impl FnOnce() -> T) -> Result<T, CaError> {
        let all = self.all();
        let mut guards = Vec::with_capacity(all.len());
        for ca in &all {
            guards.push(
                ca.rotation
                    .lock()
                    .map_err(|_| CaError::Crypto("rotation lock poisoned"))?,
            );
        }
        Ok(f())
    }

    /// The CA of `trust_domain`, if this server holds it.
    pub fn ca_in(&self, trust_domain: &TrustDomain) -> Option<Arc<TrustDomainCa>> {
        self.held()
            .by_trust_domain
            .get(trust_domain.as_ref())
            .map(|h| Arc::clone(&h.ca))
    }

    /// The band CAs under `base`: a tenant's pair, or the deployment's three for its
    /// own base; none for a base this server does not hold.
    pub fn band_cas(&self, base: &TrustDomain) -> Vec<Arc<TrustDomainCa>> {
        if base == &self.base {
            return self.deployment.values().cloned().collect();
        }
        let held = self.held();
        if !held.tenants.contains(base.as_ref()) {
            return Vec::new();
        }
        TENANT_BANDS
            .iter()
            .filter_map(|band| {
                held.by_trust_domain
                    .get(&band.trust_domain_name(base.as_ref()))
                    .map(|h| Arc::clone(&h.ca))
            })
            .collect()
    }

    /// Refuses `id` as in none of the trust domains held. Names only the deployment's:
    /// a caller learns no tenant's trust domain from a refusal.
    fn not_held(&self, id: &SpiffeId) -> CaError {
        CaError::WrongTrustDomain {
            id: id.to_string(),
            trust_domain: self
                .deployment
                .values()
                .map(|ca| ca.trust_domain().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The CA of `id`'s trust domain: the one that signs it.
    pub fn ca_of(&self, id: &SpiffeId) -> Result<Arc<TrustDomainCa>, CaError> {
        self.ca_in(id.trust_domain())
            .ok_or_else(|| self.not_held(id))
    }

    /// The CA that signs `id` in `band`: its trust domain's, which must be a CA of
    /// `band` (an investigative ID is never signed as a remediation one, in any tenant).
    pub fn ca_for(&self, band: Band, id: &SpiffeId) -> Result<Arc<TrustDomainCa>, CaError> {
        let held = self.held();
        let Some(entry) = held.by_trust_domain.get(id.trust_domain().as_ref()) else {
            return Err(self.not_held(id));
        };
        if entry.ca.band() != band {
            return Err(CaError::WrongTrustDomain {
                id: id.to_string(),
                trust_domain: band.trust_domain_name(&entry.base),
            });
        }
        Ok(Arc::clone(&entry.ca))
    }

    /// The band whose trust domain `id` belongs to, the deployment's or a tenant's.
    pub fn band_of(&self, id: &SpiffeId) -> Result<Band, CaError> {
        self.ca_of(id).map(|ca| ca.band())
    }

    /// The clock itself.
    pub fn clock(&self) -> SharedClock {
        std::sync::Arc::clone(&self.clock)
    }

    /// The clock.
    pub fn now(&self) -> i64 {
        self.clock.unix()
    }

    /// Mints an X.509-SVID in `band` at the clock's now, with the CA of the SPIFFE ID's
    /// trust domain (see [`CaSet::ca_for`]). Records nothing: whoever hands the SVID out
    /// records it first (the issuer).
    pub fn mint_x509(
        &self,
        band: Band,
        key: SubjectKey<'_>,
        request: &SvidRequest,
    ) -> Result<MintedX509, CaError> {
        let minted = self
            .ca_for(band, &request.spiffe_id)?
            .mint_x509(key, request, self.now())?;
        tracing::info!(spiffe_id = %request.spiffe_id, serial = %minted.serial, %band, not_after = minted.not_after, "minted x509-svid");
        Ok(minted)
    }

    /// Mints a JWT-SVID in `band`, with the CA of the SPIFFE ID's trust domain.
    pub fn mint_jwt(
        &self,
        band: Band,
        request: &SvidRequest,
        audience: &[String],
    ) -> Result<MintedJwt, CaError> {
        let minted =
            self.ca_for(band, &request.spiffe_id)?
                .mint_jwt(request, audience, self.now())?;
        tracing::info!(spiffe_id = %request.spiffe_id, %band, exp = minted.expires_at, "minted jwt-svid");
        Ok(minted)
    }

    /// Runs rotation for every CA at the clock's now. One CA's failure does not keep the
    /// others from rotating (a tenant's broken store row must not stall the deployment):
    /// the first error is returned once every CA has had its turn.
    pub fn rotate(&self) -> Result<bool, CaError> {
        let now = self.now();
        let mut changed = false;
        let mut first_error = None;
        for ca in self.all() {
            match ca.rotate(now) {
                Ok(rotated) => changed |= rotated,
                Err(e) => {
                    tracing::warn!(trust_domain = %ca.trust_domain(), error = %e, "rotation failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// Every held CA's bundle, as the Workload API serves them (order: [`BundleSet`]).
    pub fn bundle_set(&self) -> Result<BundleSet, CaError> {
        let all = self.all();
        let mut bundles = Vec::with_capacity(all.len());
        for ca in all {
            let state = ca.snapshot();
            let jwt_keys = state
                .authorities
                .iter()
                .map(|a| (a.record.jwt_kid.clone(), a.jwt_point.clone()))
                .collect();
            bundles.push(TrustBundle {
                band: ca.band,
                trust_domain_id: ca.trust_domain.id_string(),
                trust_domain: ca.trust_domain.to_string(),
                x509_der: ca.x509_bundle().concat(),
                jwt_jwks: ca.jwt_jwks()?.to_string().into_bytes(),
                jwt_keys,
                tainted: state
                    .authorities
                    .iter()
                    .filter_map(|a| {
                        Some(TaintedAuthority {
                            cert_der: a.record.cert_der.clone(),
                            jwt_kid: a.record.jwt_kid.clone(),
                            tainted_at: a.record.tainted_at?,
                        })
                    })
                    .collect(),
            });
        }
        Ok(BundleSet { bundles })
    }

    /// Seconds until some CA's rotation (or intermediate renewal) is next due.
    pub fn next_rotation_in(&self) -> i64 {
        let now = self.now();
        self.all()
            .iter()
            .map(|ca| {
                let roots = authority::next_rotation_in(&ca.authorities(), now);
                match ca.intermediate_renew_at() {
                    Some(at) => roots.min((at - now).max(1)),
                    None => roots,
                }
            })
            .min()
            .unwrap_or(60)
    }

    /// Certifies an intermediate CSR with the active root of `trust_domain`'s CA, the
    /// deployment's or a tenant's (see [`TrustDomainCa::certify_intermediate`]); the
    /// root's holder runs this for a signer that may be another host. Refused for a trust
    /// domain this server does not hold.
    pub fn certify_intermediate(
        &self,
        trust_domain: &TrustDomain,
        csr_der: &[u8],
        not_after: i64,
    ) -> Result<Vec<u8>, CaError> {
        let ca = self.ca_in(trust_domain).ok_or_else(|| {
            CaError::BadRequest(format!(
                "this server holds no CA of trust domain {trust_domain}"
            ))
        })?;
        let cert = ca.certify_intermediate(csr_der, not_after, self.now())?;
        tracing::info!(%trust_domain, band = %ca.band(), not_after, "certified an intermediate CA");
        Ok(cert)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashMap;

    /// An authority store in memory that can be told to fail its writes.
    #[derive(Default)]
    struct MemoryStore {
        rows: Mutex<HashMap<String, (Vec<AuthorityRecord>, u64)>>,
        fail_writes: bool,
    }

    impl AuthorityStore for MemoryStore {
        fn authorities(
            &self,
            trust_domain: &str,
        ) -> Result<(Vec<AuthorityRecord>, u64), AuthorityStoreError> {
            let rows = self.rows.lock().unwrap();
            Ok(rows.get(trust_domain).cloned().unwrap_or_default())
        }

        fn put_authorities(
            &self,
            trust_domain: &str,
            records: &[AuthorityRecord],
            sequence: u64,
        ) -> Result<(), AuthorityStoreError> {
            if self.fail_writes {
                return Err("disk full".into());
            }
            let mut rows = self.rows.lock().unwrap();
            rows.insert(trust_domain.to_owned(), (records.to_vec(), sequence));
            Ok(())
        }
    }

    fn open(dir: &Path, store: Arc<MemoryStore>) -> Result<TrustDomainCa, CaError> {
        TrustDomainCa::open(
            Band::Investigative,
            TrustDomain::new("investigate.example.org").unwrap(),
            dir,
            store,
            CaConfig::default(),
            1_700_000_000,
        )
    }

    #[test]
    fn authorities_are_kept_in_whatever_store_the_ca_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::default());
        let first = open(dir.path(), Arc::clone(&store)).unwrap();
        let created = first.authorities();
        assert_eq!(created.len(), 1, "the first open creates one authority");
        assert_eq!(
            store.authorities("investigate.example.org").unwrap(),
            (created.clone(), first.sequence())
        );
        // Reopened over the same store, the CA finds its authority rather than making one.
        let again = open(dir.path(), store).unwrap();
        assert_eq!(again.authorities(), created);
        assert_eq!(again.sequence(), first.sequence());
    }

    fn chained() -> CaConfig {
        CaConfig {
            sign_with_intermediate: true,
            intermediate_ttl: Duration::from_secs(4 * 3600),
            ..CaConfig::default()
        }
    }

    const T0: i64 = 1_700_000_000;

    fn open_at(
        dir: &Path,
        store: Arc<MemoryStore>,
        config: CaConfig,
        now: i64,
    ) -> Result<TrustDomainCa, CaError> {
        TrustDomainCa::open(
            Band::Investigative,
            TrustDomain::new("investigate.example.org").unwrap(),
            dir,
            store,
            config,
            now,
        )
    }

    fn request(ttl: Duration) -> SvidRequest {
        SvidRequest {
            spiffe_id: SpiffeId::new("spiffe://investigate.example.org/agent/a").unwrap(),
            ttl: Some(ttl),
            claims: None,
            dns_names: Vec::new(),
        }
    }

    fn mint(ca: &TrustDomainCa, ttl: Duration, now: i64) -> MintedX509 {
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        ca.mint_x509(SubjectKey::PublicKey(&key.spki_der()), &request(ttl), now)
            .unwrap()
    }

    fn parse(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
        use x509_parser::prelude::FromDer;
        x509_parser::certificate::X509Certificate::from_der(der)
            .unwrap()
            .1
    }

    #[test]
    fn by_default_the_root_signs_and_no_chain_is_carried() {
        let dir = tempfile::tempdir().unwrap();
        let ca = open_at(dir.path(), Arc::default(), CaConfig::default(), T0).unwrap();
        assert!(ca.intermediate_cert().is_none());
        let minted = mint(&ca, Duration::from_secs(300), T0);
        assert!(minted.chain.is_empty());
        let root = parse(&ca.x509_bundle()[0])
            .tbs_certificate
            .subject
            .as_raw()
            .to_vec();
        assert_eq!(
            parse(&minted.cert_der).tbs_certificate.issuer.as_raw(),
            root
        );
    }

    #[test]
    fn leaves_are_signed_by_an_intermediate_the_root_certified() {
        let dir = tempfile::tempdir().unwrap();
        let ca = open_at(dir.path(), Arc::default(), chained(), T0).unwrap();
        let bundle = ca.x509_bundle();
        assert_eq!(bundle.len(), 1, "the bundle holds the root only");
        let minted = mint(&ca, Duration::from_secs(300), T0);
        assert_eq!(minted.chain.len(), 1);
        assert_eq!(
            minted.full_chain(),
            vec![minted.cert_der.clone(), minted.chain[0].clone()]
        );
        assert_ne!(minted.chain[0], bundle[0], "the root is never in the chain");

        let root = parse(&bundle[0]);
        let inter = parse(&minted.chain[0]);
        let leaf = parse(&minted.cert_der);
        assert_eq!(leaf.tbs_certificate.issuer, inter.tbs_certificate.subject);
        assert_eq!(inter.tbs_certificate.issuer, root.tbs_certificate.subject);
        leaf.verify_signature(Some(inter.public_key())).unwrap();
        inter.verify_signature(Some(root.public_key())).unwrap();
        // cA true, pathLen 0, keyCertSign + cRLSign, both critical; the trust domain's
        // ID (no path) as its one SAN, as the root has.
        let bc = inter.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = inter.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
        assert!(!ku.value.digital_signature());
        let sans = |c: &x509_parser::certificate::X509Certificate<'_>| -> Vec<String> {
            c.subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(sans(&inter), sans(&root));
        assert_eq!(sans(&inter), ["URI(spiffe://investigate.example.org)"]);
        // Lifetime: intermediate_ttl from now, inside the root's.
        let not_after = inter.validity().not_after.timestamp();
        assert_eq!(not_after, T0 + 4 * 3600);
        assert!(not_after <= root.validity().not_after.timestamp());
        // writ's own verifier builds the path [leaf, intermediate] to the root.
        let chain: Vec<_> = minted
            .full_chain()
            .into_iter()
            .map(rustls_pki_types::CertificateDer::from)
            .collect();
        let anchors = [rustls_pki_types::CertificateDer::from(bundle[0].clone())];
        let verified = writ_verifier::verify_x509_svid(
            &chain,
            &anchors,
            ca.trust_domain(),
            writ_verifier::x509::Usage::Client,
            rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(T0 as u64 + 1)),
        )
        .unwrap();
        assert_eq!(verified.spiffe_id, request(Duration::ZERO).spiffe_id);
        // Without the intermediate, the leaf does not chain.
        assert!(
            writ_verifier::verify_x509_svid(
                &chain[..1],
                &anchors,
                ca.trust_domain(),
                writ_verifier::x509::Usage::Client,
                rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(T0 as u64 + 1)),
            )
            .is_err()
        );
    }

    fn open_replica_at(dir: &Path, store: Arc<MemoryStore>, now: i64) -> TrustDomainCa {
        TrustDomainCa::open_dyn(
            Band::Investigative,
            TrustDomain::new("investigate.example.org").unwrap(),
            dir,
            store,
            chained(),
            now,
            Roots::HereOrFollow,
        )
        .unwrap()
    }

    #[test]
    fn a_server_with_none_of_the_stored_roots_keys_may_follow_only_if_allowed() {
        assert!(
            holds_roots(&[], true),
            "no authorities yet: this one makes them"
        );
        assert!(holds_roots(&[true, true], true));
        assert!(!holds_roots(&[false, false], true));
        assert!(
            holds_roots(&[false], false),
            "a store of its own: keys must be here"
        );
        // Some keys here but not all: not a replica; opening the keys says what is missing.
        assert!(holds_roots(&[true, false], true));
    }

    #[test]
    fn a_replica_signs_only_through_an_intermediate_the_root_holder_certified() {
        let (root_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Arc::new(MemoryStore::default());
        let holder = TrustDomainCa::open_dyn(
            Band::Investigative,
            TrustDomain::new("investigate.example.org").unwrap(),
            root_dir.path(),
            Arc::clone(&store) as Arc<dyn AuthorityStore>,
            chained(),
            T0,
            Roots::HereOrFollow,
        )
        .unwrap();
        assert!(holder.holds_roots());
        assert_eq!(holder.intermediate_wanted(T0).unwrap(), None);
        let replica = open_replica_at(replica_dir.path(), Arc::clone(&store), T0);
        assert!(!replica.holds_roots());
        // The same bundle, byte for byte: certificates and JWT keys come from the store.
        assert_eq!(replica.x509_bundle(), holder.x509_bundle());
        assert_eq!(replica.jwks().unwrap(), holder.jwks().unwrap());
        assert_eq!(replica.jwt_jwks().unwrap(), holder.jwt_jwks().unwrap());
        // No root key here: nothing signs until an intermediate is installed.
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let refused = replica.mint_x509(
            SubjectKey::PublicKey(&key.spki_der()),
            &request(Duration::from_secs(300)),
            T0,
        );
        assert!(
            matches!(refused, Err(CaError::NoAuthority(_))),
            "{refused:?}"
        );
        assert!(matches!(
            replica.mint_jwt(&request(Duration::from_secs(300)), &["aud".into()], T0),
            Err(CaError::RootsElsewhere(_))
        ));
        assert!(matches!(
            replica.prepare(T0),
            Err(CaError::RootsElsewhere(_))
        ));
        // It asks for its own key; the holder certifies the CSR.
        let wanted = replica.intermediate_wanted(T0).unwrap().unwrap();
        assert_eq!(
            Some(wanted.key_sha256.clone()),
            replica.replica_key_sha256()
        );
        // A certificate for another key is not installed.
        let other = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let foreign = holder
            .certify_intermediate(
                &intermediate_csr(replica.trust_domain(), &other).unwrap(),
                T0 + 3600,
                T0,
            )
            .unwrap();
        assert!(replica.install_intermediate(&foreign, T0).is_err());
        let cert = holder
            .certify_intermediate(&wanted.csr, T0 + 4 * 3600, T0)
            .unwrap();
        replica.install_intermediate(&cert, T0).unwrap();
        assert_eq!(replica.intermediate_wanted(T0).unwrap(), None);
        let minted = mint(&replica, Duration::from_secs(300), T0);
        assert_eq!(minted.chain, vec![cert.clone()]);
        let chain: Vec<_> = minted
            .full_chain()
            .into_iter()
            .map(rustls_pki_types::CertificateDer::from)
            .collect();
        let anchors: Vec<_> = holder
            .x509_bundle()
            .into_iter()
            .map(rustls_pki_types::CertificateDer::from)
            .collect();
        writ_verifier::verify_x509_svid(
            &chain,
            &anchors,
            replica.trust_domain(),
            writ_verifier::x509::Usage::Client,
            rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(T0 as u64 + 1)),
        )
        .unwrap();
        // Restarted, it keeps its key (admitted once) and its certificate.
        let again = open_replica_at(replica_dir.path(), Arc::clone(&store), T0 + 60);
        assert_eq!(again.replica_key_sha256(), replica.replica_key_sha256());
        assert_eq!(again.intermediate_cert(), Some(cert));
        // At half-life it asks again, for the same key.
        let renewal = again.intermediate_wanted(T0 + 2 * 3600).unwrap().unwrap();
        assert_eq!(renewal.key_sha256, wanted.key_sha256);
    }

    #[test]
    fn a_replica_follows_the_root_holders_rotation() {
        let (root_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Arc::new(MemoryStore::default());
        let holder = open_at(root_dir.path(), Arc::clone(&store), chained(), T0).unwrap();
        let replica = open_replica_at(replica_dir.path(), Arc::clone(&store), T0);
        holder.prepare(T0 + 10).unwrap();
        assert_ne!(replica.x509_bundle(), holder.x509_bundle());
        assert!(replica.rotate(T0 + 10).unwrap());
        assert_eq!(replica.x509_bundle(), holder.x509_bundle());
        assert_eq!(replica.sequence(), holder.sequence());
        assert!(!replica.rotate(T0 + 11).unwrap(), "nothing new");
    }

    #[test]
    fn records_from_before_replicas_get_their_jwt_public_key_filled_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::default());
        let first = open(dir.path(), Arc::clone(&store)).unwrap();
        let sequence = first.sequence();
        let mut old = first.authorities();
        for record in &mut old {
            record.jwt_public = None;
        }
        store
            .put_authorities("investigate.example.org", &old, sequence)
            .unwrap();
        drop(first);
        let again = open(dir.path(), Arc::clone(&store)).unwrap();
        let (stored, stored_sequence) = store.authorities("investigate.example.org").unwrap();
        assert_eq!(stored_sequence, sequence, "the bundle did not change");
        assert!(stored.iter().all(|r| r.jwt_public.is_some()));
        assert_eq!(stored, again.authorities());
    }

    #[test]
    fn the_intermediate_key_is_private_and_survives_a_restart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::default());
        let first = open_at(dir.path(), Arc::clone(&store), chained(), T0).unwrap();
        let cert = first.intermediate_cert().unwrap();
        let keys: Vec<_> = std::fs::read_dir(dir.path().join("investigate.example.org"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".intermediate."))
            .collect();
        assert_eq!(keys.len(), 2, "one key, one certificate: {keys:?}");
        for path in &keys {
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        drop(first);
        let again = open_at(dir.path(), store, chained(), T0 + 60).unwrap();
        assert_eq!(again.intermediate_cert().unwrap(), cert);
    }

    #[test]
    fn the_intermediate_is_renewed_at_half_life_and_clamps_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let ca = open_at(dir.path(), Arc::default(), chained(), T0).unwrap();
        let first = ca.intermediate_cert().unwrap();
        let first_end = parse(&first).validity().not_after.timestamp();
        // Just before half-life: same intermediate; a leaf never outlives it.
        let before = T0 + 2 * 3600 - 11;
        ca.rotate(before).unwrap();
        assert_eq!(ca.intermediate_cert().unwrap(), first);
        let late = mint(&ca, Duration::from_secs(3600), first_end - 600);
        assert_eq!(late.not_after, first_end, "clamped to the intermediate");
        // At half-life: a new one, and the old key file is gone.
        ca.rotate(T0 + 2 * 3600).unwrap();
        let second = ca.intermediate_cert().unwrap();
        assert_ne!(second, first);
        let left = std::fs::read_dir(dir.path().join("investigate.example.org"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".intermediate.key")
            })
            .count();
        assert_eq!(left, 1);
    }

    #[test]
    fn a_new_root_gets_a_new_intermediate_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = open_at(dir.path(), Arc::default(), chained(), T0).unwrap();
        let first = ca.intermediate_cert().unwrap();
        ca.prepare(T0 + 10).unwrap();
        ca.activate(T0 + 20).unwrap();
        let second = ca.intermediate_cert().unwrap();
        assert_ne!(second, first);
        let active = ca
            .authorities()
            .into_iter()
            .find(|r| r.state == AuthorityState::Active)
            .unwrap();
        let root = parse(&active.cert_der);
        parse(&second)
            .verify_signature(Some(root.public_key()))
            .unwrap();
        let minted = mint(&ca, Duration::from_secs(60), T0 + 30);
        assert_eq!(minted.authority_id, active.id);
        assert_eq!(minted.chain, [second]);
    }

    #[test]
    fn certify_refuses_a_csr_for_another_band_and_clamps_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = open_at(dir.path(), Arc::default(), chained(), T0).unwrap();
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let other =
            intermediate_csr(&TrustDomain::new("remediate.example.org").unwrap(), &key).unwrap();
        let err = ca.certify_intermediate(&other, T0 + 3600, T0).unwrap_err();
        assert!(err.is_invalid_argument(), "{err:?}");
        let own = intermediate_csr(ca.trust_domain(), &key).unwrap();
        let cert = ca.certify_intermediate(&own, i64::MAX / 2, T0).unwrap();
        let root_end = ca.authorities()[0].not_after;
        assert_eq!(parse(&cert).validity().not_after.timestamp(), root_end);
        assert_eq!(
            parse(&cert).public_key().subject_public_key.data.as_ref(),
            key.public_point()
        );
    }

    #[test]
    fn intermediate_ttl_must_cover_two_svid_lifetimes() {
        let config = CaConfig {
            intermediate_ttl: Duration::from_secs(3600),
            ..chained()
        };
        assert!(matches!(config.validate(), Err(CaError::Config(_))));
        // Off, the setting is not checked: today's configurations are unchanged.
        let off = CaConfig {
            sign_with_intermediate: false,
            ..config
        };
        off.validate().unwrap();
    }

    #[test]
    fn a_store_that_cannot_write_fails_the_ca_with_its_own_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore {
            fail_writes: true,
            ..MemoryStore::default()
        });
        let err = open(dir.path(), store).expect_err("opened without persisting");
        assert!(matches!(err, CaError::Store(_)), "{err:?}");
        assert_eq!(err.to_string(), "disk full");
    }

    // Tenants: each tenant's band CAs are CAs of their own trust domains.

    const DEPLOYMENT: &str = "example.org";

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn open_set(dir: &Path, store: &Arc<MemoryStore>, tenants: &[&str]) -> Result<CaSet, CaError> {
        let tenants: Vec<_> = tenants.iter().map(|t| td(t)).collect();
        CaSet::open(
            td(DEPLOYMENT),
            &tenants,
            dir,
            Arc::clone(store),
            CaConfig::default(),
            Arc::new(crate::clock::ManualClock::at(T0)),
        )
    }

    fn id_request(id: &str) -> SvidRequest {
        SvidRequest {
            spiffe_id: SpiffeId::new(id).unwrap(),
            ttl: Some(Duration::from_secs(300)),
            claims: None,
            dns_names: Vec::new(),
        }
    }

    /// Verifies `minted` as an X.509-SVID of `trust_domain` against `bundle` (webpki,
    /// through writ-verifier).
    fn verifies(
        minted: &MintedX509,
        bundle: &[Vec<u8>],
        trust_domain: &TrustDomain,
    ) -> Result<(), writ_verifier::x509::X509SvidError> {
        let chain: Vec<_> = minted
            .full_chain()
            .into_iter()
            .map(rustls_pki_types::CertificateDer::from)
            .collect();
        let anchors: Vec<_> = bundle
            .iter()
            .cloned()
            .map(rustls_pki_types::CertificateDer::from)
            .collect();
        writ_verifier::verify_x509_svid(
            &chain,
            &anchors,
            trust_domain,
            writ_verifier::x509::Usage::Client,
            rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(T0 as u64 + 1)),
        )
        .map(|_| ())
    }

    /// The key files (`*.key`) directly in `dir`, sorted.
    fn key_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".key"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn each_tenant_has_its_own_band_cas_and_an_svid_of_one_verifies_against_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::default());
        let cas = open_set(dir.path(), &store, &["acme.test", "globex.test"]).unwrap();
        assert_eq!(cas.tenants(), vec![td("acme.test"), td("globex.test")]);

        let acme = cas.ca_in(&td("investigate.acme.test")).expect("acme's CA");
        let globex = cas
            .ca_in(&td("investigate.globex.test"))
            .expect("globex's CA");
        let deployment = cas.ca(Band::Investigative);
        assert_eq!(acme.band(), Band::Investigative);
        assert_eq!(acme.trust_domain(), &td("investigate.acme.test"));
        assert_eq!(deployment.trust_domain(), &td("investigate.example.org"));
        // No base CA for a tenant: nodes and services are the deployment's.
        assert!(cas.ca_in(&td("acme.test")).is_none());
        let pair: Vec<_> = cas
            .band_cas(&td("acme.test"))
            .iter()
            .map(|ca| (ca.band(), ca.trust_domain().to_string()))
            .collect();
        assert_eq!(
            pair,
            vec![
                (Band::Investigative, "investigate.acme.test".to_owned()),
                (Band::Remediation, "remediate.acme.test".to_owned()),
            ]
        );
        assert_eq!(cas.band_cas(&td(DEPLOYMENT)).len(), 3);
        assert!(cas.band_cas(&td("initech.test")).is_empty());

        // Own keys: each CA's key files are in its own trust domain's directory, and no
        // two CAs share an authority, a certificate or a key.
        let roots = [&acme, &globex]
            .iter()
            .map(|ca| {
                let [record] = ca.authorities().try_into().unwrap();
                let key_dir = dir.path().join(ca.trust_domain().to_string());
                assert_eq!(
                    key_files(&key_dir),
                    vec![
                        format!("{}.jwt.key", record.id),
                        format!("{}.x509.key", record.id)
                    ]
                );
                let key = std::fs::read(key_dir.join(format!("{}.x509.key", record.id))).unwrap();
                (record, key)
            })
            .collect::<Vec<_>>();
        assert_ne!(roots[0].0.cert_der, roots[1].0.cert_der);
        assert_ne!(roots[0].0.jwt_kid, roots[1].0.jwt_kid);
        assert_ne!(roots[0].1, roots[1].1);
        assert_ne!(deployment.x509_bundle(), acme.x509_bundle());

        // Minting picks the CA by the SPIFFE ID's trust domain.
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let spki = key.spki_der();
        let request = id_request("spiffe://investigate.acme.test/agent/a/incident/INC-1");
        let minted = cas
            .mint_x509(Band::Investigative, SubjectKey::PublicKey(&spki), &request)
            .unwrap();
        assert_eq!(minted.authority_id, roots[0].0.id);
        let acme_td = td("investigate.acme.test");
        verifies(&minted, &acme.x509_bundle(), &acme_td).unwrap();
        // Neither the other tenant's bundle nor the deployment's is a trust anchor for it.
        let other = verifies(&minted, &globex.x509_bundle(), &acme_td);
        assert!(other.is_err(), "verified against globex's bundle");
        let own = verifies(&minted, &deployment.x509_bundle(), &acme_td);
        assert!(own.is_err(), "verified against the deployment's bundle");
        // The same incident name in the other tenant is another identity, signed by its CA.
        let theirs = cas
            .mint_x509(
                Band::Investigative,
                SubjectKey::PublicKey(&spki),
                &id_request("spiffe://investigate.globex.test/agent/a/incident/INC-1"),
            )
            .unwrap();
        assert_eq!(theirs.authority_id, roots[1].0.id);
        assert!(verifies(&theirs, &acme.x509_bundle(), &td("investigate.globex.test")).is_err());

        // JWT-SVIDs too: signed by acme's JWT key, which globex's does not verify.
        let jwt = cas
            .mint_jwt(Band::Investigative, &request, &["aud".into()])
            .unwrap();
        let jwt_verifies = |jwt_keys: &BTreeMap<String, Vec<u8>>| {
            use base64::Engine;
            let (input, signature) = jwt.token.rsplit_once('.').unwrap();
            let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap();
            jwt_keys.values().any(|point| {
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    point,
                )
                .verify(input.as_bytes(), &signature)
                .is_ok()
            })
        };
        let bundles = cas.bundle_set().unwrap();
        let jwt_keys = |name: &str| bundles.by_name(name).unwrap().jwt_keys.clone();
        assert!(jwt_verifies(&jwt_keys("investigate.acme.test")));
        assert!(!jwt_verifies(&jwt_keys("investigate.globex.test")));
        assert!(!jwt_verifies(&jwt_keys("investigate.example.org")));
        assert!(jwt_keys("investigate.acme.test").contains_key(&roots[0].0.jwt_kid));

        // A band the ID's trust domain does not serve is refused, in a tenant too.
        let err = cas
            .mint_x509(Band::Remediation, SubjectKey::PublicKey(&spki), &request)
            .unwrap_err();
        assert!(
            matches!(&err, CaError::WrongTrustDomain { trust_domain, .. } if trust_domain == "remediate.acme.test"),
            "{err:?}"
        );
        assert_eq!(
            cas.band_of(&request.spiffe_id).unwrap(),
            Band::Investigative
        );

        // Bundles: every held CA's, the deployment's first (what `by_band` finds).
        let names: Vec<_> = bundles
            .bundles
            .iter()
            .map(|b| b.trust_domain.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "investigate.example.org",
                "remediate.example.org",
                "example.org",
                "investigate.acme.test",
                "remediate.acme.test",
                "investigate.globex.test",
                "remediate.globex.test",
            ]
        );
        assert_eq!(
            bundles.by_band(Band::Investigative).unwrap().trust_domain,
            "investigate.example.org"
        );
        assert_eq!(
            bundles.by_name("investigate.acme.test").unwrap().x509_der,
            acme.x509_bundle().concat()
        );
        assert!(cas.holds_roots());
    }

    #[test]
    fn add_tenant_is_idempotent_survives_reopen_and_refuses_taken_trust_domains() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::default());
        let cas = open_set(dir.path(), &store, &[]).unwrap();
        assert!(cas.tenants().is_empty());
        let acme_td = td("investigate.acme.test");
        assert!(cas.ca_in(&acme_td).is_none());

        cas.add_tenant(&td("acme.test")).unwrap();
        let created = cas.ca_in(&acme_td).unwrap().authorities();
        assert_eq!(created.len(), 1);
        let remediation = cas.ca_in(&td("remediate.acme.test")).unwrap().authorities();
        cas.add_tenant(&td("acme.test")).unwrap();
        assert_eq!(cas.tenants(), vec![td("acme.test")]);
        assert_eq!(
            cas.ca_in(&acme_td).unwrap().authorities(),
            created,
            "added once"
        );
        assert_eq!(store.authorities(acme_td.as_ref()).unwrap().0, created);

        // Reopened over the same store and key directory, the tenant's CAs find their
        // authorities and keys rather than making new ones, and sign.
        drop(cas);
        let again = open_set(dir.path(), &store, &["acme.test"]).unwrap();
        let acme = again.ca_in(&acme_td).unwrap();
        assert_eq!(acme.authorities(), created);
        assert_eq!(
            again
                .ca_in(&td("remediate.acme.test"))
                .unwrap()
                .authorities(),
            remediation
        );
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let minted = again
            .mint_x509(
                Band::Investigative,
                SubjectKey::PublicKey(&key.spki_der()),
                &id_request("spiffe://investigate.acme.test/agent/a/incident/INC-1"),
            )
            .unwrap();
        assert_eq!(minted.authority_id, created[0].id);
        verifies(&minted, &acme.x509_bundle(), &acme_td).unwrap();

        // No trust domain gets two owners: not the deployment's base or bands, not a
        // tenant's base or bands, whichever way round the names nest.
        again.add_tenant(&td("investigate.foo.test")).unwrap();
        for taken in [
            DEPLOYMENT,
            "investigate.example.org",
            "remediate.example.org",
            "investigate.acme.test",
            "foo.test",
        ] {
            let err = again.add_tenant(&td(taken)).unwrap_err();
            assert!(matches!(err, CaError::Config(_)), "{taken}: {err:?}");
        }
        let err = again.add_tenant(&td("remediate.acme.test")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid CA configuration: tenant base remediate.acme.test: trust domain \
             remediate.acme.test is already another tenant's"
        );
        assert_eq!(
            again.tenants(),
            vec![td("acme.test"), td("investigate.foo.test")]
        );
        assert!(again.ca_in(&td("investigate.example.org")).is_some());

        // A SPIFFE ID in a trust domain no CA here holds: refused as the caller's
        // mistake, naming no tenant.
        let stranger = id_request("spiffe://investigate.other.test/agent/a/incident/INC-1");
        let err = again
            .mint_x509(
                Band::Investigative,
                SubjectKey::PublicKey(&key.spki_der()),
                &stranger,
            )
            .unwrap_err();
        assert!(matches!(err, CaError::WrongTrustDomain { .. }), "{err:?}");
        assert!(err.is_invalid_argument());
        assert!(!err.to_string().contains("acme"), "{err}");
        let err = again
            .mint_jwt(Band::Investigative, &stranger, &["aud".into()])
            .unwrap_err();
        assert!(matches!(err, CaError::WrongTrustDomain { .. }), "{err:?}");
        assert!(matches!(
            again.band_of(&stranger.spiffe_id),
            Err(CaError::WrongTrustDomain { .. })
        ));
    }

    #[test]
    fn the_deployments_key_files_keep_their_paths_when_tenants_are_added() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::default());
        // A key directory as a server without tenants writes it: one directory per
        // band's trust domain, directly in the key directory.
        let before: Vec<(String, Vec<AuthorityRecord>)> = {
            let cas = open_set(dir.path(), &store, &[]).unwrap();
            cas.iter()
                .map(|ca| (ca.trust_domain().to_string(), ca.authorities()))
                .collect()
        };
        for (trust_domain, records) in &before {
            let id = &records[0].id;
            assert_eq!(
                key_files(&dir.path().join(trust_domain)),
                vec![format!("{id}.jwt.key"), format!("{id}.x509.key")],
                "{trust_domain}"
            );
        }
        // Reopened with a tenant: the deployment's CAs find the same keys where they
        // were, and the tenant's keys go in directories of their own.
        let cas = open_set(dir.path(), &store, &["acme.test"]).unwrap();
        let after: Vec<_> = cas
            .iter()
            .map(|ca| (ca.trust_domain().to_string(), ca.authorities()))
            .collect();
        assert_eq!(after, before);
        for (trust_domain, records) in &before {
            let id = &records[0].id;
            assert_eq!(
                key_files(&dir.path().join(trust_domain)),
                vec![format!("{id}.jwt.key"), format!("{id}.x509.key")],
                "{trust_domain}: nothing added or moved"
            );
        }
        for tenant_td in ["investigate.acme.test", "remediate.acme.test"] {
            let [record] = cas
                .ca_in(&td(tenant_td))
                .unwrap()
                .authorities()
                .try_into()
                .unwrap();
            assert_eq!(
                key_files(&dir.path().join(tenant_td)),
                vec![
                    format!("{}.jwt.key", record.id),
                    format!("{}.x509.key", record.id)
                ]
            );
        }
    }

    #[test]
    fn a_replicas_tenant_cas_follow_the_store_and_never_make_roots() {
        let (root_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Arc::new(MemoryStore::default());
        let open_shared = |dir: &Path, tenants: &[TrustDomain]| {
            CaSet::open_shared(
                td(DEPLOYMENT),
                tenants,
                dir,
                Arc::clone(&store),
                chained(),
                Arc::new(crate::clock::ManualClock::at(T0)),
            )
            .unwrap()
        };
        let holder = open_shared(root_dir.path(), &[td("acme.test")]);
        assert!(holder.holds_roots());
        let replica = open_shared(replica_dir.path(), &[td("acme.test")]);
        assert!(!replica.holds_roots());
        let acme_td = td("investigate.acme.test");
        let (theirs, ours) = (
            holder.ca_in(&acme_td).unwrap(),
            replica.ca_in(&acme_td).unwrap(),
        );
        assert!(!ours.holds_roots());
        assert_eq!(ours.x509_bundle(), theirs.x509_bundle());
        assert!(
            key_files(&replica_dir.path().join(acme_td.to_string()))
                .iter()
                .all(|f| f == REPLICA_KEY)
        );
        // A tenant the root's holder has not stored yet: the replica waits for it
        // rather than making roots of its own.
        replica.add_tenant(&td("globex.test")).unwrap();
        let globex = replica.ca_in(&td("investigate.globex.test")).unwrap();
        assert!(!globex.holds_roots());
        assert!(globex.authorities().is_empty());
        assert_eq!(
            store.authorities("investigate.globex.test").unwrap().0,
            Vec::new()
        );
        // Once the holder adds it, the replica follows at its next rotation.
        holder.add_tenant(&td("globex.test")).unwrap();
        replica.rotate().unwrap();
        assert_eq!(
            globex.x509_bundle(),
            holder
                .ca_in(&td("investigate.globex.test"))
                .unwrap()
                .x509_bundle()
        );
    }
}
