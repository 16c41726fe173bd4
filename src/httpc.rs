//! One small HTTP/1.1 client for writ's calls to other systems' HTTPS APIs (the
//! Kubernetes API server's TokenReview, and what follows it): one request per
//! connection, TLS through rustls with the roots the caller names, every wait and the
//! answer's size bounded.
//!
//! Must never: follow a redirect, read an answer past its bound, wait without a
//! timeout, or put a request's credentials into an error (a bearer token goes in a
//! header marked sensitive, and errors name the host only).

use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::Duration;

/// Where requests go: `https://host:port` (or `http://` for loopback tests), parsed once.
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    authority: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// Why a request got no answer (or an answer writ will not read).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not one this client takes.
    #[error("bad URL: {0}")]
    Url(String),
    /// Connecting, the TLS handshake or the exchange took too long.
    #[error("{0}: timed out")]
    Timeout(String),
    /// The connection or handshake failed.
    #[error("{at}: {why}")]
    Connect {
        /// `scheme://host:port`.
        at: String,
        /// What failed.
        why: String,
    },
    /// The answer is larger than the caller's bound.
    #[error("{0}: answer larger than allowed")]
    TooLarge(String),
}

/// An answer: its status and body.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body, at most the caller's bound.
    pub body: Bytes,
}

/// How long each part of a request may take, and how large its answer may be.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connecting and the TLS handshake.
    pub connect: Duration,
    /// Sending the request and reading the whole answer.
    pub exchange: Duration,
    /// The largest answer body read.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect: Duration::from_secs(5),
            exchange: Duration::from_secs(10),
            max_body: 1024 * 1024,
        }
    }
}

/// A TLS client configuration trusting `roots` only, with no client certificate.
pub fn tls_trusting(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, String> {
    tls_client(ServerTrust::Roots(roots), None)
}

/// How a server's certificate is checked.
pub enum ServerTrust<'a> {
    /// Against these CA certificates (and the host name); one rustls cannot use is an
    /// error.
    Roots(&'a [CertificateDer<'static>]),
    /// Against a root store the caller built (a system bundle, whose unusable
    /// certificates it skipped as every TLS client does).
    Store(rustls::RootCertStore),
    /// By this verifier (the kubelet's explicit skip-verify lives with its caller).
    Verifier(Arc<dyn rustls::client::danger::ServerCertVerifier>),
}

/// A client certificate chain and its key, presented in the handshake. The key is
/// zeroized when dropped; rustls keeps its own parsed copy for signing.
pub struct ClientCert {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: zeroize::Zeroizing<PrivateKeyDer<'static>>,
}

/// The one builder of writ's outgoing HTTPS client configurations: rustls with ring,
/// its safe protocol versions, HTTP/1.1 by ALPN, `trust` for the server, and `client`
/// when the server asks for a certificate.
pub fn tls_client(
    trust: ServerTrust<'_>,
    client: Option<ClientCert>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?;
    let builder = match trust {
        ServerTrust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for root in roots {
                store
                    .add(root.clone())
                    .map_err(|e| format!("a CA certificate is unusable: {e}"))?;
            }
            builder.with_root_certificates(store)
        }
        ServerTrust::Store(store) => builder.with_root_certificates(store),
        ServerTrust::Verifier(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier),
    };
    let mut config = match client {
        Some(client) => builder
            .with_client_auth_cert(client.chain, client.key.clone_key())
            .map_err(|e| format!("the client certificate and its key do not go together: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Target {
    /// `url`'s scheme, host and port (`https://host[:port]`, any path ignored), with
    /// `tls` for https. Plain `http://` is taken for loopback addresses only.
    pub fn parse(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Target, HttpError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| HttpError::Url("not a URL".into()))?;
        let host = uri
            .host()
            .ok_or_else(|| HttpError::Url("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url("the scheme must be https".into())),
        };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(HttpError::Url("credentials in a URL are refused".into()));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !https {
            let loopback = host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(HttpError::Url(
                    "plain http is for loopback addresses only".into(),
                ));
            }
        }
        let tls = match (https, tls) {
            (true, Some(tls)) => Some(tls),
            (true, None) => return Err(HttpError::Url("https needs a TLS configuration".into())),
            (false, _) => None,
        };
        let authority = match host.contains(':') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        };
        Ok(Target {
            host,
            port,
            authority,
            tls,
        })
    }

    /// `scheme://host:port`, for logs and errors.
    pub fn shown(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }

    /// Sends one request (`path` with its query, `headers`, `body`) and reads the whole
    /// answer within `limits`. A redirect is an answer like any other: never followed.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
        limits: Limits,
    ) -> Result<Reply, HttpError> {
        let at = self.shown();
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| HttpError::Connect {
                    at: at.clone(),
                    why: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            Ok::<_, HttpError>(tcp)
        };
        let tcp = tokio::time::timeout(limits.connect, connect)
            .await
            .map_err(|_| HttpError::Timeout(at.clone()))??;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority)
            .header(
                http::header::USER_AGENT,
                concat!("writ/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|_| HttpError::Url("the path is not a valid request target".into()))?;
        request.headers_mut().extend(headers);
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| HttpError::Url(format!("server name: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
                let stream = tokio::time::timeout(limits.connect, connector.connect(name, tcp))
                    .await
                    .map_err(|_| HttpError::Timeout(at.clone()))?
                    .map_err(|e| HttpError::Connect {
                        at: at.clone(),
                        why: format!("TLS: {e}"),
                    })?;
                exchange(stream, request, limits, at).await
            }
            None => exchange(tcp, request, limits, at).await,
        }
    }
}

