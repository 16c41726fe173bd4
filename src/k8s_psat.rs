//! Kubernetes node attestation by projected service-account token (docs/kubernetes.md,
//! "Node attestation"): the agent presents a token Kubernetes issued to its pod for the
//! audience `writ`; the server asks the cluster's API server whether it is valid
//! (TokenReview), checks whose it is against `[[k8s_psat]]`, and names the node
//! `spiffe://<base>/node/k8s/<cluster>/<node name>`.
//!
//! [`judge`] is the pure decision over a TokenReview's status; [`Cluster::review`] and
//! [`Cluster::node_of_pod`] are the calls to the API server.
//!
//! Must never: accept a token the API server did not authenticate for writ's audience,
//! name a node from anything but the API server's answer, or log or audit the token.

pub mod kubeconfig;

use crate::httpc::{HttpError, Limits, Target};
use crate::ttl::Ttl;
use http::{HeaderMap, HeaderValue, Method};
use hyper::body::Bytes;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a pod finds its API server's CA and its own token (in-cluster defaults).
const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The audience agents' projected tokens are for, unless configured.
pub const DEFAULT_AUDIENCE: &str = "writ";
/// The longest token accepted from an agent.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The largest TokenReview or pod answer read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The largest file read for the server's own token.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// The extra fields a projected token's review carries about its pod and node.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// One `[[k8s_psat]]` block, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// The cluster's name in node ids (`node/k8s/<cluster>/…`).
    pub cluster: String,
    /// The API server (`https://host:port`); in-cluster: from KUBERNETES_SERVICE_HOST
    /// and KUBERNETES_SERVICE_PORT.
    #[serde(default)]
    pub api_server: Option<String>,
    /// PEM CA certificates of the API server (in-cluster default).
    #[serde(default)]
    pub api_ca_file: Option<PathBuf>,
    /// The server's own token for TokenReview (in-cluster default); re-read on each call,
    /// so a rotated token is picked up.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A kubeconfig file naming the API server, its CA and the server's credential, for
    /// a writ server outside the cluster; instead of `api_server`, `api_ca_file` and
    /// `token_file`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context to use (default: its `current-context`).
    #[serde(default)]
    pub kubeconfig_context: Option<String>,
    /// The audience the agents' tokens must be for (default `writ`).
    #[serde(default)]
    pub audience: Option<String>,
    /// `namespace:service-account` pairs whose tokens may attest nodes; `namespace:*`
    /// for any service account of the namespace.
    pub allowed_service_accounts: Vec<String>,
    /// How long one call to the API server may take (default 10s).
    #[serde(default)]
    pub timeout: Option<Ttl>,
}

/// A cluster ready to review tokens.
#[derive(Debug)]
pub struct Cluster {
    /// Its name.
    pub name: String,
    target: Target,
    credential: Credential,
    audience: String,
    allowed: Vec<(String, String)>,
    limits: Limits,
}

/// How the server proves itself to the API server.
#[derive(Debug)]
enum Credential {
    /// A bearer token re-read from this file on each call.
    TokenFile(PathBuf),
    /// A bearer token from a kubeconfig.
    Token(zeroize::Zeroizing<String>),
    /// The client certificate in the TLS configuration; no header.
    Certificate,
}

/// A valid token's facts: whose it is and which node it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attested {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The node, when the review names it (Kubernetes 1.30 and later).
    pub node_name: Option<String>,
}

/// A TokenReview's status, the fields writ reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReviewStatus {
    /// Whether the API server authenticated the token.
    pub authenticated: bool,
    /// The audiences it is valid for, of those asked.
    pub audiences: Vec<String>,
    /// Whose it is.
    pub user: ReviewUser,
    /// Why not, when it is not.
    pub error: Option<String>,
}

/// The user a token is, per the API server.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReviewUser {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    /// Facts of a bound token: pod name and uid, node name.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Decides whether a reviewed token attests a node under `audience` and `allowed`
/// (`(namespace, service account or "*")` pairs). The reason, when not, is for the log
/// and the audit log; the agent is told only that it was refused.
pub fn judge(
    status: &ReviewStatus,
    audience: &str,
    allowed: &[(String, String)],
) -> Result<Attested, String> {
    if !status.authenticated {
        let why = status.error.as_deref().unwrap_or("no reason given");
        return Err(format!(
            "the API server did not authenticate the token: {}",
            why.chars().take(200).collect::<String>()
        ));
    }
    if !status.audiences.iter().any(|a| a == audience) {
        return Err(format!("the token is not for audience {audience:?}"));
    }
    let Some(rest) = status.user.username.strip_prefix("system:serviceaccount:") else {
        return Err("the token is not a service account's".into());
    };
    let Some((namespace, service_account)) = rest.split_once(':') else {
        return Err("the token's service account is malformed".into());
    };
    let permitted = allowed
        .iter()
        .any(|(ns, sa)| ns == namespace && (sa == "*" || sa == service_account));
    if !permitted {
        return Err(format!(
            "service account {namespace}:{service_account} may not attest nodes"
        ));
    }
    let one = |key: &str| {
        status
            .user
            .extra
            .get(key)
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let (Some(pod_name), Some(pod_uid)) = (one(EXTRA_POD_NAME), one(EXTRA_POD_UID)) else {
        return Err(
            "the token is not bound to a pod (use a projected service-account token)".into(),
        );
    };
    Ok(Attested {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name,
        pod_uid,
        node_name: one(EXTRA_NODE_NAME),
    })
}

/// A node name usable as an id's path segment: a DNS subdomain, as Kubernetes names
/// nodes.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    match ok {
        true => Ok(()),
        false => Err("the node's name is not a DNS subdomain".into()),
    }
}

