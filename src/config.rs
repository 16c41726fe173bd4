//! Configuration: a TOML file (every field optional, unknown fields refused) → [`Config`].
//! Command-line flags override the file; no file at all gives working defaults.

use crate::agent::listener::WorkloadApiConfig;
use crate::ca::CaConfig;
use crate::ttl::Ttl;
use anyhow::Context;
use serde::Deserialize;
use spiffe::TrustDomain;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Parses a config file. toml's own `Display` draws a multi-line snippet; writ errors
/// are one line, so keep the message and say where instead.
fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> anyhow::Result<T> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| before.matches('\n').count() + 1);
        let message = e.message().trim().replace('\n', " ");
        match line {
            Some(line) => {
                anyhow::anyhow!("parsing config {} line {line}: {message}", path.display())
            }
            None => anyhow::anyhow!("parsing config {}: {message}", path.display()),
        }
    })
}

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where the store, keys and sockets live.
    pub data_dir: Option<PathBuf>,
    /// The store: `"redb"` (the default: `writ.redb` in the data directory) or a
    /// `"postgres://…"` URL shared by several servers (docs/ha.md).
    pub store: Option<String>,
    /// The base trust domain; bands are `investigate.<base>` and `remediate.<base>`.
    pub trust_domain: Option<String>,
    /// The admin API's Unix socket.
    pub admin_socket: Option<PathBuf>,
    /// The Workload API's Unix socket (`writ dev`).
    pub workload_socket: Option<PathBuf>,
    /// `host:port` for the node API that remote agents attest to and sync from.
    pub node_listen: Option<String>,
    /// PEM CA certificates whose leaves may attest nodes by x509pop.
    pub x509pop_ca: Option<PathBuf>,
    /// `host:port` for the remote admin API (mTLS with operator certificates).
    pub admin_listen: Option<String>,
    /// PEM CA certificates of operator client certificates (with `admin_listen`).
    pub operator_ca: Option<PathBuf>,
    /// Humans allowed on the admin socket, by uid.
    #[serde(default, rename = "operator")]
    pub operators: Vec<crate::policy::Operator>,
    /// How long an approval counts toward a grant's quorum (default 1h).
    pub approval_ttl: Option<crate::ttl::Ttl>,
    /// The longest an incident may be open in all, extensions included (default 7d).
    pub max_incident_lifetime: Option<crate::ttl::Ttl>,
    /// Lifetimes.
    #[serde(default)]
    pub ca: CaConfig,
    /// Remediation rules: quorums, sensitive scopes, request limits.
    #[serde(default)]
    pub remediation: crate::policy::grant::RemediationRules,
    /// What each tenant's changes are held to.
    #[serde(default)]
    pub tenant_limits: crate::policy::tenant::TenantLimits,
    /// Limits of the Workload API socket (`writ dev`).
    #[serde(default)]
    pub workload_api: WorkloadApiConfig,
    /// How long a stopping process waits for open streams and calls to end (default 5s).
    pub shutdown_grace: Option<Ttl>,
    /// `host:port` the incident sources post to (docs/incident-sources.md).
    pub webhook_listen: Option<String>,
    /// PEM certificate chain of the webhook listener; without it (and its key) the
    /// listener is plain HTTP, allowed on a loopback address only.
    pub webhook_tls_cert: Option<PathBuf>,
    /// PEM private key of the webhook listener.
    pub webhook_tls_key: Option<PathBuf>,
    /// PagerDuty, incident.io and generic webhooks that open and close incidents.
    #[serde(default, rename = "incident_source")]
    pub incident_sources: Vec<crate::sources::config::RawSource>,
    /// Outbound webhooks told of grant events (docs/notifications.md).
    #[serde(default)]
    pub notify: Vec<crate::notify::RawTarget>,
    /// Kubernetes clusters whose agents attest nodes by projected service-account token
    /// (docs/kubernetes.md).
    #[serde(default)]
    pub k8s_psat: Vec<crate::k8s_psat::RawCluster>,
    /// Kubernetes workload attestation by `writ dev`'s agent (docs/kubernetes.md).
    pub k8s: Option<crate::agent::k8s::K8sConfig>,
    /// Log format (`--log-format` beats it; docs/configuration.md, "Logs").
    pub log_format: Option<crate::logging::LogFormat>,
    /// Log levels per module, e.g. `info,writ::agent=debug` (`--log-level` and
    /// `WRIT_LOG` beat it).
    pub log_level: Option<String>,
    /// `ip:port` of the Prometheus endpoint (docs/metrics.md); unset, nothing listens.
    pub metrics_listen: Option<String>,
}

