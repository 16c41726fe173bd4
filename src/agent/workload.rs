//! The SPIFFE Workload API (SPIFFE_Workload_API.md, SPIFFE_Workload_Endpoint.md).
//!
//! Every call must carry `workload.spiffe.io: true` (else InvalidArgument). The caller is
//! identified out of band from the socket's kernel credentials, never from anything it
//! sends. A caller with no identity gets PermissionDenied with "no identity issued" (the
//! phrase clients retry on). Streams send their first message at once and a full-state
//! message on every change; when the last identity goes, the stream ends with
//! PermissionDenied, as the spec asks.

use super::Agent;
use super::attest::{self, ConnectedPeer};
use super::reported::{WorkloadDigest, report_selectors};
use crate::metrics::AttestationKind;
use crate::node_api::NodeError;
use crate::policy::{Entitlement, Selector, entitlements, visible_trust_domains};
use crate::proto::workload::{self as pb, spiffe_workload_api_server::SpiffeWorkloadApi};
use spiffe::SpiffeId;
use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The phrase SPIFFE clients look for before retrying.
pub const NO_IDENTITY: &str = "no identity issued";

/// How open streams end when the agent stops.
pub const SHUTTING_DOWN: &str = "writ agent is shutting down; reconnect";

/// The Workload API service.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    agent: Arc<Agent>,
    shared: Arc<SharedStates>,
}

/// What one caller's X.509 state was computed from: the policy and bundles (by identity:
/// each change is a new `Arc`), the SVID cache's generation, and the second.
struct StateAt {
    policy: Arc<crate::policy::PolicySnapshot>,
    bundles: Arc<crate::ca::BundleSet>,
    svids: u64,
    now: i64,
}

impl StateAt {
    fn same(&self, other: &StateAt) -> bool {
        Arc::ptr_eq(&self.policy, &other.policy)
            && Arc::ptr_eq(&self.bundles, &other.bundles)
            && self.svids == other.svids
            && self.now == other.now
    }
}

/// A computed state, and the identities it serves (reported by each call that serves them).
type SharedState =
    Arc<tokio::sync::OnceCell<Result<(pb::X509svidResponse, Vec<SpiffeId>), Status>>>;

/// The callers a shared state is for: those attested with exactly these selectors.
type Callers = Arc<BTreeSet<Selector>>;

/// X.509 states computed once per set of selectors and [`StateAt`]: when a change wakes
/// every stream, the streams of callers with the same selectors (one workload's many
/// streams, or many replicas of one workload) share one computation instead of each
/// making its own.
#[derive(Default)]
struct SharedStates {
    entries: std::sync::Mutex<HashMap<Callers, (StateAt, SharedState)>>,
}

impl std::fmt::Debug for SharedStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStates").finish_non_exhaustive()
    }
}

/// More distinct callers than this with streams open and the shared states start over
/// (a bound on memory, not a limit on callers).
const MAX_SHARED_STATES: usize = 4096;

/// The span of one call on the agent's socket, whichever of its services it is for
/// (give it to the server's `trace_fn`): the method and the caller's kernel credentials
/// (pid, uid); the Workload API records the SPIFFE IDs the caller holds (`spiffe_ids`,
/// or `none`) once it is attested.
pub(crate) fn call_span(request: &http::Request<()>) -> tracing::Span {
    let peer = request.extensions().get::<Arc<ConnectedPeer>>();
    tracing::info_span!(
        "workload_api",
        method = %request.uri().path(),
        pid = peer.map(|p| p.cred.pid),
        uid = peer.map(|p| p.cred.uid),
        spiffe_ids = tracing::field::Empty,
    )
}

