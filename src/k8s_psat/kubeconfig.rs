//! The way to one API server named by a kubeconfig file (docs/kubernetes.md, "Node
//! attestation"), for a writ server that runs outside the cluster it attests nodes of.
//!
//! [`select`] is the pure part: which context, cluster and user a file names, and
//! whether writ can use them. [`load`] reads the file and what it points to. Paths in
//! the file are relative to the file's directory, as kubectl reads them.
//!
//! Writ takes the parts of a kubeconfig that name a server and a fixed credential: the
//! server URL, its CA (`certificate-authority` or `-data`), and one of a bearer token,
//! a token file (re-read on each call, so a rotated token is picked up) or a client
//! certificate and key. It refuses, at start and saying why, what would widen whom it
//! trusts or run code: `insecure-skip-tls-verify`, a cluster without a CA, credential
//! plugins (`exec`, `auth-provider`), basic auth, impersonation, proxies and
//! `tls-server-name`.
//!
//! Must never: trust an API server by anything but the CA the file names, run a
//! program the file names, or put a token or key into an error or a log.

use crate::httpc::ClientCert;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The largest kubeconfig file read (real ones are a few KiB; a CA bundle or two inline).
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// What writ needs from a kubeconfig: the API server, the CAs it is checked against,
/// and writ's credential.
pub struct ApiAccess {
    /// The API server's URL (`https://host:port`).
    pub server: String,
    /// The CA certificates the API server's certificate must chain to.
    pub roots: Vec<CertificateDer<'static>>,
    /// How writ proves itself.
    pub credential: Credential,
}

/// Writ's credential towards the API server.
pub enum Credential {
    /// A bearer token written in the file.
    Token(Zeroizing<String>),
    /// A bearer token read from this file for each call.
    TokenFile(PathBuf),
    /// A client certificate in the handshake.
    Certificate(ClientCert),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Token(_) => f.write_str("Token(..)"),
            Credential::TokenFile(path) => f.debug_tuple("TokenFile").field(path).finish(),
            Credential::Certificate(_) => f.write_str("Certificate(..)"),
        }
    }
}

/// A kubeconfig file, the fields writ reads. Unknown fields (extensions, preferences)
/// are left alone, as kubectl does.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct File {
    clusters: Vec<NamedCluster>,
    contexts: Vec<NamedContext>,
    users: Vec<NamedUser>,
    #[serde(rename = "current-context")]
    current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: ClusterEntry,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: ContextEntry,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: UserEntry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct ClusterEntry {
    server: Option<String>,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<IgnoredAny>,
    proxy_url: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContextEntry {
    cluster: Option<String>,
    user: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct UserEntry {
    token: Option<Zeroizing<String>>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<Zeroizing<String>>,
    exec: Option<IgnoredAny>,
    auth_provider: Option<IgnoredAny>,
    username: Option<IgnoredAny>,
    password: Option<IgnoredAny>,
    #[serde(rename = "as")]
    impersonate: Option<IgnoredAny>,
    #[serde(rename = "as-uid")]
    impersonate_uid: Option<IgnoredAny>,
    #[serde(rename = "as-groups")]
    impersonate_groups: Option<IgnoredAny>,
    #[serde(rename = "as-user-extra")]
    impersonate_extra: Option<IgnoredAny>,
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserEntry(..)")
    }
}

/// Where a piece of PEM comes from: written in the file (base64 of the PEM, as
/// kubectl writes `-data` fields) or in a file of its own.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// Inline, already base64-decoded.
    Inline(Zeroizing<Vec<u8>>),
    /// A path, already made absolute against the kubeconfig's directory.
    Path(PathBuf),
}

/// The credential a kubeconfig names, before any file is read.
#[derive(Debug, PartialEq, Eq)]
pub enum Named {
    /// A bearer token.
    Token(Zeroizing<String>),
    /// A bearer token's file.
    TokenFile(PathBuf),
    /// A client certificate chain and its key.
    Certificate {
        /// The chain's PEM.
        chain: Source,
        /// The key's PEM.
        key: Source,
    },
}

