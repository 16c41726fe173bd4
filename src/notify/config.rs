//! `[[notify]]` blocks: the file as written ([`RawTarget`]) → a checked [`Target`].
//!
//! A webhook URL is a credential (whoever holds a Slack incoming-webhook URL can post to
//! the channel), so it comes from a file only its owner can read, and only the scheme,
//! host and port of it are ever shown ([`Endpoint`]'s `Debug`, the logs, the errors).
//! The one exception, a URL written inline, is allowed only for plain http to a loopback
//! address: a test receiver or a local relay, where nothing secret travels.

use super::Event;
use crate::httpc;
use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The system's CA bundle, trusted for https targets.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Most `[[notify]]` blocks.
pub const MAX_TARGETS: usize = 16;
/// Longest URL file, in bytes.
pub const MAX_URL_FILE_BYTES: usize = 4096;
/// Default warning time before an approved grant's window ends.
pub const DEFAULT_EXPIRING_BEFORE_SECS: u64 = 120;
/// Longest warning time (the longest grant window).
pub const MAX_EXPIRING_BEFORE_SECS: u64 = crate::policy::grant::MAX_WINDOW_SECS;
/// Longest target name.
const MAX_NAME_LEN: usize = 64;

/// One `[[notify]]` block, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// Shown in logs.
    pub name: String,
    /// The body: `"slack"` or `"json"`.
    pub format: Format,
    /// A file holding the URL (owner-only permissions).
    pub url_file: Option<PathBuf>,
    /// The URL inline: plain http to a loopback address only.
    pub url: Option<String>,
    /// Extra PEM roots for https, beside the system bundle.
    pub ca_file: Option<PathBuf>,
    /// Which events to post (default: all).
    pub events: Option<Vec<Event>>,
    /// How long before an approved grant's window ends to post `expiring` (default 120).
    pub expiring_before_secs: Option<u64>,
}

/// The body a target receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A Slack incoming-webhook body: `{"text": …, "blocks": […]}` in mrkdwn.
    Slack,
    /// writ's generic JSON object (docs/notifications.md).
    Json,
}

/// What a target wants to hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interest {
    /// The events posted.
    pub events: BTreeSet<Event>,
    /// Seconds before an approved grant's window ends that `expiring` is posted.
    pub expiring_before_secs: u64,
}

impl Default for Interest {
    fn default() -> Self {
        Interest {
            events: Event::ALL.into_iter().collect(),
            expiring_before_secs: DEFAULT_EXPIRING_BEFORE_SECS,
        }
    }
}

/// A checked `[[notify]]` block.
#[derive(Clone, Debug)]
pub struct Target {
    /// Shown in logs.
    pub name: String,
    /// The body it receives.
    pub format: Format,
    /// Where it is posted.
    pub endpoint: Endpoint,
    /// What it hears about.
    pub interest: Interest,
}

/// Where a target is posted: an [`httpc::Target`] (scheme, host, port, TLS), built once,
/// and the request target. Its `Debug` and [`Endpoint::shown`] name the scheme, host and
/// port only: the path and query are the secret part of a webhook URL.
#[derive(Clone)]
pub struct Endpoint {
    target: httpc::Target,
    path_and_query: Zeroizing<String>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("at", &self.shown())
            .field("path_len", &self.path_and_query.len())
            .finish()
    }
}

impl Endpoint {
    /// `scheme://host:port`, for logs: never the path or the query.
    pub fn shown(&self) -> String {
        self.target.shown()
    }

    /// Where requests go (its errors name the host only).
    pub fn target(&self) -> &httpc::Target {
        &self.target
    }

