//! rustls certificate verifiers for SPIFFE peers.
//!
//! rustls' default verifiers check DNS names, which an SVID does not carry as its
//! identity. These check what SPIFFE asks instead: the chain to the bundle of the peer's
//! own trust domain (via [`crate::verify_x509_svid`]), the SPIFFE leaf rules, and an
//! authorization decision on the peer's SPIFFE ID.

use crate::authz::{Authorizer, Peer};
use crate::revocation::Revocations;
use crate::x509::{Usage, verify_x509_svid};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use spiffe::{SpiffeId, TrustDomain};
use std::fmt;
use std::sync::Arc;

/// Where the verifiers find a trust domain's CA certificates (live: rotation must show).
pub trait X509BundleSource: Send + Sync {
    /// The CA certificates of `trust_domain`, if it is trusted at all.
    fn x509_authorities(&self, trust_domain: &TrustDomain) -> Option<Vec<CertificateDer<'static>>>;
}

/// Decides whether a verified peer may talk to us.
pub type Authorize = Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>;

/// Authorizes exactly one SPIFFE ID.
pub fn exactly(id: SpiffeId) -> Authorize {
    Arc::new(move |peer| *peer == id)
}

/// What a verifier decides once the chain and the SPIFFE rules passed.
#[derive(Clone)]
enum Policy {
    /// A predicate on the SPIFFE ID alone (writ's own node and admin connections).
    Ids(Authorize),
    /// writ's [`Authorizer`] on the whole peer, against the live revocation set.
    Writ {
        authorizer: Arc<Authorizer>,
        revocations: Arc<Revocations>,
    },
}

impl Policy {
    fn writ(authorizer: Authorizer, revocations: Arc<Revocations>) -> Self {
        Policy::Writ {
            authorizer: Arc::new(authorizer),
            revocations,
        }
    }
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn check(
    bundles: &dyn X509BundleSource,
    policy: &Policy,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    usage: Usage,
    now: UnixTime,
) -> Result<SpiffeId, rustls::Error> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad = |reason: String| rustls::Error::General(reason);
    let (_, leaf) =
        X509Certificate::from_der(end_entity).map_err(|e| bad(format!("peer certificate: {e}")))?;
    let id = crate::x509::leaf_spiffe_id(&leaf).map_err(|e| bad(e.to_string()))?;
    let authorities = bundles
        .x509_authorities(id.trust_domain())
        .ok_or_else(|| bad(format!("trust domain {} is not trusted", id.trust_domain())))?;
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    let verified = verify_x509_svid(&chain, &authorities, id.trust_domain(), usage, now)
        .map_err(|e| bad(e.to_string()))?;
    match policy {
        Policy::Ids(authorize) => {
            if !authorize(&verified.spiffe_id) {
                return Err(bad(format!(
                    "peer {} is not authorized",
                    verified.spiffe_id
                )));
            }
        }
        Policy::Writ {
            authorizer,
            revocations,
        } => {
            let peer = Peer::from_x509(&verified);
            let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            authorizer
                .decide(&peer, &revocations.snapshot(), now)
                .into_result()
                .map_err(|reason| bad(format!("peer {} refused: {reason}", peer.spiffe_id)))?;
        }
    }
    Ok(verified.spiffe_id)
}

/// Verifies a server's SVID (the client side of mTLS).
pub struct SpiffeServerVerifier {
    bundles: Arc<dyn X509BundleSource>,
    policy: Policy,
}

impl SpiffeServerVerifier {
    /// A verifier trusting `bundles` and accepting servers `authorize` approves.
    pub fn new(bundles: Arc<dyn X509BundleSource>, authorize: Authorize) -> Self {
        SpiffeServerVerifier {
            bundles,
            policy: Policy::Ids(authorize),
        }
    }

