//! JWT-SVIDs (SPIFFE JWT-SVID.md) minted through the crate API, validated by the `spiffe`
//! crate's offline verifier against a bundle built from the CA's own JWKS; forged,
//! tampered, expired and cross-band tokens refused; and the SPIFFE bundle's JWKS shape
//! (SPIFFE_Trust_Domain_and_Bundle.md §4).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{Fixture, parse_cert};
use serde_json::{Value, json};
use spiffe::{JwtBundle, JwtBundleSet, JwtSvid, JwtSvidError, JwtVerificationErrorKind};
use std::time::Duration;
use writ::Band;
use writ::ca::{AuthorityState, CaConfig, SvidRequest};
use writ_verifier::WritClaims;
use writ_verifier::claims::JWT_CLAIMS_KEY;

const AUDIENCE: &str = "https://logs.example.org";

fn trust_domain(band: Band) -> spiffe::TrustDomain {
    spiffe::TrustDomain::new(band.trust_domain_name(common::BASE)).expect("trust domain")
}

/// The band's JWT bundle, as a relying party builds it from FetchJWTBundles' JWKS.
fn jwt_bundle(fx: &Fixture, band: Band) -> JwtBundle {
    let jwks = fx.cas.ca(band).jwt_jwks().expect("jwt jwks");
    JwtBundle::from_jwt_authorities(trust_domain(band), jwks.to_string().as_bytes())
        .expect("spiffe crate parses writ's JWT JWKS")
}

fn bundle_set(bundles: impl IntoIterator<Item = JwtBundle>) -> JwtBundleSet {
    bundles.into_iter().collect()
}

/// Every band's bundle, each under its own trust domain.
fn all_bundles(fx: &Fixture) -> JwtBundleSet {
    bundle_set(Band::ALL.into_iter().map(|b| jwt_bundle(fx, b)))
}

fn mint(fx: &Fixture, band: Band, request: &SvidRequest, audience: &[&str]) -> String {
    let audience: Vec<String> = audience.iter().map(|a| (*a).to_owned()).collect();
    fx.cas
        .mint_jwt(band, request, &audience)
        .unwrap_or_else(|e| panic!("minting a JWT for {}: {e}", request.spiffe_id))
        .token
}

fn active_kid(fx: &Fixture, band: Band) -> String {
    fx.cas
        .ca(band)
        .authorities()
        .into_iter()
        .find(|a| a.state == AuthorityState::Active)
        .expect("active authority")
        .jwt_kid
}

fn part(token: &str, index: usize) -> Value {
    let segment = token.split('.').nth(index).expect("segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).expect("base64url")).expect("json")
}

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// `token` with its header replaced by `header` (signature kept).
fn with_header(token: &str, header: &Value) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[0] = encode(header);
    parts.join(".")
}

fn validate(token: &str, bundles: &JwtBundleSet, audience: &str) -> Result<JwtSvid, JwtSvidError> {
    JwtSvid::parse_and_validate(token, bundles, &[audience])
}

fn verification_kind(err: &JwtSvidError) -> Option<JwtVerificationErrorKind> {
    match err {
        JwtSvidError::InvalidToken(inner) => Some(inner.kind()),
        _ => None,
    }
}

#[test]
fn jwt_svids_of_every_band_validate_with_the_spiffe_crate() {
    let fx = Fixture::new();
    let bundles = all_bundles(&fx);
    for (band, request) in [
        (Band::Investigative, common::investigative_request()),
        (Band::Remediation, common::remediation_request()),
        (Band::Base, common::base_request()),
    ] {
        let now = fx.now();
        let minted = fx
            .cas
            .mint_jwt(band, &request, &[AUDIENCE.to_owned()])
            .expect("mint");
        let svid = validate(&minted.token, &bundles, AUDIENCE)
            .unwrap_or_else(|e| panic!("{band}: spiffe crate refused writ's JWT-SVID: {e}"));

        // sub, aud, exp, kid as the spiffe crate reads them.
        assert_eq!(svid.spiffe_id(), &request.spiffe_id, "{band}: sub");
        assert_eq!(svid.claims().sub(), request.spiffe_id.to_string());
        assert_eq!(svid.audience(), [AUDIENCE], "{band}: aud");
        let ttl = request.ttl.unwrap_or(CaConfig::default().jwt_svid_ttl);
        assert_eq!(minted.expires_at, now + ttl.as_secs() as i64, "{band}: exp");
        assert_eq!(svid.claims().exp(), minted.expires_at, "{band}: exp");
        assert_eq!(svid.expiry().unix_timestamp(), minted.expires_at);
        assert_eq!(svid.key_id(), active_kid(&fx, band), "{band}: kid");

        // The raw JOSE header and payload.
        let header = part(&minted.token, 0);
        let mut header_keys: Vec<&str> = header
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        header_keys.sort_unstable();
        assert_eq!(header_keys, ["alg", "kid", "typ"], "{band}: header");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        let payload = part(&minted.token, 1);
        assert_eq!(payload["iat"], now, "{band}: iat");
        assert_eq!(
            payload["aud"], AUDIENCE,
            "{band}: a single audience is a string"
        );

        // writ's private claim round-trips exactly.
        let claims = payload
            .get(JWT_CLAIMS_KEY)
            .map(|v| WritClaims::from_json(v).expect("claims parse"));
        assert_eq!(claims, request.claims, "{band}: writ claims");
    }
}

