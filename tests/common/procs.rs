//! `writ server` and `writ agent` as child processes: started on temp directories and free
//! loopback ports, killed (SIGKILL) when dropped, their output in files beside their data.
//! Every wait is a bounded poll on an event; nothing asserts how long anything took.

use super::{free_port, quoted, toml_string, write};
use serde_json::Value;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const WRIT: &str = env!("CARGO_BIN_EXE_writ");

/// The longest one wait may take before the test fails: generous, the machine is shared.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `done` every 50 ms until it holds; fails with `what()` after [`WAIT`].
pub fn wait_until(what: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process with its output in files, killed when dropped.
pub struct Proc {
    child: Child,
    what: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Spawns `command`, its stdout and stderr going to `logs.out` and `logs.err`.
    pub fn spawn(what: &str, mut command: Command, logs: &Path) -> Proc {
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
    pub fn writ(what: &str, args: &[&std::ffi::OsStr], logs: &Path, log: Option<&str>) -> Proc {
        let mut command = Command::new(WRIT);
        command.args(args);
        match log {
            Some(filter) => command.env("WRIT_LOG", filter),
            None => command.env_remove("WRIT_LOG"),
        };
        Proc::spawn(what, command, logs)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Panics if the process has exited (it should be serving).
    pub fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll child") {
            panic!(
                "{} exited early ({status}):\n{}{}",
                self.what,
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// Waits until `ready` holds; fails if the process exits first or after [`WAIT`].
    pub fn wait_until_ready(&mut self, ready: impl Fn(&Proc) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !ready(self) {
            self.check_running();
            assert!(
                Instant::now() < deadline,
                "{} not ready in time:\n{}",
                self.what,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("poll child")
    }

    /// Waits for the process to exit by itself; one still running after [`WAIT`] is
    /// hung: killed, and the test fails.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{} did not exit within {WAIT:?}:\n{}{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: nothing gets to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `writ server`: data in `dir/NAME`, config `dir/NAME.toml`, logs `dir/NAME.log.*`.
pub struct ServerProc {
    pub proc: Proc,
    pub name: String,
    pub config: PathBuf,
    pub logs: PathBuf,
    pub data_dir: PathBuf,
    pub admin: PathBuf,
    pub port: u16,
    log: Option<String>,
}

impl ServerProc {
    /// Spawns `writ server` on a free port with `extra` TOML; does not wait for it.
    pub fn spawn(dir: &Path, name: &str, extra: &str, log: Option<&str>) -> ServerProc {
        let data_dir = dir.join(name);
        let port = free_port();
        let config = write(
            &dir.join(format!("{name}.toml")),
            &format!(
                "data_dir = {}\nnode_listen = \"127.0.0.1:{port}\"\n{extra}",
                quoted(&data_dir)
            ),
        );
        let logs = dir.join(format!("{name}.log"));
        ServerProc {
            proc: Self::process(name, &config, &logs, log),
            name: name.to_owned(),
            config,
            logs,
            admin: data_dir.join("admin.sock"),
            data_dir,
            port,
            log: log.map(str::to_owned),
        }
    }

    /// Spawns and waits until it serves.
    pub fn start(dir: &Path, name: &str, extra: &str) -> ServerProc {
        let mut server = Self::spawn(dir, name, extra, None);
        server.wait_ready();
        server
    }

    fn process(name: &str, config: &Path, logs: &Path, log: Option<&str>) -> Proc {
        Proc::writ(
            &format!("writ server {name}"),
            &["server".as_ref(), "--config".as_ref(), config.as_os_str()],
            logs,
            log,
        )
    }

    /// Waits until the admin socket and the node API port accept. A socket file left by
    /// a killed server exists but refuses connections.
    pub fn wait_ready(&mut self) {
        let (admin, port) = (self.admin.clone(), self.port);
        self.proc.wait_until_ready(|_| {
            UnixStream::connect(&admin).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again with the same config (after [`ServerProc::kill`]), and waits.
    pub fn start_again(&mut self) {
        self.proc.kill();
        self.proc = Self::process(&self.name, &self.config, &self.logs, self.log.as_deref());
        self.wait_ready();
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `writ ARGS` against this server's admin socket.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(WRIT)
            .args(args)
            .env("WRIT_ADMIN_SOCKET", &self.admin)
            .env_remove("WRIT_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run writ")
    }

    /// `writ ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "writ {args:?} on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// `writ ARGS --json`, which must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("JSON answer")
    }

    /// Gives the workloads of `uid` an investigative identity for `incident`: a `triage`
    /// profile selecting the uid, and the incident (sev3) assigned to it.
    pub fn entitle(&self, uid: u32, incident: &str) {
        self.ok(&[
            "profile",
            "create",
            "triage",
            "--selector",
            &format!("unix:uid:{uid}"),
        ]);
        self.ok(&[
            "incident",
            "open",
            incident,
            "--title",
            incident,
            "--severity",
            "sev3",
            "--assign",
            "triage",
        ]);
    }

    /// The base band's bundle as PEM, written to `dir/NAME-base.pem`.
    pub fn base_pem(&self, dir: &Path) -> PathBuf {
        let pem = self.ok(&["bundle", "show", "--band", "base"]);
        assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
        write(&dir.join(format!("{}-base.pem", self.name)), &pem)
    }

    /// The intermediate keys a signing replica asks to have admitted, from its log (one
    /// per band, `writ replica admit --key-sha256 HEX`), sorted.
    pub fn keys_to_admit(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .proc
            .stderr()
            .split("--key-sha256 ")
            .skip(1)
            .filter_map(|rest| rest.get(..64))
            .filter(|k| k.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Admits `replica`'s intermediate keys on this server (which holds the roots) once
    /// the replica has logged them, and waits until the replica serves.
    pub fn admit(&self, replica: &mut ServerProc) {
        let deadline = Instant::now() + WAIT;
        let keys = loop {
            replica.proc.check_running();
            let keys = replica.keys_to_admit();
            if keys.len() == 3 {
                break keys;
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged its keys:\n{}",
                replica.name,
                replica.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut args = vec!["replica", "admit"];
        for key in &keys {
            args.extend(["--key-sha256", key.as_str()]);
        }
        self.ok(&args);
        replica.wait_ready();
    }

    /// A fresh join token.
    pub fn token(&self) -> String {
        let token = self.ok(&["token", "create"]).trim().to_owned();
        assert!(!token.is_empty() && !token.contains(char::is_whitespace));
        token
    }
}

/// A `writ agent`: data in `dir/NAME`, config `dir/NAME.toml`.
pub struct AgentProc {
    pub proc: Proc,
    pub name: String,
    pub config: PathBuf,
    pub logs: PathBuf,
    pub data_dir: PathBuf,
    log: Option<String>,
}

impl AgentProc {
    /// Starts `writ agent` against `servers` (its `server_address`, as TOML: one string,
    /// or a list tried in order, see [`address_list`]), trusting `bundle`, joining with
    /// `token`; `extra` is more TOML. Waits for its Workload API.
    pub fn start(
        dir: &Path,
        name: &str,
        servers: &str,
        bundle: &Path,
        token: &str,
        extra: &str,
        log: Option<&str>,
    ) -> AgentProc {
        let mut agent = Self::spawn(dir, name, servers, bundle, token, extra, log);
        agent.wait_ready();
        agent
    }

    /// [`AgentProc::start`] without waiting for it.
    pub fn spawn(
        dir: &Path,
        name: &str,
        servers: &str,
        bundle: &Path,
        token: &str,
        extra: &str,
        log: Option<&str>,
    ) -> AgentProc {
        let toml = format!(
            "data_dir = {}\nserver_address = {servers}\ntrust_bundle = {}\njoin_token = {}\n{extra}",
            quoted(&dir.join(name)),
            quoted(bundle),
            toml_string(token)
        );
        Self::spawn_toml(dir, name, &toml, log)
    }

    /// Spawns `writ agent` with the whole config `toml` (whose data dir must be
    /// `dir/NAME`); does not wait for it.
    pub fn spawn_toml(dir: &Path, name: &str, toml: &str, log: Option<&str>) -> AgentProc {
        let config = write(&dir.join(format!("{name}.toml")), toml);
        let logs = dir.join(format!("{name}.log"));
        AgentProc {
            proc: Self::process(name, &config, &logs, log),
            name: name.to_owned(),
            config,
            logs,
            data_dir: dir.join(name),
            log: log.map(str::to_owned),
        }
    }

    /// [`AgentProc::spawn_toml`], then waits for its Workload API and checks its banner.
    pub fn start_toml(dir: &Path, name: &str, toml: &str) -> AgentProc {
        let mut agent = Self::spawn_toml(dir, name, toml, None);
        agent.wait_ready();
        let banner = agent.proc.stdout();
        assert_eq!(
            banner.lines().next(),
            Some(format!("writ agent: Workload API on {}", agent.socket().display()).as_str()),
            "{banner}"
        );
        agent
    }

    /// Its log (stderr).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Waits for a log line containing every one of `parts`; returns it.
    pub fn wait_log(&mut self, parts: &[&str]) -> String {
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

    /// Whether it serves its Workload API (attested, first sync done).
    pub fn serving(&self) -> bool {
        UnixStream::connect(self.socket()).is_ok() && self.proc.stdout().ends_with('\n')
    }

    fn process(name: &str, config: &Path, logs: &Path, log: Option<&str>) -> Proc {
        Proc::writ(
            &format!("writ agent {name}"),
            &["agent".as_ref(), "--config".as_ref(), config.as_os_str()],
            logs,
            log,
        )
    }

    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("workload.sock")
    }

    /// The socket is bound once attestation and the first sync succeeded.
    pub fn wait_ready(&mut self) {
        let socket = self.socket();
        self.proc.wait_until_ready(|proc| {
            UnixStream::connect(&socket).is_ok() && proc.stdout().ends_with('\n')
        });
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again with the same config, and waits.
    pub fn start_again(&mut self) {
        self.proc.kill();
        self.proc = Self::process(&self.name, &self.config, &self.logs, self.log.as_deref());
        self.wait_ready();
    }
}

/// A TOML list of server addresses, for `server_address`.
pub fn address_list(servers: &[String]) -> String {
    let list: Vec<String> = servers.iter().map(|s| toml_string(s)).collect();
    format!("[{}]", list.join(", "))
}

/// The stock-client example (`examples/svid-fetch`, the `spiffe` crate), built beside
/// the test binary by `cargo build --examples`.
pub fn svid_fetch_bin() -> PathBuf {
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

/// `svid-fetch ARGS` as `uid` (through `setpriv` unless it is 0) against `socket`.
pub fn svid_fetch(uid: u32, socket: &Path, args: &[&str]) -> Command {
    let mut command = if uid == 0 {
        Command::new(svid_fetch_bin())
    } else {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ])
        .arg(svid_fetch_bin());
        c
    };
    command.args(args).env(
        "SPIFFE_ENDPOINT_SOCKET",
        format!("unix://{}", socket.display()),
    );
    command
}

/// One fetch by `uid` at `socket`: the answer as JSON.
pub fn fetch(uid: u32, socket: &Path) -> Value {
    let out = svid_fetch(uid, socket, &[])
        .stdin(Stdio::null())
        .output()
        .expect("run svid-fetch");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("svid-fetch: {e}: {out:?}"))
}

/// The SPIFFE IDs in one `svid-fetch` answer, sorted; `None` for an error answer.
pub fn ids(answer: &Value) -> Option<Vec<String>> {
    let mut ids: Vec<String> = answer["svids"]
        .as_array()?
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    Some(ids)
}

/// A workload holding a Workload API stream open (`svid-fetch --watch`): every update
/// it got, in order, one JSON line each.
pub struct Watch {
    pub proc: Proc,
}

impl Watch {
    pub fn start(uid: u32, socket: &Path, logs: &Path) -> Watch {
        Watch {
            proc: Proc::spawn(
                "svid-fetch --watch",
                svid_fetch(uid, socket, &["--watch"]),
                logs,
            ),
        }
    }

    pub fn updates(&self) -> Vec<Value> {
        self.proc
            .stdout()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("watch line {l:?}: {e}")))
            .collect()
    }

    /// Waits until some update satisfies `done`.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) {
        wait_until(
            || format!("{what}; the watch got {:#?}", self.updates()),
            || self.updates().iter().any(&done),
        );
    }
}
