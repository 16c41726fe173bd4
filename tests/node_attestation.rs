//! Node attestation under attack, checked against two bugs SPIRE fixed that writ's design
//! could share: one join token raced by many nodes at once (exactly one may win), and an
//! x509pop attestation with a huge or deep certificate chain (bounded CPU and memory).
//!
//! The node API runs in-process on a real socket: a real issuer (store, CAs, audit log),
//! the production gRPC server built by `writ::server::node::server` (so its decoding bound
//! is the one `writ server` serves with), and tonic clients, one connection each. TLS is
//! left out: the attestation RPCs are served before any client certificate, and the
//! bounds tested here live in the gRPC layer and the handlers, not in TLS.
//! `tests/node_api.rs` covers the same RPCs through the real binaries over mTLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::node_api::NodeApi;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer as CertIssuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;
use tonic::Code;
use writ::audit::Kind;
use writ::proto::node as pb;
use writ::server::node::{
    MAX_MESSAGE_LEN, MAX_X509POP_CERT_LEN, MAX_X509POP_CHAIN, create_join_token,
};

/// The longest any one call may take before the test fails (a hang, not a speed check).
const WAIT: Duration = Duration::from_secs(60);

/// How many nodes race one join token.
const RACERS: usize = 16;

/// Waits for `call`, failing the test if it hangs.
async fn within<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_join_token_raced_by_many_nodes_admits_exactly_one() {
    let api = NodeApi::start(tempfile::tempdir().unwrap(), Vec::new(), Vec::new()).await;
    let (token, _) = create_join_token(&api.issuer, 600).unwrap();
    let node_id = format!(
        "spiffe://example.org/node/join-{}",
        &writ::hex::sha256(token.as_bytes())[..24]
    );

    // Every racer is connected and holds its CSR before any of them asks, so the
    // requests reach the server together rather than one connection at a time.
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..RACERS {
        let mut client = api.client().await;
        let (_, csr) = common::csr();
        let token = token.clone();
        let barrier = Arc::clone(&barrier);
        racers.spawn(async move {
            barrier.wait().await;
            client
                .attest_join_token(pb::AttestJoinTokenRequest { token, csr })
                .await
        });
    }
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    while let Some(joined) = within("a racing attestation", racers.join_next()).await {
        match joined.unwrap() {
            Ok(svid) => admitted.push(svid.into_inner()),
            Err(status) => refused.push(status),
        }
    }

    assert_eq!(
        admitted.len(),
        1,
        "exactly one node may attest with one join token; refusals: {refused:?}"
    );
    assert_eq!(admitted[0].spiffe_id, node_id);
    assert_eq!(refused.len(), RACERS - 1);
    for status in &refused {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_eq!(status.message(), "join token already used");
    }

    // The log agrees: one attestation, one node SVID, and every other try a denial.
    let records = api.records();
    let count = |action: &str| records.iter().filter(|r| r.action == action).count();
    assert_eq!(count("node.attest.join_token"), 1, "{records:?}");
    assert_eq!(count("node.attest.join_token.refused"), RACERS - 1);
    for record in records
        .iter()
        .filter(|r| r.action == "node.attest.join_token.refused")
    {
        assert_eq!(record.kind, Kind::Denial);
        assert_eq!(record.detail["reason"], "join token already used");
    }
    let issued: Vec<_> = records
        .iter()
        .filter(|r| r.kind == Kind::Issuance && r.spiffe_id.as_deref() == Some(&node_id))
        .collect();
    assert_eq!(issued.len(), 1, "one node SVID, not one per racer");
    let stored: Vec<_> = api
        .issuer
        .store
        .svids()
        .unwrap()
        .into_iter()
        .filter(|s| s.spiffe_id == node_id)
        .collect();
    assert_eq!(stored.len(), 1);
}

/// A CA for x509pop, and certificates under it.
struct Pki {
    root_der: CertificateDer<'static>,
    root: CertIssuer<'static, KeyPair>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn leaf_params() -> CertificateParams {
    let mut params = CertificateParams::new(vec!["node.example.internal".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "node.example.internal");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let params = ca_params("x509pop root");
        let root_der = params.self_signed(&key).unwrap().der().clone();
        Pki {
            root_der,
            root: CertIssuer::new(params, key),
        }
    }

