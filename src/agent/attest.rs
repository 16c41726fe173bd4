//! Unix workload attestation: who is on the other end of a Workload API connection.
//!
//! The kernel tells us the caller's pid, uid and gid (SO_PEERCRED, taken by tonic when the
//! connection is accepted). From /proc we add the primary and supplementary gids, the
//! executable's path and the SHA-256 of the executable itself (read through
//! `/proc/<pid>/exe`, so a replaced or deleted file on disk cannot stand in for it).
//!
//! Pid reuse: the process's start time is read before and after everything else; if it
//! changed, or the uid in /proc is not the uid the kernel reported for the socket, the
//! pid no longer names the caller and attestation fails.

use crate::policy::Selector;
use ring::digest;
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The connection carried no pid (not a Unix socket, or the kernel withheld it).
    #[error("caller credentials unavailable")]
    NoCredentials,
    /// /proc could not be read for the pid (it exited, or hidepid hides it).
    #[error("cannot inspect pid {pid}: {reason}")]
    Proc {
        /// The caller's pid.
        pid: i32,
        /// What failed.
        reason: String,
    },
    /// The pid changed hands while we looked, or no longer matches the socket's uid.
    #[error("pid {0} changed while being attested")]
    PidReused(i32),
}

/// Facts the kernel gave us about the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
}

/// Hash cache entry key: an executable is identified by device, inode, size and mtime.
type ExeKey = (u64, u64, u64, i64, i64);

/// Attests callers; caches executable digests.
#[derive(Debug)]
pub struct Attestor {
    proc_root: PathBuf,
    digests: Mutex<HashMap<ExeKey, String>>,
    users: Mutex<UserCache>,
}

/// uid → user name, valid while /etc/passwd keeps its mtime.
#[derive(Debug, Default)]
struct UserCache {
    mtime: Option<std::time::SystemTime>,
    names: HashMap<u32, Option<String>>,
}

impl Default for Attestor {
    fn default() -> Self {
        Attestor::new("/proc")
    }
}

/// Cap on remembered executable digests.
const MAX_CACHED_DIGESTS: usize = 4096;

impl Attestor {
    /// An attestor reading the given procfs root (tests may point elsewhere).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        Attestor {
            proc_root: proc_root.into(),
            digests: Mutex::new(HashMap::new()),
            users: Mutex::new(UserCache::default()),
        }
    }

    /// The selectors of the caller. Blocking (file I/O and hashing): call from a
    /// blocking-capable context.
    pub fn attest(&self, cred: PeerCred) -> Result<BTreeSet<Selector>, AttestError> {
        let pid = cred.pid;
        let dir = self.proc_root.join(pid.to_string());
        let proc_err = |reason: String| AttestError::Proc { pid, reason };
        let start = start_time(
            &std::fs::read_to_string(dir.join("stat")).map_err(|e| proc_err(e.to_string()))?,
        )
        .ok_or_else(|| proc_err("unreadable stat".into()))?;

        let status =
            std::fs::read_to_string(dir.join("status")).map_err(|e| proc_err(e.to_string()))?;
        let ids = StatusIds::parse(&status).ok_or_else(|| proc_err("unreadable status".into()))?;
        if ids.effective_uid != cred.uid {
            return Err(AttestError::PidReused(pid));
        }
        let exe_link = dir.join("exe");
        let path = std::fs::read_link(&exe_link).map_err(|e| proc_err(format!("exe: {e}")))?;
        let sha256 = self
            .digest(&exe_link)
            .map_err(|e| proc_err(format!("exe: {e}")))?;

        let again = start_time(
            &std::fs::read_to_string(dir.join("stat")).map_err(|e| proc_err(e.to_string()))?,
        );
        if again != Some(start) {
            return Err(AttestError::PidReused(pid));
        }

        let mut selectors = BTreeSet::new();
        selectors.insert(Selector::Uid(cred.uid));
        if let Some(name) = self.user_name(cred.uid) {
            selectors.insert(Selector::User(name));
        }
        selectors.insert(Selector::Gid(cred.gid));
        for gid in ids.gids {
            selectors.insert(Selector::Gid(gid));
        }
        if let Some(path) = path.to_str() {
            // A deleted executable reads as "/path (deleted)": not a path anyone configured.
            if !path.ends_with(" (deleted)") {
                selectors.insert(Selector::Path(path.to_owned()));
            }
        }
        selectors.insert(Selector::Sha256(sha256));
        Ok(selectors)
    }

    /// The user name of `uid`, re-reading /etc/passwd only when it changes.
    fn user_name(&self, uid: u32) -> Option<String> {
        let mtime = std::fs::metadata("/etc/passwd")
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.users.lock().ok()?;
        if cache.mtime != mtime {
            cache.mtime = mtime;
            cache.names.clear();
        }
        if let Some(known) = cache.names.get(&uid) {
            return known.clone();
        }
        let name = user_name(uid);
        if cache.names.len() < MAX_CACHED_DIGESTS {
            cache.names.insert(uid, name.clone());
        }
        name
    }

    fn digest(&self, exe: &std::path::Path) -> std::io::Result<String> {
        let mut file = std::fs::File::open(exe)?;
        let meta = file.metadata()?;
        let key = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if let Some(hex) = self
            .digests
            .lock()
            .ok()
            .and_then(|cache| cache.get(&key).cloned())
        {
            return Ok(hex);
        }
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let hex = crate::hex::lower(ctx.finish().as_ref());
        if let Ok(mut cache) = self.digests.lock() {
            if cache.len() >= MAX_CACHED_DIGESTS {
                cache.clear();
            }
            cache.insert(key, hex.clone());
        }
        Ok(hex)
    }
}

