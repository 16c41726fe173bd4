//! Trust bundles (SPIFFE_Trust_Domain_and_Bundle.md §4): concatenated DER for the
//! Workload API and PEM for files, and the SPIFFE JWKS document.

use super::CaError;
use super::jwt::ec_public_jwk;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// One X.509 authority in a bundle: its certificate and public point.
pub struct X509Authority<'a> {
    /// DER of the CA certificate.
    pub cert_der: &'a [u8],
    /// Uncompressed P-256 public point of the CA key.
    pub point: &'a [u8],
}

/// One JWT authority in a bundle.
pub struct JwtAuthority<'a> {
    /// The `kid` tokens name.
    pub kid: &'a str,
    /// Uncompressed P-256 public point.
    pub point: &'a [u8],
}

/// The SPIFFE bundle as JWKS: `x509-svid` keys carry `x5c` with exactly one CA
/// certificate and no `kid`; `jwt-svid` keys carry a `kid`.
pub fn jwks(
    x509: &[X509Authority<'_>],
    jwt: &[JwtAuthority<'_>],
    sequence: u64,
    refresh_hint_secs: u64,
) -> Result<Value, CaError> {
    let mut keys = Vec::with_capacity(x509.len() + jwt.len());
    for authority in x509 {
        let mut jwk = ec_public_jwk(authority.point)?;
        jwk.insert("use".into(), "x509-svid".into());
        jwk.insert("x5c".into(), json!([STANDARD.encode(authority.cert_der)]));
        keys.push(Value::Object(jwk));
    }
    keys.extend(jwt_keys(jwt)?);
    Ok(json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint_secs,
    }))
}

/// Only the `jwt-svid` keys, as the Workload API's FetchJWTBundles serves them.
pub fn jwt_jwks(jwt: &[JwtAuthority<'_>]) -> Result<Value, CaError> {
    Ok(json!({ "keys": jwt_keys(jwt)? }))
}

fn jwt_keys(jwt: &[JwtAuthority<'_>]) -> Result<Vec<Value>, CaError> {
    jwt.iter()
        .map(|authority| {
            let mut jwk = ec_public_jwk(authority.point)?;
            jwk.insert("use".into(), "jwt-svid".into());
            jwk.insert("kid".into(), authority.kid.into());
            Ok(Value::Object(jwk))
        })
        .collect()
}

/// PEM armour for one DER certificate.
pub fn pem_certificate(der: &[u8]) -> String {
    pem("CERTIFICATE", der)
}

/// PEM armour with 64-column lines (RFC 7468 §2).
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
