//! Revoking one X.509-SVID by serial, end to end in process (docs/architecture.md,
//! "Revocation"): a real issuer and agent on temp sockets, the stock `spiffe` crate client
//! on the Workload API, writ's generated clients on the admin socket and the revocation
//! feed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::dev::{Dev, my_uid, start};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use writ::ca::CaConfig;
use writ::proto::admin::{self as admin_pb, admin_client::AdminClient};
use writ::proto::revocation::{self as pb, entry::Kind, revocation_client::RevocationClient};
use writ::store::SvidRecord;
use writ_verifier::x509::Usage;
use writ_verifier::{Band, verify_x509_svid};

/// How long any one message may take before the test fails (not a latency claim).
const PATIENCE: Duration = Duration::from_secs(10);

const TRIAGE_INC_1: &str = "spiffe://investigate.example.org/agent/triage/incident/INC-1";

/// The admin API of `dev`'s issuer on its own temp socket; stops with the returned sender.
async fn admin(dev: &Dev) -> (AdminClient<tonic::transport::Channel>, watch::Sender<bool>) {
    let stop = watch::channel(false).0;
    let path = dev.serve_admin(&stop).await;
    let client = AdminClient::new(writ::uds::channel(&path).await.unwrap());
    (client, stop)
}

async fn feed(dev: &Dev) -> tonic::Streaming<pb::RevocationSet> {
    let mut request = tonic::Request::new(pb::WatchRequest {});
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    RevocationClient::new(writ::uds::channel(&dev.socket).await.unwrap())
        .watch(request)
        .await
        .unwrap()
        .into_inner()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = Option<T>>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .unwrap_or_else(|| panic!("{what}: the stream ended"))
}

/// The serial of a DER certificate, read by x509-parser (independently of writ).
fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// (SPIFFE ID, serial) of every SVID in a Workload API message.
fn held(ctx: &spiffe::X509Context) -> Vec<(String, String)> {
    ctx.svids()
        .iter()
        .map(|s| (s.spiffe_id().to_string(), serial_of(s.leaf().as_bytes())))
        .collect()
}

