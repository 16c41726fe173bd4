//! Posting a body to a target: one HTTP/1.1 POST per attempt (through [`crate::httpc`],
//! rustls for https), each bounded in time and in the answer's size, retried with
//! jittered backoff on connection errors, timeouts, 5xx and 429, a bounded number of
//! times within a bounded total time.
//!
//! Must never: follow a redirect (it could send the body elsewhere), log the URL's path
//! or query (the secret part of a webhook URL) or a body, or block the caller: bodies
//! arrive through a bounded queue ([`super::run`]) and this loop is the only one waiting.

use super::config::Endpoint;
use crate::backoff::Backoff;
use crate::httpc::{HttpError, Limits};
use http::{HeaderMap, HeaderValue, Method};
use hyper::body::Bytes;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How hard delivery tries.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Most attempts per notification, the first included.
    pub attempts: u32,
    /// Longest time from the first attempt to the last one's start.
    pub total: Duration,
    /// First backoff ceiling.
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
    /// Longest TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Longest time, once connected, to send the request and read the (bounded) answer.
    pub response_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            total: Duration::from_secs(60),
            base: Duration::from_millis(500),
            cap: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
        }
    }
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered with this status.
    Status(u16),
    /// Connecting, the TLS handshake or the exchange failed (the error, which names no
    /// path).
    Connection(String),
    /// No connection or no answer in time.
    Timeout,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(code) => write!(f, "HTTP {code}"),
            Outcome::Connection(e) => write!(f, "connection failed: {e}"),
            Outcome::Timeout => f.write_str("timed out"),
        }
    }
}

/// What to do after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Delivered (2xx).
    Delivered,
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Give up: the outcome is final (a 4xx other than 429, a 3xx) or the attempts or
    /// the time ran out.
    GiveUp,
}

/// Whether `outcome` is worth another attempt: connection errors, timeouts, 5xx and 429.
pub fn retryable(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Status(code) => *code == 429 || (500..600).contains(code),
        Outcome::Connection(_) | Outcome::Timeout => true,
    }
}

impl RetryPolicy {
    /// The step after attempt number `attempt` (1-based) ended with `outcome`, `elapsed`
    /// after the first began, when the backoff's next delay would be `delay`.
    pub fn step(
        &self,
        attempt: u32,
        elapsed: Duration,
        outcome: &Outcome,
        delay: Duration,
    ) -> Step {
        if let Outcome::Status(200..=299) = outcome {
            return Step::Delivered;
        }
        if !retryable(outcome) || attempt >= self.attempts || elapsed + delay > self.total {
            return Step::GiveUp;
        }
        Step::RetryAfter(delay)
    }
}