/// What a kubeconfig names for one context, before any file is read.
#[derive(Debug, PartialEq, Eq)]
pub struct Selected {
    /// The context used.
    pub context: String,
    /// The API server's URL.
    pub server: String,
    /// Its CA certificates' PEM.
    pub ca: Source,
    /// Writ's credential.
    pub credential: Named,
}

/// Picks `context` (or the file's `current-context`) from a kubeconfig's `text`, with
/// relative paths made absolute against `base` (the file's directory), and checks
/// writ can use what it names. Errors name fields, never their values.
pub fn select(text: &str, context: Option<&str>, base: &Path) -> Result<Selected, String> {
    let file: File =
        yaml_serde::from_str(text).map_err(|e| format!("not a kubeconfig file: {e}"))?;
    let name = match context.or(file.current_context.as_deref()) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => {
            return Err("it has no current-context; name one with kubeconfig_context".to_owned());
        }
    };
    let context = unique(&file.contexts, |c| &c.name, "context", &name)?;
    let cluster_name = context
        .context
        .cluster
        .as_deref()
        .ok_or_else(|| format!("context {name:?} names no cluster"))?;
    let cluster = &unique(&file.clusters, |c| &c.name, "cluster", cluster_name)?.cluster;
    let user_name = context.context.user.as_deref().ok_or_else(|| {
        format!("context {name:?} names no user: writ needs a credential for TokenReview")
    })?;
    let user = &unique(&file.users, |u| &u.name, "user", user_name)?.user;

    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("cluster {cluster_name:?} has no server"))?;
    if cluster.insecure_skip_tls_verify {
        return Err(format!(
            "cluster {cluster_name:?} sets insecure-skip-tls-verify: writ checks the API \
             server against the CA the file names, always"
        ));
    }
    let unsupported = [
        (cluster.tls_server_name.is_some(), "tls-server-name"),
        (cluster.proxy_url.is_some(), "proxy-url"),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(format!(
            "cluster {cluster_name:?} sets {field}, which writ does not support"
        ));
    }
    let ca = either(
        cluster.certificate_authority_data.as_deref(),
        cluster.certificate_authority.as_deref(),
        base,
        &format!("cluster {cluster_name:?}'s certificate-authority"),
    )?
    .ok_or_else(|| {
        format!(
            "cluster {cluster_name:?} names no certificate-authority or \
             certificate-authority-data: writ trusts only the CA named for the cluster"
        )
    })?;

    let refused = [
        (
            user.exec.is_some(),
            "exec (credential plugins run programs)",
        ),
        (user.auth_provider.is_some(), "auth-provider"),
        (
            user.username.is_some() || user.password.is_some(),
            "username/password",
        ),
        (
            user.impersonate.is_some()
                || user.impersonate_uid.is_some()
                || user.impersonate_groups.is_some()
                || user.impersonate_extra.is_some(),
            "impersonation (as, as-uid, as-groups, as-user-extra)",
        ),
    ];
    if let Some((_, what)) = refused.iter().find(|(set, _)| *set) {
        return Err(format!(
            "user {user_name:?} uses {what}, which writ does not support: give it a token, \
             a tokenFile or a client certificate and key"
        ));
    }
    let what = format!("user {user_name:?}'s client-certificate");
    let chain = either(
        user.client_certificate_data.as_deref(),
        user.client_certificate.as_deref(),
        base,
        &what,
    )?;
    let key = either(
        user.client_key_data.as_ref().map(|k| k.as_str()),
        user.client_key.as_deref(),
        base,
        &format!("user {user_name:?}'s client-key"),
    )?;
    let certificate = match (chain, key) {
        (Some(chain), Some(key)) => Some(Named::Certificate { chain, key }),
        (None, None) => None,
        _ => {
            return Err(format!(
                "user {user_name:?} names a client certificate or a client key without the other"
            ));
        }
    };
    let token = user
        .token
        .as_ref()
        .filter(|t| !t.trim().is_empty())
        .map(|t| Named::Token(Zeroizing::new(t.trim().to_owned())));
    let token_file = user
        .token_file
        .as_deref()
        .map(|p| Named::TokenFile(base.join(p)));
    let mut credentials = [token, token_file, certificate].into_iter().flatten();
    let credential = credentials.next().ok_or_else(|| {
        format!(
            "user {user_name:?} has no token, tokenFile or client certificate: writ needs \
             one for TokenReview"
        )
    })?;
    if credentials.next().is_some() {
        return Err(format!(
            "user {user_name:?} names more than one of token, tokenFile and client \
             certificate: writ takes exactly one, so which it sends is never a guess"
        ));
    }
    Ok(Selected {
        context: name,
        server,
        ca,
        credential,
    })
}

