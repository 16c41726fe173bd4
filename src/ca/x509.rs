//! Building certificates: the self-signed root of each trust domain (rcgen) and the
//! X.509-SVID leaf (our DER writer, see `der.rs` for why).
//!
//! Every rule below is from SPIFFE X509-SVID.md §4 and CONFORMANCE.md, and each has a
//! test in `tests/conformance.rs` that fails if minting breaks it.

use super::CaError;
use super::der::{self, nested, tlv};
use super::keys::EcKey;
use ring::digest;
use spiffe::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use writ_verifier::claims::CLAIMS_OID_DER;

// Object identifiers, as DER content octets.
const OID_ECDSA_WITH_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const OID_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const OID_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// The issuing side of a leaf: a CA certificate's subject and key identifier, and its key.
pub struct IssuerRef<'a> {
    /// DER of the CA certificate's subject Name (becomes the leaf's issuer).
    pub subject_der: &'a [u8],
    /// The CA's subject key identifier (becomes the leaf's authority key identifier).
    pub key_id: &'a [u8],
    /// The CA's signing key.
    pub key: &'a EcKey,
}

/// What goes into one X.509-SVID.
pub struct LeafSpec<'a> {
    /// The one URI SAN.
    pub spiffe_id: &'a SpiffeId,
    /// Extra DNS SANs (allowed by X509-SVID.md §2), already validated.
    pub dns_names: &'a [String],
    /// DER SubjectPublicKeyInfo of the subject's key.
    pub spki_der: &'a [u8],
    /// Start of validity (already backdated for clock skew).
    pub not_before: OffsetDateTime,
    /// End of validity (already clamped to the CA's notAfter).
    pub not_after: OffsetDateTime,
    /// DER of writ's claims extension value, if any.
    pub claims_der: Option<&'a [u8]>,
    /// 16 random bytes; made positive here.
    pub serial: [u8; 16],
}

/// Builds and signs an X.509-SVID leaf; returns its DER.
pub fn build_leaf(issuer: &IssuerRef<'_>, spec: &LeafSpec<'_>) -> Result<Vec<u8>, CaError> {
    let mut tbs = Vec::with_capacity(768);
    nested(&mut tbs, der::SEQUENCE, |t| {
        // version [0] EXPLICIT v3
        tlv(t, 0xa0, &[der::INTEGER, 0x01, 0x02]);
        let mut serial = spec.serial;
        serial[0] = (serial[0] & 0x7f) | 0x40; // positive, always 16 bytes
        der::unsigned_integer(t, &serial);
        signature_algorithm(t);
        t.extend_from_slice(issuer.subject_der);
        nested(t, der::SEQUENCE, |v| {
            der::time(v, spec.not_before);
            der::time(v, spec.not_after);
        });
        organization_name(t, "writ");
        t.extend_from_slice(spec.spki_der);
        nested(t, 0xa3, |x| {
            nested(x, der::SEQUENCE, |exts| leaf_extensions(exts, issuer, spec));
        });
    });
    sign(issuer.key, &tbs)
}

/// What goes into one intermediate CA certificate.
pub struct IntermediateSpec<'a> {
    /// The band's trust domain: its ID is the one URI SAN, as on the root.
    pub trust_domain: &'a TrustDomain,
    /// Common name, distinct per intermediate so path builders matching names never
    /// confuse two of them.
    pub common_name: &'a str,
    /// DER SubjectPublicKeyInfo of the intermediate's key (from its CSR).
    pub spki_der: &'a [u8],
    /// Start of validity (already backdated for clock skew).
    pub not_before: OffsetDateTime,
    /// End of validity (already clamped to the root's notAfter).
    pub not_after: OffsetDateTime,
    /// 16 random bytes; made positive here.
    pub serial: [u8; 16],
}

