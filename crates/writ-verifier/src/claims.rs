//! writ's claims: what an SVID says about the authority it carries.
//!
//! Encoded twice, with one meaning:
//! * X.509: a non-critical private extension, OID [`CLAIMS_OID`] (under the UUID arc
//!   2.25, so it can never collide with anyone else's), whose value is the DER of
//!   [`ClaimsDer`]. Non-critical so that SPIFFE clients that do not know it still accept
//!   the SVID.
//! * JWT: one private claim named [`JWT_CLAIMS_KEY`] (the same OID as a URN), whose value
//!   is the JSON form of [`WritClaims`].
//!
//! Both encodings carry a version number ([`CLAIMS_VERSION`]); a parser refuses a version
//! it does not know rather than guessing at fields.

use der::asn1::OctetString;
use der::{Decode, Encode, Sequence};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Dotted form of the claims extension OID: the UUID arc 2.25 followed by the integer
/// value of UUID 37ef519a-5140-4420-b342-05e28163c2a7, generated for writ.
pub const CLAIMS_OID: &str = "2.25.74350153818821098567058331551337267879";

/// The DER content octets of [`CLAIMS_OID`]. Written out because the arc is 126 bits
/// wide: wider than the u32/u64 arcs of common OID types (const-oid, yasna).
pub const CLAIMS_OID_DER: &[u8] = &[
    0x69, 0xef, 0xef, 0xa8, 0xe6, 0xca, 0x94, 0x82, 0x90, 0xc1, 0xb3, 0xa1, 0x81, 0xbc, 0xa8, 0x8b,
    0x8f, 0x85, 0x27,
];

/// Name of the JWT private claim (RFC 7519 §4.3: collision-resistant, so namespaced).
pub const JWT_CLAIMS_KEY: &str = "urn:oid:2.25.74350153818821098567058331551337267879";

/// The claims encoding version this crate writes and reads.
pub const CLAIMS_VERSION: u8 = 1;

/// Upper bound on an encoded claims value; larger input is refused before parsing.
pub const MAX_CLAIMS_LEN: usize = 16 * 1024;

/// The authority band of an identity. Each band is its own trust domain with its own CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    /// Read-only, per-incident identities in `investigate.<base>`.
    Investigative,
    /// Identities that may act, only after approval, in `remediate.<base>`.
    Remediation,
    /// Standing identities (nodes, the server, services) in `<base>` itself.
    Base,
}

impl Band {
    /// All bands, in the order writ lists them.
    pub const ALL: [Band; 3] = [Band::Investigative, Band::Remediation, Band::Base];

    /// The band's name as users type it.
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Investigative => "investigative",
            Band::Remediation => "remediation",
            Band::Base => "base",
        }
    }

    /// The trust domain name of this band under `base` (e.g. `investigate.example.org`).
    pub fn trust_domain_name(self, base: &str) -> String {
        match self {
            Band::Investigative => format!("investigate.{base}"),
            Band::Remediation => format!("remediate.{base}"),
            Band::Base => base.to_owned(),
        }
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Band {
    type Err = ClaimsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "investigative" | "investigate" => Ok(Band::Investigative),
            "remediation" | "remediate" => Ok(Band::Remediation),
            "base" => Ok(Band::Base),
            other => Err(ClaimsError::UnknownBand(other.to_owned())),
        }
    }
}

/// What an SVID says about the authority it carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritClaims {
    /// Encoding version; [`CLAIMS_VERSION`] when written by this crate.
    #[serde(rename = "v")]
    pub version: u8,
    /// The authority band.
    pub band: Option<Band>,
    /// The incident this identity is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The tenant, in multi-tenant deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Scopes the holder may exercise (the intersection of profile, incident and grant).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The remediation grant this identity exists for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// SHA-256 of the approved plan, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_digest: Option<String>,
    /// The humans who approved the grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Index of the issuance record in writ's audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_index: Option<u64>,
    /// The guardrail playbook this identity was activated from (docs/architecture.md,
    /// "Policy objects").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    /// What the holder may act on: the grant's targets (for a playbook, the ones chosen at
    /// activation from its allow-list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
}

