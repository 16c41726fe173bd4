//! Signing replicas sign in tenants' bands too (issue 13, docs/ha.md "Signing replicas"):
//! the real `writ server` twice on one throwaway PostgreSQL (the first holds the roots,
//! the second is a signing replica), a tenant created on the first after the second has
//! started, the replica's keys for the tenant's bands admitted with `writ replica admit`,
//! and a `writ agent` attached to the replica alone, whose tenant workload (the stock
//! `spiffe` client, `examples/svid-fetch`) gets an SVID chained through the replica's own
//! intermediate for the tenant's band.
//!
//! Needs root (the workload runs under another uid), PostgreSQL's server binaries and the
//! examples built (`cargo build --examples`). Every wait is a bounded poll on an event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::procs::{AgentProc, ServerProc, fetch, ids, wait_until};
use common::{temp_dir, toml_string};
use rustls::pki_types::{CertificateDer, UnixTime};
use std::path::Path;
use std::process::Command;

/// The tenant workload's uid: no operator's.
const WORKLOAD: u32 = 65533;

const TENANT_BAND: &str = "investigate.acme.test";
const IDENTITY: &str = "spiffe://investigate.acme.test/agent/triage/incident/INC-1";

/// The key a replica logged it wants admitted for `trust_domain` (its line names both).
fn key_logged_for(replica: &ServerProc, trust_domain: &str) -> Option<String> {
    replica
        .proc
        .stderr()
        .lines()
        .filter(|line| line.contains(&format!("intermediate for {trust_domain};")))
        .find_map(|line| {
            let (_, rest) = line.split_once("--key-sha256 ")?;
            let key = rest.get(..64)?;
            key.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| key.to_owned())
        })
}

fn ders(pem: &str) -> Vec<Vec<u8>> {
    common::pem_decode(pem)
        .into_iter()
        .map(|(_, der)| der)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `openssl verify -x509_strict` of the chain in `chain_pem` (leaf first, the rest
/// untrusted) against the roots in `bundle_pem`.
fn openssl_accepts(dir: &Path, name: &str, bundle_pem: &str, chain_pem: &str) -> bool {
    let bundle = common::write(&dir.join(format!("{name}-bundle.pem")), bundle_pem);
    let chain = common::write(&dir.join(format!("{name}-chain.pem")), chain_pem);
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&bundle)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&chain)
        .output()
        .expect("run openssl");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK")
}

