//! Authorization of a verified peer: band, trust domain, tenant, agent, incident, scopes,
//! grant, plan digest, targets, and the revocation set.
//!
//! [`Authorizer::decide`] is a pure function of (rules, [`Peer`], [`RevocationSnapshot`],
//! now): no I/O, no clock, no locks, so every rule is unit-tested here and the same
//! decision is made for an X.509-SVID at the TLS handshake, for the same SVID again per
//! request, and for a JWT-SVID.
//!
//! Rules only narrow: every builder method adds a condition, none removes one, and the
//! revocation check cannot be turned off. An empty rule set still requires a writ
//! identity of one of the authorizer's bands under its base trust domain, unexpired and
//! unrevoked.
//!
//! Must never: allow a peer whose incident or grant is in the revocation set.

use crate::claims::{Band, ClaimsError, JWT_CLAIMS_KEY, WritClaims};
use crate::jwt::ValidatedJwt;
use crate::revocation::{RevocationSnapshot, Revoked};
use crate::x509::VerifiedX509Svid;
use spiffe::{SpiffeId, TrustDomain};
use std::collections::BTreeSet;
use std::fmt;

/// A verified peer: who it is and what its credential says. Built from an X.509-SVID
/// that passed [`crate::verify_x509_svid`] or a JWT-SVID that passed
/// [`crate::validate_jwt_svid`]; never from unverified input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// writ's claims, if the credential carries them.
    pub claims: Option<WritClaims>,
    /// The certificate's serial, lowercase hex (`None` for a JWT-SVID).
    pub serial: Option<String>,
    /// notAfter or `exp`, seconds since the epoch.
    pub expires_at: i64,
    /// The authority that signed it: for an X.509-SVID the [`crate::authority_key_id`] of
    /// the bundle certificate its chain ended at, for a JWT-SVID the `kid`.
    pub authority: Authority,
}

/// The authority a verified credential came from, as the revocation feed names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    /// An X.509 CA, by [`crate::authority_key_id`].
    X509(String),
    /// A JWT signing key, by `kid`.
    Jwt(String),
    /// Not known (a peer built by hand in a test).
    Unknown,
}

/// The parts of a writ agent ID's path:
/// `/agent/<agent>/incident/<incident>[/grant/<grant>]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentPath<'a> {
    /// The agent name.
    pub agent: Option<&'a str>,
    /// The incident.
    pub incident: Option<&'a str>,
    /// The grant (remediation only).
    pub grant: Option<&'a str>,
}

impl<'a> AgentPath<'a> {
    /// Splits `path`; every field is `None` unless the whole path has writ's shape.
    /// Allocates nothing: it runs on every handshake.
    pub fn parse(path: &'a str) -> Self {
        let mut it = path.split('/');
        let none = AgentPath::default();
        if it.next() != Some("") || it.next() != Some("agent") {
            return none;
        }
        let (Some(agent), Some("incident"), Some(incident)) = (it.next(), it.next(), it.next())
        else {
            return none;
        };
        let grant = match (it.next(), it.next(), it.next()) {
            (None, _, _) => None,
            (Some("grant"), Some(grant), None) => Some(grant),
            _ => return none,
        };
        AgentPath {
            agent: Some(agent),
            incident: Some(incident),
            grant,
        }
    }
}

impl Peer {
    /// The peer behind a verified X.509-SVID.
    pub fn from_x509(svid: &VerifiedX509Svid) -> Self {
        Peer {
            spiffe_id: svid.spiffe_id.clone(),
            claims: svid.claims.clone(),
            serial: Some(hex(&svid.serial)),
            expires_at: svid.not_after,
            authority: Authority::X509(svid.authority.clone()),
        }
    }

    /// The peer behind a validated JWT-SVID; its writ claims are parsed from the
    /// [`JWT_CLAIMS_KEY`] private claim.
    pub fn from_jwt(jwt: &ValidatedJwt) -> Result<Self, ClaimsError> {
        let claims = jwt
            .claims
            .get(JWT_CLAIMS_KEY)
            .map(WritClaims::from_json)
            .transpose()?;
        Ok(Peer {
            spiffe_id: jwt.spiffe_id.clone(),
            claims,
            serial: None,
            expires_at: jwt
                .claims
                .get("exp")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(i64::MIN),
            authority: Authority::Jwt(jwt.kid.clone()),
        })
    }

