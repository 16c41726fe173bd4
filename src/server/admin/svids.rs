//! Admin RPCs for issued X.509-SVIDs (docs/architecture.md, "Revocation" and "The CLI"):
//! list them with their revocation state, and revoke one by serial. The serial is parsed
//! here before anything is looked up.

use super::AdminService;
use super::call::name_arg;
use crate::policy::roles::Operation;
use crate::policy::{PolicySnapshot, Serial};
use crate::proto::admin as pb;
use crate::store::SvidRecord;
use tonic::{Request, Response, Status};

/// An issued SVID as the API shows it, with its state under `policy`.
fn svid_to_proto(record: &SvidRecord, trust_domain: String, policy: &PolicySnapshot) -> pb::Svid {
    let revoked = policy.revoked_serials.get(&record.serial);
    pb::Svid {
        serial: record.serial.clone(),
        spiffe_id: record.spiffe_id.clone(),
        band: record.band.to_string(),
        trust_domain,
        incident: record.incident.clone().unwrap_or_default(),
        grant: record.grant.clone().unwrap_or_default(),
        not_before: record.not_before,
        not_after: record.not_after,
        revoked: revoked.is_some(),
        revoked_at: revoked.map(|r| r.revoked_at),
        revoked_by: revoked.map(|r| r.revoked_by.clone()).unwrap_or_default(),
    }
}

/// The trust domain of a recorded SVID's SPIFFE ID (empty if the record is malformed).
fn trust_domain_of(record: &SvidRecord) -> String {
    writ_verifier::parse_spiffe_id(&record.spiffe_id)
        .map(|id| id.trust_domain_name().to_owned())
        .unwrap_or_default()
}

/// Whether a recorded SVID is `tenant`'s: its trust domain is one of that tenant's.
fn in_tenant(
    record: &SvidRecord,
    policy: &PolicySnapshot,
    base: &spiffe::TrustDomain,
    tenant: &str,
) -> bool {
    crate::policy::tenant_of_trust_domain(policy, base, &trust_domain_of(record))
        .is_some_and(|(t, _)| t == tenant)
}

impl AdminService {
    fn svid_proto(&self, record: &SvidRecord, policy: &PolicySnapshot) -> pb::Svid {
        svid_to_proto(record, trust_domain_of(record), policy)
    }

    pub(super) async fn list_svids_rpc(
        &self,
        request: Request<pb::ListSvidsRequest>,
    ) -> Result<Response<pb::ListSvidsResponse>, Status> {
        let (incident, tenant, mut records) = self
            .call(
                request,
                Operation::ListSvids,
                |issuer, caller, body| {
                    if !body.incident.is_empty() {
                        name_arg("incident", &body.incident)?;
                    }
                    Ok((body.incident, caller.tenant.clone(), issuer.store.svids()?))
                },
                // A read: nothing to log.
                |_, _| (),
            )
            .await?;
        // Expired certificates can be neither presented nor revoked: only live ones.
        let now = self.issuer.cas.now();
        let policy = self.issuer.registry.snapshot();
        let base = self.issuer.cas.base();
        records.retain(|r| {
            r.not_after >= now
                && (incident.is_empty() || r.incident.as_deref() == Some(&incident))
                && in_tenant(r, &policy, base, &tenant)
        });
        records.sort_by(|a, b| (a.not_before, &a.serial).cmp(&(b.not_before, &b.serial)));
        Ok(Response::new(pb::ListSvidsResponse {
            svids: records
                .iter()
                .map(|r| self.svid_proto(r, &policy))
                .collect(),
        }))
    }

    pub(super) async fn revoke_svid_rpc(
        &self,
        request: Request<pb::RevokeSvidRequest>,
    ) -> Result<Response<pb::SvidResponse>, Status> {
        let (_, record, unconfirmed_replicas) = self
            .call(
                request,
                Operation::RevokeSvid,
                |issuer, caller, body| {
                    let serial: Serial = body.serial.parse()?;
                    // Another tenant's serial is as unknown as one never issued.
                    let policy = issuer.registry.snapshot();
                    let theirs = issuer.store.svid(serial.as_str())?.is_some_and(|r| {
                        !in_tenant(&r, &policy, issuer.cas.base(), &caller.tenant)
                    });
                    if theirs {
                        return Err(crate::server::registry::RegistryError::NotFound {
                            what: "serial",
                            name: serial.to_string(),
                        }
                        .into());
                    }
                    let now = issuer.cas.now();
                    let (entry, unconfirmed) =
                        issuer
                            .registry
                            .revoke_serial_confirmed(&caller.tenant, &serial, &caller.name, now)?;
                    let record = issuer.store.svid(serial.as_str())?;
                    Ok((entry, record, unconfirmed))
                },
                |caller, (entry, _, _)| {
                    tracing::info!(serial = %entry.serial, spiffe_id = %entry.spiffe_id, by = %caller.name, not_after = entry.not_after, "svid revoked");
                },
            )
            .await?;
        let policy = self.issuer.registry.snapshot();
        let svid = record.map(|r| self.svid_proto(&r, &policy));
        Ok(Response::new(pb::SvidResponse {
            svid,
            unconfirmed_replicas,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::RevokedSerial;
    use writ_verifier::Band;

    #[test]
    fn the_proto_shows_revocation_state_and_empty_strings_for_absent_bindings() {
        let record = SvidRecord {
            serial: "40aa".into(),
            spiffe_id: "spiffe://example.org/service/logs".into(),
            band: Band::Base,
            authority_id: "a".into(),
            incident: None,
            grant: None,
            not_before: 1,
            not_after: 9,
        };
        let mut policy = PolicySnapshot::default();
        let live = svid_to_proto(&record, "example.org".into(), &policy);
        assert!(!live.revoked && live.revoked_at.is_none());
        assert_eq!((live.incident.as_str(), live.grant.as_str()), ("", ""));
        assert_eq!(live.band, "base");
        policy.revoked_serials.insert(
            "40aa".into(),
            RevokedSerial {
                serial: "40aa".into(),
                spiffe_id: record.spiffe_id.clone(),
                trust_domain: "example.org".into(),
                revoked_at: 5,
                revoked_by: "carol".into(),
                not_after: 9,
            },
        );
        let revoked = svid_to_proto(&record, "example.org".into(), &policy);
        assert!(revoked.revoked);
        assert_eq!(revoked.revoked_at, Some(5));
        assert_eq!(revoked.revoked_by, "carol");
    }
}
