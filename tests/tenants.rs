//! Two tenants side by side in one deployment (issue 13, docs/multi-tenant.md): the real
//! `writ dev`, the CLI run as each tenant's operators (by uid, through `setpriv`) and
//! workloads fetching over the Workload API with the stock `spiffe` client.
//!
//! Both tenants use the same agent name (`triage`) and incident id (`INC-1`): their
//! identities differ, neither's SVID verifies against the other's bundle (writ-verifier and
//! `openssl verify -x509_strict`), neither's workload sees the other's bundles, and every
//! cross-tenant attempt is refused as "not found" and changes nothing. These tests run
//! processes under other uids and need root (see `common::require_root`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

mod common;

use common::bin::{As, DevProcess, json_lines};
use common::procs::{fetch, ids};

/// acme's admin, incident commander and auditor.
const ADA: As = As::Uid(65530);
/// acme's approver.
const ABE: As = As::Uid(65529);
/// globex's admin and incident commander.
const GUS: As = As::Uid(65528);
/// globex's approver.
const GIL: As = As::Uid(65527);
/// The workloads: acme's triage agent and globex's.
const ACME_AGENT: u32 = 2001;
const GLOBEX_AGENT: u32 = 2002;

const OPERATORS: [&str; 8] = [
    "--operator",
    "ada=65530:admin@acme,incident-commander@acme,auditor@acme",
    "--operator",
    "abe=65529:approver@acme",
    "--operator",
    "gus=65528:admin@globex,incident-commander@globex",
    "--operator",
    "gil=65527:approver@globex",
];

const ACME_ID: &str = "spiffe://investigate.acme.test/agent/triage/incident/INC-1";
const GLOBEX_ID: &str = "spiffe://investigate.globex.test/agent/triage/incident/INC-1";

