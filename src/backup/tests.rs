#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Classic X25519 keys are deprecated in age for new recipients, and are what operators'
// existing age keys are: backups must keep working with them.
#![allow(deprecated)]
use super::*;
use std::os::unix::fs::PermissionsExt;

/// A data directory with a store, an audit log and keys, as a server lays them out.
fn data_dir(root: &Path) -> PathBuf {
    let dir = root.join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(STORE_FILE), b"store bytes").unwrap();
    std::fs::write(dir.join(AUDIT_FILE), vec![7u8; 200_000]).unwrap();
    let keys = dir.join(KEY_DIR);
    std::fs::create_dir_all(keys.join("investigate.example.org")).unwrap();
    for (path, bytes) in [
        ("audit.key", b"AUDIT-SECRET-KEY-BYTES".as_slice()),
        (
            "investigate.example.org/ab.x509.key",
            b"X509-SECRET-KEY-BYTES",
        ),
    ] {
        let p = keys.join(path);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn collect(dir: &Path) -> (Collected, Manifest) {
    let mut c = Collected::default();
    c.add_file(STORE_FILE, dir.join(STORE_FILE)).unwrap();
    c.add_file(AUDIT_FILE, dir.join(AUDIT_FILE)).unwrap();
    c.add_tree(KEY_DIR, &dir.join(KEY_DIR)).unwrap();
    let m = c.manifest(1, "example.org", 3, 0o755);
    (c, m)
}

fn x25519() -> (age::x25519::Identity, Encryption) {
    let id = age::x25519::Identity::generate();
    let enc = Encryption::parse(None, &[id.to_public().to_string()]).unwrap();
    (id, enc)
}

fn archive(dir: &Path, enc: &Encryption) -> Vec<u8> {
    let (c, m) = collect(dir);
    m.check().unwrap();
    c.write(&m, enc, Vec::new()).unwrap()
}

fn leftovers(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-"))
        .collect()
}

#[test]
fn a_restore_is_the_data_directory_byte_for_byte_with_its_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(tmp.path());
    let (id, enc) = x25519();
    let bytes = archive(&dir, &enc);
    let target = tmp.path().join("restored");
    let key = Decryption::Identities(vec![Box::new(id)]);
    let manifest = restore(bytes.as_slice(), &key, &target).unwrap();
    assert_eq!(manifest.audit_records, 3);
    for path in [
        STORE_FILE,
        AUDIT_FILE,
        "keys/audit.key",
        "keys/investigate.example.org/ab.x509.key",
    ] {
        assert_eq!(
            std::fs::read(target.join(path)).unwrap(),
            std::fs::read(dir.join(path)).unwrap(),
            "{path}"
        );
    }
    let mode = |p: &str| {
        std::fs::metadata(target.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("keys/audit.key"), 0o600);
    assert_eq!(mode("keys"), 0o700);
    assert_eq!(mode("."), 0o755);
    assert!(leftovers(tmp.path()).is_empty());
    // An empty directory is a target too.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    restore(bytes.as_slice(), &key, &empty).unwrap();
    assert!(empty.join(STORE_FILE).exists());
}

#[test]
fn no_key_is_in_clear_in_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(tmp.path());
    let (_, enc) = x25519();
    let bytes = archive(&dir, &enc);
    for needle in [
        b"AUDIT-SECRET-KEY-BYTES".as_slice(),
        b"X509-SECRET-KEY-BYTES",
        b"store bytes",
        MAGIC,
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{needle:?} in clear"
        );
    }
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
}

#[test]
fn a_wrong_identity_a_damaged_or_truncated_archive_or_a_full_target_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(tmp.path());
    let (id, enc) = x25519();
    let bytes = archive(&dir, &enc);
    let target = tmp.path().join("restored");
    let right = Decryption::Identities(vec![Box::new(id)]);

    let wrong = Decryption::Identities(vec![Box::new(age::x25519::Identity::generate())]);
    let err = restore(bytes.as_slice(), &wrong, &target).unwrap_err();
    assert!(matches!(err, BackupError::Decrypt(_)), "{err}");
    assert!(
        err.to_string().contains("wrong passphrase or identity"),
        "{err}"
    );
    let err = restore(bytes.as_slice(), &Decryption::passphrase("pw"), &target).unwrap_err();
    assert!(
        err.to_string().contains("encrypted to public keys"),
        "{err}"
    );

    // A flipped bit in the middle of an entry, and the end cut off.
    let mut damaged = bytes.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 1;
    let err = restore(damaged.as_slice(), &right, &target).unwrap_err();
    assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
    let err = restore(&bytes[..bytes.len() - 10], &right, &target).unwrap_err();
    assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
    let err = restore(&b"not an archive"[..], &right, &target).unwrap_err();
    assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
    assert!(!target.exists());
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );

    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("mine"), b"x").unwrap();
    let err = restore(bytes.as_slice(), &right, &target).unwrap_err();
    assert!(matches!(err, BackupError::Target(_)), "{err}");
    assert!(err.to_string().contains("is not empty"), "{err}");
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        1,
        "the target is as it was"
    );
}

