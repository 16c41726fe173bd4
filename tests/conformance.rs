//! One test per rule of /work/shared/CONFORMANCE.md for X.509-SVID leaves and signing
//! CAs (SPIFFE X509-SVID.md §4–5), read back with x509-parser from certificates minted
//! through the crate API; then bad input through the same API, each refused with the
//! right `CaError`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Fixture, csr, csr_with, id, parse_cert, plain_request};
use std::collections::HashSet;
use std::time::Duration;
use writ::ca::{CaConfig, CaError, MintedX509, SubjectKey, SvidRequest};
use writ::{Band, WritClaims};
use writ_verifier::claims::CLAIMS_OID_DER;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::X509Certificate;

/// One leaf of each shape writ mints: investigative with claims, remediation with every
/// claim, base without claims, base with DNS SANs.
fn leaves(fx: &Fixture) -> Vec<(String, MintedX509, SvidRequest)> {
    let mut dns = common::base_request();
    dns.dns_names = vec!["log-store.example.org".into()];
    [
        (
            "investigative",
            Band::Investigative,
            common::investigative_request(),
        ),
        (
            "remediation",
            Band::Remediation,
            common::remediation_request(),
        ),
        ("base", Band::Base, common::base_request()),
        ("base+dns", Band::Base, dns),
    ]
    .into_iter()
    .map(|(name, band, request)| {
        let (minted, _) = fx.mint(band, &request);
        (name.to_owned(), minted, request)
    })
    .collect()
}

