//! Tenants (docs/multi-tenant.md): created with their own base trust domain and band CAs,
//! listed, disabled for good. These act on the deployment, not in one tenant
//! ([`Operation::deployment_wide`]).

use super::AdminService;
use super::call::name_arg;
use crate::policy::roles::Operation;
use crate::policy::{Tenant, TenantState};
use crate::proto::admin as pb;
use crate::server::registry::RegistryError;
use tonic::{Request, Response, Status};
use writ_verifier::Band;

/// A tenant as the API shows it.
fn tenant_to_proto(tenant: &Tenant) -> pb::Tenant {
    pb::Tenant {
        name: tenant.name.clone(),
        trust_domain: tenant.base.clone(),
        state: crate::policy::wire_name(&tenant.state),
        created_by: tenant.created_by.clone(),
        created_at: tenant.created_at,
        disabled_by: tenant.disabled_by.clone(),
        disabled_at: tenant.disabled_at,
        band_trust_domains: [Band::Investigative, Band::Remediation]
            .iter()
            .map(|b| format!("spiffe://{}", b.trust_domain_name(&tenant.base)))
            .collect(),
    }
}

impl AdminService {
    pub(super) async fn create_tenant_rpc(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        let tenant = self
            .call(
                request,
                Operation::ManageTenants,
                |issuer, caller, body| {
                    name_arg("tenant", &body.name)?;
                    let tenant = Tenant {
                        name: body.name,
                        base: body.trust_domain.chars().take(256).collect(),
                        state: TenantState::Active,
                        created_by: caller.name.clone(),
                        created_at: issuer.cas.now(),
                        disabled_by: None,
                        disabled_at: None,
                    };
                    Ok(issuer.create_tenant(tenant)?)
                },
                |caller, tenant| {
                    tracing::info!(tenant = %tenant.name, trust_domain = %tenant.base, by = %caller.name, "tenant created");
                },
            )
            .await?;
        Ok(Response::new(pb::TenantResponse {
            tenant: Some(tenant_to_proto(&tenant)),
        }))
    }

    pub(super) async fn list_tenants_rpc(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.authorize(&request, Operation::ReadDeployment)?;
        let policy = self.issuer.registry.snapshot();
        let default = Tenant::default_for(self.issuer.cas.base());
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: std::iter::once(&default)
                .chain(policy.tenants.values())
                .map(tenant_to_proto)
                .collect(),
        }))
    }

    pub(super) async fn get_tenant_rpc(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        self.authorize(&request, Operation::ReadDeployment)?;
        let name = request.into_inner().name;
        name_arg("tenant", &name)?;
        let tenant = if name == crate::policy::DEFAULT_TENANT {
            Tenant::default_for(self.issuer.cas.base())
        } else {
            self.issuer
                .registry
                .snapshot()
                .tenants
                .get(&name)
                .cloned()
                .ok_or(RegistryError::NotFound {
                    what: "tenant",
                    name,
                })?
        };
        Ok(Response::new(pb::TenantResponse {
            tenant: Some(tenant_to_proto(&tenant)),
        }))
    }

    pub(super) async fn disable_tenant_rpc(
        &self,
        request: Request<pb::DisableTenantRequest>,
    ) -> Result<Response<pb::DisableTenantResponse>, Status> {
        let (tenant, closed) = self
            .call(
                request,
                Operation::ManageTenants,
                |issuer, caller, body| {
                    name_arg("tenant", &body.name)?;
                    if body.name == crate::policy::DEFAULT_TENANT {
                        return Err(Status::failed_precondition(
                            "the default tenant is the deployment's own and cannot be disabled",
                        ));
                    }
                    let now = issuer.cas.now();
                    Ok(issuer
                        .registry
                        .disable_tenant(&body.name, &caller.name, now)?)
                },
                |caller, (tenant, closed)| {
                    tracing::info!(tenant = %tenant.name, by = %caller.name, closed = closed.len(), "tenant disabled");
                },
            )
            .await?;
        Ok(Response::new(pb::DisableTenantResponse {
            tenant: Some(tenant_to_proto(&tenant)),
            closed_incidents: closed.into_iter().map(|i| i.id).collect(),
        }))
    }
}
