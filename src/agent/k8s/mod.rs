//! Kubernetes workload attestation (docs/kubernetes.md): the pod and container of a
//! Workload API caller, as `k8s:` selectors beside its unix ones.
//!
//! From the caller's pid (the kernel's socket credentials, as for unix attestation) the
//! agent reads `/proc/<pid>/cgroup` ([`cgroup`]) for the pod UID and container id, then
//! asks the kubelet's `/pods` ([`kubelet`]) which pod that is ([`pods`]). A process in no
//! pod gets no `k8s:` selectors; a process in a pod writ cannot place is refused.
//!
//! Must never: give a caller another pod's selectors, or a pod's selectors from a pod list
//! older than [`kubelet::CACHE_TTL`]; wait for the kubelet without bound.

pub mod cgroup;
pub mod kubelet;
pub mod pods;

use crate::backoff::Backoff;
use crate::policy::Selector;
use cgroup::PodContainer;
use kubelet::{ClientAuth, Kubelet, KubeletError, ServerTrust};
use pods::Lookup;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[k8s]` in agent.toml (and in `writ dev`'s config file), as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct K8sConfig {
    /// The kubelet's secure port (default `https://127.0.0.1:10250`).
    pub kubelet_url: Option<String>,
    /// PEM CA certificates the kubelet's serving certificate is checked against.
    pub kubelet_ca: Option<PathBuf>,
    /// Accept any kubelet certificate (kind-like setups); instead of `kubelet_ca`.
    #[serde(default)]
    pub kubelet_skip_verify: bool,
    /// A bearer token for the kubelet, re-read on every request (the agent's
    /// service-account token).
    pub token_file: Option<PathBuf>,
    /// A client certificate for the kubelet (PEM chain), with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The PKCS#8 key of `client_cert` (PEM).
    pub client_key: Option<PathBuf>,
    /// This node's name: only pods scheduled here are answered for.
    pub node_name: Option<String>,
    /// Where callers' cgroup files are read (`<proc_root>/<pid>/cgroup`; default `/proc`):
    /// a host's /proc mounted elsewhere, or a test's fake one. Every other fact about the
    /// caller is still read from /proc.
    pub proc_root: Option<PathBuf>,
}

/// Default kubelet address: the node's own secure port.
pub const DEFAULT_KUBELET_URL: &str = "https://127.0.0.1:10250";

