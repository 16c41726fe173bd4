//! The real `writ` binary: `writ dev` as a child process on a temp data dir, the admin
//! commands against its socket, and what an operator sees — files openssl accepts,
//! JSON that parses, CAs that survive a restart, and one clear error line for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{openssl_verify_files, parse_cert, pem_decode};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use writ_verifier::{Band, Usage, verify_x509_svid};

const WRIT: &str = env!("CARGO_BIN_EXE_writ");
/// Upper bound on waiting for the server to come up or go down; never a duration the
/// test asserts, only how long it is willing to wait before calling it a failure.
const PATIENCE: Duration = Duration::from_secs(60);

/// A `writ dev` child process. Dropping it kills the process, so no test leaks one.
struct DevServer {
    child: Option<Child>,
    socket: PathBuf,
    stderr_log: PathBuf,
}

impl DevServer {
    /// Starts `writ dev --data-dir <data_dir>` and waits until it says it is serving.
    fn start(data_dir: &Path) -> DevServer {
        let stderr_log = data_dir.with_extension(format!("{}.stderr.log", std::process::id()));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)
            .expect("server stderr log");
        let mut child = Command::new(WRIT)
            .arg("dev")
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("WRIT_ADMIN_SOCKET")
            .env_remove("WRIT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn writ dev");
        let stdout = child.stdout.take().expect("stdout");
        let mut server = DevServer {
            child: Some(child),
            socket: data_dir.join("admin.sock"),
            stderr_log,
        };

