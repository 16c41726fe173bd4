//! X.509-SVIDs signed through an intermediate (`[ca] sign_with_intermediate = true`),
//! checked by independent implementations: `openssl verify -x509_strict` with the
//! intermediate as untrusted, rustls-webpki's own path building, the `spiffe` crate's
//! parser, and writ-verifier — which must also refuse intermediates that are not what
//! writ issues (not a CA, a pathLen above 0) and chains that lead to another band's root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Fixture, investigative_request, remediation_request, system_now, write_pem};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::process::Command;
use std::time::Duration;
use writ::Band;
use writ::ca::CaConfig;
use writ::ca::keys::{EcKey, SignatureEncoding};
use writ_verifier::{Usage, X509SvidError, verify_x509_svid};

fn chained() -> CaConfig {
    CaConfig {
        sign_with_intermediate: true,
        ..CaConfig::default()
    }
}

fn fixture() -> Fixture {
    Fixture::with(chained(), system_now())
}

fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(secs).unwrap()))
}

fn ders(certs: &[Vec<u8>]) -> Vec<CertificateDer<'_>> {
    certs
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect()
}

fn td(band: Band) -> spiffe::TrustDomain {
    spiffe::TrustDomain::new(band.trust_domain_name(common::BASE)).unwrap()
}

fn verify(f: &Fixture, band: Band, chain: &[Vec<u8>]) -> Result<(), X509SvidError> {
    verify_x509_svid(
        &ders(chain),
        &ders(&f.bundle(band)),
        &td(band),
        Usage::Client,
        unix_time(f.now()),
    )
    .map(|_| ())
}

/// `openssl verify -x509_strict [-untrusted inter.pem] -CAfile root.pem leaf.pem`.
fn openssl(dir: &std::path::Path, root: &[Vec<u8>], inter: Option<&[u8]>, leaf: &[u8]) -> String {
    write_pem(&dir.join("root.pem"), root);
    write_pem(&dir.join("leaf.pem"), &[leaf.to_vec()]);
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(["verify", "-x509_strict"]);
    if let Some(inter) = inter {
        write_pem(&dir.join("inter.pem"), &[inter.to_vec()]);
        cmd.args(["-untrusted", "inter.pem"]);
    }
    let out = cmd
        .args(["-CAfile", "root.pem", "leaf.pem"])
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success() || inter.is_none(),
        "openssl refused the chain: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn openssl_and_webpki_build_the_path_through_the_intermediate() {
    let f = fixture();
    for (band, request) in [
        (Band::Investigative, investigative_request()),
        (Band::Remediation, remediation_request()),
    ] {
        let (minted, key) = f.mint(band, &request);
        let bundle = f.bundle(band);
        assert_eq!(bundle.len(), 1, "the bundle holds the root only");
        assert_eq!(minted.chain.len(), 1, "the SVID carries its intermediate");
        assert!(!bundle.contains(&minted.chain[0]));

        let out = openssl(
            f.dir.path(),
            &bundle,
            Some(&minted.chain[0]),
            &minted.cert_der,
        );
        assert!(out.contains("leaf.pem: OK"), "{out}");
        // Without the intermediate, openssl finds no path: the root did not sign the leaf.
        let out = openssl(f.dir.path(), &bundle, None, &minted.cert_der);
        assert!(!out.contains(": OK"), "{out}");

        let anchors: Vec<_> = ders(&bundle)
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned())
            .collect();
        let leaf = CertificateDer::from(minted.cert_der.as_slice());
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let webpki_path = |intermediates: &[CertificateDer<'_>]| {
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                intermediates,
                unix_time(f.now()),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(|_| ())
        };
        webpki_path(&ders(&minted.chain)).unwrap();
        assert!(webpki_path(&[]).is_err());

        // The `spiffe` crate parses [leaf, intermediate] as one X509-SVID.
        let svid = spiffe::X509Svid::parse_from_der(&minted.full_chain().concat(), &key).unwrap();
        assert_eq!(svid.cert_chain().len(), 2);
        assert_eq!(svid.spiffe_id(), &request.spiffe_id);

        verify(&f, band, &minted.full_chain()).unwrap();
    }
}

/// The band's active root as an rcgen issuer, its key read from the key directory (a
/// test stands in for an attacker who holds the root, or for a misconfigured CA).
fn root_issuer(f: &Fixture, band: Band) -> Issuer<'static, EcKey> {
    let record = f
        .cas
        .ca(band)
        .authorities()
        .into_iter()
        .find(|r| r.state == writ::ca::AuthorityState::Active)
        .unwrap();
    let key = EcKey::read(
        &f.dir
            .path()
            .join("keys")
            .join(td(band).to_string())
            .join(format!("{}.x509.key", record.id)),
        SignatureEncoding::Asn1,
    )
    .unwrap();
    Issuer::from_ca_cert_der(&CertificateDer::from(record.cert_der), key).unwrap()
}

/// An intermediate under `issuer` with `is_ca`, naming `san` as its URI SAN.
fn intermediate(issuer: &Issuer<'_, EcKey>, is_ca: IsCa, san: &str) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = is_ca;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![SanType::URI(san.try_into().unwrap())];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test intermediate");
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.der().to_vec(), key)
}

/// A leaf for `spiffe_id` signed by the intermediate `(cert, key)`.
fn leaf_under(inter: &(Vec<u8>, KeyPair), spiffe_id: &str) -> Vec<u8> {
    let issuer =
        Issuer::from_ca_cert_der(&CertificateDer::from(inter.0.clone()), &inter.1).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    params.signed_by(&key, &issuer).unwrap().der().to_vec()
}

