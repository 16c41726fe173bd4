//! The node API (`writ.node.v1`): node attestation (join token, x509pop), node SVID
//! renewal, the policy/bundle sync stream, and signing for agents.
//!
//! Errors are mapped to `tonic::Status` here. A caller without a verified node SVID
//! reaches only the attestation RPCs.

use super::Issuer;
use super::local_node::{activity_refusal, attestation_refusal, issue_refusal, registry_refusal};
use super::tls::NodePeer;
use crate::audit::activity::{Activity, RawActivity};
use crate::audit::{Kind, Record};
use crate::ca::{BundleSet, SubjectKey, SvidRequest, csr};
use crate::hex::sha256 as sha256_hex;
use crate::metrics::AttestationKind;
use crate::node_api::NodeError;
use crate::proto::node::{self as pb, node_server::Node, node_server::NodeServer};
use crate::store::{JoinTokenRecord, TokenUse};
use rustls::pki_types::{CertificateDer, UnixTime};
use spiffe::SpiffeId;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use writ_verifier::Band;

pub use crate::node_api::{MAX_BATCH, X509POP_CONTEXT};
/// Most x509pop challenges outstanding at once.
const MAX_CHALLENGES: usize = 1024;
/// How long an x509pop challenge may be answered.
const CHALLENGE_TTL: i64 = 60;
/// Most certificates in an x509pop chain: the leaf, the six intermediates that are the
/// deepest path webpki will build, and the root some tools append. A longer chain can
/// never verify, so it is refused before anything in it is parsed.
pub const MAX_X509POP_CHAIN: usize = 8;
/// Largest certificate in an x509pop chain. A node certificate with an RSA-4096 key and
/// the usual extensions is about 2 KiB; the same bound as a CSR leaves room.
pub const MAX_X509POP_CERT_LEN: usize = csr::MAX_CSR_LEN;
/// Largest x509pop chain, all certificates together.
pub const MAX_X509POP_CHAIN_LEN: usize = 64 * 1024;
/// Largest message the node API decodes. The largest legitimate ones are a signing batch
/// ([`MAX_BATCH`] CSRs of well under 1 KiB with their IDs) and a grant request (a plan of
/// at most 256 KiB): both fit with room to spare. tonic's own default is 4 MiB; this is
/// set here, not inherited, because attestation is reachable before any authentication.
pub const MAX_MESSAGE_LEN: usize = 1024 * 1024;

struct Challenge {
    nonce: [u8; 32],
    spki_der: Vec<u8>,
    node_id: String,
    expires_at: i64,
}

/// Why an x509pop chain was refused before it was parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBoundError {
    /// No certificate at all.
    #[error("empty certificate chain")]
    Empty,
    /// More certificates than any chain writ can verify.
    #[error("certificate chain has {0} certificates; at most {MAX_X509POP_CHAIN} are accepted")]
    TooMany(usize),
    /// One certificate larger than [`MAX_X509POP_CERT_LEN`].
    #[error(
        "certificate {index} of the chain is {len} bytes; at most {MAX_X509POP_CERT_LEN} are accepted"
    )]
    CertTooLarge {
        /// Its position in the chain, the leaf being 0.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// The certificates together larger than [`MAX_X509POP_CHAIN_LEN`].
    #[error("certificate chain is {0} bytes; at most {MAX_X509POP_CHAIN_LEN} are accepted")]
    TooLarge(usize),
}

