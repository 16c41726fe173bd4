//! The kubelet's read-only pod list over its secure port: `GET https://<kubelet>/pods`,
//! authenticated with a bearer token (re-read from its file on every request, so a
//! projected token's rotation is seen) or a client certificate, the kubelet verified
//! against a CA file unless `kubelet_skip_verify` says otherwise. Requests go through
//! [`crate::httpc`], with the TLS configuration made here.
//!
//! The list is kept [`CACHE_TTL`] at most. Must never: answer from a list older than that,
//! whatever the kubelet does (a failed refresh forgets the list), read an unbounded
//! response, or log a token.

use super::pods::PodList;
use crate::httpc::{HttpError, Limits, Target};
use anyhow::Context;
use hyper::body::Bytes;
use rustls::pki_types::PrivateKeyDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// How long a pod list answers callers before it is fetched again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Largest pod list read: a node's 110 pods (the default limit) at tens of KiB each fit
/// with room to spare.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Time for one request to the kubelet, from connecting to the last byte of the answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Largest token file read.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Why the pod list could not be had.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    /// No connection, TLS handshake or answer in time.
    #[error("kubelet {url} unreachable: {reason}")]
    Unreachable {
        /// The kubelet's URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The kubelet answered with another status than 200 (401: the token or certificate
    /// was not accepted; 403: not authorized for `nodes/proxy`).
    #[error("kubelet {url} answered HTTP {status} to GET /pods")]
    Status {
        /// The kubelet's URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The answer is not a pod list within the bounds.
    #[error("kubelet {url} sent an unreadable pod list: {reason}")]
    Malformed {
        /// The kubelet's URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token file could not be read.
    #[error("reading the kubelet token {path}: {reason}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// A pod list and when it was fetched.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The pods.
    pub pods: Arc<PodList>,
    /// When the answer arrived.
    pub at: Instant,
}

/// A client of one kubelet, with its short cache.
pub struct Kubelet {
    url: String,
    target: Target,
    token_file: Option<PathBuf>,
    cache_ttl: Duration,
    cache: tokio::sync::Mutex<Option<Fetched>>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// How the kubelet's certificate is checked.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Against the CA certificates in this PEM file.
    Ca(PathBuf),
    /// Not at all (kind-like clusters whose kubelet certificate is self-signed).
    SkipVerify,
}

/// How writ proves itself to the kubelet.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    /// A bearer token, read from this file for every request.
    pub token_file: Option<PathBuf>,
    /// A client certificate chain and its PKCS#8 key (PEM files).
    pub cert: Option<(PathBuf, PathBuf)>,
}

impl Kubelet {
    /// A client of the kubelet at `url` (`https://host[:port]`, 10250 by default).
    pub fn new(url: &str, trust: &ServerTrust, auth: ClientAuth) -> anyhow::Result<Kubelet> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("kubelet_url {url:?} is not a URL"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("https"),
            "kubelet_url {url:?} must be https:// (the kubelet's secure port)"
        );
        anyhow::ensure!(
            uri.path_and_query().is_none_or(|p| p.as_str() == "/"),
            "kubelet_url {url:?} names a host and port only"
        );
        // The kubelet's port, not https' 443, when none is written.
        let url = match uri.port_u16() {
            Some(_) => url.trim_end_matches('/').to_owned(),
            None => format!(
                "https://{}:10250",
                uri.host()
                    .with_context(|| format!("kubelet_url {url:?} has no host"))?
            ),
        };
        let target = Target::parse(&url, Some(client_tls(trust, auth.cert.as_ref())?))
            .with_context(|| format!("kubelet_url {url:?}"))?;
        Ok(Kubelet {
            url: target.shown(),
            target,
            token_file: auth.token_file,
            cache_ttl: CACHE_TTL,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// Keeps pod lists `ttl` instead of [`CACHE_TTL`].
    pub fn set_cache_ttl(&mut self, ttl: Duration) {
        self.cache_ttl = ttl;
    }

    /// The kubelet's URL, for log lines.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pod list: the cached one while it is younger than the cache's lifetime and, if
    /// `newer_than` is given, fetched after it; else a new one. Concurrent callers share
    /// one fetch. A failed fetch forgets the cached list.
    pub async fn pods(&self, newer_than: Option<Instant>) -> Result<Fetched, KubeletError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            let fresh = cached.at.elapsed() < self.cache_ttl;
            let new_enough = newer_than.is_none_or(|t| cached.at > t);
            if fresh && new_enough {
                return Ok(cached.clone());
            }
        }
        *cache = None;
        // Each step has its own timeout; this bounds them all together.
        let pods = tokio::time::timeout(TIMEOUT, self.fetch())
            .await
            .map_err(|_| KubeletError::Unreachable {
                url: self.url.clone(),
                reason: "no answer in time".into(),
            })??;
        let fetched = Fetched {
            pods: Arc::new(pods),
            at: Instant::now(),
        };
        *cache = Some(fetched.clone());
        Ok(fetched)
    }

    /// One `GET /pods`.
    async fn fetch(&self) -> Result<PodList, KubeletError> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(path) = &self.token_file {
            let token = read_token(path)?;
            let bearer = Zeroizing::new(format!("Bearer {}", token.as_str()));
            let mut value =
                http::HeaderValue::from_str(&bearer).map_err(|_| KubeletError::Token {
                    path: path.clone(),
                    reason: "not a valid header value".into(),
                })?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let limits = Limits {
            connect: TIMEOUT,
            exchange: TIMEOUT,
            max_body: MAX_RESPONSE_BYTES,
        };
        let reply = self
            .target
            .request(http::Method::GET, "/pods", headers, Bytes::new(), limits)
            .await
            .map_err(|e| match e {
                HttpError::TooLarge(_) => KubeletError::Malformed {
                    url: self.url.clone(),
                    reason: format!("above {MAX_RESPONSE_BYTES} bytes"),
                },
                other => KubeletError::Unreachable {
                    url: self.url.clone(),
                    reason: other.to_string(),
                },
            })?;
        if reply.status != 200 {
            return Err(KubeletError::Status {
                url: self.url.clone(),
                status: reply.status,
            });
        }
        serde_json::from_slice::<PodList>(&reply.body).map_err(|e| KubeletError::Malformed {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }
}

/// The token in `path`, less surrounding whitespace; bounded.
fn read_token(path: &Path) -> Result<Zeroizing<String>, KubeletError> {
    use std::io::Read;
    let err = |reason: String| KubeletError::Token {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        return Err(err(format!("above {MAX_TOKEN_BYTES} bytes")));
    }
    let token = Zeroizing::new(text.trim().to_owned());
    if token.is_empty() {
        return Err(err("empty".into()));
    }
    Ok(token)
}

/// The kubelet's CA (or no verification), and a client certificate if configured.
fn client_tls(
    trust: &ServerTrust,
    cert: Option<&(PathBuf, PathBuf)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let client = match cert {
        Some((chain, key)) => Some(crate::httpc::ClientCert {
            chain: crate::agent::remote::read_pem_certs(chain)
                .with_context(|| format!("client_cert {}", chain.display()))?,
            key: zeroize::Zeroizing::new(
                PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("client_key {}", key.display()))?,
            ),
        }),
        None => None,
    };
    let roots;
    let trust = match trust {
        ServerTrust::Ca(path) => {
            roots = crate::agent::remote::read_pem_certs(path)
                .with_context(|| format!("kubelet_ca {}", path.display()))?;
            crate::httpc::ServerTrust::Roots(&roots)
        }
        ServerTrust::SkipVerify => crate::httpc::ServerTrust::Verifier(Arc::new(
            danger::NoServerVerification(Arc::new(rustls::crypto::ring::default_provider())),
        )),
    };
    crate::httpc::tls_client(trust, client).map_err(|e| anyhow::anyhow!("kubelet TLS: {e}"))
}

/// `kubelet_skip_verify`: what it gives up lives here, apart.
mod danger {
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    /// Accepts any kubelet certificate. The handshake's signatures are still checked
    /// (the peer holds the key of the certificate it shows), but who it is is not: an
    /// attacker on the path to the kubelet can answer for it. For kind-like clusters,
    /// with the kubelet on the node's own address; the agent warns at start.
    #[derive(Debug)]
    pub(super) struct NoServerVerification(pub(super) Arc<CryptoProvider>);

    impl ServerCertVerifier for NoServerVerification {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}
