//! Verification of writ-issued SPIFFE SVIDs for downstream services.
//!
//! This crate is what a log store, a metrics API or a deploy system links to check the
//! identities writ hands out. It never pulls in the server, its store or its CA code.
//!
//! * [`claims`]: the versioned writ claims carried by every SVID (a private X.509
//!   extension under the UUID arc 2.25, and one namespaced JWT private claim), and their
//!   parser.
//! * [`id`]: strict SPIFFE ID parsing on top of the `spiffe` crate's grammar.
//! * [`jwt`]: JWT-SVID validation (ES256) against a trust domain's JWT keys.
//! * [`tls`]: rustls client and server certificate verifiers for SPIFFE peers.
//! * [`x509`]: X.509-SVID checks: chain to the bundle of the SVID's own trust domain
//!   (rustls-webpki path building), the SPIFFE leaf rules, and the claims.
//!
//! SPIFFE ID and trust domain parsing is the `spiffe` crate's: we reuse its types
//! rather than re-writing the spec's grammar.
#![forbid(unsafe_code)]

pub mod claims;
pub mod id;
pub mod jwt;
pub mod tls;
pub mod x509;

pub use claims::{Band, ClaimsError, WritClaims};
pub use id::{IdError, parse_spiffe_id, parse_trust_domain};
pub use jwt::{JwtSvidError, ValidatedJwt, validate_jwt_svid};
pub use x509::{Usage, VerifiedX509Svid, X509SvidError, verify_x509_svid};
