//! Webhook signatures: did this delivery come from the source we configured, and (for
//! Standard Webhooks) is it fresh? Pure functions over the raw headers and body, and the
//! loading of a secret from its file.
//!
//! Two schemes:
//! * PagerDuty Webhooks v3: `X-PagerDuty-Signature: v1=<hex HMAC-SHA256(secret, body)>`,
//!   several comma-separated while PagerDuty rotates its secret
//!   (<https://developer.pagerduty.com/docs/webhooks/webhook-signatures/>).
//! * Standard Webhooks (incident.io through Svix, and writ's generic webhook):
//!   `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, several
//!   space-separated, the key being the base64 after `whsec_`
//!   (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>,
//!   "Signature scheme" and "Verifying signatures").
//!
//! A delivery passes when any signature in its header matches any configured secret, so
//! both the source and writ can rotate secrets without dropping deliveries.
//!
//! Must never: compare a MAC in variable time, accept a Standard Webhooks delivery whose
//! timestamp is outside the tolerance, or put a secret's bytes or an expected MAC into an
//! error or a `Debug` (errors are for the operator's log; the peer gets a bare 401).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// PagerDuty's signature header (HTTP header names are case-insensitive).
pub const PAGERDUTY_SIGNATURE_HEADER: &str = "x-pagerduty-signature";
/// Standard Webhooks: the delivery's unique id, signed and used for dedupe.
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
/// Standard Webhooks: the attempt's time, decimal unix seconds, signed.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Standard Webhooks: the signatures.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";

/// The longest signature header read, in bytes; a longer one is refused unparsed.
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 1024;
/// The most signatures (of any version) one header may carry; each costs an HMAC of the
/// body per configured secret, so this bounds the work one delivery can cause.
pub const MAX_SIGNATURES: usize = 8;
/// The largest secret file read, in bytes.
pub const MAX_SECRET_FILE_BYTES: usize = 4096;

/// How Standard Webhooks marks a symmetric secret.
const WHSEC_PREFIX: &[u8] = b"whsec_";
/// HMAC-SHA256 output length.
const MAC_BYTES: usize = 32;

/// Why a delivery's signature, or a configured secret, is refused. Detail for the
/// operator's log only: never a secret's bytes nor the MAC writ expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No secret is configured, so nothing can match.
    #[error("no secret configured")]
    NoSecrets,
    /// The secret file could not be opened or read.
    #[error("cannot read secret file {path}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The secret file can be read by its group or by others.
    #[error(
        "secret file {path} is accessible by group or others (mode {mode:04o}); \
         it must be 0600 or stricter"
    )]
    SecretFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The secret file is longer than [`MAX_SECRET_FILE_BYTES`].
    #[error("secret file {path} is longer than {MAX_SECRET_FILE_BYTES} bytes")]
    SecretFileTooLong {
        /// The file.
        path: PathBuf,
    },
    /// The secret file is empty, or holds only a newline.
    #[error("secret file {path} is empty")]
    SecretFileEmpty {
        /// The file.
        path: PathBuf,
    },
    /// A secret (or the key it decodes to) is empty.
    #[error("secret is empty")]
    EmptySecret,
    /// A Standard Webhooks secret is not base64 (after an optional `whsec_`).
    #[error("standard webhooks secret is not whsec_ followed by base64")]
    SecretNotBase64,
    /// A header the scheme needs is missing or empty.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is longer than its bound ([`MAX_SIGNATURE_HEADER_BYTES`] for a signature
    /// header, [`super::MAX_ID_BYTES`] for `webhook-id`).
    #[error("header {header} is {len} bytes, more than {max}")]
    HeaderTooLong {
        /// The header.
        header: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A signature header carries more than [`MAX_SIGNATURES`] entries.
    #[error("header {header} carries {count} signatures, more than {MAX_SIGNATURES}")]
    TooManySignatures {
        /// The header.
        header: &'static str,
        /// How many entries it carries.
        count: usize,
    },
    /// A header is not in its scheme's shape.
    #[error("malformed header {header}: {reason}")]
    MalformedHeader {
        /// The header.
        header: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A signature header carries no `v1` signature (only other versions).
    #[error("header {0} carries no v1 signature")]
    NoV1Signature(&'static str),
    /// The Standard Webhooks timestamp is older than the tolerance: stale or replayed.
    #[error("webhook timestamp is {age_secs} s old, more than the tolerance of {tolerance_secs} s")]
    StaleTimestamp {
        /// How old it is.
        age_secs: i64,
        /// The tolerance.
        tolerance_secs: i64,
    },
    /// The Standard Webhooks timestamp is further ahead than the tolerance.
    #[error(
        "webhook timestamp is {ahead_secs} s in the future, more than the tolerance of \
         {tolerance_secs} s"
    )]
    FutureTimestamp {
        /// How far ahead it is.
        ahead_secs: i64,
        /// The tolerance.
        tolerance_secs: i64,
    },
    /// Well-formed, but no signature matched any configured secret.
    #[error("no signature matched any configured secret")]
    NoMatch,
}

