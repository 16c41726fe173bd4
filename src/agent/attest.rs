//! Unix workload attestation: who is on the other end of a Workload API connection.
//!
//! Two moments count (docs/threat-model.md, "workload attestation"):
//!
//! - **When the connection is accepted** ([`Attestor::at_accept`]): the kernel's
//!   credentials of the socket — pid, uid, primary gid (`SO_PEERCRED`) and supplementary
//!   groups (`SO_PEERGROUPS`) — are what the process held at `connect(2)`, and are the only
//!   uid and gids writ ever uses. From /proc we add what the kernel does not record on the
//!   socket: the process's start time and its executable (path and file identity).
//! - **At every call** ([`Attestor::attest`]): the same pid must still be the same process
//!   (start time) running the same executable (path, device, inode, size, ctime). A
//!   process that connected and then exec'd something else — the connect-then-exec attack,
//!   where a child keeps the socket while the connecting pid becomes an entitled binary — is
//!   refused. Groups are never read from /proc, so a `setgid`/`setgroups` or a setgid
//!   exec after connecting changes nothing.
//!
//! The executable's SHA-256 is computed only when some profile selects by digest, only
//! for files up to a configured size, once per file version (device, inode, size, ctime:
//! ctime cannot be set back by the file's owner, mtime can), and concurrent callers of
//! one file wait for the same computation. Callers run this off the async workers.
//!
//! What remains (the threat model says what operators should do): an exec *between*
//! `connect(2)` and writ's accept is indistinguishable from a process that was always the
//! entitled binary.

use crate::policy::Selector;
use ring::digest;
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// Why a caller could not be attested.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// The process runs another executable than when it connected: it exec'd after
    /// `connect(2)`, and whoever holds the socket now is not what was attested.
    #[error("pid {0} runs another executable than when it connected; reconnect")]
    ExecAfterConnect(i32),
    /// The executable is larger than the configured hashing limit.
    #[error(
        "executable of pid {pid} is {size} bytes, above the {limit}-byte limit for sha256 selectors (workload_api.max_exe_hash_bytes)"
    )]
    TooLargeToHash {
        /// The caller's pid.
        pid: i32,
        /// The file's size.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
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

/// A version of an executable file: device, inode, size, ctime (s, ns).
type ExeKey = (u64, u64, u64, i64, i64);

/// One executable version's SHA-256 (hex), computed once by whoever asks first; an error
/// is the reason hashing failed.
type Digest = OnceLock<Result<String, String>>;

/// What /proc said about the calling process: its start time and its executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessFacts {
    start_time: u64,
    exe_path: PathBuf,
    exe: ExeKey,
}

/// Everything known about a Workload API connection from the moment it was accepted:
/// the kernel's credentials of the socket and the process facts read then. Requests on
/// the connection carry it (as tonic connect info) to [`Attestor::attest`].
#[derive(Debug)]
pub struct ConnectedPeer {
    /// `SO_PEERCRED`.
    pub cred: PeerCred,
    /// `SO_PEERGROUPS`: supplementary groups at connect time.
    pub groups: Vec<u32>,
    /// The process when the connection was accepted, or why it could not be read.
    pub process: Result<ProcessFacts, AttestError>,
}

/// Attests callers; caches executable digests.
#[derive(Debug)]
pub struct Attestor {
    proc_root: PathBuf,
    max_hash_bytes: u64,
    digests: Mutex<HashMap<ExeKey, Arc<Digest>>>,
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
        Attestor::new("/proc", DEFAULT_MAX_HASH_BYTES)
    }
}

/// Cap on remembered executable digests.
const MAX_CACHED_DIGESTS: usize = 4096;

/// Default largest executable hashed for `sha256` selectors: 256 MiB, above any agent
/// binary we know of, and a bound on what one new file can cost (about a second of CPU).
pub const DEFAULT_MAX_HASH_BYTES: u64 = 256 * 1024 * 1024;

impl Attestor {
    /// An attestor reading the given procfs root (tests may point elsewhere) that hashes
    /// executables of at most `max_hash_bytes`.
    pub fn new(proc_root: impl Into<PathBuf>, max_hash_bytes: u64) -> Self {
        Attestor {
            proc_root: proc_root.into(),
            max_hash_bytes,
            digests: Mutex::new(HashMap::new()),
            users: Mutex::new(UserCache::default()),
        }
    }

