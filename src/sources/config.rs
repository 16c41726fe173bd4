//! `[[incident_source]]` blocks (docs/incident-sources.md): what each source is, where it
//! posts, its secrets and its mapping rules, checked into a [`Source`] the listener serves.

use super::SourceKind;
use super::rules::Rule;
use super::signature::{Secret, SignatureError};
use crate::policy::Severity;
use crate::ttl::Ttl;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// How far a Standard Webhooks timestamp may be from now unless configured: the five
/// minutes the Standard Webhooks libraries use.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// The longest tolerance accepted: a longer one makes a captured delivery replayable for
/// longer than any retry schedule needs.
pub const MAX_TOLERANCE_SECS: u64 = 3600;
/// The most sources one server serves.
pub const MAX_SOURCES: usize = 64;
/// The most routes one source has.
pub const MAX_ROUTES: usize = 256;

/// One `[[incident_source]]` block, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Shown in `incident show` and the audit log, and the prefix of the writ incident
    /// ids it opens (`pd` → `pd-Q1W2E3`).
    pub name: String,
    /// `pagerduty`, `incident-io` or `generic`.
    pub kind: String,
    /// The URL path it posts to (`/webhooks/pagerduty`).
    pub path: String,
    /// The HMAC secret's file (PagerDuty: the secret as shown; incident.io and generic:
    /// the `whsec_…` string). Readable by the server's user only.
    pub secret_file: PathBuf,
    /// The secret being rotated out, accepted beside `secret_file` until removed.
    #[serde(default)]
    pub previous_secret_file: Option<PathBuf>,
    /// The tenant whose incidents it opens (the default tenant if unset).
    #[serde(default)]
    pub tenant: Option<String>,
    /// The agents assigned when no route matches; empty: an unmatched incident is
    /// refused.
    #[serde(default)]
    pub assign: BTreeSet<String>,
    /// Scopes of incidents opened under `assign`.
    #[serde(default)]
    pub scopes: BTreeSet<String>,
    /// Source severity names to writ severities, for incidents opened under `assign`.
    #[serde(default)]
    pub severity: BTreeMap<String, Severity>,
    /// The severity when the source's is missing or unmapped (default sev3).
    #[serde(default)]
    pub default_severity: Option<Severity>,
    /// The longest an incident opened under `assign` may be open.
    #[serde(default)]
    pub max_lifetime: Option<Ttl>,
    /// Standard Webhooks only: how far a delivery's timestamp may be from now (default
    /// 5m, at most 1h).
    #[serde(default)]
    pub tolerance: Option<Ttl>,
    /// Routes, first match wins.
    #[serde(default)]
    pub route: Vec<Rule>,
}

/// A source ready to serve: its secrets read, its rules in the order they are tried.
#[derive(Debug)]
pub struct Source {
    /// Its name (and incident id prefix).
    pub name: String,
    /// Its kind.
    pub kind: SourceKind,
    /// Its URL path.
    pub path: String,
    /// Its HMAC keys, the current first.
    pub secrets: Vec<Secret>,
    /// Its tenant.
    pub tenant: String,
    /// Its routes, then the catch-all made of `assign` if set.
    pub rules: Vec<Rule>,
    /// Standard Webhooks timestamp tolerance, in seconds.
    pub tolerance_secs: i64,
}

impl Source {
    /// Who its changes are by, in the audit log and `opened_by`: `source:NAME`.
    pub fn actor(&self) -> String {
        format!("source:{}", self.name)
    }
}

/// Why a source's configuration is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceConfigError {
    /// Something about the block itself.
    #[error("incident_source {name:?}: {why}")]
    Invalid {
        /// The block's name (or its index if the name is the problem).
        name: String,
        /// What is wrong.
        why: String,
    },
    /// Its secret could not be read or used.
    #[error("incident_source {name:?}: {source}")]
    Secret {
        /// The block's name.
        name: String,
        /// Why.
        source: SignatureError,
    },
}

impl SourceKind {
    /// The kind named in configuration.
    pub fn from_config(name: &str) -> Option<SourceKind> {
        match name {
            "pagerduty" => Some(SourceKind::PagerDuty),
            "incident-io" => Some(SourceKind::IncidentIo),
            "generic" => Some(SourceKind::Generic),
            _ => None,
        }
    }
}

/// Checks every block and reads their secrets: names and paths unique, rules well formed.
pub fn resolve(raw: Vec<RawSource>) -> Result<Vec<Source>, SourceConfigError> {
    if raw.len() > MAX_SOURCES {
        return Err(SourceConfigError::Invalid {
            name: format!("#{}", MAX_SOURCES + 1),
            why: format!("at most {MAX_SOURCES} incident sources"),
        });
    }
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    let mut sources = Vec::with_capacity(raw.len());
    for block in raw {
        let source = resolve_one(block)?;
        let invalid = |why: String| SourceConfigError::Invalid {
            name: source.name.clone(),
            why,
        };
        if !names.insert(source.name.clone()) {
            return Err(invalid("another incident_source has this name".into()));
        }
        if !paths.insert(source.path.clone()) {
            return Err(invalid(format!(
                "another incident_source posts to path {:?}",
                source.path
            )));
        }
        sources.push(source);
    }
    Ok(sources)
}

