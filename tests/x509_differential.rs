//! Differential checks of minted X.509-SVIDs: every SVID writ mints is re-checked by
//! independent implementations — rustls-webpki (directly and through writ-verifier),
//! x509-parser, the `spiffe` crate's parser and `openssl verify -x509_strict` — and its
//! private key is shown to match its certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Fixture, openssl_verify, parse_cert};
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::time::Duration;
use writ::ca::{AuthorityState, MintedX509, SvidRequest};
use writ::{Band, WritClaims};
use writ_verifier::{Usage, X509SvidError, verify_x509_svid};

fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(secs).expect("after 1970"),
    ))
}

fn ders(certs: &[Vec<u8>]) -> Vec<CertificateDer<'_>> {
    certs
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect()
}

/// rustls-webpki path validation of `leaf` to `bundle`, for one EKU.
fn webpki_verify(
    leaf: &[u8],
    bundle: &[Vec<u8>],
    now: i64,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let bundle = ders(bundle);
    let anchors: Vec<_> = bundle
        .iter()
        .map(|ca| webpki::anchor_from_trusted_cert(ca).expect("CA certificate is a trust anchor"))
        .collect();
    let leaf = CertificateDer::from(leaf);
    let end_entity = webpki::EndEntityCert::try_from(&leaf)?;
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            unix_time(now),
            usage,
            None,
            None,
        )
        .map(|_| ())
}

fn trust_domain(band: Band) -> spiffe::TrustDomain {
    spiffe::TrustDomain::new(band.trust_domain_name(common::BASE)).expect("band trust domain")
}

/// Every independent check an SVID of `band` must pass against `bundle`.
fn assert_accepted_everywhere(
    fx: &Fixture,
    name: &str,
    band: Band,
    request: &SvidRequest,
    minted: &MintedX509,
    key_pkcs8: &[u8],
    bundle: &[Vec<u8>],
) {
    let now = fx.now();
    let leaf = &minted.cert_der;

    // (a) rustls-webpki, directly, for both TLS roles.
    webpki_verify(leaf, bundle, now, webpki::KeyUsage::server_auth())
        .unwrap_or_else(|e| panic!("{name}: webpki (serverAuth) refused: {e:?}"));
    webpki_verify(leaf, bundle, now, webpki::KeyUsage::client_auth())
        .unwrap_or_else(|e| panic!("{name}: webpki (clientAuth) refused: {e:?}"));

    // (a') writ-verifier, which adds the SPIFFE rules and reads the claims back.
    for usage in [Usage::Client, Usage::Server] {
        let verified = verify_x509_svid(
            &[CertificateDer::from(leaf.as_slice())],
            &ders(bundle),
            &trust_domain(band),
            usage,
            unix_time(now),
        )
        .unwrap_or_else(|e| panic!("{name}: writ-verifier ({usage:?}) refused: {e}"));
        assert_eq!(verified.spiffe_id, request.spiffe_id, "{name}");
        assert_eq!(verified.claims, request.claims, "{name}: claims round-trip");
        assert_eq!(hex(&verified.serial), minted.serial, "{name}: serial");
        assert_eq!(verified.not_after, minted.not_after, "{name}: notAfter");
    }

    // (b) x509-parser: structure, SAN, serial, validity, and the signature under the
    // issuing CA's key.
    let cert = parse_cert(leaf);
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [request.spiffe_id.to_string()], "{name}: URI SANs");
    assert_eq!(cert.raw_serial_as_string().replace(':', ""), minted.serial);
    assert_eq!(cert.validity().not_before.timestamp(), minted.not_before);
    assert_eq!(cert.validity().not_after.timestamp(), minted.not_after);
    let issuer = bundle
        .iter()
        .map(|ca| parse_cert(ca))
        .find(|ca| ca.subject().as_raw() == cert.issuer().as_raw())
        .unwrap_or_else(|| panic!("{name}: issuer not in bundle"));
    cert.verify_signature(Some(issuer.public_key()))
        .unwrap_or_else(|e| panic!("{name}: x509-parser signature check: {e}"));
    let from_claims_ext = writ_verifier::x509::leaf_claims(&cert).expect("claims parse");
    assert_eq!(
        from_claims_ext, request.claims,
        "{name}: claims via x509-parser"
    );

    // (c) the spiffe crate's X509Svid parser (leaf rules, key parsing) and bundle parser.
    let svid = spiffe::X509Svid::parse_from_der(leaf, key_pkcs8)
        .unwrap_or_else(|e| panic!("{name}: spiffe crate refused the SVID: {e}"));
    assert_eq!(svid.spiffe_id(), &request.spiffe_id, "{name}");
    assert_eq!(svid.leaf().as_bytes(), leaf.as_slice());
    assert_eq!(svid.private_key().as_bytes(), key_pkcs8);
    let concatenated: Vec<u8> = bundle.concat();
    let parsed_bundle = spiffe::X509Bundle::parse_from_der(trust_domain(band), &concatenated)
        .unwrap_or_else(|e| panic!("{name}: spiffe crate refused the bundle: {e}"));
    assert_eq!(parsed_bundle.authorities().len(), bundle.len());

    // (d) openssl verify -x509_strict, plain and for both TLS purposes.
    for purpose in [None, Some("sslclient"), Some("sslserver")] {
        let verdict = openssl_verify(fx.dir.path(), name, bundle, leaf, purpose);
        assert!(
            verdict.ok,
            "{name}: openssl verify ({purpose:?}) refused: {}",
            verdict.output
        );
    }

    // The private key belongs to the certificate.
    assert_key_matches(name, key_pkcs8, leaf);
}

