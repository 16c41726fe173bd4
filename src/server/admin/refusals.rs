//! Every refused admin call is audited (docs/architecture.md, "Audit"; "each a clear error, nothing
//! changed, a refusal record"): a thin tower service around the generated admin server
//! that looks at each response's gRPC status and, for a caller's mistake or a missing
//! right, appends a refusal record before the caller hears the answer. The record is the
//! tenant's the call named when the caller holds a role there, else the default
//! tenant's: a name the caller made up never becomes a tenant's record.
//!
//! Every admin call passes here, so here it gets its span (`admin`: the method, the peer
//! as the transport knows it, and the operator's name, uid and tenant once
//! `AdminService::caller` knows them), and its debug line.

use crate::audit::{AuditLog, Kind, Record};
use crate::clock::SharedClock;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::server::NamedService;
use tonic::transport::server::UdsConnectInfo;

/// Which tenant a refused call's record belongs to, from what the transport knows of the
/// call (its `writ-tenant` header and the caller's credentials).
pub type TenantOf = Arc<dyn Fn(&tonic::Request<()>) -> String + Send + Sync>;

/// Wraps a gRPC service so that its refusals are audited.
#[derive(Clone)]
pub struct AuditRefusals<S> {
    inner: S,
    log: Arc<AuditLog>,
    clock: SharedClock,
    tenant_of: TenantOf,
}

impl<S: std::fmt::Debug> std::fmt::Debug for AuditRefusals<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditRefusals")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> AuditRefusals<S> {
    /// Audits `inner`'s refusals in `log`, each in the tenant `tenant_of` says.
    pub fn new(inner: S, log: Arc<AuditLog>, clock: SharedClock, tenant_of: TenantOf) -> Self {
        AuditRefusals {
            inner,
            log,
            clock,
            tenant_of,
        }
    }
}

/// What the tenant of a refusal is decided from: the tenant header and the caller's
/// credentials, copied before the call consumes the request (nothing else of it).
fn caller_parts<B>(request: &http::Request<B>) -> tonic::Request<()> {
    let mut parts = http::Request::new(());
    if let Some(tenant) = request
        .headers()
        .get(super::TENANT_HEADER)
        .filter(|v| v.len() <= 256)
    {
        parts
            .headers_mut()
            .insert(super::TENANT_HEADER, tenant.clone());
    }
    let extensions = request.extensions();
    if let Some(peer) = extensions.get::<crate::server::tls::AdminPeer>() {
        parts.extensions_mut().insert(peer.clone());
    }
    if let Some(info) = extensions.get::<UdsConnectInfo>() {
        parts.extensions_mut().insert(info.clone());
    }
    tonic::Request::from_http(parts)
}

impl<S: NamedService> NamedService for AuditRefusals<S> {
    const NAME: &'static str = S::NAME;
}

/// Whether a gRPC status code is a refusal of the caller (as opposed to success or the
/// server's own failure, which the server log reports).
pub fn is_refusal(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        InvalidArgument
            | NotFound
            | AlreadyExists
            | PermissionDenied
            | ResourceExhausted
            | FailedPrecondition
            | OutOfRange
            | Unauthenticated
    )
}

/// Who called, as far as the transport knows (the handler maps this to an operator).
fn caller(extensions: &http::Extensions) -> String {
    if let Some(peer) = extensions.get::<crate::server::tls::AdminPeer>() {
        return peer
            .operator
            .clone()
            .unwrap_or_else(|| "unauthenticated".into());
    }
    extensions
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| format!("uid:{}", cred.uid()))
        .unwrap_or_else(|| "unknown".into())
}

/// `grpc-message` is percent-encoded.
fn decode_message(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && i + 2 < raw.len()
            && let Some(b) = std::str::from_utf8(&raw[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).chars().take(512).collect()
}

impl<S, B, R> tower::Service<http::Request<B>> for AuditRefusals<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let method = request.uri().path().to_owned();
        let who = caller(request.extensions());
        let parts = caller_parts(&request);
        // `peer` is the transport's word; the handler names the operator.
        let span = tracing::info_span!(
            "admin",
            method = %method,
            peer = %who,
            operator = tracing::field::Empty,
            uid = tracing::field::Empty,
            tenant = tracing::field::Empty,
        );
        let response = span.in_scope(|| self.inner.call(request));
        let log = Arc::clone(&self.log);
        let clock = Arc::clone(&self.clock);
        let tenant_of = Arc::clone(&self.tenant_of);
        Box::pin(
            async move {
                let response = response.await?;
                // Unary refusals are trailers-only responses: the status is in the headers.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32);
                if let Some(code) = code.filter(|c| is_refusal(*c)) {
                    let message = response
                        .headers()
                        .get("grpc-message")
                        .map(|v| decode_message(v.as_bytes()))
                        .unwrap_or_default();
                    let record = Record::new(clock.unix(), Kind::Refusal, "admin.refused", who)
                        .tenant(&tenant_of(&parts))
                        .detail(serde_json::json!({
                            "method": method,
                            "code": format!("{code:?}"),
                            "reason": message,
                        }));
                    tracing::debug!(code = ?code, reason = ?message, "admin call refused");
                    if let Err(e) = log.append_async(&record).await {
                        tracing::error!(error = %e, "auditing a refused admin call failed");
                    }
                } else {
                    // `None`: the status follows the answer, in its trailers.
                    tracing::debug!(status = ?code, "admin call answered");
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_decoded_and_bounded() {
        assert_eq!(decode_message(b"uid%201001%20is%20not"), "uid 1001 is not");
        assert_eq!(decode_message(b"100%"), "100%");
        assert_eq!(decode_message(b"%zz"), "%zz");
        assert_eq!(decode_message(&[b'a'; 2000]).len(), 512);
    }

    #[test]
    fn only_the_callers_mistakes_are_refusals() {
        assert!(is_refusal(tonic::Code::PermissionDenied));
        assert!(is_refusal(tonic::Code::InvalidArgument));
        assert!(!is_refusal(tonic::Code::Ok));
        assert!(!is_refusal(tonic::Code::Internal));
        assert!(!is_refusal(tonic::Code::Unavailable));
    }
}
