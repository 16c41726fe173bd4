//! The node API in process on a temp socket: a real issuer (store, CAs, audit log) and
//! the production gRPC server built by `writ::server::node::server`, so its bounds are
//! the ones `writ server` serves with. TLS is left out: attestation RPCs are served
//! before any client certificate.

use rustls::pki_types::CertificateDer;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::transport::Channel;
use writ::audit::Record;
use writ::clock::SystemClock;
use writ::config::RawConfig;
use writ::k8s_psat::RawCluster;
use writ::proto::node::node_client::NodeClient;
use writ::server::node::NodeService;
use writ::server::{Issuer, bind_unix};

/// A node API serving until dropped.
pub struct NodeApi {
    /// Its data directory and socket live here.
    pub dir: tempfile::TempDir,
    /// The issuer behind it.
    pub issuer: Arc<Issuer>,
    /// Its socket.
    pub socket: PathBuf,
    stop: watch::Sender<bool>,
}

impl Drop for NodeApi {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl NodeApi {
    /// Starts a node API in `dir` whose x509pop trusts `x509pop_roots` and whose
    /// `[[k8s_psat]]` blocks are `k8s_psat`.
    pub async fn start(
        dir: tempfile::TempDir,
        x509pop_roots: Vec<CertificateDer<'static>>,
        k8s_psat: Vec<RawCluster>,
    ) -> NodeApi {
        let config = RawConfig {
            data_dir: Some(dir.path().join("data")),
            k8s_psat,
            ..RawConfig::default()
        }
        .resolve()
        .unwrap();
        let issuer = Issuer::open(config, Arc::new(SystemClock)).unwrap();
        let socket = dir.path().join("node.sock");
        let listener = bind_unix(&socket, 0o600).await.unwrap();
        let service = NodeService::new(Arc::clone(&issuer), x509pop_roots);
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(writ::server::node::server(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                ),
        );
        NodeApi {
            dir,
            issuer,
            socket,
            stop,
        }
    }

    /// A client on its own connection. It may send more than the server takes: the
    /// bounds under test are the server's.
    pub async fn client(&self) -> NodeClient<Channel> {
        NodeClient::new(writ::uds::channel(&self.socket).await.unwrap())
            .max_encoding_message_size(usize::MAX)
    }

    /// Every audit record, decoded.
    pub fn records(&self) -> Vec<Record> {
        self.issuer
            .audit
            .read(0, 100_000)
            .unwrap()
            .into_iter()
            .map(|(_, bytes)| Record::decode(&bytes).unwrap())
            .collect()
    }
}
