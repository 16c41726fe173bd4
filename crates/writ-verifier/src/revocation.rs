//! What has been revoked: closed incidents, ended grants, single certificates
//! (docs/architecture.md, "Revocation", `writ.revocation.v1`).
//!
//! A [`RevocationSnapshot`] is an immutable set built once per feed message and looked up
//! once per handshake or request: hash sets only, so a lookup is O(1) and allocates
//! nothing. [`Revocations`] holds the current snapshot behind an [`ArcSwap`], so readers
//! never wait for the writer and the writer replaces the whole set at once (the feed
//! sends full sets, never deltas).
//!
//! Must never: answer "not revoked" from a partially applied set.

use crate::authz::{Authority, Peer};
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// What a revocation entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevocationKind {
    /// An incident: every SVID of it, investigative and remediation.
    Incident,
    /// A remediation grant: every SVID issued for it.
    Grant,
    /// One certificate, by serial number (lowercase hex).
    Serial,
    /// A tainted X.509 CA authority, by [`crate::authority_key_id`]: every certificate
    /// that chains to it, whoever made it (docs/operations.md, "A compromised CA").
    Authority,
    /// A tainted authority's JWT signing key, by `kid`: every JWT-SVID it signed.
    JwtAuthority,
}

impl fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RevocationKind::Incident => "incident",
            RevocationKind::Grant => "grant",
            RevocationKind::Serial => "serial",
            RevocationKind::Authority => "authority",
            RevocationKind::JwtAuthority => "jwt authority",
        })
    }
}

/// One entry of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationEntry {
    /// What is revoked.
    pub kind: RevocationKind,
    /// The incident id, the grant id, the lowercase hex serial, or the authority's key
    /// id or `kid`.
    pub id: String,
    /// For an incident, the base trust domain (both band trust domains under it are
    /// meant); for a grant, the remediation trust domain; for an authority, its trust
    /// domain. Serials are global.
    pub trust_domain: String,
    /// When it was revoked, seconds since the epoch.
    pub revoked_at: i64,
}

/// An immutable revocation set, built for O(1) lookups.
#[derive(Clone, Debug, Default)]
pub struct RevocationSnapshot {
    generation: u64,
    /// base trust domain → closed incidents.
    incidents: HashMap<String, HashSet<String>>,
    /// remediation trust domain → ended grants.
    grants: HashMap<String, HashSet<String>>,
    /// lowercase hex serials.
    serials: HashSet<String>,
    /// trust domain → tainted X.509 authorities (key ids).
    authorities: HashMap<String, HashSet<String>>,
    /// trust domain → tainted authorities' JWT `kid`s.
    jwt_authorities: HashMap<String, HashSet<String>>,
    len: usize,
    /// Set when the feed this set came from has been lost for longer than its source
    /// tolerates: since when (seconds since the epoch). Every peer is refused meanwhile.
    unavailable_since: Option<i64>,
    /// The trust domains the set holds every revocation of, when its feed says so
    /// (`None`: all of them). A peer of another trust domain is refused: nothing was sent
    /// that could show it revoked.
    covers: Option<HashSet<String>>,
}

/// Why a peer is revoked: the entry that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The kind of entry.
    pub kind: RevocationKind,
    /// The incident, grant or serial it names.
    pub id: String,
}

impl fmt::Display for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} is revoked", self.kind, self.id)
    }
}

impl RevocationSnapshot {
    /// The empty set (nothing revoked yet).
    pub fn empty() -> Self {
        RevocationSnapshot::default()
    }