/// The leaf and the intermediates of an x509pop chain a node sent, once its bounds are
/// checked, before any of it is parsed or verified: what a node sends is bounded, so one
/// attestation costs bounded CPU and memory however deep or large the chain it claims.
pub fn bounded_chain(chain: &[Vec<u8>]) -> Result<(&[u8], &[Vec<u8>]), ChainBoundError> {
    let (leaf, intermediates) = chain.split_first().ok_or(ChainBoundError::Empty)?;
    if chain.len() > MAX_X509POP_CHAIN {
        return Err(ChainBoundError::TooMany(chain.len()));
    }
    if let Some((index, cert)) = chain
        .iter()
        .enumerate()
        .find(|(_, cert)| cert.len() > MAX_X509POP_CERT_LEN)
    {
        return Err(ChainBoundError::CertTooLarge {
            index,
            len: cert.len(),
        });
    }
    let total: usize = chain.iter().map(Vec::len).sum();
    if total > MAX_X509POP_CHAIN_LEN {
        return Err(ChainBoundError::TooLarge(total));
    }
    Ok((leaf, intermediates))
}

/// The node API's gRPC server for `service`, with its decoding bound. Every listener
/// of the node API is built here, so none can forget the bound.
pub fn server(service: NodeService) -> NodeServer<NodeService> {
    NodeServer::new(service).max_decoding_message_size(MAX_MESSAGE_LEN)
}

/// The span of one node API call (give it to the server's `trace_fn`): the method and
/// the calling node's SPIFFE ID from its verified node SVID, or `none` before the node
/// has one (attestation).
pub fn call_span(request: &http::Request<()>) -> tracing::Span {
    let node = request
        .extensions()
        .get::<NodePeer>()
        .and_then(|peer| peer.spiffe_id.as_ref())
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    tracing::info_span!("node_api", method = %request.uri().path(), node = %node)
}

/// The node API service.
pub struct NodeService {
    issuer: Arc<Issuer>,
    x509pop_roots: Vec<CertificateDer<'static>>,
    challenges: Mutex<HashMap<String, Challenge>>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeService")
    }
}

fn random<const N: usize>() -> Result<[u8; N], Status> {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out)
        .map_err(|_| Status::internal("no randomness"))?;
    Ok(out)
}

impl NodeService {
    /// A service for `issuer`; `x509pop_roots` are the CAs whose certificates may
    /// attest nodes by x509pop (empty: x509pop refused).
    pub fn new(issuer: Arc<Issuer>, x509pop_roots: Vec<CertificateDer<'static>>) -> Self {
        NodeService {
            issuer,
            x509pop_roots,
            challenges: Mutex::new(HashMap::new()),
        }
    }

    /// The calling node, from its verified node SVID. A node SVID whose serial has been
    /// revoked is refused on every call, renewal included: the node must attest again.
    fn node<T>(&self, request: &Request<T>) -> Result<SpiffeId, Status> {
        let peer = request.extensions().get::<NodePeer>();
        let id = peer
            .and_then(|peer| peer.spiffe_id.clone())
            .ok_or_else(|| Status::unauthenticated("a node SVID is required"))?;
        let serial = peer
            .and_then(|peer| peer.serial.as_deref())
            .unwrap_or_default();
        if self
            .issuer
            .registry
            .snapshot()
            .revoked_serials
            .contains_key(serial)
        {
            tracing::warn!(node = %id, serial, "node API call refused: node svid revoked");
            return Err(Status::permission_denied(format!(
                "the node SVID of {id} (serial {serial}) is revoked; attest the node again"
            )));
        }
        tracing::debug!("node API call");
        Ok(id)
    }

