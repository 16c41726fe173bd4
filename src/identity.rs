//! How writ names things as SPIFFE IDs (docs/architecture.md, "Identities").
//!
//! * investigative: `spiffe://investigate.<base>/agent/<agent>/incident/<incident>`
//! * remediation:  `spiffe://remediate.<base>/agent/<agent>/incident/<incident>/grant/<grant>`
//!
//! Names become single path segments, so they are held to the SPIFFE segment charset
//! (`[A-Za-z0-9._-]`, not `.` or `..`); the `spiffe` crate enforces it.

use spiffe::{SpiffeId, TrustDomain};
use writ_verifier::Band;

/// Why no agent SPIFFE ID could be built: a name is not a valid path segment, or the band
/// and the grant do not go together. Always the caller's mistake; the CA's error turns it
/// into its `BadSpiffeId` (invalid argument) with the same message. This module depends
/// on nothing of writ's, so that policy and the CA can both use it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {id:?}: {reason}")]
pub struct IdError {
    id: String,
    reason: String,
}

impl IdError {
    /// What was asked for (agent and incident, as no SPIFFE ID could be made of them).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// The SPIFFE ID of `agent` working `incident` in `band` (with `grant` in remediation).
pub fn agent_spiffe_id(
    base: &TrustDomain,
    band: Band,
    agent: &str,
    incident: &str,
    grant: Option<&str>,
) -> Result<SpiffeId, IdError> {
    let bad = |reason: String| IdError {
        id: format!("agent {agent:?} incident {incident:?}"),
        reason,
    };
    let td =
        TrustDomain::new(band.trust_domain_name(base.as_ref())).map_err(|e| bad(e.to_string()))?;
    let segments: Vec<&str> = match (band, grant) {
        (Band::Investigative, None) => vec!["agent", agent, "incident", incident],
        (Band::Investigative, Some(_)) => {
            return Err(bad("a grant belongs in the remediation band".into()));
        }
        (Band::Remediation, Some(grant)) => {
            vec!["agent", agent, "incident", incident, "grant", grant]
        }
        (Band::Remediation, None) => {
            return Err(bad("a remediation identity needs a grant".into()));
        }
        (Band::Base, _) => {
            return Err(bad(
                "agents never get a standing identity in the base trust domain".into(),
            ));
        }
    };
    SpiffeId::from_segments(td, &segments).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn derives_band_specific_ids() {
        let base = TrustDomain::new("example.org").unwrap();
        let id = agent_spiffe_id(&base, Band::Investigative, "triage", "INC-1", None).unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://investigate.example.org/agent/triage/incident/INC-1"
        );
        let id = agent_spiffe_id(&base, Band::Remediation, "triage", "INC-1", Some("g1")).unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://remediate.example.org/agent/triage/incident/INC-1/grant/g1"
        );
    }

    #[test]
    fn refuses_bad_names_and_band_mismatches() {
        let base = TrustDomain::new("example.org").unwrap();
        for (agent, incident) in [
            ("a/b", "i"),
            ("..", "i"),
            ("a", ""),
            ("a", "i%20"),
            ("a b", "i"),
        ] {
            assert!(agent_spiffe_id(&base, Band::Investigative, agent, incident, None).is_err());
        }
        let err = agent_spiffe_id(&base, Band::Remediation, "a", "i", None).unwrap_err();
        assert_eq!(err.reason(), "a remediation identity needs a grant");
        assert_eq!(err.id(), r#"agent "a" incident "i""#);
        let err = agent_spiffe_id(&base, Band::Investigative, "a", "i", Some("g")).unwrap_err();
        assert_eq!(err.reason(), "a grant belongs in the remediation band");
        let err = agent_spiffe_id(&base, Band::Base, "a", "i", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid SPIFFE ID "agent \"a\" incident \"i\"": agents never get a standing identity in the base trust domain"#
        );
    }
}