    /// A set of `entries`, computed from policy generation `generation`.
    pub fn new(generation: u64, entries: impl IntoIterator<Item = RevocationEntry>) -> Self {
        let mut set = RevocationSnapshot {
            generation,
            ..RevocationSnapshot::default()
        };
        for entry in entries {
            let inserted = match entry.kind {
                RevocationKind::Incident => set
                    .incidents
                    .entry(entry.trust_domain)
                    .or_default()
                    .insert(entry.id),
                RevocationKind::Grant => set
                    .grants
                    .entry(entry.trust_domain)
                    .or_default()
                    .insert(entry.id),
                // Serials are compared in one canonical form.
                RevocationKind::Serial => set.serials.insert(entry.id.to_ascii_lowercase()),
                RevocationKind::Authority => set
                    .authorities
                    .entry(entry.trust_domain)
                    .or_default()
                    .insert(entry.id.to_ascii_lowercase()),
                RevocationKind::JwtAuthority => set
                    .jwt_authorities
                    .entry(entry.trust_domain)
                    .or_default()
                    .insert(entry.id),
            };
            set.len += usize::from(inserted);
        }
        set
    }

    /// This set, marked as coming from a feed lost since `since`: a source that fails
    /// closed publishes it, and [`crate::Authorizer`] then refuses every peer.
    pub fn unavailable_since(&self, since: i64) -> Self {
        RevocationSnapshot {
            unavailable_since: Some(since),
            ..self.clone()
        }
    }

    /// This set, holding the revocations of `trust_domains` only (as the feed sent it to
    /// one caller): [`crate::Authorizer`] refuses a peer of any other trust domain.
    pub fn covering(self, trust_domains: impl IntoIterator<Item = String>) -> Self {
        RevocationSnapshot {
            covers: Some(trust_domains.into_iter().collect()),
            ..self
        }
    }

    /// Whether the set holds the revocations of `trust_domain` (all do, unless the feed
    /// named what it covers).
    pub fn covers(&self, trust_domain: &str) -> bool {
        self.covers
            .as_ref()
            .is_none_or(|covered| covered.contains(trust_domain))
    }

    /// When the feed was lost, if this set is marked unavailable.
    pub fn unavailable(&self) -> Option<i64> {
        self.unavailable_since
    }

    /// The policy generation the set was computed from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many distinct entries the set holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether incident `incident` of base trust domain `base` is revoked.
    pub fn incident_revoked(&self, base: &str, incident: &str) -> bool {
        self.incidents
            .get(base)
            .is_some_and(|set| set.contains(incident))
    }

    /// Whether grant `grant` of remediation trust domain `trust_domain` is revoked.
    pub fn grant_revoked(&self, trust_domain: &str, grant: &str) -> bool {
        self.grants
            .get(trust_domain)
            .is_some_and(|set| set.contains(grant))
    }

    /// Whether the certificate with lowercase hex serial `serial` is revoked.
    pub fn serial_revoked(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }

    /// The entry that revokes `peer`, if any: its serial, its incident (by the claims and
    /// by the SPIFFE ID path, so a mismatch between them cannot hide it) in either band's
    /// trust domain, or its grant.
    pub fn check(&self, peer: &Peer) -> Option<Revoked> {
        let revoked = |kind, id: &str| {
            Some(Revoked {
                kind,
                id: id.to_owned(),
            })
        };
        if let Some(serial) = peer.serial.as_deref()
            && self.serial_revoked(serial)
        {
            return revoked(RevocationKind::Serial, serial);
        }
        if self.is_empty() {
            return None;
        }
        let td = peer.spiffe_id.trust_domain_name();
        let tainted = |by: &HashMap<String, HashSet<String>>, id: &str| {
            by.get(td).is_some_and(|ids| ids.contains(id))
        };
        match &peer.authority {
            Authority::X509(id) if tainted(&self.authorities, id) => {
                return revoked(RevocationKind::Authority, id);
            }
            Authority::Jwt(kid) if tainted(&self.jwt_authorities, kid) => {
                return revoked(RevocationKind::JwtAuthority, kid);
            }
            _ => {}
        }
        let base = base_of(td);
        let path = peer.path();
        let claims = peer.claims.as_ref();
        let incidents = [claims.and_then(|c| c.incident.as_deref()), path.incident];
        for incident in incidents.into_iter().flatten() {
            if self.incident_revoked(base, incident) {
                return revoked(RevocationKind::Incident, incident);
            }
        }
        let grants = [claims.and_then(|c| c.grant.as_deref()), path.grant];
        for grant in grants.into_iter().flatten() {
            if self.grant_revoked(td, grant) {
                return revoked(RevocationKind::Grant, grant);
            }
        }
        None
    }
}

