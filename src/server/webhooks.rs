//! The incident sources' listener (docs/incident-sources.md): HTTPS (HTTP only on
//! loopback, behind a TLS proxy), one path per `[[incident_source]]`, each delivery's
//! signature checked before its body is read as anything but bytes.
//!
//! What a delivery gets back:
//! * 404 for a path no source posts to, 405 for a method other than POST;
//! * 413 for a body over [`MAX_BODY_BYTES`], refused before it is read whole;
//! * 401 with an empty body for a missing, wrong or stale signature: the sender learns
//!   nothing about why (the log and the audit log do);
//! * 400 for a signed body writ cannot read, saying what is wrong with it;
//! * 200 with `{"decision": …, "incident": …}` for every delivery handled, refused ones
//!   included (an unmapped service is the configuration's to fix: a retry cannot help, and
//!   PagerDuty turns off a subscription that keeps failing);
//! * 429 over the tenant's limits and 503 when writ cannot record the delivery: the source
//!   retries, and since nothing was kept the retry is decided afresh.
//!
//! A close answers once the incident's identities are revoked, as `writ incident close`
//! does.
//!
//! Must never: act on a delivery whose signature or timestamp failed, let an
//! unauthenticated sender fill the audit log or the server log (both are throttled per
//! source), or hold a connection open for a slow sender.

use super::Issuer;
use crate::audit::{Kind, Record};
use crate::metrics::DeliveryOutcome;
use crate::server::registry::{RegistryError, decision_text};
use crate::sources::config::Source;
use crate::sources::signature::{
    PAGERDUTY_SIGNATURE_HEADER, WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER, verify_pagerduty, verify_standard,
};
use crate::sources::{
    MAX_BODY_BYTES, ParseError, SourceEvent, SourceKind, generic, incident_io, pagerduty,
};
use crate::throttle::Throttle;
use anyhow::Context;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The most connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a sender has to finish its TLS handshake, its headers, or its body.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one audit record per source per this long for deliveries that failed
/// authentication; the ones held back are counted in the next.
const UNAUTHENTICATED_AUDIT_EVERY: Duration = Duration::from_secs(1);
/// At most one log line per source per this long for refused deliveries.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// The configured sources and what serving them needs.
pub struct Webhooks {
    issuer: Arc<Issuer>,
    sources: Vec<Served>,
}

struct Served {
    source: Arc<Source>,
    unauthenticated_audit: Throttle,
    refused_log: Throttle,
}

impl Webhooks {
    /// The listener's state for `sources` (already checked and their secrets read).
    pub fn new(issuer: Arc<Issuer>, sources: &[Arc<Source>]) -> Arc<Webhooks> {
        for source in sources {
            issuer.metrics.webhook_source(source.kind.as_str());
        }
        let sources = sources
            .iter()
            .map(|source| Served {
                source: Arc::clone(source),
                unauthenticated_audit: Throttle::new(UNAUTHENTICATED_AUDIT_EVERY),
                refused_log: Throttle::new(REFUSED_LOG_EVERY),
            })
            .collect();
        Arc::new(Webhooks { issuer, sources })
    }

    fn served(&self, path: &str) -> Option<&Served> {
        self.sources.iter().find(|s| s.source.path == path)
    }
}

/// The TLS configuration of the listener: `cert` (a PEM chain, leaf first) and `key`.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let chain = crate::agent::remote::read_pem_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the webhook TLS key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("webhook_tls_cert and webhook_tls_key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `hooks` on `listener` until `shutdown`, over TLS when `tls` is set.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    hooks: Arc<Webhooks>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let accept_errors = Throttle::new(REFUSED_LOG_EVERY);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            permit = Arc::clone(&slots).acquire_owned() => permit.context("connection slots closed")?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if accept_errors.allow().is_some() {
                        tracing::warn!(error = %e, "webhook listener: accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let hooks = Arc::clone(&hooks);
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(tls) => match tokio::time::timeout(CLIENT_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => connection(stream, peer, hooks).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "webhook TLS handshake timed out"),
                },
                None => connection(stream, peer, hooks).await,
            }
        });
    }
}

