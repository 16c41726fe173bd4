//! Agent activity reports (docs/architecture.md, "Audit"): what an agent says it did under
//! its SVID — a prompt, a tool call, evidence it read, a fix it proposes — checked before
//! it becomes an audit record.
//!
//! The log is append-only and cannot be redacted, so a report carries a digest of the
//! content and never the content: prompts, tool arguments, evidence bodies and fixes can
//! hold secrets. What text a report does carry (a tool name, an evidence URI, a one-line
//! summary) is bounded here, and a URI that carries credentials (userinfo, or a query or
//! fragment parameter named like a token or signature) is refused rather than stored.
//!
//! Pure: the agent checks a report before forwarding it and the server checks it again
//! before appending, with this same function.

use std::fmt;
use std::str::FromStr;

/// Longest summary, in characters.
pub const MAX_SUMMARY_CHARS: usize = 200;
/// Longest tool name, in characters.
pub const MAX_TOOL_LEN: usize = 128;
/// Longest evidence URI, in bytes.
pub const MAX_URI_LEN: usize = 2048;
/// Longest serial (20 bytes of X.509 serial, hex).
const MAX_SERIAL_LEN: usize = 40;

/// What kind of activity an agent reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ActivityKind {
    /// A prompt sent to a model.
    Prompt,
    /// A tool the agent called.
    ToolCall,
    /// Evidence the agent read.
    Evidence,
    /// A fix the agent proposes.
    ProposedFix,
}

impl ActivityKind {
    /// The wire name, as in the record's action (`activity.tool_call`).
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Prompt => "prompt",
            ActivityKind::ToolCall => "tool_call",
            ActivityKind::Evidence => "evidence",
            ActivityKind::ProposedFix => "proposed_fix",
        }
    }
}

impl fmt::Display for ActivityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActivityKind {
    type Err = ActivityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prompt" => Ok(ActivityKind::Prompt),
            "tool_call" => Ok(ActivityKind::ToolCall),
            "evidence" => Ok(ActivityKind::Evidence),
            "proposed_fix" => Ok(ActivityKind::ProposedFix),
            other => Err(ActivityError::Kind(shown(other))),
        }
    }
}

/// Why a report was refused. Every message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActivityError {
    /// The incident is missing or not an incident name.
    #[error("incident {0:?} is not a valid incident id")]
    Incident(String),
    /// The kind is not one of prompt, tool_call, evidence, proposed_fix.
    #[error("unknown activity kind {0:?}: expected prompt, tool_call, evidence or proposed_fix")]
    Kind(String),
    /// The digest is not 64 lowercase hex characters.
    #[error(
        "digest must be the sha256 of the content as 64 lowercase hex characters (the content itself is never sent)"
    )]
    Digest,
    /// The summary is too long.
    #[error("summary {0}")]
    Summary(&'static str),
    /// The summary is not one line of visible text (control, bidi or invisible
    /// characters; see `crate::policy::text`).
    #[error(transparent)]
    Text(crate::policy::PolicyError),
    /// The tool is missing, misplaced or malformed.
    #[error("tool {0}")]
    Tool(String),
    /// The URI is missing, misplaced, malformed, or carries credentials.
    #[error("uri {0}")]
    Uri(String),
    /// The serial is not lowercase hex.
    #[error("serial must be lowercase hex of at most {MAX_SERIAL_LEN} characters")]
    Serial,
}

/// A report as it arrives, unchecked. Empty strings mean "not given".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawActivity {
    /// The incident it belongs to.
    pub incident: String,
    /// The kind's wire name (`prompt`, `tool_call`, `evidence`, `proposed_fix`).
    pub kind: String,
    /// SHA-256 of the content, lowercase hex.
    pub digest: String,
    /// The tool called (tool calls only).
    pub tool: String,
    /// Where the evidence came from (evidence only).
    pub uri: String,
    /// A short line for humans.
    pub summary: String,
}

/// A checked report: only [`Activity::parse`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activity {
    incident: String,
    kind: ActivityKind,
    digest: String,
    tool: Option<String>,
    uri: Option<String>,
    summary: String,
}

