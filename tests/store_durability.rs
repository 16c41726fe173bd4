//! The store's promise (src/store/mod.rs): when a write returns `Ok`, it survives
//! `kill -9`. A real child process writes in a loop and reports each acknowledged write
//! on stdout; the parent SIGKILLs it mid-stream, reopens the database and finds every
//! acknowledged record. Three rounds on the same database.
//!
//! The child is this very test binary, re-executed to run only [`child_writer`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use writ::Band;
use writ::store::{Store, SvidRecord};

/// Names the database the child writes to; unset in a normal test run.
const CHILD_ENV: &str = "WRIT_STORE_CHILD_DB";
/// Prefix of the child's serials, so rounds never collide.
const CHILD_PREFIX_ENV: &str = "WRIT_STORE_CHILD_PREFIX";
/// Marks an acknowledged write on the child's stdout.
const ACK: &str = "ACK ";
/// Acknowledgements to wait for before the kill.
const ACKS_BEFORE_KILL: usize = 200;
/// Upper bound on the child's writes, so a parent that dies cannot leave it running.
const CHILD_MAX_WRITES: usize = 1_000_000;

fn record(serial: &str) -> SvidRecord {
    SvidRecord {
        serial: serial.to_owned(),
        spiffe_id: format!("spiffe://investigate.example.org/agent/load/incident/{serial}"),
        band: Band::Investigative,
        authority_id: "durability".into(),
        incident: Some("INC-KILL".into()),
        grant: None,
        not_before: 1,
        not_after: 2,
    }
}

/// The child: writes records until killed, printing each serial only after `put_svid`
/// returned `Ok` (i.e. after the commit was durable).
#[test]
#[ignore = "runs only as the child process of kill_9_loses_no_acknowledged_write"]
fn child_writer() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        // Run by hand with --include-ignored: nothing to do without a parent.
        return;
    };
    let prefix = std::env::var(CHILD_PREFIX_ENV).expect("serial prefix");
    let store = Store::open(Path::new(&db)).expect("child opens the store");
    let stdout = std::io::stdout();
    for i in 0..CHILD_MAX_WRITES {
        let serial = format!("{prefix}-{i:08}");
        store.put_svid(&record(&serial)).expect("child write");
        let mut out = stdout.lock();
        writeln!(out, "{ACK}{serial}").expect("report");
        out.flush().expect("flush");
    }
}

/// Runs one child against `db`, kills it with SIGKILL after enough acknowledgements,
/// and returns every serial it acknowledged (including those still in the pipe).
fn run_and_kill(db: &Path, prefix: &str) -> BTreeSet<String> {
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            "child_writer",
            "--include-ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, db)
        .env(CHILD_PREFIX_ENV, prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let guard = KillOnDrop(Some(child.id()));
    let mut reader = BufReader::new(child.stdout.take().expect("child stdout"));
    let mut acked = BTreeSet::new();
    let mut line = String::new();
    // Event-driven: block on the child's output; EOF before enough acks is a failure.
    while acked.len() < ACKS_BEFORE_KILL {
        line.clear();
        let n = reader.read_line(&mut line).expect("read child stdout");
        assert!(
            n > 0,
            "child exited after {} acknowledgements: {:?}",
            acked.len(),
            child.try_wait()
        );
        if let Some(serial) = parse_ack(&line) {
            acked.insert(serial.to_owned());
        }
    }
    child.kill().expect("SIGKILL the child"); // std sends SIGKILL on Unix
    let status = child.wait().expect("reap child");
    drop(guard);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "child was not killed by SIGKILL: {status}"
    );
    // Whatever it managed to report before dying was acknowledged too. A line cut short
    // by the kill (no newline) was never a complete acknowledgement.
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("drain child stdout") == 0 {
            break;
        }
        if let Some(serial) = parse_ack(&line) {
            acked.insert(serial.to_owned());
        }
    }
    acked
}

/// The serial of a complete acknowledgement line. libtest may print its own
/// `test child_writer ... ` on the same line before the first one, hence the search.
fn parse_ack(line: &str) -> Option<&str> {
    let (_, serial) = line.strip_suffix('\n')?.split_once(ACK)?;
    Some(serial)
}

/// Kills the child if the test panics before reaping it.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(pid) = self.0.take()
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("writ.redb");
    // A record written before any child runs must survive all the kills as well.
    {
        let store = Store::open(&db).expect("create store");
        store.put_svid(&record("before")).expect("write");
    }
    let mut all_acked = BTreeSet::new();
    for round in 0..3 {
        let acked = run_and_kill(&db, &format!("r{round}"));
        assert!(acked.len() >= ACKS_BEFORE_KILL, "round {round}");
        all_acked.extend(acked);

        // Reopen as the next writer would (the kill released the file lock) and check
        // every acknowledged write from every round so far.
        let store = Store::open(&db).unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
        let stored: BTreeSet<String> = store
            .svids()
            .expect("read back")
            .into_iter()
            .map(|r| r.serial)
            .collect();
        let missing: Vec<_> = all_acked.difference(&stored).take(5).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged writes lost after SIGKILL, e.g. {missing:?}",
            all_acked.difference(&stored).count()
        );
        assert!(
            stored.contains("before"),
            "round {round}: pre-existing record lost"
        );
        // Each stored record decodes intact, not just its key.
        let sample = all_acked.iter().next_back().expect("some ack");
        assert_eq!(store.svid(sample).expect("read"), Some(record(sample)));
        // Nothing beyond what the child could have written appeared.
        assert!(stored.iter().all(|s| s == "before" || s.starts_with('r')));
    }
}
