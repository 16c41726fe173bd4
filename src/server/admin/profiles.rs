//! Profiles: which workloads (by selectors) are which agent, in which bands, with which
//! scopes. Created, read and deleted by operators.

use super::AdminService;
use super::call::{bounded, name_arg};
use crate::policy::roles::{Operation, check_profile, operator_uids};
use crate::policy::{PolicyError, Profile, Selector};
use crate::proto::admin as pb;
use crate::server::registry::RegistryError;
use std::collections::BTreeSet;
use tonic::{Request, Response, Status};
use writ_verifier::Band;

/// Parses a profile request; the registry checks the whole object again.
fn parse_profile(
    tenant: &str,
    body: pb::CreateProfileRequest,
    now: i64,
) -> Result<Profile, Status> {
    bounded("selectors", &body.selectors)?;
    bounded("bands", &body.bands)?;
    bounded("scopes", &body.scopes)?;
    let selectors = body
        .selectors
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(PolicyError::from)?;
    let mut bands = body
        .bands
        .iter()
        .map(|b| {
            b.parse::<Band>().map_err(|_| {
                let b: String = b.chars().take(32).collect();
                PolicyError::BadBands(format!(
                    "unknown band {b:?} (use investigative, remediation, or base for a service)"
                ))
            })
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    if bands.is_empty() {
        // Advisory-only by default; a service holds only its standing base identity.
        bands.insert(if body.service {
            Band::Base
        } else {
            Band::Investigative
        });
    }
    let profile = Profile {
        tenant: tenant.to_owned(),
        name: body.name,
        selectors,
        bands,
        scopes: body.scopes.into_iter().collect(),
        service: body.service,
        created_at: now,
    };
    profile.validate()?;
    Ok(profile)
}

/// A profile as the API shows it.
fn profile_to_proto(profile: &Profile) -> pb::Profile {
    pb::Profile {
        name: profile.name.clone(),
        selectors: profile.selectors.iter().map(ToString::to_string).collect(),
        bands: profile.bands.iter().map(ToString::to_string).collect(),
        scopes: profile.scopes.iter().cloned().collect(),
        service: profile.service,
        created_at: profile.created_at,
    }
}

impl AdminService {
    pub(super) async fn create_profile_rpc(
        &self,
        request: Request<pb::CreateProfileRequest>,
    ) -> Result<Response<pb::CreateProfileResponse>, Status> {
        let server_uid = self.server_uid;
        let profile = self
            .call(
                request,
                Operation::ManageProfiles,
                move |issuer, caller, body| {
                    let profile = parse_profile(&caller.tenant, body, issuer.cas.now())?;
                    // Operators and workloads are different people: a profile may not make
                    // an operator's uid an agent (docs/roles.md), save in the one-user demo.
                    let operator_uids = operator_uids(&issuer.config.operators, server_uid);
                    match check_profile(&profile, &operator_uids, crate::passwd::uid_of) {
                        Err(e) if issuer.config.remediation.demo_single_user => {
                            tracing::warn!(%e, "accepted for the one-user demo (writ dev --demo-single-user)");
                        }
                        checked => checked?,
                    }
                    Ok(issuer.registry.create_profile(profile, &caller.name)?)
                },
                |caller, profile| {
                    tracing::info!(
                        profile = %profile.name,
                        service = profile.service,
                        by = %caller.name,
                        "profile created"
                    );
                },
            )
            .await?;
        Ok(Response::new(pb::CreateProfileResponse {
            profile: Some(profile_to_proto(&profile)),
        }))
    }

    pub(super) async fn list_profiles_rpc(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        let tenant = self.authorize(&request, Operation::ReadProfiles)?;
        let policy = self.issuer.registry.snapshot();
        Ok(Response::new(pb::ListProfilesResponse {
            profiles: policy
                .profiles
                .values()
                .filter(|p| p.tenant == tenant)
                .map(profile_to_proto)
                .collect(),
        }))
    }

    pub(super) async fn get_profile_rpc(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let tenant = self.authorize(&request, Operation::ReadProfiles)?;
        let name = request.into_inner().name;
        name_arg("profile", &name)?;
        let policy = self.issuer.registry.snapshot();
        let profile = policy
            .profile(&tenant, &name)
            .ok_or(RegistryError::NotFound {
                what: "profile",
                name,
            })?;
        Ok(Response::new(pb::GetProfileResponse {
            profile: Some(profile_to_proto(profile)),
        }))
    }

    pub(super) async fn delete_profile_rpc(
        &self,
        request: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        let profile = self
            .call(
                request,
                Operation::ManageProfiles,
                |issuer, caller, body| {
                    name_arg("profile", &body.name)?;
                    Ok(issuer
                        .registry
                        .delete_profile(&caller.tenant, &body.name, &caller.name)?)
                },
                |caller, profile| {
                    tracing::info!(profile = %profile.name, by = %caller.name, "profile deleted");
                },
            )
            .await?;
        Ok(Response::new(pb::DeleteProfileResponse {
            profile: Some(profile_to_proto(&profile)),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::MAX_ITEMS;
    use tonic::Code;

    fn profile_request(
        selectors: &[&str],
        bands: &[&str],
        service: bool,
    ) -> pb::CreateProfileRequest {
        pb::CreateProfileRequest {
            name: "triage".into(),
            selectors: selectors.iter().map(|s| s.to_string()).collect(),
            bands: bands.iter().map(|s| s.to_string()).collect(),
            scopes: vec!["logs:read".into()],
            service,
        }
    }

    #[test]
    fn profiles_default_to_the_investigative_band_and_services_to_base() {
        let agent = parse_profile(
            "default",
            profile_request(&["unix:uid:1001"], &[], false),
            7,
        )
        .unwrap();
        assert_eq!(agent.bands, BTreeSet::from([Band::Investigative]));
        assert_eq!(agent.created_at, 7);
        let service =
            parse_profile("default", profile_request(&["unix:uid:1001"], &[], true), 7).unwrap();
        assert_eq!(service.bands, BTreeSet::from([Band::Base]));
        let both = parse_profile(
            "default",
            profile_request(&["unix:uid:1001"], &["investigative", "remediation"], false),
            7,
        )
        .unwrap();
        assert_eq!(both.bands.len(), 2);
    }

    #[test]
    fn bad_profile_fields_are_invalid_arguments() {
        for request in [
            profile_request(&["uid:1001"], &[], false),
            profile_request(&["unix:uid:abc"], &[], false),
            profile_request(&[], &[], false),
            profile_request(&["unix:uid:1"], &["nope"], false),
            profile_request(&["unix:uid:1"], &["base"], false),
            profile_request(&["unix:uid:1"], &["remediation"], true),
            profile_request(&["unix:uid:1"; MAX_ITEMS + 1], &[], false),
        ] {
            let status = parse_profile("default", request, 0).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        }
    }
}