/// The base trust domain of a band trust domain (`investigate.x` and `remediate.x` → `x`);
/// any other trust domain is its own base.
pub fn base_of(trust_domain: &str) -> &str {
    // Written out rather than built from `Band::trust_domain_name`: this runs on every
    // handshake and must not allocate. The test below ties the two together.
    for prefix in ["investigate.", "remediate."] {
        if let Some(base) = trust_domain.strip_prefix(prefix)
            && !base.is_empty()
        {
            return base;
        }
    }
    trust_domain
}

/// The current revocation set, replaced whole as the feed changes; cheap to read from
/// many threads at once.
#[derive(Debug, Default)]
pub struct Revocations {
    current: ArcSwap<RevocationSnapshot>,
}

impl Revocations {
    /// Nothing revoked yet.
    pub fn new() -> Self {
        Revocations::default()
    }

    /// The current set.
    pub fn snapshot(&self) -> Arc<RevocationSnapshot> {
        self.current.load_full()
    }

    /// Replaces the current set with `set`.
    pub fn replace(&self, set: RevocationSnapshot) {
        self.current.store(Arc::new(set));
    }

    /// Marks the current set as unavailable since `since` (fail-closed), until the next
    /// [`Revocations::replace`].
    pub fn mark_unavailable(&self, since: i64) {
        let marked = self.current.load().unavailable_since(since);
        self.current.store(Arc::new(marked));
    }

