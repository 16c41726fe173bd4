//! Workload selectors: `unix:uid:1001`, `unix:gid:27`, `unix:user:sre`,
//! `unix:path:/usr/bin/sre-agent`, `unix:sha256:<64 hex>`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One fact about a workload, as attested (or as a profile requires it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Selector {
    /// Effective uid of the process.
    Uid(u32),
    /// A gid of the process: primary or supplementary.
    Gid(u32),
    /// The user name of the uid (from /etc/passwd).
    User(String),
    /// Absolute path of the process's executable.
    Path(String),
    /// SHA-256 of the executable, lowercase hex.
    Sha256(String),
}

/// Why a selector string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: {reason}")]
pub struct SelectorError {
    input: String,
    reason: &'static str,
}

/// Longest selector value accepted.
const MAX_VALUE_LEN: usize = 4096;

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| SelectorError {
            input: s.chars().take(128).collect(),
            reason,
        };
        let rest = s
            .strip_prefix("unix:")
            .ok_or_else(|| err("expected unix:<uid|gid|user|path|sha256>:<value>"))?;
        let (kind, value) = rest
            .split_once(':')
            .ok_or_else(|| err("expected unix:<uid|gid|user|path|sha256>:<value>"))?;
        if value.is_empty() {
            return Err(err("empty value"));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(err("value too long"));
        }
        let number = |v: &str| {
            if !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("must be a decimal number"));
            }
            v.parse::<u32>()
                .map_err(|_| err("must be a decimal number"))
        };
        match kind {
            "uid" => Ok(Selector::Uid(number(value)?)),
            "gid" => Ok(Selector::Gid(number(value)?)),
            "user" => {
                if value
                    .chars()
                    .any(|c| c.is_control() || c == ':' || c.is_whitespace())
                {
                    return Err(err(
                        "user names have no colons, spaces or control characters",
                    ));
                }
                Ok(Selector::User(value.to_owned()))
            }
            "path" => {
                if !value.starts_with('/') || value.chars().any(char::is_control) {
                    return Err(err("path must be absolute, without control characters"));
                }
                Ok(Selector::Path(value.to_owned()))
            }
            "sha256" => {
                if value.len() != 64
                    || !value
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return Err(err("sha256 must be 64 lowercase hex characters"));
                }
                Ok(Selector::Sha256(value.to_owned()))
            }
            _ => Err(err("unknown kind (use uid, gid, user, path or sha256)")),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Uid(v) => write!(f, "unix:uid:{v}"),
            Selector::Gid(v) => write!(f, "unix:gid:{v}"),
            Selector::User(v) => write!(f, "unix:user:{v}"),
            Selector::Path(v) => write!(f, "unix:path:{v}"),
            Selector::Sha256(v) => write!(f, "unix:sha256:{v}"),
        }
    }
}

impl TryFrom<String> for Selector {
    type Error = SelectorError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Selector> for String {
    fn from(s: Selector) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "unix:uid:1001",
            "unix:gid:0",
            "unix:user:sre",
            "unix:path:/usr/bin/sre-agent",
            &format!("unix:sha256:{}", "ab".repeat(32)),
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_bad_syntax() {
        for s in [
            "uid:1001",
            "unix:uid:",
            "unix:uid:-1",
            "unix:uid:+1",
            "unix:uid:99999999999",
            "unix:path:relative/bin",
            "unix:sha256:ABC",
            "unix:pid:1",
            "unix:user:a b",
            "k8s:ns:default",
        ] {
            assert!(s.parse::<Selector>().is_err(), "{s} should be refused");
        }
    }
}
