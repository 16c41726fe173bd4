//! Test CAs and a fake HTTPS server (what the Kubernetes API server, a kubelet or a
//! webhook peer would be): its own CA, optional client certificates, and a handler the
//! test writes. It runs on its own thread and runtime, so sync and async tests use it
//! alike, and stops when dropped.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A CA for tests: its certificate and what signs with it.
pub struct TestCa {
    /// Its certificate, PEM.
    pub pem: String,
    der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate a [`TestCa`] issued, with its key.
pub struct Leaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its PKCS#8 key, PEM.
    pub key_pem: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl TestCa {
    /// A self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes its certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_owned()
    }

    /// A certificate named `common_name` for `names` (DNS names or IP addresses).
    pub fn leaf(&self, common_name: &str, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert: cert.der().clone(),
            key: key.serialize_der(),
        }
    }

    /// A TLS server configuration for 127.0.0.1 and localhost with a certificate from
    /// this CA; with `clients`, client certificates chaining to it are asked for (not
    /// required: the handler decides on what it got).
    pub fn server_config(&self, clients: Option<&TestCa>) -> rustls::ServerConfig {
        let leaf = self.leaf("test server", &["127.0.0.1", "localhost"]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der.clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        builder
            .with_single_cert(
                vec![leaf.cert],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key)),
            )
            .unwrap()
    }
}

/// A request as the fake server's handler sees it.
pub struct Request {
    /// `GET`, `POST`…
    pub method: String,
    /// The path and query.
    pub path: String,
    /// Headers, names lowercase.
    pub headers: BTreeMap<String, String>,
    /// The whole body.
    pub body: Bytes,
    /// The common name of the client certificate, if one was shown and verified.
    pub client_cn: Option<String>,
}

impl Request {
    /// Whether it carries `Authorization: Bearer <token>`.
    pub fn bearer_is(&self, token: &str) -> bool {
        self.headers.get("authorization") == Some(&format!("Bearer {token}"))
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// A fake HTTPS server until dropped (or [`HttpsServer::stop`]ped).
pub struct HttpsServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpsServer {
    /// Serves HTTP/1.1 with `tls` on a loopback port; each request is answered by
    /// `handler` with a status and a JSON body.
    pub fn start(
        tls: rustls::ServerConfig,
        handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static,
    ) -> HttpsServer {
        let handler: Arc<Handler> = Arc::new(handler);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let (acceptor, handler, counted) =
                            (acceptor.clone(), Arc::clone(&handler), Arc::clone(&counted));
                        tokio::spawn(async move {
                            // A client that does not trust this CA ends the handshake.
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let client_cn = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| common_name(cert));
                            let service = hyper::service::service_fn(
                                move |request: hyper::Request<hyper::body::Incoming>| {
                                    let (handler, counted, client_cn) = (
                                        Arc::clone(&handler),
                                        Arc::clone(&counted),
                                        client_cn.clone(),
                                    );
                                    async move {
                                        counted.fetch_add(1, Ordering::SeqCst);
                                        let (parts, body) = request.into_parts();
                                        let body = body.collect().await.map(|b| b.to_bytes());
                                        let request = Request {
                                            method: parts.method.to_string(),
                                            path: parts
                                                .uri
                                                .path_and_query()
                                                .map(|p| p.to_string())
                                                .unwrap_or_default(),
                                            headers: parts
                                                .headers
                                                .iter()
                                                .map(|(k, v)| {
                                                    (
                                                        k.as_str().to_owned(),
                                                        String::from_utf8_lossy(v.as_bytes())
                                                            .into_owned(),
                                                    )
                                                })
                                                .collect(),
                                            body: body.unwrap_or_default(),
                                            client_cn,
                                        };
                                        let (status, body) = handler(&request);
                                        let mut response =
                                            hyper::Response::new(Full::new(Bytes::from(body)));
                                        *response.status_mut() =
                                            hyper::StatusCode::from_u16(status).unwrap();
                                        response.headers_mut().insert(
                                            "content-type",
                                            "application/json".parse().unwrap(),
                                        );
                                        Ok::<_, std::convert::Infallible>(response)
                                    }
                                },
                            );
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        HttpsServer {
            port,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// How many requests it has been sent.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops listening: connections are refused from now on.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
