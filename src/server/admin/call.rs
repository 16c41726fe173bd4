//! What every admin handler shares: [`AdminService::call`], the authorize → run off the
//! async workers → log → map sequence, and the checks of arguments made before anything
//! is looked up or echoed.

use super::AdminService;
use super::auth::Caller;
use crate::policy::roles::Operation;
use crate::policy::{MAX_ITEMS, PolicyError, check_name};
use crate::server::{Issuer, status};
use std::sync::Arc;
use tonic::{Request, Status};

impl AdminService {
    /// One admin call. The caller must hold `operation` (refusals are logged); then `run`
    /// gets the issuer, the caller and the request's body on a blocking thread (it may
    /// fsync), where `?` maps every error through [`crate::server::status`]; `done` logs
    /// what it did. Returns what `run` returned.
    pub(super) async fn call<B, T>(
        &self,
        request: Request<B>,
        operation: Operation,
        run: impl FnOnce(&Issuer, &Caller, B) -> Result<T, Status> + Send + 'static,
        done: impl FnOnce(&Caller, &T),
    ) -> Result<T, Status>
    where
        B: Send + 'static,
        T: Send + 'static,
    {
        let caller = self.caller(&request, operation)?;
        let body = request.into_inner();
        let issuer = Arc::clone(&self.issuer);
        // The blocking thread logs in the call's span too.
        let span = tracing::Span::current();
        let (caller, out) = tokio::task::spawn_blocking(move || {
            let _in_call = span.enter();
            run(&issuer, &caller, body).map(|out| (caller, out))
        })
        .await
        .map_err(status::internal)??;
        done(&caller, &out);
        Ok(out)
    }
}

/// A name of `what` given in a request, checked before it is looked up or echoed.
pub(super) fn name_arg(what: &str, name: &str) -> Result<(), Status> {
    Ok(check_name(what, name)?)
}

/// Refuses oversized lists before parsing their items.
pub(super) fn bounded(what: &'static str, items: &[String]) -> Result<(), Status> {
    if items.len() > MAX_ITEMS {
        return Err(PolicyError::TooMany(what).into());
    }
    Ok(())
}
