//! The admin API (`writ.admin.v1`): minting, bundles, profiles, incidents, grants and
//! playbooks for operators.
//!
//! This file builds the service and hands each RPC to the file of its area, which parses
//! the request, converts to and from the protos, and calls the issuer:
//!
//! - `auth.rs`: who is calling and whether their roles allow it (docs/roles.md);
//! - `call.rs`: the sequence every handler shares (authorize, run off the async
//!   workers, log, map errors) and argument checks;
//! - `mint.rs`, `authorities.rs`, `nodes.rs`, `profiles.rs`, `incidents.rs`,
//!   `grants.rs`, `playbooks.rs`, `svids.rs`, `audit.rs`, `backup.rs`: the RPCs, by area;
//! - `refusals.rs`: every refused call, audited.
//!
//! Errors become statuses in one place, [`crate::server::status`]. Every field of a
//! request is parsed here, whatever the CLI already checked; the caller is identified by
//! SO_PEERCRED (or their mTLS certificate) and checked against the role matrix at every
//! RPC.

mod audit;
mod auth;
mod authorities;
mod backup;
mod call;
mod grants;
mod incidents;
mod mint;
mod nodes;
mod playbooks;
mod profiles;
pub mod refusals;
mod svids;
mod tenants;

pub use auth::TENANT_HEADER;

use super::Issuer;
use crate::proto::admin::{self as pb, admin_server::Admin, admin_server::AdminServer};
use authorities::Compromise;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The admin service.
#[derive(Debug)]
pub struct AdminService {
    issuer: Arc<Issuer>,
    /// The uid writ runs as: an operator with every role on the local socket.
    server_uid: u32,
}

/// The admin API as served: the service, its refusals audited.
pub fn server(
    issuer: Arc<Issuer>,
) -> anyhow::Result<refusals::AuditRefusals<AdminServer<AdminService>>> {
    let log = Arc::clone(&issuer.audit);
    let clock = issuer.cas.clock();
    let service = Arc::new(AdminService::new(issuer)?);
    let judge = Arc::clone(&service);
    Ok(refusals::AuditRefusals::new(
        AdminServer::from_arc(service),
        log,
        clock,
        Arc::new(move |call: &Request<()>| judge.refusal_tenant(call)),
    ))
}

impl AdminService {
    /// A service answering for `issuer`.
    pub fn new(issuer: Arc<Issuer>) -> anyhow::Result<Self> {
        // /proc/self belongs to the process's effective uid.
        let server_uid = std::fs::metadata("/proc/self")?.uid();
        Ok(AdminService { issuer, server_uid })
    }
}

/// Each RPC, handed to the file of its area.
#[tonic::async_trait]
impl Admin for AdminService {
    type ReadAuditStream = audit::AuditStream;
    type BackupStream = backup::BackupStream;

