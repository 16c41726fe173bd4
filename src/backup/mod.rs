//! Backups of a server's data directory, and restoring one (docs/operations.md, "Back up
//! and restore"): the archive format, its encryption, and writing a restored directory.
//!
//! An archive is one [age](https://age-encryption.org) file. Inside it, in clear only
//! once decrypted: [`MAGIC`], the manifest's length (u32, big-endian), the manifest
//! (JSON, [`Manifest`]: every entry's path, mode, size and SHA-256), then each file
//! entry's bytes in manifest order. The whole archive is encrypted, to a passphrase
//! (age's scrypt recipient) or to public keys (X25519 `age1…`, post-quantum `age1pq1…`):
//! the CA keys and the audit log's key inside it are never written in clear, and there is
//! no way to ask for an archive that is not encrypted.
//!
//! The server takes the snapshot (`server::admin` `Backup`): the store and the audit log
//! as one read transaction each sees them, and the key directory read with every CA's
//! rotation held off. Restoring is offline: [`restore`] writes into a staging directory
//! beside the target, checks every entry's digest and the archive's end, and only then
//! renames it into place, so a wrong passphrase, a corrupted or truncated archive, or a
//! target that is not empty changes nothing.
//!
//! Must never: write a key in clear, write outside the target's staging directory, or
//! leave a partly restored data directory where a server would start on it.

use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The first bytes of a decrypted archive: its format and version.
pub const MAGIC: &[u8] = b"writ-backup/1\n";
/// The format version [`Manifest::format`] carries.
pub const FORMAT: u32 = 1;
/// The largest manifest read (it lists paths and digests, never contents).
pub const MAX_MANIFEST_LEN: u32 = 4 << 20;
/// The most entries an archive may list.
pub const MAX_ENTRIES: usize = 100_000;
/// The most public keys a backup may be encrypted to.
pub const MAX_RECIPIENTS: usize = 16;
/// The longest recipient accepted (a post-quantum one is about 2,000 characters).
pub const MAX_RECIPIENT_LEN: usize = 4096;
/// The scrypt work factor of a passphrase (N = 2^18: 256 MiB and about a second), as
/// age's own tool uses. Fixed, not calibrated to the machine as the age crate would: on
/// a fast host calibration picks 2^19 or 2^20, up to 1 GiB held by the server while it
/// encrypts.
pub const SCRYPT_LOG_N: u8 = 18;
/// The longest passphrase accepted.
pub const MAX_PASSPHRASE_LEN: usize = 1024;
/// The store's file in a data directory (`store::Store::open_at`).
pub const STORE_FILE: &str = "writ.redb";
/// The audit log's file in a data directory (`server::Issuer::open`).
pub const AUDIT_FILE: &str = "audit.redb";
/// The key directory: every CA's keys, tenants' too, and the audit log's key.
pub const KEY_DIR: &str = "keys";

/// Why a backup or a restore failed. Nothing is written when it does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The passphrase or recipients asked for are not usable.
    #[error("{0}")]
    Encryption(String),
    /// The archive could not be decrypted with what was given.
    #[error("cannot decrypt the backup: {0}")]
    Decrypt(String),
    /// The archive is not a writ backup, is damaged, or was changed.
    #[error("the backup is damaged or not a writ backup: {0}")]
    Corrupt(String),
    /// The target directory cannot be restored into.
    #[error("{0}")]
    Target(String),
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and to which path.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// What an archive holds: enough to check each entry before anything is written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The format version ([`FORMAT`]).
    pub format: u32,
    /// When the snapshot was taken (Unix seconds, the server's clock).
    pub created_at: i64,
    /// The deployment's base trust domain.
    pub trust_domain: String,
    /// How many records the audit log held.
    pub audit_records: u64,
    /// The data directory's own mode.
    pub root_mode: u32,
    /// Every directory and file, parents before children.
    pub entries: Vec<Entry>,
}

/// Whether an entry is a directory or a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A directory: no bytes in the archive.
    Dir,
    /// A regular file: `size` bytes in the archive.
    File,
}

/// One directory or file of the data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Its path under the data directory, `/`-separated ([`check_path`]).
    pub path: String,
    /// Directory or file.
    pub kind: EntryKind,
    /// Its permission bits (at most 0o777).
    pub mode: u32,
    /// Its length in bytes (0 for a directory).
    pub size: u64,
    /// SHA-256 of its bytes, lowercase hex (empty for a directory).
    pub sha256: String,
}