impl WorkloadApi {
    /// A service for `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        WorkloadApi {
            agent,
            shared: Arc::default(),
        }
    }

    /// [`WorkloadApi::x509_state`], computed once for every caller with these selectors
    /// at this state of policy, bundles and SVIDs (see [`SharedStates`]).
    async fn shared_x509_state(
        &self,
        selectors: &Arc<BTreeSet<Selector>>,
    ) -> Result<pb::X509svidResponse, Status> {
        let at = StateAt {
            policy: self.agent.node.policy().borrow().clone(),
            bundles: self.agent.node.bundles().borrow().clone(),
            svids: self.agent.cache.generation(),
            now: self.agent.clock.unix(),
        };
        let cell = {
            let mut entries = self
                .shared
                .entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match entries.get(selectors) {
                Some((seen, cell)) if seen.same(&at) => Arc::clone(cell),
                _ => {
                    if entries.len() >= MAX_SHARED_STATES {
                        entries.clear();
                    }
                    let cell = SharedState::default();
                    entries.insert(Arc::clone(selectors), (at, Arc::clone(&cell)));
                    cell
                }
            }
        };
        let (response, served) = cell
            .get_or_init(|| self.x509_state(selectors))
            .await
            .clone()?;
        // Every answer reports what it serves (the report itself is deduplicated): a
        // shared computation must not skip a caller's report.
        report_served(&self.agent, selectors, &served);
        Ok(response)
    }

    /// Checks the security header and attests the caller; the call's span then names
    /// the identities it holds.
    async fn caller<T>(&self, request: &Request<T>) -> Result<BTreeSet<Selector>, Status> {
        let selectors = attest_caller(&self.agent, request).await?;
        let span = tracing::Span::current();
        if !span.is_disabled() {
            let held: Vec<String> = self
                .entitlements(&selectors)
                .iter()
                .map(|e| e.spiffe_id.to_string())
                .collect();
            let held = if held.is_empty() {
                "none".to_owned()
            } else {
                held.join(",")
            };
            span.record("spiffe_ids", held.as_str());
            tracing::debug!("workload API call");
        }
        Ok(selectors)
    }

    fn entitlements(&self, selectors: &BTreeSet<Selector>) -> Vec<Entitlement> {
        let policy = self.agent.node.policy().borrow().clone();
        entitlements(&policy, self.agent.node.base(), selectors)
    }

    /// The full X.509 state for a caller right now.
    async fn x509_state(
        &self,
        selectors: &BTreeSet<Selector>,
    ) -> Result<(pb::X509svidResponse, Vec<SpiffeId>), Status> {
        let wanted = self.entitlements(selectors);
        if wanted.is_empty() {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        let bundles = self.agent.node.bundles().borrow().clone();
        let mut svids = Vec::with_capacity(wanted.len());
        let mut unavailable = None;
        let mut own_domains = BTreeSet::new();
        let mut served = Vec::with_capacity(wanted.len());
        let results = self.agent.cache.get_all(&wanted).await;
        for (entitlement, result) in wanted.iter().zip(results) {
            match result {
                Ok(svid) => {
                    let Some(bundle) = bundles.by_name(entitlement.spiffe_id.trust_domain_name())
                    else {
                        continue;
                    };
                    own_domains.insert(bundle.trust_domain_id.clone());
                    served.push(&entitlement.spiffe_id);
                    svids.push(pb::X509svid {
                        spiffe_id: svid.spiffe_id.clone(),
                        // The leaf, then its intermediates (Workload API: x509_svid).
                        x509_svid: [svid.cert_der.as_slice()]
                            .into_iter()
                            .chain(svid.chain.iter().map(Vec::as_slice))
                            .collect::<Vec<_>>()
                            .concat(),
                        x509_svid_key: svid.key_pkcs8.to_vec(),
                        bundle: bundle.x509_der.clone(),
                        hint: entitlement.hint.clone(),
                    });
                }
                Err(NodeError::NotEntitled(_)) => {}
                Err(e) => unavailable = Some(e),
            }
        }
        if svids.is_empty() {
            return Err(match unavailable {
                Some(e) => Status::unavailable(e.to_string()),
                None => Status::permission_denied(NO_IDENTITY),
            });
        }
        // Reported by every answer, streamed ones included (by the caller): an incident
        // opened while a stream is open serves its workload a new identity.
        let served: Vec<SpiffeId> = served.into_iter().cloned().collect();
        let visible = self.visible(selectors);
        let federated_bundles = bundles
            .bundles
            .iter()
            .filter(|b| visible.contains(&b.trust_domain))
            .filter(|b| !own_domains.contains(&b.trust_domain_id))
            .map(|b| (b.trust_domain_id.clone(), b.x509_der.clone()))
            .collect();
        Ok((
            pb::X509svidResponse {
                svids,
                crl: Vec::new(),
                federated_bundles,
            },
            served,
        ))
    }

    /// The trust domains this caller sees the bundles of: its own tenants' and the
    /// deployment's ([`visible_trust_domains`]).
    fn visible(&self, selectors: &BTreeSet<Selector>) -> BTreeSet<String> {
        let policy = self.agent.node.policy().borrow().clone();
        visible_trust_domains(&policy, self.agent.node.base(), selectors)
    }

    fn x509_bundles(&self, selectors: &BTreeSet<Selector>) -> pb::X509BundlesResponse {
        let bundles = self.agent.node.bundles().borrow().clone();
        let visible = self.visible(selectors);
        pb::X509BundlesResponse {
            crl: Vec::new(),
            bundles: bundles
                .bundles
                .iter()
                .filter(|b| visible.contains(&b.trust_domain))
                .map(|b| (b.trust_domain_id.clone(), b.x509_der.clone()))
                .collect(),
        }
    }

    fn jwt_bundles(&self, selectors: &BTreeSet<Selector>) -> pb::JwtBundlesResponse {
        let bundles = self.agent.node.bundles().borrow().clone();
        let visible = self.visible(selectors);
        pb::JwtBundlesResponse {
            bundles: bundles
                .bundles
                .iter()
                .filter(|b| visible.contains(&b.trust_domain))
                .map(|b| (b.trust_domain_id.clone(), b.jwt_jwks.clone()))
                .collect(),
        }
    }
}