/// Checks every `[[k8s_psat]]` block and reads what it can now (the CA); the token is
/// read per call.
pub fn resolve(raw: Vec<RawCluster>) -> anyhow::Result<Vec<Arc<Cluster>>> {
    let mut names = std::collections::BTreeSet::new();
    raw.into_iter()
        .map(|block| {
            let cluster = resolve_one(block)?;
            anyhow::ensure!(
                names.insert(cluster.name.clone()),
                "k8s_psat: two blocks for cluster {:?}",
                cluster.name
            );
            Ok(Arc::new(cluster))
        })
        .collect()
}

fn resolve_one(raw: RawCluster) -> anyhow::Result<Cluster> {
    let name = raw.cluster;
    crate::policy::check_name("k8s_psat cluster", &name)?;
    anyhow::ensure!(
        !raw.allowed_service_accounts.is_empty(),
        "k8s_psat {name:?}: allowed_service_accounts names no service account"
    );
    let mut allowed = Vec::new();
    for entry in &raw.allowed_service_accounts {
        let pair = entry
            .split_once(':')
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'));
        let Some((ns, sa)) = pair else {
            anyhow::bail!(
                "k8s_psat {name:?}: {entry:?} is not namespace:service-account (or namespace:*)"
            );
        };
        allowed.push((ns.to_owned(), sa.to_owned()));
    }
    let (api_server, tls, credential) = match raw.kubeconfig {
        Some(path) => {
            let set = [
                (raw.api_server.is_some(), "api_server"),
                (raw.api_ca_file.is_some(), "api_ca_file"),
                (raw.token_file.is_some(), "token_file"),
            ];
            if let Some((_, key)) = set.iter().find(|(set, _)| *set) {
                anyhow::bail!(
                    "k8s_psat {name:?}: kubeconfig and {key} both name the API server's access; keep one"
                );
            }
            let access = kubeconfig::load(&path, raw.kubeconfig_context.as_deref())
                .map_err(|e| anyhow::anyhow!("k8s_psat {name:?}: {e:#}"))?;
            let (client, credential) = match access.credential {
                kubeconfig::Credential::Token(token) => (None, Credential::Token(token)),
                kubeconfig::Credential::TokenFile(path) => (None, Credential::TokenFile(path)),
                kubeconfig::Credential::Certificate(cert) => (Some(cert), Credential::Certificate),
            };
            let tls =
                crate::httpc::tls_client(crate::httpc::ServerTrust::Roots(&access.roots), client)
                    .map_err(|e| {
                    anyhow::anyhow!("k8s_psat {name:?}: kubeconfig {}: {e}", path.display())
                })?;
            (access.server, tls, credential)
        }
        None => {
            anyhow::ensure!(
                raw.kubeconfig_context.is_none(),
                "k8s_psat {name:?}: kubeconfig_context is set without a kubeconfig"
            );
            let api_server = match raw.api_server {
                Some(url) => url,
                None => in_cluster_api_server()
                    .map_err(|why| anyhow::anyhow!("k8s_psat {name:?}: {why}"))?,
            };
            let ca_file = raw
                .api_ca_file
                .unwrap_or_else(|| PathBuf::from(IN_CLUSTER_CA));
            let roots = crate::agent::remote::read_pem_certs(&ca_file)
                .map_err(|e| anyhow::anyhow!("k8s_psat {name:?}: api_ca_file: {e:#}"))?;
            let tls = crate::httpc::tls_trusting(&roots)
                .map_err(|e| anyhow::anyhow!("k8s_psat {name:?}: {e}"))?;
            let token_file = raw
                .token_file
                .unwrap_or_else(|| PathBuf::from(IN_CLUSTER_TOKEN));
            (api_server, tls, Credential::TokenFile(token_file))
        }
    };
    let target = Target::parse(&api_server, Some(tls))
        .map_err(|e| anyhow::anyhow!("k8s_psat {name:?}: api_server: {e}"))?;
    let exchange = raw
        .timeout
        .map_or(Limits::default().exchange, Ttl::duration);
    Ok(Cluster {
        name,
        target,
        credential,
        audience: raw.audience.unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
        allowed,
        limits: Limits {
            exchange,
            max_body: MAX_ANSWER_BYTES,
            ..Limits::default()
        },
    })
}

