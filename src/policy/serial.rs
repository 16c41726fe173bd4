//! Revoking one X.509-SVID by serial (docs/architecture.md, "Revocation"): the
//! revoked-serial set that is part of the policy, and the rules that add to it and prune
//! it.
//!
//! A revoked serial names one certificate, not an identity: the workload that held it is
//! still entitled to its identity and receives a fresh SVID with a new serial. An entry
//! is kept while the certificate could still be presented, that is up to and including
//! its notAfter second (RFC 5280 §4.1.2.5); after that the certificate is expired
//! anyway and the entry is pruned, so the set is bounded by the SVIDs alive now.
//!
//! Pure: inputs in, decision out. The registry stores the set; the agent and the
//! revocation feed read it from the policy snapshot.

use super::PolicySnapshot;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The longest serial RFC 5280 §4.1.2.2 allows, in octets.
const MAX_SERIAL_OCTETS: usize = 20;

/// A certificate serial number as writ writes it: lowercase hex, two digits per octet,
/// 1 to 20 octets. Parsing accepts either case and normalises to lowercase.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(String);

impl Serial {
    /// The lowercase hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Serial {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len().is_multiple_of(2)
            && s.len() <= 2 * MAX_SERIAL_OCTETS
            && s.bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(Serial(s.to_ascii_lowercase()))
        } else {
            Err(SerialError::Malformed(s.chars().take(64).collect()))
        }
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a serial could not be revoked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SerialError {
    /// Not a serial: hex digits, two per octet, at most 20 octets.
    #[error("invalid serial {0:?}: use the certificate's serial in hex (2 to 40 digits)")]
    Malformed(String),
    /// Already in the revoked set.
    #[error("serial {0} is already revoked")]
    AlreadyRevoked(String),
    /// The certificate has expired: there is nothing left to revoke.
    #[error("serial {serial} expired at {not_after} (seconds since the epoch): nothing to revoke")]
    Expired {
        /// The serial.
        serial: String,
        /// Its notAfter.
        not_after: i64,
    },
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSerial {
    /// The serial, lowercase hex.
    pub serial: String,
    /// The SPIFFE ID the certificate carries.
    pub spiffe_id: String,
    /// Its trust domain: where verifiers must refuse it.
    pub trust_domain: String,
    /// When it was revoked, seconds since the epoch.
    pub revoked_at: i64,
    /// The operator who revoked it.
    pub revoked_by: String,
    /// The certificate's notAfter, seconds since the epoch: the entry is kept until then.
    pub not_after: i64,
}

/// What is known of the certificate to revoke (from the issuer's record of it).
#[derive(Clone, Copy, Debug)]
pub struct Issued<'a> {
    /// Its serial.
    pub serial: &'a Serial,
    /// The SPIFFE ID it carries.
    pub spiffe_id: &'a spiffe::SpiffeId,
    /// Its notAfter.
    pub not_after: i64,
}

/// Whether the certificate of `entry` may still be presented at `now` (its notAfter
/// second included), so that the entry must be kept.
pub fn is_live(entry: &RevokedSerial, now: i64) -> bool {
    now <= entry.not_after
}

/// The entry that revokes `issued` at `now` by `by`. Refused when it is already revoked
/// or has expired (revoking it would change nothing).
pub fn revoke(
    policy: &PolicySnapshot,
    issued: Issued<'_>,
    by: &str,
    now: i64,
) -> Result<RevokedSerial, SerialError> {
    let serial = issued.serial.as_str();
    if policy.revoked_serials.contains_key(serial) {
        return Err(SerialError::AlreadyRevoked(serial.to_owned()));
    }
    if issued.not_after < now {
        return Err(SerialError::Expired {
            serial: serial.to_owned(),
            not_after: issued.not_after,
        });
    }
    Ok(RevokedSerial {
        serial: serial.to_owned(),
        spiffe_id: issued.spiffe_id.to_string(),
        trust_domain: issued.spiffe_id.trust_domain().to_string(),
        revoked_at: now,
        revoked_by: by.to_owned(),
        not_after: issued.not_after,
    })
}

/// The serials of `policy` whose certificates have expired by `now`: the ones to prune.
pub fn expired(policy: &PolicySnapshot, now: i64) -> Vec<String> {
    policy
        .revoked_serials
        .values()
        .filter(|r| !is_live(r, now))
        .map(|r| r.serial.clone())
        .collect()
}

/// The first instant an entry of `policy` can be pruned, if any: a second after the
/// earliest notAfter.
pub fn next_prune(policy: &PolicySnapshot) -> Option<i64> {
    policy
        .revoked_serials
        .values()
        .map(|r| r.not_after.saturating_add(1))
        .min()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id() -> spiffe::SpiffeId {
        spiffe::SpiffeId::new("spiffe://investigate.example.org/agent/triage/incident/INC-1")
            .unwrap()
    }

    fn entry(serial: &str, not_after: i64) -> RevokedSerial {
        RevokedSerial {
            serial: serial.into(),
            spiffe_id: id().to_string(),
            trust_domain: "investigate.example.org".into(),
            revoked_at: 0,
            revoked_by: "alice".into(),
            not_after,
        }
    }

    fn policy(entries: &[RevokedSerial]) -> PolicySnapshot {
        PolicySnapshot {
            revoked_serials: entries
                .iter()
                .map(|e| (e.serial.clone(), e.clone()))
                .collect(),
            ..PolicySnapshot::default()
        }
    }

    #[test]
    fn serials_are_hex_octets_normalised_to_lowercase() {
        let s: Serial = "4A0bFF".parse().unwrap();
        assert_eq!(s.as_str(), "4a0bff");
        assert_eq!(s.to_string().parse::<Serial>().unwrap(), s);
        assert!("ab".repeat(20).parse::<Serial>().is_ok());
        for bad in [
            "",
            "a",
            "abc",
            "zz",
            "0x12",
            "12 34",
            "12:34",
            &"ab".repeat(21),
        ] {
            assert!(
                matches!(bad.parse::<Serial>(), Err(SerialError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn revoking_records_the_trust_domain_and_refuses_twice_or_expired() {
        let serial: Serial = "40aa".parse().unwrap();
        let issued = Issued {
            serial: &serial,
            spiffe_id: &id(),
            not_after: 100,
        };
        let r = revoke(&PolicySnapshot::default(), issued, "alice", 100).unwrap();
        assert_eq!(r.trust_domain, "investigate.example.org");
        assert_eq!((r.revoked_at, r.not_after), (100, 100));
        assert_eq!(r.revoked_by, "alice");
        assert_eq!(
            revoke(&policy(&[r]), issued, "bob", 50),
            Err(SerialError::AlreadyRevoked("40aa".into()))
        );
        assert!(matches!(
            revoke(&PolicySnapshot::default(), issued, "alice", 101),
            Err(SerialError::Expired { not_after: 100, .. })
        ));
    }

    #[test]
    fn entries_are_kept_through_their_not_after_second_and_pruned_after() {
        let p = policy(&[entry("01", 100), entry("02", 200)]);
        assert!(expired(&p, 100).is_empty());
        assert_eq!(next_prune(&p), Some(101));
        assert_eq!(expired(&p, 101), ["01"]);
        assert_eq!(expired(&p, 201), ["01", "02"]);
        assert_eq!(next_prune(&PolicySnapshot::default()), None);
    }
}