/// Whether `path` may be an entry: relative, `/`-separated names of letters, digits,
/// `.`, `_` and `-` (never `.` or `..` alone), under one of the data directory's backed
/// up parts ([`STORE_FILE`], [`AUDIT_FILE`], [`KEY_DIR`]). The one rule both sides use.
pub fn check_path(path: &str) -> Result<(), BackupError> {
    let bad = |why: &str| Err(BackupError::Corrupt(format!("entry path {path:?}: {why}")));
    if path.is_empty() || path.len() > 1024 {
        return bad("empty or too long");
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 8 {
        return bad("too deep");
    }
    for part in &parts {
        if part.is_empty() || *part == "." || *part == ".." || part.len() > 255 {
            return bad("not a plain name");
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("not a plain name");
        }
    }
    match (parts[0], parts.len()) {
        (STORE_FILE | AUDIT_FILE, 1) | (KEY_DIR, _) => Ok(()),
        _ => bad("not a part of a data directory that backups hold"),
    }
}

impl Manifest {
    /// Checks what a manifest says before anything is written: the format, each path
    /// and mode, parents listed before their children, no path twice, the store and the
    /// audit log present.
    pub fn check(&self) -> Result<(), BackupError> {
        let bad = |why: String| Err(BackupError::Corrupt(why));
        if self.format != FORMAT {
            return bad(format!(
                "format {} (this writ reads format {FORMAT})",
                self.format
            ));
        }
        if self.entries.len() > MAX_ENTRIES {
            return bad("too many entries".into());
        }
        if self.root_mode > 0o777 {
            return bad(format!("data directory mode {:o}", self.root_mode));
        }
        let mut dirs = std::collections::BTreeSet::new();
        let mut seen = std::collections::BTreeSet::new();
        for entry in &self.entries {
            check_path(&entry.path)?;
            if !seen.insert(entry.path.as_str()) {
                return bad(format!("{} is listed twice", entry.path));
            }
            if entry.mode > 0o777 {
                return bad(format!("{} has mode {:o}", entry.path, entry.mode));
            }
            if let Some((parent, _)) = entry.path.rsplit_once('/')
                && !dirs.contains(parent)
            {
                return bad(format!("{} comes before its directory", entry.path));
            }
            match entry.kind {
                EntryKind::Dir => {
                    if entry.size != 0 || !entry.sha256.is_empty() {
                        return bad(format!("directory {} has contents", entry.path));
                    }
                    dirs.insert(entry.path.as_str());
                }
                EntryKind::File => {
                    if entry.sha256.len() != 64
                        || !entry
                            .sha256
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    {
                        return bad(format!("{} has no SHA-256", entry.path));
                    }
                }
            }
        }
        for required in [STORE_FILE, AUDIT_FILE] {
            if !self
                .entries
                .iter()
                .any(|e| e.path == required && e.kind == EntryKind::File)
            {
                return bad(format!("{required} is missing"));
            }
        }
        Ok(())
    }
}

/// Who can open a backup: one passphrase, or one or more public keys (never both: age
/// does not mix them).
pub enum Encryption {
    /// age's scrypt recipient.
    Passphrase(SecretString),
    /// X25519 or post-quantum recipients.
    Recipients(Vec<Box<dyn age::Recipient + Send>>),
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encryption::Passphrase(_) => f.write_str("Encryption::Passphrase(..)"),
            Encryption::Recipients(r) => write!(f, "Encryption::Recipients({})", r.len()),
        }
    }
}