impl Activity {
    /// Checks `raw`: the incident is an incident name; the kind is known; the digest is 64
    /// lowercase hex; the summary is empty or one line of at most [`MAX_SUMMARY_CHARS`]
    /// visible characters ([`crate::policy::text::line`]); a tool call names its tool (at most
    /// [`MAX_TOOL_LEN`] of `A-Z a-z 0-9 . _ : / -`) and only a tool call does; evidence
    /// names its URI (at most [`MAX_URI_LEN`] bytes, printable ASCII, with a scheme and no
    /// credentials) and only evidence does.
    pub fn parse(raw: &RawActivity) -> Result<Activity, ActivityError> {
        if crate::policy::check_name("incident", &raw.incident).is_err() {
            return Err(ActivityError::Incident(shown(&raw.incident)));
        }
        let kind: ActivityKind = raw.kind.parse()?;
        check_digest(&raw.digest)?;
        check_summary(&raw.summary)?;
        let tool = match (kind, raw.tool.is_empty()) {
            (ActivityKind::ToolCall, true) => {
                return Err(ActivityError::Tool("is required for a tool_call".into()));
            }
            (ActivityKind::ToolCall, false) => Some(check_tool(&raw.tool)?),
            (_, true) => None,
            (other, false) => {
                return Err(ActivityError::Tool(format!(
                    "is only for a tool_call, not for {other}"
                )));
            }
        };
        let uri = match (kind, raw.uri.is_empty()) {
            (ActivityKind::Evidence, true) => {
                return Err(ActivityError::Uri("is required for evidence".into()));
            }
            (ActivityKind::Evidence, false) => Some(check_uri(&raw.uri)?),
            (_, true) => None,
            (other, false) => {
                return Err(ActivityError::Uri(format!(
                    "is only for evidence, not for {other}"
                )));
            }
        };
        Ok(Activity {
            incident: raw.incident.clone(),
            kind,
            digest: raw.digest.clone(),
            tool,
            uri,
            summary: raw.summary.clone(),
        })
    }

    /// The incident.
    pub fn incident(&self) -> &str {
        &self.incident
    }

    /// The kind.
    pub fn kind(&self) -> ActivityKind {
        self.kind
    }

    /// SHA-256 of the content, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The tool (tool calls).
    pub fn tool(&self) -> Option<&str> {
        self.tool.as_deref()
    }

    /// The evidence URI (evidence).
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }

    /// The summary (may be empty).
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// Back to the unchecked form, for sending on.
    pub fn to_raw(&self) -> RawActivity {
        RawActivity {
            incident: self.incident.clone(),
            kind: self.kind.as_str().to_owned(),
            digest: self.digest.clone(),
            tool: self.tool.clone().unwrap_or_default(),
            uri: self.uri.clone().unwrap_or_default(),
            summary: self.summary.clone(),
        }
    }

    /// The audit record's detail object: digest, summary, and tool or uri when given,
    /// with `node` (the agent that forwarded it).
    pub fn detail(&self, node: &str) -> serde_json::Value {
        let mut detail = serde_json::Map::new();
        detail.insert("digest".into(), self.digest.clone().into());
        if let Some(tool) = &self.tool {
            detail.insert("tool".into(), tool.clone().into());
        }
        if let Some(uri) = &self.uri {
            detail.insert("uri".into(), uri.clone().into());
        }
        detail.insert("summary".into(), self.summary.clone().into());
        detail.insert("node".into(), node.into());
        serde_json::Value::Object(detail)
    }
}

/// An X.509-SVID serial as an activity record names it: empty (none held yet) or
/// lowercase hex.
pub fn check_serial(serial: &str) -> Result<(), ActivityError> {
    let ok = serial.len() <= MAX_SERIAL_LEN
        && serial
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ActivityError::Serial)
    }
}

/// A peer's text, bounded, for an error message (shown with `{:?}`, which escapes it).
fn shown(text: &str) -> String {
    text.chars().take(64).collect()
}

fn check_digest(digest: &str) -> Result<(), ActivityError> {
    let ok = digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ActivityError::Digest)
    }
}

fn check_summary(summary: &str) -> Result<(), ActivityError> {
    if summary.chars().count() > MAX_SUMMARY_CHARS {
        return Err(ActivityError::Summary("is longer than 200 characters"));
    }
    // Empty means "none"; anything else is one line of visible text, by the rule every
    // caller-supplied text follows.
    if !summary.is_empty() {
        crate::policy::text::line("summary", summary, usize::MAX).map_err(ActivityError::Text)?;
    }
    Ok(())
}

fn check_tool(tool: &str) -> Result<String, ActivityError> {
    if tool.len() > MAX_TOOL_LEN {
        return Err(ActivityError::Tool(format!(
            "is longer than {MAX_TOOL_LEN} characters"
        )));
    }
    let ok = tool
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'));
    if !ok {
        return Err(ActivityError::Tool(format!(
            "{:?} may hold only A-Z a-z 0-9 . _ : / -",
            shown(tool)
        )));
    }
    Ok(tool.to_owned())
}