/// Builds and signs an intermediate CA certificate under `issuer` (a band's root).
///
/// cA=true with pathLenConstraint 0 (it signs leaves only), keyCertSign + cRLSign
/// (critical), the trust domain's ID as its one URI SAN with no path, as a signing
/// certificate's must be (X509-SVID.md §3.2, §4.1, §4.3), and no EKU, like the root.
pub fn build_intermediate(
    issuer: &IssuerRef<'_>,
    spec: &IntermediateSpec<'_>,
) -> Result<Vec<u8>, CaError> {
    let mut tbs = Vec::with_capacity(768);
    nested(&mut tbs, der::SEQUENCE, |t| {
        tlv(t, 0xa0, &[der::INTEGER, 0x01, 0x02]);
        let mut serial = spec.serial;
        serial[0] = (serial[0] & 0x7f) | 0x40;
        der::unsigned_integer(t, &serial);
        signature_algorithm(t);
        t.extend_from_slice(issuer.subject_der);
        nested(t, der::SEQUENCE, |v| {
            der::time(v, spec.not_before);
            der::time(v, spec.not_after);
        });
        nested(t, der::SEQUENCE, |name| {
            rdn(name, OID_ORGANIZATION, "writ");
            rdn(name, OID_COMMON_NAME, spec.common_name);
        });
        t.extend_from_slice(spec.spki_der);
        nested(t, 0xa3, |x| {
            nested(x, der::SEQUENCE, |exts| {
                // basicConstraints, critical: cA TRUE, pathLenConstraint 0.
                extension(
                    exts,
                    OID_BASIC_CONSTRAINTS,
                    true,
                    &[
                        der::SEQUENCE,
                        0x06,
                        der::BOOLEAN,
                        0x01,
                        0xff,
                        der::INTEGER,
                        0x01,
                        0x00,
                    ],
                );
                // keyUsage, critical: keyCertSign (bit 5) and cRLSign (bit 6); 1 unused bit.
                extension(
                    exts,
                    OID_KEY_USAGE,
                    true,
                    &[der::BIT_STRING, 0x02, 0x01, 0x06],
                );
                let mut ski = Vec::new();
                tlv(&mut ski, der::OCTET_STRING, &key_identifier(spec.spki_der));
                extension(exts, OID_SUBJECT_KEY_ID, false, &ski);
                let mut aki = Vec::new();
                nested(&mut aki, der::SEQUENCE, |s| tlv(s, 0x80, issuer.key_id));
                extension(exts, OID_AUTHORITY_KEY_ID, false, &aki);
                let mut san = Vec::new();
                nested(&mut san, der::SEQUENCE, |s| {
                    tlv(s, 0x86, spec.trust_domain.id_string().as_bytes());
                });
                extension(exts, OID_SUBJECT_ALT_NAME, false, &san);
            });
        });
    });
    sign(issuer.key, &tbs)
}

fn leaf_extensions(out: &mut Vec<u8>, issuer: &IssuerRef<'_>, spec: &LeafSpec<'_>) {
    // basicConstraints, critical, cA=false (the DEFAULT, so an empty SEQUENCE in DER).
    extension(out, OID_BASIC_CONSTRAINTS, true, &[der::SEQUENCE, 0x00]);
    // keyUsage, critical: digitalSignature only (bit 0; 7 unused bits).
    extension(
        out,
        OID_KEY_USAGE,
        true,
        &[der::BIT_STRING, 0x02, 0x07, 0x80],
    );
    // extKeyUsage: both serverAuth and clientAuth, so the SVID works on either side.
    let mut eku = Vec::new();
    nested(&mut eku, der::SEQUENCE, |s| {
        tlv(s, der::OID, OID_SERVER_AUTH);
        tlv(s, der::OID, OID_CLIENT_AUTH);
    });
    extension(out, OID_EXT_KEY_USAGE, false, &eku);
    let mut ski = Vec::new();
    tlv(&mut ski, der::OCTET_STRING, &key_identifier(spec.spki_der));
    extension(out, OID_SUBJECT_KEY_ID, false, &ski);
    let mut aki = Vec::new();
    nested(&mut aki, der::SEQUENCE, |s| tlv(s, 0x80, issuer.key_id));
    extension(out, OID_AUTHORITY_KEY_ID, false, &aki);
    // subjectAltName: exactly one URI (tag [6]), then any DNS names (tag [2]). Not
    // critical: the subject is non-empty.
    let mut san = Vec::new();
    nested(&mut san, der::SEQUENCE, |s| {
        tlv(s, 0x86, spec.spiffe_id.to_string().as_bytes());
        for dns in spec.dns_names {
            tlv(s, 0x82, dns.as_bytes());
        }
    });
    extension(out, OID_SUBJECT_ALT_NAME, false, &san);
    if let Some(claims) = spec.claims_der {
        // Non-critical: SPIFFE clients that do not know writ must still accept the SVID.
        extension(out, CLAIMS_OID_DER, false, claims);
    }
}