/// DER form of [`WritClaims`]:
///
/// ```text
/// WritClaims ::= SEQUENCE {
///   version     INTEGER (1),
///   band        UTF8String,            -- "investigative" | "remediation" | "base"
///   incident    [0] UTF8String OPTIONAL,
///   tenant      [1] UTF8String OPTIONAL,
///   scopes      [2] SEQUENCE OF UTF8String OPTIONAL,
///   grant       [3] UTF8String OPTIONAL,
///   planDigest  [4] OCTET STRING (SIZE (32)) OPTIONAL,
///   approvers   [5] SEQUENCE OF UTF8String OPTIONAL,
///   auditIndex  [6] INTEGER OPTIONAL,
///   playbook    [7] UTF8String OPTIONAL,
///   targets     [8] SEQUENCE OF UTF8String OPTIONAL }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct ClaimsDer {
    version: u8,
    band: String,
    #[asn1(context_specific = "0", optional = "true")]
    incident: Option<String>,
    #[asn1(context_specific = "1", optional = "true")]
    tenant: Option<String>,
    #[asn1(context_specific = "2", optional = "true")]
    scopes: Option<Vec<String>>,
    #[asn1(context_specific = "3", optional = "true")]
    grant: Option<String>,
    #[asn1(context_specific = "4", optional = "true")]
    plan_digest: Option<OctetString>,
    #[asn1(context_specific = "5", optional = "true")]
    approvers: Option<Vec<String>>,
    #[asn1(context_specific = "6", optional = "true")]
    audit_index: Option<u64>,
    #[asn1(context_specific = "7", optional = "true")]
    playbook: Option<String>,
    #[asn1(context_specific = "8", optional = "true")]
    targets: Option<Vec<String>>,
}