/// Checks the security header and attests the caller from the socket's kernel
/// credentials: the only way writ's agent-side APIs learn who is calling.
pub(crate) async fn attest_caller<T>(
    agent: &Arc<Agent>,
    request: &Request<T>,
) -> Result<BTreeSet<Selector>, Status> {
    match request.metadata().get("workload.spiffe.io") {
        Some(v) if v.as_bytes() == b"true" => {}
        _ => {
            return Err(Status::invalid_argument(
                "security header missing from request",
            ));
        }
    }
    let peer = request
        .extensions()
        .get::<Arc<ConnectedPeer>>()
        .cloned()
        .ok_or_else(|| Status::permission_denied("caller credentials unavailable"))?;
    // Hash the executable only when some profile selects by digest.
    let with_digest = agent.node.policy().borrow().selects_by_digest();
    let attesting = Arc::clone(agent);
    let refused = |kind: AttestationKind, e: &dyn std::fmt::Display| {
        agent.metrics.attestation_failed(kind);
        if let Some(suppressed) = agent.attest_failures.allow() {
            tracing::debug!(error = %e, suppressed, "attestation failed");
        }
        Status::permission_denied(format!("{NO_IDENTITY}: {e}"))
    };
    let unix = |e: attest::AttestError| (AttestationKind::Unix, e.to_string());
    let (mut selectors, pod) = tokio::task::spawn_blocking(move || {
        let selectors = attesting
            .attestor
            .attest(&peer, with_digest)
            .map_err(unix)?;
        let Some(k8s) = &attesting.k8s else {
            return Ok((selectors, None));
        };
        let pod = k8s
            .caller_pod(peer.cred.pid)
            .map_err(|e| (AttestationKind::K8s, e.to_string()))?;
        // The cgroup read must be the accepted process's, not a successor's on its pid.
        attesting.attestor.still_same(&peer).map_err(unix)?;
        Ok::<_, (AttestationKind, String)>((selectors, pod))
    })
    .await
    .map_err(|_| Status::unavailable("attestation failed"))?
    .map_err(|(kind, e)| refused(kind, &e))?;
    if let (Some(k8s), Some(pod)) = (&agent.k8s, pod) {
        selectors.extend(
            k8s.selectors(&pod)
                .await
                .map_err(|e| refused(AttestationKind::K8s, &e))?,
        );
    }
    Ok(selectors)
}

