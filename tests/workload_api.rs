//! The Workload API end to end, in process: a real issuer and agent on temp sockets,
//! driven by the real Rust `spiffe` crate client (and by writ's generated client where a
//! test needs to break the rules the `spiffe` client follows).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::dev::{my_uid, raw_client, start};

use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::StreamExt;
use writ::ca::CaConfig;
use writ::policy::Selector;
use writ_verifier::claims::{JWT_CLAIMS_KEY, WritClaims};
use writ_verifier::x509::Usage;
use writ_verifier::{Band, verify_x509_svid};

fn id_of(agent: &str, incident: &str) -> String {
    format!("spiffe://investigate.example.org/agent/{agent}/incident/{incident}")
}

/// The checks the clients don't make: the SVID chains to the bundle it came with, in its
/// own trust domain, and the key is the certificate's.
fn check_svid(svid: &spiffe::X509Svid, bundle: &[u8]) -> WritClaims {
    let leaf = CertificateDer::from(svid.leaf().as_bytes().to_vec());
    let cas = writ::agent::cache::split_der(bundle);
    let td = svid.spiffe_id().trust_domain().clone();
    let verified = verify_x509_svid(&[leaf], &cas, &td, Usage::Client, UnixTime::now()).unwrap();
    assert_eq!(&verified.spiffe_id, svid.spiffe_id());
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        svid.private_key().as_ref(),
        &rng,
    )
    .unwrap();
    let sig = key.sign(&rng, b"proof of possession").unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).unwrap();
    UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    )
    .verify(b"proof of possession", sig.as_ref())
    .expect("private key matches the certificate");
    verified.claims.expect("writ claims present")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_profile_means_permission_denied_with_the_retry_phrase() {
    let dev = start(CaConfig::default()).await;
    // The `spiffe` crate recognises the spec's phrase and reports it as NoIdentityIssued
    // (the error it retries on).
    let err = dev.client().await.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    // A profile but no open incident: still nothing.
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    let err = dev.client().await.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_incident_gives_a_verified_svid_with_claims() {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &["logs:read"]);
    dev.open("INC-1", "triage", 1);
    let client = dev.client().await;
    let ctx = client.fetch_x509_context().await.unwrap();
    let svid = ctx.default_svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), id_of("triage", "INC-1"));
    assert_eq!(svid.hint(), Some("INC-1"));
    // Bundles of all three trust domains reach the workload.
    for td in [
        "investigate.example.org",
        "remediate.example.org",
        "example.org",
    ] {
        let td = spiffe::TrustDomain::new(td).unwrap();
        assert!(
            ctx.bundle_set().get(&td).is_some(),
            "missing bundle for {td}"
        );
    }
    let bundle = dev.issuer.cas.bundle_set().unwrap();
    let claims = check_svid(svid, &bundle.by_band(Band::Investigative).unwrap().x509_der);
    assert_eq!(claims.band, Some(Band::Investigative));
    assert_eq!(claims.incident.as_deref(), Some("INC-1"));
    assert_eq!(claims.scopes, ["logs:read"]);
    // Nothing signed for the investigative band verifies against the remediation bundle.
    let leaf = CertificateDer::from(svid.leaf().as_bytes().to_vec());
    let rem = writ::agent::cache::split_der(&bundle.by_band(Band::Remediation).unwrap().x509_der);
    let td = spiffe::TrustDomain::new("investigate.example.org").unwrap();
    assert!(verify_x509_svid(&[leaf], &rem, &td, Usage::Client, UnixTime::now()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_an_incident_redacts_it_from_open_streams() {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    dev.open("INC-2", "triage", 2);
    let client = dev.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let ids: Vec<String> = first
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(ids, [id_of("triage", "INC-1"), id_of("triage", "INC-2")]);
    let hints: BTreeSet<_> = first
        .svids()
        .iter()
        .map(|s| s.hint().unwrap().to_owned())
        .collect();
    assert_eq!(hints.len(), 2, "hints are unique within a response");

    dev.close("INC-1");
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a full-state message after close")
        .unwrap()
        .unwrap();
    let ids: Vec<String> = second
        .svids()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    assert_eq!(ids, [id_of("triage", "INC-2")]);

    dev.close("INC-2");
    let last = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream must end when the last identity goes");
    match last {
        Some(Err(e)) => assert!(
            matches!(e, spiffe::WorkloadApiError::NoIdentityIssued),
            "{e:?}"
        ),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    // And a new request is refused too: issuance for closed incidents never resumes.
    let err = dev.client().await.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(err, spiffe::WorkloadApiError::NoIdentityIssued),
        "{err:?}"
    );
    let id = writ_verifier::parse_spiffe_id(&id_of("triage", "INC-1")).unwrap();
    assert!(
        dev.issuer
            .sign_workload_jwt(&id, &["a".into()], "test")
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_ttl_svids_rotate_before_they_expire() {
    let ca = CaConfig {
        x509_svid_ttl: Duration::from_secs(4),
        ..CaConfig::default()
    };
    let dev = start(ca).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    let client = dev.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let first_leaf = first.default_svid().unwrap().leaf().as_bytes().to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&first_leaf).unwrap();
    let not_after = cert.validity().not_after.timestamp();
    let second = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("a rotated SVID arrives")
        .unwrap()
        .unwrap();
    let svid = second.default_svid().unwrap();
    assert_ne!(svid.leaf().as_bytes(), &first_leaf[..], "a new certificate");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        now < not_after,
        "the new SVID arrived before the old one expired"
    );
    let bundle = dev.issuer.cas.bundle_set().unwrap();
    check_svid(svid, &bundle.by_band(Band::Investigative).unwrap().x509_der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_fetch_and_validate_through_the_workload_api() {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &["logs:read"]);
    dev.open("INC-7", "triage", 1);
    let client = dev.client().await;
    let token = client.fetch_jwt_token(["logs-api"], None).await.unwrap();
    let validated = client.validate_jwt_token("logs-api", &token).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), id_of("triage", "INC-7"));
    assert!(
        client
            .validate_jwt_token("other-api", &token)
            .await
            .is_err()
    );
    // The `spiffe` crate validates it offline against the JWT bundles we serve, too.
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let svid = spiffe::JwtSvid::parse_and_validate(&token, &bundles, &["logs-api"]).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let writ = WritClaims::from_json(&claims[JWT_CLAIMS_KEY]).unwrap();
    assert_eq!(writ.incident.as_deref(), Some("INC-7"));
    assert_eq!(svid.spiffe_id().to_string(), id_of("triage", "INC-7"));
    // A tampered token is refused by ValidateJWTSVID.
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(
        client
            .validate_jwt_token("logs-api", &tampered)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_breaking_requests_get_the_specified_statuses() {
    use writ::proto::workload as pb;
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    let mut client = raw_client(&dev).await;

    // No security header: InvalidArgument, on every RPC.
    let status = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    fn with_header<T>(body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        request
    }
    // No audience: InvalidArgument.
    let status = client
        .fetch_jwtsvid(with_header(pb::JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // Someone else's identity: PermissionDenied.
    let status = client
        .fetch_jwtsvid(with_header(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: id_of("other", "INC-1"),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // WIT profile: Unimplemented.
    let status = client
        .fetch_witsvid(with_header(pb::WitsvidRequest {
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    // Garbage JWT: InvalidArgument, and the agent keeps serving.
    let status = client
        .validate_jwtsvid(with_header(pb::ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x.y.z".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let ok = client
        .fetch_x509svid(with_header(pb::X509svidRequest {}))
        .await
        .unwrap();
    let first = ok.into_inner().next().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, id_of("triage", "INC-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket_does_not_disturb_other_clients() {
    use tokio::io::AsyncWriteExt;
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0u8; 4096][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff",
    ] {
        let mut raw = tokio::net::UnixStream::connect(&dev.socket).await.unwrap();
        let _ = raw.write_all(junk).await;
        drop(raw);
    }
    // A client that opens streams and never reads them.
    let lazy = dev.client().await;
    let _never_read = lazy.stream_x509_contexts().await.unwrap();
    let ctx = dev.client().await.fetch_x509_context().await.unwrap();
    assert_eq!(
        ctx.default_svid().unwrap().spiffe_id().to_string(),
        id_of("triage", "INC-1")
    );
    assert!(*dev.agent.streams.borrow() >= 1);
}

/// The stock-client example binary, built by `cargo test` beside this test.
fn example_bin() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    deps.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/svid-fetch")
}

fn fetch_as(uid: u32, socket: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(example_bin())
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", socket.display()),
        )
        .output()
        .expect("setpriv runs (util-linux)");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_under_different_uids_get_only_their_own_identities() {
    if !common::require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dev = start(CaConfig::default()).await;
    // Let other uids reach the socket inside the temp dir.
    let mut dir = dev.socket.parent().unwrap().to_path_buf();
    while dir.starts_with(std::env::temp_dir()) && dir != std::env::temp_dir() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir = dir.parent().unwrap().to_path_buf();
    }
    dev.profile("alpha", &[Selector::Uid(65534)], &[]);
    dev.profile("beta", &[Selector::Uid(65533)], &[]);
    dev.open("INC-A", "alpha", 1);
    dev.open("INC-B", "beta", 2);
    let alpha = fetch_as(65534, &dev.socket);
    assert_eq!(alpha["svids"].as_array().unwrap().len(), 1, "{alpha}");
    assert_eq!(alpha["svids"][0]["spiffe_id"], id_of("alpha", "INC-A"));
    let beta = fetch_as(65533, &dev.socket);
    assert_eq!(beta["svids"].as_array().unwrap().len(), 1, "{beta}");
    assert_eq!(beta["svids"][0]["spiffe_id"], id_of("beta", "INC-B"));
    let stranger = fetch_as(65532, &dev.socket);
    let error = stranger["error"]
        .as_str()
        .expect("no identity for an unknown uid");
    assert!(error.contains("NoIdentityIssued"), "{error}");
}

async fn next_json(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("py-spiffe reports within 30 s")
        .unwrap()
        .expect("py-spiffe still running");
    serde_json::from_str(&line).unwrap()
}

/// The venv interpreter with pinned py-spiffe (scripts/test sets WRIT_PYTHON).
fn python() -> Option<String> {
    let python = std::env::var("WRIT_PYTHON").ok();
    if python.is_none() {
        eprintln!("skipped: set WRIT_PYTHON to a venv with tests/python/requirements.txt");
    }
    python
}

fn py_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/workload_check.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_takes_svids_signed_through_an_intermediate() {
    use tokio::io::AsyncBufReadExt;
    let Some(python) = python() else { return };
    let dev = start(CaConfig {
        sign_with_intermediate: true,
        ..CaConfig::default()
    })
    .await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    let mut child = tokio::process::Command::new(python)
        .arg(py_script())
        .args(["watch", "1"])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", dev.socket.display()),
        )
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = next_json(&mut lines).await;
    assert_eq!(first["ids"], serde_json::json!([id_of("triage", "INC-1")]));
    // py-spiffe parsed [leaf, intermediate]; the chain leads to the root-only bundle.
    assert_eq!(first["chain_lens"], serde_json::json!([2]), "{first}");
    assert_eq!(first["verified"], true, "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_rotates_and_sees_redaction() {
    use tokio::io::AsyncBufReadExt;
    let Some(python) = python() else { return };
    let ca = CaConfig {
        x509_svid_ttl: Duration::from_secs(6),
        ..CaConfig::default()
    };
    let dev = start(ca).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    dev.open("INC-2", "triage", 2);
    let mut child = tokio::process::Command::new(python)
        .arg(py_script())
        .args(["watch", "50"])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", dev.socket.display()),
        )
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = next_json(&mut lines).await;
    assert_eq!(
        first["ids"],
        serde_json::json!([id_of("triage", "INC-1"), id_of("triage", "INC-2")]),
        "{first}"
    );
    assert_eq!(first["verified"], true, "{first}");

    // Rotation: a new serial arrives before the first certificate expires.
    let first_serial = first["serials"][0].clone();
    let first_not_after = first["not_after"][0].as_i64().unwrap();
    let rotated = loop {
        let update = next_json(&mut lines).await;
        if update["serials"][0] != first_serial {
            break update;
        }
    };
    assert_eq!(rotated["verified"], true, "{rotated}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        now < first_not_after,
        "rotation reached py-spiffe before the old SVID expired"
    );

    // Redaction: closing INC-1 leaves only INC-2; closing INC-2 ends the stream.
    dev.close("INC-1");
    let redacted = loop {
        let update = next_json(&mut lines).await;
        if update["ids"].as_array().map(Vec::len) == Some(1) {
            break update;
        }
    };
    assert_eq!(
        redacted["ids"],
        serde_json::json!([id_of("triage", "INC-2")])
    );
    dev.close("INC-2");
    let end = loop {
        let update = next_json(&mut lines).await;
        if update.get("error").is_some() {
            break update;
        }
    };
    assert!(
        end["error"].as_str().unwrap().contains("PERMISSION_DENIED")
            || end["error"]
                .as_str()
                .unwrap()
                .contains("no identity issued"),
        "{end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_and_validates_jwt_svids() {
    let Some(python) = python() else { return };
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-5", "triage", 1);
    let out = tokio::process::Command::new(python)
        .arg(py_script())
        .args(["jwt", "logs-api"])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", dev.socket.display()),
        )
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["sub"], id_of("triage", "INC-5"));
    assert_eq!(result["validated"], true);
    assert!(
        dev.agent.authority_stats.rewrites() > 0,
        "py-spiffe went through the :authority adapter"
    );
}

/// The agent renews at half-life and stops serving at expiry by the clock it was given,
/// not the system's: a week ahead of the system clock (so nothing signed then would even
/// verify by system time), the SVID is kept until the injected clock reaches its renewal
/// instant, renewed at that instant, and the Workload API then answers with the fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_and_expiry_follow_the_agents_injected_clock() {
    let start = common::system_now() + 7 * 24 * 3600;
    let clock = writ::clock::ManualClock::at(start);
    let dev =
        common::dev::start_with_clock(CaConfig::default(), std::sync::Arc::new(clock.clone()))
            .await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    let id = id_of("triage", "INC-1");
    let policy = dev.agent.node.policy().borrow().clone();
    let entitlement = writ::policy::entitlement_for(
        &policy,
        dev.agent.node.base(),
        &writ_verifier::parse_spiffe_id(&id).unwrap(),
    )
    .expect("the open incident entitles triage");

    let first = dev.agent.cache.get(&entitlement).await.unwrap();
    assert_eq!(first.issued_at, start, "issued at the injected time");
    let half_life = (first.not_after - first.issued_at) / 2;
    assert!(
        (first.renew_at - first.issued_at - half_life).abs() <= half_life / 10 + 1,
        "renewal at half-life ±10 %: {first:?} renews at {}",
        first.renew_at
    );

    // One second before the renewal instant: kept, and the next wake-up is that instant.
    let move_to = |at: i64| clock.advance(Duration::from_secs((at - clock_now(&clock)) as u64));
    move_to(first.renew_at - 1);
    assert_eq!(
        dev.agent.cache.maintain(&policy).await,
        Some(first.renew_at)
    );
    let kept = dev.agent.cache.current(&id).unwrap();
    assert_eq!(kept.serial, first.serial, "not renewed before half-life");

    // At the renewal instant: a fresh certificate, issued at the injected time.
    move_to(first.renew_at);
    let next_due = dev.agent.cache.maintain(&policy).await.unwrap();
    let renewed = dev.agent.cache.current(&id).unwrap();
    assert_ne!(renewed.serial, first.serial, "renewed at half-life");
    assert_eq!(renewed.issued_at, first.renew_at);
    assert_eq!(next_due, renewed.renew_at);
    let svid = dev.client().await.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.leaf().as_bytes(), &renewed.cert_der[..]);

    // Expiry, by the same clock: held until notAfter, not served from it on.
    move_to(renewed.not_after - 1);
    assert!(dev.agent.cache.current(&id).is_some());
    move_to(renewed.not_after);
    assert!(
        dev.agent.cache.current(&id).is_none(),
        "an SVID at its notAfter is not served"
    );
}

fn clock_now(clock: &writ::clock::ManualClock) -> i64 {
    writ::clock::Clock::unix(clock)
}

/// Many streams of one workload share each computation of its state (one per change, not
/// one per stream): every stream still sees every change, in order, and the identity
/// opened after they connected reaches them all, as does its close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_of_one_workload_each_see_every_change() {
    let dev = start(CaConfig::default()).await;
    dev.profile("triage", &[Selector::Uid(my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    let mut streams = Vec::new();
    for _ in 0..24 {
        let client = dev.client().await;
        let mut stream = client.stream_x509_contexts().await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.svids().len(), 1);
        streams.push(stream);
    }
    let ids = |ctx: &spiffe::X509Context| -> Vec<String> {
        ctx.svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect()
    };
    dev.open("INC-2", "triage", 2);
    for stream in &mut streams {
        // Until the new identity is there (a policy change may come before its SVID).
        loop {
            let ctx = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an update with INC-2")
                .unwrap()
                .unwrap();
            if ids(&ctx) == [id_of("triage", "INC-1"), id_of("triage", "INC-2")] {
                break;
            }
            assert_eq!(ids(&ctx), [id_of("triage", "INC-1")]);
        }
    }
    dev.close("INC-1");
    for stream in &mut streams {
        let ctx = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an update without INC-1")
            .unwrap()
            .unwrap();
        assert_eq!(ids(&ctx), [id_of("triage", "INC-2")]);
    }
}
