//! Certificate signing requests from workloads and admins (PKCS#10, RFC 2986).
//!
//! A CSR proves possession of a key. We verify its signature and take its public key;
//! we never copy its subject, SANs or extensions into a certificate. A CSR that asks for
//! more than it will get (a CA, other SANs, certificate-signing key usage) is refused
//! outright rather than silently trimmed, so a confused or hostile client hears about it.

use super::CaError;
use spiffe::SpiffeId;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

/// Upper bound on a CSR; larger input is refused before parsing.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// The public key of a CSR whose signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCsr {
    /// DER SubjectPublicKeyInfo, exactly as the CSR carried it.
    pub spki_der: Vec<u8>,
}

/// Parses `der`, verifies its self-signature and checks that it asks for nothing beyond
/// an end-entity certificate for `spiffe_id`.
pub fn verify_csr(der: &[u8], spiffe_id: &SpiffeId) -> Result<VerifiedCsr, CaError> {
    if der.len() > MAX_CSR_LEN {
        return Err(CaError::BadCsr(format!("larger than {MAX_CSR_LEN} bytes")));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| CaError::BadCsr(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr("trailing bytes after the request".into()));
    }
    csr.verify_signature()
        .map_err(|_| CaError::BadCsr("signature does not verify".into()))?;

    let spki = &csr.certification_request_info.subject_pki;
    check_key_algorithm(spki)?;

    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CaError::BadCsr("asks for a CA certificate".into()));
                }
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                    return Err(CaError::BadCsr(
                        "asks for certificate-signing key usage".into(),
                    ));
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) if *uri == spiffe_id.to_string() => {}
                            other => {
                                return Err(CaError::BadCsr(format!(
                                    "asks for a SAN other than {spiffe_id}: {other}"
                                )));
                            }
                        }
                    }
                }
                ParsedExtension::ParseError { error } => {
                    return Err(CaError::BadCsr(format!(
                        "unreadable requested extension: {error}"
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
    })
}

/// Accepts the key types every SPIFFE client and TLS stack handles: ECDSA P-256 and
/// P-384, and Ed25519.
pub(crate) fn check_key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<(), CaError> {
    let alg = &spki.algorithm;
    if alg.algorithm == OID_SIG_ED25519 {
        return Ok(());
    }
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CaError::BadKey("EC key without a named curve".into()))?;
        if curve == OID_EC_P256 || curve == OID_NIST_EC_P384 {
            return Ok(());
        }
        return Err(CaError::BadKey(format!("unsupported EC curve {curve}")));
    }
    Err(CaError::BadKey(format!(
        "unsupported key algorithm {} (use ECDSA P-256/P-384 or Ed25519)",
        alg.algorithm
    )))
}

/// Parses and checks a bare DER SubjectPublicKeyInfo (minting from a public key).
pub fn verify_spki(der: &[u8]) -> Result<Vec<u8>, CaError> {
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
        .map_err(|e| CaError::BadKey(format!("not a DER SubjectPublicKeyInfo: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::BadKey(
            "trailing bytes after the public key".into(),
        ));
    }
    check_key_algorithm(&spki)?;
    Ok(der.to_vec())
}