fn resolve_one(raw: RawSource) -> Result<Source, SourceConfigError> {
    let name = raw.name.clone();
    let invalid = |why: String| SourceConfigError::Invalid {
        name: name.clone(),
        why,
    };
    // The name prefixes incident ids, so it must be one itself, and short enough to leave
    // room for the source's id.
    crate::policy::check_name("incident_source name", &raw.name)
        .map_err(|e| invalid(e.to_string()))?;
    if raw.name.len() > 32 {
        return Err(invalid("name longer than 32 bytes".into()));
    }
    let kind = SourceKind::from_config(&raw.kind).ok_or_else(|| {
        invalid(format!(
            "kind {:?} is not pagerduty, incident-io or generic",
            raw.kind.chars().take(32).collect::<String>()
        ))
    })?;
    check_path(&raw.path).map_err(invalid)?;
    let tenant = match raw.tenant {
        None => crate::policy::tenant::DEFAULT_TENANT.to_owned(),
        Some(t) => {
            crate::policy::check_name("tenant", &t).map_err(|e| invalid(e.to_string()))?;
            t
        }
    };
    let tolerance_secs = raw.tolerance.map_or(DEFAULT_TOLERANCE_SECS, |t| t.secs());
    if tolerance_secs > MAX_TOLERANCE_SECS {
        return Err(invalid(format!(
            "tolerance must be at most {MAX_TOLERANCE_SECS}s"
        )));
    }
    if raw.route.len() > MAX_ROUTES {
        return Err(invalid(format!("at most {MAX_ROUTES} routes")));
    }
    let mut rules = raw.route;
    if !raw.assign.is_empty() {
        rules.push(Rule {
            service: "*".into(),
            assign: raw.assign,
            scopes: raw.scopes,
            severity: raw.severity,
            default_severity: raw.default_severity.unwrap_or(Severity::Sev3),
            max_lifetime: raw.max_lifetime,
        });
    } else if !raw.scopes.is_empty()
        || !raw.severity.is_empty()
        || raw.default_severity.is_some()
        || raw.max_lifetime.is_some()
    {
        return Err(invalid(
            "scopes, severity, default_severity and max_lifetime at the top of a source \
             belong to its catch-all, which needs assign (or put them in a route)"
                .into(),
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        check_rule(rule).map_err(|why| invalid(format!("route {}: {why}", i + 1)))?;
    }
    let secret = |path: &PathBuf| {
        let text = Secret::from_file(path)?;
        match kind {
            SourceKind::PagerDuty => text.into_pagerduty(),
            SourceKind::IncidentIo | SourceKind::Generic => text.into_standard_webhooks(),
        }
    };
    let mut secrets = Vec::with_capacity(2);
    for path in std::iter::once(&raw.secret_file).chain(raw.previous_secret_file.as_ref()) {
        secrets.push(secret(path).map_err(|source| SourceConfigError::Secret {
            name: name.clone(),
            source,
        })?);
    }
    Ok(Source {
        name: raw.name,
        kind,
        path: raw.path,
        secrets,
        tenant,
        rules,
        tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX),
    })
}

/// A path of plain segments (letters, digits, `-`, `_`, `.`) under `/`, as short as a
/// path needs to be.
fn check_path(path: &str) -> Result<(), String> {
    let ok = path.len() <= 128
        && path.starts_with('/')
        && path.len() > 1
        && path[1..].split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "path {:?} must be /segments of letters, digits, '-', '_' or '.', at most 128 bytes",
            path.chars().take(64).collect::<String>()
        ))
    }
}