/// The one entry named `name` in `list`.
fn unique<'a, T>(
    list: &'a [T],
    name_of: impl Fn(&T) -> &String,
    what: &str,
    name: &str,
) -> Result<&'a T, String> {
    let mut found = list.iter().filter(|e| name_of(e) == name);
    match (found.next(), found.next()) {
        (Some(entry), None) => Ok(entry),
        (None, _) => Err(format!("it has no {what} named {name:?}")),
        (Some(_), Some(_)) => Err(format!("it has two {what}s named {name:?}")),
    }
}

/// A `-data` field (base64 of the PEM) or a path field, not both.
fn either(
    data: Option<&str>,
    path: Option<&Path>,
    base: &Path,
    what: &str,
) -> Result<Option<Source>, String> {
    match (data.filter(|d| !d.is_empty()), path) {
        (Some(_), Some(_)) => Err(format!("{what} is named twice (as a file and as -data)")),
        (Some(data), None) => base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(|bytes| Some(Source::Inline(Zeroizing::new(bytes))))
            .map_err(|_| format!("{what}-data is not base64")),
        (None, Some(path)) => Ok(Some(Source::Path(base.join(path)))),
        (None, None) => Ok(None),
    }
}

/// Reads the kubeconfig at `path`, picks `context` (default: its current-context), and
/// reads the CA and client certificate it names. The token file, when it names one, is
/// read on each call instead.
pub fn load(path: &Path, context: Option<&str>) -> anyhow::Result<ApiAccess> {
    let text = read_bounded(path)?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let text =
        std::str::from_utf8(&text).map_err(|_| anyhow::anyhow!("{}: not UTF-8", path.display()))?;
    let selected = select(text, context, base)
        .map_err(|why| anyhow::anyhow!("kubeconfig {}: {why}", path.display()))?;
    let pem = |source: Source, what: &str| -> anyhow::Result<Zeroizing<Vec<u8>>> {
        match source {
            Source::Inline(bytes) => Ok(bytes),
            Source::Path(path) => read_bounded(&path).map_err(|e| anyhow::anyhow!("{what}: {e:#}")),
        }
    };
    let roots = CertificateDer::pem_slice_iter(&pem(selected.ca, "certificate-authority")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow::anyhow!("certificate-authority: not PEM certificates"))?;
    anyhow::ensure!(
        !roots.is_empty(),
        "certificate-authority holds no certificates"
    );
    let credential = match selected.credential {
        Named::Token(token) => Credential::Token(token),
        Named::TokenFile(path) => Credential::TokenFile(path),
        Named::Certificate { chain, key } => {
            let chain = CertificateDer::pem_slice_iter(&pem(chain, "client-certificate")?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| anyhow::anyhow!("client-certificate: not PEM certificates"))?;
            anyhow::ensure!(
                !chain.is_empty(),
                "client-certificate holds no certificates"
            );
            let key = PrivateKeyDer::from_pem_slice(&pem(key, "client-key")?)
                .map_err(|_| anyhow::anyhow!("client-key: not a PEM private key"))?;
            Credential::Certificate(ClientCert {
                chain,
                key: Zeroizing::new(key),
            })
        }
    };
    Ok(ApiAccess {
        server: selected.server,
        roots,
        credential,
    })
}

