//! X.509-SVID minting rate next to ring's raw P-256 signing rate, in the same run.
//!
//! `cargo bench --bench mint`. The ratio mint/sign is what docs/performance.md records:
//! minting is one ECDSA signature plus DER encoding, so the ratio says how much the
//! encoding and checks cost on top of the signature.

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use std::hint::black_box;
use std::sync::Arc;
use writ::ca::{CaConfig, SubjectKey, SvidRequest, TrustDomainCa};
use writ::store::Store;
use writ::{Band, WritClaims};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(&dir.path().join("writ.redb")).expect("store"));
    let td = spiffe::TrustDomain::new("investigate.example.org").expect("td");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let ca = TrustDomainCa::open(
        Band::Investigative,
        td,
        &dir.path().join("keys"),
        store,
        CaConfig::default(),
        now,
    )
    .expect("ca");

    let workload = rcgen::KeyPair::generate().expect("key");
    let spki = rcgen::PublicKeyData::subject_public_key_info(&workload);
    let csr = {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .serialize_request(&workload)
            .expect("csr")
            .der()
            .to_vec()
    };
    let mut claims = WritClaims::new(Band::Investigative);
    claims.incident = Some("INC-4711".into());
    claims.scopes = vec!["logs:read".into(), "metrics:read".into()];
    let request = SvidRequest {
        spiffe_id: spiffe::SpiffeId::new(
            "spiffe://investigate.example.org/agent/triage/incident/INC-4711",
        )
        .expect("id"),
        ttl: None,
        claims: Some(claims),
        dns_names: vec![],
    };

    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    let raw =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref(), &rng).expect("key");
    // About the size of a leaf's to-be-signed part.
    let tbs = vec![0x5au8; 600];

    let mut group = c.benchmark_group("x509");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ring_p256_sign", |b| {
        b.iter(|| raw.sign(&rng, black_box(&tbs)).expect("sign"))
    });
    group.bench_function("mint_from_public_key", |b| {
        b.iter(|| {
            ca.mint_x509(SubjectKey::PublicKey(black_box(&spki)), &request, now)
                .expect("mint")
        })
    });
    group.bench_function("mint_from_csr", |b| {
        b.iter(|| {
            ca.mint_x509(SubjectKey::Csr(black_box(&csr)), &request, now)
                .expect("mint")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
