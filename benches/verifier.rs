//! The cost of writ-verifier next to plain rustls-webpki verification, in the same run,
//! on the same writ-issued chain; and the revocation lookup each handshake does.
//!
//! `cargo bench --bench verifier`. docs/performance.md records the ratios:
//! * `client_cert/*`: one `verify_client_cert` call, SPIFFE verifier (chain via
//!   webpki + SPIFFE leaf rules + claims + Authorizer + revocation set) against rustls'
//!   `WebPkiClientVerifier` (chain and EKU only);
//! * `handshake/*`: a whole TLS 1.3 mTLS handshake in memory (both sides rustls, no I/O),
//!   differing only in the server's client-certificate verifier;
//! * `revocation/*`: the per-handshake lookup (an `ArcSwap` load and a few hash lookups)
//!   against a set of 10,000 incidents, 10,000 grants and 10,000 serials, and the whole
//!   authorizer decision.

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use spiffe::TrustDomain;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use writ::ca::{CaConfig, CaSet, SubjectKey, SvidRequest};
use writ::clock::SystemClock;
use writ::store::Store;
use writ::{Band, WritClaims};
use writ_verifier::revocation::{RevocationEntry, RevocationKind};
use writ_verifier::tls::{SpiffeClientVerifier, SpiffeServerVerifier, X509BundleSource};
use writ_verifier::{Authorizer, Peer, RevocationSnapshot, Revocations};

struct Bundles(HashMap<String, Vec<CertificateDer<'static>>>);

impl X509BundleSource for Bundles {
    fn x509_authorities(&self, td: &TrustDomain) -> Option<Vec<CertificateDer<'static>>> {
        self.0.get(td.as_str()).cloned()
    }
}

struct Svid {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

fn mint(cas: &CaSet, band: Band, id: &str, claims: Option<WritClaims>) -> Svid {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let minted = cas
        .mint_x509(
            band,
            SubjectKey::Csr(&csr),
            &SvidRequest {
                spiffe_id: spiffe::SpiffeId::new(id).unwrap(),
                ttl: None,
                claims,
                dns_names: vec![],
            },
        )
        .unwrap();
    Svid {
        chain: vec![CertificateDer::from(minted.cert_der)],
        key: key.serialize_der(),
    }
}

fn key(svid: &Svid) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key.clone()))
}

/// A revocation set of `n` entries of each kind, none of which names the bench's peer.
fn big_set(n: usize) -> RevocationSnapshot {
    let entries = (0..n).flat_map(|i| {
        [
            RevocationEntry {
                kind: RevocationKind::Incident,
                id: format!("INC-{}", 100_000 + i),
                trust_domain: "example.org".into(),
                revoked_at: 1,
            },
            RevocationEntry {
                kind: RevocationKind::Grant,
                id: format!("g-{i:012x}"),
                trust_domain: "remediate.example.org".into(),
                revoked_at: 1,
            },
            RevocationEntry {
                kind: RevocationKind::Serial,
                id: format!(
                    "{:032x}",
                    0x4000_0000_0000_0000_0000_0000_0000_0000u128 + i as u128
                ),
                trust_domain: String::new(),
                revoked_at: 1,
            },
        ]
    });
    RevocationSnapshot::new(1, entries)
}