#[test]
fn a_replica_signs_a_tenant_created_after_it_started_once_its_keys_are_admitted() {
    if !common::require_root() {
        return;
    }
    let Some(pg) = common::postgres::Postgres::start() else {
        return;
    };
    pg.create_database("writ");
    let dir = temp_dir();
    let dir = dir.path();
    // The workload's uid must reach the agent's socket inside.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let store = format!("store = {}\n", toml_string(&pg.url("writ")));
    let first = ServerProc::start(dir, "first", &store);
    let mut second = ServerProc::spawn(dir, "second", &store, None);
    first.admit(&mut second);

    // The tenant is created on the root holder after the replica started: the replica
    // opens its CAs from the store and asks for an intermediate per band, each request
    // naming the tenant's band trust domain, each key logged with it.
    first.ok(&["tenant", "create", "acme", "--trust-domain", "acme.test"]);
    let mut keys = Vec::new();
    for trust_domain in [TENANT_BAND, "remediate.acme.test"] {
        wait_until(
            || {
                format!(
                    "the replica's key for {trust_domain}:\n{}",
                    second.proc.stderr()
                )
            },
            || key_logged_for(&second, trust_domain).is_some(),
        );
        keys.push(key_logged_for(&second, trust_domain).unwrap());
    }
    assert_ne!(keys[0], keys[1], "one key per trust domain");
    let pending = |trust_domain: &str| {
        pg.psql(
            "writ",
            &format!(
                "SELECT key_sha256, band FROM intermediate_requests \
                 WHERE trust_domain = '{trust_domain}' AND certificate IS NULL AND refused IS NULL"
            ),
        )
    };
    assert_eq!(pending(TENANT_BAND), format!("{}|investigative", keys[0]));
    assert_eq!(
        pending("remediate.acme.test"),
        format!("{}|remediation", keys[1])
    );
    // Not admitted yet: nothing certified, and the replica is still healthy (it serves
    // the deployment; a new tenant does not take it out of service).
    second.ok(&["healthcheck"]);
    assert_eq!(
        pg.psql(
            "writ",
            "SELECT count(*) FROM intermediate_requests \
             WHERE trust_domain LIKE '%.acme.test' AND certificate IS NOT NULL"
        ),
        "0"
    );
    // `writ replica list` on the root holder names the trust domain of each key.
    let listed: Vec<serde_json::Value> = first
        .ok(&["replica", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = listed
        .iter()
        .find(|r| r["key_sha256"] == keys[0].as_str())
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(
        (
            &row["trust_domain"],
            &row["band"],
            &row["state"],
            &row["admitted"]
        ),
        (
            &TENANT_BAND.into(),
            &"investigative".into(),
            &"pending".into(),
            &false.into()
        )
    );

    first.ok(&[
        "replica",
        "admit",
        "--key-sha256",
        &keys[0],
        "--key-sha256",
        &keys[1],
    ]);
    for trust_domain in [TENANT_BAND, "remediate.acme.test"] {
        let line = format!("this replica signs X.509-SVIDs in {trust_domain}");
        wait_until(
            || format!("{line}:\n{}", second.proc.stderr()),
            || second.proc.stderr().contains(&line),
        );
    }
    let certified = pg.psql(
        "writ",
        &format!(
            "SELECT encode(certificate, 'hex') FROM intermediate_requests \
             WHERE trust_domain = '{TENANT_BAND}' AND certificate IS NOT NULL"
        ),
    );
    assert_eq!(certified.lines().count(), 1, "{certified}");

    // A tenant workload on an agent that knows the replica only.
    first.ok(&[
        "profile",
        "create",
        "triage",
        "--selector",
        &format!("unix:uid:{WORKLOAD}"),
        "--band",
        "investigative",
        "--tenant",
        "acme",
    ]);
    first.ok(&[
        "incident",
        "open",
        "INC-1",
        "--title",
        "tenant replica test",
        "--severity",
        "sev3",
        "--assign",
        "triage",
        "--tenant",
        "acme",
    ]);
    let bundle = first.base_pem(dir);
    let token = second.token();
    let agent = AgentProc::start(
        dir,
        "agent",
        &toml_string(&second.address()),
        &bundle,
        &token,
        "",
        None,
    );
    let last = std::cell::RefCell::new(serde_json::Value::Null);
    wait_until(
        || {
            format!(
                "{IDENTITY} from the replica's agent; last answer: {}",
                last.borrow()
            )
        },
        || {
            let answer = fetch(WORKLOAD, &agent.socket());
            let done = ids(&answer) == Some(vec![IDENTITY.to_owned()]);
            *last.borrow_mut() = answer;
            done
        },
    );
    let answer = last.into_inner();
    let chain_pem = answer["svids"][0]["chain_pem"].as_str().unwrap();
    let chain = ders(chain_pem);
    assert_eq!(chain.len(), 2, "[leaf, intermediate]: {answer}");
    assert_eq!(
        hex(&chain[1]),
        certified,
        "the intermediate is the one certified for the replica in {TENANT_BAND}"
    );

    // It verifies against the tenant's bundle, and not against the deployment's.
    let tenant_bundle = answer["bundles"][TENANT_BAND].as_str().unwrap();
    assert_eq!(
        ders(tenant_bundle),
        ders(&first.ok(&[
            "bundle",
            "show",
            "--band",
            "investigative",
            "--tenant",
            "acme"
        ])),
        "the replica serves the root holder's bundle of the tenant"
    );
    let deployment_bundle = first.ok(&["bundle", "show", "--band", "investigative"]);
    let deployment_base = first.ok(&["bundle", "show", "--band", "base"]);
    let work = temp_dir();
    assert!(openssl_accepts(
        work.path(),
        "tenant",
        tenant_bundle,
        chain_pem
    ));
    for (name, other) in [
        ("investigative", &deployment_bundle),
        ("base", &deployment_base),
    ] {
        assert!(
            !openssl_accepts(work.path(), name, other, chain_pem),
            "the deployment's {name} bundle accepted a tenant's SVID"
        );
    }
    let anchors = |pem: &str| -> Vec<CertificateDer<'static>> {
        ders(pem).into_iter().map(CertificateDer::from).collect()
    };
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let tenant_td = writ_verifier::parse_trust_domain(TENANT_BAND).unwrap();
    let deployment_td = writ_verifier::parse_trust_domain("investigate.example.org").unwrap();
    writ_verifier::verify_x509_svid(
        &chain,
        &anchors(tenant_bundle),
        &tenant_td,
        writ_verifier::Usage::Client,
        UnixTime::now(),
    )
    .unwrap();
    for td in [&tenant_td, &deployment_td] {
        assert!(
            writ_verifier::verify_x509_svid(
                &chain,
                &anchors(&deployment_bundle),
                td,
                writ_verifier::Usage::Client,
                UnixTime::now(),
            )
            .is_err(),
            "the deployment's bundle accepted a tenant's SVID as {td}"
        );
    }
}
