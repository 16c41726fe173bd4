//! Helpers shared by the integration suites: an in-process CA set on a temp directory
//! with a controllable clock, CSRs, PEM files and `openssl verify`.
//!
//! Each suite uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bin;
pub mod dev;
pub mod https;
pub mod node_api;
pub mod postgres;
pub mod procs;
pub mod replica;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use writ::ca::{CaConfig, CaSet, MintedX509, SubjectKey, SvidRequest};
use writ::clock::ManualClock;
use writ::store::Store;
use writ::{Band, WritClaims};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The base trust domain every fixture uses.
pub const BASE: &str = "example.org";

/// Whether the tests run as root.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
}

/// Call first in a test that needs root (to run processes under other uids): a test that
/// cannot run must not pass. As root, `true`. Otherwise it fails, saying how to run it,
/// unless `WRIT_ALLOW_SKIPS=1` is set: then it prints `ignored: needs root` and returns
/// `false`, and the test returns at once. CI runs as root, so nothing is skipped there.
#[must_use = "return from the test when this is false"]
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("WRIT_ALLOW_SKIPS").is_ok_and(|v| v == "1") {
        let test = std::thread::current()
            .name()
            .unwrap_or("this test")
            .to_owned();
        // Written past the harness's output capture (which takes only `eprintln!` and
        // friends), so the skip shows in the run's output beside the harness's `ok`.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "ignored: needs root ({test})");
        return false;
    }
    panic!("this test needs root; run as root or set WRIT_ALLOW_SKIPS=1");
}

/// The Python named by WRIT_PYTHON (tests/python/requirements.txt installed; scripts/test
/// sets it), or `None` after saying on stderr that the test is skipped.
pub fn writ_python() -> Option<PathBuf> {
    let python = std::env::var_os("WRIT_PYTHON").map(PathBuf::from);
    if python.is_none() {
        eprintln!(
            "skipped: set WRIT_PYTHON to a Python with tests/python/requirements.txt installed"
        );
    }
    python
}

/// A port nothing listens on right now (the listener is dropped at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// A temp directory other uids may traverse (workloads run under other uids reach the
/// agent's socket inside it).
pub fn temp_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Writes `text` to `path`; returns the path.
pub fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.to_path_buf()
}

/// A TOML string literal.
pub fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A path as a TOML string literal.
pub fn quoted(path: &Path) -> String {
    toml_string(&path.display().to_string())
}

/// Seconds since the epoch, from the system clock.
pub fn system_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A CA set over a fresh temp directory, with a manual clock the test can move.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub cas: CaSet,
    pub clock: ManualClock,
}

impl Fixture {
    /// Default configuration, clock at the real now (so `openssl verify`, which uses
    /// the system clock, agrees with the validity window).
    pub fn new() -> Self {
        Self::with(CaConfig::default(), system_now())
    }

    /// A fixture with `config`, its clock standing at `start`.
    pub fn with(config: CaConfig, start: i64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("writ.redb")).expect("open store"));
        let clock = ManualClock::at(start);
        let cas = CaSet::open(
            spiffe::TrustDomain::new(BASE).expect("base trust domain"),
            &[],
            &dir.path().join("keys"),
            Arc::clone(&store),
            config,
            Arc::new(clock.clone()),
        )
        .expect("open CA set");
        Fixture {
            dir,
            store,
            cas,
            clock,
        }
    }

    /// What the fixture's clock says.
    pub fn now(&self) -> i64 {
        self.cas.now()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Mints an X.509-SVID from a fresh CSR; returns it with the key's PKCS#8 DER.
    pub fn mint(&self, band: Band, request: &SvidRequest) -> (MintedX509, Vec<u8>) {
        let (key, csr) = csr();
        let minted = self
            .cas
            .mint_x509(band, SubjectKey::Csr(&csr), request)
            .unwrap_or_else(|e| panic!("minting {}: {e}", request.spiffe_id));
        (minted, key.serialize_der())
    }

    /// The band's X.509 bundle (every published CA certificate).
    pub fn bundle(&self, band: Band) -> Vec<Vec<u8>> {
        self.cas.ca(band).x509_bundle()
    }
}

/// A fresh P-256 key and a CSR for it with an empty subject and no extensions.
pub fn csr() -> (rcgen::KeyPair, Vec<u8>) {
    csr_with(|_| {})
}

/// A fresh P-256 key and a CSR for it, after `adjust` has changed the parameters.
pub fn csr_with(adjust: impl FnOnce(&mut rcgen::CertificateParams)) -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("generate key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    adjust(&mut params);
    let der = params
        .serialize_request(&key)
        .expect("serialize CSR")
        .der()
        .to_vec();
    (key, der)
}

