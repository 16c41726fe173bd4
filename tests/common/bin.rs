//! The real `writ` binary: `writ dev` as a child process on a temp data directory, and the
//! CLI run against its admin socket as this process or, through `setpriv`, as another
//! uid. For suites that test what an operator types and sees.

use serde_json::Value;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const WRIT: &str = env!("CARGO_BIN_EXE_writ");

/// How long `writ dev` may take to come up or go down before the test calls it a failure
/// (never a duration a test asserts).
const PATIENCE: Duration = Duration::from_secs(60);

/// Who runs a command: this process, or another uid (tests doing so need root).
#[derive(Clone, Copy, Debug)]
pub enum As {
    Me,
    Uid(u32),
}

/// A running `writ dev`, killed when dropped.
pub struct DevProcess {
    child: Child,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
    /// Where the CLI runs (plans and other files are read relative to it).
    cwd: PathBuf,
}

impl DevProcess {
    /// Starts `writ dev --data-dir DATA_DIR EXTRA…` (its stderr in `DATA_DIR.log`) and
    /// waits until its admin socket accepts a connection.
    pub fn start(data_dir: &Path, extra: &[&str]) -> DevProcess {
        let log = std::fs::File::create(data_dir.with_extension("log")).expect("dev log");
        let child = Command::new(WRIT)
            .arg("dev")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("WRIT_LOG", "warn")
            .env_remove("WRIT_ADMIN_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn writ dev");
        let mut dev = DevProcess {
            child,
            data_dir: data_dir.to_path_buf(),
            cwd: data_dir.parent().unwrap_or(Path::new("/")).to_path_buf(),
        };
        // A socket left by a killed server exists but refuses connections: wait for one
        // that accepts.
        let deadline = Instant::now() + PATIENCE;
        while UnixStream::connect(dev.socket()).is_err() {
            if let Some(status) = dev.child.try_wait().expect("poll writ dev") {
                panic!("writ dev exited early ({status}): {}", dev.log());
            }
            assert!(
                Instant::now() < deadline,
                "writ dev did not open {} in time: {}",
                dev.socket().display(),
                dev.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        dev
    }

    /// Runs the CLI in `dir` from now on.
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.cwd = dir.to_path_buf();
        self
    }

    /// The admin socket.
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }

    /// What `writ dev` wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// Runs `writ ARGS` as `who` against this server.
    pub fn run_as(&self, who: As, args: &[&str]) -> Output {
        let mut command = match who {
            As::Me => Command::new(WRIT),
            As::Uid(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                ])
                .arg(WRIT);
                c
            }
        };
        command
            .args(args)
            .env("WRIT_ADMIN_SOCKET", self.socket())
            .env_remove("WRIT_LOG")
            .env_remove("WRIT_SERVER")
            .stdin(Stdio::null())
            .current_dir(&self.cwd)
            .output()
            .expect("run writ")
    }

    /// Runs `writ ARGS` as this process.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_as(As::Me, args)
    }

    /// Runs `writ ARGS` as `who`, which must succeed; returns its stdout.
    pub fn ok_as(&self, who: As, args: &[&str]) -> String {
        let out = self.run_as(who, args);
        assert!(
            out.status.success(),
            "writ {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `writ ARGS` as this process, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_as(As::Me, args)
    }

    /// Runs `writ ARGS --json` as `who`, which must succeed and print one JSON object.
    pub fn json_as(&self, who: As, args: &[&str]) -> Value {
        let out = self.ok_as(who, &[args, &["--json"]].concat());
        assert_eq!(out.lines().count(), 1, "one JSON object expected: {out}");
        serde_json::from_str(&out).expect("JSON output")
    }

    /// Runs `writ ARGS --json` as this process.
    pub fn json(&self, args: &[&str]) -> Value {
        self.json_as(As::Me, args)
    }

    /// Runs `writ ARGS` as `who`, which must be refused: exit `code` (any non-zero when
    /// `None`), exactly one `error:` line on stderr mentioning `reason`, nothing on
    /// stdout. (Whether anything changed is for the suite to compare.)
    pub fn refusal(&self, who: As, args: &[&str], code: Option<i32>, reason: &str) {
        let out = self.run_as(who, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "writ {args:?} should be refused");
        if let Some(code) = code {
            assert_eq!(out.status.code(), Some(code), "writ {args:?}: {stderr}");
        }
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "writ {args:?}: one stderr line expected: {stderr}"
        );
        assert!(lines[0].starts_with("error: "), "writ {args:?}: {stderr}");
        assert!(
            lines[0].contains(reason),
            "writ {args:?}: error should mention {reason:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "writ {args:?} printed to stdout");
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends the server `signal` (`TERM`, `INT`, …) and waits, boundedly, for it to exit.
    pub fn signal_and_wait(mut self, signal: &str) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(exit) = self.child.try_wait().expect("try_wait") {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "writ dev did not exit on SIG{signal}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server the hard way (SIGKILL): whatever it acknowledged must already be
    /// durable.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server the way an operator does (SIGTERM) and waits for a clean exit.
    pub fn terminate(self) {
        let exit = self.signal_and_wait("TERM");
        assert!(exit.success(), "writ dev exited with {exit} on SIGTERM");
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One JSON object per line.
pub fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

/// `incident open ID --title t --severity sev3 --assign AGENT`: an incident a suite needs
/// open, whose details it does not look at.
pub fn open_args<'a>(id: &'a str, agent: &'a str) -> [&'a str; 9] {
    [
        "incident",
        "open",
        id,
        "--title",
        "t",
        "--severity",
        "sev3",
        "--assign",
        agent,
    ]
}

/// The plan the remediation suites file.
pub const RESTART_PLAN: &str = "kubectl -n shop rollout restart deploy/checkout\n";

/// `grant request` for fixer's checkout restart on `incident`, with the plan at `plan`.
pub fn restart_args<'a>(incident: &'a str, plan: &'a str) -> Vec<&'a str> {
    vec![
        "grant",
        "request",
        "--incident",
        incident,
        "--agent",
        "fixer",
        "--action",
        "restart checkout",
        "--plan",
        plan,
    ]
}

impl DevProcess {
    /// The remediation suites' agent: `fixer`, uid 1001, both bands, `logs:read` and
    /// `deploy:restart`.
    pub fn create_fixer(&self) {
        self.create_fixer_for(1001);
    }

    /// [`DevProcess::create_fixer`], its workloads those of `uid`.
    pub fn create_fixer_for(&self, uid: u32) {
        self.ok(&[
            "profile",
            "create",
            "fixer",
            "--selector",
            &format!("unix:uid:{uid}"),
            "--band",
            "investigative,remediation",
            "--scope",
            "logs:read",
            "--scope",
            "deploy:restart",
        ]);
    }
}