/// Records in the audit log, once per agent process, that the workload attested as
/// `selectors` was served each identity in `served` (docs/architecture.md, "Audit":
/// attestation records).
///
/// Never delays the answer: each report runs on its own task. A report that fails is
/// forgotten, so the next call serving the pair tries again; one the server refuses as
/// malformed is not retried (it would be refused again on every call).
fn report_served<'a>(
    agent: &Arc<Agent>,
    selectors: &BTreeSet<Selector>,
    served: impl IntoIterator<Item = &'a SpiffeId>,
) {
    let digest = WorkloadDigest::new(selectors);
    let mut wire: Option<Arc<Vec<String>>> = None;
    for spiffe_id in served {
        let key = digest.key(spiffe_id);
        if !agent.reported.claim(key) {
            continue;
        }
        let wire = Arc::clone(wire.get_or_insert_with(|| {
            let policy = agent.node.policy().borrow().clone();
            let named: BTreeSet<&Selector> = policy
                .profiles
                .values()
                .filter(|p| p.matches(selectors))
                .flat_map(|p| p.selectors.iter())
                .collect();
            Arc::new(report_selectors(selectors, |s| named.contains(s)))
        }));
        let node = Arc::clone(&agent.node);
        let reported = Arc::clone(&agent.reported);
        let spiffe_id = spiffe_id.clone();
        tokio::spawn(async move {
            let keep = match node.record_attestation(&spiffe_id, &wire).await {
                Ok(index) => {
                    tracing::debug!(%spiffe_id, index, "workload attestation recorded");
                    true
                }
                Err(NodeError::Invalid(e)) => {
                    tracing::warn!(%spiffe_id, error = %e, "workload attestation refused by the server; not retried");
                    true
                }
                Err(e) => {
                    tracing::warn!(%spiffe_id, error = %e, "recording a workload attestation failed; will retry on its next call");
                    false
                }
            };
            reported.finish(key, keep);
        });
    }
}