    /// The entry revoking `peer` in the current set, if any. Takes no lock.
    pub fn check(&self, peer: &Peer) -> Option<Revoked> {
        self.current.load().check(peer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::claims::{Band, WritClaims};

    fn entry(kind: RevocationKind, id: &str, td: &str) -> RevocationEntry {
        RevocationEntry {
            kind,
            id: id.into(),
            trust_domain: td.into(),
            revoked_at: 1,
        }
    }

    fn peer(id: &str, incident: Option<&str>, grant: Option<&str>, serial: &str) -> Peer {
        let mut claims = WritClaims::new(if grant.is_some() {
            Band::Remediation
        } else {
            Band::Investigative
        });
        claims.incident = incident.map(Into::into);
        claims.grant = grant.map(Into::into);
        Peer {
            spiffe_id: crate::parse_spiffe_id(id).unwrap(),
            claims: Some(claims),
            serial: Some(serial.into()),
            expires_at: i64::MAX,
            authority: Authority::X509("a1".into()),
        }
    }

    const INV: &str = "spiffe://investigate.example.org/agent/a/incident/INC-1";
    const REM: &str = "spiffe://remediate.example.org/agent/a/incident/INC-1/grant/g1";

    #[test]
    fn a_tainted_authority_revokes_what_it_signed_in_its_trust_domain_only() {
        let set = RevocationSnapshot::new(
            5,
            [
                entry(RevocationKind::Authority, "A1", "investigate.example.org"),
                entry(
                    RevocationKind::JwtAuthority,
                    "kid-1",
                    "investigate.example.org",
                ),
            ],
        );
        // Signed by the tainted CA (key ids compare in lowercase, as serials do).
        let signed = peer(INV, Some("INC-1"), None, "40");
        assert_eq!(
            set.check(&signed),
            Some(Revoked {
                kind: RevocationKind::Authority,
                id: "a1".into()
            })
        );
        // Another authority of the same trust domain, and the same key id elsewhere.
        let mut fresh = peer(INV, Some("INC-1"), None, "41");
        fresh.authority = Authority::X509("b2".into());
        assert_eq!(set.check(&fresh), None);
        let elsewhere = peer(REM, Some("INC-1"), Some("g1"), "42");
        assert_eq!(set.check(&elsewhere), None);
        // JWT-SVIDs by kid; a kid is not an X.509 key id, nor the reverse.
        let mut jwt = peer(INV, Some("INC-1"), None, "43");
        jwt.authority = Authority::Jwt("kid-1".into());
        assert_eq!(
            set.check(&jwt),
            Some(Revoked {
                kind: RevocationKind::JwtAuthority,
                id: "kid-1".into()
            })
        );
        jwt.authority = Authority::Jwt("a1".into());
        assert_eq!(set.check(&jwt), None);
    }

    #[test]
    fn an_incident_revokes_both_bands_of_its_base_only() {
        let set =
            RevocationSnapshot::new(3, [entry(RevocationKind::Incident, "INC-1", "example.org")]);
        assert_eq!((set.generation(), set.len()), (3, 1));
        let inv = peer(INV, Some("INC-1"), None, "40");
        let rem = peer(REM, Some("INC-1"), Some("g1"), "41");
        for p in [&inv, &rem] {
            assert_eq!(
                set.check(p),
                Some(Revoked {
                    kind: RevocationKind::Incident,
                    id: "INC-1".into()
                })
            );
        }
        // Same incident name under another base (another tenant) is not revoked.
        let other = peer(
            "spiffe://investigate.acme.org/agent/a/incident/INC-1",
            Some("INC-1"),
            None,
            "42",
        );
        assert_eq!(set.check(&other), None);
        let unrelated = peer(
            "spiffe://investigate.example.org/agent/a/incident/INC-2",
            Some("INC-2"),
            None,
            "43",
        );
        assert_eq!(set.check(&unrelated), None);
    }

    #[test]
    fn the_path_counts_even_when_claims_disagree() {
        let set =
            RevocationSnapshot::new(1, [entry(RevocationKind::Incident, "INC-1", "example.org")]);
        let lying = peer(INV, Some("INC-9"), None, "40");
        assert!(set.check(&lying).is_some());
    }

    #[test]
    fn a_grant_revokes_its_remediation_svids_only() {
        let set = RevocationSnapshot::new(
            1,
            [entry(RevocationKind::Grant, "g1", "remediate.example.org")],
        );
        let rem = peer(REM, Some("INC-1"), Some("g1"), "41");
        assert_eq!(set.check(&rem).unwrap().kind, RevocationKind::Grant);
        let inv = peer(INV, Some("INC-1"), None, "40");
        assert_eq!(set.check(&inv), None);
        let other_grant = peer(
            "spiffe://remediate.example.org/agent/a/incident/INC-1/grant/g2",
            Some("INC-1"),
            Some("g2"),
            "44",
        );
        assert_eq!(set.check(&other_grant), None);
    }

    #[test]
    fn a_serial_revokes_one_certificate_whatever_its_case_in_the_feed() {
        let set = RevocationSnapshot::new(1, [entry(RevocationKind::Serial, "4AbC", "")]);
        assert_eq!(
            set.check(&peer(INV, Some("INC-1"), None, "4abc"))
                .unwrap()
                .kind,
            RevocationKind::Serial
        );
        assert_eq!(set.check(&peer(INV, Some("INC-1"), None, "4abd")), None);
    }

    #[test]
    fn revocations_replace_whole_sets() {
        let live = Revocations::new();
        let inv = peer(INV, Some("INC-1"), None, "40");
        assert!(live.check(&inv).is_none());
        live.replace(RevocationSnapshot::new(
            2,
            [entry(RevocationKind::Incident, "INC-1", "example.org")],
        ));
        assert!(live.check(&inv).is_some());
        live.replace(RevocationSnapshot::new(3, []));
        assert!(live.check(&inv).is_none());
        assert_eq!(live.snapshot().generation(), 3);
    }

    #[test]
    fn base_of_strips_one_band_prefix() {
        assert_eq!(base_of("investigate.example.org"), "example.org");
        assert_eq!(base_of("remediate.example.org"), "example.org");
        assert_eq!(base_of("example.org"), "example.org");
        assert_eq!(base_of("investigate."), "investigate.");
        for band in [Band::Investigative, Band::Remediation] {
            assert_eq!(base_of(&band.trust_domain_name("x.org")), "x.org");
        }
    }
}