    fn node_id(&self, name: &str) -> Result<SpiffeId, Status> {
        SpiffeId::from_segments(self.issuer.cas.base().clone(), &["node", name])
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// `spiffe://<base>/node/k8s/<cluster>[/<node>]`: a Kubernetes node, or (without
    /// one) the cluster an attestation was refused in.
    fn k8s_node_id(&self, cluster: &str, node: Option<&str>) -> Result<SpiffeId, Status> {
        let mut segments = vec!["node", "k8s", cluster];
        segments.extend(node);
        SpiffeId::from_segments(self.issuer.cas.base().clone(), &segments)
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// Records a node attestation (or its refusal, with `refused` as the reason) before
    /// anything is issued for it.
    async fn audit_attestation(
        &self,
        node: &SpiffeId,
        method: &str,
        refused: Option<&str>,
    ) -> Result<(), Status> {
        let (kind, action) = match refused {
            None => (Kind::Attestation, format!("node.attest.{method}")),
            Some(_) => (Kind::Denial, format!("node.attest.{method}.refused")),
        };
        let mut record = Record::new(self.issuer.cas.now(), kind, action, node.to_string())
            .spiffe_id(node.to_string());
        if let Some(reason) = refused {
            record = record.detail(serde_json::json!({ "reason": reason }));
        }
        self.issuer
            .audit
            .append_async(&record)
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    /// Signs a node SVID for `id` from `csr` (already checked against `id`).
    async fn mint_node(&self, id: SpiffeId, csr_der: Vec<u8>) -> Result<pb::NodeSvid, Status> {
        let issuer = Arc::clone(&self.issuer);
        let spiffe_id = id.to_string();
        let minted = tokio::task::spawn_blocking(move || {
            let request = SvidRequest {
                spiffe_id: id,
                ttl: Some(issuer.config.ca.max_svid_ttl),
                claims: None,
                dns_names: Vec::new(),
            };
            let requester = request.spiffe_id.to_string();
            issuer.issue_x509(Band::Base, SubjectKey::Csr(&csr_der), request, &requester)
        })
        .await
        .map_err(|_| Status::internal("signing task failed"))?
        .map_err(Status::from)?;
        tracing::info!(node = %spiffe_id, not_after = minted.not_after, "issued node svid");
        Ok(pb::NodeSvid {
            spiffe_id,
            certificate: minted.cert_der,
            intermediates: minted.chain,
            bundle: self.issuer.cas.ca(Band::Base).x509_bundle(),
            not_after: minted.not_after,
        })
    }
}

/// One update of the Sync stream. An agent that does not know tenants (`tenants` false)
/// gets the default tenant's policy and the deployment's own bundles only
/// ([`crate::node_api::wire::encode_policy`]).
fn sync_update(
    policy: &crate::policy::PolicySnapshot,
    bundles: &BundleSet,
    max_svid_ttl: std::time::Duration,
    tenants: bool,
    base: &spiffe::TrustDomain,
) -> Result<pb::SyncUpdate, Status> {
    let deployment = |td: &str| {
        Band::ALL
            .iter()
            .any(|band| band.trust_domain_name(base.as_str()) == td)
    };
    Ok(pb::SyncUpdate {
        generation: policy.generation,
        policy: Some(crate::node_api::wire::encode_policy(policy, tenants)),
        bundles: bundles
            .bundles
            .iter()
            .filter(|b| tenants || deployment(&b.trust_domain))
            .map(|b| pb::TrustBundle {
                band: b.band.to_string(),
                trust_domain: b.trust_domain.clone(),
                x509_der: b.x509_der.clone(),
                jwt_jwks: b.jwt_jwks.clone(),
                tainted: b
                    .tainted
                    .iter()
                    .map(|t| pb::TaintedAuthority {
                        cert_der: t.cert_der.clone(),
                        jwt_kid: t.jwt_kid.clone(),
                        tainted_at: t.tainted_at,
                    })
                    .collect(),
            })
            .collect(),
        max_svid_ttl_seconds: max_svid_ttl.as_secs(),
    })
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::SyncUpdate, Status>> + Send>>;

/// Node attestation, one method per kind; the node API's handlers count their failures.
impl NodeService {
    /// Counts a failed attestation of `kind` (any refusal, before or after the audit).
    fn count_failure<T>(&self, kind: AttestationKind, result: &Result<T, Status>) {
        if result.is_err() {
            self.issuer.metrics.attestation_failed(kind);
        }
    }

    async fn join_token(
        &self,
        request: Request<pb::AttestJoinTokenRequest>,
    ) -> Result<Response<pb::NodeSvid>, Status> {
        let body = request.into_inner();
        if body.token.is_empty() || body.token.len() > 256 {
            return Err(Status::invalid_argument("join token missing or malformed"));
        }
        let hash = sha256_hex(body.token.as_bytes());
        let node_id = self.node_id(&format!("join-{}", &hash[..24]))?;
        // Check the CSR before using up the token: a bad request must not burn it.
        csr::verify_csr(&body.csr, &node_id).map_err(Status::from)?;
        let store = Arc::clone(&self.issuer.store);
        let now = self.issuer.cas.now();
        let id_text = node_id.to_string();
        let outcome =
            tokio::task::spawn_blocking(move || store.consume_join_token(&hash, now, &id_text))
                .await
                .map_err(|_| Status::internal("token task failed"))?
                .map_err(|e| {
                    tracing::error!(error = %e, "join token lookup failed");
                    Status::internal("internal error; see the server log")
                })?;
        let refused = match outcome {
            TokenUse::Consumed => None,
            TokenUse::Unknown => Some("unknown join token"),
            TokenUse::Replayed => {
                tracing::warn!(node = %node_id, "join token replayed");
                Some("join token already used")
            }
            TokenUse::Expired => Some("join token expired"),
        };
        self.audit_attestation(&node_id, "join_token", refused)
            .await?;
        if let Some(reason) = refused {
            return Err(Status::permission_denied(reason));
        }
        self.mint_node(node_id, body.csr).await.map(Response::new)
    }

    async fn x509pop_challenge(
        &self,
        request: Request<pb::X509PopChallengeRequest>,
    ) -> Result<Response<pb::X509PopChallengeResponse>, Status> {
        if self.x509pop_roots.is_empty() {
            return Err(Status::failed_precondition(
                "x509pop attestation is not configured",
            ));
        }
        let chain = request.into_inner().chain;
        let (leaf, intermediates) =
            bounded_chain(&chain).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let leaf = CertificateDer::from(leaf);
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|cert| CertificateDer::from(cert.as_slice()))
            .collect();
        let anchors: Vec<_> = self
            .x509pop_roots
            .iter()
            .filter_map(|ca| webpki::anchor_from_trusted_cert(ca).ok())
            .collect();
        let end_entity = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|_| Status::invalid_argument("malformed certificate"))?;
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &intermediates,
                UnixTime::now(),
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| {
                Status::permission_denied(format!(
                    "certificate does not chain to the x509pop CA: {e:?}"
                ))
            })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|_| Status::invalid_argument("malformed certificate"))?;
        let spki_der = parsed.public_key().raw.to_vec();
        let fingerprint = sha256_hex(&leaf);
        let challenge_id: String = crate::hex::lower(&random::<16>()?);
        let nonce = random::<32>()?;
        let now = self.issuer.cas.now();
        let mut challenges = self
            .challenges
            .lock()
            .map_err(|_| Status::internal("lock poisoned"))?;
        challenges.retain(|_, c| c.expires_at > now);
        if challenges.len() >= MAX_CHALLENGES {
            return Err(Status::resource_exhausted(
                "too many x509pop challenges outstanding",
            ));
        }
        challenges.insert(
            challenge_id.clone(),
            Challenge {
                nonce,
                spki_der,
                node_id: format!("x509pop-{}", &fingerprint[..32]),
                expires_at: now + CHALLENGE_TTL,
            },
        );
        Ok(Response::new(pb::X509PopChallengeResponse {
            challenge_id,
            nonce: nonce.to_vec(),
        }))
    }

