//! gRPC statuses for the issuer's errors: one mapping per error type, shared by the admin
//! and node APIs, so an error reads the same whichever API returns it.
//!
//! The caller's mistakes carry their reason: `InvalidArgument` for bad input,
//! `PermissionDenied` for no entitlement, `FailedPrecondition` for the wrong state,
//! `NotFound`/`AlreadyExists`/`ResourceExhausted` as named. What the server cannot do now
//! (no active authority, an audit log that cannot record) is `Unavailable`. The server's
//! own faults are logged here with their detail and reported as `Internal` with a generic
//! message: store paths and database errors never reach a caller.

use super::IssueError;
use super::registry::RegistryError;
use crate::audit::AuditError;
use crate::ca::CaError;
use crate::policy::playbook::PlaybookError;
use crate::policy::{GrantError, PolicyError, SerialError};
use crate::store::StoreError;
use tonic::Status;

/// What a caller is told of a fault of the server's own.
const INTERNAL: &str = "internal error; see the server log";

/// A fault of the server's own: logged with its detail, reported generically.
pub(crate) fn internal(error: impl std::fmt::Display) -> Status {
    tracing::error!(error = %error, "request failed");
    Status::internal(INTERNAL)
}

impl From<CaError> for Status {
    fn from(error: CaError) -> Status {
        if error.is_invalid_argument() {
            return Status::invalid_argument(error.to_string());
        }
        match error {
            // The server cannot sign now; a rotation or restart will mend it.
            CaError::NoAuthority(_) => Status::unavailable(error.to_string()),
            // A signing replica: another server can sign this.
            CaError::RootsElsewhere(_) => Status::unavailable(error.to_string()),
            CaError::Authority {
                error: crate::ca::AuthorityError::NotFound(_),
                ..
            } => Status::not_found(error.to_string()),
            CaError::Authority { .. } => Status::failed_precondition(error.to_string()),
            other => internal(other),
        }
    }
}

impl From<AuditError> for Status {
    fn from(error: AuditError) -> Status {
        match error {
            // Records the server composes itself: a fault of its own.
            AuditError::TooLarge(_) | AuditError::Invalid(_) => internal(error),
            // The log cannot record now, so nothing was done; the caller may retry.
            other => {
                tracing::error!(error = %other, "the audit log cannot record");
                Status::unavailable("the audit log cannot record now; nothing was done")
            }
        }
    }
}

impl From<crate::backup::BackupError> for Status {
    fn from(error: crate::backup::BackupError) -> Status {
        match error {
            // The passphrase or recipients the caller gave: their mistake, said without
            // the passphrase.
            crate::backup::BackupError::Encryption(_) => {
                Status::invalid_argument(error.to_string())
            }
            other => internal(other),
        }
    }
}