/// `writ dev` with both tenants, each with a `triage` profile and an open `INC-1`.
struct Tenants {
    dev: DevProcess,
    files: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tenants {
    fn start() -> Option<Tenants> {
        Self::start_with(&OPERATORS)
    }

    fn start_with(operators: &[&str]) -> Option<Tenants> {
        if !common::require_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // The operators' and workloads' uids must reach the sockets inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dev = DevProcess::start(&dir.path().join("data"), operators).in_dir(&files);
        let t = Tenants {
            dev,
            files,
            _dir: dir,
        };
        t.dev
            .ok(&["tenant", "create", "acme", "--trust-domain", "acme.test"]);
        t.dev.ok(&[
            "tenant",
            "create",
            "globex",
            "--trust-domain",
            "globex.test",
        ]);
        for (who, tenant, uid) in [(ADA, "acme", ACME_AGENT), (GUS, "globex", GLOBEX_AGENT)] {
            let selector = format!("unix:uid:{uid}");
            t.ok_in(
                who,
                tenant,
                &[
                    "profile",
                    "create",
                    "triage",
                    "--selector",
                    &selector,
                    "--band",
                    "investigative,remediation",
                ],
            );
            t.ok_in(
                who,
                tenant,
                &[
                    "incident",
                    "open",
                    "INC-1",
                    "--title",
                    "checkout 500s",
                    "--severity",
                    "sev3",
                    "--assign",
                    "triage",
                ],
            );
        }
        Some(t)
    }

    /// `writ --tenant TENANT ARGS` as `who`, which must succeed.
    fn ok_in(&self, who: As, tenant: &str, args: &[&str]) -> String {
        self.dev.ok_as(who, &[args, &["--tenant", tenant]].concat())
    }

    /// `writ --tenant TENANT ARGS` as `who`, which must be refused saying `reason`.
    fn refused_in(&self, who: As, tenant: &str, args: &[&str], reason: &str) {
        self.dev.refusal(
            who,
            &[args, &["--tenant", tenant]].concat(),
            Some(1),
            reason,
        );
    }

    /// Everything each tenant holds, as its admin lists it: what a refused call must not
    /// change.
    fn state(&self) -> Vec<Value> {
        let mut all = Vec::new();
        for (who, tenant) in [(ADA, "acme"), (GUS, "globex")] {
            for list in [["incident", "list"], ["grant", "list"], ["profile", "list"]] {
                all.extend(json_lines(&self.ok_in(
                    who,
                    tenant,
                    &[&list[..], &["--json"]].concat(),
                )));
            }
        }
        all
    }

    fn workload_socket(&self) -> PathBuf {
        self.dev.data_dir.join("workload.sock")
    }

    /// acme's admin asks for a restart on acme's INC-1; returns the grant id.
    fn request_grant(&self) -> String {
        let path = self.files.join("plan.txt");
        std::fs::write(&path, "kubectl -n shop rollout restart deploy/checkout\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let plan = path.to_str().unwrap();
        let request = [
            "grant",
            "request",
            "--incident",
            "INC-1",
            "--agent",
            "triage",
            "--action",
            "restart checkout",
            "--plan",
            plan,
        ];
        self.ok_in(ADA, "acme", &request).trim().to_owned()
    }
}

/// The DER certificates of a PEM text.
fn ders(pem: &str) -> Vec<Vec<u8>> {
    common::pem_decode(pem)
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn same_names_in_two_tenants_are_different_identities_that_never_cross() {
    let Some(t) = Tenants::start() else { return };
    let socket = t.workload_socket();
    let acme = fetch(ACME_AGENT, &socket);
    let globex = fetch(GLOBEX_AGENT, &socket);
    assert_eq!(ids(&acme), Some(vec![ACME_ID.to_owned()]), "{acme}");
    assert_eq!(ids(&globex), Some(vec![GLOBEX_ID.to_owned()]), "{globex}");

    // A workload receives its own tenant's bundles and the deployment's, never another
    // tenant's (nor the default tenant's band bundles).
    let domains = |answer: &Value| -> Vec<String> {
        let mut d: Vec<String> = answer["bundles"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        d.sort();
        d
    };
    assert_eq!(
        domains(&acme),
        [
            "example.org",
            "investigate.acme.test",
            "remediate.acme.test"
        ]
    );
    assert_eq!(
        domains(&globex),
        [
            "example.org",
            "investigate.globex.test",
            "remediate.globex.test"
        ]
    );

    // acme's SVID verifies against acme's bundle, and against nothing of globex's:
    // openssl -x509_strict and writ-verifier alike.
    let chain_pem = acme["svids"][0]["chain_pem"].as_str().unwrap();
    let acme_bundle = acme["bundles"]["investigate.acme.test"].as_str().unwrap();
    let globex_bundle = globex["bundles"]["investigate.globex.test"]
        .as_str()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let leaf = write(dir.path(), "acme-leaf.pem", chain_pem);
    let own = common::openssl_verify_files(&write(dir.path(), "a.pem", acme_bundle), &leaf, None);
    assert!(own.ok, "{}", own.output);
    let other =
        common::openssl_verify_files(&write(dir.path(), "g.pem", globex_bundle), &leaf, None);
    assert!(
        !other.ok,
        "globex's bundle accepted acme's SVID: {}",
        other.output
    );

    use rustls::pki_types::{CertificateDer, UnixTime};
    use writ_verifier::{Authorizer, Decision, Peer, RevocationSnapshot, Usage};
    let chain: Vec<CertificateDer<'static>> = ders(chain_pem)
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let anchors = |pem: &str| -> Vec<CertificateDer<'static>> {
        ders(pem).into_iter().map(CertificateDer::from).collect()
    };
    let acme_td = writ_verifier::parse_trust_domain("investigate.acme.test").unwrap();
    let globex_td = writ_verifier::parse_trust_domain("investigate.globex.test").unwrap();
    let now = UnixTime::now();
    // A globex service checks peers against globex's bundle: acme's SVID is refused
    // whichever trust domain it is checked as.
    for td in [&globex_td, &acme_td] {
        assert!(
            writ_verifier::verify_x509_svid(
                &chain,
                &anchors(globex_bundle),
                td,
                Usage::Client,
                now
            )
            .is_err(),
            "acme's SVID verified against globex's bundle as {td}"
        );
    }
    let verified = writ_verifier::verify_x509_svid(
        &chain,
        &anchors(acme_bundle),
        &acme_td,
        Usage::Client,
        now,
    )
    .unwrap();
    let peer = Peer::from_x509(&verified);
    assert_eq!(
        peer.claims.as_ref().and_then(|c| c.tenant.as_deref()),
        Some("acme")
    );
    let secs = common::system_now();
    let none = RevocationSnapshot::empty();
    let acme_base = writ_verifier::parse_trust_domain("acme.test").unwrap();
    let globex_base = writ_verifier::parse_trust_domain("globex.test").unwrap();
    assert!(matches!(
        Authorizer::investigative(&acme_base)
            .tenant("acme")
            .decide(&peer, &none, secs),
        Decision::Allow
    ));
    for authorizer in [
        Authorizer::investigative(&globex_base).tenant("globex"),
        Authorizer::investigative(&acme_base).tenant("globex"),
    ] {
        assert!(
            matches!(authorizer.decide(&peer, &none, secs), Decision::Deny(_)),
            "{authorizer} allowed acme's SVID"
        );
    }
}

#[test]
fn every_cross_tenant_attempt_is_refused_as_not_found_and_changes_nothing() {
    let Some(t) = Tenants::start() else { return };
    let acme_grant = t.request_grant();
    // Each tenant's workload holds an SVID (one for `svid revoke` to aim at).
    let socket = t.workload_socket();
    for uid in [ACME_AGENT, GLOBEX_AGENT] {
        assert!(ids(&fetch(uid, &socket)).is_some());
    }
    let before = t.state();

    // A tenant in which the caller holds no role does not exist for them: the same answer
    // as for a tenant that does not exist at all.
    let attempts: [&[&str]; 6] = [
        &["incident", "list"],
        &["incident", "show", "INC-1"],
        &["incident", "close", "INC-1"],
        &["profile", "delete", "triage"],
        &["grant", "revoke", &acme_grant],
        &["audit", "export"],
    ];
    for args in attempts {
        t.refused_in(GUS, "acme", args, "tenant \"acme\" not found");
        t.refused_in(GUS, "nosuch", args, "tenant \"nosuch\" not found");
    }
    t.refused_in(
        GIL,
        "acme",
        &["grant", "approve", &acme_grant],
        "tenant \"acme\" not found",
    );
    // In their own tenant, another tenant's grant is unknown.
    t.refused_in(
        GIL,
        "globex",
        &["grant", "approve", &acme_grant],
        "unknown grant",
    );
    // An admin of a tenant mints nothing of another's, and learns nothing of whether
    // another tenant holds the trust domain: the answer is the one for a trust domain no
    // one holds.
    let out = t.files.to_str().unwrap().to_owned();
    for id in [
        ACME_ID,
        "spiffe://investigate.nowhere.test/agent/triage/incident/INC-1",
    ] {
        t.refused_in(
            GUS,
            "globex",
            &["x509", "mint", "--spiffe-id", id, "--out", &out],
            "is not in a trust domain of tenant \"globex\"",
        );
    }
    // Another tenant's serial is as unknown as one never issued.
    let serials: Vec<String> = json_lines(&t.ok_in(ADA, "acme", &["svid", "list", "--json"]))
        .iter()
        .map(|s| {
            assert!(
                s["spiffe_id"].as_str().unwrap().contains(".acme.test/"),
                "acme lists another tenant's SVID: {s}"
            );
            s["serial"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(!serials.is_empty());
    t.refused_in(
        GUS,
        "globex",
        &["svid", "revoke", &serials[0]],
        "unknown serial",
    );
    // A tenant's admin cannot make another tenant's workload theirs.
    t.refused_in(
        GUS,
        "globex",
        &["profile", "create", "grab", "--selector", "unix:uid:2001"],
        "may select workloads a profile of another tenant selects",
    );
    // Tenants are the deployment's: a tenant's admin creates none.
    t.refused_in(
        ADA,
        "acme",
        &["tenant", "create", "evil", "--trust-domain", "evil.test"],
        "ada needs the role admin in the default tenant",
    );
    assert_eq!(t.state(), before, "a refused call changed something");

    // The default tenant sees none of it.
    assert!(
        json_lines(&t.dev.ok(&["incident", "list", "--json"])).is_empty(),
        "the default tenant lists another tenant's incidents"
    );

    // acme's own approver approves; closing acme's INC-1 leaves globex's alone.
    t.ok_in(ABE, "acme", &["grant", "approve", &acme_grant]);
    assert_eq!(
        ids(&fetch(ACME_AGENT, &socket)).unwrap().len(),
        2,
        "acme's agent holds its investigative and remediation identities"
    );
    t.ok_in(ADA, "acme", &["incident", "close", "INC-1"]);
    assert_eq!(ids(&fetch(ACME_AGENT, &socket)), None);
    verifiers_hear_of_the_close_in_acme_only(&socket);
    assert_eq!(
        ids(&fetch(GLOBEX_AGENT, &socket)),
        Some(vec![GLOBEX_ID.to_owned()])
    );

    // Disabling a tenant revokes everything in it at once and makes nothing new.
    let disabled = t.dev.json_as(As::Me, &["tenant", "disable", "globex"]);
    assert_eq!(disabled["closed_incidents"], serde_json::json!(["INC-1"]));
    assert_eq!(ids(&fetch(GLOBEX_AGENT, &socket)), None);
    t.refused_in(
        GUS,
        "globex",
        &[
            "incident",
            "open",
            "INC-2",
            "--title",
            "t",
            "--severity",
            "sev3",
            "--assign",
            "triage",
        ],
        "tenant \"globex\" is disabled",
    );
    let tenants = json_lines(&t.dev.ok(&["tenant", "list", "--json"]));
    let states: Vec<(&str, &str)> = tenants
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("default", "active"),
            ("acme", "active"),
            ("globex", "disabled")
        ]
    );
}

/// The first set the revocation feed sends `uid`, through `svid-fetch --revocations`.
fn feed_as(uid: u32, socket: &Path) -> Value {
    let out = common::procs::svid_fetch(uid, socket, &["--revocations"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("svid-fetch: {e}: {out:?}"))
}

/// The revocation feed per tenant, once acme's `INC-1` closed. acme's workload (as a
/// verifier) gets acme's entry and a `covers` list of acme's trust domains and the
/// deployment's; globex's workload gets nothing of acme's; and a verifier no profile
/// selects (this process: the default tenant) gets none of acme's entries, so writ-verifier
/// refuses acme's peer as not covered rather than take it as unrevoked. Neither globex's
/// `INC-1` nor the default tenant's (same id, other trust domains) is revoked anywhere.
fn verifiers_hear_of_the_close_in_acme_only(socket: &Path) {
    use std::time::{Duration, Instant};
    use writ_verifier::{
        Authorizer, Band, Decision, DenyReason, Peer, WorkloadApiSource, WritClaims,
    };
    let acme_close = serde_json::json!(["INCIDENT", "acme.test", "INC-1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let acme = loop {
        let set = feed_as(ACME_AGENT, socket);
        if set["entries"].as_array().unwrap().contains(&acme_close) {
            break set;
        }
        assert!(
            Instant::now() < deadline,
            "acme's close never reached acme's feed: {set}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // INC-1 and the grant that ended with it: acme's trust domains only.
    for entry in acme["entries"].as_array().unwrap() {
        let trust_domain = entry[1].as_str().unwrap();
        assert!(
            trust_domain == "acme.test" || trust_domain.ends_with(".acme.test"),
            "{acme}"
        );
    }
    assert_eq!(
        acme["covers"],
        serde_json::json!([
            "example.org",
            "investigate.acme.test",
            "remediate.acme.test"
        ])
    );
    let globex = feed_as(GLOBEX_AGENT, socket);
    assert_eq!(globex["entries"], serde_json::json!([]), "{globex}");
    assert_eq!(
        globex["covers"],
        serde_json::json!([
            "example.org",
            "investigate.globex.test",
            "remediate.globex.test"
        ])
    );

    let peer = |id: &str, tenant: &str| {
        let mut claims = WritClaims::new(Band::Investigative);
        claims.incident = Some("INC-1".into());
        claims.tenant = Some(tenant.into());
        Peer {
            spiffe_id: writ_verifier::parse_spiffe_id(id).unwrap(),
            claims: Some(claims),
            serial: None,
            expires_at: i64::MAX,
            authority: writ_verifier::Authority::Unknown,
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let endpoint = format!("unix://{}", socket.display());
        let source = tokio::time::timeout(
            Duration::from_secs(60),
            WorkloadApiSource::connect(&endpoint),
        )
        .await
        .expect("the feed answers")
        .unwrap();
        let outside = source.revocations().snapshot();
        assert!(outside.covers("investigate.example.org"), "{outside:?}");
        assert!(!outside.covers("investigate.acme.test"), "{outside:?}");
        assert!(
            !outside.incident_revoked("acme.test", "INC-1"),
            "{outside:?}"
        );
        let acme_base = writ_verifier::parse_trust_domain("acme.test").unwrap();
        assert_eq!(
            Authorizer::investigative(&acme_base).decide(&peer(ACME_ID, "acme"), &outside, 1),
            Decision::Deny(DenyReason::NotCovered("investigate.acme.test".into())),
            "a verifier outside acme refuses acme's peer: nothing shows it unrevoked"
        );
        let default_inc = "spiffe://investigate.example.org/agent/triage/incident/INC-1";
        assert_eq!(outside.check(&peer(default_inc, "default")), None);
        assert!(
            !outside.incident_revoked("globex.test", "INC-1"),
            "{outside:?}"
        );
    });
}

/// An approval counts while its approver holds a role in the grant's tenant: an approver
/// of acme who keeps roles only elsewhere loses their acme approvals at the next start,
/// and the grant that needed them is revoked.
#[test]
fn approvals_last_while_the_approver_holds_a_role_in_the_grants_tenant() {
    let Some(t) = Tenants::start() else { return };
    let id = t.request_grant();
    t.ok_in(ABE, "acme", &["grant", "approve", &id]);
    let state = |t: &Tenants| {
        t.dev
            .json_as(ADA, &["grant", "show", &id, "--tenant", "acme"])["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(state(&t), "active");
    // abe keeps a role, but in globex only.
    let Tenants { dev, files, _dir } = t;
    let data = dev.data_dir.clone();
    dev.terminate();
    let mut operators = OPERATORS;
    operators[3] = "abe=65529:approver@globex";
    let t = Tenants {
        dev: DevProcess::start(&data, &operators).in_dir(&files),
        files,
        _dir,
    };
    assert_eq!(state(&t), "revoked");
}

/// Bad input on the new paths (the tenant RPCs, the `--tenant` header) is one clear error,
/// echoes nothing raw, and creates nothing.
#[test]
fn bad_tenant_input_is_refused_and_changes_nothing() {
    let Some(t) = Tenants::start() else { return };
    let tenants = || json_lines(&t.dev.ok(&["tenant", "list", "--json"]));
    let before = tenants();
    for (args, reason) in [
        (
            vec!["tenant", "create", "Bad", "--trust-domain", "bad.test"],
            "[a-z0-9-]",
        ),
        (
            vec!["tenant", "create", "ok", "--trust-domain", "Not A Domain"],
            "trust domain",
        ),
        (
            vec!["tenant", "create", "ok", "--trust-domain", "acme.test"],
            "another tenant's",
        ),
        (
            vec!["tenant", "create", "acme", "--trust-domain", "new.test"],
            "already exists",
        ),
        (vec!["tenant", "show", "a/b"], "invalid tenant name"),
        (vec!["tenant", "disable", "default"], "cannot be disabled"),
        (
            vec!["incident", "list", "--tenant", "a/b"],
            "invalid tenant name",
        ),
        (
            vec!["incident", "list", "--tenant", "\u{1b}[31mred"],
            "invalid tenant name",
        ),
    ] {
        t.dev.refusal(As::Me, &args, Some(1), reason);
    }
    assert_eq!(tenants(), before, "a refused call changed the tenants");
}
