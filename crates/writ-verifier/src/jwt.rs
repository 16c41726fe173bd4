//! JWT-SVID validation (SPIFFE JWT-SVID.md §3, §5): compact JWS, ES256 against the
//! JWKS bundle of the token's own trust domain, `aud` containing the audience, `exp` in
//! the future.
//!
//! Only ES256 is accepted: writ issues nothing else, and a narrower set is a smaller
//! attack surface (`none` and HS* are never accepted).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde_json::{Map, Value};
use spiffe::SpiffeId;

/// Upper bound on a token's length.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a JWT-SVID was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtSvidError {
    /// Not three base64url parts of JSON, or too long.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not ES256.
    #[error("unsupported alg {0:?} (only ES256)")]
    Algorithm(String),
    /// The header has members other than alg, kid, typ, or typ is not JWT/JOSE.
    #[error("invalid header: {0}")]
    Header(&'static str),
    /// `sub` missing or not a SPIFFE ID with a path.
    #[error("invalid sub: {0}")]
    Subject(String),
    /// No key with this `kid` in the bundle of the token's trust domain.
    #[error("no key {kid:?} in the bundle of trust domain {trust_domain}")]
    UnknownKey {
        /// The token's kid.
        kid: String,
        /// The trust domain of `sub`.
        trust_domain: String,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    Signature,
    /// `exp` missing or past.
    #[error("token expired or without exp")]
    Expired,
    /// `aud` missing or not containing the audience.
    #[error("audience {0:?} not in aud")]
    Audience(String),
}

/// A validated token: its SPIFFE ID and every claim.
#[derive(Clone, Debug)]
pub struct ValidatedJwt {
    /// `sub`.
    pub spiffe_id: SpiffeId,
    /// All claims, SPIFFE's and writ's.
    pub claims: Map<String, Value>,
}

fn decode_json(part: &str) -> Result<Map<String, Value>, JwtSvidError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtSvidError::Malformed("not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtSvidError::Malformed("not a JSON object")),
    }
}

/// Validates `token` for `audience` at `now` (seconds since the epoch). `key` finds the
/// uncompressed P-256 point for (trust domain name, kid) in the bundle of that trust
/// domain only.
pub fn validate_jwt_svid<'k>(
    token: &str,
    audience: &str,
    now: i64,
    key: impl Fn(&str, &str) -> Option<&'k [u8]>,
) -> Result<ValidatedJwt, JwtSvidError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtSvidError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtSvidError::Malformed("not a compact JWS"));
    };
    let header = decode_json(h)?;
    match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => {}
        Some(other) => return Err(JwtSvidError::Algorithm(other.chars().take(16).collect())),
        None => return Err(JwtSvidError::Header("alg missing")),
    }
    if header
        .keys()
        .any(|k| !matches!(k.as_str(), "alg" | "kid" | "typ"))
    {
        return Err(JwtSvidError::Header("only alg, kid and typ are allowed"));
    }
    if let Some(typ) = header.get("typ")
        && !matches!(typ.as_str(), Some("JWT" | "JOSE"))
    {
        return Err(JwtSvidError::Header("typ must be JWT or JOSE"));
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(JwtSvidError::Header("kid missing"))?;
    let claims = decode_json(p)?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtSvidError::Subject("missing".into()))?;
    let spiffe_id =
        crate::id::parse_spiffe_id(sub).map_err(|e| JwtSvidError::Subject(e.to_string()))?;
    if spiffe_id.path().is_empty() {
        return Err(JwtSvidError::Subject("no path".into()));
    }
    let trust_domain = spiffe_id.trust_domain_name().to_owned();
    let point = key(&trust_domain, kid).ok_or_else(|| JwtSvidError::UnknownKey {
        kid: kid.chars().take(64).collect(),
        trust_domain,
    })?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtSvidError::Malformed("signature not base64url"))?;
    let signed = &token[..h.len() + 1 + p.len()];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| JwtSvidError::Signature)?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(JwtSvidError::Expired)?;
    if exp <= now {
        return Err(JwtSvidError::Expired);
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(one)) => one == audience,
        Some(Value::Array(many)) => many.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(JwtSvidError::Audience(audience.chars().take(64).collect()));
    }
    Ok(ValidatedJwt { spiffe_id, claims })
}