impl From<IssueError> for Status {
    fn from(error: IssueError) -> Status {
        match error {
            IssueError::Ca(e) => e.into(),
            e @ IssueError::NotEntitled(_) => Status::failed_precondition(e.to_string()),
            IssueError::NotCurrent(e) => e.into(),
            IssueError::Audit(e) => e.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Status {
        internal(error)
    }
}

impl From<PolicyError> for Status {
    fn from(error: PolicyError) -> Status {
        match error {
            // Valid input (an extension); the incident's age is what refuses it.
            e @ PolicyError::PastLifetimeCeiling { .. } => {
                Status::failed_precondition(e.to_string())
            }
            e => Status::invalid_argument(e.to_string()),
        }
    }
}

impl From<GrantError> for Status {
    fn from(error: GrantError) -> Status {
        match error {
            GrantError::Invalid(e) => Status::invalid_argument(e.to_string()),
            e @ GrantError::DigestMismatch { .. } => Status::invalid_argument(e.to_string()),
            e @ (GrantError::OwnRequest(_)
            | GrantError::SameUid { .. }
            | GrantError::NotEligible(_)) => Status::permission_denied(e.to_string()),
            e @ (GrantError::IncidentClosed(_)
            | GrantError::NotPending { .. }
            | GrantError::Ended { .. }
            | GrantError::AlreadyApproved(_)) => Status::failed_precondition(e.to_string()),
        }
    }
}

impl From<PlaybookError> for Status {
    fn from(error: PlaybookError) -> Status {
        match error {
            e @ (PlaybookError::Invalid(_)
            | PlaybookError::BadField(_)
            | PlaybookError::DigestMismatch { .. }
            | PlaybookError::NoTargets(_)) => Status::invalid_argument(e.to_string()),
            e @ (PlaybookError::OwnPlaybook(_)
            | PlaybookError::NotEligible(_)
            | PlaybookError::OutOfBounds(_)) => Status::permission_denied(e.to_string()),
            e @ (PlaybookError::NotPending { .. }
            | PlaybookError::NotApproved { .. }
            | PlaybookError::AlreadyRetired(_)
            | PlaybookError::AlreadyApproved(_)
            | PlaybookError::IncidentClosed(_)
            | PlaybookError::AlreadyActive { .. }) => Status::failed_precondition(e.to_string()),
        }
    }
}

impl From<SerialError> for Status {
    fn from(error: SerialError) -> Status {
        match error {
            e @ SerialError::Malformed(_) => Status::invalid_argument(e.to_string()),
            e @ (SerialError::AlreadyRevoked(_) | SerialError::Expired { .. }) => {
                Status::failed_precondition(e.to_string())
            }
        }
    }
}

impl From<RegistryError> for Status {
    fn from(error: RegistryError) -> Status {
        match error {
            RegistryError::Ca(e) => e.into(),
            RegistryError::Invalid(e) => e.into(),
            RegistryError::Grant(e) => e.into(),
            RegistryError::Playbook(e) => e.into(),
            RegistryError::Serial(e) => e.into(),
            RegistryError::Store(e) => e.into(),
            RegistryError::Audit(e) => e.into(),
            e @ RegistryError::RateLimited(_) => Status::resource_exhausted(e.to_string()),
            e @ RegistryError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
            e @ RegistryError::NotFound { .. } => Status::not_found(e.to_string()),
            e @ (RegistryError::AlreadyClosed(_) | RegistryError::TenantDisabled(_)) => {
                Status::failed_precondition(e.to_string())
            }
            e @ RegistryError::NoRandomness => internal(e),
            e @ RegistryError::NotCurrent => Status::unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tonic::Code;

    /// Every case: the code, and that no detail of a server fault reaches the caller.
    fn check(cases: Vec<(Status, Code)>) {
        for (i, (status, code)) in cases.into_iter().enumerate() {
            assert_eq!(status.code(), code, "case {i}: {status:?}");
            assert!(
                !status.message().contains("/secret/path"),
                "case {i} leaks: {status:?}"
            );
        }
    }

    #[test]
    fn ca_errors_bad_input_is_invalid_no_authority_unavailable_faults_internal() {
        let io = std::io::Error::other("disk");
        check(vec![
            (CaError::BadTtl("0s".into()).into(), Code::InvalidArgument),
            (CaError::BadCsr("junk".into()).into(), Code::InvalidArgument),
            (
                CaError::NoAuthority("example.org".into()).into(),
                Code::Unavailable,
            ),
            (
                CaError::from(StoreError::Db("/secret/path".into())).into(),
                Code::Internal,
            ),
            (
                CaError::Io("/secret/path".into(), io).into(),
                Code::Internal,
            ),
            (CaError::Crypto("/secret/path").into(), Code::Internal),
        ]);
    }

    #[test]
    fn issue_errors_map_through_their_causes() {
        check(vec![
            (
                IssueError::NotEntitled("spiffe://example.org/x".into()).into(),
                Code::FailedPrecondition,
            ),
            (
                IssueError::Ca(CaError::NoAuthority("example.org".into())).into(),
                Code::Unavailable,
            ),
            (
                IssueError::Ca(CaError::BadRequest("r".into())).into(),
                Code::InvalidArgument,
            ),
            (
                IssueError::Audit(AuditError::Store("/secret/path".into())).into(),
                Code::Unavailable,
            ),
        ]);
    }

    #[test]
    fn audit_faults_say_nothing_was_done_and_keep_their_detail() {
        let status = Status::from(AuditError::Unavailable("/secret/path".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("nothing was done"), "{status:?}");
        check(vec![
            (status, Code::Unavailable),
            (AuditError::TooLarge(1 << 30).into(), Code::Internal),
            (
                AuditError::Invalid("/secret/path".into()).into(),
                Code::Internal,
            ),
        ]);
    }

    #[test]
    fn registry_errors_map_to_codes_and_store_detail_stays_in_the_log() {
        let cases = vec![
            (
                RegistryError::Invalid(PolicyError::NoSelectors),
                Code::InvalidArgument,
            ),
            (
                RegistryError::Invalid(PolicyError::PastLifetimeCeiling {
                    id: "INC-1".into(),
                    lifetime_secs: 2,
                    ceiling_secs: 1,
                }),
                Code::FailedPrecondition,
            ),
            (
                RegistryError::AlreadyExists {
                    what: "profile",
                    name: "a".into(),
                },
                Code::AlreadyExists,
            ),
            (
                RegistryError::NotFound {
                    what: "incident",
                    name: "a".into(),
                },
                Code::NotFound,
            ),
            (
                RegistryError::AlreadyClosed("a".into()),
                Code::FailedPrecondition,
            ),
            (
                RegistryError::RateLimited("slow down".into()),
                Code::ResourceExhausted,
            ),
            (
                RegistryError::Grant(GrantError::OwnRequest("alice".into())),
                Code::PermissionDenied,
            ),
            (
                RegistryError::Grant(GrantError::DigestMismatch {
                    expected: "a".into(),
                    given: "b".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                RegistryError::Grant(GrantError::IncidentClosed("INC-1".into())),
                Code::FailedPrecondition,
            ),
            (
                RegistryError::Playbook(PlaybookError::OutOfBounds("t".into())),
                Code::PermissionDenied,
            ),
            (
                RegistryError::Playbook(PlaybookError::NoTargets("t".into())),
                Code::InvalidArgument,
            ),
            (
                RegistryError::Playbook(PlaybookError::AlreadyRetired("p".into())),
                Code::FailedPrecondition,
            ),
            (
                RegistryError::Serial(SerialError::Malformed("zz".into())),
                Code::InvalidArgument,
            ),
            (
                RegistryError::Serial(SerialError::AlreadyRevoked("40aa".into())),
                Code::FailedPrecondition,
            ),
            (
                RegistryError::Store(StoreError::Db("disk /secret/path failed".into())),
                Code::Internal,
            ),
            (
                RegistryError::Audit(AuditError::Store("/secret/path".into())),
                Code::Unavailable,
            ),
            (RegistryError::NoRandomness, Code::Internal),
        ];
        check(
            cases
                .into_iter()
                .map(|(e, code)| (Status::from(e), code))
                .collect(),
        );
    }

    #[test]
    fn playbook_errors_map_to_codes() {
        use crate::policy::playbook::PlaybookState;
        let state = PlaybookState::Pending;
        let cases = [
            (
                PlaybookError::Invalid(PolicyError::NoSelectors),
                Code::InvalidArgument,
            ),
            (PlaybookError::BadField("x".into()), Code::InvalidArgument),
            (
                PlaybookError::NoTargets("a, b".into()),
                Code::InvalidArgument,
            ),
            (
                PlaybookError::DigestMismatch {
                    expected: "a".into(),
                    given: "b".into(),
                },
                Code::InvalidArgument,
            ),
            (
                PlaybookError::OwnPlaybook("root".into()),
                Code::PermissionDenied,
            ),
            (
                PlaybookError::NotEligible("x".into()),
                Code::PermissionDenied,
            ),
            (
                PlaybookError::OutOfBounds("x".into()),
                Code::PermissionDenied,
            ),
            (
                PlaybookError::NotApproved {
                    name: "p".into(),
                    state,
                },
                Code::FailedPrecondition,
            ),
            (
                PlaybookError::NotPending {
                    name: "p".into(),
                    state,
                },
                Code::FailedPrecondition,
            ),
            (
                PlaybookError::AlreadyApproved("a".into()),
                Code::FailedPrecondition,
            ),
            (
                PlaybookError::AlreadyRetired("p".into()),
                Code::FailedPrecondition,
            ),
            (
                PlaybookError::IncidentClosed("i".into()),
                Code::FailedPrecondition,
            ),
        ];
        check(
            cases
                .into_iter()
                .map(|(e, code)| (Status::from(RegistryError::Playbook(e)), code))
                .collect(),
        );
    }
}