const LEAF_ID: &str = "spiffe://investigate.example.org/agent/triage/incident/INC-1";

#[test]
fn a_well_formed_intermediate_under_the_root_is_accepted() {
    // The control for the refusals below: same construction, the shape writ issues.
    let f = fixture();
    let root = root_issuer(&f, Band::Investigative);
    let inter = intermediate(
        &root,
        IsCa::Ca(BasicConstraints::Constrained(0)),
        "spiffe://investigate.example.org",
    );
    let leaf = leaf_under(&inter, LEAF_ID);
    verify(&f, Band::Investigative, &[leaf, inter.0]).unwrap();
}

#[test]
fn an_intermediate_that_is_not_a_ca_is_refused() {
    let f = fixture();
    let root = root_issuer(&f, Band::Investigative);
    let inter = intermediate(
        &root,
        IsCa::ExplicitNoCa,
        "spiffe://investigate.example.org",
    );
    let leaf = leaf_under(&inter, LEAF_ID);
    let err = verify(&f, Band::Investigative, &[leaf, inter.0]).unwrap_err();
    assert!(
        matches!(&err, X509SvidError::Intermediate(m) if m.contains("not a CA")),
        "{err:?}"
    );
}

#[test]
fn an_intermediate_that_may_sign_cas_is_refused() {
    let f = fixture();
    let root = root_issuer(&f, Band::Investigative);
    for is_ca in [
        IsCa::Ca(BasicConstraints::Constrained(1)),
        IsCa::Ca(BasicConstraints::Unconstrained),
    ] {
        let inter = intermediate(&root, is_ca, "spiffe://investigate.example.org");
        let leaf = leaf_under(&inter, LEAF_ID);
        let err = verify(&f, Band::Investigative, &[leaf, inter.0]).unwrap_err();
        assert!(
            matches!(&err, X509SvidError::Intermediate(m) if m.contains("pathLenConstraint")),
            "{err:?}"
        );
    }
}

#[test]
fn a_leaf_under_another_bands_intermediate_is_refused() {
    let f = fixture();
    // An intermediate of the remediation root that claims the investigative trust
    // domain: the name check passes, the path does not (that root is not in the
    // investigative bundle).
    let remediation_root = root_issuer(&f, Band::Remediation);
    let inter = intermediate(
        &remediation_root,
        IsCa::Ca(BasicConstraints::Constrained(0)),
        "spiffe://investigate.example.org",
    );
    let leaf = leaf_under(&inter, LEAF_ID);
    let err = verify(&f, Band::Investigative, &[leaf, inter.0]).unwrap_err();
    assert!(matches!(err, X509SvidError::Path(_)), "{err:?}");

    // The remediation band's own intermediate (as writ issued it) signing an
    // investigative ID: refused for its name before any path is built.
    let (minted, _) = f.mint(Band::Remediation, &remediation_request());
    let dir = f
        .dir
        .path()
        .join("keys")
        .join(td(Band::Remediation).to_string());
    let key_file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".intermediate.key"))
        .unwrap();
    let pkcs8 = std::fs::read(key_file).unwrap();
    let key = KeyPair::try_from(pkcs8.as_slice()).unwrap();
    let theirs = (minted.chain[0].clone(), key);
    let leaf = leaf_under(&theirs, LEAF_ID);
    let err = verify(&f, Band::Investigative, &[leaf.clone(), theirs.0.clone()]).unwrap_err();
    assert!(
        matches!(&err, X509SvidError::Intermediate(m) if m.contains("is not spiffe://investigate.example.org")),
        "{err:?}"
    );
    // And against its own band's bundle the leaf's ID is of the wrong trust domain.
    let err = verify_x509_svid(
        &ders(&[leaf, theirs.0]),
        &ders(&f.bundle(Band::Remediation)),
        &td(Band::Remediation),
        Usage::Client,
        unix_time(f.now()),
    )
    .unwrap_err();
    assert!(
        matches!(err, X509SvidError::WrongTrustDomain { .. }),
        "{err:?}"
    );
}

#[test]
fn a_peer_that_sends_the_root_along_is_still_accepted() {
    // Some TLS stacks send the whole chain, root included: the root is an anchor, not
    // an intermediate, and must not trip the intermediate rules.
    let f = fixture();
    let (minted, _) = f.mint(Band::Investigative, &investigative_request());
    let mut chain = minted.full_chain();
    chain.extend(f.bundle(Band::Investigative));
    verify(&f, Band::Investigative, &chain).unwrap();
}

#[test]
fn revocation_by_serial_names_the_leaf() {
    let f = fixture();
    let (minted, _) = f.mint(Band::Investigative, &investigative_request());
    let verified = verify_x509_svid(
        &ders(&minted.full_chain()),
        &ders(&f.bundle(Band::Investigative)),
        &td(Band::Investigative),
        Usage::Client,
        unix_time(f.now()),
    )
    .unwrap();
    assert_eq!(writ::hex::lower(&verified.serial), minted.serial);
    let peer = writ_verifier::Peer::from_x509(&verified);
    let snapshot = writ_verifier::RevocationSnapshot::new(
        1,
        [writ_verifier::revocation::RevocationEntry {
            kind: writ_verifier::revocation::RevocationKind::Serial,
            id: minted.serial.clone(),
            trust_domain: String::new(),
            revoked_at: f.now(),
        }],
    );
    assert!(
        snapshot.check(&peer).is_some(),
        "the leaf's serial is revoked"
    );
}