fn active_ca_cert(fx: &Fixture, band: Band) -> Vec<u8> {
    fx.cas
        .ca(band)
        .authorities()
        .into_iter()
        .find(|a| a.state == writ::ca::AuthorityState::Active)
        .expect("an active authority")
        .cert_der
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("SAN parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// X.509-SVID leaf rules
// ---------------------------------------------------------------------------------------

#[test]
fn leaf_has_exactly_one_uri_san_which_is_the_spiffe_id() {
    let fx = Fixture::new();
    for (name, minted, request) in leaves(&fx) {
        let cert = parse_cert(&minted.cert_der);
        assert_eq!(
            uri_sans(&cert),
            [request.spiffe_id.to_string()],
            "{name}: URI SANs"
        );
        let dns: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(
            dns, request.dns_names,
            "{name}: DNS SANs (allowed beside the URI)"
        );
    }
}

#[test]
fn leaf_san_is_critical_iff_subject_is_empty() {
    let fx = Fixture::new();
    for (name, minted, _) in leaves(&fx) {
        let cert = parse_cert(&minted.cert_der);
        let san = cert
            .subject_alternative_name()
            .expect("parses")
            .expect("SAN present");
        let subject_empty = cert.subject().iter_attributes().next().is_none();
        assert_eq!(
            san.critical, subject_empty,
            "{name}: SAN critical={} but subject empty={subject_empty}",
            san.critical
        );
    }
}

#[test]
fn leaf_basic_constraints_present_critical_and_not_ca() {
    let fx = Fixture::new();
    for (name, minted, _) in leaves(&fx) {
        let cert = parse_cert(&minted.cert_der);
        let bc = cert
            .basic_constraints()
            .expect("parses")
            .unwrap_or_else(|| panic!("{name}: basicConstraints missing"));
        assert!(bc.critical, "{name}: basicConstraints not critical");
        assert!(!bc.value.ca, "{name}: leaf is a CA");
        assert!(
            bc.value.path_len_constraint.is_none(),
            "{name}: pathLen on a leaf"
        );
        assert!(!cert.is_ca(), "{name}");
    }
}

#[test]
fn leaf_key_usage_is_critical_digital_signature_without_cert_or_crl_signing() {
    let fx = Fixture::new();
    for (name, minted, _) in leaves(&fx) {
        let cert = parse_cert(&minted.cert_der);
        let ku = cert
            .key_usage()
            .expect("parses")
            .unwrap_or_else(|| panic!("{name}: keyUsage missing"));
        assert!(ku.critical, "{name}: keyUsage not critical");
        assert!(ku.value.digital_signature(), "{name}: no digitalSignature");
        assert!(!ku.value.key_cert_sign(), "{name}: keyCertSign on a leaf");
        assert!(!ku.value.crl_sign(), "{name}: cRLSign on a leaf");
    }
}

#[test]
fn leaf_eku_holds_both_server_and_client_auth() {
    let fx = Fixture::new();
    for (name, minted, _) in leaves(&fx) {
        let cert = parse_cert(&minted.cert_der);
        // EKU is optional in the spec; writ always sets it, and then it must hold both.
        let eku = cert
            .extended_key_usage()
            .expect("parses")
            .unwrap_or_else(|| panic!("{name}: EKU missing"));
        assert!(eku.value.server_auth, "{name}: no serverAuth");
        assert!(eku.value.client_auth, "{name}: no clientAuth");
        assert!(!eku.value.any, "{name}: anyExtendedKeyUsage");
    }
}

#[test]
fn leaf_not_after_is_clamped_to_the_ca_not_after() {
    // A CA living 6h, SVIDs up to 1h; move the clock to 10 minutes before the CA ends
    // (without rotating) and ask for the full hour.
    let config = CaConfig {
        ca_ttl: Duration::from_secs(6 * 3600),
        max_svid_ttl: Duration::from_secs(3600),
        ..CaConfig::default()
    };
    let fx = Fixture::with(config, common::system_now());
    fx.advance(Duration::from_secs(6 * 3600 - 600));
    let now = fx.now();
    for band in Band::ALL {
        let ca_cert_der = active_ca_cert(&fx, band);
        let ca_cert = parse_cert(&ca_cert_der);
        let ca_not_after = ca_cert.validity().not_after.timestamp();
        assert!(ca_not_after < now + 3600, "setup: the CA must end first");

        let mut request = match band {
            Band::Investigative => common::investigative_request(),
            Band::Remediation => common::remediation_request(),
            Band::Base => common::base_request(),
        };
        request.ttl = Some(Duration::from_secs(3600));
        let (minted, _) = fx.mint(band, &request);
        let leaf = parse_cert(&minted.cert_der);
        let not_after = leaf.validity().not_after.timestamp();
        assert!(
            not_after <= ca_not_after,
            "{band}: leaf notAfter {not_after} is past the CA's {ca_not_after}"
        );
        assert_eq!(not_after, ca_not_after, "{band}: clamped exactly to the CA");
        assert_eq!(minted.not_after, not_after);
    }

    // Within the CA's life, the requested TTL is honoured exactly.
    let fresh = Fixture::new();
    let mut request = common::investigative_request();
    request.ttl = Some(Duration::from_secs(1800));
    let (minted, _) = fresh.mint(Band::Investigative, &request);
    let leaf = parse_cert(&minted.cert_der);
    assert_eq!(leaf.validity().not_after.timestamp(), fresh.now() + 1800);
}

#[test]
fn no_leaf_is_minted_once_the_authority_has_expired() {
    let config = CaConfig {
        ca_ttl: Duration::from_secs(6 * 3600),
        max_svid_ttl: Duration::from_secs(3600),
        ..CaConfig::default()
    };
    let fx = Fixture::with(config, common::system_now());
    fx.advance(Duration::from_secs(6 * 3600 + 1));
    let (_, der) = csr();
    let err = fx
        .cas
        .mint_x509(
            Band::Investigative,
            SubjectKey::Csr(&der),
            &common::investigative_request(),
        )
        .expect_err("minted past the CA's notAfter");
    assert!(matches!(err, CaError::NoAuthority(_)), "{err}");
}

#[test]
fn leaf_not_before_is_backdated_for_clock_skew() {
    let fx = Fixture::new();
    let now = fx.now();
    for (name, minted, _) in leaves(&fx) {
        let cert = parse_cert(&minted.cert_der);
        let not_before = cert.validity().not_before.timestamp();
        assert!(
            not_before <= now - 5,
            "{name}: notBefore {not_before} not backdated from {now}"
        );
        // Backdated by the configured amount, not arbitrarily far.
        assert_eq!(
            not_before,
            now - CaConfig::default().backdate.as_secs() as i64,
            "{name}"
        );
    }
}

#[test]
fn leaf_has_subject_and_authority_key_ids_and_aki_is_the_cas_ski() {
    let fx = Fixture::new();
    for (name, minted, request) in leaves(&fx) {
        let band = fx.cas.band_of(&request.spiffe_id).expect("band");
        let ca_der = active_ca_cert(&fx, band);
        let ca = parse_cert(&ca_der);
        let cert = parse_cert(&minted.cert_der);
        let ski = subject_key_id(&cert).unwrap_or_else(|| panic!("{name}: no SKI"));
        let aki = authority_key_id(&cert).unwrap_or_else(|| panic!("{name}: no AKI keyId"));
        let ca_ski = subject_key_id(&ca).unwrap_or_else(|| panic!("{name}: CA has no SKI"));
        assert!(!ski.is_empty(), "{name}: empty SKI");
        assert_eq!(aki, ca_ski, "{name}: AKI does not name the issuing CA");
        assert_ne!(ski, ca_ski, "{name}: leaf SKI equals the CA's");
        assert_eq!(
            cert.issuer().as_raw(),
            ca.subject().as_raw(),
            "{name}: issuer"
        );
    }
}

#[test]
fn leaf_claims_extension_is_non_critical_and_only_present_with_claims() {
    let fx = Fixture::new();
    for (name, minted, request) in leaves(&fx) {
        let cert = parse_cert(&minted.cert_der);
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.as_bytes() == CLAIMS_OID_DER);
        match (&request.claims, ext) {
            (Some(_), Some(ext)) => {
                assert!(!ext.critical, "{name}: claims extension is critical");
            }
            (None, None) => {}
            (claims, ext) => panic!(
                "{name}: claims requested={} but extension present={}",
                claims.is_some(),
                ext.is_some()
            ),
        }
    }
}

#[test]
fn leaf_extensions_are_unique_and_the_certificate_is_v3_ecdsa_sha256() {
    let fx = Fixture::new();
    for (name, minted, _) in leaves(&fx) {
        let cert = parse_cert(&minted.cert_der);
        cert.extensions_map()
            .unwrap_or_else(|e| panic!("{name}: duplicate extension: {e}"));
        assert_eq!(cert.version(), x509_parser::x509::X509Version::V3, "{name}");
        assert_eq!(
            cert.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256,
            "{name}"
        );
        // Serial: positive, at most 20 octets (RFC 5280 §4.1.2.2), random per SVID.
        let serial = cert.raw_serial();
        assert!(
            serial.len() <= 20 && serial[0] & 0x80 == 0,
            "{name}: serial"
        );
    }
    let serials: HashSet<_> = leaves(&fx).into_iter().map(|(_, m, _)| m.serial).collect();
    assert_eq!(serials.len(), 4, "serials repeat");
}

// ---------------------------------------------------------------------------------------
// Signing CA rules
// ---------------------------------------------------------------------------------------

#[test]
fn ca_is_a_ca_with_key_cert_sign() {
    let fx = Fixture::new();
    for band in Band::ALL {
        let der = active_ca_cert(&fx, band);
        let ca = parse_cert(&der);
        let bc = ca
            .basic_constraints()
            .expect("parses")
            .unwrap_or_else(|| panic!("{band}: CA without basicConstraints"));
        assert!(bc.critical, "{band}: basicConstraints not critical");
        assert!(bc.value.ca, "{band}: cA=false on the CA");
        let ku = ca
            .key_usage()
            .expect("parses")
            .unwrap_or_else(|| panic!("{band}: CA without keyUsage"));
        assert!(ku.value.key_cert_sign(), "{band}: no keyCertSign");
        assert!(subject_key_id(&ca).is_some(), "{band}: CA without SKI");
        // Self-signed root: its signature verifies under its own key.
        ca.verify_signature(None)
            .unwrap_or_else(|e| panic!("{band}: self-signature: {e}"));
    }
}

#[test]
fn ca_uri_san_is_the_trust_domain_id_without_path() {
    let fx = Fixture::new();
    for band in Band::ALL {
        let der = active_ca_cert(&fx, band);
        let ca = parse_cert(&der);
        let expected = format!("spiffe://{}", band.trust_domain_name(common::BASE));
        assert_eq!(uri_sans(&ca), [expected.as_str()], "{band}");
        let parsed = writ_verifier::parse_spiffe_id(&expected).expect("valid ID");
        assert!(parsed.path().is_empty(), "{band}: CA SAN has a path");
    }
}

#[test]
fn ca_has_no_name_constraints_and_no_eku() {
    let fx = Fixture::new();
    for band in Band::ALL {
        let der = active_ca_cert(&fx, band);
        let ca = parse_cert(&der);
        assert!(
            ca.name_constraints().expect("parses").is_none(),
            "{band}: name constraints on the CA"
        );
        assert!(
            ca.extended_key_usage().expect("parses").is_none(),
            "{band}: EKU on the CA"
        );
    }
}

#[test]
fn each_band_has_its_own_ca_keys() {
    let fx = Fixture::new();
    let mut x509_keys = HashSet::new();
    let mut jwt_kids = HashSet::new();
    let mut subjects = HashSet::new();
    for band in Band::ALL {
        let der = active_ca_cert(&fx, band);
        let ca = parse_cert(&der);
        x509_keys.insert(ca.public_key().raw.to_vec());
        subjects.insert(ca.subject().as_raw().to_vec());
        for authority in fx.cas.ca(band).authorities() {
            jwt_kids.insert(authority.jwt_kid);
        }
    }
    assert_eq!(
        x509_keys.len(),
        3,
        "an X.509 CA key is shared between bands"
    );
    assert_eq!(jwt_kids.len(), 3, "a JWT key is shared between bands");
    assert_eq!(subjects.len(), 3, "CA subjects collide between bands");
}

// ---------------------------------------------------------------------------------------
// Bad input through the crate API: the right error. (The CA records nothing; that the
// issuer records what it hands out and nothing it refuses is tests/svid_records.rs.)
// ---------------------------------------------------------------------------------------

/// Mints with `key` and `request` in `band`, expecting a refusal; checks the error is the
/// caller's.
fn refused(fx: &Fixture, band: Band, key: SubjectKey<'_>, request: &SvidRequest) -> CaError {
    let err = fx
        .cas
        .mint_x509(band, key, request)
        .expect_err("bad input was minted");
    assert!(
        err.is_invalid_argument(),
        "{err} is not reported as invalid argument"
    );
    err
}

fn refused_with_fresh_csr(fx: &Fixture, band: Band, request: &SvidRequest) -> CaError {
    let (_, der) = csr();
    refused(fx, band, SubjectKey::Csr(&der), request)
}

#[test]
fn ttl_zero_is_refused() {
    let fx = Fixture::new();
    let mut request = common::investigative_request();
    request.ttl = Some(Duration::ZERO);
    let err = refused_with_fresh_csr(&fx, Band::Investigative, &request);
    assert!(matches!(err, CaError::BadTtl(_)), "{err}");
}

#[test]
fn ttl_above_the_maximum_is_refused() {
    let fx = Fixture::new();
    let mut request = common::investigative_request();
    request.ttl = Some(CaConfig::default().max_svid_ttl + Duration::from_secs(1));
    let err = refused_with_fresh_csr(&fx, Band::Investigative, &request);
    assert!(matches!(err, CaError::BadTtl(_)), "{err}");
    // The maximum itself is fine.
    request.ttl = Some(CaConfig::default().max_svid_ttl);
    fx.mint(Band::Investigative, &request);
}

#[test]
fn spiffe_id_of_another_trust_domain_is_refused() {
    let fx = Fixture::new();
    for (band, other) in [
        (Band::Investigative, "spiffe://other.org/agent/x"),
        (
            Band::Investigative,
            "spiffe://remediate.example.org/agent/x",
        ),
        (
            Band::Remediation,
            "spiffe://investigate.example.org/agent/x",
        ),
        (Band::Base, "spiffe://investigate.example.org/agent/x"),
        (Band::Investigative, "spiffe://example.org/service/x"),
    ] {
        let err = refused_with_fresh_csr(&fx, band, &plain_request(other));
        assert!(
            matches!(err, CaError::WrongTrustDomain { .. }),
            "{band} minting {other}: {err}"
        );
    }
}

#[test]
fn spiffe_id_without_path_is_refused() {
    let fx = Fixture::new();
    let err = refused_with_fresh_csr(
        &fx,
        Band::Investigative,
        &plain_request("spiffe://investigate.example.org"),
    );
    assert!(matches!(err, CaError::BadSpiffeId { .. }), "{err}");
}

#[test]
fn spiffe_id_longer_than_2048_bytes_is_refused() {
    let fx = Fixture::new();
    let prefix = "spiffe://investigate.example.org/";
    let at_limit = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
    assert_eq!(at_limit.len(), 2048);
    let over = format!("{at_limit}b");
    let err = refused_with_fresh_csr(&fx, Band::Investigative, &plain_request(&over));
    assert!(matches!(err, CaError::BadSpiffeId { .. }), "{err}");
    // Exactly 2048 bytes is allowed, and lands in the certificate intact.
    let (minted, _) = fx.mint(Band::Investigative, &plain_request(&at_limit));
    assert_eq!(uri_sans(&parse_cert(&minted.cert_der)), [at_limit]);
}

#[test]
fn malformed_csr_bytes_are_refused() {
    let fx = Fixture::new();
    let request = common::investigative_request();
    let (_, good) = csr();
    let mut trailing = good.clone();
    trailing.push(0);
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("junk", b"this is not a CSR".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("trailing byte", trailing),
        ("oversized", vec![0x30; 17 * 1024]),
    ] {
        let err = refused(&fx, Band::Investigative, SubjectKey::Csr(&bytes), &request);
        assert!(matches!(err, CaError::BadCsr(_)), "{what}: {err}");
    }
}

#[test]
fn csr_with_a_corrupted_signature_is_refused() {
    let fx = Fixture::new();
    let request = common::investigative_request();
    let (_, mut der) = csr();
    // The DER ends with the signature's last octet (the tail of ECDSA `s`).
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let err = refused(&fx, Band::Investigative, SubjectKey::Csr(&der), &request);
    match err {
        CaError::BadCsr(reason) => assert!(reason.contains("signature"), "{reason}"),
        other => panic!("expected BadCsr, got {other}"),
    }
}

#[test]
fn csr_asking_for_a_ca_certificate_is_refused() {
    let fx = Fixture::new();
    let (_, der) = csr_with(|p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    });
    let err = refused(
        &fx,
        Band::Investigative,
        SubjectKey::Csr(&der),
        &common::investigative_request(),
    );
    match err {
        CaError::BadCsr(reason) => assert!(reason.contains("CA"), "{reason}"),
        other => panic!("expected BadCsr, got {other}"),
    }
}