/// An HMAC key (or, from [`Secret::from_file`], the text it is made from), wiped from
/// memory on drop.
///
/// ring's `hmac::Key` keeps its own derived state, which it does not promise to wipe; writ
/// builds one per check and drops it at once.
pub struct Secret {
    bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Secret {
    /// Reads a secret's text from `path`, less one trailing newline (`\n` or `\r\n`).
    ///
    /// Refused: a file its group or others may access (as ssh refuses a private key), an
    /// empty one, one longer than [`MAX_SECRET_FILE_BYTES`]. The text is the key for
    /// PagerDuty; turn it into a key with [`Secret::into_pagerduty`] or
    /// [`Secret::into_standard_webhooks`].
    pub fn from_file(path: &Path) -> Result<Secret, SignatureError> {
        let io_error = |source| SignatureError::SecretFile {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io_error)?;
        // The mode of the open file, not of the path, so it is the file that is read.
        let mode = file.metadata().map_err(io_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SignatureError::SecretFilePermissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        // A buffer of fixed size, never grown, so no copy of the secret is left unwiped
        // behind a reallocation. One byte more than allowed tells "too long" from "full".
        let mut buf = Zeroizing::new(vec![0u8; MAX_SECRET_FILE_BYTES + 1]);
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        if len > MAX_SECRET_FILE_BYTES {
            return Err(SignatureError::SecretFileTooLong {
                path: path.to_path_buf(),
            });
        }
        buf.truncate(len);
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        if buf.is_empty() {
            return Err(SignatureError::SecretFileEmpty {
                path: path.to_path_buf(),
            });
        }
        Ok(Secret { bytes: buf })
    }

    /// A PagerDuty key: the secret text's bytes, as they are.
    pub fn pagerduty(text: &[u8]) -> Result<Secret, SignatureError> {
        if text.is_empty() {
            return Err(SignatureError::EmptySecret);
        }
        Ok(Secret {
            bytes: Zeroizing::new(text.to_vec()),
        })
    }

    /// A Standard Webhooks key: the text is `whsec_<base64>` (or the base64 alone) and the
    /// key is the decoded bytes.
    pub fn standard_webhooks(text: &[u8]) -> Result<Secret, SignatureError> {
        let encoded = text.strip_prefix(WHSEC_PREFIX).unwrap_or(text);
        // Decoded into a buffer sized up front, for the same reason as in `from_file`.
        let mut key = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(encoded.len())]);
        let len = BASE64
            .decode_slice(encoded, &mut key[..])
            .map_err(|_| SignatureError::SecretNotBase64)?;
        key.truncate(len);
        if key.is_empty() {
            return Err(SignatureError::EmptySecret);
        }
        Ok(Secret { bytes: key })
    }

    /// This secret text (as read by [`Secret::from_file`]) as a PagerDuty key.
    pub fn into_pagerduty(self) -> Result<Secret, SignatureError> {
        if self.bytes.is_empty() {
            return Err(SignatureError::EmptySecret);
        }
        Ok(self)
    }

    /// This secret text (as read by [`Secret::from_file`]) as a Standard Webhooks key.
    pub fn into_standard_webhooks(self) -> Result<Secret, SignatureError> {
        Secret::standard_webhooks(&self.bytes)
    }
}

/// Checks a PagerDuty v3 delivery: `signature_header` is the `X-PagerDuty-Signature`
/// value, `body` the raw body as received.
///
/// Valid iff some `v1=` signature in the header is the HMAC-SHA256 of `body` under some
/// secret in `secrets`. Entries of other versions are skipped; a header with none that is
/// `v1` is refused, as is one longer than [`MAX_SIGNATURE_HEADER_BYTES`] or with more than
/// [`MAX_SIGNATURES`] entries.
pub fn verify_pagerduty(
    secrets: &[Secret],
    signature_header: &str,
    body: &[u8],
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecrets);
    }
    let macs = parse_pagerduty(signature_header)?;
    any_match(secrets, body, &macs)
}

