//! Verification of writ-issued SPIFFE SVIDs for downstream services.
//!
//! This crate is what a log store, a metrics API or a deploy system links to check the
//! identities writ hands out. It never pulls in the server, its store or its CA code.
//!
//! * [`authz`]: the [`Authorizer`]: a pure decision over band, trust domain, tenant,
//!   agent, incident, scopes, grant, plan digest and targets, plus the revocation set.
//! * [`claims`]: the versioned writ claims carried by every SVID (a private X.509
//!   extension under the UUID arc 2.25, and one namespaced JWT private claim), and their
//!   parser.
//! * [`id`]: strict SPIFFE ID parsing on top of the `spiffe` crate's grammar.
//! * [`jwt`]: JWT-SVID validation (ES256) against a trust domain's JWT keys, and
//!   [`authorize_jwt_svid`], which applies the same [`Authorizer`].
//! * [`revocation`]: closed incidents, ended grants and revoked serials as O(1) lookup
//!   sets, swapped whole behind an `ArcSwap`.
//! * `source` (feature `workload-api`, default on): [`WorkloadApiSource`], bundles
//!   (`FetchX509Bundles`, `FetchJWTBundles`) and writ's revocation feed, kept live from
//!   the agent's socket.
//! * [`tls`]: rustls client and server certificate verifiers for SPIFFE peers.
//! * [`x509`]: X.509-SVID checks: chain to the bundle of the SVID's own trust domain
//!   (rustls-webpki path building), the SPIFFE leaf rules, and the claims.
//!
//! Revoked incidents and grants are refused even while the certificate has not expired:
//! the verifiers built with an [`Authorizer`] consult the live revocation set at every
//! handshake, and an application re-decides per request with [`tls::verified_peer_chain`]
//! (the chain verified again, so a tainted authority is refused too) or, from the leaf
//! alone, [`tls::verified_peer`].
//!
//! # Use
//!
//! ```no_run
//! # #[cfg(feature = "workload-api")]
//! # async fn demo(
//! #     chain: Vec<rustls_pki_types::CertificateDer<'static>>,
//! #     body: Vec<u8>,
//! #     now: i64,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use writ_verifier::tls::{SpiffeClientVerifier, verified_peer_chain};
//! use writ_verifier::x509::Usage;
//! use writ_verifier::{Authorizer, WorkloadApiSource, parse_trust_domain};
//!
//! // Bundles and revocations from the agent's socket (SPIFFE_ENDPOINT_SOCKET).
//! let source = Arc::new(WorkloadApiSource::from_env().await?);
//! let base = parse_trust_domain("example.org")?;
//! // At the handshake: investigative identities of an incident not closed, with logs:read.
//! let verifier = SpiffeClientVerifier::with_authorizer(
//!     source.clone(),
//!     Authorizer::investigative(&base).scope("logs:read"),
//!     source.revocations(),
//! );
//! // ... rustls::ServerConfig::builder().with_client_cert_verifier(Arc::new(verifier)) ...
//!
//! // Per request, on the connection's verified peer chain: a write needs the
//! // remediation identity whose approved plan is exactly this body.
//! let now_time = rustls_pki_types::UnixTime::now();
//! let peer = verified_peer_chain(&chain, source.as_ref(), Usage::Client, now_time)
//!     .ok_or("no peer")?;
//! let decision = Authorizer::remediation(&base)
//!     .plan(&body)
//!     .decide(&peer, &source.revocations().snapshot(), now);
//! println!("{} {decision:?}", peer.spiffe_id);
//! # Ok(())
//! # }
//! ```
//!
//! # What is reused, and what is not
//!
//! * The `spiffe` crate: `SpiffeId` and `TrustDomain` (behind our strict parser, because
//!   its parser lower-cases upper-case input) and, with `workload-api`, its
//!   `WorkloadApiClient` for the standard `FetchX509Bundles` / `FetchJWTBundles` streams
//!   and its bundle types. Only writ's own revocation feed has a generated client here.
//! * rustls-webpki does path building, signatures, validity and EKU; x509-parser reads the
//!   SAN, key usage and the claims extension.
//! * `spiffe-rustls` 0.11 exists for `spiffe` 0.19 / rustls 0.23 but does not fit: its
//!   `Authorizer` sees only the peer's `SpiffeId`, never the certificate, so it cannot
//!   decide on writ's claims (band, grant, plan digest), a serial, or the revocation set;
//!   its verifiers are private (only whole `ClientConfig`/`ServerConfig` builders are
//!   public), so they cannot be wrapped; and it requires an `X509Source`, i.e. a
//!   workload that holds an SVID, where a verifier may hold none. The verifiers here keep
//!   its model (bundle chosen by the peer's trust domain, authorization after
//!   cryptographic verification, live material per handshake).
#![forbid(unsafe_code)]

pub mod authz;
pub mod claims;
pub mod id;
pub mod jwt;
pub mod revocation;
#[cfg(feature = "workload-api")]
pub mod source;
pub mod tls;
pub mod x509;

pub use authz::{Authority, Authorizer, Decision, DenyReason, Peer, plan_digest};
pub use claims::{Band, ClaimsError, WritClaims};
pub use id::{IdError, parse_spiffe_id, parse_trust_domain};
pub use jwt::{
    JwtKeys, JwtRefused, JwtSvidError, ValidatedJwt, authorize_jwt_svid, authorize_validated_jwt,
    validate_jwt_svid,
};
pub use revocation::{RevocationSnapshot, Revocations};
#[cfg(feature = "workload-api")]
pub use source::{SourceOptions, WorkloadApiSource};
pub use x509::{Usage, VerifiedX509Svid, X509SvidError, authority_key_id, verify_x509_svid};