async fn list(
    client: &mut AdminClient<tonic::transport::Channel>,
    incident: &str,
) -> Vec<admin_pb::Svid> {
    client
        .list_svids(admin_pb::ListSvidsRequest {
            incident: incident.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .svids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_serial_leaves_the_stream_is_replaced_and_is_published() {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[writ::policy::Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    let workload = dev.client().await;
    let mut stream = workload.stream_x509_contexts().await.unwrap();
    let first = within("the first X.509 context", stream.next())
        .await
        .unwrap();
    let mut first = held(&first);
    assert_eq!(first.len(), 1, "one identity: {first:?}");
    let (id, revoked) = first.remove(0);
    assert_eq!(id, TRIAGE_INC_1);
    let mut revocations = feed(&dev).await;
    let before = within("the first revocation set", revocations.next())
        .await
        .unwrap();
    assert!(before.entries.is_empty(), "{before:?}");

    let (mut client, _stop_admin) = admin(&dev).await;
    let listed = list(&mut client, "").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].serial, revoked);
    assert!(!listed[0].revoked);

    // Upper case is the same serial.
    let response = client
        .revoke_svid(admin_pb::RevokeSvidRequest {
            serial: revoked.to_uppercase(),
        })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(response.serial, revoked);
    assert!(response.revoked);
    assert_eq!(response.spiffe_id, TRIAGE_INC_1);
    assert_eq!(response.incident, "INC-1");
    let revoked_at = response.revoked_at.unwrap();
    // Durable before the call returned: the store already holds it.
    assert!(
        dev.issuer
            .store
            .revoked_serials()
            .unwrap()
            .iter()
            .any(|r| r.serial == revoked)
    );

    // The stream never again carries the revoked serial; the same identity comes back
    // with a fresh certificate that verifies.
    let fresh = loop {
        let ctx = within("an X.509 context after the revocation", stream.next())
            .await
            .unwrap();
        let now = held(&ctx);
        assert!(
            now.iter().all(|(_, serial)| serial != &revoked),
            "the revoked serial was sent again: {now:?}"
        );
        if let Some((_, serial)) = now.iter().find(|(i, _)| i == TRIAGE_INC_1) {
            let svid = &ctx.svids()[0];
            let bundle = dev.issuer.cas.bundle_set().unwrap();
            let cas = writ::agent::cache::split_der(
                &bundle.by_band(Band::Investigative).unwrap().x509_der,
            );
            verify_x509_svid(
                &[CertificateDer::from(svid.leaf().as_bytes().to_vec())],
                &cas,
                svid.spiffe_id().trust_domain(),
                Usage::Client,
                UnixTime::now(),
            )
            .unwrap();
            break serial.clone();
        }
    };
    assert_ne!(fresh, revoked);
    // A one-shot fetch agrees.
    let fetched = held(&workload.fetch_x509_context().await.unwrap());
    assert_eq!(fetched, [(TRIAGE_INC_1.to_owned(), fresh.clone())]);

    // Verifiers learn the serial, in the SVID's own trust domain.
    let set = loop {
        let set = within("a revocation set naming the serial", revocations.next())
            .await
            .unwrap();
        if set.entries.iter().any(|e| e.id == revoked) {
            break set;
        }
    };
    assert_eq!(set.entries.len(), 1, "{set:?}");
    let entry = &set.entries[0];
    assert_eq!(entry.kind, i32::from(Kind::Serial));
    assert_eq!(entry.trust_domain, "investigate.example.org");
    assert_eq!(entry.revoked_at, revoked_at);
    assert_eq!(entry.epoch, 0);

    // The list shows both, one revoked; the incident filter keeps them, another drops them.
    let listed = list(&mut client, "INC-1").await;
    let state: Vec<(String, bool)> = listed
        .iter()
        .map(|s| (s.serial.clone(), s.revoked))
        .collect();
    assert!(state.contains(&(revoked.clone(), true)), "{state:?}");
    assert!(state.contains(&(fresh.clone(), false)), "{state:?}");
    assert!(list(&mut client, "INC-2").await.is_empty());

    // Revoking it again is refused and changes nothing.
    let generation = dev.issuer.registry.snapshot().generation;
    let again = client
        .revoke_svid(admin_pb::RevokeSvidRequest {
            serial: revoked.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    assert_eq!(dev.issuer.registry.snapshot().generation, generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_serials_are_refused_and_change_nothing() {
    let dev = start(CaConfig::default()).await;
    let now = dev.issuer.cas.now();
    dev.issuer
        .store
        .put_svid(&SvidRecord {
            serial: "4abc".into(),
            spiffe_id: "spiffe://example.org/service/old".into(),
            band: Band::Base,
            authority_id: "a".into(),
            incident: None,
            grant: None,
            not_before: now - 600,
            not_after: now - 300,
        })
        .unwrap();
    let (mut client, _stop_admin) = admin(&dev).await;
    let generation = dev.issuer.registry.snapshot().generation;
    for (serial, code) in [
        ("", tonic::Code::InvalidArgument),
        ("not-hex", tonic::Code::InvalidArgument),
        ("abc", tonic::Code::InvalidArgument),
        (&"ab".repeat(21), tonic::Code::InvalidArgument),
        ("4def", tonic::Code::NotFound),
        ("4abc", tonic::Code::FailedPrecondition),
    ] {
        let status = client
            .revoke_svid(admin_pb::RevokeSvidRequest {
                serial: serial.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{serial:?}: {status:?}");
    }
    assert_eq!(dev.issuer.registry.snapshot().generation, generation);
    assert!(dev.issuer.store.revoked_serials().unwrap().is_empty());
    // Expired SVIDs are not listed: they can be neither presented nor revoked.
    assert!(list(&mut client, "").await.is_empty());
}
