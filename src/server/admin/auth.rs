//! Who is calling the admin API, and whether their roles allow what they ask: the one
//! place an admin RPC checks roles ([`crate::policy::roles`], docs/roles.md). Also the
//! `ListOperators` RPC, which shows the same table.

use super::AdminService;
use crate::policy::grant::Principal;
use crate::policy::roles::{Operation, allowed};
use crate::policy::{DEFAULT_TENANT, Operator, Role, check_name};
use crate::proto::admin as pb;
use std::collections::BTreeSet;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

/// The gRPC metadata key naming the tenant a call acts in (`--tenant`, `WRIT_TENANT`);
/// absent, the default tenant.
pub const TENANT_HEADER: &str = "writ-tenant";

/// An operator making a call, in one tenant.
#[derive(Debug)]
pub(super) struct Caller {
    /// The name recorded for their actions.
    pub(super) name: String,
    /// The uid they act as: the kernel's word on the local socket, the configured one over
    /// mTLS (if any).
    pub(super) uid: Option<u32>,
    /// The tenant the call acts in: everything it reads or changes is this tenant's.
    pub(super) tenant: String,
    /// Their roles in that tenant.
    roles: BTreeSet<Role>,
}

impl Caller {
    /// As grants record and compare requesters and approvers.
    pub(super) fn principal(&self) -> Principal<'_> {
        Principal {
            name: &self.name,
            uid: self.uid,
        }
    }
}

/// Who is calling, before a tenant is chosen.
enum Who<'a> {
    /// A configured operator: the roles they are given, tenant by tenant.
    Operator(&'a Operator, Option<u32>),
    /// Root or the uid running writ: every role in every tenant (it can read writ's keys).
    Host(u32),
}

impl Who<'_> {
    fn name(&self) -> String {
        match self {
            Who::Operator(o, _) => o.name.clone(),
            Who::Host(uid) => caller_name(*uid),
        }
    }

    fn uid(&self) -> Option<u32> {
        match self {
            Who::Operator(_, uid) => *uid,
            Who::Host(uid) => Some(*uid),
        }
    }

    fn roles_in(&self, tenant: &str) -> BTreeSet<Role> {
        match self {
            Who::Operator(o, _) => o.roles_in(tenant),
            Who::Host(_) => Role::ALL.into_iter().collect(),
        }
    }
}

/// How a caller with no configured name is recorded: root, or the uid running writ.
pub(super) fn caller_name(uid: u32) -> String {
    format!("uid:{uid}")
}

