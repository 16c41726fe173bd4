//! Workload selectors: `unix:uid:1001`, `unix:gid:27`, `unix:user:sre`,
//! `unix:path:/usr/bin/sre-agent`, `unix:sha256:<64 hex>`, and for a process in a
//! Kubernetes pod (docs/kubernetes.md) `k8s:ns:sre`, `k8s:sa:triage-agent`,
//! `k8s:pod-name:N`, `k8s:pod-uid:U`, `k8s:pod-label:K:V`, `k8s:container-name:N`,
//! `k8s:container-image:I`, `k8s:node-name:N`.
//!
//! Values are checked against Kubernetes' own naming rules, so a selector an operator
//! types and one the agent attests have one spelling each.

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
    /// The pod's namespace.
    K8sNamespace(String),
    /// The pod's service account.
    K8sServiceAccount(String),
    /// The pod's name.
    K8sPodName(String),
    /// The pod's UID.
    K8sPodUid(String),
    /// One of the pod's labels: key, value.
    K8sPodLabel(String, String),
    /// The name of the caller's container in its pod.
    K8sContainerName(String),
    /// The image of the caller's container, as the kubelet reports it (its reference, and
    /// its image id).
    K8sContainerImage(String),
    /// The node the pod runs on.
    K8sNodeName(String),
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
        if let Some(rest) = s.strip_prefix("k8s:") {
            return parse_k8s(rest).map_err(err);
        }
        let rest = s.strip_prefix("unix:").ok_or_else(|| {
            err("expected unix:<uid|gid|user|path|sha256>:<value> or k8s:<kind>:<value>")
        })?;
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
            Selector::K8sNamespace(v) => write!(f, "k8s:ns:{v}"),
            Selector::K8sServiceAccount(v) => write!(f, "k8s:sa:{v}"),
            Selector::K8sPodName(v) => write!(f, "k8s:pod-name:{v}"),
            Selector::K8sPodUid(v) => write!(f, "k8s:pod-uid:{v}"),
            Selector::K8sPodLabel(k, v) => write!(f, "k8s:pod-label:{k}:{v}"),
            Selector::K8sContainerName(v) => write!(f, "k8s:container-name:{v}"),
            Selector::K8sContainerImage(v) => write!(f, "k8s:container-image:{v}"),
            Selector::K8sNodeName(v) => write!(f, "k8s:node-name:{v}"),
        }
    }
}

/// The value of a `k8s:` selector after its prefix, or why it is refused.
fn parse_k8s(rest: &str) -> Result<Selector, &'static str> {
    const EXPECTED: &str = "expected k8s:<ns|sa|pod-name|pod-uid|pod-label|container-name|container-image|node-name>:<value>";
    let (kind, value) = rest.split_once(':').ok_or(EXPECTED)?;
    if value.len() > MAX_VALUE_LEN {
        return Err("value too long");
    }
    let owned = || value.to_owned();
    match kind {
        "ns" => dns_label(value).map(|()| Selector::K8sNamespace(owned())),
        "sa" => dns_subdomain(value).map(|()| Selector::K8sServiceAccount(owned())),
        "pod-name" => dns_subdomain(value).map(|()| Selector::K8sPodName(owned())),
        "pod-uid" => pod_uid(value).map(|()| Selector::K8sPodUid(owned())),
        "pod-label" => {
            let (key, label) = value
                .split_once(':')
                .ok_or("expected k8s:pod-label:<key>:<value>")?;
            label_key(key)?;
            label_value(label)?;
            Ok(Selector::K8sPodLabel(key.to_owned(), label.to_owned()))
        }
        "container-name" => dns_label(value).map(|()| Selector::K8sContainerName(owned())),
        "container-image" => image(value).map(|()| Selector::K8sContainerImage(owned())),
        "node-name" => dns_subdomain(value).map(|()| Selector::K8sNodeName(owned())),
        _ => Err(EXPECTED),
    }
}

/// A DNS-1123 label (namespaces, container names): 1–63 of `a-z0-9-`, alphanumeric at
/// both ends.
fn dns_label(v: &str) -> Result<(), &'static str> {
    let ok = (1..=63).contains(&v.len())
        && v.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && alnum_ends(v);
    ok.then_some(())
        .ok_or("must be a DNS label: 1-63 of a-z, 0-9 and '-', alphanumeric at both ends")
}

/// A DNS-1123 subdomain (pod, service account and node names): at most 253 characters,
/// dot-separated DNS labels.
fn dns_subdomain(v: &str) -> Result<(), &'static str> {
    let ok = (1..=253).contains(&v.len()) && v.split('.').all(|l| dns_label(l).is_ok());
    ok.then_some(())
        .ok_or("must be a DNS subdomain: at most 253 of a-z, 0-9, '-' and '.'")
}