/// Where incident sources post, and what they are (docs/incident-sources.md).
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The listen address.
    pub listen: String,
    /// TLS certificate chain and key files; `None`: plain HTTP on loopback.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The sources, secrets read.
    pub sources: Vec<std::sync::Arc<crate::sources::config::Source>>,
}

/// The configuration in force.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where keys and sockets live (and the store, when it is embedded).
    pub data_dir: PathBuf,
    /// Where the store is.
    pub store: crate::store::StoreLocation,
    /// The base trust domain.
    pub trust_domain: TrustDomain,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
    /// The Workload API's Unix socket.
    pub workload_socket: PathBuf,
    /// Node API address, if remote agents are served.
    pub node_listen: Option<String>,
    /// x509pop CA certificates, if x509pop is enabled.
    pub x509pop_ca: Option<PathBuf>,
    /// Remote admin API address, if served.
    pub admin_listen: Option<String>,
    /// Operator client certificate CAs, for the remote admin API.
    pub operator_ca: Option<PathBuf>,
    /// Operators, besides root and the uid running the server (every role).
    pub operators: Vec<crate::policy::Operator>,
    /// How long an approval counts toward a grant's quorum, in seconds.
    pub approval_ttl_secs: u64,
    /// The longest an incident may be open in all, in seconds.
    pub max_incident_lifetime_secs: u64,
    /// Lifetimes.
    pub ca: CaConfig,
    /// Remediation rules.
    pub remediation: crate::policy::grant::RemediationRules,
    /// What each tenant's changes are held to.
    pub tenant_limits: crate::policy::tenant::TenantLimits,
    /// Limits of the Workload API socket.
    pub workload_api: WorkloadApiConfig,
    /// How long a stopping process drains before it exits.
    pub shutdown_grace: Duration,
    /// The incident sources' listener, if any source is configured.
    pub webhooks: Option<WebhookConfig>,
    /// Outbound webhooks told of grant events.
    pub notify: Vec<crate::notify::Target>,
    /// Clusters whose agents attest by projected service-account token.
    pub k8s_psat: Vec<std::sync::Arc<crate::k8s_psat::Cluster>>,
    /// Kubernetes workload attestation (`writ dev`), if configured.
    pub k8s: Option<crate::agent::k8s::K8sConfig>,
    /// Where the Prometheus endpoint listens, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The highest `max_incident_lifetime` accepted.
const MAX_INCIDENT_LIFETIME_CEILING_SECS: u64 = 365 * 24 * 3600;

/// Default data directory, relative to where writ runs.
pub const DEFAULT_DATA_DIR: &str = "./writ-data";
/// Default base trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "example.org";

