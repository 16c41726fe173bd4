//! A throwaway PostgreSQL cluster per test: `initdb` into a temp dir, `pg_ctl start` on
//! a Unix socket in that dir (no TCP listener, so clusters never collide and tests run in
//! parallel), stopped and deleted when dropped. Needs the server binaries (Debian's
//! `postgresql`, which `.ci/run` installs); as root, the cluster runs as the `postgres`
//! user (PostgreSQL refuses to run as root).
//!
//! Self-contained, so that examples measuring a cluster (examples/replica-propagation.rs)
//! include this same file rather than a copy.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One running cluster. The superuser is `writ`, trusted on the socket.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    /// Server options added by [`Postgres::serve_tls`].
    extra: std::sync::Mutex<String>,
    /// `fsync=off` (tests) or on (measurements).
    fsync: bool,
}

/// Where the server binaries are: `WRIT_PG_BIN`, else `initdb` on PATH, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WRIT_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("run id");
    assert!(
        out.status.success(),
        "running PostgreSQL as root needs a `postgres` user (Debian's postgresql package makes one)"
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

impl Postgres {
    /// Starts a cluster. Without PostgreSQL's binaries the test fails, saying what to
    /// install, unless `WRIT_ALLOW_SKIPS=1`: then it prints why and returns `None`.
    #[must_use = "return from the test when this is None"]
    pub fn start() -> Option<Postgres> {
        Self::start_with(false)
    }

    /// A cluster that fsyncs its commits, as a production one does: for measurements.
    #[must_use = "return when this is None"]
    pub fn start_durable() -> Option<Postgres> {
        Self::start_with(true)
    }

    fn start_with(fsync: bool) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            if std::env::var("WRIT_ALLOW_SKIPS").is_ok_and(|v| v == "1") {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "ignored: needs PostgreSQL's initdb and pg_ctl (apt-get install postgresql)"
                );
                return None;
            }
            panic!(
                "this test needs PostgreSQL (apt-get install postgresql, or WRIT_PG_BIN=dir of initdb); WRIT_ALLOW_SKIPS=1 skips it"
            );
        };
        let dir = tempfile::Builder::new()
            .prefix("writ-pg-")
            .tempdir()
            .expect("temp dir");
        let root = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
        };
        let run_as = root.then(|| (id_of("-u"), id_of("-g")));
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let pg = Postgres {
            dir,
            bin,
            port,
            run_as,
            extra: std::sync::Mutex::new(String::new()),
            fsync,
        };
        let data = pg.data_dir();
        pg.run_ok(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "writ",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        pg.start_again();
        Some(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL for database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://writ@/{db}?host={}&port={}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Creates a database.
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Runs SQL with psql; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let out = self.run_ok(
            "psql",
            &[
                "-h",
                path(self.socket_dir()),
                "-p",
                &port,
                "-U",
                "writ",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Restarts the server listening on 127.0.0.1 too, TLS only there (plain TCP is
    /// rejected by pg_hba), with this certificate and key; returns the TCP port.
    pub fn serve_tls(&self, cert_pem: &str, key_pem: &str) -> u16 {
        self.stop();
        let data = self.data_dir();
        let cert = data.join("server.crt");
        let key = data.join("server.key");
        std::fs::write(&cert, cert_pem).expect("write cert");
        std::fs::write(&key, key_pem).expect("write key");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        if let Some((uid, gid)) = self.run_as {
            for f in [&cert, &key] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown");
            }
        }
        let hba = data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!("hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n{rules}"),
        )
        .expect("write pg_hba.conf");
        // PostgreSQL's TCP port is the socket's `port`, chosen free for TCP at start.
        *self.extra.lock().unwrap() = format!(
            "-c listen_addresses='127.0.0.1' -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
        self.start_again();
        self.port
    }

    /// Starts the (stopped) server again on the same socket.
    pub fn start_again(&self) {
        let extra = self.extra.lock().unwrap().clone();
        let listen = if extra.is_empty() {
            "-c listen_addresses=''"
        } else {
            ""
        };
        let durability = if self.fsync {
            ""
        } else {
            "-c fsync=off -c full_page_writes=off"
        };
        let options = format!(
            "-k {} -p {} {listen} {durability} -c max_connections=300 {extra}",
            self.socket_dir().display(),
            self.port
        );
        let log = self.dir.path().join("postgres.log");
        self.run_ok(
            "pg_ctl",
            &[
                "-D",
                path(&self.data_dir()),
                "-l",
                path(&log),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server now (`-m immediate`: connections are cut, as in a crash).
    pub fn stop(&self) {
        self.run_ok(
            "pg_ctl",
            &[
                "-D",
                path(&self.data_dir()),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    fn command(&self, program: &str) -> Command {
        let psql_from_path = program == "psql" && !self.bin.join("psql").is_file();
        let mut cmd = if psql_from_path {
            Command::new("psql")
        } else {
            Command::new(self.bin.join(program))
        };
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn run_ok(&self, program: &str, args: &[&str]) -> Output {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        out
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                path(&self.data_dir()),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}