#[test]
fn several_audiences_are_an_array_and_each_validates() {
    let fx = Fixture::new();
    let bundles = all_bundles(&fx);
    let request = common::investigative_request();
    let token = mint(&fx, Band::Investigative, &request, &["svc-a", "svc-b"]);
    assert_eq!(part(&token, 1)["aud"], json!(["svc-a", "svc-b"]));
    for aud in ["svc-a", "svc-b"] {
        let svid = validate(&token, &bundles, aud).expect("validates");
        assert_eq!(svid.audience(), ["svc-a", "svc-b"]);
    }
    assert!(validate(&token, &bundles, "svc-c").is_err());
}

#[test]
fn wrong_audience_is_rejected() {
    let fx = Fixture::new();
    let token = mint(
        &fx,
        Band::Investigative,
        &common::investigative_request(),
        &[AUDIENCE],
    );
    let err = validate(&token, &all_bundles(&fx), "https://metrics.example.org")
        .expect_err("accepted for another audience");
    assert_eq!(
        verification_kind(&err),
        Some(JwtVerificationErrorKind::AudienceMismatch),
        "{err}"
    );
}

#[test]
fn expired_token_is_rejected() {
    // Minted two hours ago with a five-minute TTL.
    let fx = Fixture::with(CaConfig::default(), common::system_now() - 7200);
    let request = common::investigative_request();
    let minted = fx
        .cas
        .mint_jwt(Band::Investigative, &request, &[AUDIENCE.to_owned()])
        .expect("mint");
    assert!(minted.expires_at < common::system_now());
    let err = validate(&minted.token, &all_bundles(&fx), AUDIENCE).expect_err("expired accepted");
    assert_eq!(
        verification_kind(&err),
        Some(JwtVerificationErrorKind::Expired),
        "{err}"
    );
}

#[test]
fn exp_is_clamped_to_the_authority_not_after() {
    let config = CaConfig {
        ca_ttl: Duration::from_secs(6 * 3600),
        max_svid_ttl: Duration::from_secs(3600),
        ..CaConfig::default()
    };
    let fx = Fixture::with(config, common::system_now());
    fx.advance(Duration::from_secs(6 * 3600 - 600));
    let authority_end = fx.cas.ca(Band::Investigative).authorities()[0].not_after;
    let mut request = common::investigative_request();
    request.ttl = Some(Duration::from_secs(3600));
    let minted = fx
        .cas
        .mint_jwt(Band::Investigative, &request, &[AUDIENCE.to_owned()])
        .expect("mint");
    assert!(
        authority_end < fx.now() + 3600,
        "setup: the CA must end first"
    );
    assert_eq!(minted.expires_at, authority_end);
    assert_eq!(part(&minted.token, 1)["exp"], authority_end);
}

#[test]
fn no_token_is_minted_once_the_authority_has_expired() {
    // As for X.509: an expired authority (rotation failed or did not run) signs nothing;
    // the caller hears "no authority", not an already-expired token.
    let config = CaConfig {
        ca_ttl: Duration::from_secs(6 * 3600),
        max_svid_ttl: Duration::from_secs(3600),
        ..CaConfig::default()
    };
    let fx = Fixture::with(config, common::system_now());
    fx.advance(Duration::from_secs(6 * 3600 + 1));
    let err = fx
        .cas
        .mint_jwt(
            Band::Investigative,
            &common::investigative_request(),
            &[AUDIENCE.to_owned()],
        )
        .expect_err("signed with an expired authority");
    assert!(matches!(err, writ::ca::CaError::NoAuthority(_)), "{err}");
}

