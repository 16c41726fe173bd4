//! The log's signing key and its checkpoints (C2SP tlog-checkpoint in a C2SP signed note).
//!
//! The key is Ed25519, the signed-note standard's algorithm, made and kept on this host
//! (`keys/audit.key`, 0600). Its verifier key (`keys/audit.pub`, the signed-note `vkey`
//! text `<name>+<id>+<base64>`) is public: whoever keeps a checkpoint keeps that too.

use super::AuditError;
use signed_note::{Note, StandardVerifier, VerifierList};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tlog_tiles::{Checkpoint, Hash};
use zeroize::Zeroizing;

/// The log's signing key.
pub struct LogKey {
    signer: signed_note::StandardSigner,
    vkey: String,
}

impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogKey")
            .field("vkey", &self.vkey)
            .finish_non_exhaustive()
    }
}

impl LogKey {
    /// Loads the key in `dir` (`audit.key`, `audit.pub`), or makes one named `origin`.
    pub fn open_or_create(dir: &Path, origin: &str) -> Result<Self, AuditError> {
        let skey_path = dir.join("audit.key");
        let vkey_path = dir.join("audit.pub");
        if skey_path.exists() {
            let skey = Zeroizing::new(std::fs::read_to_string(&skey_path)?);
            let signer = signed_note::StandardSigner::new(skey.trim())
                .map_err(|e| AuditError::Key(format!("{}: {e}", skey_path.display())))?;
            let vkey = std::fs::read_to_string(&vkey_path)?.trim().to_owned();
            let key = LogKey { signer, vkey };
            // The pair must match: a verifier key from elsewhere would make every
            // checkpoint fail to verify.
            key.verifier()?;
            let probe = key.sign(b"probe\n")?;
            let verifiers = key.verifiers()?;
            Note::from_bytes(&probe)
                .and_then(|n| n.verify(&verifiers).map(|_| ()))
                .map_err(|_| {
                    AuditError::Key(format!(
                        "{} does not match {}",
                        vkey_path.display(),
                        skey_path.display()
                    ))
                })?;
            return Ok(key);
        }
        if !signed_note::is_key_name_valid(origin) {
            return Err(AuditError::Key(format!(
                "{origin:?} is not a valid signed-note key name"
            )));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), seed.as_mut())
            .map_err(|_| AuditError::Key("no randomness for the log key".into()))?;
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let vkey = signed_note::new_ed25519_verifier_key(origin, &signing.verifying_key());
        let mut private = Zeroizing::new(vec![1u8]);
        private.extend_from_slice(seed.as_ref());
        let id = vkey.split('+').nth(1).unwrap_or_default();
        let skey = Zeroizing::new(format!(
            "PRIVATE+KEY+{origin}+{id}+{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &*private)
        ));
        let signer = signed_note::StandardSigner::new(&skey)
            .map_err(|e| AuditError::Key(format!("new log key: {e}")))?;
        write_new(&skey_path, skey.as_bytes(), 0o600)?;
        write_new(&vkey_path, format!("{vkey}\n").as_bytes(), 0o644)?;
        Ok(LogKey { signer, vkey })
    }

    /// The verifier key, as text.
    pub fn vkey(&self) -> &str {
        &self.vkey
    }

    fn verifier(&self) -> Result<StandardVerifier, AuditError> {
        StandardVerifier::new(&self.vkey).map_err(|e| AuditError::Key(e.to_string()))
    }

    fn verifiers(&self) -> Result<VerifierList, AuditError> {
        Ok(VerifierList::new(vec![Box::new(self.verifier()?)]))
    }

    /// Signs `text` (which must end in a newline) as a note.
    pub fn sign(&self, text: &[u8]) -> Result<Vec<u8>, AuditError> {
        let mut note = Note::new(text, &[]).map_err(|e| AuditError::Key(e.to_string()))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| AuditError::Key(e.to_string()))?;
        Ok(note.to_bytes())
    }

    /// A signed checkpoint of the tree of `size` records with root `root`.
    pub fn checkpoint(&self, origin: &str, size: u64, root: Hash) -> Result<Vec<u8>, AuditError> {
        let text = Checkpoint::new(origin, size, root, "")
            .map_err(|e| AuditError::Key(e.to_string()))?
            .to_bytes();
        self.sign(&text)
    }
}

/// A checkpoint whose signature verified.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedCheckpoint {
    /// The log's name.
    pub origin: String,
    /// How many records it covers.
    pub size: u64,
    /// The tree's root at that size.
    pub root: Hash,
}

/// Parses a signed checkpoint and checks its signature against `vkey`. A checkpoint signed
/// by any other key (a forger's, or the right name with another key) is refused.
///
/// `vkey` may hold several verifier keys, one per line: a log several servers share is
/// checkpointed by whichever of them extended it last, each with its own key (docs/ha.md,
/// "The audit log"). A checkpoint signed by any one of them is accepted.
pub fn open_checkpoint(note: &[u8], vkey: &str) -> Result<VerifiedCheckpoint, String> {
    let mut verifiers: Vec<Box<dyn signed_note::Verifier>> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in vkey.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !seen.insert(line) {
            continue;
        }
        let verifier =
            StandardVerifier::new(line).map_err(|e| format!("bad log verifier key: {e}"))?;
        verifiers.push(Box::new(verifier));
    }
    if verifiers.is_empty() {
        return Err("no log verifier key given".to_owned());
    }
    let list = VerifierList::new(verifiers);
    let note = Note::from_bytes(note).map_err(|e| format!("not a signed note: {e}"))?;
    note.verify(&list).map_err(|e| match e {
        signed_note::NoteError::UnverifiedNote => {
            "the checkpoint is not signed by the log's key".to_owned()
        }
        other => format!("the checkpoint's signature does not verify: {other}"),
    })?;
    let checkpoint =
        Checkpoint::from_bytes(note.text()).map_err(|e| format!("malformed checkpoint: {e}"))?;
    Ok(VerifiedCheckpoint {
        origin: checkpoint.origin().to_owned(),
        size: checkpoint.size(),
        root: *checkpoint.hash(),
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AuditError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_verify_only_under_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = LogKey::open_or_create(dir.path(), "example.org/writ-audit").unwrap();
        let root = tlog_tiles::record_hash(b"x");
        let note = key.checkpoint("example.org/writ-audit", 1, root).unwrap();
        let seen = open_checkpoint(&note, key.vkey()).unwrap();
        assert_eq!((seen.size, seen.root), (1, root));

        // Reopening loads the same key.
        let again = LogKey::open_or_create(dir.path(), "example.org/writ-audit").unwrap();
        assert_eq!(again.vkey(), key.vkey());

        // A forger with the same name and another key is refused.
        let other = tempfile::tempdir().unwrap();
        let forger = LogKey::open_or_create(other.path(), "example.org/writ-audit").unwrap();
        let forged = forger
            .checkpoint("example.org/writ-audit", 1, root)
            .unwrap();
        assert!(open_checkpoint(&forged, key.vkey()).is_err());

        // A changed size breaks the signature.
        let text = String::from_utf8(note.clone())
            .unwrap()
            .replacen("\n1\n", "\n2\n", 1);
        assert!(open_checkpoint(text.as_bytes(), key.vkey()).is_err());

        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("audit.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
