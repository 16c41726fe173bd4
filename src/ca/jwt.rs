//! JWT-SVIDs (SPIFFE JWT-SVID.md): compact JWS, ES256, header `alg`/`kid`/`typ` only.

use super::CaError;
use super::keys::EcKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use serde_json::{Map, Value, json};
use spiffe::SpiffeId;
use writ_verifier::claims::{JWT_CLAIMS_KEY, WritClaims};

/// Upper bound on one audience value and on their count.
pub const MAX_AUDIENCE_LEN: usize = 512;
/// Upper bound on the number of audiences in one token.
pub const MAX_AUDIENCES: usize = 16;

/// What goes into one JWT-SVID.
pub struct JwtSpec<'a> {
    /// `sub`: the SPIFFE ID.
    pub spiffe_id: &'a SpiffeId,
    /// `aud`: at least one; a single audience is written as a string.
    pub audience: &'a [String],
    /// `iat`, seconds since the epoch.
    pub issued_at: i64,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
    /// writ's private claims.
    pub claims: Option<&'a WritClaims>,
}

/// Checks audiences: at least one, each non-empty and bounded, no more than a few.
pub fn check_audience(audience: &[String]) -> Result<(), CaError> {
    if audience.is_empty() {
        return Err(CaError::BadRequest("audience is required".into()));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(CaError::BadRequest(format!(
            "at most {MAX_AUDIENCES} audiences"
        )));
    }
    if audience
        .iter()
        .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
    {
        return Err(CaError::BadRequest(format!(
            "each audience must be 1 to {MAX_AUDIENCE_LEN} bytes"
        )));
    }
    Ok(())
}

/// Signs a JWT-SVID with `key` (loaded with fixed r||s encoding), published as `kid`.
pub fn sign_jwt(key: &EcKey, kid: &str, spec: &JwtSpec<'_>) -> Result<String, CaError> {
    check_audience(spec.audience)?;
    let header = json!({ "alg": "ES256", "kid": kid, "typ": "JWT" });
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(spec.spiffe_id.to_string()));
    let aud = match spec.audience {
        [one] => Value::String(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::String).collect()),
    };
    claims.insert("aud".into(), aud);
    claims.insert("exp".into(), spec.expires_at.into());
    claims.insert("iat".into(), spec.issued_at.into());
    if let Some(writ) = spec.claims {
        claims.insert(JWT_CLAIMS_KEY.into(), writ.to_json()?);
    }
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string()));
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(token)
}

/// The public JWK members of a P-256 key (`kty`, `crv`, `x`, `y`).
pub fn ec_public_jwk(point: &[u8]) -> Result<Map<String, Value>, CaError> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(CaError::BadKey("not an uncompressed P-256 point".into()));
    }
    let mut jwk = Map::new();
    jwk.insert("kty".into(), "EC".into());
    jwk.insert("crv".into(), "P-256".into());
    jwk.insert("x".into(), URL_SAFE_NO_PAD.encode(&point[1..33]).into());
    jwk.insert("y".into(), URL_SAFE_NO_PAD.encode(&point[33..65]).into());
    Ok(jwk)
}

/// RFC 7638 JWK thumbprint of a P-256 public key: a stable, collision-resistant `kid`.
pub fn key_id(point: &[u8]) -> Result<String, CaError> {
    let jwk = ec_public_jwk(point)?;
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
        jwk["x"], jwk["y"]
    );
    Ok(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ca::keys::SignatureEncoding;

    #[test]
    fn header_has_only_alg_kid_typ() {
        let key = EcKey::generate(SignatureEncoding::Fixed).unwrap();
        let id = SpiffeId::new("spiffe://example.org/a").unwrap();
        let token = sign_jwt(
            &key,
            "k1",
            &JwtSpec {
                spiffe_id: &id,
                audience: &["svc".into()],
                issued_at: 1,
                expires_at: 2,
                claims: None,
            },
        )
        .unwrap();
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        let keys: Vec<_> = header.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["alg", "kid", "typ"]);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(token.split('.').count(), 3);
    }

    #[test]
    fn audience_is_required_and_bounded() {
        assert!(check_audience(&[]).is_err());
        assert!(check_audience(&["".into()]).is_err());
        assert!(check_audience(&vec!["a".into(); MAX_AUDIENCES + 1]).is_err());
        assert!(check_audience(&["a".into()]).is_ok());
    }

    #[test]
    fn thumbprint_matches_rfc7638_example_shape() {
        let key = EcKey::generate(SignatureEncoding::Fixed).unwrap();
        let kid = key_id(key.public_point()).unwrap();
        assert_eq!(kid.len(), 43); // 32 bytes, base64url without padding
        assert_eq!(kid, key_id(key.public_point()).unwrap());
    }
}