#[test]
fn header_alg_none_and_hmac_are_rejected() {
    let fx = Fixture::new();
    let token = mint(
        &fx,
        Band::Investigative,
        &common::investigative_request(),
        &[AUDIENCE],
    );
    let kid = active_kid(&fx, Band::Investigative);
    let bundles = all_bundles(&fx);
    for alg in ["none", "None", "HS256", "HS512"] {
        let forged = with_header(&token, &json!({ "alg": alg, "kid": kid, "typ": "JWT" }));
        let err =
            validate(&forged, &bundles, AUDIENCE).expect_err(&format!("alg {alg} was accepted"));
        assert!(
            matches!(err, JwtSvidError::UnsupportedAlgorithm),
            "{alg}: {err}"
        );
    }
    // The classic unsigned form: alg none and an empty signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    let header = encode(&json!({ "alg": "none", "kid": kid, "typ": "JWT" }));
    parts[0] = &header;
    parts[2] = "";
    let unsigned = parts.join(".");
    assert!(validate(&unsigned, &bundles, AUDIENCE).is_err());
}

#[test]
fn header_without_kid_is_rejected() {
    let fx = Fixture::new();
    let token = mint(
        &fx,
        Band::Investigative,
        &common::investigative_request(),
        &[AUDIENCE],
    );
    let forged = with_header(&token, &json!({ "alg": "ES256", "typ": "JWT" }));
    let err = validate(&forged, &all_bundles(&fx), AUDIENCE).expect_err("no kid accepted");
    assert!(matches!(err, JwtSvidError::MissingKeyId), "{err}");
}

#[test]
fn unknown_kid_is_rejected() {
    let fx = Fixture::new();
    let token = mint(
        &fx,
        Band::Investigative,
        &common::investigative_request(),
        &[AUDIENCE],
    );
    let forged = with_header(
        &token,
        &json!({ "alg": "ES256", "kid": "no-such-key", "typ": "JWT" }),
    );
    let err = validate(&forged, &all_bundles(&fx), AUDIENCE).expect_err("unknown kid accepted");
    assert!(matches!(err, JwtSvidError::AuthorityNotFound(_)), "{err}");
}

/// One way to alter a token's payload.
type Tamper = fn(&mut Value);

#[test]
fn tampered_payload_is_rejected() {
    let fx = Fixture::new();
    let bundles = all_bundles(&fx);
    let token = mint(
        &fx,
        Band::Investigative,
        &common::investigative_request(),
        &[AUDIENCE],
    );
    let original = part(&token, 1);
    let tamperings: [(&str, Tamper); 3] = [
        ("another identity in the same trust domain", |p| {
            p["sub"] = json!("spiffe://investigate.example.org/agent/admin");
        }),
        ("a longer life", |p| {
            p["exp"] = json!(p["exp"].as_i64().unwrap() + 3600);
        }),
        ("wider scopes in writ's claims", |p| {
            p[JWT_CLAIMS_KEY]["scopes"] = json!(["*"]);
        }),
    ];
    for (what, tamper) in tamperings {
        let mut payload = original.clone();
        tamper(&mut payload);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = encode(&payload);
        let forged = parts.join(".");
        let err = validate(&forged, &bundles, AUDIENCE)
            .expect_err(&format!("tampered payload ({what}) accepted"));
        assert_eq!(
            verification_kind(&err),
            Some(JwtVerificationErrorKind::InvalidSignature),
            "{what}: {err}"
        );
    }
}

#[test]
fn tampered_signature_is_rejected() {
    let fx = Fixture::new();
    let bundles = all_bundles(&fx);
    let token = mint(
        &fx,
        Band::Investigative,
        &common::investigative_request(),
        &[AUDIENCE],
    );
    let parts: Vec<&str> = token.split('.').collect();
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("base64url");
    assert_eq!(signature.len(), 64, "ES256 signatures are r||s");
    for index in [0, 31, 32, 63] {
        let mut bad = signature.clone();
        bad[index] ^= 0x01;
        let forged = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&bad));
        let err = validate(&forged, &bundles, AUDIENCE)
            .expect_err(&format!("signature with byte {index} flipped accepted"));
        assert!(
            matches!(err, JwtSvidError::InvalidToken(_)),
            "byte {index}: {err}"
        );
    }
    // And the untouched token still validates, so the refusals above are about the bytes.
    validate(&token, &bundles, AUDIENCE).expect("original validates");
}