async fn exchange<S>(
    io: S,
    request: Request<Full<Bytes>>,
    limits: Limits,
    at: String,
) -> Result<Reply, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connect_error = |e: hyper::Error| HttpError::Connect {
        at: at.clone(),
        why: e.to_string(),
    };
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(connect_error)?;
        let driver = tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(connect_error);
        let out = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                match Limited::new(response.into_body(), limits.max_body)
                    .collect()
                    .await
                {
                    Ok(body) => Ok(Reply {
                        status,
                        body: body.to_bytes(),
                    }),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        Err(HttpError::TooLarge(at.clone()))
                    }
                    Err(e) => Err(HttpError::Connect {
                        at: at.clone(),
                        why: e.to_string(),
                    }),
                }
            }
            Err(e) => Err(e),
        };
        driver.abort();
        out
    };
    tokio::time::timeout(limits.exchange, exchange)
        .await
        .map_err(|_| HttpError::Timeout(at.clone()))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_http_and_carry_no_credentials() {
        let tls = tls_trusting(&[]).unwrap();
        let t = Target::parse("https://kubernetes.default.svc", Some(tls.clone())).unwrap();
        assert_eq!(t.shown(), "https://kubernetes.default.svc:443");
        let t = Target::parse("https://10.0.0.1:6443/ignored", Some(tls.clone())).unwrap();
        assert_eq!(t.shown(), "https://10.0.0.1:6443");
        let t = Target::parse("https://[fd00::1]:6443", Some(tls.clone())).unwrap();
        assert_eq!(t.shown(), "https://[fd00::1]:6443");
        assert!(Target::parse("http://127.0.0.1:8080", None).is_ok());
        for bad in [
            "http://10.0.0.1:8080",
            "ftp://host",
            "https://user:pw@host",
            "not a url",
            "https://host",
        ] {
            let tls = (!bad.ends_with("//host")).then(|| tls.clone());
            let err = Target::parse(bad, tls).unwrap_err().to_string();
            assert!(!err.contains("pw"), "{err}");
        }
    }

    #[tokio::test]
    async fn an_answer_past_its_bound_is_refused_and_a_dead_port_is_an_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "x".repeat(2048);
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let target = Target::parse(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let small = Limits {
            max_body: 1024,
            ..Limits::default()
        };
        let err = target
            .request(Method::GET, "/", HeaderMap::new(), Bytes::new(), small)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::TooLarge(_)), "{err}");
        let ok = target
            .request(
                Method::GET,
                "/",
                HeaderMap::new(),
                Bytes::new(),
                Limits::default(),
            )
            .await
            .unwrap();
        assert_eq!((ok.status, ok.body.len()), (200, 2048));
        let dead = Target::parse("http://127.0.0.1:1", None).unwrap();
        assert!(
            dead.request(
                Method::GET,
                "/",
                HeaderMap::new(),
                Bytes::new(),
                Limits::default()
            )
            .await
            .is_err()
        );
    }
}