/// The API server's URL in a pod: `KUBERNETES_SERVICE_HOST` and `_PORT`.
fn in_cluster_api_server() -> Result<String, String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
        "no api_server or kubeconfig, and not in a cluster (KUBERNETES_SERVICE_HOST unset)"
            .to_owned()
    })?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    Ok(match host.contains(':') {
        true => format!("https://[{host}]:{port}"),
        false => format!("https://{host}:{port}"),
    })
}

/// Why the API server could not be asked; never the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    /// The server's own token could not be read.
    #[error("reading the server's token {path}: {why}")]
    OwnToken {
        /// Its file.
        path: String,
        /// Why.
        why: String,
    },
    /// The call failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The API server answered with an error status.
    #[error("the API server answered {status} to {what}")]
    Status {
        /// What was asked.
        what: &'static str,
        /// Its status.
        status: u16,
    },
    /// The answer is not what the API defines.
    #[error("the API server's answer to {0} is malformed")]
    Malformed(&'static str),
}

impl Cluster {
    /// The audience tokens must be for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The allowed `(namespace, service account)` pairs.
    pub fn allowed(&self) -> &[(String, String)] {
        &self.allowed
    }

    fn headers(&self) -> Result<HeaderMap, ReviewError> {
        let mut headers = HeaderMap::new();
        let token = match &self.credential {
            Credential::TokenFile(path) => Some(read_token(path)?),
            Credential::Token(token) => Some(token.clone()),
            Credential::Certificate => None,
        };
        if let Some(token) = token {
            let bearer = zeroize::Zeroizing::new(format!("Bearer {}", token.trim()));
            // Where the token came from is named only when it is refused.
            let mut value = HeaderValue::from_str(&bearer).map_err(|_| ReviewError::OwnToken {
                path: match &self.credential {
                    Credential::TokenFile(path) => path.display().to_string(),
                    _ => "the kubeconfig's token".into(),
                },
                why: "not a valid header value".into(),
            })?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        Ok(headers)
    }

    /// Asks the API server to review `token` for this cluster's audience.
    pub async fn review(&self, token: &str) -> Result<ReviewStatus, ReviewError> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token, "audiences": [self.audience] },
        });
        let reply = self
            .target
            .request(
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                self.headers()?,
                Bytes::from(body.to_string()),
                self.limits,
            )
            .await?;
        if !(200..300).contains(&reply.status) {
            return Err(ReviewError::Status {
                what: "a TokenReview",
                status: reply.status,
            });
        }
        #[derive(Deserialize)]
        struct Review {
            #[serde(default)]
            status: ReviewStatus,
        }
        serde_json::from_slice::<Review>(&reply.body)
            .map(|r| r.status)
            .map_err(|_| ReviewError::Malformed("a TokenReview"))
    }

    /// The node pod `name` of `namespace` runs on, if the pod is still the one with
    /// `uid` (older API servers do not name the node in a review).
    pub async fn node_of_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Option<String>, ReviewError> {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if !segment_ok(namespace) || !segment_ok(name) {
            return Ok(None);
        }
        let reply = self
            .target
            .request(
                Method::GET,
                &format!("/api/v1/namespaces/{namespace}/pods/{name}"),
                self.headers()?,
                Bytes::new(),
                self.limits,
            )
            .await?;
        if reply.status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&reply.status) {
            return Err(ReviewError::Status {
                what: "a pod lookup",
                status: reply.status,
            });
        }
        #[derive(Deserialize)]
        struct Pod {
            metadata: Meta,
            #[serde(default)]
            spec: Spec,
        }
        #[derive(Deserialize)]
        struct Meta {
            uid: String,
        }
        #[derive(Default, Deserialize)]
        struct Spec {
            #[serde(rename = "nodeName", default)]
            node_name: Option<String>,
        }
        let pod: Pod = serde_json::from_slice(&reply.body)
            .map_err(|_| ReviewError::Malformed("a pod lookup"))?;
        Ok(match pod.metadata.uid == uid {
            true => pod.spec.node_name,
            // Another pod of the same name: the token's pod is gone.
            false => None,
        })
    }
}

