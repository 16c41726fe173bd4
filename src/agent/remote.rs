//! The agent's side of the node API: attest once (join token or x509pop), keep the node
//! SVID fresh and on disk, follow policy and bundles over a Sync stream, and ask the
//! server to sign — all over mTLS, where we verify the server's SVID with writ's own
//! SPIFFE verifier (rustls' name check cannot).

use super::endpoints::{NodeHealth, Servers};
use crate::audit::activity::Activity;
use crate::backoff::Backoff;
use crate::ca::{BundleSet, TaintedAuthority, TrustBundle, bundle::pem};
use crate::clock::SharedClock;
use crate::node_api::{self, NodeApi, NodeError, SignedX509};
use crate::policy::{Grant, GrantRequest, PolicySnapshot};
use crate::proto::node::{self as pb, node_client::NodeClient};
use anyhow::Context;
use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;
use spiffe::{SpiffeId, TrustDomain};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};
use writ_verifier::Band;
use writ_verifier::tls::{SpiffeServerVerifier, X509BundleSource};
use zeroize::Zeroizing;

/// A join token, a secret until the server has taken it: held zeroized, and its `Debug`
/// shows only its length, so no config or error printed with `{:?}` carries it.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct JoinToken(Zeroizing<String>);

impl JoinToken {
    /// The token itself, for the one request that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({} bytes)", self.0.len())
    }
}

/// How this node proves itself the first time.
#[derive(Clone, Debug)]
pub enum Attestation {
    /// A single-use join token from `writ token create`.
    JoinToken(JoinToken),
    /// A certificate (and its key) chained to a CA the server trusts for x509pop.
    X509Pop {
        /// PEM certificate chain, leaf first.
        cert: PathBuf,
        /// PEM PKCS#8 private key.
        key: PathBuf,
    },
    /// Kubernetes: the pod's projected service-account token, reviewed by the cluster's
    /// API server (docs/kubernetes.md, "Node attestation").
    K8sPsat {
        /// The cluster's name in the server's `[[k8s_psat]]`.
        cluster: String,
        /// The token's file, read at each attestation (the kubelet rotates it).
        token_file: PathBuf,
    },
}

/// What the agent needs to reach the server.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// `host:port` of each server's node API (1 to [`super::endpoints::MAX_SERVERS`]),
    /// tried in turn; a name may resolve to several addresses.
    pub servers: Vec<String>,
    /// The base trust domain.
    pub base: TrustDomain,
    /// The agent's own state (node key and SVID).
    pub data_dir: PathBuf,
    /// PEM of the base trust domain's CA certificates, to trust the server before the
    /// first sync (`writ bundle show --band base`).
    pub trust_bundle: PathBuf,
    /// How to attest when there is no valid node SVID on disk.
    pub attestation: Option<Attestation>,
}

/// The node's credentials and what it trusts, shared with rustls.
#[derive(Debug)]
struct TlsState {
    node: RwLock<Option<(Arc<CertifiedKey>, i64)>>,
    base_bundle: RwLock<Vec<CertificateDer<'static>>>,
    base: TrustDomain,
}

impl X509BundleSource for TlsState {
    fn x509_authorities(&self, trust_domain: &TrustDomain) -> Option<Vec<CertificateDer<'static>>> {
        (trust_domain == &self.base).then(|| {
            self.base_bundle
                .read()
                .map(|b| b.clone())
                .unwrap_or_default()
        })
    }
}

impl ResolvesClientCert for TlsState {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.node
            .read()
            .ok()?
            .as_ref()
            .map(|(key, _)| Arc::clone(key))
    }

    fn has_certs(&self) -> bool {
        self.node.read().map(|n| n.is_some()).unwrap_or(false)
    }
}