/// Query and fragment parameter names that carry credentials, after lowercasing,
/// percent-decoding and mapping `-` to `_`. Matched whole.
const CREDENTIAL_NAMES: &[&str] = &[
    "key",
    "sig",
    "auth",
    "jwt",
    "pass",
    "pwd",
    "session",
    "sessionid",
];

/// Substrings of a parameter name that mark it a credential (`access_token`,
/// `x_amz_signature`, `client_secret`, `x_goog_credential`, `api_key`, …).
const CREDENTIAL_PARTS: &[&str] = &[
    "token",
    "secret",
    "passw",
    "signature",
    "credential",
    "apikey",
    "api_key",
    "authorization",
];

/// Whether a parameter named `name` (raw, as in the URI) looks like a credential. Errs
/// toward refusing: a refused report can be resent without the parameter, a credential
/// in the log is there forever.
fn is_credential_name(name: &str) -> bool {
    let name: String = percent_decode(name)
        .to_lowercase()
        .chars()
        .map(|c| if c == '-' { '_' } else { c })
        .collect();
    let name = name.trim();
    CREDENTIAL_NAMES.contains(&name)
        || CREDENTIAL_PARTS.iter().any(|part| name.contains(part))
        || name.ends_with("_key")
        || name.ends_with("_sig")
}

