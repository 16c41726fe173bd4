//! writ-verifier against real SVIDs issued by writ, in real TLS handshakes (tokio-rustls
//! on both sides), with bundles and revocations from the agent's socket through
//! `WorkloadApiSource`.
//!
//! Every refusal is checked twice: the handshake fails, and the reason names the rule
//! that failed, so a test cannot pass because of an unrelated error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::dev::{Dev, my_uid, start};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ServerConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use writ::ca::CaConfig;
use writ::policy::grant::plan_digest;
use writ::policy::{GrantRequest, GrantState, Profile, Selector, Severity};
use writ_verifier::tls::{SpiffeClientVerifier, SpiffeServerVerifier, peer_spiffe_id};
use writ_verifier::{
    Authorizer, Band, JwtRefused, JwtSvidError, WorkloadApiSource, authorize_jwt_svid,
};

/// How long any one awaited event may take before the test fails (not a latency claim).
const PATIENCE: Duration = Duration::from_secs(10);
const PLAN: &str = "kubectl -n shop rollout restart deploy/checkout\n";
const SERVICE: &str = "spiffe://example.org/service/ops-api";

/// A credential: chain (leaf first) and PKCS#8 key.
#[derive(Clone)]
struct Cred {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

fn base() -> spiffe::TrustDomain {
    writ_verifier::parse_trust_domain("example.org").unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This process is the agent `fixer` (both bands) and the service `ops-api`.
fn profiles(dev: &Dev) {
    for (name, service, bands) in [
        ("fixer", false, vec![Band::Investigative, Band::Remediation]),
        ("ops-api", true, vec![Band::Base]),
    ] {
        dev.issuer
            .registry
            .create_profile(
                Profile {
                    tenant: "default".into(),
                    name: name.into(),
                    selectors: BTreeSet::from([Selector::Uid(my_uid())]),
                    bands: bands.into_iter().collect(),
                    scopes: BTreeSet::from(["logs:read".into(), "deploy:restart".into()]),
                    service,
                    created_at: 0,
                },
                "test",
            )
            .unwrap();
    }
}

fn open(dev: &Dev, id: &str) {
    dev.open_remediable(id, "fixer", Severity::Sev2);
}

/// Requests and approves (quorum 2 for sev2) a grant for `PLAN`; returns its id.
fn approved_grant(dev: &Dev, incident: &str) -> String {
    let now = dev.issuer.cas.now();
    let grant = dev
        .issuer
        .registry
        .request_grant(
            "default",
            GrantRequest {
                incident: incident.into(),
                agent: "fixer".into(),
                action: "restart checkout".into(),
                plan: PLAN.into(),
                targets: BTreeSet::from(["deploy/checkout".into()]),
                ..GrantRequest::default()
            },
            "test",
            now,
        )
        .unwrap();
    for approver in ["alice", "bob"] {
        dev.issuer
            .registry
            .approve_grant(
                "default",
                &grant.id,
                approver,
                &plan_digest(PLAN),
                3600,
                now,
            )
            .unwrap();
    }
    assert_eq!(
        dev.issuer.registry.snapshot().grants[&writ::policy::key("default", &grant.id)].state,
        GrantState::Active
    );
    grant.id
}

/// The SVID of the Workload API's current context whose trust domain is `td`, waiting
/// (on the stream, not on time) until one is there.
async fn svid_in(dev: &Dev, td: &str) -> Cred {
    use tokio_stream::StreamExt;
    let client = dev.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            let ctx = stream.next().await.unwrap().unwrap();
            if let Some(svid) = ctx
                .svids()
                .iter()
                .find(|s| s.spiffe_id().trust_domain().as_str() == td)
            {
                return svid.clone();
            }
        }
    })
    .await
    .expect("an SVID in the trust domain in time");
    Cred {
        chain: found
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect(),
        key: found.private_key().as_bytes().to_vec(),
    }
}

async fn source(dev: &Dev) -> Arc<WorkloadApiSource> {
    let endpoint = format!("unix://{}", dev.socket.display());
    Arc::new(
        tokio::time::timeout(PATIENCE, WorkloadApiSource::connect(&endpoint))
            .await
            .expect("source ready in time")
            .unwrap(),
    )
}

fn key(cred: &Cred) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cred.key.clone()))
}

/// A server with `cred`, requiring clients `authorizer` allows.
fn server(source: &Arc<WorkloadApiSource>, authorizer: Authorizer, cred: &Cred) -> ServerConfig {
    server_at(source, authorizer, cred, None)
}