/// Checks a Standard Webhooks delivery (incident.io, writ's generic webhook): the values
/// of `webhook-id`, `webhook-timestamp` and `webhook-signature`, the raw body, the current
/// unix time in seconds, and how far (either way) the timestamp may be from it.
///
/// The timestamp is checked first (a stale or future one is refused whatever its
/// signature: replay). Then valid iff some `v1,` signature in the header is the
/// HMAC-SHA256 of `{id}.{timestamp}.{body}` under some secret in `secrets`. Entries of
/// other versions (`v1a`, asymmetric) are skipped; the same bounds as PagerDuty's apply.
/// A negative tolerance refuses every delivery.
pub fn verify_standard(
    secrets: &[Secret],
    webhook_id: &str,
    webhook_timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecrets);
    }
    check_webhook_id(webhook_id)?;
    let timestamp = parse_timestamp(webhook_timestamp)?;
    let age_secs = now.saturating_sub(timestamp);
    if age_secs > tolerance_secs {
        return Err(SignatureError::StaleTimestamp {
            age_secs,
            tolerance_secs,
        });
    }
    let ahead_secs = timestamp.saturating_sub(now);
    if ahead_secs > tolerance_secs {
        return Err(SignatureError::FutureTimestamp {
            ahead_secs,
            tolerance_secs,
        });
    }
    let macs = parse_standard(signature_header)?;
    let mut signed =
        Vec::with_capacity(webhook_id.len() + webhook_timestamp.len() + body.len() + 2);
    signed.extend_from_slice(webhook_id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(webhook_timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    any_match(secrets, &signed, &macs)
}

/// Whether any MAC is `message`'s under any secret; ring compares in constant time.
fn any_match(
    secrets: &[Secret],
    message: &[u8],
    macs: &[[u8; MAC_BYTES]],
) -> Result<(), SignatureError> {
    for secret in secrets {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.bytes);
        if macs
            .iter()
            .any(|mac| hmac::verify(&key, message, mac).is_ok())
        {
            return Ok(());
        }
    }
    Err(SignatureError::NoMatch)
}

/// The bounds both schemes share on a signature header: present and not too long.
fn check_signature_header(header: &'static str, value: &str) -> Result<(), SignatureError> {
    if value.trim().is_empty() {
        return Err(SignatureError::MissingHeader(header));
    }
    if value.len() > MAX_SIGNATURE_HEADER_BYTES {
        return Err(SignatureError::HeaderTooLong {
            header,
            len: value.len(),
            max: MAX_SIGNATURE_HEADER_BYTES,
        });
    }
    Ok(())
}

/// The bound both schemes share on the number of entries in a signature header.
fn check_signature_count(header: &'static str, count: usize) -> Result<(), SignatureError> {
    if count > MAX_SIGNATURES {
        return Err(SignatureError::TooManySignatures { header, count });
    }
    Ok(())
}

/// `v1=<64 hex digits>` entries, comma-separated (spaces around commas tolerated).
fn parse_pagerduty(value: &str) -> Result<Vec<[u8; MAC_BYTES]>, SignatureError> {
    const HEADER: &str = PAGERDUTY_SIGNATURE_HEADER;
    check_signature_header(HEADER, value)?;
    let entries: Vec<&str> = value.split(',').map(str::trim).collect();
    check_signature_count(HEADER, entries.len())?;
    let malformed = |reason| SignatureError::MalformedHeader {
        header: HEADER,
        reason,
    };
    let mut macs = Vec::new();
    for entry in entries {
        let (version, mac) = entry
            .split_once('=')
            .ok_or(malformed("an entry is not version=signature"))?;
        if version != "v1" {
            continue;
        }
        macs.push(decode_hex_mac(mac).ok_or(malformed("a v1 signature is not 64 hex digits"))?);
    }
    if macs.is_empty() {
        return Err(SignatureError::NoV1Signature(HEADER));
    }
    Ok(macs)
}

