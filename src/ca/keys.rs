//! Private keys: ECDSA P-256 through ring, PKCS#8 bytes zeroized on drop, never printed.

use super::CaError;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair,
};
use std::fmt;
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

/// An ECDSA P-256 private key.
///
/// The PKCS#8 document is held in a [`Zeroizing`] buffer. ring keeps its own copy of the
/// scalar inside `EcdsaKeyPair`, which it does not promise to wipe; that copy lives as long
/// as this value does and no longer.
pub struct EcKey {
    pkcs8: Zeroizing<Vec<u8>>,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

/// How signatures are encoded: ASN.1 DER for X.509, fixed r||s for JWS (RFC 7518 §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureEncoding {
    /// `ECDSA-Sig-Value` DER, as X.509 signatures are.
    Asn1,
    /// 64 bytes r||s, as JWS ES256 signatures are.
    Fixed,
}

impl SignatureEncoding {
    fn algorithm(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            SignatureEncoding::Asn1 => &ECDSA_P256_SHA256_ASN1_SIGNING,
            SignatureEncoding::Fixed => &ECDSA_P256_SHA256_FIXED_SIGNING,
        }
    }
}

/// DER of the P-256 SubjectPublicKeyInfo prefix (RFC 5480), followed by the 65-byte point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl EcKey {
    /// Generates a new key.
    pub fn generate(encoding: SignatureEncoding) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(encoding.algorithm(), &rng)
            .map_err(|_| CaError::Crypto("key generation failed"))?;
        Self::from_pkcs8(doc.as_ref(), encoding)
    }

    /// Loads a key from its PKCS#8 DER.
    pub fn from_pkcs8(pkcs8: &[u8], encoding: SignatureEncoding) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(encoding.algorithm(), pkcs8, &rng)
            .map_err(|_| CaError::Crypto("not a P-256 PKCS#8 private key"))?;
        Ok(EcKey {
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
            pair,
            rng,
        })
    }

    /// Reads a key file written by [`EcKey::write_new`].
    pub fn read(path: &Path, encoding: SignatureEncoding) -> Result<Self, CaError> {
        let bytes = Zeroizing::new(
            std::fs::read(path).map_err(|e| CaError::Io(format!("read {}", path.display()), e))?,
        );
        Self::from_pkcs8(&bytes, encoding)
    }

    /// Writes the key's PKCS#8 DER to a new file readable only by its owner (0600), and
    /// makes it durable before returning. Refuses to overwrite.
    pub fn write_new(&self, path: &Path) -> Result<(), CaError> {
        write_new_private(path, &self.pkcs8)
    }

    /// The PKCS#8 DER (for the Workload API's `x509_svid_key`, and for key files).
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The uncompressed public point (0x04 || x || y).
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        let mut out = P256_SPKI_PREFIX.to_vec();
        out.extend_from_slice(self.public_point());
        out
    }

    /// Signs `msg` with SHA-256, in the encoding the key was loaded for.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        self.pair
            .sign(&self.rng, msg)
            .map(|sig| sig.as_ref().to_vec())
            .map_err(|_| CaError::Crypto("signing failed"))
    }
}

/// Writes `bytes` to a new file readable only by its owner (0600), durable before this
/// returns. Refuses to overwrite.
pub(crate) fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, e| CaError::Io(format!("{what} {}", path.display()), e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("create", e))?;
    file.write_all(bytes).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("sync", e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync dir of", e))?;
    }
    Ok(())
}

impl fmt::Debug for EcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcKey(P-256, pkcs8: {} bytes)", self.pkcs8.len())
    }
}

/// rcgen signs CA certificates with our key; it never sees the private bytes.
impl rcgen::PublicKeyData for EcKey {
    fn der_bytes(&self) -> &[u8] {
        self.public_point()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for EcKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        EcKey::sign(self, msg).map_err(|_| rcgen::Error::RingUnspecified)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_never_prints_key_material() {
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("bytes"));
        assert!(!shown.contains(&format!("{:?}", &key.pkcs8_der()[..8])));
    }

    #[test]
    fn key_files_are_owner_only_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.der");
        let key = EcKey::generate(SignatureEncoding::Asn1).unwrap();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(key.write_new(&path).is_err());
        let back = EcKey::read(&path, SignatureEncoding::Asn1).unwrap();
        assert_eq!(back.public_point(), key.public_point());
    }

    #[test]
    fn spki_parses_as_p256() {
        let key = EcKey::generate(SignatureEncoding::Fixed).unwrap();
        let spki = key.spki_der();
        let (rest, parsed) =
            <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<
                x509_parser::error::X509Error,
            >>::from_der(&spki)
            .unwrap();
        assert!(rest.is_empty());
        assert_eq!(parsed.subject_public_key.data.as_ref(), key.public_point());
    }
}