fn check_rule(rule: &Rule) -> Result<(), String> {
    if rule.service.is_empty() || rule.service.len() > super::MAX_ID_BYTES {
        return Err("service must be 1 to 128 bytes (or \"*\")".into());
    }
    if rule.assign.is_empty() {
        return Err("assign names no agent".into());
    }
    for agent in &rule.assign {
        crate::policy::check_name("agent", agent).map_err(|e| e.to_string())?;
    }
    for scope in &rule.scopes {
        crate::policy::check_scope(scope).map_err(|e| e.to_string())?;
    }
    if rule.severity.len() > MAX_ROUTES {
        return Err(format!("at most {MAX_ROUTES} severity names"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn parse(dir: &std::path::Path, extra: &str) -> Result<Vec<Source>, SourceConfigError> {
        #[derive(Deserialize)]
        struct File {
            incident_source: Vec<RawSource>,
        }
        let pd = secret_file(dir, "pd.secret", "pd-secret\n");
        let text = format!(
            "[[incident_source]]\nname = \"pd\"\nkind = \"pagerduty\"\npath = \"/webhooks/pd\"\nsecret_file = {:?}\n{extra}",
            pd.display()
        );
        let file: File = toml::from_str(&text).map_err(|e| SourceConfigError::Invalid {
            name: "toml".into(),
            why: e.to_string(),
        })?;
        resolve(file.incident_source)
    }

    #[test]
    fn routes_come_first_and_assign_is_the_catch_all() {
        let dir = tempfile::tempdir().unwrap();
        let sources = parse(
            dir.path(),
            "assign = [\"triage\"]\nmax_lifetime = \"2h\"\n[[incident_source.route]]\nservice = \"PDB\"\nassign = [\"db-agent\"]\nscopes = [\"logs:read\"]\n",
        )
        .unwrap();
        let pd = &sources[0];
        assert_eq!(pd.kind, SourceKind::PagerDuty);
        assert_eq!(pd.tenant, "default");
        assert_eq!(pd.secrets.len(), 1);
        assert_eq!(pd.tolerance_secs, 300);
        let services: Vec<&str> = pd.rules.iter().map(|r| r.service.as_str()).collect();
        assert_eq!(services, ["PDB", "*"]);
        assert_eq!(pd.rules[1].max_lifetime.map(|t| t.secs()), Some(7200));
    }

    #[test]
    fn without_assign_or_routes_nothing_is_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let sources = parse(dir.path(), "").unwrap();
        assert!(sources[0].rules.is_empty());
        // Catch-all settings without a catch-all are a mistake, said so.
        let err = parse(dir.path(), "scopes = [\"logs:read\"]\n").unwrap_err();
        assert!(err.to_string().contains("needs assign"), "{err}");
    }

    #[test]
    fn bad_blocks_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        for (extra, says) in [
            ("tolerance = \"2h\"\n", "tolerance"),
            ("tenant = \"a b\"\n", "tenant"),
            (
                "[[incident_source.route]]\nservice = \"X\"\nassign = []\n",
                "assign names no agent",
            ),
            (
                "[[incident_source.route]]\nservice = \"\"\nassign = [\"a\"]\n",
                "service",
            ),
            (
                "[[incident_source.route]]\nservice = \"X\"\nassign = [\"a/b\"]\n",
                "agent",
            ),
            (
                "[[incident_source.route]]\nservice = \"X\"\nassign = [\"a\"]\nscopes = [\"NOPE\"]\n",
                "scope",
            ),
        ] {
            let err = parse(dir.path(), extra).unwrap_err().to_string();
            assert!(err.contains(says), "{extra:?}: {err}");
        }
    }

    #[test]
    fn names_kinds_and_paths_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = secret_file(dir.path(), "io.secret", "whsec_c2VjcmV0LWtleS0xMjM0\n");
        let block = |name: &str, kind: &str, path: &str| RawSource {
            name: name.into(),
            kind: kind.into(),
            path: path.into(),
            secret_file: key.clone(),
            previous_secret_file: None,
            tenant: None,
            assign: BTreeSet::new(),
            scopes: BTreeSet::new(),
            severity: BTreeMap::new(),
            default_severity: None,
            max_lifetime: None,
            tolerance: None,
            route: Vec::new(),
        };
        assert!(resolve(vec![block("io", "incident-io", "/webhooks/io")]).is_ok());
        for (b, says) in [
            (block("io", "incident_io", "/w"), "kind"),
            (block("bad name", "generic", "/w"), "name"),
            (block(&"x".repeat(33), "generic", "/w"), "32"),
            (block("g", "generic", "w"), "path"),
            (block("g", "generic", "/"), "path"),
            (block("g", "generic", "/a/../b"), "path"),
            (block("g", "generic", "/a//b"), "path"),
            (block("g", "generic", "/a?b"), "path"),
        ] {
            let err = resolve(vec![b]).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
        let twice = resolve(vec![
            block("a", "generic", "/w"),
            block("a", "generic", "/v"),
        ]);
        assert!(twice.unwrap_err().to_string().contains("name"));
        let same_path = resolve(vec![
            block("a", "generic", "/w"),
            block("b", "generic", "/w"),
        ]);
        assert!(same_path.unwrap_err().to_string().contains("path"));
    }

    #[test]
    fn secrets_are_read_for_their_kind_and_rotation_keeps_both() {
        let dir = tempfile::tempdir().unwrap();
        let old = secret_file(dir.path(), "old", "old-secret");
        let sources = parse(
            dir.path(),
            &format!("previous_secret_file = {:?}\n", old.display()),
        )
        .unwrap();
        assert_eq!(sources[0].secrets.len(), 2);
        // A PagerDuty secret is not a whsec_ key: as a generic source it is refused.
        let open = dir.path().join("open.secret");
        std::fs::write(&open, "x").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = parse(
            dir.path(),
            &format!("previous_secret_file = {:?}\n", open.display()),
        )
        .unwrap_err();
        assert!(matches!(err, SourceConfigError::Secret { .. }), "{err}");
    }
}