impl Encryption {
    /// The encryption a backup request asks for: a passphrase (not empty) or recipients,
    /// exactly one of the two, each bounded and parsed. The passphrase is never echoed.
    pub fn parse(passphrase: Option<String>, recipients: &[String]) -> Result<Self, BackupError> {
        let passphrase = passphrase.map(Zeroizing::new);
        let bad = |why: String| Err(BackupError::Encryption(why));
        match (passphrase, recipients.is_empty()) {
            (Some(_), false) => {
                bad("give a passphrase or recipients, not both (age cannot mix them)".into())
            }
            (None, true) => bad(
                "a backup holds private keys: give a passphrase (--passphrase-file or WRIT_BACKUP_PASSPHRASE) or --recipient age1…"
                    .into(),
            ),
            (Some(p), true) => {
                if p.is_empty() {
                    return bad("the passphrase is empty".into());
                }
                if p.len() > MAX_PASSPHRASE_LEN {
                    return bad(format!(
                        "the passphrase is longer than {MAX_PASSPHRASE_LEN} bytes"
                    ));
                }
                Ok(Encryption::Passphrase(SecretString::from(p.to_string())))
            }
            (None, false) => {
                if recipients.len() > MAX_RECIPIENTS {
                    return bad(format!("at most {MAX_RECIPIENTS} recipients"));
                }
                let mut parsed: Vec<Box<dyn age::Recipient + Send>> = Vec::new();
                for (i, r) in recipients.iter().enumerate() {
                    parsed.push(parse_recipient(i + 1, r)?);
                }
                // age refuses to mix X25519 and post-quantum recipients: say so now,
                // before any work.
                let pq = recipients.iter().filter(|r| r.starts_with("age1pq1")).count();
                if pq != 0 && pq != recipients.len() {
                    return bad(
                        "recipients are all X25519 (age1…) or all post-quantum (age1pq1…), not a mix"
                            .into(),
                    );
                }
                Ok(Encryption::Recipients(parsed))
            }
        }
    }

    /// Starts an age file on `out` encrypted as asked.
    fn wrap<W: Write>(&self, out: W) -> Result<age::stream::StreamWriter<W>, BackupError> {
        let encryptor = match self {
            Encryption::Passphrase(p) => {
                let mut recipient = age::scrypt::Recipient::new(p.clone());
                recipient.set_work_factor(SCRYPT_LOG_N);
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(|e| BackupError::Encryption(e.to_string()))?
            }
            Encryption::Recipients(list) => {
                age::Encryptor::with_recipients(list.iter().map(|r| &**r as &dyn age::Recipient))
                    .map_err(|e| BackupError::Encryption(e.to_string()))?
            }
        };
        encryptor.wrap_output(out).map_err(io("writing the backup"))
    }
}

/// The `n`th public key, checked: bounded, then parsed as age's X25519 or post-quantum
/// recipient (named by position when it does not parse, never echoed).
fn parse_recipient(n: usize, r: &str) -> Result<Box<dyn age::Recipient + Send>, BackupError> {
    if r.len() > MAX_RECIPIENT_LEN {
        return Err(BackupError::Encryption(format!(
            "recipient {n} is longer than {MAX_RECIPIENT_LEN} characters"
        )));
    }
    let not = |e: &str| {
        BackupError::Encryption(format!(
            "recipient {n} is not an age public key (age1… or age1pq1…): {e}"
        ))
    };
    if r.starts_with("age1pq1") {
        r.parse::<age::pq::Recipient>()
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(not)
    } else {
        // Classic X25519: what operators' existing age keys are; age1pq1… is preferred
        // for new ones (docs/operations.md, "Back up and restore").
        #[allow(deprecated)]
        r.parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(not)
    }
}

/// The environment variable a passphrase may come from (never a command-line value).
pub const PASSPHRASE_ENV: &str = "WRIT_BACKUP_PASSPHRASE";

/// The passphrase from `file` if given, else from [`PASSPHRASE_ENV`] if set; one
/// trailing newline dropped (as `echo` and editors leave it). `None` if neither.
pub fn read_passphrase(file: Option<&Path>) -> Result<Option<Zeroizing<String>>, BackupError> {
    let text = match file {
        Some(path) => Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(io(format!("reading passphrase file {}", path.display())))?,
        ),
        None => match std::env::var(PASSPHRASE_ENV) {
            Ok(text) => Zeroizing::new(text),
            Err(_) => return Ok(None),
        },
    };
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Some(Zeroizing::new(trimmed.to_owned())))
}

/// What can open a backup when restoring: the passphrase, or identities from an age
/// identity file (`AGE-SECRET-KEY-…` lines).
pub enum Decryption {
    /// The passphrase it was made with.
    Passphrase(SecretString),
    /// Identities, one of which it was encrypted to.
    Identities(Vec<Box<dyn age::Identity + Send + Sync>>),
}

impl std::fmt::Debug for Decryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decryption::Passphrase(_) => f.write_str("Decryption::Passphrase(..)"),
            Decryption::Identities(i) => write!(f, "Decryption::Identities({})", i.len()),
        }
    }
}

