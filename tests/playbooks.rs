//! Guardrailed containment end to end, in process, with real clients (docs/architecture.md,
//! "Policy objects"): a playbook approved in advance by two approvers, activated for an
//! open incident by one incident commander; the agent's workload receives a remediation
//! identity whose claims name the playbook and the chosen targets and which never outlives
//! the window. Anything outside the bounds is refused and issues nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::dev::{Dev, my_uid, start};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::StreamExt;
use writ::ca::CaConfig;
use writ::policy::playbook::{
    ActivationRequest, Playbook, PlaybookError, PlaybookSpec, new_playbook,
};
use writ::policy::{Grant, Incident, IncidentState, Profile, Selector, Severity};
use writ::proto::admin::{self as pb, admin_client::AdminClient};
use writ::server::registry::RegistryError;
use writ_verifier::claims::JWT_CLAIMS_KEY;
use writ_verifier::x509::Usage;
use writ_verifier::{Band, verify_x509_svid};

const WRIT: &str = env!("CARGO_BIN_EXE_writ");
const BOOK: &str = "isolate-host";

fn fixer(dev: &Dev, bands: &[Band]) {
    dev.issuer
        .registry
        .create_profile(
            Profile {
                tenant: "default".into(),
                name: "fixer".into(),
                selectors: BTreeSet::from([Selector::Uid(my_uid())]),
                bands: bands.iter().copied().collect(),
                scopes: BTreeSet::from(["logs:read".into(), "net:isolate".into()]),
                service: false,
                created_at: 0,
            },
            "test",
        )
        .unwrap();
}

fn incident(dev: &Dev, id: &str) {
    dev.issuer
        .registry
        .open_incident(Incident {
            tenant: "default".into(),
            id: id.into(),
            title: "lateral movement from web-2".into(),
            severity: Severity::Sev1,
            assigned: BTreeSet::from(["fixer".to_string()]),
            scopes: BTreeSet::new(),
            state: IncidentState::Open,
            opened_by: "carol".into(),
            opened_at: dev.issuer.cas.now(),
            closed_by: None,
            closed_at: None,
            max_lifetime_secs: 3600,
            source: None,
        })
        .unwrap();
}

/// Creates the playbook as `root`; `approvers` approve its digest.
fn playbook(dev: &Dev, approvers: &[&str]) -> Playbook {
    let spec = PlaybookSpec {
        name: BOOK.into(),
        action: "isolate host from the network".into(),
        description: "Undo with `netctl rejoin HOST`.".into(),
        allowed_targets: ["host/web-1", "host/web-2", "host/web-3"]
            .map(String::from)
            .into(),
        scopes: BTreeSet::from(["net:isolate".to_string()]),
        max_window_secs: Some(300),
    };
    let now = dev.issuer.cas.now();
    let registry = &dev.issuer.registry;
    let mut book = registry
        .create_playbook(new_playbook("default", spec, "root", now).unwrap())
        .unwrap();
    for who in approvers {
        book = registry
            .approve_playbook("default", BOOK, who, &book.digest(), now)
            .unwrap();
    }
    book
}