    async fn x509pop_answer(
        &self,
        request: Request<pb::X509PopAnswerRequest>,
    ) -> Result<Response<pb::NodeSvid>, Status> {
        let body = request.into_inner();
        let challenge = self
            .challenges
            .lock()
            .map_err(|_| Status::internal("lock poisoned"))?
            .remove(&body.challenge_id)
            .filter(|c| c.expires_at > self.issuer.cas.now())
            .ok_or_else(|| Status::permission_denied("unknown or expired challenge"))?;
        let mut signed = X509POP_CONTEXT.to_vec();
        signed.extend_from_slice(&challenge.nonce);
        let (_, spki) =
            <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<
                x509_parser::error::X509Error,
            >>::from_der(&challenge.spki_der)
            .map_err(|_| Status::internal("stored key unreadable"))?;
        let algorithm: &dyn ring::signature::VerificationAlgorithm =
            if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 {
                &ring::signature::ED25519
            } else {
                &ring::signature::ECDSA_P256_SHA256_ASN1
            };
        ring::signature::UnparsedPublicKey::new(algorithm, spki.subject_public_key.data.as_ref())
            .verify(&signed, &body.signature)
            .map_err(|_| Status::permission_denied("proof of possession failed"))?;
        let node_id = self.node_id(&challenge.node_id)?;
        csr::verify_csr(&body.csr, &node_id).map_err(Status::from)?;
        self.audit_attestation(&node_id, "x509pop", None).await?;
        self.mint_node(node_id, body.csr).await.map(Response::new)
    }

