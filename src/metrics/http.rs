//! The metrics endpoint (docs/metrics.md): `GET /metrics` over plain HTTP/1.1, off unless
//! `metrics_listen` is configured.
//!
//! Plain HTTP, no authentication, like every Prometheus exporter: what it shows (counts,
//! CA expiry times) names no identity, incident or key, but it should still be bound to
//! loopback or a private interface; an unspecified address (`0.0.0.0`, `[::]`) is
//! served, with a warning at start.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] at once, headers within `CLIENT_TIMEOUT` (10 s), no
//! request body ever read; any other path is 404, any other method 405.

use super::Metrics;
use anyhow::Context;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The path scraped.
pub const PATH: &str = "/metrics";
/// The most scrapes served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client has to send its request's headers (and to keep an idle connection).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `address` for [`serve`]; says where, and warns when it is every interface.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics endpoint on {address}"))?;
    let bound = listener.local_addr().unwrap_or(address);
    if address.ip().is_unspecified() {
        tracing::warn!(listen = %bound, "metrics are served over plain HTTP on every interface; bind metrics_listen to loopback or a private interface");
    }
    tracing::info!(listen = %bound, "serving metrics on http://{bound}{PATH}");
    Ok(listener)
}

/// Serves `metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            permit = Arc::clone(&slots).acquire_owned() => permit.context("metrics connection slots closed")?,
        };
        let stream = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, usually: wait, rather than spin.
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(answer(&metrics, &request)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(CLIENT_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// The answer to one request; its body is never read.
fn answer(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match metrics.encode() {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    }
}
