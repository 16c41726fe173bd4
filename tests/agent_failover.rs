//! Agents that fail over (issue 12, item 5), with the real binaries: `writ server` and
//! `writ agent` as child processes on a temp directory and free loopback ports, and the
//! stock `spiffe` crate client (`examples/svid-fetch`, one-shot or `--watch`) as a
//! workload of another uid.
//!
//! Needs root (workloads run under another uid) and the examples built: `scripts/test`
//! does it, or `cargo build --examples`. Every wait is a bounded poll on an event (a log
//! line, an answer, a stream update); nothing asserts how long anything took.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{free_port, quoted, temp_dir, toml_string, write};

use serde_json::Value;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WRIT: &str = env!("CARGO_BIN_EXE_writ");

/// The longest any one wait may take before the test fails: generous, the machine is
/// shared. Never a duration the test asserts.
const WAIT: Duration = Duration::from_secs(120);

/// The uid of the workload: no operator's.
const WORKLOAD: u32 = 65533;

/// Polls `done` every 50 ms until it holds; fails with `what()` after [`WAIT`].
fn wait_until(what: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process with its output in files, killed when dropped.
struct Proc {
    child: Child,
    what: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(what: &str, mut command: Command, logs: &Path) -> Proc {
        let stdout = logs.with_extension("out");
        let stderr = logs.with_extension("err");
        let child = command
            .env_remove("WRIT_ADMIN_SOCKET")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Proc {
            child,
            what: what.to_owned(),
            stdout,
            stderr,
        }
    }

    /// `writ ARGS`, logging at `log` (a `WRIT_LOG` filter; writ's default when `None`).
    fn writ(what: &str, args: &[&std::ffi::OsStr], logs: &Path, log: Option<&str>) -> Proc {
        let mut command = Command::new(WRIT);
        command.args(args);
        match log {
            Some(filter) => command.env("WRIT_LOG", filter),
            None => command.env_remove("WRIT_LOG"),
        };
        Proc::spawn(what, command, logs)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll child") {
            panic!(
                "{} exited early ({status}):\n{}{}",
                self.what,
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// SIGKILL: nothing gets to clean up.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `writ server` with a short X.509-SVID lifetime, so renewals happen while
/// the test watches.
struct Server {
    proc: Proc,
    config: PathBuf,
    logs: PathBuf,
    admin: PathBuf,
    port: u16,
}

impl Server {
    fn start(dir: &Path, name: &str) -> Server {
        let data_dir = dir.join(name);
        let port = free_port();
        let config = write(
            &dir.join(format!("{name}.toml")),
            &format!(
                "data_dir = {}\nnode_listen = \"127.0.0.1:{port}\"\n[ca]\nx509_svid_ttl = \"1m\"\n",
                quoted(&data_dir)
            ),
        );
        let logs = dir.join(format!("{name}.log"));
        let mut server = Server {
            proc: Server::spawn(&config, &logs),
            config,
            logs,
            admin: data_dir.join("admin.sock"),
            port,
        };
        server.wait_ready();
        server
    }

    fn spawn(config: &Path, logs: &Path) -> Proc {
        Proc::writ(
            "writ server",
            &["server".as_ref(), "--config".as_ref(), config.as_os_str()],
            logs,
            None,
        )
    }

    /// Waits until the admin socket and the node API port accept (a socket file left by
    /// a killed server exists but refuses connections).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(&self.admin).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            self.proc.check_running();
            assert!(
                Instant::now() < deadline,
                "writ server not ready in time:\n{}",
                self.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the agent's server is gone without a word.
    fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts again on the same config: same data dir, same address.
    fn start_again(&mut self) {
        self.proc = Server::spawn(&self.config, &self.logs);
        self.wait_ready();
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `writ ARGS` against this server, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = Command::new(WRIT)
            .args(args)
            .env("WRIT_ADMIN_SOCKET", &self.admin)
            .env_remove("WRIT_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run writ");
        assert!(
            out.status.success(),
            "writ {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// A profile for the workload's uid, an incident assigned to it, and what the agent
    /// needs to trust and attest to this server: `(bundle path, join token)`.
    fn prepare(&self, dir: &Path) -> (PathBuf, String) {
        let pem = self.ok(&["bundle", "show", "--band", "base"]);
        let bundle = write(&dir.join("base.pem"), &pem);
        let token = self.ok(&["token", "create"]).trim().to_owned();
        self.ok(&[
            "profile",
            "create",
            "triage",
            "--selector",
            &format!("unix:uid:{WORKLOAD}"),
        ]);
        self.ok(&[
            "incident",
            "open",
            "INC-1",
            "--title",
            "failover test",
            "--severity",
            "sev3",
            "--assign",
            "triage",
        ]);
        (bundle, token)
    }
}

const IDENTITY: &str = "spiffe://investigate.example.org/agent/triage/incident/INC-1";

/// A running `writ agent` whose `server_address` is the TOML `servers`.
struct Agent {
    proc: Proc,
    data_dir: PathBuf,
}

impl Agent {
    /// Starts the agent; `log` as in [`Proc::writ`].
    fn start(dir: &Path, servers: &str, bundle: &Path, token: &str, log: Option<&str>) -> Agent {
        let data_dir = dir.join("agent");
        let config = write(
            &dir.join("agent.toml"),
            &format!(
                "data_dir = {}\nserver_address = {servers}\ntrust_bundle = {}\njoin_token = {}\n",
                quoted(&data_dir),
                quoted(bundle),
                toml_string(token)
            ),
        );
        let mut agent = Agent {
            proc: Proc::writ(
                "writ agent",
                &["agent".as_ref(), "--config".as_ref(), config.as_os_str()],
                &dir.join("agent.log"),
                log,
            ),
            data_dir,
        };
        let socket = agent.socket();
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(&socket).is_err() || !agent.proc.stdout().ends_with('\n') {
            agent.proc.check_running();
            assert!(
                Instant::now() < deadline,
                "writ agent not ready in time:\n{}",
                agent.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn socket(&self) -> PathBuf {
        self.data_dir.join("workload.sock")
    }

    fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Waits for a log line containing every one of `parts`; returns it.
    fn wait_log(&mut self, parts: &[&str]) -> String {
        let mut found = String::new();
        let log = self.proc.stderr.clone();
        wait_until(
            || {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                format!("agent log line with {parts:?}:\n{log}")
            },
            || {
                self.proc.check_running();
                match self
                    .log()
                    .lines()
                    .find(|l| parts.iter().all(|p| l.contains(p)))
                {
                    Some(line) => {
                        found = line.to_owned();
                        true
                    }
                    None => false,
                }
            },
        );
        found
    }
}

/// The stock-client example binary, built beside this test by `cargo build --examples`.
fn example_bin() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let bin = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/svid-fetch");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --examples` (scripts/test does)",
        bin.display()
    );
    bin
}

/// `svid-fetch ARGS` as the workload's uid against `socket`.
fn workload(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            &format!("--reuid={WORKLOAD}"),
            &format!("--regid={WORKLOAD}"),
            "--clear-groups",
        ])
        .arg(example_bin())
        .args(args)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", socket.display()),
        );
    command
}

/// The SPIFFE IDs in one `svid-fetch` answer; `None` for an error answer.
fn ids(answer: &Value) -> Option<Vec<String>> {
    Some(
        answer["svids"]
            .as_array()?
            .iter()
            .map(|s| s["spiffe_id"].as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

/// One fetch by the workload.
fn fetch(socket: &Path) -> Value {
    let out = workload(socket, &[])
        .stdin(Stdio::null())
        .output()
        .expect("run svid-fetch");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("svid-fetch: {e}: {out:?}"))
}

/// A workload holding a Workload API stream open: every update it got, in order.
struct Watch {
    proc: Proc,
}

impl Watch {
    fn start(dir: &Path, socket: &Path) -> Watch {
        Watch {
            proc: Proc::spawn(
                "svid-fetch --watch",
                workload(socket, &["--watch"]),
                &dir.join("watch.log"),
            ),
        }
    }

    fn updates(&self) -> Vec<Value> {
        self.proc
            .stdout()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("watch line {l:?}: {e}")))
            .collect()
    }

    /// The leaf digest of the identity in the last update, which must be a served SVID.
    fn current_leaf(&self) -> String {
        let updates = self.updates();
        let last = updates.last().expect("the watch got no update");
        assert_eq!(ids(last), Some(vec![IDENTITY.to_owned()]), "{updates:#?}");
        last["svids"][0]["leaf_sha256"]
            .as_str()
            .expect("leaf digest")
            .to_owned()
    }

    /// Waits until some update satisfies `done`.
    fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) {
        wait_until(
            || format!("{what}; the watch got {:#?}", self.updates()),
            || self.updates().iter().any(&done),
        );
    }
}

#[test]
fn an_agent_skips_a_dead_address_and_gets_its_identity_from_the_next() {
    if !common::require_root() {
        return;
    }
    let dir = temp_dir();
    let dir = dir.path();
    let server = Server::start(dir, "server");
    let (bundle, token) = server.prepare(dir);
    let dead = format!("127.0.0.1:{}", free_port());
    // The live one by name: "localhost" may resolve to ::1 first, where nothing listens.
    let live = format!("localhost:{}", server.port);
    let mut agent = Agent::start(
        dir,
        &format!("[{}, {}]", toml_string(&dead), toml_string(&live)),
        &bundle,
        &token,
        // The link's steps while starting are debug detail.
        Some("warn,writ=debug"),
    );
    let answer = fetch(&agent.socket());
    assert_eq!(ids(&answer), Some(vec![IDENTITY.to_owned()]), "{answer}");
    agent.wait_log(&["connected to server", &live]);
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("starting: trying server") && l.contains(&dead)),
        "the dead address was tried first:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("connected to server") && l.contains(&dead)),
        "{log}"
    );
}

#[test]
fn a_workload_keeps_its_svid_while_the_server_is_down_and_the_agent_comes_back_by_itself() {
    if !common::require_root() {
        return;
    }
    let dir = temp_dir();
    let dir = dir.path();
    let mut server = Server::start(dir, "server");
    let (bundle, token) = server.prepare(dir);
    let mut agent = Agent::start(dir, &toml_string(&server.address()), &bundle, &token, None);
    let watch = Watch::start(dir, &agent.socket());
    watch.wait_for("the identity", |u| ids(u).is_some_and(|i| !i.is_empty()));

    server.kill();
    agent.wait_log(&["lost server", &server.address()]);
    agent.wait_log(&["all servers down"]);
    // Cut off: the workload keeps what it holds, with no error and no redaction, and a
    // fresh call is still answered from the cache.
    let held = watch.current_leaf();
    assert!(
        watch.updates().iter().all(|u| u.get("error").is_none()),
        "{:#?}",
        watch.updates()
    );
    let answer = fetch(&agent.socket());
    assert_eq!(ids(&answer), Some(vec![IDENTITY.to_owned()]), "{answer}");
    assert_eq!(answer["svids"][0]["leaf_sha256"], held.as_str());
    assert_eq!(
        watch.current_leaf(),
        held,
        "the stream changed while cut off"
    );

    server.start_again();
    agent.wait_log(&["connected to server after being cut off"]);
    // Renewal: a new certificate reaches the open stream.
    watch.wait_for("a renewed SVID", |u| {
        u["svids"]
            .as_array()
            .is_some_and(|s| s.len() == 1 && s[0]["leaf_sha256"] != held.as_str())
    });
    assert!(
        watch.updates().iter().all(|u| u.get("error").is_none()),
        "{:#?}",
        watch.updates()
    );
    // The Sync stream resumed: a close on the restarted server reaches the workload.
    server.ok(&["incident", "close", "INC-1"]);
    watch.wait_for("the identity withdrawn", |u| {
        u["error"]
            .as_str()
            .is_some_and(|e| e.contains("NoIdentityIssued"))
            || ids(u).is_some_and(|i| i.is_empty())
    });
}