        // The banner is printed after the admin socket is bound: wait for its socket line
        // (an event), with a bound on how long we are willing to wait.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut banner = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.trim_start().starts_with("admin socket:");
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(e) => panic!(
                    "writ dev did not come up ({e}); stdout: {banner:?}; stderr: {}",
                    server.stderr()
                ),
            }
        }
        let announced = banner.last().unwrap().trim_start()["admin socket:".len()..].trim();
        assert_eq!(
            Path::new(announced),
            std::path::absolute(&server.socket).unwrap(),
            "banner names another socket"
        );
        {
            use std::os::unix::fs::FileTypeExt;
            let meta = std::fs::metadata(&server.socket).expect("admin socket exists");
            assert!(meta.file_type().is_socket());
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o600,
                "admin socket mode"
            );
        }
        let health = server.writ(["healthcheck", "--json"]);
        assert!(
            health.status.success(),
            "healthcheck: {}",
            text(&health.stderr)
        );
        server.reap_check();
        server
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    fn reap_check(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
            panic!("writ dev exited: {status}; stderr: {}", self.stderr());
        }
    }

    /// Runs `writ <args>` against this server.
    fn writ<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        writ_cmd(&self.socket, args)
    }

    /// `writ <args>`, which must succeed; returns stdout.
    fn ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.writ(&args);
        assert!(
            out.status.success(),
            "writ {args:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Stops the server the way an operator does (SIGTERM) and waits for a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        let exit = loop {
            if let Some(exit) = child.try_wait().expect("try_wait") {
                break exit;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("writ dev ignored SIGTERM; stderr: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "writ dev exited with {exit} on SIGTERM");
        assert!(
            !self.socket.exists(),
            "writ dev left its admin socket behind"
        );
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn writ_cmd<I, S>(socket: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(WRIT)
        .args(args)
        .env("WRIT_ADMIN_SOCKET", socket)
        .env_remove("WRIT_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run writ")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Creates the `triage` agent profile and opens `incident` assigned to it: admin minting
/// of an incident-bound identity is refused unless the incident is open.
fn open_incident(server: &DevServer, incident: &str) {
    let profiles = server.ok(["profile", "list", "--json"]);
    if !profiles.contains("\"triage\"") {
        server.ok([
            "profile",
            "create",
            "triage",
            "--selector",
            "unix:uid:1001",
            "--scope",
            "logs:read",
        ]);
    }
    server.ok([
        "incident",
        "open",
        incident,
        "--title",
        "checkout latency",
        "--severity",
        "sev3",
        "--assign",
        "triage",
    ]);
}

fn band_bundle(server: &DevServer, band: &str, dir: &Path) -> PathBuf {
    let pem = server.ok(["bundle", "show", "--band", band]);
    let path = dir.join(format!("{band}-bundle.pem"));
    std::fs::write(&path, &pem).unwrap();
    path
}

fn certs_in(pem: &str) -> Vec<Vec<u8>> {
    pem_decode(pem)
        .into_iter()
        .map(|(label, der)| {
            assert_eq!(label, "CERTIFICATE");
            der
        })
        .collect()
}

#[test]
fn minted_svid_files_verify_with_openssl_and_carry_the_agent_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let server = DevServer::start(&tmp.path().join("data"));
    open_incident(&server, "INC-1");
    let out_dir = tmp.path().join("svid");
    let stdout = server.ok([
        "x509",
        "mint",
        "--agent",
        "triage",
        "--incident",
        "INC-1",
        "--scope",
        "logs:read",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let expected_id = "spiffe://investigate.example.org/agent/triage/incident/INC-1";
    assert!(stdout.contains(expected_id), "stdout: {stdout}");

    let svid_pem = out_dir.join("svid.pem");
    let key_pem = out_dir.join("key.pem");
    let mode = std::fs::metadata(&key_pem).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key.pem mode is {mode:o}");

    // openssl verify -x509_strict -CAfile <(writ bundle show --band investigative) svid.pem
    let bundle = band_bundle(&server, "investigative", tmp.path());
    for purpose in [None, Some("sslclient"), Some("sslserver")] {
        let verdict = openssl_verify_files(&bundle, &svid_pem, purpose);
        assert!(verdict.ok, "openssl ({purpose:?}): {}", verdict.output);
    }
    // The bundle written beside the SVID is the same one.
    assert_eq!(
        std::fs::read_to_string(out_dir.join("bundle.pem")).unwrap(),
        std::fs::read_to_string(&bundle).unwrap()
    );
    // Another band's bundle refuses it.
    let other = band_bundle(&server, "remediation", tmp.path());
    let verdict = openssl_verify_files(&other, &svid_pem, None);
    assert!(
        !verdict.ok,
        "accepted by the remediation bundle: {}",
        verdict.output
    );

    // The files as a Rust relying party reads them: the key matches the certificate,
    // and the identity and claims are the agent's.
    let cert = certs_in(&std::fs::read_to_string(&svid_pem).unwrap()).remove(0);
    let keys = pem_decode(&std::fs::read_to_string(&key_pem).unwrap());
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].0, "PRIVATE KEY", "unencrypted PKCS#8");
    let svid = spiffe::X509Svid::parse_from_der(&cert, &keys[0].1).expect("spiffe crate parses");
    assert_eq!(svid.spiffe_id().to_string(), expected_id);
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &keys[0].1,
        &rng,
    )
    .expect("P-256 key");
    assert_eq!(
        ring::signature::KeyPair::public_key(&pair).as_ref(),
        parse_cert(&cert)
            .public_key()
            .subject_public_key
            .data
            .as_ref(),
        "key.pem does not match svid.pem"
    );
    let bundle_certs = certs_in(&std::fs::read_to_string(&bundle).unwrap());
    let verified = verify_x509_svid(
        &[CertificateDer::from(cert.as_slice())],
        &bundle_certs
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect::<Vec<_>>(),
        &spiffe::TrustDomain::new("investigate.example.org").unwrap(),
        Usage::Client,
        UnixTime::now(),
    )
    .expect("writ-verifier accepts it");
    let claims = verified.claims.expect("agent SVIDs carry claims");
    assert_eq!(claims.band, Some(Band::Investigative));
    assert_eq!(claims.incident.as_deref(), Some("INC-1"));
    assert_eq!(claims.scopes, ["logs:read"]);
}

#[test]
fn json_outputs_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let server = DevServer::start(&tmp.path().join("data"));
    open_incident(&server, "INC-1");
    open_incident(&server, "INC-9");
    // A standing identity is minted only for a service profile that holds it.
    server.ok([
        "profile",
        "create",
        "log-store",
        "--selector",
        "unix:uid:1002",
        "--service",
    ]);

    // x509 mint --json, without --out: the PEMs are in the object.
    let out = server.ok([
        "x509",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/service/log-store",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).expect("x509 mint --json is one JSON value");
    assert_eq!(v["spiffe_id"], "spiffe://example.org/service/log-store");
    assert!(v["serial"].as_str().is_some_and(|s| s.len() == 32));
    assert!(v["not_after"].is_i64());
    let leaf = certs_in(v["svid_pem"].as_str().unwrap());
    assert_eq!(leaf.len(), 1);
    assert!(!certs_in(v["bundle_pem"].as_str().unwrap()).is_empty());
    assert_eq!(
        pem_decode(v["key_pem"].as_str().unwrap())[0].0,
        "PRIVATE KEY"
    );
    assert_eq!(
        parse_cert(&leaf[0]).raw_serial_as_string().replace(':', ""),
        v["serial"].as_str().unwrap()
    );

    // x509 mint --json --out: metadata only, files written.
    let out_dir = tmp.path().join("json-out");
    let out = server.ok([
        "x509",
        "mint",
        "--agent",
        "triage",
        "--incident",
        "INC-9",
        "--json",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert!(
        v.get("key_pem").is_none(),
        "key printed although written to a file"
    );
    assert!(out_dir.join("key.pem").exists());

    // jwt mint --json; the token validates against the band's published JWT keys.
    let out = server.ok([
        "jwt",
        "mint",
        "--agent",
        "triage",
        "--incident",
        "INC-1",
        "--audience",
        "https://logs.example.org",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).expect("jwt mint --json is JSON");
    let token = v["token"].as_str().expect("token");
    assert_eq!(
        v["spiffe_id"],
        "spiffe://investigate.example.org/agent/triage/incident/INC-1"
    );
    assert!(v["expires_at"].is_i64());
    let jwks: Value = serde_json::from_str(&server.ok([
        "bundle",
        "show",
        "--band",
        "investigative",
        "--format",
        "jwks",
    ]))
    .unwrap();
    // A relying party takes only the jwt-svid keys from a SPIFFE bundle.
    let jwt_keys: Vec<Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .cloned()
        .collect();
    let td = spiffe::TrustDomain::new("investigate.example.org").unwrap();
    let bundle = spiffe::JwtBundle::from_jwt_authorities(
        td,
        serde_json::json!({ "keys": jwt_keys })
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let set: spiffe::JwtBundleSet = std::iter::once(bundle).collect();
    let svid = spiffe::JwtSvid::parse_and_validate(token, &set, &["https://logs.example.org"])
        .expect("token validates");
    assert_eq!(svid.claims().exp(), v["expires_at"].as_i64().unwrap());

    // jwt mint without --json prints only the token.
    let plain = server.ok([
        "jwt",
        "mint",
        "--spiffe-id",
        "spiffe://example.org/service/log-store",
        "--audience",
        "a",
    ]);
    assert_eq!(plain.trim().split('.').count(), 3, "{plain}");
    assert_eq!(plain.lines().count(), 1);

    // healthcheck --json.
    let v: Value = serde_json::from_str(&server.ok(["healthcheck", "--json"])).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["trust_domain"], "example.org");
    assert_eq!(
        v["trust_domains"],
        serde_json::json!([
            "investigate.example.org",
            "remediate.example.org",
            "example.org"
        ])
    );

    // bundle show --json: one band is one object...
    let v: Value =
        serde_json::from_str(&server.ok(["bundle", "show", "--band", "remediation", "--json"]))
            .expect("one JSON object");
    assert_eq!(v["band"], "remediation");
    assert_eq!(v["trust_domain"], "remediate.example.org");
    assert!(v["sequence"].as_u64().unwrap() >= 1);
    assert_eq!(certs_in(v["pem"].as_str().unwrap()).len(), 1);
    // ...and every band is one object per line (JSON Lines).
    let all = server.ok(["bundle", "show", "--json"]);
    let bands: Vec<String> = all
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("each line is JSON");
            v["band"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(bands, ["investigative", "remediation", "base"]);
}

#[test]
fn bundle_show_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let server = DevServer::start(&tmp.path().join("data"));

    // Every band's JWKS, keyed by trust domain ID, never merged.
    let all: Value = serde_json::from_str(&server.ok(["bundle", "show", "--format", "jwks"]))
        .expect("--format jwks parses");
    let obj = all.as_object().expect("an object keyed by trust domain");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "spiffe://example.org",
            "spiffe://investigate.example.org",
            "spiffe://remediate.example.org"
        ]
    );
    for (td, jwks) in obj {
        let k = jwks["keys"]
            .as_array()
            .unwrap_or_else(|| panic!("{td}: keys"));
        assert_eq!(k.len(), 2, "{td}: one x509-svid and one jwt-svid key");
        assert!(jwks["spiffe_sequence"].is_u64(), "{td}");
        assert!(jwks["spiffe_refresh_hint"].is_u64(), "{td}");
    }

    // One band: the JWKS itself.
    let base: Value =
        serde_json::from_str(&server.ok(["bundle", "show", "--band", "base", "--format", "jwks"]))
            .unwrap();
    assert_eq!(base, obj["spiffe://example.org"]);

    // PEM: all bands, three distinct CA certificates; one band, its one.
    let all_pem = certs_in(&server.ok(["bundle", "show"]));
    assert_eq!(all_pem.len(), 3);
    let one = certs_in(&server.ok(["bundle", "show", "--band", "base"]));
    assert_eq!(one.len(), 1);
    assert!(all_pem.contains(&one[0]));
    let uri = |der: &[u8]| {
        let cert = parse_cert(der);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        format!("{:?}", san.value.general_names[0])
    };
    assert!(uri(&one[0]).contains("spiffe://example.org"));
}

#[test]
fn restart_on_the_same_data_dir_reuses_the_cas() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = DevServer::start(&data);
    open_incident(&server, "INC-1");
    let pem_before = server.ok(["bundle", "show"]);
    let jwks_before = server.ok(["bundle", "show", "--format", "jwks"]);
    let out_dir = tmp.path().join("svid");
    server.ok([
        "x509",
        "mint",
        "--agent",
        "triage",
        "--incident",
        "INC-1",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    server.stop();
    {
        // The mint was recorded durably (and the store is released before the restart).
        let store = writ::store::Store::open(&data.join("writ.redb")).expect("open the store");
        let records = store.svids().expect("read");
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(
            records[0].spiffe_id,
            "spiffe://investigate.example.org/agent/triage/incident/INC-1"
        );
    }

    let server = DevServer::start(&data);
    assert_eq!(
        server.ok(["bundle", "show"]),
        pem_before,
        "CAs replaced on restart"
    );
    assert_eq!(
        server.ok(["bundle", "show", "--format", "jwks"]),
        jwks_before,
        "JWT keys or sequence changed on restart"
    );
    // An SVID minted before the restart still verifies against the bundle after it.
    let bundle = band_bundle(&server, "investigative", tmp.path());
    let verdict = openssl_verify_files(&bundle, &out_dir.join("svid.pem"), None);
    assert!(verdict.ok, "{}", verdict.output);
}

/// Asserts the command failed with one clear error line, naming `needle`.
fn assert_one_error_line(out: &Output, needle: &str, label: &str) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{label}: succeeded; stderr: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{label}: stderr: {stderr:?}");
    assert!(
        stderr.starts_with("error:"),
        "{label}: stderr does not start with the error: {stderr:?}"
    );
    assert!(
        errors[0].to_lowercase().contains(&needle.to_lowercase()),
        "{label}: {:?} does not name {needle:?}",
        errors[0]
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{label}: more than one line on stderr: {stderr:?}"
    );
    // 2 for usage errors (clap), 1 for everything the server or client refused.
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{label}: exit status {}",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "{label}: stdout: {}",
        text(&out.stdout)
    );
}

#[test]
fn bad_input_fails_with_one_error_line_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = DevServer::start(&tmp.path().join("data"));
    // The incident is open, so each refusal below is for the reason the case names.
    open_incident(&server, "INC-1");
    let agent = ["--agent", "triage", "--incident", "INC-1"];
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "invalid SPIFFE ID",
            vec!["--spiffe-id", "spiffe://investigate.example.org/a//b"],
            "invalid SPIFFE ID",
        ),
        (
            "not a SPIFFE ID",
            vec!["--spiffe-id", "https://example.org/x"],
            "invalid SPIFFE ID",
        ),
        (
            "uppercase trust domain",
            vec!["--spiffe-id", "spiffe://Example.org/x"],
            "lowercase",
        ),
        (
            "SPIFFE ID without a path",
            vec!["--spiffe-id", "spiffe://example.org"],
            "path",
        ),
        (
            "unknown trust domain",
            vec!["--spiffe-id", "spiffe://other.org/x"],
            "other.org",
        ),
        ("TTL zero", [&agent[..], &["--ttl", "0s"]].concat(), "ttl"),
        (
            "TTL above the maximum",
            [&agent[..], &["--ttl", "100h"]].concat(),
            "ttl",
        ),
        (
            "TTL not a duration",
            [&agent[..], &["--ttl", "soon"]].concat(),
            "ttl",
        ),
        (
            "unknown band",
            [&agent[..], &["--band", "admin"]].concat(),
            "unknown band",
        ),
        (
            "remediation agent without a grant",
            [&agent[..], &["--band", "remediation"]].concat(),
            "grant",
        ),
        (
            "grant in the investigative band",
            [&agent[..], &["--band", "investigative", "--grant", "g1"]].concat(),
            "grant",
        ),
        (
            "agent in the base band",
            [&agent[..], &["--band", "base"]].concat(),
            "base",
        ),
        (
            "SPIFFE ID of another band",
            vec![
                "--band",
                "investigative",
                "--spiffe-id",
                "spiffe://remediate.example.org/x",
            ],
            "remediation band",
        ),
        (
            "agent name with a slash",
            vec!["--agent", "tri/age", "--incident", "INC-1"],
            "invalid SPIFFE ID",
        ),
        (
            "unknown incident",
            vec!["--agent", "triage", "--incident", "INC-404"],
            "INC-404",
        ),
        (
            "both an agent and a SPIFFE ID",
            [&agent[..], &["--spiffe-id", "spiffe://example.org/x"]].concat(),
            "cannot be used with",
        ),
        (
            "bad DNS name",
            [&agent[..], &["--dns", "not a name"]].concat(),
            "DNS name",
        ),
    ];
    for (i, (label, args, needle)) in cases.iter().enumerate() {
        let out_dir = tmp.path().join(format!("out-{i}"));
        let mut full = vec!["x509", "mint"];
        full.extend(args.iter().copied());
        full.extend(["--out", out_dir.to_str().unwrap()]);
        let out = server.writ(&full);
        assert_one_error_line(&out, needle, label);
        assert!(!out_dir.exists(), "{label}: wrote {}", out_dir.display());
    }

    // The same for JWT minting and bundles.
    let out = server.writ([
        "jwt",
        "mint",
        "--agent",
        "triage",
        "--incident",
        "INC-1",
        "--audience",
        "a",
        "--ttl",
        "2h",
    ]);
    assert_one_error_line(&out, "ttl", "jwt TTL above the maximum");
    let out = server.writ(["jwt", "mint", "--agent", "triage", "--incident", "INC-1"]);
    assert_one_error_line(&out, "--audience", "jwt without an audience");
    let out = server.writ(["bundle", "show", "--band", "admin"]);
    assert_one_error_line(&out, "unknown band", "bundle of an unknown band");

    // Nothing was recorded as issued: stop the server (releasing the store) and look.
    let data = tmp.path().join("data");
    server.stop();
    let store = writ::store::Store::open(&data.join("writ.redb")).expect("open the store");
    assert_eq!(
        store.svids().expect("read"),
        [],
        "a refused request was recorded"
    );
}