#[derive(Debug)]
struct FixedTime(UnixTime);

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

fn server_at(
    source: &Arc<WorkloadApiSource>,
    authorizer: Authorizer,
    cred: &Cred,
    time: Option<UnixTime>,
) -> ServerConfig {
    let verifier =
        SpiffeClientVerifier::with_authorizer(source.clone(), authorizer, source.revocations());
    let builder = match time {
        Some(t) => ServerConfig::builder_with_details(provider(), Arc::new(FixedTime(t))),
        None => ServerConfig::builder_with_provider(provider()),
    };
    builder
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cred.chain.clone(), key(cred))
        .unwrap()
}

/// A client with `cred`, accepting servers `authorizer` allows.
fn client(source: &Arc<WorkloadApiSource>, authorizer: Authorizer, cred: &Cred) -> ClientConfig {
    let verifier =
        SpiffeServerVerifier::with_authorizer(source.clone(), authorizer, source.revocations());
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cred.chain.clone(), key(cred))
        .unwrap()
}

/// One exchange over an in-memory pipe: the client sends a byte, the server echoes it.
/// Returns the server's view (the client's SPIFFE ID) and the client's (the server's),
/// or the first error each side saw.
async fn exchange(
    server: ServerConfig,
    client: ClientConfig,
) -> (Result<String, String>, Result<String, String>) {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let accept = async move {
        let mut tls = TlsAcceptor::from(Arc::new(server))
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| peer_spiffe_id(&c[0]))
            .map(|id| id.to_string())
            .ok_or("no peer id")?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let connect = async move {
        let name = ServerName::try_from("ops-api.example.org").unwrap();
        let mut tls = TlsConnector::from(Arc::new(client))
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| peer_spiffe_id(&c[0]))
            .map(|id| id.to_string())
            .ok_or("no peer id")?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    };
    let (s, c) = tokio::time::timeout(PATIENCE, async { tokio::join!(accept, connect) })
        .await
        .expect("the exchange ends in time");
    (s, c)
}

/// Asserts the server refused the client, naming `reason`.
fn refused_by_server(result: (Result<String, String>, Result<String, String>), reason: &str) {
    let (server, client) = result;
    let err = server.expect_err("the server must refuse the client");
    assert!(
        err.contains(reason),
        "server said {err:?}, expected {reason:?}"
    );
    assert!(client.is_err(), "the client cannot complete the exchange");
}

struct World {
    dev: Dev,
    source: Arc<WorkloadApiSource>,
    service: Cred,
    investigative: Cred,
}

async fn world() -> World {
    world_with(CaConfig::default()).await
}

async fn world_with(ca: CaConfig) -> World {
    let dev = start(ca).await;
    profiles(&dev);
    open(&dev, "INC-1");
    let service = svid_in(&dev, "example.org").await;
    let investigative = svid_in(&dev, "investigate.example.org").await;
    let source = source(&dev).await;
    World {
        dev,
        source,
        service,
        investigative,
    }
}