#[test]
fn csr_asking_for_certificate_signing_key_usage_is_refused() {
    let fx = Fixture::new();
    for usage in [
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ] {
        let (_, der) = csr_with(|p| {
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, usage];
        });
        let err = refused(
            &fx,
            Band::Investigative,
            SubjectKey::Csr(&der),
            &common::investigative_request(),
        );
        assert!(matches!(err, CaError::BadCsr(_)), "{err}");
    }
}

#[test]
fn csr_asking_for_extra_sans_is_refused() {
    let fx = Fixture::new();
    let request = common::investigative_request();
    let sans = [
        rcgen::SanType::DnsName("evil.example.org".try_into().unwrap()),
        rcgen::SanType::URI(
            "spiffe://investigate.example.org/agent/admin"
                .try_into()
                .unwrap(),
        ),
        rcgen::SanType::URI("spiffe://remediate.example.org/agent/x".try_into().unwrap()),
        rcgen::SanType::Rfc822Name("root@example.org".try_into().unwrap()),
    ];
    for san in sans {
        let label = format!("{san:?}");
        let (_, der) = csr_with(|p| p.subject_alt_names = vec![san]);
        let err = refused(&fx, Band::Investigative, SubjectKey::Csr(&der), &request);
        assert!(matches!(err, CaError::BadCsr(_)), "{label}: {err}");
    }

    // The SPIFFE ID it will get anyway is not "extra": that CSR is accepted...
    let same = request.spiffe_id.to_string();
    let (_, der) = csr_with(|p| {
        p.subject_alt_names = vec![rcgen::SanType::URI(same.as_str().try_into().unwrap())]
    });
    let minted = fx
        .cas
        .mint_x509(Band::Investigative, SubjectKey::Csr(&der), &request)
        .expect("CSR naming the requested ID");
    // ...and the certificate still carries exactly that one URI SAN.
    assert_eq!(uri_sans(&parse_cert(&minted.cert_der)), [same]);
}