fn extension(out: &mut Vec<u8>, oid: &[u8], critical: bool, value: &[u8]) {
    nested(out, der::SEQUENCE, |e| {
        tlv(e, der::OID, oid);
        if critical {
            tlv(e, der::BOOLEAN, &[0xff]);
        }
        tlv(e, der::OCTET_STRING, value);
    });
}

fn signature_algorithm(out: &mut Vec<u8>) {
    // ecdsa-with-SHA256: parameters absent (RFC 5758 §3.2).
    nested(out, der::SEQUENCE, |a| {
        tlv(a, der::OID, OID_ECDSA_WITH_SHA256)
    });
}

fn organization_name(out: &mut Vec<u8>, org: &str) {
    nested(out, der::SEQUENCE, |name| rdn(name, OID_ORGANIZATION, org));
}

/// One RelativeDistinguishedName holding one UTF8String attribute.
fn rdn(out: &mut Vec<u8>, oid: &[u8], value: &str) {
    nested(out, der::SET, |set| {
        nested(set, der::SEQUENCE, |atv| {
            tlv(atv, der::OID, oid);
            tlv(atv, der::UTF8_STRING, value.as_bytes());
        });
    });
}

fn sign(key: &EcKey, tbs: &[u8]) -> Result<Vec<u8>, CaError> {
    let signature = key.sign(tbs)?;
    let mut cert = Vec::with_capacity(tbs.len() + signature.len() + 32);
    nested(&mut cert, der::SEQUENCE, |c| {
        c.extend_from_slice(tbs);
        signature_algorithm(c);
        der::bit_string(c, &signature);
    });
    Ok(cert)
}

/// Subject key identifier: the leftmost 160 bits of the SHA-256 of the subjectPublicKey
/// bits (RFC 7093 §2 method 1). Falls back to hashing the whole SPKI if it can't be split.
pub fn key_identifier(spki_der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let bits = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map(|(_, spki)| spki.subject_public_key.data.to_vec())
        .unwrap_or_else(|_| spki_der.to_vec());
    digest::digest(&digest::SHA256, &bits).as_ref()[..20].to_vec()
}

/// Builds the self-signed root certificate of one authority of `trust_domain`.
///
/// cA=true, keyCertSign + cRLSign (critical), a subject key identifier, the trust
/// domain's SPIFFE ID (no path) as its one URI SAN, no EKU and no name constraints.
pub fn build_ca_cert(
    trust_domain: &TrustDomain,
    authority_id: &str,
    key: &EcKey,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<Vec<u8>, CaError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyIdMethod,
        KeyUsagePurpose, SanType, SerialNumber,
    };
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "writ");
    // The authority id makes each root's subject distinct, so path builders that match
    // issuer names never confuse two generations of one trust domain's CA.
    name.push(
        DnType::CommonName,
        format!("{} {authority_id}", trust_domain.id_string()),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names =
        vec![SanType::URI(trust_domain.id_string().try_into().map_err(
            |_| CaError::Crypto("trust domain is not an IA5 string"),
        )?)];
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(&key.spki_der()));
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| CaError::Crypto("no randomness"))?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params
        .self_signed(key)
        .map_err(|e| CaError::Certificate(e.to_string()))?;
    Ok(cert.der().to_vec())
}