#[test]
fn a_digest_that_does_not_match_is_refused_before_the_target_exists() {
    // The archive is authentic (encrypted by whoever holds the public key) but lies
    // about an entry: the digest check catches it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(tmp.path());
    let (id, enc) = x25519();
    let (c, mut m) = collect(&dir);
    m.entries[0].sha256 = "0".repeat(64);
    let bytes = c.write(&m, &enc, Vec::new()).unwrap();
    let target = tmp.path().join("restored");
    let err = restore(
        bytes.as_slice(),
        &Decryption::Identities(vec![Box::new(id)]),
        &target,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("does not match its SHA-256"),
        "{err}"
    );
    assert!(!target.exists());
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn a_passphrase_opens_what_it_encrypted_and_only_that() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(tmp.path());
    let enc = Encryption::parse(Some("correct horse battery staple".into()), &[]).unwrap();
    let bytes = archive(&dir, &enc);
    let target = tmp.path().join("restored");
    let err = restore(bytes.as_slice(), &Decryption::passphrase("wrong"), &target).unwrap_err();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    assert!(!target.exists());
    restore(
        bytes.as_slice(),
        &Decryption::passphrase("correct horse battery staple"),
        &target,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(target.join("keys/audit.key")).unwrap(),
        b"AUDIT-SECRET-KEY-BYTES"
    );
}

#[test]
fn encryption_is_required_and_bounded() {
    let msg = |r: Result<Encryption, BackupError>| r.unwrap_err().to_string();
    assert!(msg(Encryption::parse(None, &[])).contains("holds private keys"));
    assert!(msg(Encryption::parse(Some(String::new()), &[])).contains("empty"));
    let id = age::x25519::Identity::generate().to_public().to_string();
    assert!(
        msg(Encryption::parse(
            Some("pw".into()),
            std::slice::from_ref(&id)
        ))
        .contains("not both")
    );
    let bad = msg(Encryption::parse(None, &["age1nope\u{202e}".into()]));
    assert!(
        bad.contains("recipient 1 is not an age public key"),
        "{bad}"
    );
    assert!(!bad.contains('\u{202e}'));
    let pq = age::pq::Identity::generate().to_public().to_string();
    assert!(msg(Encryption::parse(None, &[id.clone(), pq.clone()])).contains("not a mix"));
    assert!(Encryption::parse(None, &[pq]).is_ok());
    assert!(msg(Encryption::parse(None, &vec![id; MAX_RECIPIENTS + 1])).contains("at most"));
}

#[test]
fn paths_are_plain_names_under_the_parts_a_backup_holds() {
    for ok in [
        "writ.redb",
        "audit.redb",
        "keys",
        "keys/audit.key",
        "keys/a.example/0a.x509.key",
    ] {
        check_path(ok).unwrap();
    }
    for bad in [
        "",
        "/etc/passwd",
        "keys/../../x",
        "keys/./a",
        "keys//a",
        "other",
        "writ.redb/x",
        "keys/a b",
        "keys/\u{202e}",
    ] {
        assert!(check_path(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_manifest_lists_parents_first_once_and_the_store_and_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = collect(&data_dir(tmp.path()));
    m.check().unwrap();
    let mut child_first = m.clone();
    child_first.entries.swap(2, 3);
    assert!(child_first.check().is_err());
    let mut twice = m.clone();
    twice.entries.push(twice.entries[0].clone());
    assert!(twice.check().is_err());
    let mut no_store = m.clone();
    no_store.entries.remove(0);
    assert!(no_store.check().is_err());
    let mut setuid = m.clone();
    setuid.entries[0].mode = 0o4755;
    assert!(setuid.check().is_err());
    let mut newer = m;
    newer.format = 2;
    assert!(newer.check().unwrap_err().to_string().contains("format 2"));
}