fn activate(
    dev: &Dev,
    incident: &str,
    targets: &[&str],
    window: Option<u64>,
) -> Result<Grant, RegistryError> {
    let request = ActivationRequest {
        agent: "fixer".into(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        window_secs: window,
    };
    let now = dev.issuer.cas.now();
    dev.issuer
        .registry
        .activate_playbook("default", BOOK, incident, request, "carol", now)
}

fn cas(dev: &Dev, band: Band) -> Vec<CertificateDer<'static>> {
    let bundle = dev.issuer.cas.bundle_set().unwrap();
    writ::agent::cache::split_der(&bundle.by_band(band).unwrap().x509_der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_issues_an_identity_carrying_the_playbook_and_its_bounds() {
    let dev = start(CaConfig::default()).await;
    fixer(&dev, &[Band::Investigative, Band::Remediation]);
    incident(&dev, "INC-1");
    let client = dev.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids().len(), 1, "investigative only");

    let book = playbook(&dev, &["alice", "bob"]);
    assert_eq!(book.state, writ::policy::playbook::PlaybookState::Approved);

    // One incident commander activates it for two of its three targets, for two minutes.
    let grant = activate(&dev, "INC-1", &["host/web-2", "host/web-1"], Some(120)).unwrap();
    assert_eq!(grant.playbook.as_deref(), Some(BOOK));
    let activated_at = grant.activated_at.unwrap();
    assert_eq!(grant.expires_at, Some(activated_at + 120));

    let update = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ctx = stream.next().await.unwrap().unwrap();
            if ctx.svids().len() == 2 {
                return ctx;
            }
        }
    })
    .await
    .expect("the remediation identity arrives on the open stream");
    let rem = update
        .svids()
        .iter()
        .find(|s| s.spiffe_id().trust_domain().to_string() == "remediate.example.org")
        .unwrap();
    assert_eq!(
        rem.spiffe_id().to_string(),
        format!(
            "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/{}",
            grant.id
        )
    );
    let leaf = CertificateDer::from(rem.leaf().as_bytes().to_vec());
    let verified = verify_x509_svid(
        std::slice::from_ref(&leaf),
        &cas(&dev, Band::Remediation),
        rem.spiffe_id().trust_domain(),
        Usage::Client,
        UnixTime::now(),
    )
    .unwrap();
    let claims = verified.claims.unwrap();
    assert_eq!(claims.band, Some(Band::Remediation));
    assert_eq!(claims.playbook.as_deref(), Some(BOOK));
    assert_eq!(claims.targets, ["host/web-1", "host/web-2"]);
    assert_eq!(claims.grant.as_deref(), Some(grant.id.as_str()));
    assert_eq!(
        claims.plan_digest.as_deref(),
        Some(grant.plan_digest.as_str())
    );
    assert_eq!(claims.approvers, ["alice", "bob", "carol"]);
    assert_eq!(claims.scopes, ["net:isolate"]);
    assert_eq!(claims.incident.as_deref(), Some("INC-1"));
    assert!(
        verified.not_after <= activated_at + 120,
        "the SVID ({}) never outlives the activation window (ends {})",
        verified.not_after,
        activated_at + 120
    );
    // The plan the activator approved is the playbook's approved bounds plus the targets.
    assert!(grant.plan.contains(&book.canonical()));
    assert!(
        grant
            .plan
            .contains(r#""targets":["host/web-1","host/web-2"]"#)
    );

    // A JWT-SVID for it carries the same claims.
    let id = writ_verifier::parse_spiffe_id(&rem.spiffe_id().to_string()).unwrap();
    let token = client.fetch_jwt_token(["netctl"], Some(&id)).await.unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let payload: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let jwt_claims = &payload[JWT_CLAIMS_KEY];
    assert_eq!(jwt_claims["playbook"], BOOK, "{payload}");
    assert_eq!(
        jwt_claims["targets"],
        serde_json::json!(["host/web-1", "host/web-2"])
    );
    assert!(payload["exp"].as_i64().unwrap() <= activated_at + 120);

    // Closing the incident ends the activation with everything else.
    let now = dev.issuer.cas.now();
    dev.issuer
        .registry
        .close_incident("default", "INC-1", "carol", now)
        .unwrap();
    let ended =
        dev.issuer.registry.snapshot().grants[&writ::policy::key("default", &grant.id)].clone();
    assert_eq!(ended.state, writ::policy::GrantState::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activations_outside_the_bounds_issue_nothing() {
    let dev = start(CaConfig::default()).await;
    fixer(&dev, &[Band::Investigative, Band::Remediation]);
    incident(&dev, "INC-1");
    let client = dev.client().await;

    // Not yet approved: one approval is not a quorum.
    playbook(&dev, &["alice"]);
    assert!(matches!(
        activate(&dev, "INC-1", &["host/web-1"], None),
        Err(RegistryError::Playbook(PlaybookError::NotApproved { .. }))
    ));
    let book =
        dev.issuer.registry.snapshot().playbooks[&writ::policy::key("default", BOOK)].clone();
    // Its creator cannot make up the quorum.
    assert!(matches!(
        dev.issuer
            .registry
            .approve_playbook("default", BOOK, "root", &book.digest(), 0),
        Err(RegistryError::Playbook(PlaybookError::OwnPlaybook(_)))
    ));
    dev.issuer
        .registry
        .approve_playbook("default", BOOK, "bob", &book.digest(), 0)
        .unwrap();

    let generation = dev.issuer.registry.snapshot().generation;
    for (targets, window) in [
        (&["host/db-1"][..], None),             // not in the allow-list
        (&["host/web-1", "host/web-1 "], None), // not exactly in it
        (&["host/web-1"], Some(301)),           // over the playbook's maximum
        (&["host/web-1"], Some(900)),           // over ten minutes
    ] {
        let refused = activate(&dev, "INC-1", targets, window);
        assert!(
            matches!(
                refused,
                Err(RegistryError::Playbook(
                    PlaybookError::OutOfBounds(_) | PlaybookError::BadField(_)
                ))
            ),
            "{targets:?} {window:?}: {refused:?}"
        );
    }
    assert!(matches!(
        activate(&dev, "INC-9", &["host/web-1"], None),
        Err(RegistryError::NotFound { .. })
    ));

    // An advisory-only agent never holds a remediation identity, playbook or not.
    dev.issuer
        .registry
        .create_profile(
            Profile {
                tenant: "default".into(),
                name: "advisor".into(),
                selectors: BTreeSet::from([Selector::Uid(u32::MAX - 1)]),
                bands: BTreeSet::from([Band::Investigative]),
                scopes: BTreeSet::new(),
                service: false,
                created_at: 0,
            },
            "test",
        )
        .unwrap();
    let mut both =
        (*dev.issuer.registry.snapshot().incidents[&writ::policy::key("default", "INC-1")]).clone();
    both.id = "INC-2".into();
    both.assigned.insert("advisor".into());
    dev.issuer.registry.open_incident(both).unwrap();
    let generation_after_setup = dev.issuer.registry.snapshot().generation;
    let advisory = dev.issuer.registry.activate_playbook(
        "default",
        BOOK,
        "INC-2",
        ActivationRequest {
            agent: "advisor".into(),
            targets: BTreeSet::from(["host/web-1".to_string()]),
            window_secs: None,
        },
        "carol",
        dev.issuer.cas.now(),
    );
    assert!(
        matches!(
            advisory,
            Err(RegistryError::Playbook(PlaybookError::NotEligible(ref m))) if m.contains("remediation")
        ),
        "{advisory:?}"
    );

    // A closed incident.
    dev.close("INC-2");
    assert!(matches!(
        activate(&dev, "INC-2", &["host/web-1"], None),
        Err(RegistryError::Playbook(PlaybookError::IncidentClosed(_)))
    ));

    let policy = dev.issuer.registry.snapshot();
    assert!(policy.grants.is_empty(), "nothing was activated");
    assert_eq!(
        generation_after_setup - generation,
        2,
        "only the setup changed policy"
    );
    let ctx = client.fetch_x509_context().await.unwrap();
    assert!(
        ctx.svids()
            .iter()
            .all(|s| s.spiffe_id().trust_domain().to_string() == "investigate.example.org"),
        "no remediation identity was issued"
    );
}

/// The admin API on a temp socket beside `dev`, served until `dev` is dropped.
async fn admin(dev: &Dev) -> (AdminClient<tonic::transport::Channel>, PathBuf) {
    let socket = dev.serve_admin(&dev.stop).await;
    let client = AdminClient::new(writ::uds::channel(&socket).await.unwrap());
    (client, socket)
}

async fn writ(socket: &PathBuf, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(WRIT)
        .args(args)
        .env("WRIT_ADMIN_SOCKET", socket)
        .env_remove("WRIT_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

/// A refusal is one `error:` line mentioning `reason`, and nothing on stdout.
fn refused(out: &std::process::Output, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should be refused: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error:") && stderr.contains(reason),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_cli_create_approve_and_activate() {
    let dev = start(CaConfig::default()).await;
    fixer(&dev, &[Band::Investigative, Band::Remediation]);
    incident(&dev, "INC-1");
    let (mut api, socket) = admin(&dev).await;
    let me = format!("uid:{}", my_uid());

    let out = writ(
        &socket,
        &[
            "playbook",
            "create",
            BOOK,
            "--action",
            "isolate host from the network",
            "--target",
            "host/web-1",
            "--target",
            "host/web-2",
            "--scope",
            "net:isolate",
            "--max-window",
            "5m",
            "--json",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["state"], "pending");
    assert_eq!(created["created_by"], me.as_str());
    assert_eq!(created["max_window_seconds"], 300);
    let digest = created["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        digest,
        writ::policy::grant::plan_digest(created["canonical"].as_str().unwrap())
    );

    // Bad input and the creator's own approval are refused, one line each.
    refused(
        &writ(
            &socket,
            &[
                "playbook",
                "create",
                "wide",
                "--action",
                "x",
                "--target",
                "h",
                "--max-window",
                "11m",
            ],
        )
        .await,
        "maximum window",
    );
    refused(
        &writ(&socket, &["playbook", "approve", BOOK]).await,
        "cannot approve",
    );
    let status = api
        .approve_playbook(pb::ApprovePlaybookRequest {
            name: BOOK.into(),
            digest: "0".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    refused(
        &writ(
            &socket,
            &[
                "playbook",
                "activate",
                BOOK,
                "--incident",
                "INC-1",
                "--agent",
                "fixer",
                "--target",
                "host/web-1",
            ],
        )
        .await,
        "not approved",
    );

    // Two other approvers (through the registry: this test runs as one uid).
    let now = dev.issuer.cas.now();
    for who in ["alice", "bob"] {
        dev.issuer
            .registry
            .approve_playbook("default", BOOK, who, &digest, now)
            .unwrap();
    }
    let shown: serde_json::Value = serde_json::from_slice(
        &writ(&socket, &["playbook", "show", BOOK, "--json"])
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(shown["state"], "approved");

    // Out of bounds through the API: PermissionDenied, nothing issued.
    let status = api
        .activate_playbook(pb::ActivatePlaybookRequest {
            name: BOOK.into(),
            incident: "INC-1".into(),
            agent: "fixer".into(),
            targets: vec!["host/db-1".into()],
            window_seconds: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    refused(
        &writ(
            &socket,
            &[
                "playbook",
                "activate",
                BOOK,
                "--incident",
                "INC-1",
                "--agent",
                "fixer",
                "--target",
                "host/web-1",
                "--window",
                "6m",
            ],
        )
        .await,
        "longer than",
    );
    refused(
        &writ(
            &socket,
            &[
                "playbook",
                "activate",
                BOOK,
                "--incident",
                "INC-1",
                "--agent",
                "fixer",
            ],
        )
        .await,
        "name the targets",
    );
    assert!(dev.issuer.registry.snapshot().grants.is_empty());

    let out = writ(
        &socket,
        &[
            "playbook",
            "activate",
            BOOK,
            "--incident",
            "INC-1",
            "--agent",
            "fixer",
            "--target",
            "host/web-2",
            "--window",
            "3m",
            "--json",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grant: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(grant["playbook"], BOOK);
    assert_eq!(grant["state"], "active");
    assert_eq!(grant["targets"], serde_json::json!(["host/web-2"]));
    assert_eq!(grant["window_seconds"], 180);
    assert_eq!(
        grant["approvals"].as_array().unwrap().len(),
        3,
        "the playbook's two approvers and the activator"
    );
    let id = grant["id"].as_str().unwrap().to_owned();
    let fetched = api
        .get_grant(pb::GetGrantRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(fetched.playbook, BOOK);
    assert_eq!(fetched.quorum, 3, "the playbook's quorum and the activator");

    // Retiring it revokes the activation and refuses the next.
    let out = writ(
        &socket,
        &[
            "playbook",
            "retire",
            BOOK,
            "--reason",
            "superseded",
            "--json",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let retired: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(retired["state"], "retired");
    assert_eq!(retired["revoked_grants"], serde_json::json!([id.clone()]));
    assert_eq!(
        dev.issuer.registry.snapshot().grants[&writ::policy::key("default", &id)].state,
        writ::policy::GrantState::Revoked
    );
    let status = api
        .activate_playbook(pb::ActivatePlaybookRequest {
            name: BOOK.into(),
            incident: "INC-1".into(),
            agent: "fixer".into(),
            targets: vec!["host/web-2".into()],
            window_seconds: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let listed = writ(&socket, &["playbook", "list", "--json"]).await;
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 1);
}
