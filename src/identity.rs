//! How writ names things as SPIFFE IDs (DESIGN.md §3).
//!
//! * investigative: `spiffe://investigate.<base>/agent/<agent>/incident/<incident>`
//! * remediation:  `spiffe://remediate.<base>/agent/<agent>/incident/<incident>/grant/<grant>`
//!
//! Names become single path segments, so they are held to the SPIFFE segment charset
//! (`[A-Za-z0-9._-]`, not `.` or `..`); the `spiffe` crate enforces it.

use crate::ca::CaError;
use spiffe::{SpiffeId, TrustDomain};
use writ_verifier::Band;

/// The SPIFFE ID of `agent` working `incident` in `band` (with `grant` in remediation).
pub fn agent_spiffe_id(
    base: &TrustDomain,
    band: Band,
    agent: &str,
    incident: &str,
    grant: Option<&str>,
) -> Result<SpiffeId, CaError> {
    let bad = |reason: String| CaError::BadSpiffeId {
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
        assert!(agent_spiffe_id(&base, Band::Remediation, "a", "i", None).is_err());
        assert!(agent_spiffe_id(&base, Band::Investigative, "a", "i", Some("g")).is_err());
        assert!(agent_spiffe_id(&base, Band::Base, "a", "i", None).is_err());
    }
}