/// `v1,<base64>` entries, space-separated.
fn parse_standard(value: &str) -> Result<Vec<[u8; MAC_BYTES]>, SignatureError> {
    const HEADER: &str = WEBHOOK_SIGNATURE_HEADER;
    check_signature_header(HEADER, value)?;
    let entries: Vec<&str> = value.split(' ').filter(|entry| !entry.is_empty()).collect();
    check_signature_count(HEADER, entries.len())?;
    let malformed = |reason| SignatureError::MalformedHeader {
        header: HEADER,
        reason,
    };
    let mut macs = Vec::new();
    for entry in entries {
        let (version, mac) = entry
            .split_once(',')
            .ok_or(malformed("an entry is not version,signature"))?;
        if version != "v1" {
            continue;
        }
        let mac = BASE64
            .decode(mac)
            .ok()
            .and_then(|mac| <[u8; MAC_BYTES]>::try_from(mac).ok())
            .ok_or(malformed("a v1 signature is not 32 bytes of base64"))?;
        macs.push(mac);
    }
    if macs.is_empty() {
        return Err(SignatureError::NoV1Signature(HEADER));
    }
    Ok(macs)
}

/// The id is signed as `{id}.{timestamp}.`, so a `.` in it would let one signed content
/// be read as another (the spec asks producers not to send one); it is also kept for
/// dedupe and logs, so it is bounded and visible ASCII.
fn check_webhook_id(id: &str) -> Result<(), SignatureError> {
    const HEADER: &str = WEBHOOK_ID_HEADER;
    if id.is_empty() {
        return Err(SignatureError::MissingHeader(HEADER));
    }
    if id.len() > super::MAX_ID_BYTES {
        return Err(SignatureError::HeaderTooLong {
            header: HEADER,
            len: id.len(),
            max: super::MAX_ID_BYTES,
        });
    }
    if !id.bytes().all(|b| b.is_ascii_graphic() && b != b'.') {
        return Err(SignatureError::MalformedHeader {
            header: HEADER,
            reason: "not visible ascii without '.'",
        });
    }
    Ok(())
}

/// Decimal unix seconds, digits only (no sign, no space): at most 18 digits, so it fits.
fn parse_timestamp(value: &str) -> Result<i64, SignatureError> {
    const HEADER: &str = WEBHOOK_TIMESTAMP_HEADER;
    if value.is_empty() {
        return Err(SignatureError::MissingHeader(HEADER));
    }
    let malformed = SignatureError::MalformedHeader {
        header: HEADER,
        reason: "not decimal unix seconds",
    };
    if value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    value.parse().map_err(|_| malformed)
}