/// Field 22 of /proc/<pid>/stat (starttime), read after the last `)` since the command
/// name may itself contain spaces and parentheses.
fn start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")" come fields 3.. ; starttime is field 22, i.e. the 20th of these.
    after.split_whitespace().nth(19)?.parse().ok()
}

struct StatusIds {
    effective_uid: u32,
    gids: Vec<u32>,
}

impl StatusIds {
    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|v| v.parse::<u32>().ok())
                        .collect::<Vec<_>>()
                })
        };
        let uids = field("Uid:")?;
        let gids = field("Gid:")?;
        let groups = field("Groups:").unwrap_or_default();
        Some(StatusIds {
            effective_uid: *uids.get(1)?,
            gids: gids.iter().take(2).chain(groups.iter()).copied().collect(),
        })
    }
}

/// The user name of `uid` from /etc/passwd (no NSS: local accounts only).
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        (fields.next()?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(start_time(stat), Some(98765));
        assert_eq!(start_time("garbage"), None);
    }

    #[test]
    fn attests_this_process() {
        let me = std::process::id() as i32;
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        let gid = std::fs::metadata("/proc/self").unwrap().gid();
        let selectors = Attestor::default()
            .attest(PeerCred { pid: me, uid, gid })
            .unwrap();
        assert!(selectors.contains(&Selector::Uid(uid)));
        assert!(selectors.contains(&Selector::Gid(gid)));
        let exe = std::env::current_exe().unwrap();
        assert!(selectors.contains(&Selector::Path(exe.to_str().unwrap().to_owned())));
        let bytes = std::fs::read(&exe).unwrap();
        let want = crate::hex::sha256(&bytes);
        assert!(selectors.contains(&Selector::Sha256(want)));
    }

    #[test]
    fn a_uid_mismatch_is_refused() {
        let me = std::process::id() as i32;
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        let err = Attestor::default()
            .attest(PeerCred {
                pid: me,
                uid: uid + 1,
                gid: 0,
            })
            .unwrap_err();
        assert!(matches!(err, AttestError::PidReused(_)));
    }

    #[test]
    fn a_vanished_pid_is_refused() {
        let err = Attestor::default()
            .attest(PeerCred {
                pid: i32::MAX,
                uid: 0,
                gid: 0,
            })
            .unwrap_err();
        assert!(matches!(err, AttestError::Proc { .. }));
    }
}