#[test]
fn a_token_never_validates_against_another_bands_bundle() {
    let fx = Fixture::new();
    for (band, request) in [
        (Band::Investigative, common::investigative_request()),
        (Band::Remediation, common::remediation_request()),
        (Band::Base, common::base_request()),
    ] {
        let token = mint(&fx, band, &request, &[AUDIENCE]);
        let kid = active_kid(&fx, band);
        for other in Band::ALL.into_iter().filter(|b| *b != band) {
            let label = format!("{band} token vs {other} bundle");
            // Only the other band's bundle, under its own trust domain: nothing to check
            // the token against.
            let only_other = bundle_set([jwt_bundle(&fx, other)]);
            let err =
                validate(&token, &only_other, AUDIENCE).expect_err(&format!("{label}: accepted"));
            assert!(
                matches!(err, JwtSvidError::BundleNotFound(_)),
                "{label}: {err}"
            );

            // The other band's keys mislabeled as this band's bundle: no such kid.
            let other_jwks = fx.cas.ca(other).jwt_jwks().unwrap();
            let mislabeled = JwtBundle::from_jwt_authorities(
                trust_domain(band),
                other_jwks.to_string().as_bytes(),
            )
            .unwrap();
            let err = validate(&token, &bundle_set([mislabeled]), AUDIENCE)
                .expect_err(&format!("{label} (mislabeled): accepted"));
            assert!(
                matches!(err, JwtSvidError::AuthorityNotFound(_)),
                "{label}: {err}"
            );

            // Even with the kid rewritten to match, the other band's key cannot verify
            // this band's signature.
            let mut key = other_jwks["keys"][0].clone();
            key["kid"] = json!(kid);
            let impostor = JwtBundle::from_jwt_authorities(
                trust_domain(band),
                json!({ "keys": [key] }).to_string().as_bytes(),
            )
            .unwrap();
            let err = validate(&token, &bundle_set([impostor]), AUDIENCE)
                .expect_err(&format!("{label} (kid rewritten): accepted"));
            assert_eq!(
                verification_kind(&err),
                Some(JwtVerificationErrorKind::InvalidSignature),
                "{label}: {err}"
            );
        }
    }
}

#[test]
fn tokens_signed_before_a_rotation_still_validate_after_it() {
    let fx = Fixture::new();
    let band = Band::Investigative;
    let request = common::investigative_request();
    let old = mint(&fx, band, &request, &[AUDIENCE]);
    let ca = fx.cas.ca(band);
    ca.prepare(fx.now()).unwrap();
    ca.activate(fx.now()).unwrap();
    let new = mint(&fx, band, &request, &[AUDIENCE]);
    assert_ne!(part(&old, 0)["kid"], part(&new, 0)["kid"], "new key signs");
    let bundles = all_bundles(&fx);
    validate(&old, &bundles, AUDIENCE).expect("old token after rotation");
    validate(&new, &bundles, AUDIENCE).expect("new token after rotation");
}

// ---------------------------------------------------------------------------------------
// The SPIFFE bundle as JWKS
// ---------------------------------------------------------------------------------------

fn keys_with_use<'a>(jwks: &'a Value, use_: &str) -> Vec<&'a Value> {
    jwks["keys"]
        .as_array()
        .expect("keys is an array")
        .iter()
        .filter(|k| k["use"] == use_)
        .collect()
}

