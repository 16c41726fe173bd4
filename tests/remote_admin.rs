//! The admin API over mTLS: operators from a configured CA, named by their certificate,
//! held to their roles; the CLI verifies the server's SVID with writ's SPIFFE verifier.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WRIT: &str = env!("CARGO_BIN_EXE_writ");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ca(name: &str) -> (rcgen::Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    (rcgen::Issuer::new(params, key), cert.pem())
}

fn operator_cert(
    issuer: &rcgen::Issuer<'static, KeyPair>,
    name: &str,
    dir: &Path,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer).unwrap();
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn local(dir: &Path, args: &[&str]) -> Output {
    Command::new(WRIT)
        .args(args)
        .env("WRIT_ADMIN_SOCKET", dir.join("server/admin.sock"))
        .output()
        .unwrap()
}

fn remote(port: u16, cert: &Path, key: &Path, bundle: &Path, args: &[&str]) -> Output {
    Command::new(WRIT)
        .args(args)
        .arg("--server")
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--server-bundle")
        .arg(bundle)
        .env_remove("WRIT_ADMIN_SOCKET")
        .output()
        .unwrap()
}

fn one_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "should fail: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error:") && lines[0].contains(needle),
        "{stderr}"
    );
}

#[test]
fn operators_reach_the_admin_api_over_mtls_with_their_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (operator_ca, ca_pem) = ca("writ operators");
    std::fs::write(dir.join("operators.pem"), ca_pem).unwrap();
    let (alice_cert, alice_key) = operator_cert(&operator_ca, "alice", dir);
    let (mallory_ca, _) = ca("somebody else");
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let (mallory_cert, mallory_key) = operator_cert(&mallory_ca, "alice", &elsewhere);
    let admin_port = free_port();
    let config = format!(
        "data_dir = \"{}\"\nnode_listen = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\noperator_ca = \"{}\"\n\n[[operator]]\nname = \"alice\"\nroles = [\"incident-commander\"]\n",
        dir.join("server").display(),
        free_port(),
        dir.join("operators.pem").display()
    );
    std::fs::write(dir.join("server.toml"), config).unwrap();
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let _server = Server(
        Command::new(WRIT)
            .args(["server", "--config"])
            .arg(dir.join("server.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server did not start: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let bundle = dir.join("base.pem");
    let out = local(dir, &["bundle", "show", "--band", "base"]);
    assert!(out.status.success());
    std::fs::write(&bundle, &out.stdout).unwrap();
    assert!(
        local(
            dir,
            &["profile", "create", "triage", "--selector", "unix:uid:1"]
        )
        .status
        .success()
    );

    // Alice, an incident-commander, opens an incident from afar; it is recorded as hers.
    let opened = remote(
        admin_port,
        &alice_cert,
        &alice_key,
        &bundle,
        &[
            "incident",
            "open",
            "INC-1",
            "--title",
            "t",
            "--severity",
            "sev3",
            "--assign",
            "triage",
        ],
    );
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let shown: serde_json::Value =
        serde_json::from_slice(&local(dir, &["incident", "show", "INC-1", "--json"]).stdout)
            .unwrap();
    assert_eq!(shown["opened_by"], "alice");
    let listed = remote(
        admin_port,
        &alice_cert,
        &alice_key,
        &bundle,
        &["operator", "list", "--json"],
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\"alice\""));
    // grpc.health.v1 answers on the remote listener too (over the same mTLS).
    let health = remote(
        admin_port,
        &alice_cert,
        &alice_key,
        &bundle,
        &["healthcheck", "--json"],
    );
    let health: serde_json::Value = serde_json::from_slice(&health.stdout).unwrap();
    assert_eq!(health["serving"], "SERVING", "{health}");

    // Her roles hold remotely too.
    one_error(
        &remote(
            admin_port,
            &alice_cert,
            &alice_key,
            &bundle,
            &["profile", "create", "x", "--selector", "unix:uid:2"],
        ),
        "needs the role admin",
    );
    // A backup is taken on the server's host only, whoever asks from afar (keys never
    // leave the host, even encrypted).
    #[allow(deprecated)]
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let far = dir.join("far.age");
    one_error(
        &remote(
            admin_port,
            &alice_cert,
            &alice_key,
            &bundle,
            &[
                "backup",
                "--out",
                far.to_str().unwrap(),
                "--recipient",
                &recipient,
            ],
        ),
        "local admin socket only",
    );
    assert!(!far.exists());
    // A certificate from another CA, even naming alice, gets nowhere.
    one_error(
        &remote(
            admin_port,
            &mallory_cert,
            &mallory_key,
            &bundle,
            &["incident", "list"],
        ),
        "error:",
    );
    // The CLI refuses a server whose SVID does not chain to the bundle it was given.
    let (_, other_pem) = ca("not writ");
    let wrong = dir.join("wrong.pem");
    std::fs::write(&wrong, other_pem).unwrap();
    one_error(
        &remote(
            admin_port,
            &alice_cert,
            &alice_key,
            &wrong,
            &["incident", "list"],
        ),
        "error:",
    );
    // Flags that don't fit.
    let bare = Command::new(WRIT)
        .args([
            "incident",
            "list",
            "--server",
            &format!("https://127.0.0.1:{admin_port}"),
        ])
        .env_remove("WRIT_ADMIN_SOCKET")
        .output()
        .unwrap();
    one_error(&bare, "--server needs --cert");
    let plain = remote(
        admin_port,
        &alice_cert,
        &alice_key,
        &bundle,
        &["incident", "list", "--server", "http://x:1"],
    );
    assert!(!plain.status.success());
    // Nothing changed by any refusal.
    let incidents = String::from_utf8_lossy(&local(dir, &["incident", "list", "--json"]).stdout)
        .lines()
        .count();
    assert_eq!(incidents, 1);
}