#[test]
fn csr_subject_is_never_copied_into_the_svid() {
    let fx = Fixture::new();
    let (_, der) = csr_with(|p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "root-of-all-evil");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Mallory Inc");
    });
    let minted = fx
        .cas
        .mint_x509(
            Band::Investigative,
            SubjectKey::Csr(&der),
            &common::investigative_request(),
        )
        .expect("a CSR subject is ignored, not refused");
    let cert = parse_cert(&minted.cert_der);
    let subject = cert.subject().to_string();
    assert!(!subject.contains("evil"), "{subject}");
    assert!(!subject.contains("Mallory"), "{subject}");
}

#[test]
fn claims_naming_another_band_are_refused() {
    let fx = Fixture::new();
    let mut request = common::investigative_request();
    request.claims = Some(WritClaims::new(Band::Remediation));
    let err = refused_with_fresh_csr(&fx, Band::Investigative, &request);
    assert!(matches!(err, CaError::BadRequest(_)), "{err}");
}

#[test]
fn bad_dns_names_are_refused() {
    let fx = Fixture::new();
    for names in [
        vec!["not a name".to_owned()],
        vec!["*.*.example.org".to_owned()],
        (0..17).map(|i| format!("h{i}.example.org")).collect(),
    ] {
        let mut request = common::base_request();
        request.dns_names = names;
        let err = refused_with_fresh_csr(&fx, Band::Base, &request);
        assert!(matches!(err, CaError::BadRequest(_)), "{err}");
    }
}