impl Decryption {
    /// The identities in the age identity file at `path` (never echoed).
    pub fn identity_file(path: &Path) -> Result<Self, BackupError> {
        let file = age::IdentityFile::from_file(path.display().to_string())
            .map_err(io(format!("reading identity file {}", path.display())))?;
        let identities = file
            .into_identities()
            .map_err(|e| BackupError::Decrypt(format!("identity file {}: {e}", path.display())))?;
        if identities.is_empty() {
            return Err(BackupError::Decrypt(format!(
                "identity file {} holds no identity",
                path.display()
            )));
        }
        Ok(Decryption::Identities(identities))
    }

    /// A passphrase ([`read_passphrase`]).
    pub fn passphrase(text: &str) -> Self {
        Decryption::Passphrase(SecretString::from(text.to_owned()))
    }
}

/// An entry's contents as the server collected them.
pub enum Content {
    /// A directory.
    Dir,
    /// Bytes held in memory, wiped when dropped (key files: read once, under the CAs'
    /// rotation lock, so what is hashed is what is written).
    Bytes(Zeroizing<Vec<u8>>),
    /// A file the snapshot wrote and nothing else changes (the store's and the audit
    /// log's copies).
    File(PathBuf),
}

/// The entries of a snapshot, each with its contents, in manifest order.
#[derive(Default)]
pub struct Collected {
    entries: Vec<(Entry, Content)>,
}

impl std::fmt::Debug for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Collected({} entries)", self.entries.len())
    }
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777
}

fn sha256_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut file = std::fs::File::open(path).map_err(io(format!("reading {}", path.display())))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, crate::hex::lower(ctx.finish().as_ref())))
}

impl Collected {
    /// Adds `other`'s entries after these.
    pub fn append(&mut self, other: Collected) {
        self.entries.extend(other.entries);
    }

    /// Adds a file the snapshot wrote at `file`, as entry `path`.
    pub fn add_file(&mut self, path: &str, file: PathBuf) -> Result<(), BackupError> {
        check_path(path)?;
        let meta = std::fs::metadata(&file).map_err(io(format!("reading {}", file.display())))?;
        let (size, sha256) = sha256_file(&file)?;
        self.entries.push((
            Entry {
                path: path.to_owned(),
                kind: EntryKind::File,
                mode: mode_of(&meta),
                size,
                sha256,
            },
            Content::File(file),
        ));
        Ok(())
    }

