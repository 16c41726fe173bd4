//! A compromised CA key, end to end in process (docs/operations.md, "A compromised CA"):
//! a real issuer and agent on temp sockets, the stock `spiffe` crate client on the
//! Workload API, writ-verifier's live source on the same socket, and writ's generated
//! client on the admin socket (the calls `writ authority taint | revoke` make).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::dev::{Dev, my_uid, start};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use writ::ca::CaConfig;
use writ::clock::Clock;
use writ::proto::admin::{self as admin_pb, admin_client::AdminClient};
use writ_verifier::revocation::RevocationKind;
use writ_verifier::tls::{X509BundleSource, verified_peer_chain};
use writ_verifier::x509::Usage;
use writ_verifier::{Peer, WorkloadApiSource, verify_x509_svid};

/// How long any one message may take before the test fails (not a latency claim).
const PATIENCE: Duration = Duration::from_secs(20);

const TRIAGE_INC_1: &str = "spiffe://investigate.example.org/agent/triage/incident/INC-1";

/// The admin API of `dev`'s issuer on its own temp socket; stops with the returned sender.
async fn admin(dev: &Dev) -> (AdminClient<tonic::transport::Channel>, watch::Sender<bool>) {
    let stop = watch::channel(false).0;
    let path = dev.serve_admin(&stop).await;
    let client = AdminClient::new(writ::uds::channel(&path).await.unwrap());
    (client, stop)
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
}

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap(),
    )
}

/// The leaf and chain of the one SVID in a Workload API message.
fn chain_of(ctx: &spiffe::X509Context) -> Vec<CertificateDer<'static>> {
    let [svid] = ctx.svids() else {
        panic!("one SVID expected: {}", ctx.svids().len());
    };
    assert_eq!(svid.spiffe_id().to_string(), TRIAGE_INC_1);
    svid.cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect()
}

