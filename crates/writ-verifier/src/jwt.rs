//! JWT-SVID validation (SPIFFE JWT-SVID.md §3, §5): compact JWS, ES256 against the
//! JWKS bundle of the token's own trust domain, `aud` containing the audience, `exp` in
//! the future.
//!
//! Only ES256 is accepted: writ issues nothing else, and a narrower set is a smaller
//! attack surface (`none` and HS* are never accepted).

use crate::authz::{Authorizer, DenyReason, Peer};
use crate::revocation::RevocationSnapshot;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde_json::{Map, Value};
use spiffe::SpiffeId;
use std::collections::HashMap;

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
    /// The `kid` of the key that signed it: a tainted authority's is refused.
    pub kid: String,
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
    Ok(ValidatedJwt {
        spiffe_id,
        claims,
        kid: kid.to_owned(),
    })
}

/// The JWT keys of several trust domains: trust domain name → kid → uncompressed P-256
/// point. Bundles of different trust domains stay apart: a key is only ever looked up in
/// the trust domain of the token's `sub`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwtKeys {
    by_trust_domain: HashMap<String, HashMap<String, Vec<u8>>>,
}

impl JwtKeys {
    /// No keys.
    pub fn new() -> Self {
        JwtKeys::default()
    }

    /// Replaces the keys of `trust_domain` with the `use: jwt-svid` P-256 keys of the
    /// SPIFFE bundle `jwks` (JSON). Keys of other types are skipped: writ signs ES256
    /// only. Fails on JSON that is not a JWKS.
    pub fn insert_jwks(&mut self, trust_domain: &str, jwks: &[u8]) -> Result<usize, JwtSvidError> {
        let value: Value =
            serde_json::from_slice(jwks).map_err(|_| JwtSvidError::Malformed("JWKS not JSON"))?;
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwtSvidError::Malformed("JWKS without keys"))?;
        let mut out = HashMap::new();
        for key in keys {
            if let Some((kid, point)) = p256_key(key) {
                out.insert(kid, point);
            }
        }
        let n = out.len();
        self.by_trust_domain.insert(trust_domain.to_owned(), out);
        Ok(n)
    }

    /// The point for (`trust_domain`, `kid`).
    pub fn key(&self, trust_domain: &str, kid: &str) -> Option<&[u8]> {
        self.by_trust_domain
            .get(trust_domain)?
            .get(kid)
            .map(Vec::as_slice)
    }
}

fn p256_key(key: &Value) -> Option<(String, Vec<u8>)> {
    let text = |name: &str| key.get(name).and_then(Value::as_str);
    if text("kty")? != "EC" || text("crv")? != "P-256" {
        return None;
    }
    if text("use").is_some_and(|u| u != "jwt-svid") {
        return None;
    }
    let x = URL_SAFE_NO_PAD.decode(text("x")?).ok()?;
    let y = URL_SAFE_NO_PAD.decode(text("y")?).ok()?;
    if x.len() != 32 || y.len() != 32 {
        return None;
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Some((text("kid")?.to_owned(), point))
}

/// Why [`authorize_jwt_svid`] refused a token.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum JwtRefused {
    /// The token is not a valid JWT-SVID for the audience (signature, `aud`, `exp` …).
    #[error(transparent)]
    Invalid(#[from] JwtSvidError),
    /// writ's private claim is present but unreadable.
    #[error("writ claims: {0}")]
    Claims(String),
    /// Valid, but the authorizer refused it.
    #[error("refused: {0}")]
    Denied(#[from] DenyReason),
}

/// Validates `token` for `audience` against `keys` (JWT-SVID.md), then decides with
/// `authorizer` against `revocations`: the same decision an X.509-SVID of the same
/// identity gets at the TLS handshake.
pub fn authorize_jwt_svid(
    token: &str,
    audience: &str,
    keys: &JwtKeys,
    authorizer: &Authorizer,
    revocations: &RevocationSnapshot,
    now: i64,
) -> Result<Peer, JwtRefused> {
    let validated = validate_jwt_svid(token, audience, now, |td, kid| keys.key(td, kid))?;
    authorize_validated_jwt(&validated, authorizer, revocations, now)
}

/// The second half of [`authorize_jwt_svid`], for a caller that validated the token
/// itself with [`validate_jwt_svid`] because it keeps its keys elsewhere or needs every
/// claim afterwards (the writ agent's `ValidateJWTSVID`): reads writ's claims and decides
/// with `authorizer` against `revocations`.
pub fn authorize_validated_jwt(
    validated: &ValidatedJwt,
    authorizer: &Authorizer,
    revocations: &RevocationSnapshot,
    now: i64,
) -> Result<Peer, JwtRefused> {
    let peer = Peer::from_jwt(validated).map_err(|e| JwtRefused::Claims(e.to_string()))?;
    authorizer.decide(&peer, revocations, now).into_result()?;
    Ok(peer)
}