    /// Adds the directory `dir` as entry `path`, and everything under it: directories
    /// and regular files, read into memory now. Anything else (a link, a socket) is
    /// refused rather than left out.
    pub fn add_tree(&mut self, path: &str, dir: &Path) -> Result<(), BackupError> {
        check_path(path)?;
        let meta =
            std::fs::symlink_metadata(dir).map_err(io(format!("reading {}", dir.display())))?;
        if !meta.is_dir() {
            return Err(BackupError::Target(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        self.entries.push((
            Entry {
                path: path.to_owned(),
                kind: EntryKind::Dir,
                mode: mode_of(&meta),
                size: 0,
                sha256: String::new(),
            },
            Content::Dir,
        ));
        let mut children: Vec<_> = std::fs::read_dir(dir)
            .map_err(io(format!("listing {}", dir.display())))?
            .collect::<Result<_, _>>()
            .map_err(io(format!("listing {}", dir.display())))?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let name = child.file_name();
            let name = name.to_str().ok_or_else(|| {
                BackupError::Target(format!("{}: a file name that is not UTF-8", dir.display()))
            })?;
            let child_path = format!("{path}/{name}");
            let file_type = child
                .file_type()
                .map_err(io(format!("reading {}", child.path().display())))?;
            if file_type.is_dir() {
                self.add_tree(&child_path, &child.path())?;
            } else if file_type.is_file() {
                check_path(&child_path)?;
                let bytes = Zeroizing::new(
                    std::fs::read(child.path())
                        .map_err(io(format!("reading {}", child.path().display())))?,
                );
                let meta = child
                    .metadata()
                    .map_err(io(format!("reading {}", child.path().display())))?;
                self.entries.push((
                    Entry {
                        path: child_path,
                        kind: EntryKind::File,
                        mode: mode_of(&meta),
                        size: bytes.len() as u64,
                        sha256: crate::hex::sha256(&bytes),
                    },
                    Content::Bytes(bytes),
                ));
            } else {
                return Err(BackupError::Target(format!(
                    "{} is neither a file nor a directory: refusing an incomplete backup",
                    child.path().display()
                )));
            }
        }
        Ok(())
    }

    /// The manifest of these entries.
    pub fn manifest(
        &self,
        created_at: i64,
        trust_domain: &str,
        audit_records: u64,
        root_mode: u32,
    ) -> Manifest {
        Manifest {
            format: FORMAT,
            created_at,
            trust_domain: trust_domain.to_owned(),
            audit_records,
            root_mode: root_mode & 0o777,
            entries: self.entries.iter().map(|(e, _)| e.clone()).collect(),
        }
    }

    /// Writes the archive of `manifest` (made by [`Collected::manifest`]) to `out`,
    /// encrypted as `encryption` says; returns `out`.
    pub fn write<W: Write>(
        &self,
        manifest: &Manifest,
        encryption: &Encryption,
        out: W,
    ) -> Result<W, BackupError> {
        let json = serde_json::to_vec(manifest)
            .map_err(|e| BackupError::Corrupt(format!("manifest: {e}")))?;
        let len = u32::try_from(json.len())
            .ok()
            .filter(|l| *l <= MAX_MANIFEST_LEN)
            .ok_or_else(|| BackupError::Corrupt("the manifest is too large".into()))?;
        let mut w = encryption.wrap(out)?;
        let write = io("writing the backup");
        (|| {
            w.write_all(MAGIC)?;
            w.write_all(&len.to_be_bytes())?;
            w.write_all(&json)?;
            for (entry, content) in &self.entries {
                match content {
                    Content::Dir => {}
                    Content::Bytes(bytes) => w.write_all(bytes)?,
                    Content::File(path) => {
                        let copied = std::io::copy(
                            &mut std::fs::File::open(path)?.take(entry.size),
                            &mut w,
                        )?;
                        if copied != entry.size {
                            return Err(std::io::Error::other(format!(
                                "{} changed while it was backed up",
                                path.display()
                            )));
                        }
                    }
                }
            }
            Ok(())
        })()
        .map_err(write)?;
        w.finish().map_err(io("writing the backup"))
    }
}

/// Why the target of a restore is refused, if it is: it must be absent or an empty
/// directory (a restore never merges into, or replaces, a data directory).
pub fn check_target(target: &Path) -> Result<(), BackupError> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("reading {}", target.display()))(e)),
        Ok(meta) if !meta.is_dir() => Err(BackupError::Target(format!(
            "{} exists and is not a directory",
            target.display()
        ))),
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(target).map_err(io(format!("listing {}", target.display())))?;
            if entries.next().is_some() {
                Err(BackupError::Target(format!(
                    "{} is not empty: restore into an absent or empty directory (stop the server; move the old data directory aside)",
                    target.display()
                )))
            } else {
                Ok(())
            }
        }
    }
}

/// Removes the staging directory unless the restore completed.
struct Staging {
    path: PathBuf,
    done: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn decrypt_error(e: age::DecryptError) -> BackupError {
    match e {
        // From the header, before any content: the key given does not open it (a
        // wrong passphrase fails scrypt's unwrapping as `DecryptionFailed`).
        age::DecryptError::NoMatchingKeys
        | age::DecryptError::KeyDecryptionFailed
        | age::DecryptError::DecryptionFailed => BackupError::Decrypt(
            "wrong passphrase or identity (or the archive's header is damaged)".into(),
        ),
        age::DecryptError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            BackupError::Corrupt("truncated".into())
        }
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            BackupError::Corrupt("not an age file".into())
        }
        age::DecryptError::InvalidMac => BackupError::Corrupt("its header was changed".into()),
        other => BackupError::Decrypt(other.to_string()),
    }
}

/// A read error inside the decrypted stream: damage (age authenticates every chunk).
fn read_error(e: std::io::Error) -> BackupError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Corrupt("truncated".into()),
        _ => BackupError::Corrupt(format!("decrypting: {e}")),
    }
}

