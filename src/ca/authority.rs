//! CA authorities and their rotation: prepared → active → retired.
//!
//! The arithmetic is SPIRE's: an authority is prepared (generated and published in the
//! bundle, not yet signing) once the active one has lived half its lifetime, and activated
//! when the active one has a sixth of its lifetime left. Retired authorities stay in the
//! bundle until they expire, since SVIDs they signed (clamped to their notAfter) may still
//! be in use. [`rotation_steps`] is the whole decision, pure and unit-tested.

use serde::{Deserialize, Serialize};

/// Where an authority is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityState {
    /// Published in the bundle; not yet signing.
    Prepared,
    /// Signing. At most one per trust domain.
    Active,
    /// No longer signing; published until it expires.
    Retired,
}

/// The durable description of one authority; its keys live in key files beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityRecord {
    /// Random id, unique within the trust domain (16 hex characters).
    pub id: String,
    /// Lifecycle state.
    pub state: AuthorityState,
    /// DER of the self-signed CA certificate (base64 in storage).
    #[serde(with = "b64")]
    pub cert_der: Vec<u8>,
    /// The JWT signing key's `kid`.
    pub jwt_kid: String,
    /// The JWT signing key's public point (uncompressed P-256), so that a server without
    /// the key (a signing replica, docs/ha.md) serves the same JWKS. Absent in records
    /// written before replicas existed; the root's holder fills it in at start.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub jwt_public: Option<Vec<u8>>,
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
}

impl AuthorityRecord {
    fn lifetime(&self) -> i64 {
        self.not_after - self.not_before
    }

    fn live(&self, now: i64) -> bool {
        self.not_after > now
    }
}

/// One change the rotation policy asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationStep {
    /// No usable authority: create one and activate it at once.
    Bootstrap,
    /// Create the next authority and publish it, without signing with it yet.
    Prepare,
    /// Make this prepared authority the signer; the current one retires.
    Activate(String),
    /// Drop this expired authority from the bundle and delete its keys.
    Prune(String),
}

/// What rotation should do at `now`, given a trust domain's authorities.
pub fn rotation_steps(records: &[AuthorityRecord], now: i64) -> Vec<RotationStep> {
    let mut steps: Vec<RotationStep> = records
        .iter()
        .filter(|r| !r.live(now))
        .map(|r| RotationStep::Prune(r.id.clone()))
        .collect();
    let active = records
        .iter()
        .find(|r| r.state == AuthorityState::Active && r.live(now));
    let prepared = records
        .iter()
        .filter(|r| r.state == AuthorityState::Prepared && r.live(now))
        .max_by_key(|r| r.not_after);
    match (active, prepared) {
        (None, None) => steps.push(RotationStep::Bootstrap),
        (None, Some(next)) => steps.push(RotationStep::Activate(next.id.clone())),
        (Some(current), None) => {
            if (now - current.not_before) * 2 >= current.lifetime() {
                steps.push(RotationStep::Prepare);
            }
        }
        (Some(current), Some(next)) => {
            if (current.not_after - now) * 6 <= current.lifetime() {
                steps.push(RotationStep::Activate(next.id.clone()));
            }
        }
    }
    steps
}

/// Seconds from `now` until [`rotation_steps`] would next ask for something (at least 1).
pub fn next_rotation_in(records: &[AuthorityRecord], now: i64) -> i64 {
    let prepared = records
        .iter()
        .any(|r| r.state == AuthorityState::Prepared && r.live(now));
    let mut at = i64::MAX;
    for r in records {
        at = at.min(r.not_after);
        if r.state == AuthorityState::Active {
            if prepared {
                at = at.min(r.not_after - r.lifetime() / 6);
            } else {
                at = at.min(r.not_before + (r.lifetime() + 1) / 2);
            }
        }
    }
    (at - now).max(1)
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => s.serialize_str(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, state: AuthorityState, nb: i64, na: i64) -> AuthorityRecord {
        AuthorityRecord {
            id: id.into(),
            state,
            cert_der: vec![],
            jwt_kid: id.into(),
            jwt_public: None,
            not_before: nb,
            not_after: na,
        }
    }

    use AuthorityState::*;

    #[test]
    fn empty_trust_domain_bootstraps() {
        assert_eq!(rotation_steps(&[], 0), [RotationStep::Bootstrap]);
    }

    #[test]
    fn prepares_at_half_life_not_before() {
        let a = [rec("a", Active, 0, 600)];
        assert!(rotation_steps(&a, 299).is_empty());
        assert_eq!(rotation_steps(&a, 300), [RotationStep::Prepare]);
        assert_eq!(next_rotation_in(&a, 0), 300);
    }

    #[test]
    fn activates_when_a_sixth_remains() {
        let a = [rec("a", Active, 0, 600), rec("b", Prepared, 300, 900)];
        assert!(rotation_steps(&a, 499).is_empty());
        assert_eq!(
            rotation_steps(&a, 500),
            [RotationStep::Activate("b".into())]
        );
        assert_eq!(next_rotation_in(&a, 301), 199);
    }

    #[test]
    fn retired_authorities_are_pruned_only_after_expiry() {
        let a = [rec("a", Retired, 0, 600), rec("b", Active, 300, 900)];
        assert!(rotation_steps(&a, 599).is_empty());
        assert_eq!(
            rotation_steps(&a, 600),
            [RotationStep::Prune("a".into()), RotationStep::Prepare]
        );
    }

    #[test]
    fn expired_active_with_prepared_activates_it() {
        let a = [rec("a", Active, 0, 600), rec("b", Prepared, 300, 900)];
        assert_eq!(
            rotation_steps(&a, 650),
            [
                RotationStep::Prune("a".into()),
                RotationStep::Activate("b".into())
            ]
        );
    }

    #[test]
    fn long_downtime_bootstraps_a_fresh_authority() {
        let a = [rec("a", Active, 0, 600), rec("b", Prepared, 300, 900)];
        assert_eq!(
            rotation_steps(&a, 1000),
            [
                RotationStep::Prune("a".into()),
                RotationStep::Prune("b".into()),
                RotationStep::Bootstrap
            ]
        );
    }
}
