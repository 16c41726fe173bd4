//! Intermediate CAs: a band's root certifies a key made on the signing host, and that
//! intermediate signs the leaves (docs/decisions/0003, option 3).
//!
//! The two halves are separate functions so that the root's holder and the signer can be
//! different hosts: [`intermediate_csr`] runs where the intermediate key lives, and
//! [`verify_intermediate_csr`] (behind `CaSet::certify_intermediate`) where the root
//! lives; only the CSR and the certificate travel. When to renew and how long an
//! intermediate lives are pure decisions ([`renewal_due`], [`intermediate_not_after`]).
//! Must never: put an intermediate key anywhere but this host's key directory, certify a
//! CSR that asks for anything but its band's trust domain ID, or let an intermediate
//! outlive the root that certified it.

use super::CaError;
use super::keys::EcKey;
use spiffe::TrustDomain;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

/// The lifetime of one intermediate, and the root that certified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntermediateLife {
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
    /// The id of the authority (root) that certified it.
    pub issuer: String,
}

/// Whether a new intermediate is needed at `now`: there is none, it has lived half its
/// lifetime, or it was certified by a root that is no longer the active one (after a root
/// rotation, new leaves must chain to the new root).
pub fn renewal_due(current: Option<&IntermediateLife>, active_root: &str, now: i64) -> bool {
    match current {
        None => true,
        Some(life) => life.issuer != active_root || now >= renew_at(life),
    }
}

/// When `life` reaches half its lifetime, the moment [`renewal_due`] turns true.
pub fn renew_at(life: &IntermediateLife) -> i64 {
    life.not_before + (life.not_after - life.not_before + 1) / 2
}

/// The notAfter of an intermediate certified at `now` for `ttl_secs`: never past the
/// notAfter of the root that certifies it.
pub fn intermediate_not_after(now: i64, ttl_secs: i64, root_not_after: i64) -> i64 {
    now.saturating_add(ttl_secs).min(root_not_after)
}

/// A PKCS#10 CSR for an intermediate of `trust_domain`, signed with `key`: it asks for the
/// trust domain's ID as its one URI SAN and nothing else (the root decides the rest).
pub fn intermediate_csr(trust_domain: &TrustDomain, key: &EcKey) -> Result<Vec<u8>, CaError> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "writ");
    params.distinguished_name = name;
    params.subject_alt_names =
        vec![SanType::URI(trust_domain.id_string().try_into().map_err(
            |_| CaError::Crypto("trust domain is not an IA5 string"),
        )?)];
    let csr = params
        .serialize_request(key)
        .map_err(|e| CaError::Certificate(e.to_string()))?;
    Ok(csr.der().to_vec())
}

/// SHA-256 of a key's DER SubjectPublicKeyInfo, lowercase hex: the name under which an
/// operator admits a replica's intermediate key (`writ replica admit --key-sha256`).
pub fn key_sha256(spki_der: &[u8]) -> String {
    crate::hex::lower(ring::digest::digest(&ring::digest::SHA256, spki_der).as_ref())
}

/// Parses `der`, verifies its self-signature, and checks that it is a P-256 key asking
/// for exactly `trust_domain`'s ID as its one URI SAN and no other extension. Returns the
/// DER SubjectPublicKeyInfo to certify.
pub fn verify_intermediate_csr(der: &[u8], trust_domain: &TrustDomain) -> Result<Vec<u8>, CaError> {
    if der.len() > super::csr::MAX_CSR_LEN {
        return Err(CaError::BadCsr(format!(
            "larger than {} bytes",
            super::csr::MAX_CSR_LEN
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| CaError::BadCsr(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::BadCsr("trailing bytes after the request".into()));
    }
    csr.verify_signature()
        .map_err(|_| CaError::BadCsr("signature does not verify".into()))?;
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(CaError::BadKey(
            "an intermediate's key must be ECDSA P-256".into(),
        ));
    }
    let want = trust_domain.id_string();
    let mut asked_uri = false;
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            return Err(CaError::BadCsr(format!(
                "an intermediate CSR may ask for its URI SAN only, not {ext:?}"
            )));
        };
        for name in &san.general_names {
            match name {
                GeneralName::URI(uri) if *uri == want && !asked_uri => asked_uri = true,
                other => {
                    return Err(CaError::BadCsr(format!(
                        "asks for a SAN other than {want}: {other}"
                    )));
                }
            }
        }
    }
    if !asked_uri {
        return Err(CaError::BadCsr(format!("does not ask for {want}")));
    }
    Ok(spki.raw.to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ca::keys::SignatureEncoding;

    fn life(nb: i64, na: i64, issuer: &str) -> IntermediateLife {
        IntermediateLife {
            not_before: nb,
            not_after: na,
            issuer: issuer.into(),
        }
    }

    #[test]
    fn none_is_due_at_once() {
        assert!(renewal_due(None, "root", 0));
    }

    #[test]
    fn renews_at_half_life_not_before() {
        let l = life(1000, 2000, "root");
        assert!(!renewal_due(Some(&l), "root", 1499));
        assert!(renewal_due(Some(&l), "root", 1500));
        assert_eq!(renew_at(&l), 1500);
    }

    #[test]
    fn a_new_active_root_renews_at_once() {
        let l = life(1000, 2000, "old");
        assert!(renewal_due(Some(&l), "new", 1001));
    }

    #[test]
    fn lifetime_is_the_ttl_clamped_to_the_root() {
        assert_eq!(intermediate_not_after(100, 50, 1000), 150);
        assert_eq!(intermediate_not_after(100, 5000, 1000), 1000);
        assert_eq!(intermediate_not_after(i64::MAX - 1, 10, i64::MAX), i64::MAX);
    }

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    #[test]
    fn our_csr_passes_and_names_only_its_trust_domain() {
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let csr = intermediate_csr(&td("a.example.org"), &key).unwrap();
        let spki = verify_intermediate_csr(&csr, &td("a.example.org")).unwrap();
        assert_eq!(spki, key.spki_der());
        let err = verify_intermediate_csr(&csr, &td("b.example.org")).unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{err:?}");
    }

    #[test]
    fn a_csr_asking_for_a_path_or_more_names_is_refused() {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap();
        for sans in [
            vec!["spiffe://a.example.org/workload".to_string()],
            vec![
                "spiffe://a.example.org".to_string(),
                "spiffe://b.example.org".to_string(),
            ],
            vec![],
        ] {
            let mut params = CertificateParams::default();
            params.subject_alt_names = sans
                .iter()
                .map(|s| rcgen::SanType::URI(s.as_str().try_into().unwrap()))
                .collect();
            let csr = params.serialize_request(&key).unwrap();
            let err = verify_intermediate_csr(csr.der(), &td("a.example.org")).unwrap_err();
            assert!(matches!(err, CaError::BadCsr(_)), "{sans:?}: {err:?}");
        }
    }

    #[test]
    fn the_admitted_hash_is_the_spki_digest_the_root_recomputes_from_the_csr() {
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let csr = intermediate_csr(&td("a.example.org"), &key).unwrap();
        let spki = verify_intermediate_csr(&csr, &td("a.example.org")).unwrap();
        let hash = key_sha256(&spki);
        assert_eq!(hash, key_sha256(&key.spki_der()));
        assert_eq!(hash.len(), 64);
        let other = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        assert_ne!(hash, key_sha256(&other.spki_der()));
    }

    #[test]
    fn a_csr_with_a_broken_signature_is_refused() {
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let mut csr = intermediate_csr(&td("a.example.org"), &key).unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 1;
        assert!(verify_intermediate_csr(&csr, &td("a.example.org")).is_err());
    }
}