/// 64 hex digits (either case) → 32 bytes.
fn decode_hex_mac(hex: &str) -> Option<[u8; MAC_BYTES]> {
    let hex = hex.as_bytes();
    if hex.len() != 2 * MAC_BYTES {
        return None;
    }
    let mut mac = [0u8; MAC_BYTES];
    for (byte, pair) in mac.iter_mut().zip(hex.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high << 4 | low).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::process::Command;

    const PD_KEY: &[u8] = b"pd-test-secret-one";
    const PD_KEY_2: &[u8] = b"pd-test-secret-two";
    const BODY: &[u8] = br#"{"event":{"id":"01DEL","event_type":"incident.resolved"}}"#;
    const ID: &str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    const NOW: i64 = 1_800_000_000;
    const TOLERANCE: i64 = 300;

    /// A header, and whether an error is the one it should cause.
    type Case<'a> = (&'a str, fn(&SignatureError) -> bool);

    fn mac(key: &[u8], message: &[u8]) -> Vec<u8> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        hmac::sign(&key, message).as_ref().to_vec()
    }

    fn pd_entry(key: &[u8], body: &[u8]) -> String {
        format!("v1={}", crate::hex::lower(&mac(key, body)))
    }

    fn standard_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
        let mut content = format!("{id}.{timestamp}.").into_bytes();
        content.extend_from_slice(body);
        content
    }

    fn std_entry(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
        let content = standard_content(id, timestamp, body);
        format!("v1,{}", BASE64.encode(mac(key, &content)))
    }

    /// A Standard Webhooks key of 24 random-looking bytes, and its `whsec_` text.
    fn std_key() -> (Vec<u8>, String) {
        let key: Vec<u8> = (0u8..24).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let text = format!("whsec_{}", BASE64.encode(&key));
        (key, text)
    }

    fn std_secret() -> Secret {
        Secret::standard_webhooks(std_key().1.as_bytes()).unwrap()
    }

    fn pd(secrets: &[&[u8]]) -> Vec<Secret> {
        secrets
            .iter()
            .map(|s| Secret::pagerduty(s).unwrap())
            .collect()
    }

    /// `std_secret()` checks a delivery with `header`, stamped `timestamp`, at time `now`.
    fn verify_std(
        header: &str,
        timestamp: i64,
        now: i64,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        verify_standard(
            &[std_secret()],
            ID,
            &timestamp.to_string(),
            header,
            body,
            now,
            TOLERANCE,
        )
    }

    /// HMAC-SHA256 by the openssl CLI, lowercase hex: an implementation other than ring's.
    fn openssl_hmac(key: &[u8], data: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, data).unwrap();
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-mac", "HMAC", "-macopt"])
            .arg(format!("hexkey:{}", crate::hex::lower(key)))
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = String::from_utf8(out.stdout).unwrap();
        let (_, hex) = out.trim().rsplit_once("= ").unwrap();
        assert_eq!(hex.len(), 64, "{out}");
        hex.to_owned()
    }

    fn write_secret(dir: &Path, text: &[u8], mode: u32) -> PathBuf {
        let path = dir.join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn pagerduty_accepts_a_signature_made_by_openssl() {
        let hex = openssl_hmac(PD_KEY, BODY);
        verify_pagerduty(&pd(&[PD_KEY]), &format!("v1={hex}"), BODY).unwrap();
        // And the helper the other tests use agrees with openssl.
        assert_eq!(pd_entry(PD_KEY, BODY), format!("v1={hex}"));
        // Upper-case hex is the same MAC.
        verify_pagerduty(&pd(&[PD_KEY]), &format!("v1={}", hex.to_uppercase()), BODY).unwrap();
    }

    #[test]
    fn standard_accepts_a_signature_made_by_openssl() {
        let (key, text) = std_key();
        let timestamp = NOW.to_string();
        let hex = openssl_hmac(&key, &standard_content(ID, &timestamp, BODY));
        let raw: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let header = format!("v1,{}", BASE64.encode(raw));
        let secret = Secret::standard_webhooks(text.as_bytes()).unwrap();
        verify_standard(&[secret], ID, &timestamp, &header, BODY, NOW, TOLERANCE).unwrap();
        assert_eq!(std_entry(&key, ID, &timestamp, BODY), header);
    }

    #[test]
    fn standard_webhooks_published_test_vector() {
        // The vector the Standard Webhooks and Svix libraries test against.
        let body = br#"{"test": 2432232314}"#;
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let header = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        for text in [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ] {
            let secret = Secret::standard_webhooks(text.as_bytes()).unwrap();
            let at = 1_614_265_330;
            verify_standard(&[secret], id, "1614265330", header, body, at, 300).unwrap();
        }
    }

    #[test]
    fn pagerduty_rotation_either_side() {
        // PagerDuty rotating: the second signature in the header is the one that matches.
        let header = format!("v1={},{}", "ab".repeat(32), pd_entry(PD_KEY, BODY));
        verify_pagerduty(&pd(&[PD_KEY]), &header, BODY).unwrap();
        // writ rotating: the second configured secret is the one that matches.
        let header = pd_entry(PD_KEY_2, BODY);
        verify_pagerduty(&pd(&[PD_KEY, PD_KEY_2]), &header, BODY).unwrap();
        // Spaces after commas, and other versions, are passed over.
        let header = format!("v0=zz, {}", pd_entry(PD_KEY, BODY));
        verify_pagerduty(&pd(&[PD_KEY]), &header, BODY).unwrap();
    }

    #[test]
    fn standard_rotation_either_side() {
        let (key, _) = std_key();
        let ts = NOW.to_string();
        let other = format!("v1,{}", BASE64.encode([7u8; 32]));
        let header = format!(
            "{other} v1a,c2lnbmF0dXJl {}",
            std_entry(&key, ID, &ts, BODY)
        );
        verify_std(&header, NOW, NOW, BODY).unwrap();
        let old = Secret::standard_webhooks(b"whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0").unwrap();
        let header = std_entry(&key, ID, &ts, BODY);
        verify_standard(&[old, std_secret()], ID, &ts, &header, BODY, NOW, TOLERANCE).unwrap();
    }

    #[test]
    fn wrong_secret_refused() {
        let header = pd_entry(PD_KEY_2, BODY);
        let err = verify_pagerduty(&pd(&[PD_KEY]), &header, BODY).unwrap_err();
        assert!(matches!(err, SignatureError::NoMatch), "{err:?}");
        let ts = NOW.to_string();
        let header = std_entry(b"another key", ID, &ts, BODY);
        let err = verify_std(&header, NOW, NOW, BODY).unwrap_err();
        assert!(matches!(err, SignatureError::NoMatch), "{err:?}");
        assert!(matches!(
            verify_pagerduty(&[], &pd_entry(PD_KEY, BODY), BODY),
            Err(SignatureError::NoSecrets)
        ));
    }

    #[test]
    fn one_byte_changed_refused() {
        let mut changed = BODY.to_vec();
        changed[10] ^= 1;
        let header = pd_entry(PD_KEY, BODY);
        verify_pagerduty(&pd(&[PD_KEY]), &header, BODY).unwrap();
        let err = verify_pagerduty(&pd(&[PD_KEY]), &header, &changed).unwrap_err();
        assert!(matches!(err, SignatureError::NoMatch), "{err:?}");

        let (key, _) = std_key();
        let header = std_entry(&key, ID, &NOW.to_string(), BODY);
        verify_std(&header, NOW, NOW, BODY).unwrap();
        let err = verify_std(&header, NOW, NOW, &changed).unwrap_err();
        assert!(matches!(err, SignatureError::NoMatch), "{err:?}");
        // The id and the timestamp are signed too.
        let err = verify_standard(
            &[std_secret()],
            "msg_other",
            &NOW.to_string(),
            &header,
            BODY,
            NOW,
            TOLERANCE,
        )
        .unwrap_err();
        assert!(matches!(err, SignatureError::NoMatch), "{err:?}");
        let err = verify_standard(
            &[std_secret()],
            ID,
            &(NOW - 1).to_string(),
            &header,
            BODY,
            NOW,
            TOLERANCE,
        )
        .unwrap_err();
        assert!(matches!(err, SignatureError::NoMatch), "{err:?}");
    }

    #[test]
    fn stale_and_future_timestamps_refused_before_the_signature() {
        let (key, _) = std_key();
        for (ts, ok) in [
            (NOW - TOLERANCE, true),
            (NOW + TOLERANCE, true),
            (NOW - TOLERANCE - 1, false),
            (NOW + TOLERANCE + 1, false),
        ] {
            let header = std_entry(&key, ID, &ts.to_string(), BODY);
            // Control: the same delivery checked at its own time passes.
            verify_std(&header, ts, ts, BODY).unwrap();
            let result = verify_std(&header, ts, NOW, BODY);
            assert_eq!(result.is_ok(), ok, "{ts}: {result:?}");
        }
        let stale = std_entry(&key, ID, &(NOW - 3600).to_string(), BODY);
        let err = verify_std(&stale, NOW - 3600, NOW, BODY).unwrap_err();
        assert!(
            matches!(
                err,
                SignatureError::StaleTimestamp {
                    age_secs: 3600,
                    tolerance_secs: TOLERANCE
                }
            ),
            "{err:?}"
        );
        let future = std_entry(&key, ID, &(NOW + 3600).to_string(), BODY);
        let err = verify_std(&future, NOW + 3600, NOW, BODY).unwrap_err();
        assert!(
            matches!(
                err,
                SignatureError::FutureTimestamp {
                    ahead_secs: 3600,
                    ..
                }
            ),
            "{err:?}"
        );
        // Checked before the MAC: a garbage signature with a stale time says stale.
        let garbage = format!("v1,{}", BASE64.encode([0u8; 32]));
        let err = verify_std(&garbage, NOW - 3600, NOW, BODY).unwrap_err();
        assert!(
            matches!(err, SignatureError::StaleTimestamp { .. }),
            "{err:?}"
        );
        // A negative tolerance refuses even the present.
        let header = std_entry(&key, ID, &NOW.to_string(), BODY);
        let ts = NOW.to_string();
        let result = verify_standard(&[std_secret()], ID, &ts, &header, BODY, NOW, -1);
        assert!(result.is_err());
    }

    #[test]
    fn malformed_timestamp_and_id_refused() {
        let (key, _) = std_key();
        for ts in [
            "",
            "+1800000000",
            "-5",
            "1800000000.0",
            " 1800000000",
            "1e9",
            "9".repeat(19).as_str(),
        ] {
            let header = std_entry(&key, ID, ts, BODY);
            let err = verify_standard(&[std_secret()], ID, ts, &header, BODY, NOW, TOLERANCE)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    SignatureError::MalformedHeader {
                        header: WEBHOOK_TIMESTAMP_HEADER,
                        ..
                    } | SignatureError::MissingHeader(WEBHOOK_TIMESTAMP_HEADER)
                ),
                "{ts:?}: {err:?}"
            );
        }
        let ts = NOW.to_string();
        let long = "m".repeat(crate::sources::MAX_ID_BYTES + 1);
        for id in ["", "msg.1", "msg 1", "msg\n1", long.as_str()] {
            let header = std_entry(&key, id, &ts, BODY);
            let err = verify_standard(&[std_secret()], id, &ts, &header, BODY, NOW, TOLERANCE)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    SignatureError::MalformedHeader {
                        header: WEBHOOK_ID_HEADER,
                        ..
                    } | SignatureError::MissingHeader(WEBHOOK_ID_HEADER)
                        | SignatureError::HeaderTooLong {
                            header: WEBHOOK_ID_HEADER,
                            ..
                        }
                ),
                "{id:?}: {err:?}"
            );
        }
    }

    #[test]
    fn malformed_pagerduty_headers_refused() {
        let good = pd_entry(PD_KEY, BODY);
        let secrets = pd(&[PD_KEY]);
        let nine = [good.as_str(); 9].join(",");
        let long = format!("{good},{}", "x".repeat(2048));
        let cases: Vec<Case> = vec![
            ("", |e| matches!(e, SignatureError::MissingHeader(_))),
            ("  ", |e| matches!(e, SignatureError::MissingHeader(_))),
            ("v1=abc", |e| {
                matches!(e, SignatureError::MalformedHeader { .. })
            }),
            (&good[..good.len() - 1], |e| {
                matches!(e, SignatureError::MalformedHeader { .. })
            }),
            ("v1=", |e| {
                matches!(e, SignatureError::MalformedHeader { .. })
            }),
            ("v2=00ff", |e| matches!(e, SignatureError::NoV1Signature(_))),
            ("sha256", |e| {
                matches!(e, SignatureError::MalformedHeader { .. })
            }),
            (&nine, |e| {
                matches!(e, SignatureError::TooManySignatures { count: 9, .. })
            }),
            (&long, |e| matches!(e, SignatureError::HeaderTooLong { .. })),
        ];
        for (header, expected) in cases {
            let err = verify_pagerduty(&secrets, header, BODY).unwrap_err();
            assert!(expected(&err), "{header:?}: {err:?}");
        }
        // v2 with a matching-looking MAC is still not a v1 signature.
        let v2 = good.replacen("v1=", "v2=", 1);
        let err = verify_pagerduty(&secrets, &v2, BODY).unwrap_err();
        assert!(matches!(err, SignatureError::NoV1Signature(_)), "{err:?}");
        // Eight is allowed, and the one matching signature among them is found.
        let zero = format!("v1={}", "00".repeat(32));
        let eight = format!("{},{good}", [zero.as_str(); 7].join(","));
        verify_pagerduty(&secrets, &eight, BODY).unwrap();
    }

    #[test]
    fn malformed_standard_headers_refused() {
        let (key, _) = std_key();
        let good = std_entry(&key, ID, &NOW.to_string(), BODY);
        let nine = [good.as_str(); 9].join(" ");
        let long = format!("{good} v1a,{}", "A".repeat(2048));
        let short = format!("v1,{}", BASE64.encode([1u8; 31]));
        let cases: Vec<Case> = vec![
            ("", |e| matches!(e, SignatureError::MissingHeader(_))),
            ("v1,not-base64!", |e| {
                matches!(e, SignatureError::MalformedHeader { .. })
            }),
            (&short, |e| {
                matches!(e, SignatureError::MalformedHeader { .. })
            }),
            ("v1=abcd", |e| {
                matches!(e, SignatureError::MalformedHeader { .. })
            }),
            ("v1a,c2lnbmF0dXJl", |e| {
                matches!(e, SignatureError::NoV1Signature(_))
            }),
            (&nine, |e| {
                matches!(e, SignatureError::TooManySignatures { count: 9, .. })
            }),
            (&long, |e| matches!(e, SignatureError::HeaderTooLong { .. })),
        ];
        for (header, expected) in cases {
            let err = verify_std(header, NOW, NOW, BODY).unwrap_err();
            assert!(expected(&err), "{header:?}: {err:?}");
        }
    }

    #[test]
    fn secret_file_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_secret(dir.path(), b"pd-test-secret-one\n", 0o600);
        let secret = Secret::from_file(&path).unwrap().into_pagerduty().unwrap();
        verify_pagerduty(&[secret], &pd_entry(PD_KEY, BODY), BODY).unwrap();
        // Only one newline is trimmed: the second is part of the key.
        let path = write_secret(dir.path(), b"pd-test-secret-one\n\n", 0o400);
        let secret = Secret::from_file(&path).unwrap().into_pagerduty().unwrap();
        let err = verify_pagerduty(&[secret], &pd_entry(PD_KEY, BODY), BODY).unwrap_err();
        assert!(matches!(err, SignatureError::NoMatch), "{err:?}");

        let (key, text) = std_key();
        let path = write_secret(dir.path(), format!("{text}\r\n").as_bytes(), 0o600);
        let secret = Secret::from_file(&path)
            .unwrap()
            .into_standard_webhooks()
            .unwrap();
        let header = std_entry(&key, ID, &NOW.to_string(), BODY);
        let ts = NOW.to_string();
        verify_standard(&[secret], ID, &ts, &header, BODY, NOW, TOLERANCE).unwrap();
    }

    #[test]
    fn secret_file_refused_when_open_empty_long_or_missing() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let path = write_secret(dir.path(), b"pd-test-secret-one\n", mode);
            let err = Secret::from_file(&path).unwrap_err();
            assert!(
                matches!(err, SignatureError::SecretFilePermissions { mode: m, .. } if m == mode),
                "{mode:o}: {err:?}"
            );
            let message = err.to_string();
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(message.contains("0600"), "{message}");
            assert!(!message.contains("pd-test-secret"), "{message}");
        }
        for text in [&b""[..], b"\n", b"\r\n"] {
            let path = write_secret(dir.path(), text, 0o600);
            let err = Secret::from_file(&path).unwrap_err();
            assert!(
                matches!(err, SignatureError::SecretFileEmpty { .. }),
                "{err:?}"
            );
        }
        let path = write_secret(dir.path(), &[b'a'; MAX_SECRET_FILE_BYTES + 1], 0o600);
        let err = Secret::from_file(&path).unwrap_err();
        assert!(
            matches!(err, SignatureError::SecretFileTooLong { .. }),
            "{err:?}"
        );
        let path = write_secret(dir.path(), &[b'a'; MAX_SECRET_FILE_BYTES], 0o600);
        Secret::from_file(&path).unwrap();
        let err = Secret::from_file(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, SignatureError::SecretFile { .. }), "{err:?}");
    }

    #[test]
    fn standard_secret_must_be_base64() {
        for text in [
            &b"whsec_not base64!"[..],
            b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
            b"whsec_%%%%",
        ] {
            let err = Secret::standard_webhooks(text).unwrap_err();
            assert!(matches!(err, SignatureError::SecretNotBase64), "{err:?}");
        }
        for text in [&b"whsec_"[..], b""] {
            let err = Secret::standard_webhooks(text).unwrap_err();
            assert!(matches!(err, SignatureError::EmptySecret), "{err:?}");
        }
        assert!(matches!(
            Secret::pagerduty(b""),
            Err(SignatureError::EmptySecret)
        ));
    }

    #[test]
    fn debug_of_a_secret_shows_no_bytes() {
        let text = b"pd-test-secret-one";
        let shown = format!("{:?} {:#?}", Secret::pagerduty(text).unwrap(), std_secret());
        assert!(shown.contains("len"), "{shown}");
        let (key, std_text) = std_key();
        for needle in [
            String::from_utf8_lossy(text).into_owned(),
            crate::hex::lower(text),
            format!("{:?}", &text[..4]),
            std_text,
            BASE64.encode(&key),
            crate::hex::lower(&key),
            format!("{:?}", &key[..4]),
        ] {
            assert!(!shown.contains(&needle), "{needle} in {shown}");
        }
    }
}
