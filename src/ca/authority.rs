//! CA authorities and their rotation: prepared → active → retired.
//!
//! The arithmetic is SPIRE's: an authority is prepared (generated and published in the
//! bundle, not yet signing) once the active one has lived half its lifetime, and activated
//! when the active one has a sixth of its lifetime left. Retired authorities stay in the
//! bundle until they expire, since SVIDs they signed (clamped to their notAfter) may still
//! be in use. [`rotation_steps`] is the whole decision, pure and unit-tested.
//!
//! An authority whose key may be compromised is *tainted* ([`taint_steps`]): if it signs,
//! another takes over at once; it never signs again, verifiers that watch writ's
//! revocation feed refuse what chains to it, and agents re-issue what it signed. Once
//! tainted it may be *revoked* ([`revoke_steps`]): it leaves the bundle
//! (docs/operations.md, "A compromised CA").

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
    /// When it was tainted (`writ authority taint`), seconds since the epoch. Left out
    /// when it was not, so that untainted records stay readable by older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tainted_at: Option<i64>,
}

impl AuthorityRecord {
    /// Whether it was tainted.
    pub fn tainted(&self) -> bool {
        self.tainted_at.is_some()
    }

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
    /// Drop this authority from the bundle and delete its keys: expired, or revoked.
    Prune(String),
    /// Mark this authority tainted: it never signs again.
    Taint(String),
}

/// Why an operator's taint or revoke was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// No authority has this id (or, with none given, none is active or tainted).
    #[error("{0}")]
    NotFound(String),
    /// The change makes no sense for this authority.
    #[error("{0}")]
    Refused(String),
}

/// The authority an operator names, or by default the one `default` picks.
fn named<'a>(
    records: &'a [AuthorityRecord],
    id: Option<&str>,
    default: impl Fn(&AuthorityRecord) -> bool,
    what: &str,
) -> Result<&'a AuthorityRecord, AuthorityError> {
    match id {
        Some(id) => records
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| AuthorityError::NotFound(format!("no authority {id}"))),
        None => {
            let mut found = records.iter().filter(|r| default(r));
            match (found.next(), found.next()) {
                (Some(one), None) => Ok(one),
                (None, _) => Err(AuthorityError::NotFound(format!("no {what} authority"))),
                (Some(_), Some(_)) => Err(AuthorityError::Refused(format!(
                    "several {what} authorities: name one with --id"
                ))),
            }
        }
    }
}

/// What tainting authority `id` (by default the active one) asks for at `now`: if it
/// signs, the newest live untainted prepared authority takes over (it is already in
/// every bundle, so what it signs verifies everywhere at once), or a new one is made;
/// then the authority is marked tainted. Refused for an expired authority (it leaves
/// the bundle by itself) and one already tainted.
pub fn taint_steps(
    records: &[AuthorityRecord],
    id: Option<&str>,
    now: i64,
) -> Result<Vec<RotationStep>, AuthorityError> {
    let target = named(
        records,
        id,
        |r| r.state == AuthorityState::Active && r.live(now),
        "active",
    )?;
    if target.tainted() {
        return Err(AuthorityError::Refused(format!(
            "authority {} is already tainted",
            target.id
        )));
    }
    if !target.live(now) {
        return Err(AuthorityError::Refused(format!(
            "authority {} has expired: it leaves the bundle by itself",
            target.id
        )));
    }
    let mut steps = Vec::new();
    if target.state == AuthorityState::Active {
        let next = records
            .iter()
            .filter(|r| {
                r.state == AuthorityState::Prepared
                    && !r.tainted()
                    && r.live(now)
                    && r.id != target.id
            })
            .max_by_key(|r| r.not_after);
        steps.push(match next {
            Some(next) => RotationStep::Activate(next.id.clone()),
            None => RotationStep::Bootstrap,
        });
    }
    steps.push(RotationStep::Taint(target.id.clone()));
    Ok(steps)
}