impl RawConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        parse_toml(path, &text)
    }

    /// Validates and fills in defaults.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let td = self
            .trust_domain
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.into());
        let trust_domain = writ_verifier::parse_trust_domain(&td)?;
        // Bands prefix the base with a label; the result must still be a trust domain.
        for band in writ_verifier::Band::ALL {
            let name = band.trust_domain_name(trust_domain.as_str());
            TrustDomain::new(&name)
                .map_err(|e| anyhow::anyhow!("trust domain {name:?} (band {band}): {e}"))?;
        }
        self.ca.validate()?;
        self.remediation.validate()?;
        self.tenant_limits.validate()?;
        // Root and the uid running writ hold every role; see policy::roles.
        let server_uid = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").context("reading /proc/self")?,
        );
        crate::policy::roles::check_operators(&self.operators, server_uid)?;
        let max_incident_lifetime_secs = self
            .max_incident_lifetime
            .map_or(crate::policy::DEFAULT_MAX_INCIDENT_LIFETIME_SECS, |t| {
                t.secs()
            });
        anyhow::ensure!(
            max_incident_lifetime_secs <= MAX_INCIDENT_LIFETIME_CEILING_SECS,
            "max_incident_lifetime must be at most 365d: a year-long incident is standing access"
        );
        self.workload_api.validate()?;
        let shutdown_grace = shutdown_grace(self.shutdown_grace)?;
        let webhooks = webhooks(
            self.webhook_listen,
            self.webhook_tls_cert,
            self.webhook_tls_key,
            self.incident_sources,
        )?;
        let notify = crate::notify::config::resolve(self.notify)?;
        let metrics_listen = metrics_listen(self.metrics_listen)?;
        let store = match self.store {
            None => crate::store::StoreLocation::default(),
            Some(text) => text.parse().map_err(|e: String| anyhow::anyhow!("{e}"))?,
        };
        let admin_socket = self
            .admin_socket
            .unwrap_or_else(|| data_dir.join("admin.sock"));
        let workload_socket = self
            .workload_socket
            .unwrap_or_else(|| data_dir.join("workload.sock"));
        Ok(Config {
            workload_socket,
            node_listen: self.node_listen,
            x509pop_ca: self.x509pop_ca,
            admin_listen: self.admin_listen,
            operator_ca: self.operator_ca,
            operators: self.operators,
            max_incident_lifetime_secs,
            approval_ttl_secs: self.approval_ttl.map(|t| t.secs()).unwrap_or(3600),
            remediation: self.remediation,
            tenant_limits: self.tenant_limits,
            workload_api: self.workload_api,
            shutdown_grace,
            webhooks,
            notify,
            k8s_psat: crate::k8s_psat::resolve(self.k8s_psat)?,
            k8s: self.k8s,
            metrics_listen,
            data_dir,
            store,
            trust_domain,
            admin_socket,
            ca: self.ca,
        })
    }
}

/// The webhook listener's settings, checked: sources need a listener, a listener needs
/// sources, TLS needs both files, and plain HTTP only on a loopback address.
fn webhooks(
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    sources: Vec<crate::sources::config::RawSource>,
) -> anyhow::Result<Option<WebhookConfig>> {
    let Some(listen) = listen else {
        anyhow::ensure!(
            sources.is_empty() && cert.is_none() && key.is_none(),
            "incident_source and webhook_tls_* need webhook_listen (host:port to serve webhooks on)"
        );
        return Ok(None);
    };
    anyhow::ensure!(
        !sources.is_empty(),
        "webhook_listen is set but no [[incident_source]] is configured"
    );
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => {
            let loopback = listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            anyhow::ensure!(
                loopback,
                "webhook_listen {listen:?} without webhook_tls_cert and webhook_tls_key: plain HTTP \
                 is served on a loopback address only (127.0.0.1:PORT or [::1]:PORT, behind a TLS proxy)"
            );
            None
        }
        _ => anyhow::bail!("webhook_tls_cert and webhook_tls_key go together"),
    };
    let sources = crate::sources::config::resolve(sources)?
        .into_iter()
        .map(std::sync::Arc::new)
        .collect();
    Ok(Some(WebhookConfig {
        listen,
        tls,
        sources,
    }))
}

/// `metrics_listen`, checked: an IP address and a port (`127.0.0.1:9090`, `[::1]:9090`;
/// port 0 picks a free one). Plain HTTP: docs/metrics.md says where to bind it.
fn metrics_listen(text: Option<String>) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(text) = text else { return Ok(None) };
    text.parse().map(Some).map_err(|_| {
        // Debug-quoted (control characters escaped) and cut short: it is echoed.
        let shown: String = text.chars().take(64).collect();
        anyhow::anyhow!(
            "metrics_listen {shown:?} is not an ip:port (e.g. \"127.0.0.1:9090\" or \"[::1]:9090\")"
        )
    })
}