/// Decodes `%XX` escapes (an invalid escape is kept as is), and `+` as a space.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_uri(uri: &str) -> Result<String, ActivityError> {
    if uri.len() > MAX_URI_LEN {
        return Err(ActivityError::Uri(format!(
            "is longer than {MAX_URI_LEN} bytes"
        )));
    }
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ActivityError::Uri(
            "must be printable ASCII without spaces (percent-encode the rest)".into(),
        ));
    }
    // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then ":".
    let (scheme, rest) = uri.split_once(':').unwrap_or(("", uri));
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(ActivityError::Uri(
            "must start with a scheme (https:, s3:, …)".into(),
        ));
    }
    // RFC 3986 §3.2.1: userinfo is the authority's part before "@"; any of it (a user, a
    // password, a token used as a user name) is a credential.
    if let Some(after) = rest.strip_prefix("//") {
        let authority = after.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(ActivityError::Uri(
                "must not carry credentials: remove the user:password@ part".into(),
            ));
        }
    }
    let (before_fragment, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let query = before_fragment.split_once('?').map_or("", |(_, q)| q);
    // Fragments carry tokens too (OAuth implicit flow: `#access_token=…`).
    for params in [query, fragment] {
        for pair in params.split(['&', ';']) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            if !name.is_empty() && is_credential_name(name) {
                return Err(ActivityError::Uri(format!(
                    "must not carry credentials: remove the parameter {:?}",
                    shown(name)
                )));
            }
        }
    }
    Ok(uri.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn raw(kind: &str) -> RawActivity {
        RawActivity {
            incident: "INC-1".into(),
            kind: kind.into(),
            digest: DIGEST.into(),
            tool: if kind == "tool_call" {
                "kubectl".into()
            } else {
                String::new()
            },
            uri: if kind == "evidence" {
                "https://logs.example/q?service=checkout".into()
            } else {
                String::new()
            },
            summary: "read the checkout logs".into(),
        }
    }

    fn with(f: impl FnOnce(&mut RawActivity), kind: &str) -> Result<Activity, ActivityError> {
        let mut r = raw(kind);
        f(&mut r);
        Activity::parse(&r)
    }

    fn uri(uri: &str) -> Result<Activity, ActivityError> {
        with(|r| r.uri = uri.into(), "evidence")
    }

    #[test]
    fn every_kind_parses_and_round_trips() {
        for kind in ["prompt", "tool_call", "evidence", "proposed_fix"] {
            let parsed = Activity::parse(&raw(kind)).unwrap();
            assert_eq!(parsed.kind().as_str(), kind);
            assert_eq!(
                parsed.kind().to_string().parse::<ActivityKind>(),
                Ok(parsed.kind())
            );
            assert_eq!(Activity::parse(&parsed.to_raw()), Ok(parsed.clone()));
            assert_eq!(parsed.incident(), "INC-1");
            assert_eq!(parsed.digest(), DIGEST);
        }
        let tool = Activity::parse(&raw("tool_call")).unwrap();
        assert_eq!(tool.tool(), Some("kubectl"));
        assert_eq!(tool.uri(), None);
        let evidence = Activity::parse(&raw("evidence")).unwrap();
        assert_eq!(
            evidence.uri(),
            Some("https://logs.example/q?service=checkout")
        );
        assert_eq!(evidence.tool(), None);
    }

    #[test]
    fn unknown_kinds_are_refused() {
        for kind in [
            "",
            "PROMPT",
            "Prompt",
            "tool-call",
            "unspecified",
            "2",
            "prompt ",
        ] {
            let error = with(|_| {}, kind).map(|_| ()).unwrap_err();
            assert!(matches!(error, ActivityError::Kind(_)), "{kind:?}: {error}");
            assert!(
                error.to_string().contains("unknown activity kind"),
                "{error}"
            );
        }
    }

    #[test]
    fn incidents_must_be_incident_names() {
        for bad in ["", "..", "a/b", "inc 1", &"i".repeat(129)] {
            let error = with(|r| r.incident = bad.into(), "prompt").unwrap_err();
            assert!(matches!(error, ActivityError::Incident(_)), "{bad:?}");
        }
        assert!(with(|r| r.incident = "i".repeat(128), "prompt").is_ok());
    }

    #[test]
    fn digests_are_exactly_64_lowercase_hex() {
        let upper = DIGEST.to_uppercase();
        let short = &DIGEST[..63];
        let long = format!("{DIGEST}0");
        let not_hex = format!("{}g", &DIGEST[..63]);
        let prefixed = format!("sha256:{}", &DIGEST[..57]);
        let spaced = format!(" {}", &DIGEST[..63]);
        for bad in ["", short, &long, &upper, &not_hex, &prefixed, &spaced] {
            let error = with(|r| r.digest = bad.into(), "prompt").unwrap_err();
            assert_eq!(error, ActivityError::Digest, "{bad:?}");
            assert!(error.to_string().contains("64 lowercase hex"));
        }
        assert!(with(|r| r.digest = "0".repeat(64), "prompt").is_ok());
    }

    #[test]
    fn summaries_are_one_short_plain_line() {
        assert!(with(|r| r.summary = String::new(), "prompt").is_ok());
        // 200 characters, counted as characters, not bytes.
        assert!(with(|r| r.summary = "é".repeat(200), "prompt").is_ok());
        let error = with(|r| r.summary = "é".repeat(201), "prompt").unwrap_err();
        assert_eq!(error.to_string(), "summary is longer than 200 characters");
        for bad in [
            "two\nlines",
            "cr\r",
            "tab\t",
            "nul\0",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}",
        ] {
            let error = with(|r| r.summary = bad.into(), "prompt").unwrap_err();
            assert!(
                error.to_string().contains("control characters"),
                "{bad:?}: {error}"
            );
        }
        for bad in [
            "rlo\u{202e}",
            "lri\u{2066}",
            "rlm\u{200f}",
            "zwsp\u{200b}",
            "ls\u{2028}",
            "tag\u{e0041}",
        ] {
            let error = with(|r| r.summary = bad.into(), "prompt").unwrap_err();
            assert!(
                error.to_string().contains("invisible formatting"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn tools_belong_to_tool_calls_only() {
        let error = with(|r| r.tool = String::new(), "tool_call").unwrap_err();
        assert_eq!(error.to_string(), "tool is required for a tool_call");
        for kind in ["prompt", "evidence", "proposed_fix"] {
            let error = with(|r| r.tool = "kubectl".into(), kind).unwrap_err();
            assert!(
                error.to_string().contains("only for a tool_call"),
                "{kind}: {error}"
            );
        }
        for good in [
            "kubectl",
            "mcp:github/create_issue",
            "a.b_c-d",
            &"t".repeat(128),
        ] {
            assert!(
                with(|r| r.tool = good.into(), "tool_call").is_ok(),
                "{good}"
            );
        }
        let error = with(|r| r.tool = "t".repeat(129), "tool_call").unwrap_err();
        assert!(error.to_string().contains("longer than 128"));
        for bad in ["kubectl get pods", "rm;ls", "tool\n", "émoji", "a@b", "x?y"] {
            let error = with(|r| r.tool = bad.into(), "tool_call").unwrap_err();
            assert!(matches!(error, ActivityError::Tool(_)), "{bad:?}");
            assert!(
                error.to_string().contains("may hold only"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn uris_belong_to_evidence_only() {
        let error = with(|r| r.uri = String::new(), "evidence").unwrap_err();
        assert_eq!(error.to_string(), "uri is required for evidence");
        for kind in ["prompt", "tool_call", "proposed_fix"] {
            let error = with(|r| r.uri = "https://x.example/".into(), kind).unwrap_err();
            assert!(
                error.to_string().contains("only for evidence"),
                "{kind}: {error}"
            );
        }
    }

    #[test]
    fn uris_need_a_scheme_and_printable_ascii_within_bounds() {
        for good in [
            "https://logs.example/q?service=checkout&since=1h#L10",
            "s3://bucket/path/object.log",
            "git+ssh://git.example/repo.git",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "mailto:oncall@example.org",
            "k8s:pod/shop/checkout-7d9",
            "https://x.example/?monkey=1&keyword=a&sort=asc&author=bob",
        ] {
            assert!(uri(good).is_ok(), "{good}: {:?}", uri(good));
        }
        for bad in [
            "logs.example/q",
            "//logs.example/q",
            "/var/log/syslog",
            ":x",
            "1http://x",
            "ht tp://x",
            "-x:y",
        ] {
            let error = uri(bad).unwrap_err();
            assert!(matches!(error, ActivityError::Uri(_)), "{bad:?}");
        }
        assert!(
            uri("logs.example/q")
                .unwrap_err()
                .to_string()
                .contains("scheme")
        );
        for bad in [
            "https://x.example/a b",
            "https://x.example/\n",
            "https://x.example/é",
            "https://x.example/\t",
        ] {
            let error = uri(bad).unwrap_err();
            assert!(
                error.to_string().contains("printable ASCII"),
                "{bad:?}: {error}"
            );
        }
        let base = "https://x.example/";
        assert!(uri(&format!("{base}{}", "a".repeat(MAX_URI_LEN - base.len()))).is_ok());
        let error = uri(&format!(
            "{base}{}",
            "a".repeat(MAX_URI_LEN - base.len() + 1)
        ))
        .unwrap_err();
        assert!(error.to_string().contains("longer than 2048"), "{error}");
    }

    #[test]
    fn uris_with_userinfo_are_refused() {
        for bad in [
            "https://user:pass@logs.example/q",
            "https://ghp_abc123@github.com/org/repo",
            "https://user@logs.example/",
            "postgres://app:hunter2@db:5432/shop",
            "https://:pass@x.example",
        ] {
            let error = uri(bad).unwrap_err();
            assert!(
                error.to_string().contains("user:password@"),
                "{bad}: {error}"
            );
        }
        // An "@" outside the authority is not userinfo.
        assert!(uri("https://x.example/users/@alice?q=a@b").is_ok());
    }

    #[test]
    fn uris_with_credential_parameters_are_refused() {
        for name in [
            "token",
            "access_token",
            "id_token",
            "refresh_token",
            "key",
            "api_key",
            "apikey",
            "api-key",
            "secret",
            "client_secret",
            "password",
            "passwd",
            "pass",
            "pwd",
            "sig",
            "signature",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "X-Amz-Security-Token",
            "X-Goog-Signature",
            "x-goog-credential",
            "auth",
            "authorization",
            "jwt",
            "session",
            "sessionid",
            "private_key",
            "access_key",
            "TOKEN",
            "Access_Token",
            "acc%65ss_token",
            "%74oken",
            "github_token",
            "ApiKey",
        ] {
            for shape in [
                format!("https://x.example/q?a=1&{name}=v"),
                format!("https://x.example/q?{name}"),
                format!("https://x.example/q?a=1;{name}=v"),
                format!("https://x.example/cb#{name}=v&state=1"),
            ] {
                let error = uri(&shape).unwrap_err();
                assert!(matches!(error, ActivityError::Uri(_)), "{shape}");
                assert!(
                    error.to_string().contains("must not carry credentials"),
                    "{shape}: {error}"
                );
            }
        }
        // Parameter values are not names.
        assert!(uri("https://x.example/q?q=token&search=password").is_ok());
        // The path is not a query.
        assert!(uri("https://x.example/docs/token?page=2").is_ok());
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a+b%41"), "a bA");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn serials_are_empty_or_lowercase_hex() {
        assert!(check_serial("").is_ok());
        assert!(check_serial("40ab").is_ok());
        assert!(check_serial(&"f".repeat(40)).is_ok());
        for bad in ["40AB", "0x40", "4g", &"f".repeat(41), "40 ab"] {
            assert_eq!(check_serial(bad), Err(ActivityError::Serial), "{bad}");
        }
    }

    #[test]
    fn detail_holds_digests_and_names_not_content() {
        let evidence = Activity::parse(&raw("evidence")).unwrap();
        assert_eq!(
            evidence.detail("local-agent"),
            serde_json::json!({
                "digest": DIGEST,
                "uri": "https://logs.example/q?service=checkout",
                "summary": "read the checkout logs",
                "node": "local-agent",
            })
        );
        let tool = Activity::parse(&raw("tool_call")).unwrap();
        assert_eq!(tool.detail("n")["tool"], "kubectl");
        assert!(tool.detail("n").get("uri").is_none());
    }
}