    /// Reads the facts of a just-accepted connection's process. Cheap (three small /proc
    /// reads, no hashing), so the accept loop can afford it for every connection.
    pub fn at_accept(&self, cred: PeerCred) -> Result<ProcessFacts, AttestError> {
        self.process_facts(cred)
    }

    /// The selectors of a caller on a connection accepted as `peer`; `with_digest` adds
    /// the executable's SHA-256. Blocking (file I/O, maybe hashing): call from a
    /// blocking-capable context.
    pub fn attest(
        &self,
        peer: &ConnectedPeer,
        with_digest: bool,
    ) -> Result<BTreeSet<Selector>, AttestError> {
        let cred = peer.cred;
        let pid = cred.pid;
        let accepted = peer.process.as_ref().map_err(Clone::clone)?;
        let now = self.process_facts(cred)?;
        if now.start_time != accepted.start_time {
            return Err(AttestError::PidReused(pid));
        }
        if now.exe_path != accepted.exe_path || now.exe != accepted.exe {
            return Err(AttestError::ExecAfterConnect(pid));
        }
        let sha256 = if with_digest {
            Some(self.digest(pid, &accepted.exe)?)
        } else {
            None
        };
        // The pid may have changed hands while we hashed.
        if self.start_time(pid)? != accepted.start_time {
            return Err(AttestError::PidReused(pid));
        }

        let mut selectors = BTreeSet::new();
        selectors.insert(Selector::Uid(cred.uid));
        if let Some(name) = self.user_name(cred.uid) {
            selectors.insert(Selector::User(name));
        }
        selectors.insert(Selector::Gid(cred.gid));
        for gid in &peer.groups {
            selectors.insert(Selector::Gid(*gid));
        }
        if let Some(path) = accepted.exe_path.to_str() {
            // A deleted executable reads as "/path (deleted)": not a path anyone configured.
            if !path.ends_with(" (deleted)") {
                selectors.insert(Selector::Path(path.to_owned()));
            }
        }
        if let Some(sha256) = sha256 {
            selectors.insert(Selector::Sha256(sha256));
        }
        Ok(selectors)
    }

    /// Whether the connection's pid is still the process accepted on it (its start time):
    /// call after reading anything else about the pid (its cgroup), so what was read is
    /// the caller's and not a successor's.
    pub fn still_same(&self, peer: &ConnectedPeer) -> Result<(), AttestError> {
        let accepted = peer.process.as_ref().map_err(Clone::clone)?;
        if self.start_time(peer.cred.pid)? != accepted.start_time {
            return Err(AttestError::PidReused(peer.cred.pid));
        }
        Ok(())
    }

    fn proc_dir(&self, pid: i32) -> PathBuf {
        self.proc_root.join(pid.to_string())
    }

    fn start_time(&self, pid: i32) -> Result<u64, AttestError> {
        let proc_err = |reason: String| AttestError::Proc { pid, reason };
        let stat = std::fs::read_to_string(self.proc_dir(pid).join("stat"))
            .map_err(|e| proc_err(e.to_string()))?;
        start_time(&stat).ok_or_else(|| proc_err("unreadable stat".into()))
    }

    /// Start time and executable of `cred.pid`, checked to still be `cred.uid`'s.
    fn process_facts(&self, cred: PeerCred) -> Result<ProcessFacts, AttestError> {
        let pid = cred.pid;
        let dir = self.proc_dir(pid);
        let proc_err = |reason: String| AttestError::Proc { pid, reason };
        let start = self.start_time(pid)?;
        let status =
            std::fs::read_to_string(dir.join("status")).map_err(|e| proc_err(e.to_string()))?;
        if effective_uid(&status) != Some(cred.uid) {
            return Err(AttestError::PidReused(pid));
        }
        let exe_link = dir.join("exe");
        let exe_path = std::fs::read_link(&exe_link).map_err(|e| proc_err(format!("exe: {e}")))?;
        let meta = std::fs::metadata(&exe_link).map_err(|e| proc_err(format!("exe: {e}")))?;
        if self.start_time(pid)? != start {
            return Err(AttestError::PidReused(pid));
        }
        Ok(ProcessFacts {
            start_time: start,
            exe_path,
            exe: exe_key(&meta),
        })
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
        let name = crate::passwd::name_of(uid);
        if cache.names.len() < MAX_CACHED_DIGESTS {
            cache.names.insert(uid, name.clone());
        }
        name
    }

