//! Connecting to the admin API over its Unix socket.

use crate::proto::admin::admin_client::AdminClient;
use anyhow::Context;
use hyper_util::rt::TokioIo;
use std::path::Path;
use tonic::transport::{Channel, Endpoint, Uri};

/// A client for the admin API at `socket`.
pub async fn connect(socket: &Path) -> anyhow::Result<AdminClient<Channel>> {
    if !socket.exists() {
        anyhow::bail!(
            "no admin socket at {} (is `writ dev` running? set --admin-socket or WRIT_ADMIN_SOCKET)",
            socket.display()
        );
    }
    let path = socket.to_path_buf();
    // The URI is a placeholder: the connector below ignores it and dials the socket.
    let channel = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok(AdminClient::new(channel))
}

/// Turns a gRPC status into a one-line error.
pub fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}