#[test]
fn malformed_public_key_is_refused() {
    let fx = Fixture::new();
    let request = common::investigative_request();
    let (key, _) = csr();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let mut truncated = spki.clone();
    truncated.truncate(spki.len() - 3);
    for bytes in [Vec::new(), b"junk".to_vec(), truncated] {
        let err = refused(
            &fx,
            Band::Investigative,
            SubjectKey::PublicKey(&bytes),
            &request,
        );
        assert!(matches!(err, CaError::BadKey(_)), "{err}");
    }
    // The untouched key mints.
    fx.cas
        .mint_x509(Band::Investigative, SubjectKey::PublicKey(&spki), &request)
        .expect("a good SPKI mints");
    // A CSR's key is all that is used: the SVID's key is the CSR's.
    let (key, der) = csr();
    let minted = fx
        .cas
        .mint_x509(Band::Investigative, SubjectKey::Csr(&der), &request)
        .expect("mint");
    assert_eq!(
        parse_cert(&minted.cert_der).public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
}

#[test]
fn agent_ids_refuse_band_and_grant_mismatches() {
    // Ids minted for agents use the identity module's naming: a grant in the
    // investigative band, or none in remediation, is refused as a bad SPIFFE ID (the
    // caller's mistake, invalid argument, once it reaches the CA's error).
    let base = spiffe::TrustDomain::new(common::BASE).unwrap();
    for (band, grant) in [
        (Band::Investigative, Some("g")),
        (Band::Remediation, None),
        (Band::Base, None),
    ] {
        let err = writ::identity::agent_spiffe_id(&base, band, "triage", "INC-1", grant)
            .expect_err("derived an ID it should not");
        let err = CaError::from(err);
        assert!(matches!(err, CaError::BadSpiffeId { .. }), "{band}: {err}");
        assert!(err.is_invalid_argument(), "{band}: {err}");
    }
    let ok = writ::identity::agent_spiffe_id(&base, Band::Remediation, "a", "i", Some("g"))
        .expect("valid");
    assert_eq!(
        ok,
        id("spiffe://remediate.example.org/agent/a/incident/i/grant/g")
    );
}