/// Runs `state` now and after every change of policy, bundles or SVIDs, sending each
/// distinct result; ends after sending an error, or when the client goes away.
fn follow<T, F, Fut>(agent: Arc<Agent>, state: F) -> ResponseStream<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, Status>> + Send,
{
    let (tx, rx) = mpsc::channel(2);
    let mut policy = agent.node.policy();
    let mut bundles = agent.node.bundles();
    let mut svids = agent.cache.subscribe();
    let mut stopping = agent.stopping.subscribe();
    agent.streams.send_modify(|n| *n += 1);
    // The stream's updates are the call's: in its span.
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            policy.mark_unchanged();
            bundles.mark_unchanged();
            svids.mark_unchanged();
            let mut last: Option<T> = None;
            // The revocation propagation histogram (agent::propagation): the change this
            // stream follows, and when a revoking one it has not answered was first seen.
            // Checked on every wake, whichever watch woke it: the stream answers from the
            // newest policy whether or not its own policy watch fired first.
            let mut followed = super::propagation::STARTING;
            let mut revoked: Option<tokio::time::Instant> = None;
            loop {
                let current = policy.borrow_and_update().clone();
                let (number, since) = agent.changes.woke(&current, followed);
                followed = number;
                revoked = revoked.or(since);
                drop(current);
                match state().await {
                    Ok(message) => {
                        if last.as_ref() != Some(&message) {
                            // Observed as the update is handed to the stream, so that a
                            // client that has it finds it counted.
                            if let Some(seen) = revoked {
                                agent.metrics.revocation_propagated(seen.elapsed());
                            }
                            if tx.send(Ok(message.clone())).await.is_err() {
                                break;
                            }
                            last = Some(message);
                        }
                        revoked = None;
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
                tokio::select! {
                    r = policy.changed() => if r.is_err() { break },
                    r = bundles.changed() => if r.is_err() { break },
                    r = svids.changed() => if r.is_err() { break },
                    () = tx.closed() => break,
                    _ = async { stopping.wait_for(|s| *s).await.is_ok() } => {
                        // Unavailable: the status SPIFFE clients reconnect on.
                        let _ = tx.send(Err(Status::unavailable(SHUTTING_DOWN))).await;
                        break;
                    }
                }
            }
            agent.streams.send_modify(|n| *n = n.saturating_sub(1));
        },
        span,
    ));
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<pb::JwtBundlesResponse>;
    type FetchWITSVIDStream = ResponseStream<pb::WitsvidResponse>;
    type FetchWITBundlesStream = ResponseStream<pb::WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = Arc::new(self.caller(&request).await?);
        // The first answer decides the status: no identity is an error, not a stream.
        self.shared_x509_state(&selectors).await?;
        let this = self.clone();
        Ok(Response::new(follow(Arc::clone(&self.agent), move || {
            let this = this.clone();
            let selectors = Arc::clone(&selectors);
            async move { this.shared_x509_state(&selectors).await }
        })))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        // Bundles are public: any attested caller (a verifier holds no identity) gets those
        // of its own tenants and the deployment's.
        let selectors = self.caller(&request).await?;
        let this = self.clone();
        Ok(Response::new(follow(Arc::clone(&self.agent), move || {
            let message = this.x509_bundles(&selectors);
            async move { Ok(message) }
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let selectors = self.caller(&request).await?;
        let body = request.into_inner();
        if body.audience.is_empty() || body.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let mut wanted = self.entitlements(&selectors);
        if !body.spiffe_id.is_empty() {
            wanted.retain(|e| e.spiffe_id.to_string() == body.spiffe_id);
        }
        if wanted.is_empty() {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        let mut svids = Vec::with_capacity(wanted.len());
        let mut served = Vec::with_capacity(wanted.len());
        for entitlement in wanted {
            match self
                .agent
                .node
                .sign_jwt(&entitlement.spiffe_id, body.audience.clone())
                .await
            {
                Ok(token) => {
                    svids.push(pb::Jwtsvid {
                        spiffe_id: entitlement.spiffe_id.to_string(),
                        svid: token,
                        hint: entitlement.hint,
                    });
                    served.push(entitlement.spiffe_id);
                }
                Err(NodeError::NotEntitled(_)) => {}
                Err(NodeError::Invalid(e)) => return Err(Status::invalid_argument(e)),
                Err(e) => return Err(Status::unavailable(e.to_string())),
            }
        }
        if svids.is_empty() {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        report_served(&self.agent, &selectors, served.iter());
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.caller(&request).await?;
        let this = self.clone();
        Ok(Response::new(follow(Arc::clone(&self.agent), move || {
            let message = this.jwt_bundles(&selectors);
            async move { Ok(message) }
        })))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let selectors = self.caller(&request).await?;
        let body = request.into_inner();
        if body.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if body.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let bundles = self.agent.node.bundles().borrow().clone();
        let now = self.agent.clock.unix();
        // Only keys of trust domains this caller sees: a workload of one tenant never has
        // another tenant's token validated.
        let visible = self.visible(&selectors);
        let validated =
            writ_verifier::validate_jwt_svid(&body.svid, &body.audience, now, |td, kid| {
                bundles
                    .by_name(td)
                    .filter(|b| visible.contains(&b.trust_domain))
                    .and_then(|b| b.jwt_keys.get(kid))
                    .map(Vec::as_slice)
            })
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A signature that verifies is not enough: writ-verifier's own decision, against
        // the set this agent's revocation feed publishes, refuses a token of a closed
        // incident or an ended grant for the rest of its lifetime.
        // A JWT-SVID has no serial, so serial entries never name one.
        use writ_verifier::{DenyReason, JwtRefused};
        let policy = self.agent.node.policy().borrow().clone();
        let base = crate::policy::tenant_of_trust_domain(
            &policy,
            self.agent.node.base(),
            validated.spiffe_id.trust_domain_name(),
        )
        .map_or_else(|| self.agent.node.base().clone(), |(_, base)| base);
        let authorizer = writ_verifier::Authorizer::new(&base, writ_verifier::Band::ALL);
        let revocations = super::revocation::verifier_snapshot(&self.agent, now);
        writ_verifier::authorize_validated_jwt(&validated, &authorizer, &revocations, now)
            .map_err(|refused| match refused {
                JwtRefused::Denied(
                    DenyReason::Revoked(_) | DenyReason::RevocationsUnavailable(_),
                ) => Status::permission_denied(refused.to_string()),
                other => Status::invalid_argument(other.to_string()),
            })?;
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(to_struct(validated.claims)),
        }))
    }

    async fn fetch_witsvid(
        &self,
        _request: Request<pb::WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("the WIT-SVID profile is not served"))
    }

    async fn fetch_wit_bundles(
        &self,
        _request: Request<pb::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("the WIT-SVID profile is not served"))
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, to_value(v)))
            .collect::<HashMap<_, _>>()
            .into_iter()
            .collect(),
    }
}

fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