    /// A verifier trusting `bundles` and accepting servers `authorizer` allows under the
    /// current set of `revocations` (read at every handshake).
    pub fn with_authorizer(
        bundles: Arc<dyn X509BundleSource>,
        authorizer: Authorizer,
        revocations: Arc<Revocations>,
    ) -> Self {
        SpiffeServerVerifier {
            bundles,
            policy: Policy::writ(authorizer, revocations),
        }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeServerVerifier")
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server name is not the identity: the SPIFFE ID is, and `authorize` checks it.
        check(
            &*self.bundles,
            &self.policy,
            end_entity,
            intermediates,
            Usage::Server,
            now,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Verifies a client's SVID (the server side of mTLS).
pub struct SpiffeClientVerifier {
    bundles: Arc<dyn X509BundleSource>,
    policy: Policy,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// A verifier trusting `bundles`, accepting clients `authorize` approves. With
    /// `mandatory` false, clients without a certificate are let through (the
    /// application must then refuse what needs an identity).
    pub fn new(bundles: Arc<dyn X509BundleSource>, authorize: Authorize, mandatory: bool) -> Self {
        SpiffeClientVerifier {
            bundles,
            policy: Policy::Ids(authorize),
            mandatory,
        }
    }

    /// A verifier trusting `bundles`, requiring a client certificate, and accepting
    /// clients `authorizer` allows under the current set of `revocations` (read at every
    /// handshake).
    pub fn with_authorizer(
        bundles: Arc<dyn X509BundleSource>,
        authorizer: Authorizer,
        revocations: Arc<Revocations>,
    ) -> Self {
        SpiffeClientVerifier {
            bundles,
            policy: Policy::writ(authorizer, revocations),
            mandatory: true,
        }
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpiffeClientVerifier")
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check(
            &*self.bundles,
            &self.policy,
            end_entity,
            intermediates,
            Usage::Client,
            now,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// The [`Peer`] behind a chain rustls already verified on this connection, verified again
/// against `bundles` as they are at `now`: what per-request authorization on a long-lived
/// connection decides on. Unlike [`verified_peer`] it names the authority the chain ends
/// at, so a decision refuses an authority tainted since the handshake; and a chain whose
/// authority has left the bundle since (revoked) is `None`. Costs one chain verification.
pub fn verified_peer_chain(
    chain: &[CertificateDer<'_>],
    bundles: &dyn X509BundleSource,
    usage: Usage,
    now: UnixTime,
) -> Option<Peer> {
    let trust_domain = peer_spiffe_id(chain.first()?)?.trust_domain().clone();
    let bundle = bundles.x509_authorities(&trust_domain)?;
    crate::x509::verify_x509_svid(chain, &bundle, &trust_domain, usage, now)
        .ok()
        .map(|svid| Peer::from_x509(&svid))
}

/// The [`Peer`] behind a certificate that rustls already verified on this connection
/// (with one of this module's verifiers): what per-request authorization decides on.
/// It sees the leaf only, so it cannot name the authority ([`crate::Authority::Unknown`]):
/// where a connection outlives a taint, use [`verified_peer_chain`].
pub fn verified_peer(cert: &CertificateDer<'_>) -> Option<Peer> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, leaf) = X509Certificate::from_der(cert).ok()?;
    Some(Peer {
        spiffe_id: crate::x509::leaf_spiffe_id(&leaf).ok()?,
        claims: crate::x509::leaf_claims(&leaf).ok()?,
        serial: Some(crate::authz::hex(leaf.raw_serial())),
        expires_at: leaf.validity().not_after.timestamp(),
        // The leaf alone does not say which bundle certificate the handshake chained it
        // to: a tainted authority is refused at the handshake (docs/operations.md, "A
        // compromised CA").
        authority: crate::authz::Authority::Unknown,
    })
}

/// The SPIFFE ID of a peer certificate that rustls already verified.
pub fn peer_spiffe_id(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, leaf) = X509Certificate::from_der(cert).ok()?;
    crate::x509::leaf_spiffe_id(&leaf).ok()
}