/// A SPIFFE ID, panicking on bad test input.
pub fn id(s: &str) -> spiffe::SpiffeId {
    spiffe::SpiffeId::new(s).unwrap_or_else(|e| panic!("test SPIFFE ID {s}: {e}"))
}

/// A request for `spiffe_id` with no claims, default TTL, no DNS names.
pub fn plain_request(spiffe_id: &str) -> SvidRequest {
    SvidRequest {
        spiffe_id: id(spiffe_id),
        ttl: None,
        claims: None,
        dns_names: Vec::new(),
    }
}

/// An investigative agent's request, with claims as `writ x509 mint --agent` builds them.
pub fn investigative_request() -> SvidRequest {
    let mut claims = WritClaims::new(Band::Investigative);
    claims.incident = Some("INC-1".into());
    claims.scopes = vec!["logs:read".into(), "metrics:read".into()];
    SvidRequest {
        spiffe_id: id("spiffe://investigate.example.org/agent/triage/incident/INC-1"),
        ttl: Some(Duration::from_secs(300)),
        claims: Some(claims),
        dns_names: Vec::new(),
    }
}

/// A remediation request carrying every claim writ knows.
pub fn remediation_request() -> SvidRequest {
    let mut claims = WritClaims::new(Band::Remediation);
    claims.incident = Some("INC-1".into());
    claims.grant = Some("g-7".into());
    claims.plan_digest = Some("0123456789abcdef".repeat(4));
    claims.approvers = vec!["alice@example.org".into(), "bob@example.org".into()];
    claims.scopes = vec!["k8s:rollout-restart".into(), "logs:read".into()];
    claims.audit_index = Some(4711);
    claims.tenant = Some("acme".into());
    SvidRequest {
        spiffe_id: id("spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/g-7"),
        ttl: Some(Duration::from_secs(600)),
        claims: Some(claims),
        dns_names: Vec::new(),
    }
}

/// A base-band request without claims.
pub fn base_request() -> SvidRequest {
    plain_request("spiffe://example.org/service/log-store")
}

/// Parses a DER certificate, requiring no trailing bytes.
pub fn parse_cert(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("x509-parser parses the certificate");
    assert!(rest.is_empty(), "trailing bytes after the certificate");
    cert
}

/// PEM armour for one DER certificate.
pub fn pem_cert(der: &[u8]) -> String {
    pem("CERTIFICATE", der)
}

/// PEM armour with 64-column lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes `certs` as one PEM file at `path`.
pub fn write_pem(path: &Path, certs: &[Vec<u8>]) {
    let text: String = certs.iter().map(|c| pem_cert(c)).collect();
    std::fs::write(path, text).expect("write PEM file");
}

/// The outcome of one `openssl verify` run.
#[derive(Debug)]
pub struct OpensslVerdict {
    pub ok: bool,
    pub output: String,
}

/// Runs `openssl verify -x509_strict -CAfile <bundle> <leaf>` in `dir`, with `purpose`
/// (`sslclient`/`sslserver`) if given.
pub fn openssl_verify_files(bundle: &Path, leaf: &Path, purpose: Option<&str>) -> OpensslVerdict {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-x509_strict");
    if let Some(purpose) = purpose {
        cmd.args(["-purpose", purpose]);
    }
    cmd.arg("-CAfile").arg(bundle).arg(leaf);
    let out = cmd.output().expect("run openssl (is it installed?)");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // openssl exits 0 and prints "<file>: OK" only when the chain verified.
    let ok = out.status.success() && output.lines().any(|l| l.ends_with(": OK"));
    OpensslVerdict { ok, output }
}

/// Writes `bundle` and `leaf` into `dir` and runs [`openssl_verify_files`].
pub fn openssl_verify(
    dir: &Path,
    name: &str,
    bundle: &[Vec<u8>],
    leaf: &[u8],
    purpose: Option<&str>,
) -> OpensslVerdict {
    let bundle_path: PathBuf = dir.join(format!("{name}-bundle.pem"));
    let leaf_path: PathBuf = dir.join(format!("{name}-leaf.pem"));
    write_pem(&bundle_path, bundle);
    write_pem(&leaf_path, &[leaf.to_vec()]);
    openssl_verify_files(&bundle_path, &leaf_path, purpose)
}

/// The DER blocks of a PEM text, with their labels, in order.
pub fn pem_decode(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            assert!(current.is_none(), "nested PEM BEGIN");
            current = Some((label.to_owned(), String::new()));
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            let (begun, b64) = current.take().expect("PEM END without BEGIN");
            assert_eq!(begun, label, "PEM labels differ");
            out.push((label.to_owned(), STANDARD.decode(b64).expect("PEM base64")));
        } else if let Some((_, b64)) = current.as_mut() {
            b64.push_str(line);
        }
    }
    assert!(current.is_none(), "unterminated PEM block");
    out
}