/// One connection: HTTP/1.1, headers within [`CLIENT_TIMEOUT`].
async fn connection<S>(stream: S, peer: SocketAddr, hooks: Arc<Webhooks>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let hooks = Arc::clone(&hooks);
        async move { Ok::<_, Infallible>(handle(&hooks, request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: serde_json::Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Reply {
    reply(status, serde_json::json!({ "error": message }))
}

/// One request, start to answer, counted by its source's kind and its outcome.
async fn handle(hooks: &Webhooks, request: Request<Incoming>) -> Reply {
    let Some(served) = hooks.served(request.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "no incident source posts here");
    };
    let reply = deliver(hooks, served, request).await;
    hooks
        .issuer
        .metrics
        .webhook_delivery(served.source.kind.as_str(), outcome(reply.status()));
    reply
}

/// What the answer's status says became of the delivery (the module's doc lists them).
fn outcome(status: StatusCode) -> DeliveryOutcome {
    match status {
        StatusCode::OK => DeliveryOutcome::Handled,
        StatusCode::UNAUTHORIZED => DeliveryOutcome::Unauthenticated,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => DeliveryOutcome::Malformed,
        StatusCode::TOO_MANY_REQUESTS => DeliveryOutcome::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => DeliveryOutcome::Failed,
        _ => DeliveryOutcome::Refused,
    }
}

/// A request to `served`'s path.
async fn deliver(hooks: &Webhooks, served: &Served, request: Request<Incoming>) -> Reply {
    if request.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    let body =
        match tokio::time::timeout(CLIENT_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
            .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "the body could not be read"),
            Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "the body took too long"),
        };
    let source = &served.source;
    let now = hooks.issuer.registry.now();
    if let Err(why) = authenticate(source, &parts.headers, &body, now) {
        unauthenticated(hooks, served, &why);
        // Nothing about why: a prober learns nothing from the answer.
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    // PagerDuty signs the body only, so its delivery id is the body's `event.id`: a header
    // a replayer could change must not decide dedupe.
    let delivery_id = match source.kind {
        SourceKind::PagerDuty => "",
        SourceKind::IncidentIo | SourceKind::Generic => {
            header_text(&parts.headers, WEBHOOK_ID_HEADER).unwrap_or_default()
        }
    };
    let event = match parse(source.kind, &body, delivery_id) {
        Ok(event) => event,
        Err(e) => return malformed(hooks, served, &e).await,
    };
    apply(hooks, served, event).await
}

fn too_large() -> Reply {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Checks the delivery's signature (and Standard Webhooks timestamp) against the
/// source's secrets. The error is for the log and the audit log only.
fn authenticate(source: &Source, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), String> {
    let header =
        |name: &'static str| header_text(headers, name).ok_or_else(|| format!("no {name} header"));
    match source.kind {
        SourceKind::PagerDuty => {
            verify_pagerduty(&source.secrets, header(PAGERDUTY_SIGNATURE_HEADER)?, body)
        }
        SourceKind::IncidentIo | SourceKind::Generic => verify_standard(
            &source.secrets,
            header(WEBHOOK_ID_HEADER)?,
            header(WEBHOOK_TIMESTAMP_HEADER)?,
            header(WEBHOOK_SIGNATURE_HEADER)?,
            body,
            now,
            source.tolerance_secs,
        ),
    }
    .map_err(|e| e.to_string())
}

fn parse(kind: SourceKind, body: &[u8], delivery_id: &str) -> Result<SourceEvent, ParseError> {
    match kind {
        SourceKind::PagerDuty => pagerduty::parse(body, delivery_id),
        SourceKind::IncidentIo => incident_io::parse(body, delivery_id),
        SourceKind::Generic => generic::parse(body, delivery_id),
    }
}

/// A delivery that failed authentication: logged and audited, each at most so often per
/// source, with the count held back.
fn unauthenticated(hooks: &Webhooks, served: &Served, why: &str) {
    let source = &served.source;
    if let Some(held_back) = served.refused_log.allow() {
        tracing::warn!(source = %source.name, reason = %why, held_back, "webhook delivery refused: not authenticated");
    }
    let Some(held_back) = served.unauthenticated_audit.allow() else {
        return;
    };
    let record = Record::new(
        hooks.issuer.registry.now(),
        Kind::Refusal,
        "source.unauthenticated",
        source.actor(),
    )
    .tenant(&source.tenant)
    .detail(serde_json::json!({
        "name": source.name,
        "kind": source.kind.as_str(),
        "reason": why,
        "held_back": held_back,
    }));
    // Off the request's path: the answer is 401 whether or not this is recorded.
    let audit = Arc::clone(&hooks.issuer.audit);
    tokio::spawn(async move {
        if let Err(e) = audit.append_async(&record).await {
            tracing::error!(error = %e, "could not audit a refused webhook delivery");
        }
    });
}

/// A signed body writ cannot read: recorded, and the sender told what is wrong.
async fn malformed(hooks: &Webhooks, served: &Served, e: &ParseError) -> Reply {
    let source = &served.source;
    let status = match e {
        ParseError::TooLarge => return too_large(),
        _ => StatusCode::BAD_REQUEST,
    };
    if let Some(held_back) = served.refused_log.allow() {
        tracing::warn!(source = %source.name, error = %e, held_back, "webhook delivery refused: malformed body");
    }
    let record = Record::new(
        hooks.issuer.registry.now(),
        Kind::Refusal,
        "source.malformed",
        source.actor(),
    )
    .tenant(&source.tenant)
    .detail(serde_json::json!({
        "name": source.name,
        "kind": source.kind.as_str(),
        "reason": e.to_string(),
    }));
    if let Err(e) = hooks.issuer.audit.append_async(&record).await {
        tracing::error!(error = %e, "could not audit a malformed webhook delivery");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot record deliveries now",
        );
    }
    error(status, &e.to_string())
}

/// A verified, parsed delivery: decided and applied by the registry, off the async
/// threads (it commits durably).
async fn apply(hooks: &Webhooks, served: &Served, event: SourceEvent) -> Reply {
    let issuer = Arc::clone(&hooks.issuer);
    let source = Arc::clone(&served.source);
    let ceiling = issuer.config.max_incident_lifetime_secs;
    let applied = tokio::task::spawn_blocking(move || {
        issuer.registry.apply_source_event(&source, &event, ceiling)
    })
    .await;
    let source = &served.source;
    match applied {
        Ok(Ok(outcome)) => {
            let text = decision_text(&outcome.decision);
            tracing::info!(source = %source.name, incident = ?outcome.incident, decision = %text, "webhook delivery handled");
            reply(
                StatusCode::OK,
                serde_json::json!({ "decision": text, "incident": outcome.incident }),
            )
        }
        Ok(Err(RegistryError::RateLimited(why))) => {
            error(StatusCode::TOO_MANY_REQUESTS, &why.to_string())
        }
        Ok(Err(e)) => {
            tracing::error!(source = %source.name, error = %e, "webhook delivery not handled");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not handled; see the server log (retry)",
            )
        }
        Err(e) => {
            tracing::error!(source = %source.name, error = %e, "webhook delivery task failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "not handled; retry")
        }
    }
}