    /// The writ-shaped parts of the SPIFFE ID's path.
    pub fn path(&self) -> AgentPath<'_> {
        AgentPath::parse(self.spiffe_id.path())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// SHA-256 of `plan`, lowercase hex: the digest humans approve and writ puts in the claims.
pub fn plan_digest(plan: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, plan).as_ref())
}

/// The outcome of [`Authorizer::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Every rule holds.
    Allow,
    /// The first rule that failed.
    Deny(DenyReason),
}

impl Decision {
    /// Whether the decision is [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// `Ok(())` for allow, the reason otherwise.
    pub fn into_result(self) -> Result<(), DenyReason> {
        match self {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(reason),
        }
    }
}

/// Why a peer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenyReason {
    /// The revocation feed has been lost for longer than the source tolerates, and the
    /// source fails closed: nothing can be known to be unrevoked.
    #[error("the revocation feed has been unavailable since {0}: refusing every peer")]
    RevocationsUnavailable(i64),
    /// The credential's notAfter / `exp` has passed.
    #[error("credential expired at {0}")]
    Expired(i64),
    /// The SPIFFE ID's trust domain is not one of the allowed bands' trust domains (another
    /// band, another base, another tenant's trust domains).
    #[error("trust domain {found} not allowed (allowed: {allowed})")]
    TrustDomain {
        /// The peer's trust domain.
        found: String,
        /// The allowed trust domains, comma separated.
        allowed: String,
    },
    /// An agent identity without writ claims.
    #[error("credential carries no writ claims")]
    NoClaims,
    /// The claims' band differs from the band of the trust domain.
    #[error("claims say band {claims} but the trust domain is band {trust_domain}")]
    BandMismatch {
        /// The band the claims carry.
        claims: String,
        /// The band of the SPIFFE ID's trust domain.
        trust_domain: Band,
    },
    /// The SPIFFE ID is not writ's agent shape for its band, or the claims disagree with it.
    #[error("SPIFFE ID and claims disagree: {0}")]
    Shape(&'static str),
    /// Not the SPIFFE ID required.
    #[error("SPIFFE ID {0} not allowed")]
    SpiffeId(String),
    /// Another tenant.
    #[error("tenant {} not allowed", found.as_deref().unwrap_or("(none)"))]
    Tenant {
        /// The peer's tenant, if any.
        found: Option<String>,
    },
    /// Another agent.
    #[error("agent {0:?} not allowed")]
    Agent(String),
    /// Another incident.
    #[error("incident {} not allowed (required {required})", found.as_deref().unwrap_or("(none)"))]
    Incident {
        /// The peer's incident, if any.
        found: Option<String>,
        /// The required incident.
        required: String,
    },
    /// A required scope is missing from the claims.
    #[error("scope {0:?} missing")]
    Scope(String),
    /// Another grant.
    #[error("grant {} not allowed (required {required})", found.as_deref().unwrap_or("(none)"))]
    Grant {
        /// The peer's grant, if any.
        found: Option<String>,
        /// The required grant.
        required: String,
    },
    /// The approved plan's digest is not the digest of what is asked.
    #[error("approved plan digest {} does not match the request's {expected}", found.as_deref().unwrap_or("(none)"))]
    PlanDigest {
        /// The digest in the claims, if any.
        found: Option<String>,
        /// The digest of the request.
        expected: String,
    },
    /// A required target is not among the claims' targets.
    #[error("target {0:?} not granted")]
    Target(String),
    /// The revocation set names the peer's incident, grant or serial.
    #[error("{0}")]
    Revoked(Revoked),
    /// The revocation feed sent nothing for the peer's trust domain (this verifier is not
    /// in its tenant), so nothing shows the peer unrevoked.
    #[error("the revocation feed does not cover trust domain {0}")]
    NotCovered(String),
}

/// Rules a peer must satisfy. Build with [`Authorizer::investigative`],
/// [`Authorizer::remediation`], [`Authorizer::service`] or [`Authorizer::new`], narrow with
/// the builder methods, decide with [`Authorizer::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorizer {
    base: String,
    bands: Vec<Band>,
    tenant: Option<String>,
    spiffe_ids: Option<BTreeSet<String>>,
    agents: Option<BTreeSet<String>>,
    incident: Option<String>,
    scopes: BTreeSet<String>,
    grant: Option<String>,
    plan_digest: Option<String>,
    targets: BTreeSet<String>,
}

