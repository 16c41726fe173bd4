//! Who is calling the admin API, and whether their roles allow what they ask: the one
//! place an admin RPC checks roles ([`crate::policy::roles`], docs/roles.md). Also the
//! `ListOperators` RPC, which shows the same table.

use super::AdminService;
use crate::policy::Role;
use crate::policy::grant::Principal;
use crate::policy::roles::{Operation, allowed};
use crate::proto::admin as pb;
use std::collections::BTreeSet;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

/// An operator making a call.
#[derive(Debug)]
pub(super) struct Caller {
    /// The name recorded for their actions.
    pub(super) name: String,
    /// The uid they act as: the kernel's word on the local socket, the configured one over
    /// mTLS (if any).
    pub(super) uid: Option<u32>,
    /// Their roles.
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

/// How a caller with no configured name is recorded: root, or the uid running writ.
pub(super) fn caller_name(uid: u32) -> String {
    format!("uid:{uid}")
}

impl AdminService {
    /// The operator calling, if the role matrix lets them perform `operation`. Refusals
    /// are logged.
    pub(super) fn caller<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
    ) -> Result<Caller, Status> {
        let caller = self.operator(request)?;
        if allowed(&caller.roles, operation) {
            return Ok(caller);
        }
        let wanted: Vec<String> = operation
            .roles()
            .iter()
            .map(crate::policy::wire_name)
            .collect();
        tracing::warn!(operator = %caller.name, ?operation, ?wanted, "admin call refused: missing role");
        Err(Status::permission_denied(format!(
            "{} needs the role {}",
            caller.name,
            wanted.join(" or ")
        )))
    }

    /// [`AdminService::caller`] for calls that only read: the caller's name is not needed.
    pub(super) fn authorize<T>(
        &self,
        request: &Request<T>,
        operation: Operation,
    ) -> Result<(), Status> {
        self.caller(request, operation).map(|_| ())
    }

    /// Who is calling and with which roles: on the local socket, a configured operator by
    /// the kernel-reported uid, or root / the uid running writ (every role); over mTLS, the
    /// configured operator named by the verified client certificate.
    fn operator<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let operators = &self.issuer.config.operators;
        if let Some(peer) = request.extensions().get::<crate::server::tls::AdminPeer>() {
            let name = peer.operator.as_deref().ok_or_else(|| {
                Status::unauthenticated("an operator client certificate is required")
            })?;
            return match operators.iter().find(|o| o.name == name) {
                // The uid configured for them is the one they act as locally too.
                Some(o) => Ok(Caller {
                    name: o.name.clone(),
                    uid: o.uid,
                    roles: o.roles.clone(),
                }),
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
            Ok(Caller {
                name: o.name.clone(),
                uid: Some(uid),
                roles: o.roles.clone(),
            })
        } else if uid == 0 || uid == self.server_uid {
            Ok(Caller {
                name: caller_name(uid),
                uid: Some(uid),
                roles: Role::ALL.into_iter().collect(),
            })
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
        self.authorize(&request, Operation::ListOperators)?;
        let role_names = |roles: &mut dyn Iterator<Item = &Role>| -> Vec<String> {
            roles.map(crate::policy::wire_name).collect()
        };
        let mut operators: Vec<pb::Operator> = self
            .issuer
            .config
            .operators
            .iter()
            .map(|o| pb::Operator {
                name: o.name.clone(),
                uid: o.uid,
                roles: role_names(&mut o.roles.iter()),
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