/// Signs with the PKCS#8 key and verifies with the certificate's public key; also shows
/// that a different key's signature does not verify, so the check can fail.
fn assert_key_matches(name: &str, key_pkcs8: &[u8], leaf: &[u8]) {
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8, &rng)
        .expect("PKCS#8 P-256 key");
    let message = b"proof of possession for a writ SVID";
    let signature = key.sign(&rng, message).expect("sign");
    let cert = parse_cert(leaf);
    let public = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    );
    public
        .verify(message, signature.as_ref())
        .unwrap_or_else(|_| panic!("{name}: private key does not match the certificate"));
    assert_eq!(
        ring::signature::KeyPair::public_key(&key).as_ref(),
        cert.public_key().subject_public_key.data.as_ref(),
        "{name}: public keys differ"
    );

    let (other, _) = common::csr();
    let other_key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &other.serialize_der(),
        &rng,
    )
    .expect("other key");
    let forged = other_key.sign(&rng, message).expect("sign");
    assert!(
        public.verify(message, forged.as_ref()).is_err(),
        "{name}: a foreign key's signature verified"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn investigative_svid_with_claims_is_accepted_by_every_verifier() {
    let fx = Fixture::new();
    let request = common::investigative_request();
    let (minted, key) = fx.mint(Band::Investigative, &request);
    let claims = request.claims.as_ref().expect("claims");
    assert_eq!(claims.incident.as_deref(), Some("INC-1"));
    assert_accepted_everywhere(
        &fx,
        "investigative",
        Band::Investigative,
        &request,
        &minted,
        &key,
        &fx.bundle(Band::Investigative),
    );
}

#[test]
fn remediation_svid_with_every_claim_is_accepted_by_every_verifier() {
    let fx = Fixture::new();
    let request = common::remediation_request();
    let (minted, key) = fx.mint(Band::Remediation, &request);
    assert_accepted_everywhere(
        &fx,
        "remediation",
        Band::Remediation,
        &request,
        &minted,
        &key,
        &fx.bundle(Band::Remediation),
    );
    // Spell out the round-trip of each field, so a dropped field names itself.
    let verified = verify_x509_svid(
        &[CertificateDer::from(minted.cert_der.as_slice())],
        &ders(&fx.bundle(Band::Remediation)),
        &trust_domain(Band::Remediation),
        Usage::Client,
        unix_time(fx.now()),
    )
    .expect("verifies");
    let got: WritClaims = verified.claims.expect("claims present");
    assert_eq!(got.band, Some(Band::Remediation));
    assert_eq!(got.incident.as_deref(), Some("INC-1"));
    assert_eq!(got.grant.as_deref(), Some("g-7"));
    assert_eq!(
        got.plan_digest.as_deref(),
        Some("0123456789abcdef".repeat(4).as_str())
    );
    assert_eq!(got.approvers, ["alice@example.org", "bob@example.org"]);
    assert_eq!(got.scopes, ["k8s:rollout-restart", "logs:read"]);
    assert_eq!(got.audit_index, Some(4711));
    assert_eq!(got.tenant.as_deref(), Some("acme"));
}

#[test]
fn base_svid_without_claims_is_accepted_by_every_verifier() {
    let fx = Fixture::new();
    let request = common::base_request();
    let (minted, key) = fx.mint(Band::Base, &request);
    assert_accepted_everywhere(
        &fx,
        "base",
        Band::Base,
        &request,
        &minted,
        &key,
        &fx.bundle(Band::Base),
    );
    let cert = parse_cert(&minted.cert_der);
    assert_eq!(
        writ_verifier::x509::leaf_claims(&cert).expect("parse"),
        None
    );
}

#[test]
fn svid_with_dns_names_is_valid_for_those_names() {
    let fx = Fixture::new();
    let mut request = common::base_request();
    request.dns_names = vec!["log-store.example.org".into(), "logs.internal".into()];
    let (minted, key) = fx.mint(Band::Base, &request);
    let bundle = fx.bundle(Band::Base);
    assert_accepted_everywhere(&fx, "dns", Band::Base, &request, &minted, &key, &bundle);

    let leaf = CertificateDer::from(minted.cert_der.as_slice());
    let end_entity = webpki::EndEntityCert::try_from(&leaf).expect("parse");
    for name in ["log-store.example.org", "logs.internal"] {
        let server_name = ServerName::try_from(name).expect("DNS name");
        end_entity
            .verify_is_valid_for_subject_name(&server_name)
            .unwrap_or_else(|e| panic!("not valid for {name}: {e:?}"));
    }
    let other = ServerName::try_from("evil.example.org").expect("DNS name");
    assert!(
        end_entity.verify_is_valid_for_subject_name(&other).is_err(),
        "valid for a name it does not carry"
    );
}

#[test]
fn svids_survive_ca_rotation_and_old_ones_still_validate() {
    let fx = Fixture::new();
    let band = Band::Investigative;
    let request = common::investigative_request();
    let (old, old_key) = fx.mint(band, &request);
    let old_bundle = fx.bundle(band);
    assert_eq!(old_bundle.len(), 1);

    let ca = fx.cas.ca(band);
    let sequence_before = ca.sequence();
    ca.prepare(fx.now()).expect("prepare");
    ca.activate(fx.now()).expect("activate");
    assert!(
        ca.sequence() > sequence_before,
        "rotation bumps the sequence"
    );
    let states: Vec<_> = ca.authorities().iter().map(|a| a.state).collect();
    assert_eq!(states, [AuthorityState::Retired, AuthorityState::Active]);

    let (new, new_key) = fx.mint(band, &request);
    assert_ne!(
        new.authority_id, old.authority_id,
        "new SVID signed by new CA"
    );
    let new_bundle = fx.bundle(band);
    assert_eq!(
        new_bundle.len(),
        2,
        "bundle holds the retired and the active CA"
    );
    assert!(
        new_bundle.contains(&old_bundle[0]),
        "the retired CA is still published"
    );

    // The old SVID against the new bundle, and the new SVID against it too.
    assert_accepted_everywhere(&fx, "old", band, &request, &old, &old_key, &new_bundle);
    assert_accepted_everywhere(&fx, "new", band, &request, &new, &new_key, &new_bundle);

    // The new SVID really chains to the new CA only: the old bundle refuses it.
    assert!(
        webpki_verify(
            &new.cert_der,
            &old_bundle,
            fx.now(),
            webpki::KeyUsage::client_auth()
        )
        .is_err()
    );
    let verdict = openssl_verify(fx.dir.path(), "stale", &old_bundle, &new.cert_der, None);
    assert!(!verdict.ok, "openssl accepted a chain to the wrong CA");
}

#[test]
fn an_svid_never_verifies_against_another_bands_bundle() {
    let fx = Fixture::new();
    let minted: Vec<(Band, SvidRequest, MintedX509)> = [
        (Band::Investigative, common::investigative_request()),
        (Band::Remediation, common::remediation_request()),
        (Band::Base, common::base_request()),
    ]
    .into_iter()
    .map(|(band, request)| {
        let (m, _) = fx.mint(band, &request);
        (band, request, m)
    })
    .collect();

    for (band, _, svid) in &minted {
        for other in Band::ALL.into_iter().filter(|b| b != band) {
            let bundle = fx.bundle(other);
            let label = format!("{band} SVID vs {other} bundle");
            for usage in [
                webpki::KeyUsage::client_auth(),
                webpki::KeyUsage::server_auth(),
            ] {
                let err = webpki_verify(&svid.cert_der, &bundle, fx.now(), usage)
                    .expect_err(&format!("webpki accepted {label}"));
                assert!(
                    matches!(err, webpki::Error::UnknownIssuer),
                    "{label}: {err:?}"
                );
            }
            let verdict = openssl_verify(fx.dir.path(), "cross", &bundle, &svid.cert_der, None);
            assert!(!verdict.ok, "openssl accepted {label}: {}", verdict.output);

            // writ-verifier refuses by trust domain before it even builds a path...
            let err = verify_x509_svid(
                &[CertificateDer::from(svid.cert_der.as_slice())],
                &ders(&bundle),
                &trust_domain(other),
                Usage::Client,
                unix_time(fx.now()),
            )
            .expect_err(&format!("writ-verifier accepted {label}"));
            assert!(
                matches!(err, X509SvidError::WrongTrustDomain { .. }),
                "{label}: {err}"
            );
            // ...and by path when the other band's CAs are mislabeled as this band's.
            let err = verify_x509_svid(
                &[CertificateDer::from(svid.cert_der.as_slice())],
                &ders(&bundle),
                &trust_domain(*band),
                Usage::Client,
                unix_time(fx.now()),
            )
            .expect_err(&format!("writ-verifier accepted mislabeled {label}"));
            assert!(matches!(err, X509SvidError::Path(_)), "{label}: {err}");
        }
    }
}

#[test]
fn svid_is_refused_outside_its_validity_window() {
    // The same SVID that passes at mint time is refused by webpki once it has expired and
    // before its (backdated) notBefore: the verifiers really do look at time.
    let fx = Fixture::new();
    let (minted, _) = fx.mint(Band::Investigative, &common::investigative_request());
    let bundle = fx.bundle(Band::Investigative);
    let usage = || webpki::KeyUsage::client_auth();
    webpki_verify(&minted.cert_der, &bundle, fx.now(), usage()).expect("valid now");
    let after = webpki_verify(&minted.cert_der, &bundle, minted.not_after + 1, usage());
    assert!(
        matches!(after, Err(webpki::Error::CertExpired { .. })),
        "{after:?}"
    );
    let before = webpki_verify(&minted.cert_der, &bundle, minted.not_before - 1, usage());
    assert!(
        matches!(before, Err(webpki::Error::CertNotValidYet { .. })),
        "{before:?}"
    );
}