/// Why claims could not be encoded or parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimsError {
    /// The value is not valid DER for [`ClaimsDer`].
    #[error("malformed claims extension: {0}")]
    Der(#[from] der::Error),
    /// The value is not valid JSON for [`WritClaims`].
    #[error("malformed claims: {0}")]
    Json(#[from] serde_json::Error),
    /// The encoding version is not one this crate knows.
    #[error("unsupported claims version {0}")]
    UnsupportedVersion(u8),
    /// The band name is not one of investigative, remediation, base.
    #[error("unknown band {0:?} (expected investigative, remediation or base)")]
    UnknownBand(String),
    /// The claims carry no band.
    #[error("claims carry no band")]
    MissingBand,
    /// The plan digest is not 32 bytes (64 lowercase hex characters).
    #[error("plan digest must be a sha256: 64 lowercase hex characters")]
    BadPlanDigest,
    /// The encoded value exceeds [`MAX_CLAIMS_LEN`].
    #[error("claims larger than {MAX_CLAIMS_LEN} bytes")]
    TooLarge,
}

impl WritClaims {
    /// Claims for `band` with nothing else set.
    pub fn new(band: Band) -> Self {
        WritClaims {
            version: CLAIMS_VERSION,
            band: Some(band),
            ..WritClaims::default()
        }
    }

    /// Encodes the claims as the DER value of the X.509 extension.
    pub fn to_der(&self) -> Result<Vec<u8>, ClaimsError> {
        let band = self.band.ok_or(ClaimsError::MissingBand)?;
        let plan_digest = match &self.plan_digest {
            Some(hex) => Some(OctetString::new(decode_digest(hex)?)?),
            None => None,
        };
        let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let der = ClaimsDer {
            version: CLAIMS_VERSION,
            band: band.as_str().to_owned(),
            incident: self.incident.clone(),
            tenant: self.tenant.clone(),
            scopes: non_empty(&self.scopes),
            grant: self.grant.clone(),
            plan_digest,
            approvers: non_empty(&self.approvers),
            audit_index: self.audit_index,
            playbook: self.playbook.clone(),
            targets: non_empty(&self.targets),
        }
        .to_der()?;
        if der.len() > MAX_CLAIMS_LEN {
            return Err(ClaimsError::TooLarge);
        }
        Ok(der)
    }

    /// Parses the DER value of the X.509 extension.
    pub fn from_der(bytes: &[u8]) -> Result<Self, ClaimsError> {
        if bytes.len() > MAX_CLAIMS_LEN {
            return Err(ClaimsError::TooLarge);
        }
        let der = ClaimsDer::from_der(bytes)?;
        if der.version != CLAIMS_VERSION {
            return Err(ClaimsError::UnsupportedVersion(der.version));
        }
        let plan_digest = match der.plan_digest {
            Some(octets) => {
                let bytes = octets.as_bytes();
                if bytes.len() != 32 {
                    return Err(ClaimsError::BadPlanDigest);
                }
                Some(encode_hex(bytes))
            }
            None => None,
        };
        Ok(WritClaims {
            version: der.version,
            band: Some(der.band.parse()?),
            incident: der.incident,
            tenant: der.tenant,
            scopes: der.scopes.unwrap_or_default(),
            grant: der.grant,
            plan_digest,
            approvers: der.approvers.unwrap_or_default(),
            audit_index: der.audit_index,
            playbook: der.playbook,
            targets: der.targets.unwrap_or_default(),
        })
    }

    /// The JSON value of the JWT private claim [`JWT_CLAIMS_KEY`].
    pub fn to_json(&self) -> Result<serde_json::Value, ClaimsError> {
        if self.band.is_none() {
            return Err(ClaimsError::MissingBand);
        }
        if let Some(hex) = &self.plan_digest {
            decode_digest(hex)?;
        }
        let mut claims = self.clone();
        claims.version = CLAIMS_VERSION;
        Ok(serde_json::to_value(claims)?)
    }

    /// Parses the JSON value of the JWT private claim [`JWT_CLAIMS_KEY`].
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ClaimsError> {
        let claims: WritClaims = serde_json::from_value(value.clone())?;
        if claims.version != CLAIMS_VERSION {
            return Err(ClaimsError::UnsupportedVersion(claims.version));
        }
        if claims.band.is_none() {
            return Err(ClaimsError::MissingBand);
        }
        if let Some(hex) = &claims.plan_digest {
            decode_digest(hex)?;
        }
        Ok(claims)
    }
}

fn decode_digest(hex: &str) -> Result<Vec<u8>, ClaimsError> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(ClaimsError::BadPlanDigest);
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(ClaimsError::BadPlanDigest),
    };
    bytes
        .chunks_exact(2)
        .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

