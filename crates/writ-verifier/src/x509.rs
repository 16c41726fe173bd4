//! X.509-SVID verification (SPIFFE X509-SVID.md §4–5, and §5.2 on validation).
//!
//! Path building and signatures are rustls-webpki's; this module adds what webpki does
//! not know: the SPIFFE ID in the one URI SAN, the trust domain the bundle must belong
//! to, the leaf's key usage, writ's claims extension, and the shape of the intermediates
//! a writ server signs through (a CA that may sign leaves only, of the leaf's own trust
//! domain).

use crate::claims::{CLAIMS_OID_DER, ClaimsError, WritClaims};
use rustls_pki_types::{CertificateDer, UnixTime};
use spiffe::{SpiffeId, TrustDomain};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Which side of a TLS connection the SVID is presented by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// The peer is a TLS client (checked for the clientAuth EKU).
    Client,
    /// The peer is a TLS server (checked for the serverAuth EKU).
    Server,
}

/// An X.509-SVID that chained to its trust domain's bundle and obeys the SPIFFE rules.
#[derive(Clone, Debug)]
pub struct VerifiedX509Svid {
    /// The SPIFFE ID from the leaf's URI SAN.
    pub spiffe_id: SpiffeId,
    /// writ's claims, if the leaf carries the claims extension.
    pub claims: Option<WritClaims>,
    /// The leaf's serial number, big-endian.
    pub serial: Vec<u8>,
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The authority the chain ended at: [`authority_key_id`] of the bundle certificate
    /// that anchored it. A tainted authority is refused by this (docs/operations.md,
    /// "A compromised CA").
    pub authority: String,
}

/// The id of a CA authority as verifiers and the revocation feed name it: the SHA-256 of
/// its key (the SubjectPublicKeyInfo webpki takes from its certificate), lowercase hex.
/// Naming the key rather than the certificate covers every certificate of that key,
/// including any an attacker holding it made.
pub fn authority_key_id(ca_cert: &CertificateDer<'_>) -> Result<String, X509SvidError> {
    let anchor = webpki::anchor_from_trusted_cert(ca_cert)
        .map_err(|e| X509SvidError::Malformed(format!("{e:?}")))?;
    Ok(anchor_key_id(&anchor))
}

fn anchor_key_id(anchor: &rustls_pki_types::TrustAnchor<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, &anchor.subject_public_key_info);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why an X.509-SVID was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum X509SvidError {
    /// No certificate was presented.
    #[error("empty certificate chain")]
    EmptyChain,
    /// A certificate is not valid DER X.509.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The leaf does not have exactly one URI SAN.
    #[error("leaf must have exactly one URI SAN, found {0}")]
    UriSanCount(usize),
    /// The URI SAN is not a valid SPIFFE ID, or has no path.
    #[error("invalid SPIFFE ID in URI SAN: {0}")]
    SpiffeId(String),
    /// The SPIFFE ID belongs to another trust domain than the bundle.
    #[error("SPIFFE ID {id} is not in trust domain {expected}")]
    WrongTrustDomain {
        /// The SVID's SPIFFE ID.
        id: String,
        /// The trust domain of the bundle it was checked against.
        expected: String,
    },
    /// The leaf is a CA certificate.
    #[error("leaf certificate is a CA")]
    LeafIsCa,
    /// Key usage missing, lacking digitalSignature, or allowing keyCertSign/cRLSign.
    #[error("leaf key usage invalid: {0}")]
    KeyUsage(&'static str),
    /// The bundle holds no usable certificate.
    #[error("bundle has no usable CA certificate")]
    EmptyBundle,
    /// rustls-webpki refused the chain (signature, validity, EKU, path).
    #[error("chain does not verify against the trust domain bundle: {0}")]
    Path(String),
    /// The claims extension is present but unreadable.
    #[error(transparent)]
    Claims(#[from] ClaimsError),
    /// A presented intermediate is not a signing certificate of the leaf's trust domain
    /// that signs leaves only (cA true, pathLenConstraint 0, keyCertSign), or there are
    /// too many of them.
    #[error("intermediate certificate refused: {0}")]
    Intermediate(String),
}

/// The most intermediates a peer may present with its leaf.
pub const MAX_INTERMEDIATES: usize = 4;

/// Verifies `chain` (leaf first) against `bundle`, the CA certificates of `trust_domain`.
///
/// The bundle must be the one of the SVID's own trust domain: bundles of different trust
/// domains are never merged, so an investigative SVID can never validate against the
/// remediation bundle.
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundle: &[CertificateDer<'_>],
    trust_domain: &TrustDomain,
    usage: Usage,
    now: UnixTime,
) -> Result<VerifiedX509Svid, X509SvidError> {
    let leaf_der = chain.first().ok_or(X509SvidError::EmptyChain)?;
    let (rest, leaf) =
        X509Certificate::from_der(leaf_der).map_err(|e| X509SvidError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(X509SvidError::Malformed("trailing bytes after leaf".into()));
    }
    let spiffe_id = leaf_spiffe_id(&leaf)?;
    if spiffe_id.trust_domain() != trust_domain {
        return Err(X509SvidError::WrongTrustDomain {
            id: spiffe_id.to_string(),
            expected: trust_domain.to_string(),
        });
    }
    check_leaf_usage(&leaf)?;
    let claims = leaf_claims(&leaf)?;
    // A root the peer sends along is already an anchor: it is not an intermediate.
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .filter(|c| !bundle.iter().any(|root| root.as_ref() == c.as_ref()))
        .cloned()
        .collect();
    if intermediates.len() > MAX_INTERMEDIATES {
        return Err(X509SvidError::Intermediate(format!(
            "{} presented, at most {MAX_INTERMEDIATES}",
            intermediates.len()
        )));
    }
    for der in &intermediates {
        check_intermediate(der, trust_domain)?;
    }

    let anchors = bundle
        .iter()
        .filter_map(|ca| webpki::anchor_from_trusted_cert(ca).ok())
        .collect::<Vec<_>>();
    if anchors.is_empty() {
        return Err(X509SvidError::EmptyBundle);
    }
    let end_entity = webpki::EndEntityCert::try_from(leaf_der)
        .map_err(|e| X509SvidError::Malformed(format!("{e:?}")))?;
    let eku = match usage {
        Usage::Client => webpki::KeyUsage::client_auth(),
        Usage::Server => webpki::KeyUsage::server_auth(),
    };
    let path = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            now,
            eku,
            None,
            None,
        )
        .map_err(|e| X509SvidError::Path(format!("{e:?}")))?;

    Ok(VerifiedX509Svid {
        spiffe_id,
        claims,
        serial: leaf.raw_serial().to_vec(),
        not_after: leaf.validity().not_after.timestamp(),
        authority: anchor_key_id(path.anchor()),
    })
}

/// The SPIFFE ID of a leaf: its one URI SAN, with a non-empty path (X509-SVID.md §2).
pub fn leaf_spiffe_id(leaf: &X509Certificate<'_>) -> Result<SpiffeId, X509SvidError> {
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| X509SvidError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(X509SvidError::UriSanCount(uris.len()));
    };
    let id = crate::id::parse_spiffe_id(uri).map_err(|e| X509SvidError::SpiffeId(e.to_string()))?;
    if id.path().is_empty() {
        return Err(X509SvidError::SpiffeId(format!("{uri} has no path")));
    }
    Ok(id)
}