impl Authorizer {
    /// Peers of any of `bands` under base trust domain `base`.
    pub fn new(base: &TrustDomain, bands: impl IntoIterator<Item = Band>) -> Self {
        let mut bands: Vec<Band> = bands.into_iter().collect();
        bands.sort();
        bands.dedup();
        Authorizer {
            base: base.as_str().to_owned(),
            bands,
            tenant: None,
            spiffe_ids: None,
            agents: None,
            incident: None,
            scopes: BTreeSet::new(),
            grant: None,
            plan_digest: None,
            targets: BTreeSet::new(),
        }
    }

    /// Investigative identities (`investigate.<base>`) of an incident not revoked.
    pub fn investigative(base: &TrustDomain) -> Self {
        Authorizer::new(base, [Band::Investigative])
    }

    /// Remediation identities (`remediate.<base>`) of a grant not revoked.
    pub fn remediation(base: &TrustDomain) -> Self {
        Authorizer::new(base, [Band::Remediation])
    }

    /// Standing identities in `<base>` itself (services, nodes, the server).
    pub fn service(base: &TrustDomain) -> Self {
        Authorizer::new(base, [Band::Base])
    }

    /// Only this tenant's identities.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Only this SPIFFE ID (may be called again to allow several).
    pub fn spiffe_id(mut self, id: &SpiffeId) -> Self {
        self.spiffe_ids
            .get_or_insert_with(BTreeSet::new)
            .insert(id.to_string());
        self
    }

