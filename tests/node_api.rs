//! The node API end to end through the real binaries: `writ server` and `writ agent` as
//! child processes on a temp directory and a free loopback port, the admin CLI on the
//! server's socket, and the stock `spiffe` crate client (`examples/svid-fetch`) on the
//! agent's Workload API socket.
//!
//! Needs the examples built: `scripts/test` does it, or `cargo build --examples`.
//! Every wait is a bounded poll on the event (a socket that accepts, an exit, the
//! identities a workload gets); nothing asserts how long anything took.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::procs::{AgentProc as Agent, ServerProc as Server, WAIT};
use common::{free_port, quoted, temp_dir, toml_string, write};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An unprivileged uid for workloads that must not match a `unix:uid:0` profile.
const NOBODY: u32 = 65534;

/// The uid of the `triage` workloads: no operator's (root runs the server and is one, and
/// writ refuses profiles that select an operator's uid).
const WORKLOAD: u32 = 65533;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// What these tests do to a server's policy through the CLI.
trait Policy {
    fn profile(&self, name: &str, uid: u32);
    fn profile_selecting(&self, name: &str, selector: &str);
    fn open(&self, incident: &str, profile: &str);
    fn close(&self, incident: &str);
}

impl Policy for Server {
    fn profile(&self, name: &str, uid: u32) {
        self.profile_selecting(name, &format!("unix:uid:{uid}"));
    }

    fn profile_selecting(&self, name: &str, selector: &str) {
        self.ok(&["profile", "create", name, "--selector", selector]);
    }

    fn open(&self, incident: &str, profile: &str) {
        self.ok(&[
            "incident",
            "open",
            incident,
            "--title",
            "node api test",
            "--severity",
            "sev3",
            "--assign",
            profile,
        ]);
    }

    fn close(&self, incident: &str) {
        self.ok(&["incident", "close", incident]);
    }
}

/// `writ agent`'s config: talk to `server` at `address`, trusting `bundle`, keeping
/// state in `data_dir`; `extra` is more TOML (attestation, trust domain).
fn agent_toml(data_dir: &Path, address: &str, bundle: &Path, extra: &str) -> String {
    format!(
        "data_dir = {}\nserver_address = {}\ntrust_bundle = {}\n{extra}",
        quoted(data_dir),
        toml_string(address),
        quoted(bundle)
    )
}

fn join_token(token: &str) -> String {
    format!("join_token = {}\n", toml_string(token))
}

/// Runs `writ agent` with `toml`, which must fail to start: a non-zero exit, nothing
/// on stdout, no Workload API. Returns its stderr lines.
fn agent_fails(dir: &Path, name: &str, toml: &str) -> Vec<String> {
    let mut agent = Agent::spawn_toml(dir, name, toml, None);
    let proc = &mut agent.proc;
    let status = proc.wait_exit();
    let stderr = proc.stderr();
    assert!(!status.success(), "writ agent {name} should fail: {stderr}");
    assert_eq!(proc.stdout(), "", "writ agent {name} printed a banner");
    assert!(
        UnixStream::connect(dir.join(name).join("workload.sock")).is_err(),
        "writ agent {name} left a serving socket"
    );
    stderr.lines().map(str::to_owned).collect()
}

/// The agent's stderr must be exactly one `error:` line mentioning `reason`.
fn assert_one_error(lines: &[String], reason: &str) {
    assert_eq!(lines.len(), 1, "one stderr line expected: {lines:#?}");
    assert!(lines[0].starts_with("error: "), "{lines:#?}");
    assert!(
        lines[0].contains(reason),
        "the error should mention {reason:?}: {lines:#?}"
    );
}

/// The agent's stderr must end with its one `error:` line (log lines may come first).
fn assert_ends_in_error(lines: &[String]) {
    let errors = lines.iter().filter(|l| l.starts_with("error: ")).count();
    assert_eq!(errors, 1, "one error line expected: {lines:#?}");
    assert!(
        lines.last().is_some_and(|l| l.starts_with("error: ")),
        "{lines:#?}"
    );
}

/// What `svid-fetch`, run as `uid`, gets from the Workload API at `socket`.
fn fetch(socket: &Path, uid: u32) -> Value {
    common::procs::fetch(uid, socket)
}