/// A pod UID: a UUID in lowercase hex with dashes, or the 32 hex digits of a static pod.
fn pod_uid(v: &str) -> Result<(), &'static str> {
    let ok = (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'));
    ok.then_some(())
        .ok_or("a pod uid is lowercase hex digits and dashes")
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of 1–63 of
/// `A-Za-z0-9-_.`, alphanumeric at both ends.
fn label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns_subdomain(prefix).map_err(|_| "a label key's prefix must be a DNS subdomain")?;
    }
    let ok = (1..=63).contains(&name.len()) && label_chars(name) && alnum_ends(name);
    ok.then_some(()).ok_or(
        "a label key's name is 1-63 of A-Z, a-z, 0-9, '-', '_' and '.', alphanumeric at both ends",
    )
}

/// A label value: empty, or 1–63 of `A-Za-z0-9-_.`, alphanumeric at both ends.
fn label_value(v: &str) -> Result<(), &'static str> {
    let ok = v.is_empty() || (v.len() <= 63 && label_chars(v) && alnum_ends(v));
    ok.then_some(())
        .ok_or("a label value is empty or 1-63 of A-Z, a-z, 0-9, '-', '_' and '.', alphanumeric at both ends")
}

fn label_chars(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn alnum_ends(v: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    alnum(v.as_bytes().first()) && alnum(v.as_bytes().last())
}

/// An image reference or image id: printable ASCII without spaces, at most 512 bytes
/// (the server's bound on one selector, prefix included, is what matters; see
/// `server::MAX_SELECTOR_LEN`).
fn image(v: &str) -> Result<(), &'static str> {
    let ok = (1..=MAX_IMAGE_LEN).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(())
        .ok_or("an image is 1-480 printable characters without spaces")
}

/// Longest image reference: `k8s:container-image:` and the image fit the server's 512
/// bytes per selector.
const MAX_IMAGE_LEN: usize = 480;

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
            "k8s:ns:sre",
            "k8s:sa:triage-agent",
            "k8s:pod-name:triage-7d9f8-abcde",
            "k8s:pod-uid:1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            "k8s:pod-uid:6c2a2e3f1b9e4c6d8f0a1b2c3d4e5f60",
            "k8s:pod-label:app:triage",
            "k8s:pod-label:app.kubernetes.io/name:triage-agent",
            "k8s:pod-label:tier:",
            "k8s:container-name:agent",
            "k8s:container-image:registry.example:5000/sre/triage:1.2@sha256:abcd",
            "k8s:node-name:node-1.example.internal",
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn k8s_selectors_parse_to_their_kind() {
        assert_eq!(
            "k8s:pod-label:app.kubernetes.io/name:triage".parse::<Selector>(),
            Ok(Selector::K8sPodLabel(
                "app.kubernetes.io/name".into(),
                "triage".into()
            ))
        );
        assert_eq!(
            "k8s:container-image:docker.io/library/nginx:1.25".parse::<Selector>(),
            Ok(Selector::K8sContainerImage(
                "docker.io/library/nginx:1.25".into()
            ))
        );
        assert_eq!(
            "k8s:ns:sre".parse::<Selector>(),
            Ok(Selector::K8sNamespace("sre".into()))
        );
        // The two kinds of selector never stand for each other.
        assert_ne!(
            "k8s:ns:sre".parse::<Selector>(),
            "unix:user:sre".parse::<Selector>()
        );
    }

    #[test]
    fn k8s_values_are_bounded() {
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(63); 5].join(".");
        for s in [
            format!("k8s:ns:{long_label}"),
            format!("k8s:pod-label:{long_label}:v"),
            format!("k8s:pod-label:app:{long_label}"),
            format!("k8s:pod-name:{long_name}"),
            format!("k8s:container-image:{}", "i".repeat(481)),
            format!("k8s:pod-uid:{}", "a".repeat(65)),
        ] {
            assert!(s.parse::<Selector>().is_err(), "{s} should be refused");
        }
        for s in [
            format!("k8s:ns:{}", "a".repeat(63)),
            format!("k8s:container-image:{}", "i".repeat(480)),
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
    }

    proptest::proptest! {
        /// Whatever parses prints back to the same string (one spelling per selector).
        #[test]
        fn whatever_parses_round_trips(s in "k8s:(ns|sa|pod-name|pod-uid|pod-label|container-name|container-image|node-name):[a-zA-Z0-9./:_-]{0,40}") {
            if let Ok(selector) = s.parse::<Selector>() {
                proptest::prop_assert_eq!(selector.to_string(), s);
            }
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
            "k8s:ns:",
            "k8s:ns:Default",
            "k8s:ns:-sre",
            "k8s:ns:a.b",
            "k8s:sa:",
            "k8s:sa:a..b",
            "k8s:pod-name:UPPER",
            "k8s:pod-uid:",
            "k8s:pod-uid:ABC",
            "k8s:pod-uid:g1",
            "k8s:pod-label:app",
            "k8s:pod-label::v",
            "k8s:pod-label:app:has space",
            "k8s:pod-label:app:-dash",
            "k8s:pod-label:Bad_Prefix/app:v",
            "k8s:pod-label:/app:v",
            "k8s:container-name:a_b",
            "k8s:container-image:",
            "k8s:container-image:has space",
            "k8s:container-image:tab\there",
            "k8s:node-name:",
            "k8s:namespace:sre",
            "k8s:ns",
            "k8s:",
        ] {
            assert!(s.parse::<Selector>().is_err(), "{s} should be refused");
        }
    }
}