    /// The request target (path and query): secret.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// Parses `text` as an http(s) URL. `inline` URLs (written in the config itself) must
    /// be plain http to a loopback address; any URL over plain http must be. Errors never
    /// contain the text.
    ///
    /// These checks come before [`httpc::Target::parse`] (which enforces the same rules)
    /// to say in config terms what is wrong; the host, port and TLS are then httpc's.
    fn parse(text: &str, inline: bool, ca_file: Option<&Path>) -> anyhow::Result<Endpoint> {
        let uri: http::Uri = text
            .parse()
            .map_err(|_| anyhow::anyhow!("not a URL (the URL is not shown: it is a secret)"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!("the URL must start with https:// (or http:// to loopback)"),
        };
        let authority = uri.authority().context("the URL has no host")?;
        anyhow::ensure!(
            !authority.as_str().contains('@'),
            "the URL carries credentials before its host; put the secret in the path, in url_file"
        );
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        anyhow::ensure!(!host.is_empty(), "the URL has no host");
        let loopback = is_loopback(host);
        if inline {
            anyhow::ensure!(
                !https && loopback,
                "an inline url is allowed only for http:// to a loopback address ({}); put other URLs in url_file (they are secrets)",
                "127.0.0.0/8, ::1"
            );
        }
        anyhow::ensure!(
            https || loopback,
            "plain http:// is allowed only to a loopback address (127.0.0.0/8, ::1); use https:// for {host}"
        );
        let tls = match https {
            true => Some(client_tls(ca_file)?),
            false => None,
        };
        // httpc's errors are fixed phrases, never the URL.
        let target = httpc::Target::parse(text, tls)?;
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok(Endpoint {
            target,
            path_and_query: Zeroizing::new(path_and_query),
        })
    }
}

/// Whether `host` is a loopback address: 127.0.0.0/8 or ::1. Not the name `localhost`,
/// which resolves through whatever the machine's resolver says (and [`httpc`] refuses
/// plain http to a name for the same reason).
fn is_loopback(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The system bundle's roots and `ca_file`'s (if any), through `httpc::tls_client`.
fn client_tls(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = Path::new(SYSTEM_CA_BUNDLE);
    match CertificateDer::pem_file_iter(system) {
        // A system bundle may hold a certificate rustls cannot parse; skip it, as
        // every TLS client does.
        Ok(certs) => {
            roots.add_parsable_certificates(certs.filter_map(Result::ok));
        }
        Err(e) if ca_file.is_none() => {
            anyhow::bail!(
                "reading the system CA bundle {SYSTEM_CA_BUNDLE}: {e}; name roots with ca_file"
            )
        }
        Err(_) => {}
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading ca_file {}", path.display()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.with_context(|| format!("parsing ca_file {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("ca_file {}", path.display()))?;
            added += 1;
        }
        anyhow::ensure!(
            added > 0,
            "ca_file {} holds no certificates",
            path.display()
        );
    }
    anyhow::ensure!(!roots.is_empty(), "no CA certificates to verify https with");
    httpc::tls_client(httpc::ServerTrust::Store(roots), None)
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))
}

/// Reads a URL from `path`, less one trailing newline. Refused as
/// `sources::signature::Secret::from_file` refuses a secret: a file its group or others
/// may access, an empty one, one longer than [`MAX_URL_FILE_BYTES`].
fn read_url_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // The mode of the open file, not of the path, so it is the file that is read.
    let mode = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    anyhow::ensure!(
        mode & 0o077 == 0,
        "{} is accessible by group or others (mode {:o}); a webhook URL is a secret: chmod 600 it",
        path.display(),
        mode & 0o7777
    );
    // Fixed size, never grown, so no copy of the URL is left unwiped behind a
    // reallocation; one byte more than allowed tells "too long" from "full".
    let mut buf = Zeroizing::new(vec![0u8; MAX_URL_FILE_BYTES + 1]);
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    anyhow::ensure!(
        len <= MAX_URL_FILE_BYTES,
        "{} is longer than {MAX_URL_FILE_BYTES} bytes",
        path.display()
    );
    buf.truncate(len);
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    anyhow::ensure!(!buf.is_empty(), "{} is empty", path.display());
    let text = std::str::from_utf8(&buf)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8", path.display()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