/// `writ agent`'s file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentConfig {
    /// The agent's own state: node key and SVID.
    pub data_dir: Option<PathBuf>,
    /// The servers' node API: one `host:port`, or a list of them to fail over between.
    pub server_address: Option<ServerAddresses>,
    /// The base trust domain.
    pub trust_domain: Option<String>,
    /// PEM of the base trust domain's CAs (`writ bundle show --band base`).
    pub trust_bundle: Option<PathBuf>,
    /// The Workload API socket.
    pub workload_socket: Option<PathBuf>,
    /// A join token (used once, when there is no valid node SVID on disk).
    pub join_token: Option<crate::agent::remote::JoinToken>,
    /// x509pop: PEM certificate chain of this node.
    pub x509pop_cert: Option<PathBuf>,
    /// x509pop: PEM PKCS#8 key of that certificate.
    pub x509pop_key: Option<PathBuf>,
    /// Kubernetes: the cluster's name in the server's `[[k8s_psat]]`
    /// (docs/kubernetes.md).
    pub psat_cluster: Option<String>,
    /// Kubernetes: the projected service-account token (audience `writ`), read at each
    /// attestation (the kubelet rotates it).
    pub psat_token_file: Option<PathBuf>,
    /// Limits of the Workload API socket.
    #[serde(default)]
    pub workload_api: WorkloadApiConfig,
    /// How long a stopping agent waits for open streams to end (default 5s).
    pub shutdown_grace: Option<Ttl>,
    /// Kubernetes workload attestation (docs/kubernetes.md).
    pub k8s: Option<crate::agent::k8s::K8sConfig>,
    /// Log format (`--log-format` beats it; docs/configuration.md, "Logs").
    pub log_format: Option<crate::logging::LogFormat>,
    /// Log levels per module, e.g. `info,writ::agent=debug` (`--log-level` and
    /// `WRIT_LOG` beat it).
    pub log_level: Option<String>,
    /// `ip:port` of the Prometheus endpoint (docs/metrics.md); unset, nothing listens.
    pub metrics_listen: Option<String>,
}

/// `server_address` as written: the old single string, or a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "a \"host:port\" string or a list of them")]
pub enum ServerAddresses {
    /// `server_address = "host:port"`.
    One(String),
    /// `server_address = ["host:port", …]`, tried in turn.
    Many(Vec<String>),
}

impl ServerAddresses {
    fn into_vec(self) -> Vec<String> {
        match self {
            ServerAddresses::One(one) => vec![one],
            ServerAddresses::Many(many) => many,
        }
    }
}

/// `writ agent`'s configuration in force.
#[derive(Debug)]
pub struct AgentConfig {
    /// How to reach and attest to the server.
    pub remote: crate::agent::remote::RemoteConfig,
    /// The Workload API socket.
    pub workload_socket: PathBuf,
    /// Its limits.
    pub workload_api: WorkloadApiConfig,
    /// How long a stopping agent drains before it exits.
    pub shutdown_grace: Duration,
    /// Kubernetes workload attestation, if configured.
    pub k8s: Option<crate::agent::k8s::K8sConfig>,
    /// Where the Prometheus endpoint listens, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Default drain time of a stopping process.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The drain time: at most a minute, so a stop is never held hostage by a client.
fn shutdown_grace(configured: Option<Ttl>) -> anyhow::Result<Duration> {
    let grace = configured.map_or(DEFAULT_SHUTDOWN_GRACE, Ttl::duration);
    anyhow::ensure!(
        grace <= Duration::from_secs(60),
        "shutdown_grace must be at most 1m (got {})",
        humantime::format_duration(grace)
    );
    Ok(grace)
}

impl RawAgentConfig {
    /// Reads and parses an agent config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        parse_toml(path, &text)
    }