/// One target's counters (issue 17 exports them as metrics).
#[derive(Debug, Default)]
pub struct Counters {
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValues {
    /// Notifications the target accepted (2xx).
    pub delivered: u64,
    /// Attempts that were retried.
    pub retried: u64,
    /// Notifications given up on.
    pub failed: u64,
    /// Notifications dropped because the queue was full.
    pub dropped: u64,
}

impl Counters {
    /// The values now.
    pub fn values(&self) -> CounterValues {
        CounterValues {
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    pub(super) fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Posts `body` to `endpoint` until it is delivered or [`RetryPolicy::step`] gives up;
/// returns the last outcome. `name` is the target's, for logs.
pub async fn deliver(
    name: &str,
    endpoint: &Endpoint,
    body: Bytes,
    policy: &RetryPolicy,
    counters: &Counters,
) -> Outcome {
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(policy.base, policy.cap);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = post_once(endpoint, body.clone(), policy).await;
        let delay = backoff.next_delay();
        match policy.step(attempt, started.elapsed(), &outcome, delay) {
            Step::Delivered => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target_name = %name, attempt, "notification delivered");
                return outcome;
            }
            Step::GiveUp => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return outcome;
            }
            Step::RetryAfter(delay) => {
                counters.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target_name = %name, at = %endpoint.shown(), attempt, outcome = %outcome, retry_in = ?delay, "notification not delivered; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The largest answer body read. Only the status is used; a receiver's answer is a few
/// bytes (Slack's is `ok`), so this bounds memory and does not cut off real answers.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One attempt: one POST through [`crate::httpc`], its status or why there was none.
async fn post_once(endpoint: &Endpoint, body: Bytes, policy: &RetryPolicy) -> Outcome {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let limits = Limits {
        connect: policy.connect_timeout,
        exchange: policy.response_timeout,
        max_body: MAX_ANSWER_BYTES,
    };
    let reply = endpoint
        .target()
        .request(
            Method::POST,
            endpoint.path_and_query(),
            headers,
            body,
            limits,
        )
        .await;
    match reply {
        Ok(reply) => Outcome::Status(reply.status),
        Err(e) => outcome_of(e),
    }
}

/// An [`HttpError`] as an attempt's outcome. httpc's errors name the host only, never the
/// path; `Connection` carries just the reason, as the logs name the host beside it.
fn outcome_of(error: HttpError) -> Outcome {
    match error {
        HttpError::Timeout(_) => Outcome::Timeout,
        HttpError::Connect { why, .. } => Outcome::Connection(why),
        // The receiver did answer, but its status is not known: like a broken exchange.
        HttpError::TooLarge(_) => {
            Outcome::Connection(format!("answer larger than {MAX_ANSWER_BYTES} bytes"))
        }
        // A fixed phrase (an invalid request target, a bad server name).
        HttpError::Url(why) => Outcome::Connection(why),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn two_hundreds_are_delivered_whatever_the_attempt() {
        let policy = RetryPolicy::default();
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(
                policy.step(5, Duration::from_secs(600), &Outcome::Status(code), SECOND),
                Step::Delivered
            );
        }
    }

    #[test]
    fn connection_errors_timeouts_5xx_and_429_are_retried_after_the_delay() {
        let policy = RetryPolicy::default();
        for outcome in [
            Outcome::Status(500),
            Outcome::Status(502),
            Outcome::Status(503),
            Outcome::Status(599),
            Outcome::Status(429),
            Outcome::Timeout,
            Outcome::Connection("connection refused".into()),
        ] {
            assert!(retryable(&outcome), "{outcome}");
            assert_eq!(
                policy.step(1, SECOND, &outcome, SECOND),
                Step::RetryAfter(SECOND),
                "{outcome}"
            );
        }
    }

    #[test]
    fn other_answers_are_final() {
        let policy = RetryPolicy::default();
        for code in [
            100, 301, 302, 307, 400, 401, 403, 404, 410, 413, 428, 430, 600,
        ] {
            let outcome = Outcome::Status(code);
            assert!(!retryable(&outcome), "{code}");
            assert_eq!(
                policy.step(1, SECOND, &outcome, SECOND),
                Step::GiveUp,
                "{code}"
            );
        }
    }

    #[test]
    fn attempts_and_total_time_are_bounded() {
        let policy = RetryPolicy::default();
        let failing = Outcome::Status(503);
        assert_eq!(
            policy.step(4, SECOND, &failing, SECOND),
            Step::RetryAfter(SECOND)
        );
        assert_eq!(
            policy.step(5, SECOND, &failing, SECOND),
            Step::GiveUp,
            "5 attempts"
        );
        // A retry that would start after the total time is not made.
        assert_eq!(
            policy.step(2, Duration::from_secs(55), &failing, Duration::from_secs(6)),
            Step::GiveUp
        );
        assert_eq!(
            policy.step(2, Duration::from_secs(55), &failing, Duration::from_secs(5)),
            Step::RetryAfter(Duration::from_secs(5))
        );
    }

    #[test]
    fn the_default_policy_gives_up_within_its_bounds_whatever_happens() {
        // Walk a target that always fails with the real backoff: never more than 5
        // attempts, and never a retry starting past the total time.
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let mut backoff = Backoff::new(policy.base, policy.cap);
            let mut elapsed = Duration::ZERO;
            let mut attempts = 0;
            loop {
                attempts += 1;
                elapsed += policy.connect_timeout + policy.response_timeout;
                match policy.step(attempts, elapsed, &Outcome::Timeout, backoff.next_delay()) {
                    Step::RetryAfter(delay) => elapsed += delay,
                    Step::GiveUp => break,
                    Step::Delivered => unreachable!(),
                }
            }
            assert!(attempts <= policy.attempts);
            assert!(elapsed <= policy.total + policy.connect_timeout + policy.response_timeout);
        }
    }

    #[test]
    fn outcomes_show_the_status_and_never_a_path() {
        assert_eq!(Outcome::Status(503).to_string(), "HTTP 503");
        assert_eq!(Outcome::Timeout.to_string(), "timed out");
    }

    #[test]
    fn http_errors_become_outcomes_that_retry_as_before() {
        let at = || "https://hooks.example:443".to_owned();
        assert_eq!(outcome_of(HttpError::Timeout(at())), Outcome::Timeout);
        assert_eq!(
            outcome_of(HttpError::Connect {
                at: at(),
                why: "connection refused".into()
            }),
            Outcome::Connection("connection refused".into())
        );
        for error in [
            HttpError::TooLarge(at()),
            HttpError::Url("the path is not a valid request target".into()),
        ] {
            let outcome = outcome_of(error);
            assert!(matches!(outcome, Outcome::Connection(_)), "{outcome}");
            assert!(retryable(&outcome), "{outcome}");
        }
    }

    /// A CA (its PEM and its issuer) named `name`.
    fn ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), rcgen::Issuer::new(params, key))
    }