/// `(spiffe_id, hint)` of every SVID in a `svid-fetch` answer, sorted; `None` for an
/// error answer.
fn identities(answer: &Value) -> Option<Vec<(String, String)>> {
    let mut ids: Vec<_> = answer["svids"]
        .as_array()?
        .iter()
        .map(|svid| {
            (
                svid["spiffe_id"].as_str().unwrap_or_default().to_owned(),
                svid["hint"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    ids.sort();
    Some(ids)
}

/// Polls `svid-fetch` until `done` holds for its answer; fails after [`WAIT`].
fn poll_fetch(socket: &Path, uid: u32, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = fetch(socket, uid);
        if done(&answer) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "uid {uid} never got {what}; last answer: {answer}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a workload of `uid` gets exactly the investigative SVIDs of
/// `(profile, incident)`, each with the incident as its hint.
fn wait_identities(socket: &Path, uid: u32, want: &[(&str, &str)]) {
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(profile, incident)| (id_of(profile, incident), incident.to_string()))
        .collect();
    want.sort();
    poll_fetch(socket, uid, &format!("{want:?}"), |answer| {
        identities(answer).as_ref() == Some(&want)
    });
}

/// Waits until a workload of `uid` gets no identity at all.
fn wait_no_identity(socket: &Path, uid: u32) {
    poll_fetch(socket, uid, "NoIdentityIssued", |answer| {
        answer["error"] == "NoIdentityIssued"
    });
}

fn id_of(profile: &str, incident: &str) -> String {
    format!("spiffe://investigate.example.org/agent/{profile}/incident/{incident}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SPIFFE ID of the node SVID an agent keeps in `data_dir`; checks the key beside
/// it is private to its owner.
fn node_id(data_dir: &Path) -> String {
    let mode = std::fs::metadata(data_dir.join("node.key"))
        .expect("node.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "node.key mode {mode:o}");
    let der = std::fs::read(data_dir.join("node.der")).expect("node.der");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("node SVID parses");
    let san = cert
        .subject_alternative_name()
        .expect("one SAN extension")
        .expect("a SAN");
    let uris: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris.len(), 1, "one URI SAN: {uris:?}");
    uris[0].clone()
}

/// Copies an agent's node key and SVID into a fresh data dir `to`.
fn copy_node_svid(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["node.key", "node.der"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

/// An x509pop PKI: a CA, and a node certificate (client auth) with its PKCS#8 key.
struct NodePki {
    ca_pem: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

impl NodePki {
    fn new(name: &str) -> NodePki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} node CA"));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);

        let node_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![format!("node.{name}.internal")]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, format!("node.{name}.internal"));
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = leaf.signed_by(&node_key, &issuer).unwrap();
        NodePki {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: node_key.serialize_pem(),
        }
    }

    /// Writes `<prefix>-cert.pem` and `<prefix>-key.pem`; returns the agent TOML lines.
    fn agent_lines(&self, dir: &Path, prefix: &str) -> String {
        self.lines_with_key(dir, prefix, &self.key_pem)
    }

    /// As [`NodePki::agent_lines`], with another key beside the certificate.
    fn lines_with_key(&self, dir: &Path, prefix: &str, key_pem: &str) -> String {
        let cert = write(&dir.join(format!("{prefix}-cert.pem")), &self.cert_pem);
        let key = write(&dir.join(format!("{prefix}-key.pem")), key_pem);
        format!(
            "x509pop_cert = {}\nx509pop_key = {}\n",
            quoted(&cert),
            quoted(&key)
        )
    }
}

#[test]
fn join_token_agent_serves_incident_identities() {
    let dir = temp_dir();
    let dir = dir.path();
    let server = Server::start(dir, "server", "");
    let bundle = server.base_pem(dir);
    let token = server.token();
    let agent = Agent::start_toml(
        dir,
        "agent",
        &agent_toml(
            &dir.join("agent"),
            &server.address(),
            &bundle,
            &join_token(&token),
        ),
    );
    // The node's ID is derived from the token, never the token itself.
    assert_eq!(
        node_id(&agent.data_dir),
        format!(
            "spiffe://example.org/node/join-{}",
            &sha256_hex(token.as_bytes())[..24]
        )
    );

    // The agent holds its node SVID: its socket's grpc.health.v1 says SERVING, and so
    // does the server's node API's health on the admin socket.
    let socket = agent.socket();
    let health = server.ok(&["healthcheck", "--socket", socket.to_str().unwrap()]);
    assert_eq!(health.trim(), "SERVING");
    let health = server.ok(&["healthcheck", "--service", "writ.node.v1.Node"]);
    assert_eq!(health.trim(), "writ.node.v1.Node: SERVING");

    server.profile("triage", WORKLOAD);
    // A profile alone grants nothing.
    wait_no_identity(&agent.socket(), WORKLOAD);
    server.open("INC-1", "triage");
    wait_identities(&agent.socket(), WORKLOAD, &[("triage", "INC-1")]);
    server.close("INC-1");
    wait_no_identity(&agent.socket(), WORKLOAD);
}

#[test]
fn a_server_signing_through_intermediates_serves_chains_end_to_end() {
    // Every X.509-SVID on the way carries [leaf, intermediate]: the server's own TLS
    // certificate (the agent checks it against the root-only bundle), the node SVID the
    // agent keeps and presents as its TLS client chain, and the workloads' SVIDs.
    let dir = temp_dir();
    let dir = dir.path();
    let server = Server::start(dir, "server", "[ca]\nsign_with_intermediate = true\n");
    let bundle = server.base_pem(dir);
    let roots = std::fs::read_to_string(&bundle).unwrap();
    assert_eq!(roots.matches("BEGIN CERTIFICATE").count(), 1, "{roots}");
    let token = server.token();
    let agent = Agent::start_toml(
        dir,
        "agent",
        &agent_toml(
            &dir.join("agent"),
            &server.address(),
            &bundle,
            &join_token(&token),
        ),
    );
    assert!(node_id(&agent.data_dir).starts_with("spiffe://example.org/node/join-"));
    let node_chain = std::fs::read(agent.data_dir.join("node.der")).unwrap();
    let (rest, _) = x509_parser::parse_x509_certificate(&node_chain).unwrap();
    let (rest, inter) = x509_parser::parse_x509_certificate(rest).expect("an intermediate");
    assert!(rest.is_empty());
    assert!(inter.is_ca());

    server.profile("triage", WORKLOAD);
    server.open("INC-1", "triage");
    wait_identities(&agent.socket(), WORKLOAD, &[("triage", "INC-1")]);
    let answer = fetch(&agent.socket(), WORKLOAD);
    assert_eq!(answer["svids"][0]["chain_len"], 2, "{answer}");
    // The agent restarts from the chain on disk and still reaches the server.
    let mut agent = agent;
    agent.start_again();
    wait_identities(&agent.socket(), WORKLOAD, &[("triage", "INC-1")]);

    // `writ x509 mint --out` writes the chain to svid.pem and the root to bundle.pem; the
    // README's openssl line verifies it.
    server.ok(&[
        "profile",
        "create",
        "logs-api",
        "--selector",
        "unix:uid:65530",
        "--service",
    ]);
    let out = dir.join("svid");
    server.ok(&[
        "x509",
        "mint",
        "--band",
        "base",
        "--spiffe-id",
        "spiffe://example.org/service/logs-api",
        "--out",
        out.to_str().unwrap(),
    ]);
    let svid_pem = std::fs::read_to_string(out.join("svid.pem")).unwrap();
    assert_eq!(
        svid_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "{svid_pem}"
    );
    let bundle_pem = std::fs::read_to_string(out.join("bundle.pem")).unwrap();
    assert_eq!(bundle_pem.matches("BEGIN CERTIFICATE").count(), 1);
    let verdict = Command::new("openssl")
        .current_dir(&out)
        .args([
            "verify",
            "-x509_strict",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "svid.pem",
            "svid.pem",
        ])
        .output()
        .expect("run openssl");
    assert!(
        verdict.status.success()
            && String::from_utf8_lossy(&verdict.stdout).contains("svid.pem: OK"),
        "{verdict:?}"
    );
}

#[test]
fn join_tokens_are_single_use_known_and_unexpired() {
    let dir = temp_dir();
    let dir = dir.path();
    let server = Server::start(dir, "server", "");
    let bundle = server.base_pem(dir);
    let address = server.address();
    let token = server.token();
    let _first = Agent::start_toml(
        dir,
        "first",
        &agent_toml(&dir.join("first"), &address, &bundle, &join_token(&token)),
    );

    let replay = agent_fails(
        dir,
        "second",
        &agent_toml(&dir.join("second"), &address, &bundle, &join_token(&token)),
    );
    assert_one_error(&replay, "already used");

    let unknown = agent_fails(
        dir,
        "unknown",
        &agent_toml(
            &dir.join("unknown"),
            &address,
            &bundle,
            &join_token("bm90LWEtdG9rZW4tdGhpcy1zZXJ2ZXItbWFkZQ"),
        ),
    );
    assert_one_error(&unknown, "unknown join token");

    let created: Value =
        serde_json::from_str(&server.ok(&["token", "create", "--ttl", "1s", "--json"]))
            .expect("token JSON");
    let short = created["token"].as_str().expect("token").to_owned();
    let expires_at = created["expires_at"].as_i64().expect("expires_at");
    // Wait on the clock, not a sleep: the token is dead once now >= expires_at; one
    // more second covers the server's and our clocks reading whole seconds apart.
    let deadline = Instant::now() + WAIT;
    while now() <= expires_at {
        assert!(Instant::now() < deadline, "the clock is not moving");
        std::thread::sleep(Duration::from_millis(50));
    }
    let expired = agent_fails(
        dir,
        "expired",
        &agent_toml(&dir.join("expired"), &address, &bundle, &join_token(&short)),
    );
    assert_one_error(&expired, "expired");
}

#[test]
fn server_and_agent_restart_from_disk() {
    restart_from_the_store("");
}

/// The same on PostgreSQL: the server's state and its audit log are in the database (its
/// keys stay in its data directory), and a kill -9 loses none of it.
#[test]
fn server_on_postgresql_serves_and_restarts_from_the_database() {
    let Some(pg) = common::postgres::Postgres::start() else {
        return;
    };
    pg.create_database("writ");
    restart_from_the_store(&format!("store = {}\n", toml_string(&pg.url("writ"))));
    // The policy went to the database, not to a redb file.
    assert_eq!(
        pg.psql("writ", "SELECT count(*) FROM incidents"),
        "3",
        "incidents INC-1..3 are rows of the database"
    );
    assert_eq!(
        pg.psql(
            "writ",
            "SELECT count(*) FROM join_tokens WHERE body->>'used_at' IS NOT NULL"
        ),
        "1"
    );
    assert_eq!(
        pg.psql(
            "writ",
            "SELECT count(*) FROM audit_records \
             WHERE convert_from(body, 'UTF8')::json->>'action' = 'incident.open'"
        ),
        "3",
        "the audit log is in the database"
    );
}

/// A second server on the same database, without the roots' keys, is a signing replica:
/// it logs its intermediate keys' hashes and signs nothing (its node API stays closed)
/// until an operator admits them on the server holding the roots; then it serves an
/// agent whose workloads get [leaf, its own intermediate] chaining to the roots both
/// servers serve, byte for byte. It never writes the authorities, and signs no JWT-SVID.
/// A database writer who posts a CSR of its own under an admitted key's hash gets a
/// refusal, not a certificate.
#[test]
fn a_second_server_signs_through_its_own_intermediate_once_admitted() {
    let Some(pg) = common::postgres::Postgres::start() else {
        return;
    };
    pg.create_database("writ");
    let dir = temp_dir();
    let dir = dir.path();
    let store = format!("store = {}\n", toml_string(&pg.url("writ")));
    let first = Server::start(dir, "first", &store);
    let authorities = pg.psql(
        "writ",
        "SELECT records::text FROM authorities ORDER BY trust_domain",
    );

    let mut second = Server::spawn(dir, "second", &store, None);
    let port = second.port;
    let deadline = Instant::now() + WAIT;
    let keys = loop {
        second.proc.check_running();
        let keys = second.keys_to_admit();
        if keys.len() == 3 {
            break keys;
        }
        assert!(
            Instant::now() < deadline,
            "no keys logged:\n{}",
            second.proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Its three requests are posted and stay pending: nothing is certified, and the
    // replica serves no agent.
    let deadline = Instant::now() + WAIT;
    while pg
        .psql("writ", "SELECT count(*) FROM intermediate_requests")
        .trim()
        != "3"
    {
        assert!(Instant::now() < deadline, "requests not posted");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pg.psql(
            "writ",
            "SELECT count(*) FROM intermediate_requests WHERE certificate IS NOT NULL"
        )
        .trim(),
        "0"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    // Its CAs cannot sign yet: grpc.health.v1 on its admin socket says NOT_SERVING (and
    // the admin detail says what to do), SERVING only once they are certified (below).
    let health = second.run(&["healthcheck"]);
    assert!(!health.status.success(), "{health:?}");
    assert_eq!(
        String::from_utf8_lossy(&health.stdout).lines().next(),
        Some("NOT_SERVING"),
        "{health:?}"
    );
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("writ replica admit --key-sha256")
            || String::from_utf8_lossy(&health.stderr).contains("writ replica admit --key-sha256"),
        "{health:?}"
    );
    assert!(
        first
            .proc
            .stderr()
            .contains("writ replica admit --key-sha256")
    );
    // The replica cannot admit itself.
    let own = second.run(&["replica", "admit", "--key-sha256", &keys[0]]);
    assert!(!own.status.success());
    assert!(
        String::from_utf8_lossy(&own.stderr).contains("does not hold the roots"),
        "{own:?}"
    );

    let mut admit = vec!["replica", "admit"];
    for key in &keys {
        admit.extend(["--key-sha256", key.as_str()]);
    }
    let admitted = first.ok(&admit);
    assert_eq!(admitted.lines().count(), 3, "{admitted}");
    second.wait_ready();
    second.ok(&["healthcheck"]);
    assert_eq!(
        pg.psql(
            "writ",
            "SELECT count(*) FROM intermediate_requests WHERE certificate IS NOT NULL"
        )
        .trim(),
        "3"
    );
    for band in ["base", "investigative", "remediation"] {
        assert_eq!(
            second.ok(&["bundle", "show", "--band", band]),
            first.ok(&["bundle", "show", "--band", band]),
            "{band}"
        );
    }
    assert_eq!(
        second.ok(&["bundle", "show", "--format", "jwks"]),
        first.ok(&["bundle", "show", "--format", "jwks"])
    );
    assert_eq!(
        pg.psql(
            "writ",
            "SELECT records::text FROM authorities ORDER BY trust_domain"
        ),
        authorities
    );

    // An agent of the second server: its node SVID and its workloads' SVIDs chain
    // through the second server's intermediate to the first server's roots.
    let bundle = first.base_pem(dir);
    let token = second.token();
    let agent = Agent::start_toml(
        dir,
        "agent",
        &agent_toml(
            &dir.join("agent"),
            &second.address(),
            &bundle,
            &join_token(&token),
        ),
    );
    let node_chain = std::fs::read(agent.data_dir.join("node.der")).unwrap();
    let (rest, _) = x509_parser::parse_x509_certificate(&node_chain).unwrap();
    let (after, inter) = x509_parser::parse_x509_certificate(rest).expect("an intermediate");
    assert!(inter.is_ca() && after.is_empty());
    let inter_der = &rest[..rest.len() - after.len()];
    let certified = pg.psql(
        "writ",
        "SELECT encode(certificate, 'hex') FROM intermediate_requests WHERE band = 'base'",
    );
    assert!(
        certified.contains(&hex(inter_der)),
        "the node SVID's intermediate is the one certified for the replica"
    );
    first.profile("triage", WORKLOAD);
    first.open("INC-1", "triage");
    wait_identities(&agent.socket(), WORKLOAD, &[("triage", "INC-1")]);
    let answer = fetch(&agent.socket(), WORKLOAD);
    assert_eq!(answer["svids"][0]["chain_len"], 2, "{answer}");

    // Restarted (kill -9), the replica keeps its keys and certificates: it serves at once,
    // with no new admission, and asks for nothing new.
    second.start_again();
    second.ok(&["healthcheck"]);
    assert_eq!(second.keys_to_admit(), keys);
    assert_eq!(
        pg.psql("writ", "SELECT count(*) FROM intermediate_requests"),
        "3"
    );

    // No JWT-SVID from a replica: Unavailable, so agents ask another server.
    first.ok(&[
        "profile",
        "create",
        "logs-api",
        "--selector",
        "unix:uid:65530",
        "--service",
    ]);
    let jwt = second.run(&[
        "jwt",
        "mint",
        "--band",
        "base",
        "--spiffe-id",
        "spiffe://example.org/service/logs-api",
        "--audience",
        "logs",
    ]);
    assert!(!jwt.status.success());
    assert!(
        String::from_utf8_lossy(&jwt.stderr).contains("does not hold the keys"),
        "{jwt:?}"
    );

    // A database writer posts its own CSR under an admitted key's hash: refused.
    let forger = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://example.org".try_into().unwrap(),
    )];
    let csr = params.serialize_request(&forger).unwrap();
    pg.psql(
        "writ",
        &format!(
            "INSERT INTO intermediate_requests (replica, band, csr, key_sha256) \
             VALUES ('forger', 'base', decode('{}', 'hex'), '{}')",
            hex(csr.der()),
            keys[0]
        ),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let row = pg.psql(
            "writ",
            "SELECT certificate IS NULL, refused IS NOT NULL FROM intermediate_requests \
             WHERE replica = 'forger'",
        );
        if row == "t|t" {
            break;
        }
        // `certificate IS NULL` false: it was certified.
        assert!(
            !row.starts_with('f'),
            "a forged request was certified: {row}"
        );
        assert!(
            Instant::now() < deadline,
            "the forged request was never refused: {row}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // `writ replica list`: the root holder knows which keys are admitted; the replica
    // shows the requests only.
    let listed = |server: &Server| -> Vec<Value> {
        server
            .ok(&["replica", "list", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let on_root = listed(&first);
    for key in &keys {
        let row = on_root
            .iter()
            .find(|r| r["key_sha256"] == key.as_str() && r["replica"] != "forger")
            .unwrap_or_else(|| panic!("{key} not listed: {on_root:?}"));
        assert_eq!(
            (&row["state"], &row["admitted"]),
            (&"certified".into(), &true.into())
        );
    }
    // The forged request shows as its own row, refused.
    assert!(
        on_root
            .iter()
            .any(|r| r["replica"] == "forger" && r["state"] == "refused"),
        "{on_root:?}"
    );
    assert!(listed(&second).iter().all(|r| r["admitted"].is_null()));

    // `writ replica remove`: only on the root holder; the keys' next requests (a renewal)
    // are not certified.
    let mut remove = vec!["replica", "remove"];
    for key in &keys {
        remove.extend(["--key-sha256", key.as_str()]);
    }
    assert!(!second.run(&remove).status.success());
    // A hash that is not one is refused whole, and removes nothing.
    let mut bad = remove.clone();
    bad.extend(["--key-sha256", "not-a-key\u{1b}[2J"]);
    let refused = first.run(&bad);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("64 hex digits") && !said.contains('\u{1b}'),
        "{said}"
    );
    assert!(listed(&first).iter().any(|r| r["admitted"] == true));
    assert_eq!(first.ok(&remove).lines().count(), 3);
    assert!(
        listed(&first)
            .iter()
            .filter(|r| keys.contains(&r["key_sha256"].as_str().unwrap_or_default().to_owned()))
            .all(|r| r["admitted"] == false)
    );
    pg.psql(
        "writ",
        "INSERT INTO intermediate_requests (replica, band, csr, key_sha256) \
         SELECT replica, band, csr, key_sha256 FROM intermediate_requests \
         WHERE certificate IS NOT NULL AND band = 'base'",
    );
    // Several of the root holder's rounds (every 0.5 s) go by; it stays pending.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pg.psql(
            "writ",
            "SELECT count(*) FROM intermediate_requests \
             WHERE band = 'base' AND certificate IS NULL AND refused IS NULL"
        ),
        "1"
    );
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `writ healthcheck` on a server with a shared store: it signs and names itself among
/// the replicas; while PostgreSQL is down it says it is not signing and exits non-zero (a
/// probe sees it); once the database is back it signs again by itself.
#[test]
fn healthcheck_shows_the_replicas_and_fails_while_the_server_cannot_sign() {
    let Some(pg) = common::postgres::Postgres::start() else {
        return;
    };
    pg.create_database("writ");
    let dir = temp_dir();
    let dir = dir.path();
    let server = Server::start(
        dir,
        "server",
        &format!("store = {}\n", toml_string(&pg.url("writ"))),
    );
    let health = |server: &Server| {
        let out = server.run(&["healthcheck", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.success(), v)
    };
    let (ok, v) = health(&server);
    assert!(ok, "{v}");
    assert_eq!(v["status"], "ok");
    let me = v["replication"]["this_replica"]
        .as_str()
        .expect("this replica")
        .to_owned();
    let replicas = v["replication"]["replicas"].as_array().expect("replicas");
    assert!(
        replicas
            .iter()
            .any(|r| r["name"] == me.as_str() && r["state"] == "signing"),
        "{v}"
    );

    pg.stop();
    let deadline = Instant::now() + WAIT;
    let v = loop {
        let (ok, v) = health(&server);
        if !ok {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "still signing without its database: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v["status"], "not_signing");
    assert_eq!(v["serving"], "NOT_SERVING");
    // Whichever the readiness check noticed first: the lease run out, or the store gone.
    let why = v["not_signing"].as_str().unwrap_or_default();
    assert!(
        why.contains("cannot prove its policy is current") || why.contains("store: "),
        "{v}"
    );

    pg.start_again();
    let deadline = Instant::now() + WAIT;
    while !health(&server).0 {
        assert!(
            Instant::now() < deadline,
            "did not sign again after the database came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn restart_from_the_store(store: &str) {
    let dir = temp_dir();
    let dir = dir.path();
    let mut server = Server::start(dir, "server", store);
    if !store.is_empty() {
        for file in ["writ.redb", "audit.redb"] {
            assert!(
                !dir.join("server").join(file).exists(),
                "a server on PostgreSQL made {file}"
            );
        }
    }
    let bundle = server.base_pem(dir);
    let token = server.token();
    // The config keeps naming the token, which is used up by the first start: a restart
    // must not need it.
    let mut agent = Agent::start_toml(
        dir,
        "agent",
        &agent_toml(
            &dir.join("agent"),
            &server.address(),
            &bundle,
            &join_token(&token),
        ),
    );
    let node = node_id(&agent.data_dir);

    server.profile("triage", WORKLOAD);
    server.profile("fixer", NOBODY);
    server.open("INC-1", "triage");
    server.open("INC-2", "triage");
    server.open("INC-3", "fixer");
    wait_identities(
        &agent.socket(),
        WORKLOAD,
        &[("triage", "INC-1"), ("triage", "INC-2")],
    );
    wait_identities(&agent.socket(), NOBODY, &[("fixer", "INC-3")]);
    server.close("INC-2");
    server.close("INC-3");
    wait_identities(&agent.socket(), WORKLOAD, &[("triage", "INC-1")]);
    wait_no_identity(&agent.socket(), NOBODY);

    agent.kill();
    server.start_again();
    agent.start_again();
    assert_eq!(node_id(&agent.data_dir), node, "the agent attested again");

    wait_identities(&agent.socket(), WORKLOAD, &[("triage", "INC-1")]);
    wait_no_identity(&agent.socket(), NOBODY);
    // And the restarted pair still follows policy.
    server.close("INC-1");
    wait_no_identity(&agent.socket(), WORKLOAD);
    // The audit log, written across the kill, verifies through the server.
    let verified = server.ok(&["audit", "verify"]);
    assert!(verified.contains("audit log intact"), "{verified}");
}

#[test]
fn x509pop_attests_nodes_of_the_trusted_ca_only() {
    let dir = temp_dir();
    let dir = dir.path();
    let pki = NodePki::new("trusted");
    let ca = write(&dir.join("ca.pem"), &pki.ca_pem);
    let server = Server::start(dir, "server", &format!("x509pop_ca = {}\n", quoted(&ca)));
    let bundle = server.base_pem(dir);
    let address = server.address();

    let agent = Agent::start_toml(
        dir,
        "agent",
        &agent_toml(
            &dir.join("agent"),
            &address,
            &bundle,
            &pki.agent_lines(dir, "node"),
        ),
    );
    assert_eq!(
        node_id(&agent.data_dir),
        format!(
            "spiffe://example.org/node/x509pop-{}",
            &sha256_hex(&pki.cert_der)[..32]
        )
    );
    server.profile("triage", WORKLOAD);
    server.open("INC-1", "triage");
    wait_identities(&agent.socket(), WORKLOAD, &[("triage", "INC-1")]);

    // A node certificate from a CA the server does not trust.
    let rogue = NodePki::new("rogue");
    let refused = agent_fails(
        dir,
        "rogue",
        &agent_toml(
            &dir.join("rogue"),
            &address,
            &bundle,
            &rogue.agent_lines(dir, "rogue"),
        ),
    );
    assert_one_error(&refused, "x509pop");
    assert!(refused[0].contains("chain"), "{refused:?}");

    // The trusted certificate without its key: no proof of possession.
    let stolen = agent_fails(
        dir,
        "stolen",
        &agent_toml(
            &dir.join("stolen"),
            &address,
            &bundle,
            &pki.lines_with_key(dir, "stolen", &rogue.key_pem),
        ),
    );
    assert_one_error(&stolen, "proof of possession");

    // A server without x509pop_ca takes no x509pop at all.
    let plain = Server::start(dir, "plain", "");
    let plain_bundle = plain.base_pem(dir);
    let off = agent_fails(
        dir,
        "off",
        &agent_toml(
            &dir.join("off"),
            &plain.address(),
            &plain_bundle,
            &pki.agent_lines(dir, "off"),
        ),
    );
    assert_one_error(&off, "x509pop");
    assert!(off[0].contains("not configured"), "{off:?}");
}

#[test]
fn foreign_node_svids_and_wrong_bundles_are_refused() {
    let dir = temp_dir();
    let dir = dir.path();
    let server = Server::start(dir, "server", "");
    let bundle = server.base_pem(dir);
    let address = server.address();

    // Node SVIDs that some other writ server issued: in another trust domain, and in
    // ours from an independent CA.
    for (name, trust_domain) in [("other", "other.org"), ("twin", "example.org")] {
        let foreign = Server::start(
            dir,
            name,
            &format!("trust_domain = {}\n", toml_string(trust_domain)),
        );
        let foreign_bundle = foreign.base_pem(dir);
        let attested = format!("{name}-node");
        let mut foreign_agent = Agent::start_toml(
            dir,
            &attested,
            &agent_toml(
                &dir.join(&attested),
                &foreign.address(),
                &foreign_bundle,
                &format!(
                    "trust_domain = {}\n{}",
                    toml_string(trust_domain),
                    join_token(&foreign.token())
                ),
            ),
        );
        assert!(
            node_id(&foreign_agent.data_dir).starts_with(&format!("spiffe://{trust_domain}/node/")),
        );
        foreign_agent.kill();

        let thief = format!("{name}-thief");
        copy_node_svid(&foreign_agent.data_dir, &dir.join(&thief));
        let lines = agent_fails(
            dir,
            &thief,
            &agent_toml(&dir.join(&thief), &address, &bundle, ""),
        );
        assert_ends_in_error(&lines);
    }

    // An agent that trusts another server's CA will not talk to ours, and so does not
    // spend its token on it: the same token then works with the right bundle.
    let twin_bundle = dir.join("twin-base.pem");
    let token = server.token();
    let lines = agent_fails(
        dir,
        "misled",
        &agent_toml(
            &dir.join("misled"),
            &address,
            &twin_bundle,
            &join_token(&token),
        ),
    );
    assert_one_error(&lines, "join token attestation failed");
    let agent = Agent::start_toml(
        dir,
        "agent",
        &agent_toml(&dir.join("agent"), &address, &bundle, &join_token(&token)),
    );
    server.profile("triage", WORKLOAD);
    server.open("INC-1", "triage");
    wait_identities(&agent.socket(), WORKLOAD, &[("triage", "INC-1")]);
}

#[test]
fn bad_agent_configs_are_refused() {
    let dir = temp_dir();
    let dir = dir.path();
    let pki = NodePki::new("node");
    let bundle = write(&dir.join("bundle.pem"), &pki.ca_pem);
    // Nothing needs to listen: these fail before any connection.
    let address = format!("127.0.0.1:{}", free_port());

    let typo = agent_fails(
        dir,
        "typo",
        &agent_toml(
            &dir.join("typo"),
            &address,
            &bundle,
            "join_tokn = \"abc\"\n",
        ),
    );
    assert_one_error(&typo, "unknown field");

    let both = agent_fails(
        dir,
        "both",
        &agent_toml(
            &dir.join("both"),
            &address,
            &bundle,
            &format!("{}{}", join_token("abc"), pki.agent_lines(dir, "both")),
        ),
    );
    assert_one_error(&both, "give one of: join_token");

    let half = agent_fails(
        dir,
        "half",
        &agent_toml(
            &dir.join("half"),
            &address,
            &bundle,
            &format!("x509pop_cert = {}\n", quoted(&dir.join("both-cert.pem"))),
        ),
    );
    assert_one_error(&half, "give one of: join_token");

    let none = agent_fails(
        dir,
        "none",
        &agent_toml(&dir.join("none"), &address, &bundle, ""),
    );
    assert_one_error(&none, "no attestation configured");
}

#[test]
fn agent_gives_up_on_a_server_that_is_down_or_silent() {
    let dir = temp_dir();
    let dir = dir.path();
    let bundle = write(&dir.join("bundle.pem"), &NodePki::new("node").ca_pem);

    let down = agent_fails(
        dir,
        "down",
        &agent_toml(
            &dir.join("down"),
            &format!("127.0.0.1:{}", free_port()),
            &bundle,
            &join_token("abc"),
        ),
    );
    assert_one_error(&down, "join token attestation failed");

    // Accepts TCP (the kernel completes the handshake) and never says a word: the
    // agent's connect timeout must end it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let lines = agent_fails(
        dir,
        "silent",
        &agent_toml(&dir.join("silent"), &address, &bundle, &join_token("abc")),
    );
    assert_one_error(&lines, "join token attestation failed");
    drop(silent);
}

#[test]
fn a_revoked_node_svid_is_refused_and_the_node_must_attest_again() {
    let dir = temp_dir();
    let dir = dir.path();
    let server = Server::start(dir, "server", "");
    let bundle = server.base_pem(dir);
    let address = server.address();
    let mut agent = Agent::start_toml(
        dir,
        "agent",
        &agent_toml(
            &dir.join("agent"),
            &address,
            &bundle,
            &join_token(&server.token()),
        ),
    );
    let der = std::fs::read(agent.data_dir.join("node.der")).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let serial: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let listed = server.ok(&["svid", "list", "--json"]);
    assert!(
        listed.contains(&format!("\"serial\":\"{serial}\"")),
        "the node SVID is listed: {listed}"
    );
    server.ok(&["svid", "revoke", &serial]);
    // The running agent's policy stream, opened with that SVID, is cut at once, and
    // every attempt to reopen it is refused.
    let deadline = Instant::now() + WAIT;
    while !agent
        .proc
        .stderr()
        .contains("is revoked; attest the node again")
    {
        assert!(
            Instant::now() < deadline,
            "the agent's sync stream was not cut: {}",
            agent.proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.kill();

    // The node SVID on disk is still unexpired, but the server refuses it.
    let lines = agent_fails(
        dir,
        "agent",
        &agent_toml(&dir.join("agent"), &address, &bundle, ""),
    );
    assert_ends_in_error(&lines);
    assert!(
        lines.last().unwrap().contains("revoked"),
        "the error says why: {lines:#?}"
    );
    // Attesting again with a fresh token gives a node SVID the server accepts.
    let token = server.token();
    let again = Agent::start_toml(
        dir,
        "again",
        &agent_toml(&dir.join("again"), &address, &bundle, &join_token(&token)),
    );
    server.profile("triage", WORKLOAD);
    server.open("INC-1", "triage");
    wait_identities(&again.socket(), WORKLOAD, &[("triage", "INC-1")]);
}

/// A workload behind a remote agent reports activity: the agent forwards it over the node
/// API under its node SVID, the server appends it, and the record names the workload's
/// SVID serial and the node.
#[test]
fn remote_agent_forwards_activity_reports() {
    use writ::proto::agent as pb;
    let dir = temp_dir();
    let dir = dir.path();
    let mut server = Server::start(dir, "server", "");
    let bundle = server.base_pem(dir);
    let token = server.token();
    // The debug test binary outgrew the default hashing limit (256 MiB): raise it, as the
    // attestor's own tests do, since this one hashes itself.
    let agent = Agent::start_toml(
        dir,
        "agent",
        &agent_toml(
            &dir.join("agent"),
            &server.address(),
            &bundle,
            &format!(
                "{}[workload_api]\nmax_exe_hash_bytes = 4294967296\n",
                join_token(&token)
            ),
        ),
    );
    // This process is the workload; it runs as root, an operator, so the profile selects
    // its executable's digest instead (and so the remote agent hashes it).
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let exe_sha256 = sha256_hex(&std::fs::read("/proc/self/exe").unwrap());
    server.profile_selecting("triage", &format!("unix:sha256:{exe_sha256}"));
    server.open("INC-1", "triage");
    let want = id_of("triage", "INC-1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = agent.socket();
    let (answer, serial, refused) = runtime.block_on(async {
        // The agent follows policy over its sync stream: wait for the identity.
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let svid = loop {
            if let Ok(ctx) = client.fetch_x509_context().await
                && let Some(svid) = ctx
                    .svids()
                    .iter()
                    .find(|s| s.spiffe_id().to_string() == want)
            {
                break svid.clone();
            }
            assert!(Instant::now() < deadline, "no identity for INC-1");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (_, cert) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).unwrap();
        let serial: String = cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut api =
            pb::agent_api_client::AgentApiClient::new(writ::uds::channel(&socket).await.unwrap());
        let request = |uri: &str| {
            let mut request = tonic::Request::new(pb::RecordActivityRequest {
                incident: "INC-1".into(),
                kind: pb::ActivityKind::Evidence.into(),
                digest: sha256_hex(b"the logs"),
                tool: String::new(),
                uri: uri.into(),
                summary: "checkout logs".into(),
            });
            request
                .metadata_mut()
                .insert("workload.spiffe.io", "true".parse().unwrap());
            request
        };
        let answer = api
            .record_activity(request("https://logs.example/q?service=checkout"))
            .await
            .unwrap()
            .into_inner();
        let refused = api
            .record_activity(request("https://logs.example/q?token=abc"))
            .await
            .unwrap_err();
        (answer, serial, refused)
    });
    assert_eq!(answer.spiffe_id, want);
    assert_eq!(answer.serial, serial);
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    // The agent reports the workload attestation off the answer's path: wait for it.
    let deadline = Instant::now() + WAIT;
    while !server
        .ok(&["audit", "export"])
        .contains("\"workload.attest\"")
    {
        assert!(Instant::now() < deadline, "no workload attestation record");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Read the server's log at rest.
    server.proc.kill();
    let data = dir.join("server");
    let log = writ::audit::AuditLog::open(
        &data.join("audit.redb"),
        &data.join("keys"),
        &writ::audit::origin_for("example.org"),
    )
    .unwrap();
    let all: Vec<writ::audit::Record> = log
        .read(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| writ::audit::Record::decode(&bytes).unwrap())
        .collect();
    let attested: Vec<_> = all
        .iter()
        .filter(|r| r.kind == writ::audit::Kind::Attestation && r.action == "workload.attest")
        .collect();
    assert_eq!(
        attested.len(),
        1,
        "one workload, one identity: {attested:?}"
    );
    assert_eq!(attested[0].actor, node_id(&agent.data_dir));
    assert_eq!(attested[0].detail["node"], node_id(&agent.data_dir));
    assert_eq!(attested[0].spiffe_id.as_deref(), Some(want.as_str()));
    assert_eq!(attested[0].incident.as_deref(), Some("INC-1"));
    let selectors = attested[0].detail["selectors"].to_string();
    assert!(
        selectors.contains(&format!("\"unix:uid:{uid}\"")),
        "{selectors}"
    );
    assert!(
        selectors.contains(&format!("\"unix:sha256:{exe_sha256}\"")),
        "{selectors}"
    );
    let records: Vec<_> = all
        .iter()
        .filter(|r| r.kind == writ::audit::Kind::Activity)
        .collect();
    assert_eq!(
        records.len(),
        1,
        "the refused report appended nothing: {records:?}"
    );
    let record = &records[0];
    let (index, _) = log.read(answer.index, 1).unwrap().pop().unwrap();
    assert_eq!(index, answer.index);
    assert_eq!(record.action, "activity.evidence");
    assert_eq!(record.actor, want);
    assert_eq!(record.incident.as_deref(), Some("INC-1"));
    assert_eq!(record.serial.as_deref(), Some(serial.as_str()));
    assert_eq!(record.detail["node"], node_id(&agent.data_dir));
    assert_eq!(
        record.detail["uri"],
        "https://logs.example/q?service=checkout"
    );
}