    /// Only this agent (may be called again to allow several).
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agents
            .get_or_insert_with(BTreeSet::new)
            .insert(agent.into());
        self
    }

    /// Only identities of this incident.
    pub fn incident(mut self, incident: impl Into<String>) -> Self {
        self.incident = Some(incident.into());
        self
    }

    /// The claims must hold `scope` (every scope required is needed).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.insert(scope.into());
        self
    }

    /// The claims must hold every one of `scopes`.
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Only identities of this grant.
    pub fn grant(mut self, grant: impl Into<String>) -> Self {
        self.grant = Some(grant.into());
        self
    }

    /// The approved plan's SHA-256 (lowercase hex) must equal `digest`.
    pub fn plan_digest(mut self, digest: impl Into<String>) -> Self {
        self.plan_digest = Some(digest.into());
        self
    }

    /// The approved plan must be exactly `plan` (its SHA-256 must be the claims' digest).
    pub fn plan(self, plan: &[u8]) -> Self {
        self.plan_digest(plan_digest(plan))
    }

    /// The claims' targets must include `target`.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.targets.insert(target.into());
        self
    }

    /// The band of `trust_domain` under this authorizer's base, if it is one it allows.
    fn band_of(&self, trust_domain: &str) -> Option<Band> {
        self.bands
            .iter()
            .copied()
            .find(|band| band_matches(*band, &self.base, trust_domain))
    }

    /// Decides whether `peer` may proceed, against `revocations` at `now` (seconds since
    /// the epoch). Pure: the same inputs always give the same decision.
    pub fn decide(&self, peer: &Peer, revocations: &RevocationSnapshot, now: i64) -> Decision {
        match self.check(peer, revocations, now) {
            Ok(()) => Decision::Allow,
            Err(reason) => Decision::Deny(reason),
        }
    }

    fn check(
        &self,
        peer: &Peer,
        revocations: &RevocationSnapshot,
        now: i64,
    ) -> Result<(), DenyReason> {
        if now >= peer.expires_at {
            return Err(DenyReason::Expired(peer.expires_at));
        }
        let td = peer.spiffe_id.trust_domain_name();
        let band = self.band_of(td).ok_or_else(|| DenyReason::TrustDomain {
            found: td.to_owned(),
            allowed: self
                .bands
                .iter()
                .map(|b| b.trust_domain_name(&self.base))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let claims = peer.claims.as_ref();
        if let Some(claims) = claims
            && claims.band != Some(band)
        {
            return Err(DenyReason::BandMismatch {
                claims: claims.band.map_or("none".into(), |b| b.to_string()),
                trust_domain: band,
            });
        }
        let path = peer.path();
        if band != Band::Base {
            let claims = claims.ok_or(DenyReason::NoClaims)?;
            if path.agent.is_none() {
                return Err(DenyReason::Shape("not an agent identity"));
            }
            if (band == Band::Remediation) != path.grant.is_some() {
                return Err(DenyReason::Shape(
                    "a remediation identity names a grant, an investigative one does not",
                ));
            }
            if claims.incident.as_deref() != path.incident {
                return Err(DenyReason::Shape("incident differs from the ID's"));
            }
            if claims.grant.as_deref() != path.grant {
                return Err(DenyReason::Shape("grant differs from the ID's"));
            }
        }
        if let Some(ids) = &self.spiffe_ids
            && !ids.contains(&peer.spiffe_id.to_string())
        {
            return Err(DenyReason::SpiffeId(peer.spiffe_id.to_string()));
        }
        if let Some(tenant) = &self.tenant {
            let found = claims.and_then(|c| c.tenant.clone());
            if found.as_deref() != Some(tenant.as_str()) {
                return Err(DenyReason::Tenant { found });
            }
        }
        if let Some(agents) = &self.agents {
            let agent = path.agent.unwrap_or_default();
            if !agents.contains(agent) {
                return Err(DenyReason::Agent(agent.to_owned()));
            }
        }
        if let Some(required) = &self.incident {
            let found = claims.and_then(|c| c.incident.clone());
            if found.as_deref() != Some(required.as_str()) {
                return Err(DenyReason::Incident {
                    found,
                    required: required.clone(),
                });
            }
        }
        if let Some(missing) = self
            .scopes
            .iter()
            .find(|s| !claims.is_some_and(|c| c.scopes.contains(s)))
        {
            return Err(DenyReason::Scope(missing.clone()));
        }
        if let Some(required) = &self.grant {
            let found = claims.and_then(|c| c.grant.clone());
            if found.as_deref() != Some(required.as_str()) {
                return Err(DenyReason::Grant {
                    found,
                    required: required.clone(),
                });
            }
        }
        if let Some(expected) = &self.plan_digest {
            let found = claims.and_then(|c| c.plan_digest.clone());
            if found.as_deref() != Some(expected.as_str()) {
                return Err(DenyReason::PlanDigest {
                    found,
                    expected: expected.clone(),
                });
            }
        }
        if let Some(missing) = self
            .targets
            .iter()
            .find(|t| !claims.is_some_and(|c| c.targets.contains(t)))
        {
            return Err(DenyReason::Target(missing.clone()));
        }
        if let Some(since) = revocations.unavailable() {
            return Err(DenyReason::RevocationsUnavailable(since));
        }
        let trust_domain = peer.spiffe_id.trust_domain_name();
        if !revocations.covers(trust_domain) {
            return Err(DenyReason::NotCovered(trust_domain.to_owned()));
        }
        if let Some(revoked) = revocations.check(peer) {
            return Err(DenyReason::Revoked(revoked));
        }
        Ok(())
    }
}

fn band_matches(band: Band, base: &str, trust_domain: &str) -> bool {
    match band {
        Band::Base => trust_domain == base,
        // Prefixes written out so that no handshake allocates; a test ties them to
        // `Band::trust_domain_name`.
        Band::Investigative => trust_domain
            .strip_prefix("investigate.")
            .is_some_and(|rest| rest == base),
        Band::Remediation => trust_domain
            .strip_prefix("remediate.")
            .is_some_and(|rest| rest == base),
    }
}

impl fmt::Display for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bands: Vec<&str> = self.bands.iter().map(|b| b.as_str()).collect();
        write!(f, "{} under {}", bands.join("|"), self.base)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::revocation::{RevocationEntry, RevocationKind};

    const NOW: i64 = 1_000;
    const INV: &str = "spiffe://investigate.example.org/agent/triage/incident/INC-1";
    const REM: &str = "spiffe://remediate.example.org/agent/fixer/incident/INC-1/grant/g1";

    fn base() -> TrustDomain {
        crate::parse_trust_domain("example.org").unwrap()
    }

    fn investigative() -> Peer {
        let mut claims = WritClaims::new(Band::Investigative);
        claims.incident = Some("INC-1".into());
        claims.scopes = vec!["logs:read".into(), "metrics:read".into()];
        Peer {
            spiffe_id: crate::parse_spiffe_id(INV).unwrap(),
            claims: Some(claims),
            serial: Some("4a".into()),
            expires_at: NOW + 300,
            authority: Authority::Unknown,
        }
    }

    fn remediation() -> Peer {
        let mut claims = WritClaims::new(Band::Remediation);
        claims.incident = Some("INC-1".into());
        claims.grant = Some("g1".into());
        claims.scopes = vec!["deploy:restart".into()];
        claims.plan_digest = Some(plan_digest(b"restart checkout\n"));
        claims.targets = vec!["deploy/checkout".into()];
        claims.tenant = Some("acme".into());
        Peer {
            spiffe_id: crate::parse_spiffe_id(REM).unwrap(),
            claims: Some(claims),
            serial: Some("4b".into()),
            expires_at: NOW + 300,
            authority: Authority::Unknown,
        }
    }

    fn service() -> Peer {
        Peer {
            spiffe_id: crate::parse_spiffe_id("spiffe://example.org/service/ops-api").unwrap(),
            claims: None,
            serial: Some("4c".into()),
            expires_at: NOW + 300,
            authority: Authority::Unknown,
        }
    }

    fn nothing() -> RevocationSnapshot {
        RevocationSnapshot::empty()
    }

    fn deny(a: &Authorizer, p: &Peer) -> DenyReason {
        match a.decide(p, &nothing(), NOW) {
            Decision::Deny(reason) => reason,
            Decision::Allow => panic!("{a} allowed {:?}", p.spiffe_id),
        }
    }

    #[test]
    fn each_band_allows_its_own_identities_only() {
        let inv = Authorizer::investigative(&base());
        let rem = Authorizer::remediation(&base());
        let svc = Authorizer::service(&base());
        assert!(inv.decide(&investigative(), &nothing(), NOW).is_allow());
        assert!(rem.decide(&remediation(), &nothing(), NOW).is_allow());
        assert!(svc.decide(&service(), &nothing(), NOW).is_allow());
        for (a, p) in [
            (&inv, remediation()),
            (&inv, service()),
            (&rem, investigative()),
            (&rem, service()),
            (&svc, investigative()),
            (&svc, remediation()),
        ] {
            assert!(matches!(deny(a, &p), DenyReason::TrustDomain { .. }));
        }
        let both = Authorizer::new(&base(), [Band::Investigative, Band::Remediation]);
        assert!(both.decide(&investigative(), &nothing(), NOW).is_allow());
        assert!(both.decide(&remediation(), &nothing(), NOW).is_allow());
        assert!(matches!(
            deny(&both, &service()),
            DenyReason::TrustDomain { .. }
        ));
    }

    #[test]
    fn another_base_or_tenant_is_refused() {
        let mut other = investigative();
        other.spiffe_id = crate::parse_spiffe_id(
            "spiffe://investigate.acme.example.org/agent/triage/incident/INC-1",
        )
        .unwrap();
        assert!(matches!(
            deny(&Authorizer::investigative(&base()), &other),
            DenyReason::TrustDomain { .. }
        ));
        // "investigate.example.org" is not a band of base "org".
        let org = crate::parse_trust_domain("org").unwrap();
        assert!(matches!(
            deny(&Authorizer::investigative(&org), &investigative()),
            DenyReason::TrustDomain { .. }
        ));
        let acme = Authorizer::remediation(&base()).tenant("acme");
        assert!(acme.decide(&remediation(), &nothing(), NOW).is_allow());
        let globex = Authorizer::remediation(&base()).tenant("globex");
        assert!(matches!(
            deny(&globex, &remediation()),
            DenyReason::Tenant { .. }
        ));
        let no_tenant = Authorizer::investigative(&base()).tenant("acme");
        assert!(matches!(
            deny(&no_tenant, &investigative()),
            DenyReason::Tenant { found: None }
        ));
    }

    #[test]
    fn claims_must_agree_with_the_trust_domain_and_the_id() {
        let a = Authorizer::investigative(&base());
        let mut wrong_band = investigative();
        wrong_band.claims.as_mut().unwrap().band = Some(Band::Remediation);
        assert!(matches!(
            deny(&a, &wrong_band),
            DenyReason::BandMismatch { .. }
        ));
        let mut no_claims = investigative();
        no_claims.claims = None;
        assert_eq!(deny(&a, &no_claims), DenyReason::NoClaims);
        let mut other_incident = investigative();
        other_incident.claims.as_mut().unwrap().incident = Some("INC-2".into());
        assert!(matches!(deny(&a, &other_incident), DenyReason::Shape(_)));
        let mut not_agent = investigative();
        not_agent.spiffe_id =
            crate::parse_spiffe_id("spiffe://investigate.example.org/service/x").unwrap();
        assert!(matches!(deny(&a, &not_agent), DenyReason::Shape(_)));
        let r = Authorizer::remediation(&base());
        let mut no_grant_claim = remediation();
        no_grant_claim.claims.as_mut().unwrap().grant = None;
        assert!(matches!(deny(&r, &no_grant_claim), DenyReason::Shape(_)));
        let mut grant_less_id = remediation();
        grant_less_id.spiffe_id =
            crate::parse_spiffe_id("spiffe://remediate.example.org/agent/fixer/incident/INC-1")
                .unwrap();
        assert!(matches!(deny(&r, &grant_less_id), DenyReason::Shape(_)));
        // A service SVID that carries claims must carry the base band.
        let mut svc = service();
        svc.claims = Some(WritClaims::new(Band::Investigative));
        assert!(matches!(
            deny(&Authorizer::service(&base()), &svc),
            DenyReason::BandMismatch { .. }
        ));
    }

    #[test]
    fn expired_is_refused_at_the_instant_of_expiry() {
        let a = Authorizer::investigative(&base());
        let p = investigative();
        assert!(a.decide(&p, &nothing(), p.expires_at - 1).is_allow());
        assert_eq!(
            deny_at(&a, &p, p.expires_at),
            DenyReason::Expired(p.expires_at)
        );
    }

    fn deny_at(a: &Authorizer, p: &Peer, now: i64) -> DenyReason {
        a.decide(p, &nothing(), now).into_result().unwrap_err()
    }

    #[test]
    fn identity_rules_narrow() {
        let p = investigative();
        let base = base();
        let ok = [
            Authorizer::investigative(&base).agent("triage"),
            Authorizer::investigative(&base)
                .agent("other")
                .agent("triage"),
            Authorizer::investigative(&base).incident("INC-1"),
            Authorizer::investigative(&base).scope("logs:read"),
            Authorizer::investigative(&base).scopes(["logs:read", "metrics:read"]),
            Authorizer::investigative(&base).spiffe_id(&p.spiffe_id),
        ];
        for a in &ok {
            assert!(a.decide(&p, &nothing(), NOW).is_allow(), "{a:?}");
        }
        assert_eq!(
            deny(&Authorizer::investigative(&base).agent("other"), &p),
            DenyReason::Agent("triage".into())
        );
        assert!(matches!(
            deny(&Authorizer::investigative(&base).incident("INC-2"), &p),
            DenyReason::Incident { .. }
        ));
        assert_eq!(
            deny(
                &Authorizer::investigative(&base).scopes(["logs:read", "deploy:restart"]),
                &p
            ),
            DenyReason::Scope("deploy:restart".into())
        );
        let other =
            crate::parse_spiffe_id("spiffe://investigate.example.org/agent/triage/incident/INC-9")
                .unwrap();
        assert!(matches!(
            deny(&Authorizer::investigative(&base).spiffe_id(&other), &p),
            DenyReason::SpiffeId(_)
        ));
    }

    #[test]
    fn remediation_rules_grant_plan_and_targets() {
        let p = remediation();
        let r = Authorizer::remediation(&base());
        let plan = b"restart checkout\n";
        assert!(
            r.clone()
                .grant("g1")
                .plan(plan)
                .target("deploy/checkout")
                .scope("deploy:restart")
                .decide(&p, &nothing(), NOW)
                .is_allow()
        );
        assert!(matches!(
            deny(&r.clone().grant("g2"), &p),
            DenyReason::Grant { .. }
        ));
        let mismatch = r.clone().plan(b"restart checkout and drop the db\n");
        assert_eq!(
            deny(&mismatch, &p),
            DenyReason::PlanDigest {
                found: Some(plan_digest(plan)),
                expected: plan_digest(b"restart checkout and drop the db\n"),
            }
        );
        assert_eq!(
            deny(&r.clone().target("deploy/payments"), &p),
            DenyReason::Target("deploy/payments".into())
        );
        // An investigative identity never satisfies a plan digest rule.
        let both = Authorizer::new(&base(), [Band::Investigative, Band::Remediation]).plan(plan);
        assert!(matches!(
            deny(&both, &investigative()),
            DenyReason::PlanDigest { found: None, .. }
        ));
    }

    #[test]
    fn revocation_always_applies() {
        let closed = RevocationSnapshot::new(
            7,
            [RevocationEntry {
                kind: RevocationKind::Incident,
                id: "INC-1".into(),
                trust_domain: "example.org".into(),
                revoked_at: NOW - 1,
            }],
        );
        for (a, p) in [
            (Authorizer::investigative(&base()), investigative()),
            (Authorizer::remediation(&base()), remediation()),
        ] {
            assert!(matches!(
                a.decide(&p, &closed, NOW),
                Decision::Deny(DenyReason::Revoked(_))
            ));
        }
        let grant = RevocationSnapshot::new(
            8,
            [RevocationEntry {
                kind: RevocationKind::Grant,
                id: "g1".into(),
                trust_domain: "remediate.example.org".into(),
                revoked_at: NOW - 1,
            }],
        );
        assert!(matches!(
            Authorizer::remediation(&base()).decide(&remediation(), &grant, NOW),
            Decision::Deny(DenyReason::Revoked(_))
        ));
        assert!(
            Authorizer::investigative(&base())
                .decide(&investigative(), &grant, NOW)
                .is_allow()
        );
        // A set marked unavailable (a fail-closed source whose feed is lost) refuses even
        // a peer nothing revokes; the unmarked set still allows it.
        let lost = grant.unavailable_since(NOW - 5);
        assert_eq!(
            Authorizer::investigative(&base()).decide(&investigative(), &lost, NOW),
            Decision::Deny(DenyReason::RevocationsUnavailable(NOW - 5))
        );
        assert_eq!(lost.generation(), grant.generation());
        let serial = RevocationSnapshot::new(
            9,
            [RevocationEntry {
                kind: RevocationKind::Serial,
                id: "4c".into(),
                trust_domain: String::new(),
                revoked_at: NOW - 1,
            }],
        );
        assert!(matches!(
            Authorizer::service(&base()).decide(&service(), &serial, NOW),
            Decision::Deny(DenyReason::Revoked(_))
        ));
        // A set that covers only other trust domains (a feed sent to a verifier of another
        // tenant) shows nothing about this peer: refused, not allowed.
        let elsewhere = RevocationSnapshot::empty().covering(["investigate.acme.test".to_owned()]);
        assert_eq!(
            Authorizer::investigative(&base()).decide(&investigative(), &elsewhere, NOW),
            Decision::Deny(DenyReason::NotCovered("investigate.example.org".into()))
        );
        let here = RevocationSnapshot::empty().covering(["investigate.example.org".to_owned()]);
        assert!(
            Authorizer::investigative(&base())
                .decide(&investigative(), &here, NOW)
                .is_allow()
        );
        assert!(here.covers("investigate.example.org") && !here.covers("example.org"));
        assert!(
            RevocationSnapshot::empty().covers("anything.test"),
            "no list: all"
        );
    }

    #[test]
    fn agent_paths_parse_only_whole_shapes() {
        assert_eq!(
            AgentPath::parse("/agent/a/incident/i/grant/g"),
            AgentPath {
                agent: Some("a"),
                incident: Some("i"),
                grant: Some("g")
            }
        );
        assert_eq!(
            AgentPath::parse("/agent/a/incident/i/x"),
            AgentPath::default()
        );
        assert_eq!(AgentPath::parse("/service/x"), AgentPath::default());
        for bad in [
            "/agent/a/incident",
            "/agent/a/incident/i/grant",
            "/agent/a/incident/i/grant/g/x",
            "agent/a/incident/i",
            "/agent/a/case/i",
        ] {
            assert_eq!(AgentPath::parse(bad), AgentPath::default(), "{bad}");
        }
        assert_eq!(
            AgentPath::parse("/agent/a/incident/i").grant,
            None,
            "investigative"
        );
        assert_eq!(AgentPath::parse(""), AgentPath::default());
    }

    #[test]
    fn band_prefixes_match_the_band_names() {
        for band in Band::ALL {
            let td = band.trust_domain_name("x.org");
            assert!(band_matches(band, "x.org", &td), "{band}");
            assert!(!band_matches(band, "y.org", &td), "{band}");
        }
    }

    #[test]
    fn plan_digest_is_lowercase_sha256() {
        assert_eq!(
            plan_digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