#[test]
fn no_server_is_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("nothing.sock");
    let out_dir = tmp.path().join("out");
    let out = writ_cmd(
        &socket,
        [
            "x509",
            "mint",
            "--agent",
            "triage",
            "--incident",
            "INC-1",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_one_error_line(&out, "admin socket", "no server");
    assert!(!out_dir.exists());
    let out = writ_cmd(&socket, ["healthcheck"]);
    assert_one_error_line(&out, "admin socket", "healthcheck without server");
}

#[test]
fn authority_prepare_and_activate_rotate_the_ca_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let server = DevServer::start(&tmp.path().join("data"));
    open_incident(&server, "INC-1");
    let mint = |name: &str| {
        let dir = tmp.path().join(name);
        server.ok([
            "x509",
            "mint",
            "--agent",
            "triage",
            "--incident",
            "INC-1",
            "--out",
            dir.to_str().unwrap(),
        ]);
        dir.join("svid.pem")
    };
    let before = mint("before");
    let states = |server: &DevServer| -> Vec<String> {
        server
            .ok(["authority", "show", "--band", "investigative", "--json"])
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["state"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(states(&server), ["active"]);

    server.ok(["authority", "prepare", "--band", "investigative"]);
    assert_eq!(states(&server), ["active", "prepared"]);
    // The next key is published before it signs.
    let bundle = band_bundle(&server, "investigative", tmp.path());
    assert_eq!(
        certs_in(&std::fs::read_to_string(&bundle).unwrap()).len(),
        2
    );
    // Other bands are untouched.
    assert_eq!(
        certs_in(&server.ok(["bundle", "show", "--band", "remediation"])).len(),
        1
    );

    server.ok(["authority", "activate", "--band", "investigative"]);
    assert_eq!(states(&server), ["retired", "active"]);
    let after = mint("after");
    let bundle = band_bundle(&server, "investigative", tmp.path());
    // Issued by different authorities, both verify against the current bundle.
    assert_ne!(
        parse_cert(&certs_in(&std::fs::read_to_string(&before).unwrap())[0])
            .issuer()
            .to_string(),
        parse_cert(&certs_in(&std::fs::read_to_string(&after).unwrap())[0])
            .issuer()
            .to_string()
    );
    for svid in [&before, &after] {
        let verdict = openssl_verify_files(&bundle, svid, None);
        assert!(verdict.ok, "{}", verdict.output);
    }
    // Activating again without a prepared authority is one clear error.
    let out = server.writ(["authority", "activate", "--band", "investigative"]);
    assert_one_error_line(&out, "no prepared authority", "activate twice");
}

#[test]
fn authority_taint_and_revoke_answer_a_compromised_key_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = DevServer::start(&tmp.path().join("data"));
    let shown = |server: &DevServer| -> Vec<Value> {
        server
            .ok(["authority", "show", "--band", "remediation", "--json"])
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect()
    };
    let before = shown(&server);
    assert_eq!(before.len(), 1);
    let old = before[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(before[0]["tainted_at"], Value::Null);

    // Bad ids are refused before anything is looked up; unknown ones are not found.
    let out = server.writ([
        "authority",
        "taint",
        "--band",
        "remediation",
        "--id",
        "x\u{1b}[2J",
    ]);
    assert_one_error_line(&out, "hex", "taint with a bad id");
    let out = server.writ([
        "authority",
        "taint",
        "--band",
        "remediation",
        "--id",
        "00ff",
    ]);
    assert_one_error_line(&out, "no authority 00ff", "taint an unknown id");
    // Revoking before tainting is refused, naming the way out.
    let out = server.writ(["authority", "revoke", "--band", "remediation", "--id", &old]);
    assert_one_error_line(&out, "taint it first", "revoke untainted");
    assert_eq!(shown(&server), before);

    let tainted = server.ok(["authority", "taint", "--band", "remediation"]);
    assert!(
        tainted.starts_with("tainted remediation") && tainted.contains(&old),
        "{tainted}"
    );
    let after = shown(&server);
    assert_eq!(after.len(), 2);
    let old_now = after.iter().find(|a| a["id"] == old.as_str()).unwrap();
    assert!(old_now["tainted_at"].as_i64().unwrap() > 0);
    assert_eq!(old_now["key_id"].as_str().unwrap().len(), 64);
    assert!(
        after
            .iter()
            .any(|a| a["id"] != old.as_str() && a["state"] == "active")
    );
    // The bundle still carries it (what it signed keeps verifying for stock clients
    // until it is revoked); other bands are untouched.
    assert_eq!(
        certs_in(&server.ok(["bundle", "show", "--band", "remediation"])).len(),
        2
    );
    assert_eq!(
        certs_in(&server.ok(["bundle", "show", "--band", "investigative"])).len(),
        1
    );

    // Nothing it signed is recorded here, so revoke needs no --force.
    let revoked = server.ok(["authority", "revoke", "--band", "remediation", "--json"]);
    let revoked: Value = serde_json::from_str(revoked.trim()).unwrap();
    assert_eq!(revoked["id"], old.as_str());
    let left = shown(&server);
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["id"], old.as_str());
    assert_eq!(
        certs_in(&server.ok(["bundle", "show", "--band", "remediation"])).len(),
        1
    );
    let out = server.writ(["authority", "revoke", "--band", "remediation"]);
    assert_one_error_line(&out, "no tainted authority", "revoke twice");
}