/// How long a caller whose container the kubelet does not list yet (a pod just started)
/// is waited for before it is refused.
pub const RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Why a caller in a pod was refused.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum K8sError {
    /// Its cgroup file could not be read or trusted.
    #[error("cgroup of pid {pid}: {reason}")]
    Cgroup {
        /// The caller's pid.
        pid: i32,
        /// What failed.
        reason: String,
    },
    /// The kubelet could not be asked.
    #[error("{0}")]
    Kubelet(#[from] KubeletError),
    /// The kubelet did not list its container (running) within the retry window.
    #[error("container {container_id} of pod {pod_uid} not found running on the kubelet")]
    NotFound {
        /// The pod UID its cgroup names.
        pod_uid: String,
        /// The container id its cgroup names.
        container_id: String,
    },
    /// The kubelet's list contradicts the cgroup, or the pod is over.
    #[error("{0}")]
    Refused(&'static str),
}

/// Attests callers' pods.
#[derive(Debug)]
pub struct K8sAttestor {
    kubelet: Kubelet,
    node_name: Option<String>,
    proc_root: PathBuf,
    failures: crate::throttle::Throttle,
}

impl K8sAttestor {
    /// Checks `config` and builds the kubelet client (reads the CA and client certificate
    /// files; the token is read per request). Warns once when the kubelet is not verified.
    pub fn new(config: &K8sConfig) -> anyhow::Result<K8sAttestor> {
        let trust = match (&config.kubelet_ca, config.kubelet_skip_verify) {
            (Some(ca), false) => ServerTrust::Ca(ca.clone()),
            (None, true) => ServerTrust::SkipVerify,
            (Some(_), true) => {
                anyhow::bail!("[k8s] give kubelet_ca or kubelet_skip_verify, not both")
            }
            (None, false) => anyhow::bail!(
                "[k8s] kubelet_ca is required (the CA of the kubelet's serving certificate), or kubelet_skip_verify = true"
            ),
        };
        let cert = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => anyhow::bail!("[k8s] client_cert and client_key go together"),
        };
        anyhow::ensure!(
            config.token_file.is_some() || cert.is_some(),
            "[k8s] give token_file or client_cert and client_key: the kubelet's /pods needs credentials"
        );
        if let Some(node) = &config.node_name {
            anyhow::ensure!(
                format!("k8s:node-name:{node}").parse::<Selector>().is_ok(),
                "[k8s] node_name {node:?} is not a Kubernetes node name"
            );
        }
        let url = config.kubelet_url.as_deref().unwrap_or(DEFAULT_KUBELET_URL);
        let kubelet = Kubelet::new(
            url,
            &trust,
            ClientAuth {
                token_file: config.token_file.clone(),
                cert,
            },
        )?;
        if matches!(trust, ServerTrust::SkipVerify) {
            tracing::warn!(kubelet = %kubelet.url(), "[k8s] kubelet_skip_verify is set: the kubelet's certificate is not verified, and whoever answers at its address names callers' pods");
        }
        Ok(K8sAttestor {
            kubelet,
            node_name: config.node_name.clone(),
            proc_root: config
                .proc_root
                .clone()
                .unwrap_or_else(|| PathBuf::from("/proc")),
            failures: crate::throttle::Throttle::new(Duration::from_secs(10)),
        })
    }

    /// Keeps the kubelet's pod list `ttl` instead of [`kubelet::CACHE_TTL`] (tests use a
    /// short one to see a list expire).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.kubelet.set_cache_ttl(ttl);
        self
    }

    /// The pod and container `pid` runs in, from its cgroup file; `None` outside any pod.
    /// Blocking (a small file read).
    pub fn caller_pod(&self, pid: i32) -> Result<Option<PodContainer>, K8sError> {
        let text =
            read_cgroup(&self.proc_root, pid).map_err(|reason| K8sError::Cgroup { pid, reason })?;
        cgroup::pod_container(&text).map_err(|e| K8sError::Cgroup {
            pid,
            reason: e.to_string(),
        })
    }

    /// The `k8s:` selectors of the container `caller`: asks the kubelet (through its
    /// cache), and while the container is not listed running yet, asks again with backoff
    /// for at most [`RETRY_WINDOW`].
    pub async fn selectors(&self, caller: &PodContainer) -> Result<BTreeSet<Selector>, K8sError> {
        let deadline = tokio::time::Instant::now() + RETRY_WINDOW;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let mut seen = None;
        loop {
            let fetched = self.kubelet.pods(seen).await.map_err(|e| {
                if let Some(suppressed) = self.failures.allow() {
                    tracing::warn!(error = %e, suppressed, "kubernetes workload attestation refused: the kubelet's pod list is unavailable");
                }
                K8sError::Kubelet(e)
            })?;
            match fetched.pods.lookup(caller, self.node_name.as_deref()) {
                Lookup::Found(selectors) => return Ok(selectors),
                Lookup::Refused(why) => return Err(K8sError::Refused(why)),
                Lookup::NotYet => {
                    let delay = backoff.next_delay();
                    if tokio::time::Instant::now() + delay > deadline {
                        return Err(K8sError::NotFound {
                            pod_uid: caller.pod_uid.clone(),
                            container_id: caller.container_id.clone(),
                        });
                    }
                    tokio::time::sleep(delay).await;
                    // Only a list fetched after this one can say more.
                    seen = Some(fetched.at);
                }
            }
        }
    }
}

/// `<proc_root>/<pid>/cgroup`, at most [`cgroup::MAX_CGROUP_BYTES`] of it.
fn read_cgroup(proc_root: &Path, pid: i32) -> Result<String, String> {
    let file = std::fs::File::open(proc_root.join(pid.to_string()).join("cgroup"))
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(cgroup::MAX_CGROUP_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > cgroup::MAX_CGROUP_BYTES {
        return Err(cgroup::CgroupError::TooLarge.to_string());
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())
}