/// What revoking authority `id` (by default the one tainted authority) asks for: it
/// leaves the bundle, and its keys are deleted. Only a tainted authority may be revoked:
/// tainting is what moved its holders to another authority first.
pub fn revoke_steps(
    records: &[AuthorityRecord],
    id: Option<&str>,
) -> Result<Vec<RotationStep>, AuthorityError> {
    let target = named(records, id, AuthorityRecord::tainted, "tainted")?;
    if !target.tainted() {
        return Err(AuthorityError::Refused(format!(
            "authority {} is not tainted: taint it first (`writ authority taint --id {}`), so \
             that what it signed is re-issued before it leaves the bundle",
            target.id, target.id
        )));
    }
    Ok(vec![RotationStep::Prune(target.id.clone())])
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
        .find(|r| r.state == AuthorityState::Active && r.live(now) && !r.tainted());
    // A tainted prepared authority never signs: as if there were none.
    let prepared = records
        .iter()
        .filter(|r| r.state == AuthorityState::Prepared && r.live(now) && !r.tainted())
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
        .any(|r| r.state == AuthorityState::Prepared && r.live(now) && !r.tainted());
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
            tainted_at: None,
        }
    }

    fn tainted(mut r: AuthorityRecord) -> AuthorityRecord {
        r.tainted_at = Some(1);
        r
    }

    use AuthorityState::*;

    #[test]
    fn tainting_the_signer_hands_over_to_the_prepared_one_or_a_new_one() {
        let a = [rec("a", Active, 0, 600), rec("b", Prepared, 300, 900)];
        assert_eq!(
            taint_steps(&a, None, 400),
            Ok(vec![
                RotationStep::Activate("b".into()),
                RotationStep::Taint("a".into())
            ])
        );
        let alone = [rec("a", Active, 0, 600)];
        assert_eq!(
            taint_steps(&alone, None, 100),
            Ok(vec![
                RotationStep::Bootstrap,
                RotationStep::Taint("a".into())
            ])
        );
        // A tainted prepared authority is never handed the signing.
        let both = [
            rec("a", Active, 0, 600),
            tainted(rec("b", Prepared, 300, 900)),
        ];
        assert_eq!(
            taint_steps(&both, Some("a"), 400),
            Ok(vec![
                RotationStep::Bootstrap,
                RotationStep::Taint("a".into())
            ])
        );
        // Tainting one that does not sign changes no signer.
        assert_eq!(
            taint_steps(&a, Some("b"), 400),
            Ok(vec![RotationStep::Taint("b".into())])
        );
    }

    #[test]
    fn taint_is_refused_twice_for_the_expired_and_for_the_unknown() {
        let a = [
            tainted(rec("a", Retired, 0, 600)),
            rec("b", Active, 300, 900),
        ];
        assert!(matches!(
            taint_steps(&a, Some("a"), 400),
            Err(AuthorityError::Refused(m)) if m.contains("already tainted")
        ));
        assert!(matches!(
            taint_steps(&[rec("a", Retired, 0, 600)], Some("a"), 700),
            Err(AuthorityError::Refused(m)) if m.contains("expired")
        ));
        assert!(matches!(
            taint_steps(&a, Some("zz"), 400),
            Err(AuthorityError::NotFound(_))
        ));
        assert!(matches!(
            taint_steps(&[], None, 400),
            Err(AuthorityError::NotFound(_))
        ));
    }

    #[test]
    fn only_a_tainted_authority_is_revoked() {
        let a = [
            tainted(rec("a", Retired, 0, 600)),
            rec("b", Active, 300, 900),
        ];
        assert_eq!(
            revoke_steps(&a, None),
            Ok(vec![RotationStep::Prune("a".into())])
        );
        assert!(matches!(
            revoke_steps(&a, Some("b")),
            Err(AuthorityError::Refused(m)) if m.contains("taint it first")
        ));
        assert!(matches!(
            revoke_steps(&[rec("b", Active, 300, 900)], None),
            Err(AuthorityError::NotFound(_))
        ));
        let two = [
            tainted(rec("a", Retired, 0, 600)),
            tainted(rec("c", Prepared, 0, 600)),
            rec("b", Active, 300, 900),
        ];
        assert!(matches!(
            revoke_steps(&two, None),
            Err(AuthorityError::Refused(m)) if m.contains("--id")
        ));
    }

    #[test]
    fn rotation_never_activates_a_tainted_authority_and_prepares_a_clean_one() {
        let a = [
            rec("a", Active, 0, 600),
            tainted(rec("b", Prepared, 300, 900)),
        ];
        // Half-life passed and the only prepared one is tainted: prepare another.
        assert_eq!(rotation_steps(&a, 400), [RotationStep::Prepare]);
        assert_eq!(rotation_steps(&a, 550), [RotationStep::Prepare]);
    }

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