/// The server, over the network.
pub struct RemoteNode {
    config: RemoteConfig,
    servers: Arc<Servers>,
    clock: SharedClock,
    tls: Arc<TlsState>,
    /// Replaced (see [`RemoteNode::fail_over`]) when the server is gone, including when
    /// it says it cannot serve while its connection stays up: only a new connection moves
    /// the agent to the next server.
    client: RwLock<NodeClient<Channel>>,
    make_channel: Box<dyn Fn() -> anyhow::Result<Channel> + Send + Sync>,
    /// Which `client` is current: ticks when it is replaced, so the Sync stream follows
    /// and a failure seen on a replaced one moves nothing.
    switched: watch::Sender<u64>,
    policy: watch::Sender<Arc<PolicySnapshot>>,
    bundles: watch::Sender<Arc<BundleSet>>,
    max_svid_ttl_secs: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNode")
            .field("servers", &self.config.servers)
            .finish_non_exhaustive()
    }
}

/// Reads PEM certificates.
pub fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificates",
        path.display()
    );
    Ok(certs)
}

/// Writes a file readable only by its owner, atomically (temp file, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `chain_der` is the leaf followed by its intermediates, concatenated DER.
fn certified(chain_der: &[u8], key_pkcs8: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    let signing = rustls::crypto::ring::sign::any_ecdsa_type(&der)?;
    Ok(Arc::new(CertifiedKey::new(
        crate::agent::cache::split_der(chain_der),
        signing,
    )))
}

/// Whether an agent holding a node SVID valid until `not_after` (none: it holds none) may
/// serve at `now`: only while it holds one unexpired, without which no server signs for
/// it.
pub fn node_svid_readiness(not_after: Option<i64>, now: i64) -> crate::health::Readiness {
    use crate::health::Readiness;
    match not_after {
        Some(not_after) if now < not_after => Readiness::Ready,
        Some(not_after) => Readiness::NotReady(format!(
            "the node SVID expired {} s ago and is not renewed yet",
            now - not_after
        )),
        None => Readiness::NotReady("no node SVID yet".into()),
    }
}

fn not_after_of(cert_der: &[u8]) -> anyhow::Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| anyhow::anyhow!("node SVID unreadable: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

fn new_csr() -> anyhow::Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().to_vec(), Zeroizing::new(key.serialize_der())))
}

fn bundle_set(update: &pb::SyncUpdate) -> anyhow::Result<BundleSet> {
    let mut bundles = Vec::with_capacity(update.bundles.len());
    for b in &update.bundles {
        let band: Band = b.band.parse()?;
        let jwks: serde_json::Value = serde_json::from_slice(&b.jwt_jwks)?;
        let mut jwt_keys = std::collections::BTreeMap::new();
        for key in jwks["keys"].as_array().into_iter().flatten() {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let (Some(kid), Some(x), Some(y)) =
                (key["kid"].as_str(), key["x"].as_str(), key["y"].as_str())
            else {
                continue;
            };
            let mut point = vec![0x04];
            point.extend(b64.decode(x)?);
            point.extend(b64.decode(y)?);
            jwt_keys.insert(kid.to_owned(), point);
        }
        // A tainted authority must be one of the bundle's: that bounds the list, and
        // a name that is not there could refuse nothing anyway.
        let certs = crate::agent::cache::split_der(&b.x509_der);
        let mut tainted = Vec::new();
        for t in &b.tainted {
            if !certs.iter().any(|c| c.as_ref() == t.cert_der.as_slice()) {
                anyhow::bail!(
                    "a tainted authority of {} is not in its bundle",
                    b.trust_domain
                );
            }
            tainted.push(TaintedAuthority {
                cert_der: t.cert_der.clone(),
                jwt_kid: t.jwt_kid.clone(),
                tainted_at: t.tainted_at,
            });
        }
        bundles.push(TrustBundle {
            band,
            trust_domain_id: format!("spiffe://{}", b.trust_domain),
            trust_domain: b.trust_domain.clone(),
            x509_der: b.x509_der.clone(),
            jwt_jwks: b.jwt_jwks.clone(),
            jwt_keys,
            tainted,
        });
    }
    Ok(BundleSet { bundles })
}