/// The CA certificates of the investigative bundle in a Workload API message.
fn bundle_of(ctx: &spiffe::X509Context) -> Vec<Vec<u8>> {
    let td = spiffe::TrustDomain::new("investigate.example.org").unwrap();
    ctx.bundle_set()
        .get(&td)
        .expect("the investigative bundle")
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// What writ-verifier's live source says of `chain`: the chain check against the bundle
/// it holds now, then the revocation set it holds now.
fn judge(source: &WorkloadApiSource, chain: &[CertificateDer<'_>]) -> Result<(), String> {
    let td = writ_verifier::parse_trust_domain("investigate.example.org").unwrap();
    let bundle = source.x509_authorities(&td).unwrap_or_default();
    let verified = verify_x509_svid(chain, &bundle, &td, Usage::Client, now())
        .map_err(|e| format!("chain: {e}"))?;
    match source.revocations().check(&Peer::from_x509(&verified)) {
        Some(revoked) => Err(format!("revoked: {:?} {}", revoked.kind, revoked.id)),
        None => Ok(()),
    }
}

/// Waits until writ-verifier's source has applied what the agent sends after a change
/// (each stream delivers whole sets, so waiting for `done` is waiting on the event).
async fn until(source: &WorkloadApiSource, what: &str, done: impl Fn(&WorkloadApiSource) -> bool) {
    let mut updates = source.updates();
    within(what, async {
        while !done(source) {
            updates.changed().await.expect("the source stopped");
        }
    })
    .await;
}

async fn authorities(
    client: &mut AdminClient<tonic::transport::Channel>,
) -> Vec<admin_pb::Authority> {
    client
        .show_authorities(admin_pb::AuthorityRequest {
            band: "investigative".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .authorities
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tainted_authority_is_replaced_at_once_refused_by_writ_verifiers_then_revoked() {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[writ::policy::Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    let endpoint = format!("unix://{}", dev.socket.display());
    let workload = dev.client().await;
    let mut stream = workload.stream_x509_contexts().await.unwrap();
    let first = within("the first X.509 context", stream.next())
        .await
        .unwrap()
        .unwrap();
    let old = chain_of(&first);
    assert_eq!(bundle_of(&first).len(), 1);
    let old_jwt = workload
        .fetch_jwt_svid(["ops-api"], None)
        .await
        .unwrap()
        .token()
        .to_owned();
    let source = within(
        "writ-verifier's source",
        WorkloadApiSource::connect(&endpoint),
    )
    .await
    .unwrap();
    judge(&source, &old).expect("the first SVID verifies before the taint");

    let (mut client, _stop_admin) = admin(&dev).await;
    let before = authorities(&mut client).await;
    let [active] = before.as_slice() else {
        panic!("one authority: {before:?}");
    };
    let audit_before = dev.issuer.audit.size();

    // Taint the signer: a new authority signs at once.
    let tainted = client
        .taint_authority(admin_pb::AuthorityRequest {
            band: "investigative".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .authorities;
    assert_eq!(tainted.len(), 1, "{tainted:?}");
    assert_eq!(tainted[0].id, active.id);
    assert_ne!(tainted[0].tainted_at, 0);
    assert_eq!(tainted[0].state, "retired");
    let after = authorities(&mut client).await;
    assert_eq!(after.len(), 2, "{after:?}");
    let fresh = after.iter().find(|a| a.id != active.id).unwrap();
    assert_eq!(fresh.state, "active");
    assert_eq!(fresh.tainted_at, 0);

    // The stock client sees the holder re-issued under the new authority, with both
    // authorities still in its bundle (nothing revoked yet).
    let reissued = within("the re-issued SVID", async {
        loop {
            let ctx = stream.next().await.expect("stream open").unwrap();
            if ctx.svids().len() == 1 && chain_of(&ctx) != old {
                return ctx;
            }
        }
    })
    .await;
    let new = chain_of(&reissued);
    assert_eq!(bundle_of(&reissued).len(), 2);
    let issuer_of = |der: &[u8]| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.issuer().to_string()
    };
    assert!(
        issuer_of(&new[0]).contains(&fresh.id),
        "{}",
        issuer_of(&new[0])
    );
    assert!(issuer_of(&old[0]).contains(&active.id));

    // writ-verifier refuses the old chain by its authority, and takes the new one.
    until(
        &source,
        "the taint in writ-verifier's revocation set",
        |s| judge(s, &old).is_err(),
    )
    .await;
    let refused = judge(&source, &old).unwrap_err();
    assert!(
        refused.contains("Authority") && refused.contains(&tainted[0].key_id),
        "{refused}"
    );
    judge(&source, &new).expect("the re-issued SVID verifies");
    // A connection verified before the taint, re-checked per request from its chain:
    // the chain names its authority, which the revocation set now refuses.
    let per_request = verified_peer_chain(&old, &source, Usage::Client, now())
        .expect("the old chain still chains to the bundle");
    assert_eq!(
        per_request.authority,
        writ_verifier::Authority::X509(tainted[0].key_id.clone())
    );
    assert_eq!(
        source.revocations().check(&per_request).map(|r| r.kind),
        Some(RevocationKind::Authority)
    );

    // JWT-SVIDs: the old token's key is refused, a new token is signed by the new key.
    let jwt_keys = source.jwt_keys();
    let validate = |token: &str| {
        let jwt = writ_verifier::validate_jwt_svid(
            token,
            "ops-api",
            writ::clock::SystemClock.unix(),
            |td, kid| jwt_keys.key(td, kid),
        )
        .unwrap();
        source.revocations().check(&Peer::from_jwt(&jwt).unwrap())
    };
    let revoked = validate(&old_jwt).expect("the old token is refused");
    assert_eq!(revoked.kind, RevocationKind::JwtAuthority);
    assert_eq!(revoked.id, active.jwt_kid);
    let new_jwt = workload
        .fetch_jwt_svid(["ops-api"], None)
        .await
        .unwrap()
        .token()
        .to_owned();
    assert_eq!(validate(&new_jwt), None);

    // Tainting twice is refused, and changes nothing.
    let again = client
        .taint_authority(admin_pb::AuthorityRequest {
            band: "investigative".into(),
            id: active.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    assert_eq!(authorities(&mut client).await, after);

    // Revoke: refused while what it signed is unexpired, then forced.
    let early = client
        .revoke_authority(admin_pb::AuthorityRequest {
            band: "investigative".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(early.code(), tonic::Code::FailedPrecondition, "{early:?}");
    assert!(early.message().contains("--force"), "{early:?}");
    // The active authority is never revoked.
    let active_now = client
        .revoke_authority(admin_pb::AuthorityRequest {
            band: "investigative".into(),
            id: fresh.id.clone(),
            force: true,
        })
        .await
        .unwrap_err();
    assert_eq!(active_now.code(), tonic::Code::FailedPrecondition);
    assert!(
        active_now.message().contains("not tainted"),
        "{active_now:?}"
    );
    assert_eq!(authorities(&mut client).await, after);

    let revoked = client
        .revoke_authority(admin_pb::AuthorityRequest {
            band: "investigative".into(),
            force: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .authorities;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].id, active.id);
    let left = authorities(&mut client).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].id, fresh.id);

    // It leaves every bundle: the stock client's, and writ-verifier's (so the old chain
    // no longer verifies at all), and its key files are gone.
    within("the bundle without the revoked authority", async {
        loop {
            let ctx = stream.next().await.expect("stream open").unwrap();
            if bundle_of(&ctx).len() == 1 {
                assert_eq!(chain_of(&ctx), new);
                return;
            }
        }
    })
    .await;
    until(&source, "the bundle change in writ-verifier", |s| {
        judge(s, &old).is_err_and(|e| e.starts_with("chain:"))
    })
    .await;
    judge(&source, &new).expect("the re-issued SVID still verifies");
    // Per request, too: a chain whose authority left the bundle names no peer.
    assert!(verified_peer_chain(&old, &source, Usage::Client, now()).is_none());
    assert!(verified_peer_chain(&new, &source, Usage::Client, now()).is_some());
    let keys = dev
        .issuer
        .config
        .data_dir
        .join("keys")
        .join("investigate.example.org");
    let names: Vec<String> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains(&active.id)),
        "{names:?} in {}",
        keys.display()
    );

    // Both changes are in the audit log, by whom and with the key id.
    let records: Vec<serde_json::Value> = dev
        .issuer
        .audit
        .read(audit_before, 1000)
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| serde_json::from_slice(&bytes).unwrap())
        .filter(|r: &serde_json::Value| {
            r["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("authority."))
        })
        .collect();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["authority.taint", "authority.revoke"],
        "{records:?}"
    );
    for r in &records {
        assert_eq!(r["detail"]["authority"], active.id.as_str());
        assert_eq!(r["detail"]["key_id"], tainted[0].key_id.as_str());
    }
    assert_eq!(records[1]["detail"]["forced"], true);
}