fn encode_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn full() -> WritClaims {
        WritClaims {
            version: CLAIMS_VERSION,
            band: Some(Band::Remediation),
            incident: Some("INC-42".into()),
            tenant: Some("acme".into()),
            scopes: vec!["logs:read".into(), "k8s:restart".into()],
            grant: Some("g-7".into()),
            plan_digest: Some("ab".repeat(32)),
            approvers: vec!["alice".into(), "bob".into()],
            audit_index: Some(1234),
            playbook: Some("isolate-host".into()),
            targets: vec!["host/web-1".into(), "host/web-2".into()],
        }
    }

    #[test]
    fn oid_bytes_match_the_dotted_form() {
        // 2.25 is packed into the first octet as 40 * 2 + 25.
        assert_eq!(CLAIMS_OID_DER[0], 40 * 2 + 25);
        let mut arc: u128 = 0;
        for (i, b) in CLAIMS_OID_DER[1..].iter().enumerate() {
            arc = (arc << 7) | u128::from(b & 0x7f);
            let last = i == CLAIMS_OID_DER.len() - 2;
            assert_eq!(b & 0x80 == 0, last, "continuation bit wrong at {i}");
        }
        assert_eq!(format!("2.25.{arc}"), CLAIMS_OID);
        assert_eq!(JWT_CLAIMS_KEY, format!("urn:oid:{CLAIMS_OID}"));
    }

    #[test]
    fn der_round_trip_full_and_minimal() {
        for claims in [full(), WritClaims::new(Band::Investigative)] {
            let der = claims.to_der().unwrap();
            assert_eq!(WritClaims::from_der(&der).unwrap(), claims);
        }
    }

    #[test]
    fn playbook_and_targets_are_optional_in_both_encodings() {
        // A grant's identity without a playbook: neither [7] nor [8] is written, and the
        // JSON has neither key, so earlier encodings read the same.
        let mut plain = full();
        plain.playbook = None;
        plain.targets.clear();
        let der = plain.to_der().unwrap();
        let raw = ClaimsDer::from_der(&der).unwrap();
        assert_eq!((raw.playbook, raw.targets), (None, None));
        assert_eq!(WritClaims::from_der(&der).unwrap(), plain);
        let json = plain.to_json().unwrap();
        assert!(json.get("playbook").is_none() && json.get("targets").is_none());
        assert_eq!(WritClaims::from_json(&json).unwrap(), plain);

        // A playbook activation carries both, in both encodings.
        let raw = ClaimsDer::from_der(&full().to_der().unwrap()).unwrap();
        assert_eq!(raw.playbook.as_deref(), Some("isolate-host"));
        assert_eq!(
            raw.targets,
            Some(vec!["host/web-1".to_string(), "host/web-2".to_string()])
        );
        let json = full().to_json().unwrap();
        assert_eq!(json["playbook"], "isolate-host");
        assert_eq!(
            json["targets"],
            serde_json::json!(["host/web-1", "host/web-2"])
        );

        // Targets alone (a grant requested with targets) round-trip too.
        let mut targets_only = plain.clone();
        targets_only.targets = vec!["deploy/checkout".into()];
        let der = targets_only.to_der().unwrap();
        assert_eq!(WritClaims::from_der(&der).unwrap(), targets_only);
    }

    #[test]
    fn json_round_trip() {
        let json = full().to_json().unwrap();
        assert_eq!(json["band"], "remediation");
        assert_eq!(json["v"], 1);
        assert_eq!(WritClaims::from_json(&json).unwrap(), full());
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut der = ClaimsDer::from_der(&full().to_der().unwrap()).unwrap();
        der.version = 2;
        let bytes = der.to_der().unwrap();
        assert!(matches!(
            WritClaims::from_der(&bytes),
            Err(ClaimsError::UnsupportedVersion(2))
        ));
        let mut json = full().to_json().unwrap();
        json["v"] = 9.into();
        assert!(matches!(
            WritClaims::from_json(&json),
            Err(ClaimsError::UnsupportedVersion(9))
        ));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(WritClaims::from_der(&[]).is_err());
        assert!(WritClaims::from_der(&[0x30, 0x03, 0x02, 0x01]).is_err());
        let mut bad = full();
        bad.plan_digest = Some("XYZ".into());
        assert!(matches!(bad.to_der(), Err(ClaimsError::BadPlanDigest)));
        let mut no_band = full();
        no_band.band = None;
        assert!(matches!(no_band.to_der(), Err(ClaimsError::MissingBand)));
        let mut unknown = full().to_json().unwrap();
        unknown["extra"] = true.into();
        assert!(WritClaims::from_json(&unknown).is_err());
    }

    #[test]
    fn band_names_round_trip() {
        for band in Band::ALL {
            assert_eq!(band.as_str().parse::<Band>().unwrap(), band);
        }
        assert_eq!(
            Band::Remediation.trust_domain_name("x.org"),
            "remediate.x.org"
        );
        assert!("admin".parse::<Band>().is_err());
    }
}