impl RawTarget {
    /// Checks the block: its URL file is read (and its permissions checked) and its CAs
    /// loaded now, so a bad block stops the server at start.
    fn resolve(self) -> anyhow::Result<Target> {
        let name = self.name;
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= MAX_NAME_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
            "[[notify]] name {:?}: 1 to {MAX_NAME_LEN} letters, digits, '.', '-' or '_'",
            name.chars().take(MAX_NAME_LEN).collect::<String>()
        );
        let within = |e: anyhow::Error| e.context(format!("[[notify]] {name}"));
        let endpoint = match (self.url, self.url_file) {
            (Some(url), None) => Endpoint::parse(&url, true, self.ca_file.as_deref()),
            (None, Some(path)) => read_url_file(&path).and_then(|url| {
                Endpoint::parse(&url, false, self.ca_file.as_deref())
                    .with_context(|| format!("the URL in {}", path.display()))
            }),
            _ => Err(anyhow::anyhow!("give exactly one of url_file and url")),
        }
        .map_err(within)?;
        let events = match self.events {
            None => Event::ALL.into_iter().collect(),
            Some(events) => {
                let set: BTreeSet<Event> = events.into_iter().collect();
                if set.is_empty() {
                    return Err(within(anyhow::anyhow!(
                        "events is empty: name some, or leave it out for all"
                    )));
                }
                set
            }
        };
        let expiring_before_secs = self
            .expiring_before_secs
            .unwrap_or(DEFAULT_EXPIRING_BEFORE_SECS);
        if !(1..=MAX_EXPIRING_BEFORE_SECS).contains(&expiring_before_secs) {
            return Err(within(anyhow::anyhow!(
                "expiring_before_secs must be 1 to {MAX_EXPIRING_BEFORE_SECS}"
            )));
        }
        Ok(Target {
            name,
            format: self.format,
            endpoint,
            interest: Interest {
                events,
                expiring_before_secs,
            },
        })
    }
}