fn read_token(path: &Path) -> Result<zeroize::Zeroizing<String>, ReviewError> {
    use std::io::Read;
    let error = |why: String| ReviewError::OwnToken {
        path: path.display().to_string(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
    let mut text = zeroize::Zeroizing::new(String::new());
    file.take(MAX_TOKEN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| error(e.to_string()))?;
    if text.trim().is_empty() {
        return Err(error("empty".into()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(json: serde_json::Value) -> ReviewStatus {
        serde_json::from_value(json).unwrap()
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "authenticated": true,
            "audiences": ["writ"],
            "user": {
                "username": "system:serviceaccount:writ:writ-agent",
                "uid": "0b7a",
                "groups": ["system:serviceaccounts"],
                "extra": {
                    EXTRA_POD_NAME: ["writ-agent-x7k2p"],
                    EXTRA_POD_UID: ["5f0c-pod-uid"],
                    EXTRA_NODE_NAME: ["node-1"]
                }
            }
        })
    }

    fn allowed() -> Vec<(String, String)> {
        vec![
            ("writ".into(), "writ-agent".into()),
            ("ops".into(), "*".into()),
        ]
    }

    #[test]
    fn a_bound_token_of_an_allowed_account_names_its_pod_and_node() {
        let attested = judge(&status(good()), "writ", &allowed()).unwrap();
        assert_eq!(
            attested,
            Attested {
                namespace: "writ".into(),
                service_account: "writ-agent".into(),
                pod_name: "writ-agent-x7k2p".into(),
                pod_uid: "5f0c-pod-uid".into(),
                node_name: Some("node-1".into()),
            }
        );
        let mut any_in_ops = good();
        any_in_ops["user"]["username"] = "system:serviceaccount:ops:anything".into();
        assert!(judge(&status(any_in_ops), "writ", &allowed()).is_ok());
        // Older API servers name no node: the caller looks the pod up.
        let mut no_node = good();
        no_node["user"]["extra"]
            .as_object_mut()
            .unwrap()
            .remove(EXTRA_NODE_NAME);
        assert_eq!(
            judge(&status(no_node), "writ", &allowed())
                .unwrap()
                .node_name,
            None
        );
    }

    #[test]
    fn unauthenticated_wrong_audience_other_accounts_and_unbound_tokens_are_refused() {
        type Change = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|v| v["authenticated"] = false.into()),
                "did not authenticate",
            ),
            (
                Box::new(|v| v["audiences"] = serde_json::json!(["other"])),
                "audience",
            ),
            (
                Box::new(|v| v["audiences"] = serde_json::json!([])),
                "audience",
            ),
            (
                Box::new(|v| v["user"]["username"] = "system:serviceaccount:writ:default".into()),
                "may not attest",
            ),
            (
                Box::new(|v| {
                    v["user"]["username"] = "system:serviceaccount:other:writ-agent".into()
                }),
                "may not attest",
            ),
            (
                Box::new(|v| v["user"]["username"] = "alice".into()),
                "not a service account",
            ),
            (
                Box::new(|v| v["user"]["username"] = "system:serviceaccount:writ".into()),
                "malformed",
            ),
            (
                Box::new(|v| v["user"]["extra"] = serde_json::json!({})),
                "not bound to a pod",
            ),
        ];
        for (change, says) in cases {
            let mut v = good();
            change(&mut v);
            let err = judge(&status(v), "writ", &allowed()).unwrap_err();
            assert!(err.contains(says), "{says:?}: {err}");
        }
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        for ok in ["node-1", "ip-10-0-0-1.ec2.internal", "a"] {
            assert!(check_node_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Node",
            "a/b",
            "-a",
            "a.",
            "a b",
            &"a".repeat(254),
            "..",
            "a\n",
        ] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn blocks_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["k8s".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let block = |allowed: &[&str]| RawCluster {
            cluster: "prod".into(),
            api_server: Some("https://10.0.0.1:6443".into()),
            api_ca_file: Some(ca.clone()),
            token_file: Some(dir.path().join("token")),
            allowed_service_accounts: allowed.iter().map(|s| s.to_string()).collect(),
            ..RawCluster::default()
        };
        let clusters = resolve(vec![block(&["writ:writ-agent", "ops:*"])]).unwrap();
        assert_eq!(clusters[0].audience(), "writ");
        assert_eq!(clusters[0].allowed().len(), 2);
        for (bad, says) in [
            (vec![], "names no service account"),
            (vec!["writ"], "namespace:service-account"),
            (vec!["writ:"], "namespace:service-account"),
            (vec!["a:b:c"], "namespace:service-account"),
        ] {
            let err = resolve(vec![block(&bad)]).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        let twice = resolve(vec![block(&["a:b"]), block(&["a:b"])]).unwrap_err();
        assert!(twice.to_string().contains("two blocks"));
        let mut plain = block(&["a:b"]);
        plain.api_server = Some("http://10.0.0.1:8080".into());
        assert!(
            resolve(vec![plain])
                .unwrap_err()
                .to_string()
                .contains("loopback")
        );
    }
}