    /// A chain `depth` intermediates deep, leaf first, without the root. One key signs
    /// every intermediate: the test needs depth, not a thousand key generations.
    fn chain(&self, depth: usize) -> Vec<Vec<u8>> {
        let key = KeyPair::generate().unwrap();
        let mut issued = Vec::with_capacity(depth + 1);
        let mut above: Option<CertIssuer<'static, &KeyPair>> = None;
        for i in 0..depth {
            let params = ca_params(&format!("intermediate {i}"));
            let cert = match &above {
                None => params.signed_by(&key, &self.root),
                Some(issuer) => params.signed_by(&key, issuer),
            }
            .unwrap();
            issued.push(cert.der().to_vec());
            above = Some(CertIssuer::new(params, &key));
        }
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = match &above {
            None => leaf_params().signed_by(&leaf_key, &self.root),
            Some(issuer) => leaf_params().signed_by(&leaf_key, issuer),
        }
        .unwrap();
        issued.push(leaf.der().to_vec());
        issued.reverse();
        issued
    }
}

async fn challenge(api: &NodeApi, chain: Vec<Vec<u8>>) -> Result<(), tonic::Status> {
    let mut client = api.client().await;
    within(
        "an x509pop challenge",
        client.x509_pop_challenge(pb::X509PopChallengeRequest { chain }),
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn x509pop_chains_beyond_the_bounds_are_refused_before_verifying() {
    let pki = Pki::new();
    let api = NodeApi::start(
        tempfile::tempdir().unwrap(),
        vec![pki.root_der.clone()],
        Vec::new(),
    )
    .await;

    // The deepest chain webpki builds (six intermediates) with the root appended, as
    // some tools send it: within the bound, and it verifies.
    let mut deepest = pki.chain(6);
    deepest.push(pki.root_der.to_vec());
    assert_eq!(deepest.len(), MAX_X509POP_CHAIN);
    challenge(&api, deepest)
        .await
        .expect("a chain at the bound is verified and challenged");

    // A thousand intermediates: refused for their number, not walked.
    let deep = pki.chain(1000);
    let refused = challenge(&api, deep).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        refused.message(),
        format!(
            "certificate chain has 1001 certificates; at most {MAX_X509POP_CHAIN} are accepted"
        )
    );

    // A good leaf followed by padding: still refused. Trimming the chain to its first
    // few certificates and verifying those would have accepted it.
    let mut padded = pki.chain(0);
    padded.extend(std::iter::repeat_n(pki.root_der.to_vec(), 100));
    let refused = challenge(&api, padded).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("101 certificates"),
        "{refused:?}"
    );

    // One certificate larger than any node certificate: a leaf the root really signed,
    // carrying a 20 KiB extension, refused for its size before it is parsed.
    let leaf_key = KeyPair::generate().unwrap();
    let mut params = leaf_params();
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 55555, 1],
            vec![0x04; 20 * 1024],
        ));
    let oversized = params
        .signed_by(&leaf_key, &pki.root)
        .unwrap()
        .der()
        .to_vec();
    assert!(oversized.len() > MAX_X509POP_CERT_LEN);
    let refused = challenge(&api, vec![oversized.clone()]).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        refused.message(),
        format!(
            "certificate 0 of the chain is {} bytes; at most {MAX_X509POP_CERT_LEN} are accepted",
            oversized.len()
        )
    );

    // Nothing refused left a challenge or an attestation behind.
    assert!(
        !api.records()
            .iter()
            .any(|r| r.action.starts_with("node.attest"))
    );
}

#[tokio::test]
async fn the_node_api_decodes_no_message_beyond_its_bound() {
    let api = NodeApi::start(tempfile::tempdir().unwrap(), Vec::new(), Vec::new()).await;
    let mut client = api.client().await;
    // An unauthenticated attestation twice the bound: refused by the gRPC layer before
    // any handler sees (or the server buffers) it.
    let refused = within(
        "an oversized attestation",
        client.attest_join_token(pb::AttestJoinTokenRequest {
            token: "x".repeat(2 * MAX_MESSAGE_LEN),
            csr: Vec::new(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("the limit is: {MAX_MESSAGE_LEN} bytes")),
        "{refused:?}"
    );

    // The same connection still serves a request within the bound.
    let (_, csr) = common::csr();
    let refused = within(
        "a small attestation",
        client.attest_join_token(pb::AttestJoinTokenRequest {
            token: "not-a-token".into(),
            csr,
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(refused.message(), "unknown join token");
}