/// Checks every `[[notify]]` block: at most [`MAX_TARGETS`], names unique.
pub fn resolve(raw: Vec<RawTarget>) -> anyhow::Result<Vec<Target>> {
    anyhow::ensure!(
        raw.len() <= MAX_TARGETS,
        "at most {MAX_TARGETS} [[notify]] blocks"
    );
    let mut names = BTreeSet::new();
    let mut targets = Vec::with_capacity(raw.len());
    for block in raw {
        let target = block.resolve()?;
        anyhow::ensure!(
            names.insert(target.name.clone()),
            "[[notify]] name {} is used twice",
            target.name
        );
        targets.push(target);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(toml: &str) -> anyhow::Result<Vec<Target>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            notify: Vec<RawTarget>,
        }
        let file: File = toml::from_str(toml)?;
        resolve(file.notify)
    }

    fn secret_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("hook.url");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn an_inline_loopback_url_with_defaults() {
        let targets = parse(
            "[[notify]]\nname = \"relay\"\nformat = \"json\"\nurl = \"http://127.0.0.1:9000/hook?k=v\"\n",
        )
        .unwrap();
        let [target] = &targets[..] else {
            unreachable!()
        };
        assert_eq!(target.name, "relay");
        assert_eq!(target.format, Format::Json);
        assert_eq!(target.interest, Interest::default());
        assert_eq!(target.interest.events.len(), 4);
        assert_eq!(target.endpoint.shown(), "http://127.0.0.1:9000");
        assert_eq!(target.endpoint.path_and_query(), "/hook?k=v");
        let ipv6 = parse("[[notify]]\nname = \"r\"\nformat = \"slack\"\nurl = \"http://[::1]/\"\n")
            .unwrap();
        assert_eq!(ipv6[0].endpoint.shown(), "http://[::1]:80");
        assert_eq!(ipv6[0].endpoint.path_and_query(), "/");
    }

    #[test]
    fn a_url_file_is_read_and_its_secret_path_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(
            dir.path(),
            "https://hooks.slack.example/services/T0/B0/SECRETPART\n",
            0o600,
        );
        let targets = parse(&format!(
            "[[notify]]\nname = \"sre-slack\"\nformat = \"slack\"\nurl_file = {path:?}\nevents = [\"requested\", \"expiring\"]\nexpiring_before_secs = 300\n"
        ))
        .unwrap();
        let target = &targets[0];
        // httpc shows `https` only for a target that has a TLS configuration.
        assert_eq!(target.endpoint.shown(), "https://hooks.slack.example:443");
        assert_eq!(
            target.endpoint.path_and_query(),
            "/services/T0/B0/SECRETPART"
        );
        assert_eq!(
            target.interest.events,
            BTreeSet::from([Event::Requested, Event::Expiring])
        );
        assert_eq!(target.interest.expiring_before_secs, 300);
        let debug = format!("{targets:?}");
        assert!(debug.contains("https://hooks.slack.example:443"), "{debug}");
        assert!(!debug.contains("SECRETPART"), "{debug}");
    }

    #[test]
    fn bad_blocks_are_refused_with_a_reason_and_never_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let open = secret_file(dir.path(), "https://hooks.example/SECRETPART", 0o644);
        let e = format!(
            "{:#}",
            parse(&format!(
                "[[notify]]\nname = \"a\"\nformat = \"slack\"\nurl_file = {open:?}\n"
            ))
            .unwrap_err()
        );
        assert!(
            e.contains("group or others") && e.contains("[[notify]] a"),
            "{e}"
        );
        for (url, says) in [
            (
                "https://hooks.example/SECRETPART",
                "only for http:// to a loopback",
            ),
            (
                "http://hooks.example/SECRETPART",
                "only for http:// to a loopback",
            ),
            // A name, even `localhost`, is not a loopback address: it resolves.
            (
                "http://localhost:9000/SECRETPART",
                "only for http:// to a loopback",
            ),
            ("ftp://127.0.0.1/SECRETPART", "must start with https://"),
            ("http://user:SECRETPART@127.0.0.1/", "credentials"),
            ("not a url SECRETPART", "not a URL"),
        ] {
            let e = format!(
                "{:#}",
                parse(&format!(
                    "[[notify]]\nname = \"a\"\nformat = \"json\"\nurl = {url:?}\n"
                ))
                .unwrap_err()
            );
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("SECRETPART"), "{url}: {e}");
        }
        let plain = secret_file(dir.path(), "http://hooks.example/SECRETPART", 0o600);
        let e = format!(
            "{:#}",
            parse(&format!(
                "[[notify]]\nname = \"a\"\nformat = \"json\"\nurl_file = {plain:?}\n"
            ))
            .unwrap_err()
        );
        assert!(
            e.contains("use https://") && !e.contains("SECRETPART"),
            "{e}"
        );
        let named = secret_file(dir.path(), "http://localhost:9000/SECRETPART", 0o600);
        let e = format!(
            "{:#}",
            parse(&format!(
                "[[notify]]\nname = \"a\"\nformat = \"json\"\nurl_file = {named:?}\n"
            ))
            .unwrap_err()
        );
        assert!(
            e.contains("use https:// for localhost") && !e.contains("SECRETPART"),
            "{e}"
        );
        let base = "format = \"json\"\nurl = \"http://127.0.0.1/\"\n";
        for (block, says) in [
            (format!("name = \"a b\"\n{base}"), "letters, digits"),
            (
                format!("name = \"a\"\n{base}events = []\n"),
                "events is empty",
            ),
            (
                format!("name = \"a\"\n{base}expiring_before_secs = 0\n"),
                "expiring_before_secs",
            ),
            (
                format!(
                    "name = \"a\"\nformat = \"json\"\nurl_file = {open:?}\nurl = \"http://127.0.0.1/\"\n"
                ),
                "exactly one of url_file and url",
            ),
            (
                "name = \"a\"\nformat = \"json\"\n".to_owned(),
                "exactly one",
            ),
        ] {
            let e = format!("{:#}", parse(&format!("[[notify]]\n{block}")).unwrap_err());
            assert!(e.contains(says), "{block}: {e}");
        }
        let twice = format!("[[notify]]\nname = \"a\"\n{base}[[notify]]\nname = \"a\"\n{base}");
        assert!(
            parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("used twice")
        );
        for bad in [
            "[[notify]]\nname = \"a\"\nformat = \"teams\"\nurl = \"http://127.0.0.1/\"\n"
                .to_owned(),
            format!("[[notify]]\nname = \"a\"\n{base}events = [\"revoked\"]\n"),
            format!("[[notify]]\nname = \"a\"\n{base}secret = \"x\"\n"),
        ] {
            assert!(parse(&bad).is_err(), "{bad}");
        }
        let empty = secret_file(dir.path(), "\n", 0o600);
        let e = format!(
            "{:#}",
            parse(&format!(
                "[[notify]]\nname = \"a\"\nformat = \"json\"\nurl_file = {empty:?}\n"
            ))
            .unwrap_err()
        );
        assert!(e.contains("is empty"), "{e}");
    }
}