/// The roles that may perform `operation`, as a refusal names them (`a or b`).
fn role_names(operation: Operation) -> String {
    operation
        .roles()
        .iter()
        .map(crate::policy::wire_name)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The tenant a request names, checked before anything is looked up or echoed.
fn requested_tenant<T>(request: &Request<T>) -> Result<String, Status> {
    let Some(value) = request.metadata().get(TENANT_HEADER) else {
        return Ok(DEFAULT_TENANT.to_owned());
    };
    let tenant = value
        .to_str()
        .map_err(|_| Status::invalid_argument("the tenant name is not text"))?;
    if tenant.is_empty() {
        return Ok(DEFAULT_TENANT.to_owned());
    }
    check_name("tenant", tenant)?;
    Ok(tenant.to_owned())
}

impl AdminService {
    /// The operator calling and the tenant the call acts in, if the role matrix lets them
    /// perform `operation` there. A tenant in which the caller holds no role is refused as
    /// not found, whether it exists or not, so another tenant's name never leaks; a
    /// deployment-wide operation ([`Operation::deployment_wide`]) needs the role in the
    /// default tenant. Refusals are logged.
    pub(super) fn caller<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
    ) -> Result<Caller, Status> {
        let who = self.operator(request)?;
        // The call's span (`refusals`) names who it is from here on.
        let span = tracing::Span::current();
        span.record("operator", who.name().as_str());
        if let Some(uid) = who.uid() {
            span.record("uid", uid);
        }
        let tenant = if operation.deployment_wide() {
            DEFAULT_TENANT.to_owned()
        } else {
            requested_tenant(request)?
        };
        let roles = who.roles_in(&tenant);
        if operation.deployment_wide() && roles.is_empty() {
            // The deployment's own tenant is no secret: say what is missing.
            tracing::warn!(operator = %who.name(), ?operation, "admin call refused: no role in the default tenant");
            return Err(Status::permission_denied(format!(
                "{} needs the role {} in the default tenant (this acts on the deployment)",
                who.name(),
                role_names(operation)
            )));
        }
        let exists = tenant == DEFAULT_TENANT
            || self
                .issuer
                .registry
                .snapshot()
                .tenants
                .contains_key(&tenant);
        if roles.is_empty() || !exists {
            tracing::warn!(operator = %who.name(), tenant = ?tenant, ?operation, "admin call refused: no role in the tenant");
            return Err(Status::not_found(format!("tenant {tenant:?} not found")));
        }
        span.record("tenant", tenant.as_str());
        let caller = Caller {
            name: who.name(),
            uid: who.uid(),
            tenant,
            roles,
        };
        if allowed(&caller.roles, operation) {
            return Ok(caller);
        }
        let wanted = role_names(operation);
        tracing::warn!(operator = %caller.name, tenant = %caller.tenant, ?operation, %wanted, "admin call refused: missing role");
        Err(Status::permission_denied(format!(
            "{} needs the role {wanted}{}",
            caller.name,
            if caller.tenant == DEFAULT_TENANT {
                String::new()
            } else {
                format!(" in tenant {}", caller.tenant)
            }
        )))
    }

    /// The tenant a refused call's audit record belongs to: the one it named, if it exists
    /// and the caller holds a role there (so its auditors see what was refused in it);
    /// otherwise the default tenant, so that no name a caller sends becomes a tenant's
    /// record and no tenant learns of calls by people who are not its operators.
    pub(super) fn refusal_tenant<T>(&self, request: &Request<T>) -> String {
        let named = match requested_tenant(request) {
            Ok(tenant) if tenant != DEFAULT_TENANT => tenant,
            _ => return DEFAULT_TENANT.to_owned(),
        };
        let holds_role = self
            .operator(request)
            .is_ok_and(|who| !who.roles_in(&named).is_empty());
        let exists = self.issuer.registry.snapshot().tenants.contains_key(&named);
        if holds_role && exists {
            named
        } else {
            DEFAULT_TENANT.to_owned()
        }
    }

    /// [`AdminService::caller`] for calls that only read: returns the tenant they read.
    pub(super) fn authorize<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
    ) -> Result<String, Status> {
        self.caller(request, operation).map(|c| c.tenant)
    }

    /// Who is calling: on the local socket, a configured operator by the kernel-reported
    /// uid, or root / the uid running writ; over mTLS, the configured operator named by the
    /// verified client certificate.
    fn operator<T>(&self, request: &Request<T>) -> Result<Who<'_>, Status> {
        let operators = &self.issuer.config.operators;
        if let Some(peer) = request.extensions().get::<crate::server::tls::AdminPeer>() {
            let name = peer.operator.as_deref().ok_or_else(|| {
                Status::unauthenticated("an operator client certificate is required")
            })?;
            return match operators.iter().find(|o| o.name == name) {
                // The uid configured for them is the one they act as locally too.
                Some(o) => Ok(Who::Operator(o, o.uid)),
                None => {
                    tracing::warn!(operator = %name, "admin call refused: certificate names no configured operator");
                    Err(Status::permission_denied(format!(
                        "{name} is not a writ operator"
                    )))
                }
            };
        }
        let uid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| cred.uid())
            .ok_or_else(|| Status::permission_denied("caller credentials unavailable"))?;
        if let Some(o) = operators.iter().find(|o| o.uid == Some(uid)) {
            Ok(Who::Operator(o, Some(uid)))
        } else if uid == 0 || uid == self.server_uid {
            Ok(Who::Host(uid))
        } else {
            tracing::warn!(uid, "admin call refused: not an operator");
            Err(Status::permission_denied(format!(
                "uid {uid} is not a writ operator"
            )))
        }
    }

    /// The configured operators, and root and the uid running writ (every role) unless
    /// configured.
    pub(super) async fn list_operators_rpc(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        // The operators of the caller's tenant, with their roles there: who holds roles
        // in other tenants is those tenants' business.
        let tenant = self.authorize(&request, Operation::ListOperators)?;
        let role_names = |roles: &mut dyn Iterator<Item = &Role>| -> Vec<String> {
            roles.map(crate::policy::wire_name).collect()
        };
        let mut operators: Vec<pb::Operator> = self
            .issuer
            .config
            .operators
            .iter()
            .filter(|o| !o.roles_in(&tenant).is_empty())
            .map(|o| pb::Operator {
                name: o.name.clone(),
                uid: o.uid,
                roles: role_names(&mut o.roles_in(&tenant).iter()),
                implicit: false,
            })
            .collect();
        let mut implicit = vec![0];
        if self.server_uid != 0 {
            implicit.push(self.server_uid);
        }
        for uid in implicit {
            if !operators.iter().any(|o| o.uid == Some(uid)) {
                operators.push(pb::Operator {
                    name: caller_name(uid),
                    uid: Some(uid),
                    roles: role_names(&mut Role::ALL.iter()),
                    implicit: true,
                });
            }
        }
        Ok(Response::new(pb::ListOperatorsResponse { operators }))
    }
}