    /// SHA-256 of `pid`'s executable, which must be the file version `expected`.
    fn digest(&self, pid: i32, expected: &ExeKey) -> Result<String, AttestError> {
        let proc_err = |reason: String| AttestError::Proc { pid, reason };
        let file = std::fs::File::open(self.proc_dir(pid).join("exe"))
            .map_err(|e| proc_err(format!("exe: {e}")))?;
        let meta = file.metadata().map_err(|e| proc_err(format!("exe: {e}")))?;
        if &exe_key(&meta) != expected {
            return Err(AttestError::ExecAfterConnect(pid));
        }
        if meta.size() > self.max_hash_bytes {
            return Err(AttestError::TooLargeToHash {
                pid,
                size: meta.size(),
                limit: self.max_hash_bytes,
            });
        }
        // One computation per file version: later and concurrent callers share it.
        let cell = {
            let mut cache = self
                .digests
                .lock()
                .map_err(|_| proc_err("digest cache poisoned".into()))?;
            if cache.len() >= MAX_CACHED_DIGESTS && !cache.contains_key(expected) {
                cache.clear();
            }
            Arc::clone(cache.entry(*expected).or_default())
        };
        let result = cell.get_or_init(|| hash(file, self.max_hash_bytes));
        match result {
            Ok(hex) => Ok(hex.clone()),
            Err(reason) => {
                // Don't remember a failure: the next call tries again.
                if let Ok(mut cache) = self.digests.lock()
                    && cache.get(expected).is_some_and(|c| Arc::ptr_eq(c, &cell))
                {
                    cache.remove(expected);
                }
                Err(proc_err(format!("exe: {reason}")))
            }
        }
    }

    /// How many executable versions have been hashed and remembered (for tests).
    pub fn cached_digests(&self) -> usize {
        self.digests.lock().map(|c| c.len()).unwrap_or(0)
    }
}

fn exe_key(meta: &std::fs::Metadata) -> ExeKey {
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// Hashes at most `limit` bytes of `file` (the size was checked; a file growing while we
/// read is cut off there and fails, rather than reading without end).
fn hash(file: std::fs::File, limit: u64) -> Result<String, String> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut reader = file.take(limit.saturating_add(1));
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limit {
            return Err("executable grew while being hashed".into());
        }
        ctx.update(&buf[..n]);
    }
    Ok(crate::hex::lower(ctx.finish().as_ref()))
}

