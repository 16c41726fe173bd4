//! `writ backup` and `writ restore` (docs/operations.md, "Back up and restore"). The
//! archive's format and its checks are [`crate::backup`]'s; this file reads the flags,
//! writes the file the server streams (0600, whole or not at all) and runs a restore.

use super::AdminArgs;
use super::client::{connect, rpc_error};
use super::output::format_unix;
use crate::backup::{Decryption, Encryption, read_passphrase};
use crate::proto::admin as pb;
use anyhow::{Context, bail};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Flags of `writ backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the archive: a new file (0600), complete or not written at all.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Encrypt to the passphrase in this file (one trailing newline is dropped); without
    /// it and without --recipient, the passphrase is WRIT_BACKUP_PASSPHRASE's value.
    #[arg(long, value_name = "FILE", conflicts_with = "recipients")]
    passphrase_file: Option<PathBuf>,
    /// Encrypt to this age public key instead (`age1…`, or post-quantum `age1pq1…`);
    /// repeatable. Restore with the matching identity file.
    #[arg(long = "recipient", value_name = "AGE_PUBLIC_KEY")]
    recipients: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Flags of `writ restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The archive `writ backup` wrote.
    file: PathBuf,
    /// The data directory to restore into: absent or empty (a restore never overwrites).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// An age identity file (`AGE-SECRET-KEY-…`), for a backup encrypted to public keys.
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_file")]
    identity: Option<PathBuf>,
    /// The passphrase's file, for a backup encrypted to a passphrase; without it and
    /// without --identity, WRIT_BACKUP_PASSPHRASE's value.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Removes a partly written archive unless it was completed.
struct Partial {
    path: PathBuf,
    done: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let passphrase = if args.recipients.is_empty() {
        read_passphrase(args.passphrase_file.as_deref())?
    } else {
        None
    };
    let passphrase = passphrase.map(|p| p.to_string());
    // The same rule the server applies, before connecting: a clear error at once.
    Encryption::parse(passphrase.clone(), &args.recipients)?;
    let out = &args.out;
    if out.exists() {
        bail!(
            "{} exists: name a new file (a backup never overwrites one)",
            out.display()
        );
    }
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: name a file", out.display()))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut client = connect(&args.admin).await?;
    let mut stream = client
        .backup(pb::BackupRequest {
            passphrase: passphrase.unwrap_or_default(),
            recipients: args.recipients.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let staged = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let mut partial = Partial {
        path: staged.clone(),
        done: false,
    };
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)
            .with_context(|| format!("creating {}", staged.display()))?
    };
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    let last = loop {
        let Some(chunk) = stream.message().await.map_err(rpc_error)? else {
            bail!("the server ended the backup before it was complete; nothing was written");
        };
        if !chunk.data.is_empty() {
            digest.update(&chunk.data);
            size += chunk.data.len() as u64;
            file.write_all(&chunk.data)
                .with_context(|| format!("writing {}", staged.display()))?;
        }
        if !chunk.sha256.is_empty() {
            break chunk;
        }
    };
    let sha256 = crate::hex::lower(digest.finish().as_ref());
    if sha256 != last.sha256 || size != last.size {
        bail!("the archive received is not the one the server sent; nothing was written");
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", staged.display()))?;
    drop(file);
    if out.exists() {
        bail!("{} appeared meanwhile: nothing was written", out.display());
    }
    std::fs::rename(&staged, out).with_context(|| format!("writing {}", out.display()))?;
    partial.done = true;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    if args.admin.json {
        println!(
            "{}",
            serde_json::json!({
                "file": out.display().to_string(),
                "sha256": sha256,
                "size": size,
                "audit_records": last.audit_records,
            })
        );
    } else {
        println!(
            "backup written: {}",
            crate::cli::escape(&out.display().to_string())
        );
        println!("  sha256:        {sha256}");
        println!("  size:          {size} bytes");
        println!("  audit records: {}", last.audit_records);
    }
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let key = match &args.identity {
        Some(path) => Decryption::identity_file(path)?,
        None => match read_passphrase(args.passphrase_file.as_deref())? {
            Some(p) => Decryption::passphrase(&p),
            None => bail!(
                "give --identity FILE (a backup encrypted to public keys), or the passphrase with --passphrase-file FILE or WRIT_BACKUP_PASSPHRASE"
            ),
        },
    };
    let (file, target) = (args.file.clone(), args.data_dir.clone());
    let manifest = tokio::task::spawn_blocking(move || restore_file(&file, &key, &target))
        .await
        .context("the restore stopped")??;
    let files = manifest
        .entries
        .iter()
        .filter(|e| e.kind == crate::backup::EntryKind::File)
        .count();
    let shown = crate::cli::escape(&args.data_dir.display().to_string());
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "data_dir": args.data_dir.display().to_string(),
                "trust_domain": manifest.trust_domain,
                "created_at": manifest.created_at,
                "audit_records": manifest.audit_records,
                "files": files,
            })
        );
    } else {
        println!("restored into {shown}");
        println!(
            "  taken:         {} ({})",
            format_unix(manifest.created_at),
            crate::cli::escape(&manifest.trust_domain)
        );
        println!("  files:         {files}, every one's SHA-256 checked");
        println!("  audit records: {}", manifest.audit_records);
        eprintln!(
            "next: give the directory to the user the server runs as (chown -R), start the server on it, then run writ audit verify and writ bundle show"
        );
    }
    Ok(())
}

fn restore_file(
    file: &Path,
    key: &Decryption,
    target: &Path,
) -> anyhow::Result<crate::backup::Manifest> {
    let archive =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    Ok(crate::backup::restore(archive, key, target)?)
}