/// A file's bytes, at most [`MAX_FILE_BYTES`], zeroized when dropped (it may hold a key).
fn read_bounded(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_FILE_BYTES,
        "{} is larger than {MAX_FILE_BYTES} bytes",
        path.display()
    );
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A kubeconfig with two contexts, as `kubectl config view --raw` writes one.
    const TWO_CONTEXTS: &str = r#"
apiVersion: v1
kind: Config
preferences: {}
current-context: prod
clusters:
- name: prod-cluster
  cluster:
    server: https://10.0.0.1:6443
    certificate-authority-data: LS0tLS1CRUdJTg==
    extensions:
    - name: client.authentication.k8s.io/exec
      extension: {audience: x}
- name: staging-cluster
  cluster:
    server: https://staging.example:443
    certificate-authority: pki/ca.crt
contexts:
- name: prod
  context: {cluster: prod-cluster, user: writ, namespace: writ}
- name: staging
  context:
    cluster: staging-cluster
    user: writ-cert
users:
- name: writ
  user:
    tokenFile: /var/run/secrets/writ/token
- name: writ-cert
  user:
    client-certificate: pki/writ.crt
    client-key: /etc/writ/writ.key
"#;

    fn base() -> &'static Path {
        Path::new("/etc/writ")
    }

    #[test]
    fn the_current_context_or_the_named_one_picks_cluster_ca_and_credential() {
        let prod = select(TWO_CONTEXTS, None, base()).unwrap();
        assert_eq!(prod.context, "prod");
        assert_eq!(prod.server, "https://10.0.0.1:6443");
        assert_eq!(
            prod.ca,
            Source::Inline(Zeroizing::new(b"-----BEGIN".to_vec()))
        );
        assert_eq!(
            prod.credential,
            Named::TokenFile(PathBuf::from("/var/run/secrets/writ/token"))
        );
        let staging = select(TWO_CONTEXTS, Some("staging"), base()).unwrap();
        assert_eq!(staging.server, "https://staging.example:443");
        // Relative paths are the kubeconfig's directory's; absolute ones stay.
        assert_eq!(
            staging.ca,
            Source::Path(PathBuf::from("/etc/writ/pki/ca.crt"))
        );
        assert_eq!(
            staging.credential,
            Named::Certificate {
                chain: Source::Path(PathBuf::from("/etc/writ/pki/writ.crt")),
                key: Source::Path(PathBuf::from("/etc/writ/writ.key")),
            }
        );
    }

    #[test]
    fn an_inline_token_is_taken_trimmed() {
        let text = TWO_CONTEXTS.replace(
            "tokenFile: /var/run/secrets/writ/token",
            "token: \"  eyJhbGciOi.x.y \"",
        );
        let prod = select(&text, None, base()).unwrap();
        assert_eq!(
            prod.credential,
            Named::Token(Zeroizing::new("eyJhbGciOi.x.y".into()))
        );
    }

    fn refused(text: &str, context: Option<&str>) -> String {
        select(text, context, base()).unwrap_err()
    }

    #[test]
    fn contexts_clusters_and_users_must_be_named_once() {
        {
            let why = refused(TWO_CONTEXTS, Some("dev"));
            assert!(why.contains("no context named \"dev\""), "{why}");
        }
        let no_current = TWO_CONTEXTS.replace("current-context: prod", "");
        {
            let why = refused(&no_current, None);
            assert!(why.contains("kubeconfig_context"), "{why}");
        }
        let twice = TWO_CONTEXTS.replace("name: staging-cluster", "name: prod-cluster");
        {
            let why = refused(&twice, None);
            assert!(why.contains("two clusters named \"prod-cluster\""), "{why}");
        }
        let lost = TWO_CONTEXTS.replace("user: writ,", "user: nobody,");
        {
            let why = refused(&lost, None);
            assert!(why.contains("no user named \"nobody\""), "{why}");
        }
        let no_user = TWO_CONTEXTS.replace("user: writ,", "");
        {
            let why = refused(&no_user, None);
            assert!(why.contains("names no user"), "{why}");
        }
        {
            let why = refused("- not\n- a map\n", None);
            assert!(why.starts_with("not a kubeconfig file"), "{why}");
        }
        {
            let why = refused("clusters: 7\n", None);
            assert!(why.starts_with("not a kubeconfig file"), "{why}");
        }
    }

    #[test]
    fn what_would_widen_trust_or_run_code_is_refused() {
        let skip = TWO_CONTEXTS.replace(
            "certificate-authority-data: LS0tLS1CRUdJTg==",
            "insecure-skip-tls-verify: true",
        );
        {
            let why = refused(&skip, None);
            assert!(why.contains("insecure-skip-tls-verify"), "{why}");
        }
        let no_ca = TWO_CONTEXTS.replace("certificate-authority-data: LS0tLS1CRUdJTg==", "");
        {
            let why = refused(&no_ca, None);
            assert!(why.contains("names no certificate-authority"), "{why}");
        }
        let both_ca = TWO_CONTEXTS.replace(
            "certificate-authority-data: LS0tLS1CRUdJTg==",
            "certificate-authority-data: LS0tLS1CRUdJTg==\n    certificate-authority: ca.crt",
        );
        {
            let why = refused(&both_ca, None);
            assert!(why.contains("named twice"), "{why}");
        }
        let not_base64 = TWO_CONTEXTS.replace("LS0tLS1CRUdJTg==", "not-base64$");
        {
            let why = refused(&not_base64, None);
            assert!(why.contains("not base64"), "{why}");
        }
        let exec = TWO_CONTEXTS.replace(
            "tokenFile: /var/run/secrets/writ/token",
            "exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws",
        );
        {
            let why = refused(&exec, None);
            assert!(
                why.contains("exec (credential plugins run programs)"),
                "{why}"
            );
        }
        let basic = TWO_CONTEXTS.replace(
            "tokenFile: /var/run/secrets/writ/token",
            "username: admin\n    password: hunter2",
        );
        let why = refused(&basic, None);
        assert!(why.contains("username/password"));
        assert!(!why.contains("hunter2"), "errors never carry values: {why}");
        let act_as = TWO_CONTEXTS.replace(
            "tokenFile: /var/run/secrets/writ/token",
            "tokenFile: t\n    as: system:admin",
        );
        {
            let why = refused(&act_as, None);
            assert!(why.contains("impersonation"), "{why}");
        }
        let proxy = TWO_CONTEXTS.replace(
            "server: https://10.0.0.1:6443",
            "server: https://10.0.0.1:6443\n    proxy-url: http://proxy:3128",
        );
        {
            let why = refused(&proxy, None);
            assert!(why.contains("proxy-url"), "{why}");
        }
    }

    #[test]
    fn exactly_one_credential_is_taken() {
        let two = TWO_CONTEXTS.replace(
            "tokenFile: /var/run/secrets/writ/token",
            "tokenFile: t\n    token: secret-token-value",
        );
        let why = refused(&two, None);
        assert!(why.contains("more than one"), "{why}");
        assert!(!why.contains("secret-token-value"));
        let none = TWO_CONTEXTS.replace("tokenFile: /var/run/secrets/writ/token", "{}");
        {
            let why = refused(&none, None);
            assert!(why.contains("has no token"), "{why}");
        }
        let half = TWO_CONTEXTS.replace("    client-key: /etc/writ/writ.key\n", "");
        {
            let why = refused(&half, Some("staging"));
            assert!(why.contains("without the other"), "{why}");
        }
    }

    #[test]
    fn aliases_are_not_expanded_beyond_what_is_read() {
        // A "billion laughs" document (9^10 strings if expanded): aliases are replayed
        // only as far as the fields writ reads ask, and yaml_serde bounds repetitions.
        let mut bomb =
            String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for level in 0..9u8 {
            let prev = (b'a' + level) as char;
            let next = (b'a' + level + 1) as char;
            bomb.push_str(&format!(
                "{next}: &{next} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        // Under a field writ ignores, and under one it reads.
        let why = refused(&format!("{bomb}extensions: *j\n"), None);
        assert!(why.contains("no current-context"), "{why}");
        let why = refused(&format!("{bomb}clusters: *j\n"), None);
        assert!(why.starts_with("not a kubeconfig file"), "{why}");
    }
}