fn the_service() -> Authorizer {
    Authorizer::service(&base()).spiffe_id(&writ_verifier::parse_spiffe_id(SERVICE).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_in_both_directions_with_writ_svids() {
    let w = world().await;
    let (s, c) = exchange(
        server(&w.source, Authorizer::investigative(&base()), &w.service),
        client(&w.source, the_service(), &w.investigative),
    )
    .await;
    assert_eq!(
        s.unwrap(),
        "spiffe://investigate.example.org/agent/fixer/incident/INC-1"
    );
    assert_eq!(c.unwrap(), SERVICE);

    // And the other way round: the agent serves, the service is the client.
    let (s, c) = exchange(
        server(&w.source, the_service(), &w.investigative),
        client(&w.source, Authorizer::investigative(&base()), &w.service),
    )
    .await;
    assert_eq!(s.unwrap(), SERVICE);
    assert!(c.unwrap().starts_with("spiffe://investigate.example.org/"));

    // The client side refuses a server that is not the one it expects.
    let (_, c) = exchange(
        server(&w.source, Authorizer::investigative(&base()), &w.service),
        client(
            &w.source,
            Authorizer::remediation(&base()),
            &w.investigative,
        ),
    )
    .await;
    let err = c.expect_err("the client must refuse a server of another band");
    assert!(
        err.contains("trust domain example.org not allowed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_signed_through_an_intermediate_carry_it_to_x509source_and_tls() {
    let w = world_with(CaConfig {
        sign_with_intermediate: true,
        ..CaConfig::default()
    })
    .await;
    // The Workload API's x509_svid is [leaf, intermediate]; the bundle is the root only.
    for (cred, band) in [
        (&w.service, Band::Base),
        (&w.investigative, Band::Investigative),
    ] {
        let ca = w.dev.issuer.cas.ca(band);
        assert_eq!(cred.chain.len(), 2, "{band}: leaf and intermediate");
        assert_eq!(cred.chain[1].as_ref(), ca.intermediate_cert().unwrap());
        assert_eq!(ca.x509_bundle().len(), 1);
    }

    // The stock `spiffe` crate's X509Source takes the chain and the root-only bundle.
    let endpoint = format!("unix://{}", w.dev.socket.display());
    let x509_source = tokio::time::timeout(
        PATIENCE,
        spiffe::X509Source::builder().endpoint(&endpoint).build(),
    )
    .await
    .expect("X509Source ready in time")
    .unwrap();
    let svid = x509_source.svid().unwrap();
    assert_eq!(svid.cert_chain().len(), 2);
    let band = if svid.spiffe_id().trust_domain().as_str() == "example.org" {
        Band::Base
    } else {
        Band::Investigative
    };
    let bundles = x509_source.bundle_set().unwrap();
    let bundle = bundles.get(svid.spiffe_id().trust_domain()).unwrap();
    assert_eq!(
        bundle
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect::<Vec<_>>(),
        w.dev.issuer.cas.ca(band).x509_bundle()
    );

    // A TLS handshake with the X509Source's SVID on one side and writ-verifier checking
    // it through the intermediate on the other, then the same the other way round.
    let from_source = Cred {
        chain: svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect(),
        key: svid.private_key().as_bytes().to_vec(),
    };
    let (authorizer, other, other_authorizer) = match band {
        Band::Base => (
            the_service(),
            &w.investigative,
            Authorizer::investigative(&base()),
        ),
        _ => (
            Authorizer::investigative(&base()),
            &w.service,
            the_service(),
        ),
    };
    let (s, c) = exchange(
        server(&w.source, other_authorizer.clone(), &from_source),
        client(&w.source, authorizer.clone(), other),
    )
    .await;
    assert_eq!(s.unwrap(), svid_id(other));
    assert_eq!(c.unwrap(), svid.spiffe_id().to_string());
    let (s, c) = exchange(
        server(&w.source, authorizer.clone(), other),
        client(&w.source, other_authorizer.clone(), &from_source),
    )
    .await;
    assert_eq!(s.unwrap(), svid.spiffe_id().to_string());
    assert_eq!(c.unwrap(), svid_id(other));

    // The same leaf without its intermediate does not verify.
    let bare = Cred {
        chain: from_source.chain[..1].to_vec(),
        key: from_source.key.clone(),
    };
    refused_by_server(
        exchange(
            server(&w.source, authorizer, other),
            client(&w.source, other_authorizer, &bare),
        )
        .await,
        "does not verify",
    );
}

fn svid_id(cred: &Cred) -> String {
    peer_spiffe_id(&cred.chain[0]).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_incidents_certificate_is_refused_although_unexpired() {
    let w = world().await;
    let make = || {
        (
            server(&w.source, Authorizer::investigative(&base()), &w.service),
            client(&w.source, the_service(), &w.investigative),
        )
    };
    let (s, c) = make();
    let (s, _) = exchange(s, c).await;
    assert!(s.is_ok(), "{s:?}");

    let mut updates = w.source.updates();
    w.dev.close("INC-1");
    let closed = w.dev.issuer.registry.snapshot().generation;
    tokio::time::timeout(
        PATIENCE,
        updates.wait_for(|p| p.revocation_generation >= closed),
    )
    .await
    .expect("the revocation reaches the verifier in time")
    .unwrap();

    // The certificate itself is still valid for minutes.
    let leaf = writ_verifier::tls::verified_peer(&w.investigative.chain[0]).unwrap();
    assert!(leaf.expires_at > common::system_now() + 60, "{leaf:?}");
    let (s, c) = make();
    refused_by_server(exchange(s, c).await, "incident INC-1 is revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_band_is_refused() {
    let w = world().await;
    let (s, c) = (
        server(&w.source, Authorizer::remediation(&base()), &w.service),
        client(&w.source, the_service(), &w.investigative),
    );
    refused_by_server(
        exchange(s, c).await,
        "trust domain investigate.example.org not allowed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_trust_domain_or_another_deployments_ca_is_refused() {
    let w = world().await;
    // Another tenant's writ: the same names, its own CAs. Its SVID names a trust domain
    // we know, but does not chain to that trust domain's bundle.
    let other = start(CaConfig::default()).await;
    profiles(&other);
    open(&other, "INC-1");
    let impostor = svid_in(&other, "investigate.example.org").await;
    let (s, c) = (
        server(&w.source, Authorizer::investigative(&base()), &w.service),
        client(&w.source, the_service(), &impostor),
    );
    refused_by_server(exchange(s, c).await, "does not verify against");

    // Another trust domain altogether: no bundle for it, so it is not trusted at all.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(writ::store::Store::open(&dir.path().join("s.redb")).unwrap());
    let acme = writ::ca::CaSet::open(
        writ_verifier::parse_trust_domain("acme.org").unwrap(),
        &[],
        &dir.path().join("keys"),
        store,
        CaConfig::default(),
        Arc::new(writ::clock::SystemClock),
    )
    .unwrap();
    let (key, csr) = common::csr();
    let mut claims = writ::WritClaims::new(Band::Investigative);
    claims.incident = Some("INC-1".into());
    let minted = acme
        .mint_x509(
            Band::Investigative,
            writ::ca::SubjectKey::Csr(&csr),
            &writ::ca::SvidRequest {
                spiffe_id: common::id("spiffe://investigate.acme.org/agent/fixer/incident/INC-1"),
                ttl: None,
                claims: Some(claims),
                dns_names: Vec::new(),
            },
        )
        .unwrap();
    let foreign = Cred {
        chain: vec![CertificateDer::from(minted.cert_der)],
        key: key.serialize_der(),
    };
    let (s, c) = (
        server(&w.source, Authorizer::investigative(&base()), &w.service),
        client(&w.source, the_service(), &foreign),
    );
    refused_by_server(
        exchange(s, c).await,
        "trust domain investigate.acme.org is not trusted",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let w = world().await;
    let leaf = writ_verifier::tls::verified_peer(&w.investigative.chain[0]).unwrap();
    // The server's clock stands one second past the client's notAfter (rustls' time
    // provider): a real handshake, no waiting.
    let after = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(leaf.expires_at + 1).unwrap(),
    ));
    let just_before = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(leaf.expires_at - 1).unwrap(),
    ));
    let (s, _) = exchange(
        server_at(
            &w.source,
            Authorizer::investigative(&base()),
            &w.service,
            Some(just_before),
        ),
        client(&w.source, the_service(), &w.investigative),
    )
    .await;
    assert!(s.is_ok(), "valid until its notAfter: {s:?}");
    let (s, c) = (
        server_at(
            &w.source,
            Authorizer::investigative(&base()),
            &w.service,
            Some(after),
        ),
        client(&w.source, the_service(), &w.investigative),
    );
    refused_by_server(exchange(s, c).await, "Expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_digest_mismatch_is_refused_and_a_revoked_grant_too() {
    let w = world().await;
    let grant = approved_grant(&w.dev, "INC-1");
    let remediation = svid_in(&w.dev, "remediate.example.org").await;
    let with = |authorizer: Authorizer| {
        (
            server(&w.source, authorizer, &w.service),
            client(&w.source, the_service(), &remediation),
        )
    };
    let (s, c) = with(
        Authorizer::remediation(&base())
            .grant(grant.as_str())
            .plan(PLAN.as_bytes())
            .target("deploy/checkout"),
    );
    let (s, _) = exchange(s, c).await;
    assert!(s.unwrap().ends_with(&format!("/grant/{grant}")));

    let (s, c) = with(Authorizer::remediation(&base()).plan(b"kubectl delete ns shop\n"));
    refused_by_server(exchange(s, c).await, "plan digest");

    let mut updates = w.source.updates();
    let now = w.dev.issuer.cas.now();
    w.dev
        .issuer
        .registry
        .end_grant("default", &grant, GrantState::Revoked, "alice", "done", now)
        .unwrap();
    let revoked = w.dev.issuer.registry.snapshot().generation;
    tokio::time::timeout(
        PATIENCE,
        updates.wait_for(|p| p.revocation_generation >= revoked),
    )
    .await
    .expect("the revocation reaches the verifier in time")
    .unwrap();
    let (s, c) = with(Authorizer::remediation(&base()).plan(PLAN.as_bytes()));
    refused_by_server(exchange(s, c).await, &format!("grant {grant} is revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_with_the_wrong_audience_or_band_are_refused() {
    let w = world().await;
    let id = writ_verifier::parse_spiffe_id(
        "spiffe://investigate.example.org/agent/fixer/incident/INC-1",
    )
    .unwrap();
    let token = w
        .dev
        .client()
        .await
        .fetch_jwt_token(&["ops-api"], Some(&id))
        .await
        .unwrap();
    let keys = w.source.jwt_keys();
    let decide = |audience: &str, authorizer: Authorizer| {
        authorize_jwt_svid(
            &token,
            audience,
            &keys,
            &authorizer,
            &w.source.revocations().snapshot(),
            common::system_now(),
        )
    };
    let peer = decide(
        "ops-api",
        Authorizer::investigative(&base()).incident("INC-1"),
    )
    .unwrap();
    assert_eq!(peer.spiffe_id, id);
    assert_eq!(
        decide("logs-api", Authorizer::investigative(&base())).unwrap_err(),
        JwtRefused::Invalid(JwtSvidError::Audience("logs-api".into()))
    );
    let err = decide("ops-api", Authorizer::remediation(&base())).unwrap_err();
    assert!(
        matches!(&err, JwtRefused::Denied(writ_verifier::DenyReason::TrustDomain { found, .. }) if found == "investigate.example.org"),
        "{err:?}"
    );

    // And a token of a closed incident is refused like its certificate.
    let mut updates = w.source.updates();
    w.dev.close("INC-1");
    let closed = w.dev.issuer.registry.snapshot().generation;
    tokio::time::timeout(
        PATIENCE,
        updates.wait_for(|p| p.revocation_generation >= closed),
    )
    .await
    .expect("the revocation reaches the verifier in time")
    .unwrap();
    let err = decide("ops-api", Authorizer::investigative(&base())).unwrap_err();
    assert!(
        matches!(
            err,
            JwtRefused::Denied(writ_verifier::DenyReason::Revoked(_))
        ),
        "{err:?}"
    );
}

/// A Unix-socket relay to the agent's socket that can be cut: dropping it closes every
/// relayed connection, as an agent crash would.
struct Relay {
    tasks: tokio::task::JoinSet<()>,
}

impl Relay {
    async fn start(at: &std::path::Path, to: &std::path::Path) -> Relay {
        let _ = std::fs::remove_file(at);
        let listener = tokio::net::UnixListener::bind(at).unwrap();
        let to = to.to_owned();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = to.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::UnixStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { tasks }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet of connections, aborting each.
        self.tasks.abort_all();
    }
}

/// A source told to fail closed refuses every peer once the agent's feed has been gone for
/// its grace period (here: at once), and accepts again when the feed is back. The source
/// reaches the real agent through a relay; cutting the relay is the agent going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_closed_source_refuses_everyone_while_the_feed_is_lost() {
    let w = world().await;
    let socket = w.dev.socket.with_file_name("relay.sock");
    let relay = Relay::start(&socket, &w.dev.socket).await;
    let options = writ_verifier::SourceOptions {
        fail_closed_after: Some(Duration::ZERO),
    };
    let strict = Arc::new(
        tokio::time::timeout(
            PATIENCE,
            WorkloadApiSource::connect_with(&format!("unix://{}", socket.display()), options),
        )
        .await
        .expect("source ready in time")
        .unwrap(),
    );
    let make = || {
        (
            server(&strict, Authorizer::investigative(&base()), &w.service),
            client(&w.source, the_service(), &w.investigative),
        )
    };
    let (s, c) = make();
    let (s, _) = exchange(s, c).await;
    assert!(s.is_ok(), "{s:?}");

    let mut updates = strict.updates();
    drop(relay);
    tokio::time::timeout(PATIENCE, updates.wait_for(|p| p.revocation_unavailable))
        .await
        .expect("the source notices the lost feed in time")
        .unwrap();
    let (s, c) = make();
    refused_by_server(exchange(s, c).await, "revocation feed has been unavailable");
    // The default source (fail-open) still accepts the same peer meanwhile.
    let (s, _) = exchange(
        server(&w.source, Authorizer::investigative(&base()), &w.service),
        client(&w.source, the_service(), &w.investigative),
    )
    .await;
    assert!(s.is_ok(), "{s:?}");

    // The agent is reachable again: the next set clears the mark.
    let _relay = Relay::start(&socket, &w.dev.socket).await;
    tokio::time::timeout(PATIENCE, updates.wait_for(|p| !p.revocation_unavailable))
        .await
        .expect("the source reconnects in time")
        .unwrap();
    let (s, c) = make();
    let (s, _) = exchange(s, c).await;
    assert!(s.is_ok(), "{s:?}");
}