    /// Validates and fills in defaults.
    pub fn resolve(self) -> anyhow::Result<AgentConfig> {
        use crate::agent::remote::{Attestation, RemoteConfig};
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("./writ-agent"));
        let td = self
            .trust_domain
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.into());
        let base = writ_verifier::parse_trust_domain(&td)?;
        let servers = crate::agent::endpoints::check_servers(
            self.server_address
                .context("server_address is required (host:port of the node API)")?
                .into_vec(),
        )?;
        let trust_bundle = self
            .trust_bundle
            .context("trust_bundle is required (PEM of `writ bundle show --band base`)")?;
        let attestation = match (
            self.join_token,
            self.x509pop_cert,
            self.x509pop_key,
            self.psat_cluster,
            self.psat_token_file,
        ) {
            (Some(token), None, None, None, None) => Some(Attestation::JoinToken(token)),
            (None, Some(cert), Some(key), None, None) => Some(Attestation::X509Pop { cert, key }),
            (None, None, None, Some(cluster), Some(token_file)) => {
                crate::policy::check_name("psat_cluster", &cluster)?;
                Some(Attestation::K8sPsat {
                    cluster,
                    token_file,
                })
            }
            (None, None, None, None, None) => None,
            _ => anyhow::bail!(
                "give one of: join_token; x509pop_cert and x509pop_key; psat_cluster and psat_token_file"
            ),
        };
        let workload_socket = self
            .workload_socket
            .unwrap_or_else(|| data_dir.join("workload.sock"));
        self.workload_api.validate()?;
        Ok(AgentConfig {
            remote: RemoteConfig {
                servers,
                base,
                data_dir,
                trust_bundle,
                attestation,
            },
            workload_socket,
            workload_api: self.workload_api,
            shutdown_grace: shutdown_grace(self.shutdown_grace)?,
            k8s: self.k8s,
            metrics_listen: metrics_listen(self.metrics_listen)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let config = RawConfig::default().resolve().unwrap();
        assert_eq!(config.trust_domain.as_str(), "example.org");
        assert_eq!(config.admin_socket, PathBuf::from("./writ-data/admin.sock"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<RawConfig>("trust_domian = \"x\"").is_err());
        assert!(toml::from_str::<RawConfig>("[ca]\nca_tll = \"1h\"").is_err());
        let bad_td: RawConfig = toml::from_str("trust_domain = \"Example.ORG\"").unwrap();
        assert!(bad_td.resolve().is_err());
        let short_ca: RawConfig =
            toml::from_str("[ca]\nca_ttl = \"1h\"\nmax_svid_ttl = \"30m\"").unwrap();
        assert!(short_ca.resolve().is_err());
    }

    #[test]
    fn the_store_is_redb_by_default_or_a_postgres_url_and_bad_ones_are_refused() {
        let config = RawConfig::default().resolve().unwrap();
        assert_eq!(config.store, crate::store::StoreLocation::Embedded);
        let pg: RawConfig =
            toml::from_str("store = \"postgresql://writ@/writ?host=/run/postgresql\"").unwrap();
        assert!(matches!(
            pg.resolve().unwrap().store,
            crate::store::StoreLocation::Postgres(_)
        ));
        for bad in [
            "store = \"mysql://db/writ\"",
            "store = \"postgres://writ:hunter2@db/writ?sslmode=require\"",
            "store = 5",
        ] {
            let refused = toml::from_str::<RawConfig>(bad)
                .map_err(|e| e.to_string())
                .and_then(|raw| raw.resolve().map(|_| ()).map_err(|e| e.to_string()));
            let e = refused.unwrap_err();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
    }

    #[test]
    fn parse_errors_are_one_line() {
        let path = Path::new("agent.toml");
        let e = parse_toml::<RawAgentConfig>(path, "data_dir = \"/x\"\njoin_tokn = \"a\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.starts_with("parsing config agent.toml line 2: unknown field `join_tokn`"),
            "{e}"
        );
    }

    #[test]
    fn tenant_limits_are_configurable_and_checked() {
        let raw: RawConfig =
            toml::from_str("[tenant_limits]\nchanges_per_second = 5\nissuance_slots = 2").unwrap();
        let config = raw.resolve().unwrap();
        assert_eq!(config.tenant_limits.changes_per_second, 5);
        assert_eq!(config.tenant_limits.issuance_slots, 2);
        assert_eq!(
            config.tenant_limits.change_burst, 2_000,
            "unset fields keep defaults"
        );
        let zero: RawConfig = toml::from_str("[tenant_limits]\nchange_burst = 0").unwrap();
        let e = zero.resolve().unwrap_err().to_string();
        assert!(e.contains("[tenant_limits]"), "{e}");
        let huge: RawConfig =
            toml::from_str("[tenant_limits]\nmax_open_incidents = 2000000").unwrap();
        assert!(huge.resolve().is_err());
        assert!(toml::from_str::<RawConfig>("[tenant_limits]\nchanges_per_sec = 5").is_err());
    }

    #[test]
    fn remediation_rules_are_configurable_and_checked() {
        let raw: RawConfig = toml::from_str(
            "[remediation]\nquorum_sev3 = 2\nsensitive_scope_prefixes = [\"db:\"]\nsensitive_quorum = 3",
        )
        .unwrap();
        let config = raw.resolve().unwrap();
        assert_eq!(config.remediation.quorum_sev3, 2);
        assert!(config.remediation.is_sensitive("db:drop"));
        assert_eq!(
            config.remediation.per_agent_per_hour, 20,
            "unset fields keep defaults"
        );
        let zero: RawConfig = toml::from_str("[remediation]\nquorum_sev1 = 0").unwrap();
        assert!(zero.resolve().is_err());
        assert!(toml::from_str::<RawConfig>("[remediation]\nquorom_sev1 = 2").is_err());
    }

    #[test]
    fn contradictory_or_out_of_bounds_settings_say_what_is_wrong() {
        let server_uid =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        let other = server_uid.wrapping_add(1).max(1);
        for (toml, says) in [
            (
                format!(
                    "[[operator]]\nname = \"a\"\nuid = {other}\n[[operator]]\nname = \"b\"\nuid = {other}\n"
                ),
                format!("both have uid {other}"),
            ),
            (
                "[[operator]]\nname = \"audit\"\nuid = 0\nroles = [\"auditor\"]\n".to_owned(),
                "which is root".to_owned(),
            ),
            (
                format!("[[operator]]\nname = \"a\"\nuid = {other}\nroles = []\n"),
                "has no roles".to_owned(),
            ),
            (
                "[ca]\nbackdate = \"100h\"\n".to_owned(),
                "backdate (4days 4h) must be at most 5m".to_owned(),
            ),
            (
                "max_incident_lifetime = \"400d\"\n".to_owned(),
                "at most 365d".to_owned(),
            ),
        ] {
            let raw: RawConfig = toml::from_str(&toml).unwrap();
            let e = format!("{:#}", raw.resolve().unwrap_err());
            assert!(e.contains(&says), "{toml}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let raw: RawConfig =
            toml::from_str("max_incident_lifetime = \"2d\"\n[ca]\nbackdate = \"1m\"").unwrap();
        let config = raw.resolve().unwrap();
        assert_eq!(config.max_incident_lifetime_secs, 2 * 24 * 3600);
        assert_eq!(
            RawConfig::default()
                .resolve()
                .unwrap()
                .max_incident_lifetime_secs,
            7 * 24 * 3600
        );
        // The demo switch is a `writ dev` flag, never a config key.
        assert!(toml::from_str::<RawConfig>("[remediation]\ndemo_single_user = true").is_err());
    }

    #[test]
    fn server_address_is_one_string_or_a_bounded_list() {
        let agent = |server_address: &str| {
            toml::from_str::<RawAgentConfig>(&format!(
                "server_address = {server_address}\ntrust_bundle = \"/b.pem\"\n"
            ))
            .map_err(|e| e.to_string())
            .and_then(|raw| raw.resolve().map_err(|e| format!("{e:#}")))
        };
        let one = agent("\"writ.internal:8443\"").unwrap();
        assert_eq!(one.remote.servers, ["writ.internal:8443"]);
        let many = agent("[\"10.0.0.1:8443\", \"[::1]:8443\", \"writ-b:8443\"]").unwrap();
        assert_eq!(
            many.remote.servers,
            ["10.0.0.1:8443", "[::1]:8443", "writ-b:8443"]
        );
        let e = agent("[]").unwrap_err();
        assert!(e.contains("server_address is empty"), "{e}");
        let seventeen: Vec<String> = (0..17).map(|i| format!("\"s{i}:8443\"")).collect();
        let e = agent(&format!("[{}]", seventeen.join(", "))).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
        for bad in [
            "\"no-port\"",
            "[\"a:1\", \"b:notaport\"]",
            "[\":8443\"]",
            "[\"a:0\"]",
        ] {
            let e = agent(bad).unwrap_err();
            assert!(e.contains("host:port"), "{bad}: {e}");
        }
        let e = agent("8443").unwrap_err();
        assert!(
            e.contains("a \"host:port\" string or a list of them"),
            "{e}"
        );
    }

    #[test]
    fn a_join_token_never_shows_in_debug_output() {
        let raw: RawAgentConfig = toml::from_str(
            "server_address = \"writ:8443\"\ntrust_bundle = \"/b.pem\"\njoin_token = \"s3cr3t-join-token\"\n",
        )
        .unwrap();
        let shown = format!("{raw:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("JoinToken(17 bytes)"), "{shown}");
        let config = raw.resolve().unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(matches!(
            config.remote.attestation,
            Some(crate::agent::remote::Attestation::JoinToken(ref t)) if t.expose() == "s3cr3t-join-token"
        ));
    }

    #[test]
    fn psat_needs_its_cluster_and_its_token_file_and_has_no_default_path() {
        let agent = |lines: &str| {
            toml::from_str::<RawAgentConfig>(&format!(
                "server_address = \"writ:8443\"\ntrust_bundle = \"/b.pem\"\n{lines}"
            ))
            .unwrap()
            .resolve()
            .map_err(|e| format!("{e:#}"))
        };
        // Half a psat setup is refused when the config is read, naming both keys: the
        // token path has no default (deploy/kubernetes sets it to the projected token).
        for half in [
            "psat_cluster = \"prod\"\n",
            "psat_token_file = \"/var/run/secrets/writ/psat-token\"\n",
        ] {
            let e = agent(half).unwrap_err();
            assert!(
                e.contains("psat_cluster and psat_token_file"),
                "{half}: {e}"
            );
        }
        let both = agent(
            "psat_cluster = \"prod\"\npsat_token_file = \"/var/run/secrets/writ/psat-token\"\n",
        )
        .unwrap();
        assert!(
            matches!(
                both.remote.attestation,
                Some(crate::agent::remote::Attestation::K8sPsat { ref cluster, ref token_file })
                    if cluster == "prod"
                        && token_file == Path::new("/var/run/secrets/writ/psat-token")
            ),
            "{:?}",
            both.remote.attestation
        );
        let e = agent("psat_cluster = \"Prod Cluster\"\npsat_token_file = \"/t\"\n").unwrap_err();
        assert!(e.contains("psat_cluster"), "{e}");
    }

    #[test]
    fn a_k8s_block_is_read_by_the_agent_and_by_writ_dev() {
        let block = "[k8s]\nkubelet_url = \"https://10.0.0.5:10250\"\nkubelet_skip_verify = true\ntoken_file = \"/t\"\nnode_name = \"node-1\"\n";
        let agent: RawAgentConfig = toml::from_str(&format!(
            "server_address = \"writ:8443\"\ntrust_bundle = \"/b.pem\"\n{block}"
        ))
        .unwrap();
        let k8s = agent.resolve().unwrap().k8s.unwrap();
        assert_eq!(k8s.kubelet_url.as_deref(), Some("https://10.0.0.5:10250"));
        assert!(k8s.kubelet_skip_verify);
        let dev: RawConfig = toml::from_str(block).unwrap();
        assert_eq!(dev.resolve().unwrap().k8s, Some(k8s));
        assert_eq!(RawConfig::default().resolve().unwrap().k8s, None);
        assert!(toml::from_str::<RawAgentConfig>("[k8s]\nkubelet_ur = \"x\"").is_err());
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_an_ip_and_port_when_set() {
        assert_eq!(RawConfig::default().resolve().unwrap().metrics_listen, None);
        let on: RawConfig = toml::from_str("metrics_listen = \"127.0.0.1:9090\"").unwrap();
        assert_eq!(
            on.resolve().unwrap().metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        for bad in [
            "nonsense",
            "localhost:9090",
            "127.0.0.1",
            ":9090",
            "1.2.3.4:99999",
        ] {
            let raw: RawConfig = toml::from_str(&format!("metrics_listen = {bad:?}")).unwrap();
            let e = format!("{:#}", raw.resolve().unwrap_err());
            assert!(
                e.contains("metrics_listen") && e.contains("ip:port"),
                "{bad}: {e}"
            );
        }
        let agent = |line: &str| {
            toml::from_str::<RawAgentConfig>(&format!(
                "server_address = \"writ:8443\"\ntrust_bundle = \"/b.pem\"\n{line}"
            ))
            .unwrap()
            .resolve()
            .map_err(|e| format!("{e:#}"))
        };
        assert_eq!(agent("").unwrap().metrics_listen, None);
        assert_eq!(
            agent("metrics_listen = \"[::1]:9091\"")
                .unwrap()
                .metrics_listen,
            Some("[::1]:9091".parse().unwrap())
        );
        assert!(
            agent("metrics_listen = \"nonsense\"")
                .unwrap_err()
                .contains("ip:port")
        );
    }

    #[test]
    fn file_values_are_used() {
        let raw: RawConfig = toml::from_str(
            "data_dir = \"/tmp/w\"\ntrust_domain = \"corp.test\"\n[ca]\nx509_svid_ttl = \"2m\"",
        )
        .unwrap();
        let config = raw.resolve().unwrap();
        assert_eq!(config.ca.x509_svid_ttl.as_secs(), 120);
        assert_eq!(config.admin_socket, PathBuf::from("/tmp/w/admin.sock"));
    }
}