/// Field 22 of /proc/<pid>/stat (starttime), read after the last `)` since the command
/// name may itself contain spaces and parentheses.
fn start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")" come fields 3.. ; starttime is field 22, i.e. the 20th of these.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The effective uid on the `Uid:` line of /proc/<pid>/status. Only the uid is read from
/// /proc, to tell a reused pid; gids come from the socket (module docs).
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The kernel's view of an accepted Unix stream: `SO_PEERCRED` and `SO_PEERGROUPS`.
pub fn socket_credentials(
    stream: &tokio::net::UnixStream,
) -> Result<(PeerCred, Vec<u32>), AttestError> {
    let cred = stream.peer_cred().map_err(|_| AttestError::NoCredentials)?;
    let pid = cred.pid().ok_or(AttestError::NoCredentials)?;
    let groups = writ_sys::peer_groups(stream).map_err(|e| AttestError::Proc {
        pid,
        reason: format!("SO_PEERGROUPS: {e}"),
    })?;
    Ok((
        PeerCred {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
        },
        groups,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// These tests hash their own executable, a debug test binary whose size grows with
    /// every dependency: the limit under test is not the default's.
    fn test_attestor() -> Attestor {
        Attestor::new("/proc", u64::MAX)
    }
    use std::os::unix::fs::MetadataExt;

    fn me() -> PeerCred {
        let meta = std::fs::metadata("/proc/self").unwrap();
        PeerCred {
            pid: std::process::id() as i32,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }

    fn sha256_file(path: &std::path::Path) -> String {
        crate::hex::sha256(&std::fs::read(path).unwrap())
    }

    fn connected(attestor: &Attestor, cred: PeerCred, groups: Vec<u32>) -> ConnectedPeer {
        ConnectedPeer {
            cred,
            groups,
            process: attestor.at_accept(cred),
        }
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(start_time(stat), Some(98765));
        assert_eq!(start_time("garbage"), None);
    }

    #[test]
    fn attests_this_process_with_the_connections_groups() {
        let attestor = test_attestor();
        let peer = connected(&attestor, me(), vec![4242]);
        let selectors = attestor.attest(&peer, true).unwrap();
        assert!(selectors.contains(&Selector::Uid(me().uid)));
        assert!(selectors.contains(&Selector::Gid(me().gid)));
        // Groups are the socket's, whatever /proc says.
        assert!(selectors.contains(&Selector::Gid(4242)));
        let exe = std::env::current_exe().unwrap();
        assert!(selectors.contains(&Selector::Path(exe.to_str().unwrap().to_owned())));
        assert!(selectors.contains(&Selector::Sha256(sha256_file(&exe))));
    }

    #[test]
    fn no_digest_unless_asked() {
        let attestor = test_attestor();
        let peer = connected(&attestor, me(), vec![]);
        let selectors = attestor.attest(&peer, false).unwrap();
        assert!(!selectors.iter().any(|s| matches!(s, Selector::Sha256(_))));
        assert_eq!(attestor.cached_digests(), 0);
    }

    #[test]
    fn an_executable_over_the_limit_is_refused_not_hashed() {
        let attestor = Attestor::new("/proc", 1024);
        let peer = connected(&attestor, me(), vec![]);
        let err = attestor.attest(&peer, true).unwrap_err();
        assert!(
            matches!(err, AttestError::TooLargeToHash { limit: 1024, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("max_exe_hash_bytes"), "{err}");
        assert_eq!(attestor.cached_digests(), 0);
        // Without digest selectors in policy, the same process is attested.
        assert!(attestor.attest(&peer, false).is_ok());
    }

    #[test]
    fn concurrent_callers_share_one_digest() {
        let attestor = Arc::new(test_attestor());
        let peer = Arc::new(connected(&attestor, me(), vec![]));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (attestor, peer) = (Arc::clone(&attestor), Arc::clone(&peer));
                std::thread::spawn(move || attestor.attest(&peer, true).unwrap())
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(attestor.cached_digests(), 1);
    }

    #[test]
    fn another_executable_than_at_accept_is_refused() {
        let attestor = test_attestor();
        let mut peer = connected(&attestor, me(), vec![]);
        if let Ok(facts) = peer.process.as_mut() {
            facts.exe_path = PathBuf::from("/usr/bin/true");
        }
        let err = attestor.attest(&peer, false).unwrap_err();
        assert!(matches!(err, AttestError::ExecAfterConnect(_)), "{err}");
        if let Ok(facts) = peer.process.as_mut() {
            facts.exe_path = std::env::current_exe().unwrap();
            facts.exe.1 += 1; // another inode at the same path: a replaced file
        }
        let err = attestor.attest(&peer, false).unwrap_err();
        assert!(matches!(err, AttestError::ExecAfterConnect(_)), "{err}");
    }

    #[test]
    fn a_uid_mismatch_is_refused() {
        let attestor = test_attestor();
        let cred = PeerCred {
            uid: me().uid + 1,
            ..me()
        };
        let err = attestor.at_accept(cred).unwrap_err();
        assert!(matches!(err, AttestError::PidReused(_)));
    }

    #[test]
    fn a_vanished_pid_is_refused() {
        let err = test_attestor()
            .at_accept(PeerCred {
                pid: i32::MAX,
                uid: 0,
                gid: 0,
            })
            .unwrap_err();
        assert!(matches!(err, AttestError::Proc { .. }));
    }
}