/// Restores the archive read from `archive` into `target` (absent or empty; its parent
/// must exist), with `key`. Every entry is written into a staging directory beside
/// `target` and checked against its digest, the archive is read to its authenticated
/// end, and only then is the staging directory renamed to `target`. On any error the
/// staging directory is removed and `target` is as it was. Returns the manifest.
pub fn restore(
    archive: impl Read,
    key: &Decryption,
    target: &Path,
) -> Result<Manifest, BackupError> {
    check_target(target)?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BackupError::Target(format!("{}: name a directory", target.display())))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let decryptor = age::Decryptor::new(std::io::BufReader::new(archive)).map_err(decrypt_error)?;
    let mut reader = match key {
        Decryption::Passphrase(p) => {
            if !decryptor.is_scrypt() {
                return Err(BackupError::Decrypt(
                    "this backup is encrypted to public keys: give --identity FILE".into(),
                ));
            }
            let mut identity = age::scrypt::Identity::new(p.clone());
            // What a backup uses, with room to grow; never the 16 s and many GiB a
            // hostile archive could otherwise ask of the machine restoring it.
            identity.set_max_work_factor(SCRYPT_LOG_N + 2);
            decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity))
        }
        Decryption::Identities(ids) => {
            if decryptor.is_scrypt() {
                return Err(BackupError::Decrypt(
                    "this backup is encrypted to a passphrase: give --passphrase-file FILE or WRIT_BACKUP_PASSPHRASE".into(),
                ));
            }
            decryptor.decrypt(ids.iter().map(|i| &**i as &dyn age::Identity))
        }
    }
    .map_err(decrypt_error)?;

    let mut magic = [0u8; MAGIC.len()];
    reader.read_exact(&mut magic).map_err(read_error)?;
    if magic != MAGIC {
        return Err(BackupError::Corrupt("not a writ backup".into()));
    }
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).map_err(read_error)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_MANIFEST_LEN {
        return Err(BackupError::Corrupt("the manifest is too large".into()));
    }
    let mut json = vec![0u8; len as usize];
    reader.read_exact(&mut json).map_err(read_error)?;
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|e| BackupError::Corrupt(format!("manifest: {e}")))?;
    manifest.check()?;

    let staging_path = parent.join(format!(".{name}.restore-{}", std::process::id()));
    let mut staging = Staging {
        path: staging_path.clone(),
        done: false,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging_path)
            .map_err(io(format!("creating {}", staging_path.display())))?;
    }
    let mut dirs = Vec::new();
    for entry in &manifest.entries {
        let path = staging_path.join(&entry.path);
        match entry.kind {
            EntryKind::Dir => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(io(format!("creating {}", path.display())))?;
                dirs.push((path, entry.mode));
            }
            EntryKind::File => write_entry(&mut reader, entry, &path)?,
        }
    }
    // The archive ends here: reading on makes age check the last chunk's tag, and
    // anything more is not what the manifest lists.
    let mut rest = [0u8; 1];
    match reader.read(&mut rest).map_err(read_error)? {
        0 => {}
        _ => return Err(BackupError::Corrupt("bytes after the last entry".into())),
    }
    set_mode(&staging_path, manifest.root_mode)?;
    for (dir, mode) in dirs.iter().rev() {
        set_mode(dir, *mode)?;
        sync_dir(dir)?;
    }
    sync_dir(&staging_path)?;
    if target.exists() {
        // Checked empty above; a directory that filled since is refused here.
        std::fs::remove_dir(target).map_err(io(format!(
            "replacing the empty directory {}",
            target.display()
        )))?;
    }
    std::fs::rename(&staging_path, target).map_err(io(format!(
        "moving the restored directory to {}",
        target.display()
    )))?;
    staging.done = true;
    sync_dir(&parent)?;
    Ok(manifest)
}

/// Writes one file entry's bytes from `reader` to a new file at `path`, hashing them;
/// refuses a digest that does not match the manifest's.
fn write_entry(reader: &mut impl Read, entry: &Entry, path: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = entry.size;
    let mut buf = Zeroizing::new(vec![0u8; 64 * 1024]);
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = reader.read(&mut buf[..want]).map_err(read_error)?;
        if n == 0 {
            return Err(BackupError::Corrupt(format!("{} is truncated", entry.path)));
        }
        ctx.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(io(format!("writing {}", path.display())))?;
        left -= n as u64;
    }
    if crate::hex::lower(ctx.finish().as_ref()) != entry.sha256 {
        return Err(BackupError::Corrupt(format!(
            "{} does not match its SHA-256 in the manifest",
            entry.path
        )));
    }
    file.sync_all()
        .map_err(io(format!("syncing {}", path.display())))?;
    set_mode(path, entry.mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

#[cfg(test)]
mod tests;