/// An intermediate as writ issues them (X509-SVID.md §3.2, §4.1, §4.3): cA true with
/// pathLenConstraint 0, keyCertSign, and at most a URI SAN that is the trust domain's own
/// ID (a signing certificate's SPIFFE ID has no path).
fn check_intermediate(der: &[u8], trust_domain: &TrustDomain) -> Result<(), X509SvidError> {
    let refuse = |reason: String| X509SvidError::Intermediate(reason);
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| refuse(e.to_string()))?;
    let constraints = cert
        .basic_constraints()
        .map_err(|e| refuse(e.to_string()))?
        .map(|ext| ext.value.clone());
    match constraints {
        Some(bc) if bc.ca && bc.path_len_constraint == Some(0) => {}
        Some(bc) if bc.ca => {
            return Err(refuse(format!(
                "pathLenConstraint is {:?}, must be 0",
                bc.path_len_constraint
            )));
        }
        _ => return Err(refuse("not a CA certificate".into())),
    }
    let key_usage = cert
        .key_usage()
        .map_err(|e| refuse(e.to_string()))?
        .ok_or_else(|| refuse("key usage missing".into()))?;
    if !key_usage.value.key_cert_sign() {
        return Err(refuse("keyCertSign not set".into()));
    }
    let want = trust_domain.id_string();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| refuse(e.to_string()))?
    {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && *uri != want
            {
                return Err(refuse(format!("URI SAN {uri} is not {want}")));
            }
        }
    }
    Ok(())
}

fn check_leaf_usage(leaf: &X509Certificate<'_>) -> Result<(), X509SvidError> {
    if leaf.is_ca() {
        return Err(X509SvidError::LeafIsCa);
    }
    let key_usage = leaf
        .key_usage()
        .map_err(|e| X509SvidError::Malformed(e.to_string()))?
        .ok_or(X509SvidError::KeyUsage("extension missing"))?;
    if !key_usage.value.digital_signature() {
        return Err(X509SvidError::KeyUsage("digitalSignature not set"));
    }
    if key_usage.value.key_cert_sign() || key_usage.value.crl_sign() {
        return Err(X509SvidError::KeyUsage("keyCertSign or cRLSign set"));
    }
    Ok(())
}

/// writ's claims from the leaf's private extension, if it has one.
pub fn leaf_claims(leaf: &X509Certificate<'_>) -> Result<Option<WritClaims>, X509SvidError> {
    for ext in leaf.extensions() {
        if ext.oid.as_bytes() == CLAIMS_OID_DER {
            // The parser knows nothing of our OID, so the value arrives unparsed.
            debug_assert!(matches!(
                ext.parsed_extension(),
                ParsedExtension::UnsupportedExtension { .. }
            ));
            return Ok(Some(WritClaims::from_der(ext.value)?));
        }
    }
    Ok(None)
}
