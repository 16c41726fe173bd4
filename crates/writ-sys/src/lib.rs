//! Kernel calls writ needs that no maintained safe crate exposes, each one small, audited
//! and tested here so the rest of writ keeps `unsafe_code = "forbid"`.
//!
//! - [`peer_groups`]: the supplementary groups of a Unix socket's peer as the kernel
//!   recorded them at `connect(2)` (`SO_PEERGROUPS`, Linux ≥ 4.13). `SO_PEERCRED` (which
//!   tokio exposes safely) gives only the primary gid; reading groups from `/proc` instead
//!   would read them *now*, after any `setgid`/exec the peer made since connecting.
//! - [`raise_nofile_limit`]: raise the soft open-files limit to the hard one, as daemons
//!   holding many client connections do, so a flood of one socket does not starve others.
//!
//! Must never: take or return raw pointers, or keep a file descriptor it was lent.
#![cfg(target_os = "linux")]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// The kernel's cap on supplementary groups (`NGROUPS_MAX` on Linux).
const NGROUPS_MAX: usize = 65_536;

/// The supplementary groups of the process that connected the Unix socket `socket`, as
/// the kernel captured them at `connect(2)` (for a socketpair, at its creation).
pub fn peer_groups(socket: impl AsFd) -> io::Result<Vec<u32>> {
    let fd = socket.as_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let capacity = groups.len() * std::mem::size_of::<libc::gid_t>();
        let mut len = libc::socklen_t::try_from(capacity)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "group list too long"))?;
        #[allow(unsafe_code)]
        // SAFETY: `fd` is borrowed and open for the whole call; `groups` is a live,
        // initialised buffer of exactly `len` bytes, which the kernel writes at most and
        // then sets `len` to the bytes it wrote (or, on ERANGE, to the bytes it needs).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let len = len as usize;
        if rc == 0 {
            groups.truncate(len.min(capacity) / std::mem::size_of::<libc::gid_t>());
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        let needed = len / std::mem::size_of::<libc::gid_t>();
        if error.raw_os_error() == Some(libc::ERANGE)
            && needed > groups.len()
            && needed <= NGROUPS_MAX
        {
            groups.resize(needed, 0);
            continue;
        }
        return Err(error);
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: `limit` is a valid, exclusively borrowed `rlimit` the kernel fills in.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        #[allow(unsafe_code)]
        // SAFETY: `raised` is a valid `rlimit` the kernel only reads.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
        if rc == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::net::UnixStream;

    fn my_groups() -> Vec<u32> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        line["Groups:".len()..]
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect()
    }

    #[test]
    fn a_socketpair_peer_has_this_processs_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut got = peer_groups(&a).unwrap();
        let mut want = my_groups();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn a_socket_that_is_not_unix_is_an_error_not_a_guess() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(peer_groups(&tcp).is_err());
    }

    #[test]
    fn the_soft_nofile_limit_is_raised_to_the_hard_one() {
        let soft = raise_nofile_limit().unwrap();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
        assert_eq!(fields[0], fields[1], "soft equals hard: {line}");
        assert_eq!(fields[0], soft.to_string(), "{line}");
    }
}