impl RemoteNode {
    /// Loads or obtains the node SVID, connects, and waits for the first policy and
    /// bundles; then keeps following them and renewing the node SVID (when `clock` says
    /// it is due) in the background.
    pub async fn connect(config: RemoteConfig, clock: SharedClock) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let tls = Arc::new(TlsState {
            node: RwLock::new(None),
            base_bundle: RwLock::new(read_pem_certs(&config.trust_bundle)?),
            base: config.base.clone(),
        });
        let server_id = node_api::server_id(&config.base)?;
        let mut client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            Arc::clone(&tls) as Arc<dyn X509BundleSource>,
            writ_verifier::tls::exactly(server_id),
        )))
        .with_client_cert_resolver(Arc::clone(&tls) as Arc<dyn ResolvesClientCert>);
        client_config.alpn_protocols = vec![b"h2".to_vec()];
        // No session resumption: a session resumed from before attestation would carry
        // no client identity, and every connection should prove the current node SVID.
        client_config.resumption = rustls::client::Resumption::disabled();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let servers = Arc::new(Servers::new(config.servers.clone()));
        let dialer = Arc::clone(&servers);
        // Channels connect lazily, and reconnect through `Servers::connect` whenever their
        // connection closed: that is where the agent moves to the next server.
        // Attestation gets a channel of its own: a connection made before the node SVID
        // existed carries no client certificate, so the main channel must not be the one
        // that attested.
        let make_channel = move || -> anyhow::Result<Channel> {
            let connector = connector.clone();
            let dialer = Arc::clone(&dialer);
            Ok(Endpoint::try_from("http://writ-server")?
                // A server that vanished without closing the connection (host down, a
                // partition) must break the Sync stream, or the agent would wait forever.
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let connector = connector.clone();
                    let dialer = Arc::clone(&dialer);
                    async move {
                        let tls = dialer
                            .connect(|address| {
                                let connector = connector.clone();
                                async move {
                                    let tcp = tokio::net::TcpStream::connect(address).await?;
                                    tcp.set_nodelay(true)?;
                                    // The name is not checked (the SPIFFE verifier checks
                                    // the ID).
                                    let name = ServerName::try_from("writ-server")
                                        .map_err(std::io::Error::other)?;
                                    connector.connect(name, tcp).await
                                }
                            })
                            .await?;
                        Ok::<_, std::io::Error>(TokioIo::new(tls))
                    }
                })))
        };
        let node = Arc::new(RemoteNode {
            client: RwLock::new(NodeClient::new(make_channel()?)),
            switched: watch::channel(0).0,
            tls,
            policy: watch::channel(Arc::new(PolicySnapshot::default())).0,
            bundles: watch::channel(Arc::new(BundleSet::default())).0,
            max_svid_ttl_secs: std::sync::atomic::AtomicU64::new(
                crate::ca::CaConfig::default().max_svid_ttl.as_secs(),
            ),
            config,
            servers,
            clock,
            make_channel: Box::new(make_channel.clone()),
        });
        if !node.load_node_svid()? {
            let attested = node.attest(NodeClient::new(make_channel()?)).await;
            // Its channel is dropped now: the main channel's first connect is no loss.
            node.servers.release();
            attested?;
        }
        let (mut stream, generation) = node.open_sync().await?;
        let first = stream
            .message()
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "sync with the server failed: {}",
                    crate::errors::describe_status(&s)
                )
            })?
            .context("the server closed the sync stream")?;
        node.apply(&first)?;
        node.servers.started();
        tokio::spawn(Arc::clone(&node).follow_sync(stream, generation));
        tokio::spawn(Arc::clone(&node).renew_node_svid());
        Ok(node)
    }

    fn key_path(&self) -> PathBuf {
        self.config.data_dir.join("node.key")
    }

    fn cert_path(&self) -> PathBuf {
        self.config.data_dir.join("node.der")
    }

    /// Uses the node SVID on disk if it has at least a minute left.
    fn load_node_svid(&self) -> anyhow::Result<bool> {
        let (Ok(key), Ok(cert)) = (
            std::fs::read(self.key_path()),
            std::fs::read(self.cert_path()),
        ) else {
            return Ok(false);
        };
        let key = Zeroizing::new(key);
        let not_after = not_after_of(&cert)?;
        let leaf = CertificateDer::from(cert.as_slice());
        match writ_verifier::tls::peer_spiffe_id(&leaf) {
            Some(id)
                if id.trust_domain() == &self.config.base && id.path().starts_with("/node/") => {}
            other => {
                tracing::warn!(found = ?other.map(|i| i.to_string()), "node SVID on disk is not a node of {}; attesting again", self.config.base);
                return Ok(false);
            }
        }
        if not_after - self.clock.unix() < 60 {
            tracing::info!("node SVID on disk has expired; attesting again");
            return Ok(false);
        }
        self.install(&cert, &key, not_after)?;
        tracing::info!(not_after, "using the node SVID on disk");
        Ok(true)
    }

    fn install(&self, chain_der: &[u8], key_pkcs8: &[u8], not_after: i64) -> anyhow::Result<()> {
        let key = certified(chain_der, key_pkcs8)?;
        if let Ok(mut node) = self.tls.node.write() {
            *node = Some((key, not_after));
        }
        Ok(())
    }

    fn store(&self, svid: &pb::NodeSvid, key_pkcs8: &[u8]) -> anyhow::Result<()> {
        // Key first: a certificate on disk always has its key beside it.
        write_private(&self.key_path(), key_pkcs8)?;
        // The leaf, then any intermediates: the chain the agent presents to the server.
        let chain_der = [svid.certificate.as_slice()]
            .into_iter()
            .chain(svid.intermediates.iter().map(Vec::as_slice))
            .collect::<Vec<_>>()
            .concat();
        write_private(&self.cert_path(), &chain_der)?;
        self.install(&chain_der, key_pkcs8, svid.not_after)?;
        if let Ok(mut bundle) = self.tls.base_bundle.write() {
            *bundle = svid
                .bundle
                .iter()
                .cloned()
                .map(CertificateDer::from)
                .collect();
        }
        Ok(())
    }

    async fn attest(&self, mut client: NodeClient<Channel>) -> anyhow::Result<()> {
        let attestation = self.config.attestation.clone().context(
            "no valid node SVID on disk and no attestation configured (join_token, x509pop or psat)",
        )?;
        let (csr, key) = new_csr()?;
        let svid = match attestation {
            Attestation::JoinToken(token) => client
                .attest_join_token(pb::AttestJoinTokenRequest {
                    token: token.expose().to_owned(),
                    csr,
                })
                .await
                .map_err(|s| {
                    anyhow::anyhow!(
                        "join token attestation failed: {}",
                        crate::errors::describe_status(&s)
                    )
                })?
                .into_inner(),
            Attestation::X509Pop {
                cert,
                key: key_path,
            } => {
                let chain = read_pem_certs(&cert)?;
                let challenge = client
                    .x509_pop_challenge(pb::X509PopChallengeRequest {
                        chain: chain.iter().map(|c| c.to_vec()).collect(),
                    })
                    .await
                    .map_err(|s| {
                        anyhow::anyhow!("x509pop refused: {}", crate::errors::describe_status(&s))
                    })?
                    .into_inner();
                let pem = Zeroizing::new(
                    std::fs::read_to_string(&key_path)
                        .with_context(|| format!("reading {}", key_path.display()))?,
                );
                let pop_key = rcgen::KeyPair::from_pem(&pem)
                    .context("x509pop key: expected a PEM PKCS#8 private key")?;
                let mut message = node_api::X509POP_CONTEXT.to_vec();
                message.extend_from_slice(&challenge.nonce);
                let signature = rcgen::SigningKey::sign(&pop_key, &message)?;
                client
                    .x509_pop_answer(pb::X509PopAnswerRequest {
                        challenge_id: challenge.challenge_id,
                        signature,
                        csr,
                    })
                    .await
                    .map_err(|s| {
                        anyhow::anyhow!("x509pop refused: {}", crate::errors::describe_status(&s))
                    })?
                    .into_inner()
            }
            Attestation::K8sPsat {
                cluster,
                token_file,
            } => {
                let token = Zeroizing::new(
                    std::fs::read_to_string(&token_file)
                        .with_context(|| format!("reading {}", token_file.display()))?,
                );
                client
                    .attest_k8s_psat(pb::AttestK8sPsatRequest {
                        cluster,
                        token: token.trim().to_owned(),
                        csr,
                    })
                    .await
                    .map_err(|s| {
                        anyhow::anyhow!(
                            "k8s_psat attestation failed: {}",
                            crate::errors::describe_status(&s)
                        )
                    })?
                    .into_inner()
            }
        };
        tracing::info!(node = %svid.spiffe_id, "attested to the server");
        self.store(&svid, &key)
    }

    /// Opens the Sync stream on the current connection; returns it with the connection's
    /// generation.
    async fn open_sync(&self) -> anyhow::Result<(tonic::Streaming<pb::SyncUpdate>, u64)> {
        let (mut client, generation) = self.client();
        let stream = client
            .sync(pb::SyncRequest { tenants: true })
            .await
            .map_err(|s| {
                self.gone(generation, &s);
                anyhow::anyhow!(
                    "sync with the server failed: {}",
                    crate::errors::describe_status(&s)
                )
            })?
            .into_inner();
        Ok((stream, generation))
    }

    fn apply(&self, update: &pb::SyncUpdate) -> anyhow::Result<()> {
        let policy = node_api::wire::decode_policy(
            update
                .policy
                .clone()
                .context("the server sent no policy (a server older than this agent?)")?,
        )?;
        if update.max_svid_ttl_seconds > 0 {
            self.max_svid_ttl_secs.store(
                update.max_svid_ttl_seconds,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let bundles = bundle_set(update)?;
        if let Some(base) = bundles.by_band(Band::Base)
            && let Ok(mut b) = self.tls.base_bundle.write()
        {
            *b = crate::agent::cache::split_der(&base.x509_der);
        }
        self.bundles.send_if_modified(|current| {
            let changed = **current != bundles;
            if changed {
                *current = Arc::new(bundles);
            }
            changed
        });
        self.policy.send_replace(Arc::new(policy));
        Ok(())
    }

    /// Follows the Sync stream, reconnecting with backoff when it breaks: a broken stream
    /// means the server is gone, and the agent moves to the next one. The backoff resets
    /// only when an update arrives: a server that accepts the stream and drops it at once
    /// is a failure too, and must not be retried at the base delay forever. When a failing
    /// call moved the agent to another server, the stream follows at once.
    async fn follow_sync(self: Arc<Self>, first: tonic::Streaming<pb::SyncUpdate>, on: u64) {
        let mut stream: Option<tonic::Streaming<pb::SyncUpdate>> = Some(first);
        let mut generation = on;
        let mut backoff = Backoff::new(SYNC_RETRY_BASE, SYNC_RETRY_CAP);
        let mut switched = self.switched.subscribe();
        loop {
            let current = match stream.as_mut() {
                Some(s) => s,
                None => {
                    switched.mark_unchanged();
                    match self.open_sync().await {
                        Ok((s, on)) => {
                            generation = on;
                            stream.insert(s)
                        }
                        Err(e) => {
                            // The link's transitions are logged by `Servers`; this is
                            // the detail.
                            let retry_in = backoff.next_delay();
                            tracing::debug!(error = %e, ?retry_in, "sync with the server failed; retrying");
                            tokio::time::sleep(retry_in).await;
                            continue;
                        }
                    }
                }
            };
            let message = tokio::select! {
                message = current.message() => message,
                _ = switched.changed() => {
                    tracing::debug!("moved to another server; reopening the sync stream there");
                    stream = None;
                    continue;
                }
            };
            let error = match message {
                Ok(Some(update)) => {
                    backoff.reset();
                    if let Err(e) = self.apply(&update) {
                        tracing::error!(error = %e, "bad sync update");
                    }
                    continue;
                }
                Ok(None) => "the server ended the stream".to_owned(),
                Err(status) => crate::errors::describe_status(&status),
            };
            stream = None;
            self.fail_over(generation, &format!("sync stream ended: {error}"));
            let retry_in = backoff.next_delay();
            tracing::debug!(%error, ?retry_in, "sync stream ended; reconnecting");
            tokio::time::sleep(retry_in).await;
        }
    }

    /// Renews the node SVID at half-life, and at once when an authority of the base
    /// trust domain is tainted (docs/operations.md, "A compromised CA").
    async fn renew_node_svid(self: Arc<Self>) {
        let mut backoff = Backoff::new(RENEW_RETRY_BASE, RENEW_RETRY_CAP);
        let mut bundles = self.bundles.subscribe();
        let base_tainted = |set: &BundleSet| -> std::collections::BTreeSet<String> {
            set.by_band(Band::Base)
                .map(|b| b.tainted.iter().map(|t| t.jwt_kid.clone()).collect())
                .unwrap_or_default()
        };
        let mut tainted = base_tainted(&bundles.borrow_and_update());
        loop {
            let not_after = self
                .tls
                .node
                .read()
                .ok()
                .and_then(|n| n.as_ref().map(|(_, t)| *t))
                .unwrap_or(0);
            let wait = ((not_after - self.clock.unix()) / 2).clamp(1, 3600) as u64;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
                changed = bundles.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now_tainted = base_tainted(&bundles.borrow_and_update());
                    let news = !now_tainted.is_subset(&tainted);
                    tainted = now_tainted;
                    if !news {
                        continue;
                    }
                    tracing::warn!("a base authority was tainted: renewing the node SVID");
                }
            }
            let result = async {
                let (csr, key) = new_csr()?;
                let (mut client, generation) = self.client();
                let svid = client
                    .renew_node_svid(pb::RenewNodeSvidRequest { csr })
                    .await
                    .map_err(|s| {
                        self.gone(generation, &s);
                        anyhow::anyhow!("{}", s.message())
                    })?
                    .into_inner();
                self.store(&svid, &key)
            }
            .await;
            match result {
                Ok(()) => {
                    backoff.reset();
                    tracing::info!("renewed the node SVID");
                }
                Err(e) => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(error = %e, ?retry_in, "node SVID renewal failed; retrying");
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    }

    /// The current client, with its generation (for [`RemoteNode::gone`]).
    fn client(&self) -> (NodeClient<Channel>, u64) {
        let client = self.client.read().unwrap_or_else(|p| p.into_inner());
        (client.clone(), *self.switched.borrow())
    }

    /// Fails over when `status` says the server cannot serve (`Unavailable`: its
    /// connection broke, or it answered that it cannot serve now — a replica that lost
    /// its database, say). Refusals of policy (permission denied, invalid, limited) are
    /// answers, not failures, and change nothing. The connection is replaced only on the
    /// transition (see [`RemoteNode::fail_over`]).
    fn gone(&self, generation: u64, status: &tonic::Status) {
        if means_gone(status) {
            self.fail_over(generation, &crate::errors::describe_status(status));
        }
    }

    /// The server behind client `generation` is gone: the next connection goes to the
    /// next one. Acts once per client: a burst of failing calls makes one switch, and a
    /// late failure of a replaced client does not move the agent off its new server.
    fn fail_over(&self, generation: u64, reason: &str) {
        let mut client = self.client.write().unwrap_or_else(|p| p.into_inner());
        if *self.switched.borrow() != generation {
            return;
        }
        // Only a loss the link did not know of yet makes a new connection (the Sync
        // stream and a failing call often see the same death).
        let was_connected = self.servers.lost(reason);
        if !was_connected {
            return;
        }
        match (self.make_channel)() {
            Ok(channel) => {
                *client = NodeClient::new(channel);
                self.switched.send_modify(|n| *n += 1);
            }
            Err(e) => tracing::error!(error = %e, "making a new node API channel failed"),
        }
    }

    /// The link to the servers: connected to which, since when, the last error.
    pub fn health(&self) -> watch::Receiver<NodeHealth> {
        self.servers.health()
    }

    /// The base bundle as PEM (for operators: what the agent trusts now).
    pub fn base_bundle_pem(&self) -> String {
        self.tls
            .base_bundle
            .read()
            .map(|b| b.iter().map(|c| pem("CERTIFICATE", c)).collect())
            .unwrap_or_default()
    }
}

/// HTTP/2 pings on the node API connection: how a silent dead server is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnecting the Sync stream: capped low, because an agent off the stream misses
/// revocations until it is back.
const SYNC_RETRY_BASE: Duration = Duration::from_millis(200);
const SYNC_RETRY_CAP: Duration = Duration::from_secs(10);
/// Retrying a failed node SVID renewal (the next half-life wait follows each attempt).
const RENEW_RETRY_BASE: Duration = Duration::from_secs(5);
const RENEW_RETRY_CAP: Duration = Duration::from_secs(60);

/// Whether a failed call means the server is gone (move to the next one): `Unavailable`,
/// which is what a broken or refused connection yields, and what a server answers when it
/// cannot serve now. Policy refusals (permission denied, invalid, failed precondition,
/// resource exhausted) are answers: the next server would give the same one.
fn means_gone(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// Whether a batch answered with every item unavailable means the server cannot sign
/// now (a replica that cannot prove it has the latest policy answers so, item by item):
/// then the agent moves on, as for an `Unavailable` call. Returns the first reason.
fn batch_means_gone(results: &[Result<SignedX509, NodeError>]) -> Option<&str> {
    let mut reason = None;
    for result in results {
        match result {
            Err(NodeError::Unavailable(why)) => {
                reason.get_or_insert(why.as_str());
            }
            _ => return None,
        }
    }
    reason
}

fn signed_result(signed: pb::SignedSvid) -> Result<SignedX509, NodeError> {
    if signed.error.is_empty() {
        return Ok(SignedX509 {
            cert_der: signed.certificate,
            chain: signed.intermediates,
            serial: signed.serial,
            not_after: signed.not_after,
        });
    }
    Err(NodeError::from_batch_error(signed.error))
}

#[tonic::async_trait]
impl NodeApi for RemoteNode {
    fn base(&self) -> &TrustDomain {
        &self.config.base
    }

    fn policy(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.policy.subscribe()
    }

    fn bundles(&self) -> watch::Receiver<Arc<BundleSet>> {
        self.bundles.subscribe()
    }

    fn max_svid_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.max_svid_ttl_secs
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn readiness(&self) -> crate::health::Readiness {
        let not_after = self
            .tls
            .node
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, not_after)| *not_after);
        node_svid_readiness(not_after, self.clock.unix())
    }

    async fn sign_x509_batch(
        &self,
        csrs: Vec<(SpiffeId, Vec<u8>)>,
    ) -> Vec<Result<SignedX509, NodeError>> {
        let mut out = Vec::with_capacity(csrs.len());
        for chunk in csrs.chunks(node_api::MAX_BATCH) {
            let request = pb::SignX509SvidsRequest {
                csrs: chunk
                    .iter()
                    .map(|(id, csr)| pb::SvidCsr {
                        spiffe_id: id.to_string(),
                        csr: csr.clone(),
                    })
                    .collect(),
            };
            let (mut client, generation) = self.client();
            match client.sign_x509_svids(request).await {
                Ok(response) => {
                    let mut signed = response.into_inner().svids.into_iter();
                    let results: Vec<_> = chunk
                        .iter()
                        .map(|_| match signed.next() {
                            Some(s) => signed_result(s),
                            None => Err(NodeError::Unavailable("short response".into())),
                        })
                        .collect();
                    if let Some(reason) = batch_means_gone(&results) {
                        self.fail_over(generation, &format!("signing unavailable: {reason}"));
                    }
                    out.extend(results);
                }
                Err(status) => {
                    self.gone(generation, &status);
                    let error = NodeError::from(status);
                    out.extend(chunk.iter().map(|_| Err(error.clone())));
                }
            }
        }
        out
    }

    async fn sign_jwt(
        &self,
        spiffe_id: &SpiffeId,
        audience: Vec<String>,
    ) -> Result<String, NodeError> {
        let (mut client, generation) = self.client();
        client
            .sign_jwt_svid(pb::SignJwtSvidRequest {
                spiffe_id: spiffe_id.to_string(),
                audience,
            })
            .await
            .map(|r| r.into_inner().token)
            .map_err(|status| {
                self.gone(generation, &status);
                NodeError::from(status)
            })
    }

    async fn request_grant(
        &self,
        request: GrantRequest,
        requested_by: &SpiffeId,
        uid: Option<u32>,
    ) -> Result<Grant, NodeError> {
        let response = self
            .client()
            .0
            .request_grant(pb::NodeGrantRequest {
                requested_by: requested_by.to_string(),
                requester_uid: uid,
                incident: request.incident,
                agent: request.agent,
                action: request.action,
                targets: request.targets.into_iter().collect(),
                evidence: request.evidence,
                plan: request.plan,
                scopes: request.scopes.into_iter().collect(),
                window_seconds: request.window_secs,
            })
            .await
            .map_err(NodeError::from)?
            .into_inner();
        response
            .grant
            .map(node_api::wire::decode_grant)
            .ok_or_else(|| NodeError::Unavailable("the server sent no grant".into()))
    }

    async fn record_activity(
        &self,
        activity: &Activity,
        spiffe_id: &SpiffeId,
        serial: &str,
    ) -> Result<u64, NodeError> {
        let raw = activity.to_raw();
        self.client()
            .0
            .record_activity(pb::NodeActivityRequest {
                spiffe_id: spiffe_id.to_string(),
                serial: serial.to_owned(),
                incident: raw.incident,
                kind: raw.kind,
                digest: raw.digest,
                tool: raw.tool,
                uri: raw.uri,
                summary: raw.summary,
            })
            .await
            .map(|r| r.into_inner().index)
            .map_err(NodeError::from)
    }

    async fn record_attestation(
        &self,
        spiffe_id: &SpiffeId,
        selectors: &[String],
    ) -> Result<u64, NodeError> {
        self.client()
            .0
            .record_attestation(pb::NodeAttestationRequest {
                spiffe_id: spiffe_id.to_string(),
                selectors: selectors.to_vec(),
            })
            .await
            .map(|r| r.into_inner().index)
            .map_err(NodeError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_serves_only_while_it_holds_an_unexpired_node_svid() {
        use crate::health::Readiness;
        assert_eq!(node_svid_readiness(Some(1_000), 999), Readiness::Ready);
        for (not_after, now) in [(Some(1_000), 1_000), (Some(1_000), 5_000), (None, 0)] {
            assert!(
                matches!(node_svid_readiness(not_after, now), Readiness::NotReady(_)),
                "{not_after:?} at {now}"
            );
        }
    }

    #[test]
    fn only_unavailable_moves_the_agent_to_another_server() {
        assert!(means_gone(&tonic::Status::unavailable("transport error")));
        for refusal in [
            tonic::Status::permission_denied("not entitled"),
            tonic::Status::invalid_argument("bad csr"),
            tonic::Status::failed_precondition("incident closed"),
            tonic::Status::resource_exhausted("too many"),
            tonic::Status::internal("boom"),
        ] {
            assert!(!means_gone(&refusal), "{refusal:?}");
        }
    }

    #[test]
    fn a_batch_all_unavailable_moves_the_agent_and_any_answer_keeps_it() {
        let down = || Err(NodeError::Unavailable("policy not current".into()));
        let signed = || {
            Ok(SignedX509 {
                cert_der: vec![0x30],
                chain: Vec::new(),
                serial: "01".into(),
                not_after: 0,
            })
        };
        assert_eq!(
            batch_means_gone(&[down(), down()]),
            Some("policy not current")
        );
        assert_eq!(batch_means_gone(&[down(), signed()]), None);
        assert_eq!(
            batch_means_gone(&[down(), Err(NodeError::NotEntitled("no".into()))]),
            None
        );
        assert_eq!(batch_means_gone(&[]), None);
    }
}