/// Drives a handshake between two in-memory connections to completion.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) {
    let name = ServerName::try_from("ops-api").unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
    let mut buf = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets().unwrap();
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets().unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("writ.redb")).unwrap());
    let base = TrustDomain::new("example.org").unwrap();
    let cas = CaSet::open(
        base.clone(),
        &[],
        &dir.path().join("keys"),
        store,
        CaConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let mut claims = WritClaims::new(Band::Investigative);
    claims.incident = Some("INC-1".into());
    claims.scopes = vec!["logs:read".into(), "metrics:read".into()];
    let client_svid = mint(
        &cas,
        Band::Investigative,
        "spiffe://investigate.example.org/agent/triage/incident/INC-1",
        Some(claims),
    );
    let server_svid = mint(
        &cas,
        Band::Base,
        "spiffe://example.org/service/ops-api",
        None,
    );
    let bundles: HashMap<String, Vec<CertificateDer<'static>>> = Band::ALL
        .iter()
        .map(|band| {
            (
                band.trust_domain_name(base.as_str()),
                cas.ca(*band)
                    .x509_bundle()
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect(),
            )
        })
        .collect();
    let investigative_roots = bundles["investigate.example.org"].clone();
    let bundles = Arc::new(Bundles(bundles));
    let revocations = Arc::new(Revocations::new());
    revocations.replace(big_set(10_000));
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let spiffe_verifier: Arc<dyn ClientCertVerifier> =
        Arc::new(SpiffeClientVerifier::with_authorizer(
            Arc::clone(&bundles) as _,
            Authorizer::investigative(&base).scope("logs:read"),
            Arc::clone(&revocations),
        ));
    let mut roots = RootCertStore::empty();
    for ca in &investigative_roots {
        roots.add(ca.clone()).unwrap();
    }
    let webpki_verifier: Arc<dyn ClientCertVerifier> =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .unwrap();

    let now = UnixTime::now();
    let leaf = &client_svid.chain[0];
    // Both must accept the chain, or the comparison means nothing.
    spiffe_verifier.verify_client_cert(leaf, &[], now).unwrap();
    webpki_verifier.verify_client_cert(leaf, &[], now).unwrap();

    let mut group = c.benchmark_group("client_cert");
    group.bench_function("webpki", |b| {
        b.iter(|| {
            webpki_verifier
                .verify_client_cert(black_box(leaf), &[], now)
                .unwrap()
        })
    });
    group.bench_function("spiffe", |b| {
        b.iter(|| {
            spiffe_verifier
                .verify_client_cert(black_box(leaf), &[], now)
                .unwrap()
        })
    });
    group.finish();

    let server_config = |verifier: Arc<dyn ClientCertVerifier>| {
        Arc::new(
            ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(server_svid.chain.clone(), key(&server_svid))
                .unwrap(),
        )
    };
    let client_config = Arc::new(
        ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
                Arc::clone(&bundles) as _,
                Arc::new(|_: &spiffe::SpiffeId| true),
            )))
            .with_client_auth_cert(client_svid.chain.clone(), key(&client_svid))
            .unwrap(),
    );
    let with_webpki = server_config(Arc::clone(&webpki_verifier));
    let with_spiffe = server_config(Arc::clone(&spiffe_verifier));
    let mut group = c.benchmark_group("handshake");
    group.bench_function("webpki", |b| {
        b.iter(|| handshake(&with_webpki, &client_config))
    });
    group.bench_function("spiffe", |b| {
        b.iter(|| handshake(&with_spiffe, &client_config))
    });
    group.finish();

    let peer = writ_verifier::tls::verified_peer(leaf).unwrap();
    let authorizer = Authorizer::investigative(&base).scope("logs:read");
    assert!(revocations.check(&peer).is_none());
    let mut revoked_peer: Peer = peer.clone();
    revoked_peer.serial = Some(format!(
        "{:032x}",
        0x4000_0000_0000_0000_0000_0000_0000_0000u128 + 5_000
    ));
    assert!(revocations.check(&revoked_peer).is_some());
    let now_secs = i64::try_from(now.as_secs()).unwrap();
    let mut group = c.benchmark_group("revocation");
    group.bench_function("lookup_not_revoked", |b| {
        b.iter(|| revocations.check(black_box(&peer)))
    });
    group.bench_function("lookup_revoked_serial", |b| {
        b.iter(|| revocations.check(black_box(&revoked_peer)))
    });
    group.bench_function("authorizer_decide", |b| {
        b.iter(|| {
            authorizer
                .decide(black_box(&peer), &revocations.snapshot(), now_secs)
                .is_allow()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
