//! What one audit record says, and its bytes in the log.
//!
//! A record is encoded once, as compact JSON with its fields in declaration order and
//! `detail` objects with sorted keys (serde_json's default map), and those exact bytes are
//! what the Merkle tree hashes. Verification hashes the stored bytes and never re-encodes,
//! so the encoding only has to be stable for readers, not byte-canonical across versions.

use crate::policy::DEFAULT_TENANT;
use serde::{Deserialize, Serialize};

/// The largest record accepted (a record is metadata and digests, never payloads).
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A node attested to the server (join token or x509pop), or an agent served an
    /// attested workload an identity for the first time.
    Attestation,
    /// An SVID was issued.
    Issuance,
    /// An issuance was refused.
    Denial,
    /// A human approved a grant or a playbook.
    Approval,
    /// Something ended before its time: an incident closed, a grant denied or revoked,
    /// a serial revoked.
    Revocation,
    /// A policy object was created or changed.
    AdminChange,
    /// An operator's request was refused.
    Refusal,
    /// What an agent reported doing: a prompt, a tool call, evidence read, a proposed fix.
    Activity,
    /// An index a server reserved in a log several servers share and did not fill (it
    /// went idle, failed to commit, or died): the place is closed so the tree can grow
    /// past it (docs/ha.md, "The audit log"). Never stands for an event.
    Void,
}

impl Kind {
    /// The wire name (`admin_change`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Attestation => "attestation",
            Kind::Issuance => "issuance",
            Kind::Denial => "denial",
            Kind::Approval => "approval",
            Kind::Revocation => "revocation",
            Kind::AdminChange => "admin_change",
            Kind::Refusal => "refusal",
            Kind::Activity => "activity",
            Kind::Void => "void",
        }
    }
}

/// One audit record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When, in seconds since the Unix epoch (the server's clock).
    pub time: i64,
    /// What kind of event.
    pub kind: Kind,
    /// The event, dotted: `svid.issue`, `incident.close`, `grant.approve`, `activity.tool_call`.
    pub action: String,
    /// Who: an operator name, a SPIFFE ID, a node, or `writ` for the server's own timers.
    pub actor: String,
    /// The tenant it belongs to; `None` is the default tenant, so a deployment without
    /// tenants writes the bytes it always wrote (set it with [`Record::tenant`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The incident it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The SPIFFE ID it concerns (issued, denied, or acting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// The X.509-SVID serial it concerns (lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Everything else, as a JSON object: claims digest, reason, plan digest, changed
    /// objects. Never secrets: digests stand in for content.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl Record {
    /// A record of `kind`/`action` by `actor` at `time`, with nothing else set.
    pub fn new(time: i64, kind: Kind, action: impl Into<String>, actor: impl Into<String>) -> Self {
        Record {
            time,
            kind,
            action: action.into(),
            actor: actor.into(),
            tenant: None,
            incident: None,
            spiffe_id: None,
            serial: None,
            detail: serde_json::Value::Null,
        }
    }

    /// Sets the tenant: the default tenant is stored as none, so its records' bytes are
    /// those of a deployment without tenants.
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = (tenant != DEFAULT_TENANT).then(|| tenant.to_owned());
        self
    }

    /// The tenant it belongs to.
    pub fn tenant_name(&self) -> &str {
        self.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }

    /// Sets the incident.
    pub fn incident(mut self, incident: Option<impl Into<String>>) -> Self {
        self.incident = incident.map(Into::into);
        self
    }

    /// Sets the SPIFFE ID.
    pub fn spiffe_id(mut self, id: impl Into<String>) -> Self {
        self.spiffe_id = Some(id.into());
        self
    }

    /// Sets the serial.
    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }

    /// Sets the detail object.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The bytes the log stores and hashes.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Whether the operators of `tenant` may read `record`: it is their tenant's, or, for the
/// default tenant, it is a tenant's creation or disabling (the deployment's decisions, made
/// in the default tenant's name whichever tenant they concern).
pub fn visible_to(record: &Record, tenant: &str) -> bool {
    record.tenant_name() == tenant
        || (tenant == DEFAULT_TENANT
            && matches!(record.action.as_str(), "tenant.create" | "tenant.disable"))
}

/// SHA-256 of `bytes`, lowercase hex: how records name content they must not hold.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::sha256(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_stable_and_round_trips() {
        let record = Record::new(1_700_000_000, Kind::Issuance, "svid.issue", "node-1")
            .incident(Some("inc-1"))
            .spiffe_id("spiffe://investigate.example.org/agent/a/incident/inc-1")
            .serial("40ab")
            .detail(serde_json::json!({"z": 1, "a": "b"}));
        let bytes = record.encode().unwrap();
        // Field order is declaration order; detail keys are sorted.
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"time":1700000000,"kind":"issuance","action":"svid.issue","actor":"node-1","incident":"inc-1","spiffe_id":"spiffe://investigate.example.org/agent/a/incident/inc-1","serial":"40ab","detail":{"a":"b","z":1}}"#
        );
        assert_eq!(Record::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn the_default_tenant_writes_the_bytes_it_always_wrote() {
        let plain = Record::new(5, Kind::AdminChange, "incident.open", "alice");
        let default = plain.clone().tenant(DEFAULT_TENANT);
        assert_eq!(default.tenant, None);
        assert_eq!(default.encode().unwrap(), plain.encode().unwrap());
        let acme = plain.tenant("acme");
        assert_eq!(
            std::str::from_utf8(&acme.encode().unwrap()).unwrap(),
            r#"{"time":5,"kind":"admin_change","action":"incident.open","actor":"alice","tenant":"acme"}"#
        );
        assert_eq!(acme.tenant_name(), "acme");
        assert_eq!(default.tenant_name(), DEFAULT_TENANT);
        // Records written before tenants read as the default tenant's.
        let old = Record::decode(br#"{"time":5,"kind":"refusal","action":"a","actor":"b"}"#);
        assert_eq!(old.unwrap().tenant_name(), DEFAULT_TENANT);
    }

    #[test]
    fn each_tenant_sees_its_own_and_the_default_tenant_sees_tenants_made_and_ended() {
        let open = |t: &str| Record::new(1, Kind::AdminChange, "incident.open", "x").tenant(t);
        assert!(visible_to(&open("acme"), "acme"));
        assert!(!visible_to(&open("acme"), "globex"));
        assert!(!visible_to(&open("acme"), DEFAULT_TENANT));
        assert!(visible_to(&open(DEFAULT_TENANT), DEFAULT_TENANT));
        assert!(!visible_to(&open(DEFAULT_TENANT), "acme"));
        let created = Record::new(1, Kind::AdminChange, "tenant.create", "root");
        assert!(visible_to(&created, DEFAULT_TENANT));
        assert!(!visible_to(&created, "acme"));
        // Disabling is recorded in the disabled tenant's name (it closes its incidents):
        // both see it, no third tenant does.
        let disabled = Record::new(1, Kind::Revocation, "tenant.disable", "root").tenant("acme");
        assert!(visible_to(&disabled, "acme"));
        assert!(visible_to(&disabled, DEFAULT_TENANT));
        assert!(!visible_to(&disabled, "globex"));
    }

    #[test]
    fn empty_fields_are_left_out() {
        let bytes = Record::new(5, Kind::Refusal, "admin.refused", "uid:1001")
            .encode()
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"time":5,"kind":"refusal","action":"admin.refused","actor":"uid:1001"}"#
        );
    }
}