    /// A TLS receiver for `localhost` under `issuer`: answers 200 to each request and
    /// sends its request head on the channel.
    async fn tls_receiver(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (heads, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                // A client that does not trust this CA ends the handshake: next.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    let n = tls.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the request ended early");
                    request.extend_from_slice(&buf[..n]);
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8(request[..head_end].to_vec()).unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                while request.len() < head_end + length {
                    let n = tls.read(&mut buf).await.unwrap();
                    request.extend_from_slice(&buf[..n]);
                }
                tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                tls.shutdown().await.unwrap();
                heads.send(head).unwrap();
            }
        });
        (port, received)
    }

    fn private(path: &Path, text: &str) -> String {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// An https target for `url` trusting the CA in `ca_pem`.
    fn https_target(dir: &Path, url: &str, ca_pem: &str) -> super::super::Target {
        #[derive(serde::Deserialize)]
        struct File {
            notify: Vec<super::super::RawTarget>,
        }
        let url_file = private(&dir.join("hook.url"), url);
        let ca_file = private(&dir.join("ca.pem"), ca_pem);
        let file: File = toml::from_str(&format!(
            "[[notify]]\nname = \"t\"\nformat = \"json\"\nurl_file = {url_file:?}\nca_file = {ca_file:?}\n"
        ))
        .unwrap();
        super::super::config::resolve(file.notify)
            .unwrap()
            .pop()
            .unwrap()
    }

    #[tokio::test]
    async fn https_posts_reach_a_receiver_the_roots_verify_and_no_other() {
        let (ca_pem, issuer) = ca("notify test CA");
        let (other_pem, _) = ca("someone else's CA");
        let (port, mut heads) = tls_receiver(&issuer).await;
        let url = format!("https://localhost:{port}/hook/s3cret?x=1");
        let dir = tempfile::tempdir().unwrap();
        let trusted = https_target(dir.path(), &url, &ca_pem);
        let counters = Counters::default();
        let body = Bytes::from_static(b"{\"event\":\"requested\"}");
        let outcome = deliver(
            "t",
            &trusted.endpoint,
            body.clone(),
            &RetryPolicy::default(),
            &counters,
        )
        .await;
        assert_eq!(outcome, Outcome::Status(200));
        assert_eq!(counters.values().delivered, 1);
        let head = heads.recv().await.unwrap();
        assert!(
            head.starts_with("POST /hook/s3cret?x=1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("host: localhost:{port}\r\n")),
            "{head}"
        );
        assert!(
            head.contains("content-type: application/json\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );

        // The same receiver, under roots that do not include its CA: refused in the
        // handshake (and, with one attempt allowed, given up on).
        let other_dir = tempfile::tempdir().unwrap();
        let untrusted = https_target(other_dir.path(), &url, &other_pem);
        let once = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
        let outcome = deliver("t", &untrusted.endpoint, body, &once, &counters).await;
        assert!(
            matches!(&outcome, Outcome::Connection(e) if e.starts_with("TLS")),
            "{outcome}"
        );
        assert!(!outcome.to_string().contains("s3cret"), "{outcome}");
        assert_eq!(
            counters.values(),
            CounterValues {
                delivered: 1,
                failed: 1,
                ..CounterValues::default()
            }
        );
    }
}
