//! grpcio (the C-core under py-spiffe) against writ's Workload API served by stock tonic
//! on a Unix socket, with and without `AuthorityRewrite`.
//!
//! Needs a Python with tests/python/requirements.txt installed, named by WRIT_PYTHON;
//! without it the tests print a line saying so and pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use writ::h2_authority::{AuthorityRewrite, Stats};
use writ::proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use writ::proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/grpc_authority_check.py"
);

type Once<T> = tokio_stream::Once<Result<T, Status>>;

/// Answers FetchX509Bundles with one fixed message, and only to callers whose
/// SO_PEERCRED arrived (so a lost `Connected` shows) and who sent the Workload API header.
struct Fixed {
    bundles: X509BundlesResponse,
    uid: u32,
    served: Arc<AtomicU64>,
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not in this test"))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Fixed {
    type FetchX509SVIDStream = Once<X509svidResponse>;
    type FetchX509BundlesStream = Once<X509BundlesResponse>;
    type FetchJWTBundlesStream = Once<JwtBundlesResponse>;
    type FetchWITSVIDStream = Once<WitsvidResponse>;
    type FetchWITBundlesStream = Once<WitBundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| Status::permission_denied("no peer credentials"))?;
        if cred.uid() != self.uid {
            return Err(Status::permission_denied("unexpected uid"));
        }
        if request
            .metadata()
            .get("workload.spiffe.io")
            .map(|v| v.as_bytes())
            != Some(b"true")
        {
            return Err(Status::invalid_argument("missing workload.spiffe.io"));
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(tokio_stream::once(Ok(self.bundles.clone()))))
    }

    async fn fetch_x509svid(
        &self,
        _: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        unimplemented()
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        unimplemented()
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        unimplemented()
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        unimplemented()
    }

    async fn fetch_witsvid(
        &self,
        _: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        unimplemented()
    }

    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        unimplemented()
    }
}

struct TestServer {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    bundles: X509BundlesResponse,
    stats: Arc<Stats>,
    connections: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

fn ca_bundle() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().der().to_vec()
}

impl TestServer {
    /// Serves on `<tempdir>/run/writ/workload.sock` (a path with `/` for grpcio to
    /// percent-encode), wrapping accepted streams in `AuthorityRewrite` if `adapter`.
    async fn start(adapter: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run/writ");
        std::fs::create_dir_all(&run).unwrap();
        let socket = run.join("workload.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let uid = std::fs::metadata(&socket).unwrap().uid();

        let bundles = X509BundlesResponse {
            crl: Vec::new(),
            bundles: [("spiffe://example.org".to_string(), ca_bundle())].into(),
        };
        let served = Arc::new(AtomicU64::new(0));
        let service = SpiffeWorkloadApiServer::new(Fixed {
            bundles: bundles.clone(),
            uid,
            served: served.clone(),
        });
        let stats = Arc::new(Stats::default());
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let incoming = UnixListenerStream::new(listener).map(move |conn| {
            counter.fetch_add(1, Ordering::Relaxed);
            conn
        });
        let (tx, rx) = oneshot::channel::<()>();
        let router = Server::builder().add_service(service);
        let task = if adapter {
            let stats = stats.clone();
            let incoming = incoming
                .map(move |conn| conn.map(|s| AuthorityRewrite::with_stats(s, stats.clone())));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }))
        } else {
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            }))
        };
        Self {
            _dir: dir,
            socket,
            bundles,
            stats,
            connections,
            served,
            shutdown: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("WRIT_PYTHON").map(PathBuf::from);
    if python.is_none() {
        eprintln!(
            "skipped: set WRIT_PYTHON to a Python with tests/python/requirements.txt installed"
        );
    }
    python
}

async fn run_script(python: &Path, server: &TestServer, args: &[&str]) -> (Output, String) {
    let expected = server.bundles.encode_to_vec();
    let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    let mut command = std::process::Command::new(python);
    command
        .arg(SCRIPT)
        .arg(&server.socket)
        .arg(hex)
        .args(args)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", server.socket.display()),
        );
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("python did not finish")
    .unwrap()
    .expect("running WRIT_PYTHON");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcio_and_py_spiffe_work_through_the_adapter() {
    let Some(python) = python() else { return };
    let server = TestServer::start(true).await;
    let (output, text) = run_script(
        &python,
        &server,
        &["--calls", "400", "--concurrent", "300", "--spiffe", "60"],
    )
    .await;
    println!("{text}");
    assert!(output.status.success(), "python clients failed:\n{text}");

    assert_eq!(server.served.load(Ordering::Relaxed), 400 + 300 + 60);
    let connections = server.connections.load(Ordering::Relaxed);
    let rewrites = server.stats.rewrites();
    println!("connections {connections}, rewrites {rewrites}");
    assert_eq!(server.stats.fallbacks(), 0);
    // One literal per connection at least; more means grpcio re-sent it after its table
    // entry neared eviction, and the adapter kept up.
    assert!(
        rewrites > connections,
        "grpcio never re-sent the :authority literal ({rewrites} rewrites, {connections} connections)"
    );
    server.stop().await;
}

/// The same clients fail against stock tonic: proof the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpcio_and_py_spiffe_fail_without_the_adapter() {
    let Some(python) = python() else { return };
    let server = TestServer::start(false).await;
    let (output, text) = run_script(&python, &server, &["--calls", "1", "--spiffe", "1"]).await;
    println!("{text}");
    assert!(!output.status.success(), "expected failure:\n{text}");
    assert!(text.contains("FAIL grpcio StatusCode."), "{text}");
    assert!(text.contains("FAIL spiffe"), "{text}");
    assert_eq!(server.served.load(Ordering::Relaxed), 0);
    server.stop().await;
}