fn assert_bundle_shape(fx: &Fixture, band: Band) {
    let ca = fx.cas.ca(band);
    let jwks = ca.jwks().expect("jwks");
    let authorities = ca.authorities();
    let all = jwks["keys"].as_array().expect("keys");
    assert_eq!(
        all.len(),
        2 * authorities.len(),
        "{band}: one X.509 + one JWT key per authority"
    );

    let x509 = keys_with_use(&jwks, "x509-svid");
    assert_eq!(x509.len(), authorities.len(), "{band}");
    let bundle = ca.x509_bundle();
    for key in x509 {
        assert!(key.get("kid").is_none(), "{band}: x509-svid key has a kid");
        let x5c = key["x5c"].as_array().expect("x5c array");
        assert_eq!(
            x5c.len(),
            1,
            "{band}: x5c must hold exactly one certificate"
        );
        let der = STANDARD
            .decode(x5c[0].as_str().unwrap())
            .expect("x5c is base64");
        assert!(
            bundle.contains(&der),
            "{band}: x5c cert not in the X.509 bundle"
        );
        // The JWK's public key is the certificate's.
        let cert = parse_cert(&der);
        let point = cert.public_key().subject_public_key.data.to_vec();
        let mut from_jwk = vec![0x04];
        from_jwk.extend(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap());
        from_jwk.extend(URL_SAFE_NO_PAD.decode(key["y"].as_str().unwrap()).unwrap());
        assert_eq!(
            point, from_jwk,
            "{band}: x/y do not match the x5c certificate"
        );
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
    }

    let jwt = keys_with_use(&jwks, "jwt-svid");
    assert_eq!(jwt.len(), authorities.len(), "{band}");
    let mut kids: Vec<&str> = jwt
        .iter()
        .map(|k| k["kid"].as_str().expect("jwt-svid key has a kid"))
        .collect();
    kids.sort_unstable();
    let mut expected: Vec<&str> = authorities.iter().map(|a| a.jwt_kid.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(kids, expected, "{band}: kids");
    for key in jwt {
        assert!(key.get("x5c").is_none(), "{band}: jwt-svid key has x5c");
    }

    assert!(jwks["spiffe_sequence"].is_u64(), "{band}: spiffe_sequence");
    assert_eq!(jwks["spiffe_sequence"], ca.sequence());
    assert_eq!(
        jwks["spiffe_refresh_hint"],
        CaConfig::default().refresh_hint.as_secs(),
        "{band}: spiffe_refresh_hint in seconds"
    );

    // FetchJWTBundles' form: only the JWT keys.
    let jwt_only = ca.jwt_jwks().expect("jwt jwks");
    let jwt_keys = jwt_only["keys"].as_array().unwrap();
    assert_eq!(jwt_keys.len(), authorities.len());
    assert!(
        jwt_keys
            .iter()
            .all(|k| k["use"] == "jwt-svid" && k.get("kid").is_some())
    );
}

#[test]
fn jwks_bundle_has_the_spiffe_shape() {
    let fx = Fixture::new();
    for band in Band::ALL {
        assert_bundle_shape(&fx, band);
    }
}

#[test]
fn jwks_sequence_increases_on_every_change_and_keys_follow_rotation() {
    let fx = Fixture::new();
    let ca = fx.cas.ca(Band::Remediation);
    let seq =
        |ca: &writ::ca::TrustDomainCa| ca.jwks().unwrap()["spiffe_sequence"].as_u64().unwrap();
    let s0 = seq(ca);
    ca.prepare(fx.now()).expect("prepare");
    let s1 = seq(ca);
    assert!(s1 > s0, "prepare did not bump the sequence ({s0} -> {s1})");
    assert_eq!(ca.jwks().unwrap()["keys"].as_array().unwrap().len(), 4);
    assert_bundle_shape(&fx, Band::Remediation);
    ca.activate(fx.now()).expect("activate");
    let s2 = seq(ca);
    assert!(s2 > s1, "activate did not bump the sequence ({s1} -> {s2})");
    assert_bundle_shape(&fx, Band::Remediation);
    // Other bands are untouched: bundles are per trust domain.
    assert_eq!(fx.cas.ca(Band::Investigative).authorities().len(), 1);
}

#[test]
fn bundles_of_different_bands_share_no_keys() {
    let fx = Fixture::new();
    let mut seen = std::collections::HashSet::new();
    for band in Band::ALL {
        for key in fx.cas.ca(band).jwks().unwrap()["keys"].as_array().unwrap() {
            let id = (key["x"].clone(), key["y"].clone());
            assert!(
                seen.insert(id),
                "{band}: a key appears in two bands' bundles"
            );
        }
    }
    assert_eq!(seen.len(), 6);
}

#[test]
fn bundle_and_keys_survive_reopening_the_ca_set() {
    let fx = Fixture::new();
    let before: Vec<Value> = Band::ALL
        .iter()
        .map(|b| fx.cas.ca(*b).jwks().unwrap())
        .collect();
    let token = mint(
        &fx,
        Band::Investigative,
        &common::investigative_request(),
        &[AUDIENCE],
    );
    let reopened = writ::ca::CaSet::open(
        spiffe::TrustDomain::new(common::BASE).unwrap(),
        &[],
        &fx.dir.path().join("keys"),
        std::sync::Arc::clone(&fx.store),
        CaConfig::default(),
        std::sync::Arc::new(fx.clock.clone()),
    )
    .expect("reopen");
    let after: Vec<Value> = Band::ALL
        .iter()
        .map(|b| reopened.ca(*b).jwks().unwrap())
        .collect();
    assert_eq!(before, after, "reopening changed a bundle");
    // A token from before the reopen validates against the reopened bundle.
    let jwks = reopened.ca(Band::Investigative).jwt_jwks().unwrap();
    let bundle = JwtBundle::from_jwt_authorities(
        trust_domain(Band::Investigative),
        jwks.to_string().as_bytes(),
    )
    .unwrap();
    validate(&token, &bundle_set([bundle]), AUDIENCE).expect("validates after reopen");
}
