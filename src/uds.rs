//! gRPC channels over a Unix socket (the admin socket, the agent's socket).

use hyper_util::rt::TokioIo;
use std::path::Path;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to the gRPC server listening on `socket`. The `http://localhost` URI is a
/// placeholder the connector ignores; it is also what the Rust `spiffe` client sends as
/// `:authority`, which h2 accepts.
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
}