    async fn k8s_psat(
        &self,
        request: Request<pb::AttestK8sPsatRequest>,
    ) -> Result<Response<pb::NodeSvid>, Status> {
        use crate::k8s_psat::{MAX_TOKEN_BYTES, check_node_name, judge};
        let body = request.into_inner();
        if body.token.is_empty() || body.token.len() > MAX_TOKEN_BYTES {
            return Err(Status::invalid_argument(
                "service-account token missing or too long",
            ));
        }
        let Some(cluster) = self
            .issuer
            .config
            .k8s_psat
            .iter()
            .find(|c| c.name == body.cluster)
        else {
            return Err(Status::permission_denied(format!(
                "no [[k8s_psat]] cluster {:?} is configured on this server",
                body.cluster.chars().take(64).collect::<String>()
            )));
        };
        // Named for the audit record before it is known which node it is.
        let claimed = self.k8s_node_id(&cluster.name, None)?;
        let status = cluster.review(&body.token).await.map_err(|e| {
            tracing::error!(cluster = %cluster.name, error = %e, "k8s_psat: TokenReview failed");
            Status::unavailable(
                "the cluster's API server could not review the token; see the server log",
            )
        })?;
        let attested = match judge(&status, cluster.audience(), cluster.allowed()) {
            Ok(attested) => attested,
            Err(why) => {
                tracing::warn!(cluster = %cluster.name, reason = %why, "k8s_psat attestation refused");
                self.audit_attestation(&claimed, "k8s_psat", Some(&why))
                    .await?;
                return Err(Status::permission_denied("service-account token refused"));
            }
        };
        let node_name = match &attested.node_name {
            Some(name) => Some(name.clone()),
            None => cluster
                .node_of_pod(&attested.namespace, &attested.pod_name, &attested.pod_uid)
                .await
                .map_err(|e| {
                    tracing::error!(cluster = %cluster.name, error = %e, "k8s_psat: pod lookup failed");
                    Status::unavailable("the cluster's API server could not name the pod's node; see the server log")
                })?,
        };
        let named: Result<String, String> = match node_name {
            Some(name) => check_node_name(&name).map(|()| name),
            None => Err("the API server names no node for the token's pod".to_owned()),
        };
        let node_name = match named {
            Ok(name) => name,
            Err(why) => {
                tracing::warn!(cluster = %cluster.name, reason = %why, "k8s_psat attestation refused");
                self.audit_attestation(&claimed, "k8s_psat", Some(&why))
                    .await?;
                return Err(Status::permission_denied("service-account token refused"));
            }
        };
        let node_id = self.k8s_node_id(&cluster.name, Some(&node_name))?;
        csr::verify_csr(&body.csr, &node_id).map_err(Status::from)?;
        tracing::info!(node = %node_id, namespace = %attested.namespace, service_account = %attested.service_account, pod = %attested.pod_name, "node attested by k8s_psat");
        self.audit_attestation(&node_id, "k8s_psat", None).await?;
        self.mint_node(node_id, body.csr).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn attest_join_token(
        &self,
        request: Request<pb::AttestJoinTokenRequest>,
    ) -> Result<Response<pb::NodeSvid>, Status> {
        let attested = self.join_token(request).await;
        self.count_failure(AttestationKind::JoinToken, &attested);
        attested
    }

    async fn x509_pop_challenge(
        &self,
        request: Request<pb::X509PopChallengeRequest>,
    ) -> Result<Response<pb::X509PopChallengeResponse>, Status> {
        let challenged = self.x509pop_challenge(request).await;
        self.count_failure(AttestationKind::X509Pop, &challenged);
        challenged
    }

    async fn x509_pop_answer(
        &self,
        request: Request<pb::X509PopAnswerRequest>,
    ) -> Result<Response<pb::NodeSvid>, Status> {
        let attested = self.x509pop_answer(request).await;
        self.count_failure(AttestationKind::X509Pop, &attested);
        attested
    }

    async fn attest_k8s_psat(
        &self,
        request: Request<pb::AttestK8sPsatRequest>,
    ) -> Result<Response<pb::NodeSvid>, Status> {
        let attested = self.k8s_psat(request).await;
        self.count_failure(AttestationKind::K8sPsat, &attested);
        attested
    }

    async fn renew_node_svid(
        &self,
        request: Request<pb::RenewNodeSvidRequest>,
    ) -> Result<Response<pb::NodeSvid>, Status> {
        let node = self.node(&request)?;
        let body = request.into_inner();
        csr::verify_csr(&body.csr, &node).map_err(Status::from)?;
        self.mint_node(node, body.csr).await.map(Response::new)
    }

    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let node = self.node(&request)?;
        let serial = request
            .extensions()
            .get::<NodePeer>()
            .and_then(|peer| peer.serial.clone())
            .unwrap_or_default();
        let tenants = request.get_ref().tenants;
        let base = self.issuer.cas.base().clone();
        let mut policy = self.issuer.registry.subscribe_agents();
        let max_svid_ttl = self.issuer.config.ca.max_svid_ttl;
        let mut bundles = self.issuer.bundles.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    let update = {
                        let p = policy.borrow_and_update().clone();
                        // Revoking the node's SVID ends the stream it opened with it: the
                        // node gets no more policy until it attests again.
                        if p.revoked_serials.contains_key(&serial) {
                            tracing::warn!(%node, %serial, "sync stream ended: node svid revoked");
                            let _ = tx
                            .send(Err(Status::permission_denied(format!(
                                "the node SVID of {node} (serial {serial}) is revoked; attest the node again"
                            ))))
                            .await;
                            break;
                        }
                        let b = bundles.borrow_and_update().clone();
                        sync_update(&p, &b, max_svid_ttl, tenants, &base)
                    };
                    if tx.send(update).await.is_err() {
                        break;
                    }
                    tokio::select! {
                        r = policy.changed() => if r.is_err() { break },
                        r = bundles.changed() => if r.is_err() { break },
                        () = tx.closed() => break,
                    }
                }
                tracing::debug!(%node, "sync stream ended");
            },
            span,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn sign_x509_svids(
        &self,
        request: Request<pb::SignX509SvidsRequest>,
    ) -> Result<Response<pb::SignX509SvidsResponse>, Status> {
        let node = self.node(&request)?;
        let body = request.into_inner();
        if body.csrs.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} CSRs per batch"
            )));
        }
        let issuer = Arc::clone(&self.issuer);
        let requester = node.to_string();
        let svids = tokio::task::spawn_blocking(move || {
            let failed = |spiffe_id: &str, error: String| pb::SignedSvid {
                spiffe_id: spiffe_id.to_owned(),
                error,
                ..Default::default()
            };
            // Parse first; sign the well-formed ones as one batch (one audit commit).
            let mut out: Vec<Option<pb::SignedSvid>> = Vec::with_capacity(body.csrs.len());
            let mut batch = Vec::new();
            for item in &body.csrs {
                match writ_verifier::parse_spiffe_id(&item.spiffe_id) {
                    Ok(id) => {
                        batch.push((id, item.csr.clone()));
                        out.push(None);
                    }
                    Err(e) => out.push(Some(failed(
                        &item.spiffe_id,
                        NodeError::Invalid(e.to_string()).to_batch_error(),
                    ))),
                }
            }
            let mut signed = issuer
                .sign_workload_x509_batch(&batch, None, &requester)
                .into_iter()
                .zip(batch.iter().map(|(id, _)| id.to_string()));
            out.into_iter()
                .map(|slot| {
                    if let Some(done) = slot {
                        return done;
                    }
                    let Some((result, spiffe_id)) = signed.next() else {
                        return failed(
                            "",
                            NodeError::Unavailable("signing failed".into()).to_batch_error(),
                        );
                    };
                    match result {
                        Ok(minted) => pb::SignedSvid {
                            spiffe_id,
                            certificate: minted.cert_der,
                            intermediates: minted.chain,
                            serial: minted.serial,
                            not_after: minted.not_after,
                            error: String::new(),
                        },
                        Err(e) => failed(&spiffe_id, issue_refusal(e).to_batch_error()),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|_| Status::internal("signing task failed"))?;
        tracing::debug!(%node, count = svids.len(), "signed batch");
        Ok(Response::new(pb::SignX509SvidsResponse { svids }))
    }

    async fn sign_jwt_svid(
        &self,
        request: Request<pb::SignJwtSvidRequest>,
    ) -> Result<Response<pb::SignJwtSvidResponse>, Status> {
        let node = self.node(&request)?;
        let body = request.into_inner();
        let id = writ_verifier::parse_spiffe_id(&body.spiffe_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issuer = Arc::clone(&self.issuer);
        let requester = node.to_string();
        let signed = tokio::task::spawn_blocking(move || {
            issuer.sign_workload_jwt(&id, &body.audience, &requester)
        })
        .await
        .map_err(|_| Status::internal("signing task failed"))?;
        let minted = signed.map_err(|e| Status::from(issue_refusal(e)))?;
        Ok(Response::new(pb::SignJwtSvidResponse {
            token: minted.token,
        }))
    }

    async fn request_grant(
        &self,
        request: Request<pb::NodeGrantRequest>,
    ) -> Result<Response<pb::NodeGrantResponse>, Status> {
        let node = self.node(&request)?;
        let body = request.into_inner();
        let requested_by = writ_verifier::parse_spiffe_id(&body.requested_by)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let grant_request = crate::policy::GrantRequest {
            incident: body.incident,
            agent: body.agent,
            action: body.action,
            targets: body.targets.into_iter().collect(),
            evidence: body.evidence,
            plan: body.plan,
            scopes: body.scopes.into_iter().collect(),
            window_secs: body.window_seconds,
        };
        let issuer = Arc::clone(&self.issuer);
        // The node attested the workload; its word on the uid is as good as its word on
        // the selectors it reports.
        let uid = body.requester_uid;
        let grant = tokio::task::spawn_blocking(move || {
            issuer.request_grant_for_workload(grant_request, &requested_by, uid)
        })
        .await
        .map_err(|_| Status::internal("grant task failed"))?
        .map_err(|e| Status::from(registry_refusal(e)))?;
        tracing::debug!(%node, grant = %grant.id, "grant requested through a node");
        Ok(Response::new(pb::NodeGrantResponse {
            grant: Some(crate::node_api::wire::encode_grant(&grant)),
        }))
    }

    async fn record_activity(
        &self,
        request: Request<pb::NodeActivityRequest>,
    ) -> Result<Response<pb::NodeActivityResponse>, Status> {
        let node = self.node(&request)?;
        let body = request.into_inner();
        let spiffe_id = writ_verifier::parse_spiffe_id(&body.spiffe_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The agent checked this too; the server never relies on it.
        let activity = Activity::parse(&RawActivity {
            incident: body.incident,
            kind: body.kind,
            digest: body.digest,
            tool: body.tool,
            uri: body.uri,
            summary: body.summary,
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let index = self
            .issuer
            .record_activity(&activity, &spiffe_id, &body.serial, &node.to_string())
            .await
            .map_err(|e| Status::from(activity_refusal(e)))?;
        Ok(Response::new(pb::NodeActivityResponse { index }))
    }

    async fn record_attestation(
        &self,
        request: Request<pb::NodeAttestationRequest>,
    ) -> Result<Response<pb::NodeAttestationResponse>, Status> {
        let node = self.node(&request)?;
        let body = request.into_inner();
        let spiffe_id = writ_verifier::parse_spiffe_id(&body.spiffe_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let index = self
            .issuer
            .record_attestation(&spiffe_id, &body.selectors, &node.to_string())
            .await
            .map_err(|e| Status::from(attestation_refusal(e)))?;
        Ok(Response::new(pb::NodeAttestationResponse { index }))
    }
}

/// Creates a join token: 32 random bytes, base64url; only its hash is stored.
pub fn create_join_token(issuer: &Issuer, ttl_secs: u64) -> Result<(String, i64), Status> {
    use base64::Engine;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random::<32>()?);
    let now = issuer.cas.now();
    let expires_at = now + ttl_secs as i64;
    issuer
        .store
        .put_join_token(
            &sha256_hex(secret.as_bytes()),
            &JoinTokenRecord {
                created_at: now,
                expires_at,
                used_at: None,
                node_id: None,
            },
        )
        .map_err(|e| {
            tracing::error!(error = %e, "storing a join token failed");
            Status::internal("internal error; see the server log")
        })?;
    tracing::info!(expires_at, "join token created");
    Ok((secret, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes.iter().map(|&n| vec![0u8; n]).collect()
    }

    #[test]
    fn chains_within_every_bound_pass() {
        let full = chain(&[1000; MAX_X509POP_CHAIN]);
        assert_eq!(bounded_chain(&full), Ok((&full[0][..], &full[1..])));
        assert!(bounded_chain(&chain(&[MAX_X509POP_CERT_LEN])).is_ok());
        let four = MAX_X509POP_CHAIN_LEN / 4;
        assert!(bounded_chain(&chain(&[four; 4])).is_ok());
    }

    #[test]
    fn each_bound_is_refused_one_past_it() {
        assert_eq!(bounded_chain(&[]), Err(ChainBoundError::Empty));
        assert_eq!(
            bounded_chain(&chain(&[10; MAX_X509POP_CHAIN + 1])),
            Err(ChainBoundError::TooMany(MAX_X509POP_CHAIN + 1))
        );
        assert_eq!(
            bounded_chain(&chain(&[10, MAX_X509POP_CERT_LEN + 1])),
            Err(ChainBoundError::CertTooLarge {
                index: 1,
                len: MAX_X509POP_CERT_LEN + 1
            })
        );
        let four = MAX_X509POP_CHAIN_LEN / 4;
        assert_eq!(
            bounded_chain(&chain(&[four, four, four, four, 1])),
            Err(ChainBoundError::TooLarge(MAX_X509POP_CHAIN_LEN + 1))
        );
    }

    #[test]
    fn the_count_is_checked_before_any_certificate_is_looked_at() {
        // A thousand oversized "certificates" are refused for their number: the bound
        // that costs nothing to check comes first.
        assert_eq!(
            bounded_chain(&chain(&[MAX_X509POP_CERT_LEN + 1; 1000])),
            Err(ChainBoundError::TooMany(1000))
        );
    }
}