    // Backups: `backup.rs`.

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.backup_rpc(request).await
    }

    // The audit log: `audit.rs`.

    async fn read_audit(
        &self,
        request: Request<pb::ReadAuditRequest>,
    ) -> Result<Response<Self::ReadAuditStream>, Status> {
        self.read_audit_rpc(request).await
    }

    async fn get_audit_checkpoint(
        &self,
        request: Request<pb::GetAuditCheckpointRequest>,
    ) -> Result<Response<pb::AuditCheckpoint>, Status> {
        self.get_audit_checkpoint_rpc(request).await
    }

    // Operator mints: `mint.rs`.

    async fn mint_x509_svid(
        &self,
        request: Request<pb::MintX509SvidRequest>,
    ) -> Result<Response<pb::MintX509SvidResponse>, Status> {
        self.mint_x509_svid_rpc(request).await
    }

    async fn mint_jwt_svid(
        &self,
        request: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        self.mint_jwt_svid_rpc(request).await
    }

    // Bundles and CA authorities: `authorities.rs`.

    async fn get_bundles(
        &self,
        request: Request<pb::GetBundlesRequest>,
    ) -> Result<Response<pb::GetBundlesResponse>, Status> {
        self.get_bundles_rpc(request).await
    }

    async fn show_authorities(
        &self,
        request: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        self.show_authorities_rpc(request).await
    }

    async fn prepare_authority(
        &self,
        request: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        self.rotate_rpc(request, false).await
    }

    async fn activate_authority(
        &self,
        request: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        self.rotate_rpc(request, true).await
    }

    async fn taint_authority(
        &self,
        request: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        self.compromise_rpc(request, Compromise::Taint).await
    }

    async fn revoke_authority(
        &self,
        request: Request<pb::AuthorityRequest>,
    ) -> Result<Response<pb::AuthoritiesResponse>, Status> {
        self.compromise_rpc(request, Compromise::Revoke).await
    }

    async fn admit_replica(
        &self,
        request: Request<pb::AdmitReplicaRequest>,
    ) -> Result<Response<pb::AdmitReplicaResponse>, Status> {
        self.admit_replica_rpc(request).await
    }

    async fn remove_replica(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::RemoveReplicaResponse>, Status> {
        self.remove_replica_rpc(request).await
    }

    async fn list_replica_keys(
        &self,
        request: Request<pb::ListReplicaKeysRequest>,
    ) -> Result<Response<pb::ListReplicaKeysResponse>, Status> {
        self.list_replica_keys_rpc(request).await
    }

    // Operators: `auth.rs`.

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        self.list_operators_rpc(request).await
    }

    // Tenants: `tenants.rs`.

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        self.create_tenant_rpc(request).await
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        self.list_tenants_rpc(request).await
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::TenantResponse>, Status> {
        self.get_tenant_rpc(request).await
    }

    async fn disable_tenant(
        &self,
        request: Request<pb::DisableTenantRequest>,
    ) -> Result<Response<pb::DisableTenantResponse>, Status> {
        self.disable_tenant_rpc(request).await
    }

    // Nodes and the server itself: `nodes.rs`.

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        self.create_join_token_rpc(request).await
    }

    async fn health(
        &self,
        request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        self.health_rpc(request).await
    }

    // Profiles: `profiles.rs`.

    async fn create_profile(
        &self,
        request: Request<pb::CreateProfileRequest>,
    ) -> Result<Response<pb::CreateProfileResponse>, Status> {
        self.create_profile_rpc(request).await
    }

    async fn list_profiles(
        &self,
        request: Request<pb::ListProfilesRequest>,
    ) -> Result<Response<pb::ListProfilesResponse>, Status> {
        self.list_profiles_rpc(request).await
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        self.get_profile_rpc(request).await
    }

    async fn delete_profile(
        &self,
        request: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        self.delete_profile_rpc(request).await
    }

    // Incidents: `incidents.rs`.

    async fn open_incident(
        &self,
        request: Request<pb::OpenIncidentRequest>,
    ) -> Result<Response<pb::OpenIncidentResponse>, Status> {
        self.open_incident_rpc(request).await
    }

    async fn close_incident(
        &self,
        request: Request<pb::CloseIncidentRequest>,
    ) -> Result<Response<pb::CloseIncidentResponse>, Status> {
        self.close_incident_rpc(request).await
    }

    async fn extend_incident(
        &self,
        request: Request<pb::ExtendIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        self.extend_incident_rpc(request).await
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        self.list_incidents_rpc(request).await
    }

    async fn get_incident(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        self.get_incident_rpc(request).await
    }

    // Remediation grants: `grants.rs`.

    async fn request_grant(
        &self,
        request: Request<pb::RequestGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.request_grant_rpc(request).await
    }

    async fn approve_grant(
        &self,
        request: Request<pb::ApproveGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.approve_grant_rpc(request).await
    }

    async fn deny_grant(
        &self,
        request: Request<pb::EndGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.end_grant_rpc(request, crate::policy::GrantState::Denied)
            .await
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::EndGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.end_grant_rpc(request, crate::policy::GrantState::Revoked)
            .await
    }

    async fn get_grant(
        &self,
        request: Request<pb::GetGrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.get_grant_rpc(request).await
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        self.list_grants_rpc(request).await
    }

    // Guardrail playbooks: `playbooks.rs`.

    async fn create_playbook(
        &self,
        request: Request<pb::CreatePlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        self.create_playbook_rpc(request).await
    }

    async fn approve_playbook(
        &self,
        request: Request<pb::ApprovePlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        self.approve_playbook_rpc(request).await
    }

    async fn list_playbooks(
        &self,
        request: Request<pb::ListPlaybooksRequest>,
    ) -> Result<Response<pb::ListPlaybooksResponse>, Status> {
        self.list_playbooks_rpc(request).await
    }

    async fn get_playbook(
        &self,
        request: Request<pb::GetPlaybookRequest>,
    ) -> Result<Response<pb::PlaybookResponse>, Status> {
        self.get_playbook_rpc(request).await
    }

    async fn retire_playbook(
        &self,
        request: Request<pb::RetirePlaybookRequest>,
    ) -> Result<Response<pb::RetirePlaybookResponse>, Status> {
        self.retire_playbook_rpc(request).await
    }

    async fn activate_playbook(
        &self,
        request: Request<pb::ActivatePlaybookRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        self.activate_playbook_rpc(request).await
    }

    // Issued SVIDs: `svids.rs`.

    async fn list_svids(
        &self,
        request: Request<pb::ListSvidsRequest>,
    ) -> Result<Response<pb::ListSvidsResponse>, Status> {
        self.list_svids_rpc(request).await
    }

    async fn revoke_svid(
        &self,
        request: Request<pb::RevokeSvidRequest>,
    ) -> Result<Response<pb::SvidResponse>, Status> {
        self.revoke_svid_rpc(request).await
    }
}
