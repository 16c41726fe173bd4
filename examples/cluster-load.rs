//! Load tool for three `writ server` replicas on one PostgreSQL (issue 12's benchmarks).
//!
//! Starts a throwaway PostgreSQL that fsyncs its commits, server `a` (the root holder) and
//! the signing replicas `b` and `c` (admitted on `a` by the key hashes they log), all as
//! `writ server` processes, and agents joined with tokens from `a`. Workloads run as uid
//! 65533 (operators' uids are refused): this same binary, re-run under `setpriv` as a
//! child that holds the Workload API streams and answers a line protocol on stdin/stdout.
//! Times cross the two processes as wall-clock (`SystemTime`) nanoseconds: one host.
//!
//! Sections (the default is revocation only):
//!
//! 1. **Revocation across replicas** (`--streams N --rounds R --per-conn P`): an agent on
//!    `b` and one on `c` (each knows only its own replica), N streams split between them,
//!    P per connection. A long-lived incident LOAD-0 keeps every stream alive; each round
//!    opens LOAD-r on `a`, waits until every stream holds LOAD-r's SVID, closes LOAD-r on
//!    `a` (the CloseIncident RPC `writ incident close` makes), and reports, over the N
//!    streams, when each got its update without LOAD-r: from the close's return (negative:
//!    before it returned) and from its start.
//! 2. **Issuance** (`--issuance`, `--agents A --svids S --repeat K`): S incidents for one workload;
//!    for 1, 2 and 3 replicas, A fresh agents spread over them and one workload per agent
//!    fetching at once, so every agent signs S CSRs through its replica's node API (in
//!    batches of up to 256, one audit commit each). Reports SVIDs per second for the
//!    cluster and the CPU each process used meanwhile (which one is the bound); K rounds
//!    of 1, 2, 3 (default 3).
//! 3. **Outage** (`--outage`, `--kill-at K --outage-secs T`): `[ca] x509_svid_ttl = "1m"`;
//!    two agents whose server list is [b, c, a], N streams; K seconds after every stream
//!    holds its identity (default 24: the renewals at half-life fall in the outage)
//!    SIGKILL `b`, 10 s later restart it, and watch T seconds in all (default 90). Counts streams that ever saw an
//!    error or an update without their identity (goal 0).
//!
//! `cargo build --release --bin writ --example cluster-load &&
//!  target/release/examples/cluster-load --writ target/release/writ [--issuance] [--outage]`
//!
//! Needs root (workloads run under another uid) and PostgreSQL's initdb and pg_ctl.

// A measuring tool, not a service: failing loudly on setup errors is what we want.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "common/load.rs"]
mod load;
#[path = "../tests/common/postgres.rs"]
mod postgres;

use load::{arg, args, flag, free_port, percentile, request};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_stream::StreamExt;
use writ::proto::admin::{self as admin_pb, admin_client::AdminClient};
use writ::proto::workload::{self as pb, spiffe_workload_api_client::SpiffeWorkloadApiClient};

/// The workloads' uid: no operator's.
const WORKLOAD: u32 = 65533;

/// The longest any one wait may take before the tool gives up.
const WAIT: Duration = Duration::from_secs(120);

/// Every value given for a repeated option.
fn values(name: &str) -> Vec<String> {
    let args = args();
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// `p50 p99 max` in milliseconds of `samples` (nanoseconds).
fn summary(samples: &mut [i128]) -> String {
    samples.sort_unstable();
    format!(
        "{:>9.1} {:>9.1} {:>9.1}",
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default())
    )
}

// ---------------------------------------------------------------------------------------
// Processes

/// A child process, SIGKILLed when dropped; its stdout and stderr in files.
struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(writ: &Path, args: &[&str], logs: &Path) -> Proc {
        let out = logs.with_extension("out");
        let err = logs.with_extension("err");
        let child = Command::new(writ)
            .args(args)
            .env_remove("WRIT_ADMIN_SOCKET")
            .env("WRIT_LOG", "writ=info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn writ");
        Proc { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().expect("poll child") {
            panic!("{what} exited ({status}):\n{}", self.stderr());
        }
    }

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

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("UTF-8 path"))
}

struct Server {
    writ: PathBuf,
    name: String,
    config: PathBuf,
    logs: PathBuf,
    admin: PathBuf,
    port: u16,
    proc: Proc,
}

impl Server {
    fn spawn(writ: &Path, dir: &Path, name: &str, extra: &str) -> Server {
        let data = dir.join(name);
        let port = free_port();
        let config = dir.join(format!("{name}.toml"));
        // `extra` may open a TOML table: top-level keys go first.
        std::fs::write(
            &config,
            format!(
                "data_dir = {}\nnode_listen = \"127.0.0.1:{port}\"\n{extra}",
                quoted(&data)
            ),
        )
        .expect("write config");
        let logs = dir.join(format!("{name}.log"));
        let proc = Proc::spawn(
            writ,
            &["server", "--config", config.to_str().unwrap()],
            &logs,
        );
        Server {
            writ: writ.to_owned(),
            name: name.to_owned(),
            config,
            logs,
            admin: data.join("admin.sock"),
            port,
            proc,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        while std::os::unix::net::UnixStream::connect(&self.admin).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            self.proc
                .check_running(&format!("writ server {}", self.name));
            assert!(Instant::now() < deadline, "server {} not ready", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn restart(&mut self) {
        self.proc.kill();
        self.proc = Proc::spawn(
            &self.writ,
            &["server", "--config", self.config.to_str().unwrap()],
            &self.logs.with_extension("restarted.log"),
        );
        self.wait_ready();
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `writ ARGS` on this server's admin socket, which must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = Command::new(&self.writ)
            .args(args)
            .env("WRIT_ADMIN_SOCKET", &self.admin)
            .env_remove("WRIT_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run writ");
        assert!(
            out.status.success(),
            "writ {args:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    /// Admits `replica`'s intermediate keys (one per band, from its log) and waits until
    /// it serves.
    fn admit(&self, replica: &mut Server) {
        let mut keys: Vec<String> = Vec::new();
        wait_for("a replica's keys in its log", || {
            replica
                .proc
                .check_running(&format!("writ server {}", replica.name));
            keys = replica
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
            keys.len() == 3
        });
        let mut args = vec!["replica", "admit"];
        for key in &keys {
            args.extend(["--key-sha256", key.as_str()]);
        }
        self.ok(&args);
        replica.wait_ready();
    }

    async fn admin(&self) -> AdminClient<tonic::transport::Channel> {
        AdminClient::new(writ::uds::channel(&self.admin).await.expect("admin socket"))
    }
}

struct Agent {
    socket: PathBuf,
    proc: Proc,
}

/// Three replicas on one database: `a` holds the roots, `b` and `c` are admitted on it.
struct Cluster {
    writ: PathBuf,
    dir: PathBuf,
    pg: postgres::Postgres,
    servers: Vec<Server>,
    bundle: PathBuf,
}

impl Cluster {
    fn start(writ: &Path, dir: &Path, extra: &str) -> Cluster {
        let pg = postgres::Postgres::start_durable().expect("PostgreSQL");
        pg.create_database("writ");
        let config = format!("store = {:?}\n{extra}", pg.url("writ"));
        let mut a = Server::spawn(writ, dir, "a", &config);
        a.wait_ready();
        let mut servers = vec![a];
        for name in ["b", "c"] {
            let mut replica = Server::spawn(writ, dir, name, &config);
            servers[0].admit(&mut replica);
            servers.push(replica);
        }
        let bundle = dir.join("base.pem");
        std::fs::write(
            &bundle,
            servers[0].ok(&["bundle", "show", "--band", "base"]),
        )
        .expect("write bundle");
        Cluster {
            writ: writ.to_owned(),
            dir: dir.to_owned(),
            pg,
            servers,
            bundle,
        }
    }

    /// An agent reaching the replicas `order` (indexes into a, b, c) in that order.
    fn agent(&self, name: &str, order: &[usize]) -> Agent {
        let data = self.dir.join(name);
        let list = order
            .iter()
            .map(|&i| format!("{:?}", self.servers[i].address()))
            .collect::<Vec<_>>()
            .join(", ");
        let token = self.servers[0].ok(&["token", "create"]).trim().to_owned();
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = {}\nserver_address = [{list}]\ntrust_bundle = {}\njoin_token = {token:?}\n",
                quoted(&data),
                quoted(&self.bundle)
            ),
        )
        .expect("write agent config");
        let mut proc = Proc::spawn(
            &self.writ,
            &["agent", "--config", config.to_str().unwrap()],
            &self.dir.join(format!("{name}.log")),
        );
        let socket = data.join("workload.sock");
        wait_for(&format!("agent {name}"), || {
            proc.check_running(&format!("writ agent {name}"));
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
                && proc.stdout().ends_with('\n')
        });
        Agent { socket, proc }
    }

    /// The profile `load` for the workloads' uid.
    fn profile(&self) {
        self.servers[0].ok(&[
            "profile",
            "create",
            "load",
            "--selector",
            &format!("unix:uid:{WORKLOAD}"),
        ]);
    }

    /// The servers an agent's log says it connected to, in order, by name.
    fn connections(&self, log: &str) -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("connected to server"))
            .filter_map(|l| {
                let address = l.split("server=").nth(1)?.split_whitespace().next()?;
                let address = address.trim_matches('"');
                Some(
                    self.servers
                        .iter()
                        .find(|s| s.address() == address)
                        .map_or_else(|| address.to_owned(), |s| s.name.clone()),
                )
            })
            .collect()
    }

    /// The PostgreSQL server's processes: the postmaster and its children.
    fn postgres_pids(&self) -> Vec<u32> {
        let pid_file = self.pg.socket_dir().join("data/postmaster.pid");
        let Some(main) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![main];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if stat(pid).is_some_and(|(ppid, _)| ppid == main) {
                pids.push(pid);
            }
        }
        pids
    }
}

async fn open_incident(admin: &mut AdminClient<tonic::transport::Channel>, id: &str) {
    admin
        .open_incident(admin_pb::OpenIncidentRequest {
            id: id.into(),
            title: "cluster load".into(),
            severity: "sev3".into(),
            assigned: vec!["load".into()],
            scopes: vec![],
            max_lifetime_seconds: None,
        })
        .await
        .unwrap_or_else(|e| panic!("open {id}: {e}"));
}

/// `(parent pid, user + system CPU in clock ticks)` of a process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the `(comm)` field: state ppid ... utime(14th field) stime(15th).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| stat(p)).map(|(_, t)| t).sum()
}

// ---------------------------------------------------------------------------------------
// The workload child: streams as uid 65533, a line protocol with the parent.

/// What the workload child is told, one line each, and answers:
/// * `await ID` → `held ID` once every stream holds ID's SVID; from then on, the first
///   update of each stream without ID is timed;
/// * `lost ID` → `lost ID T…` (unix nanoseconds, one per stream) once each has one;
/// * `reset` → `ok`: error and update counters back to zero;
/// * `stats` → `stats bad=… errors=… lacking=… updates=… renewals=… first_error=…`.
///
/// It says `ready` once every stream holds its identity, and `timeout …` when a wait
/// takes longer than [`WAIT`].
struct Streams {
    /// The incident every stream must always hold (LOAD-0).
    identity: String,
    /// Per stream: the incidents of the SVIDs in its latest update.
    ids: Vec<Vec<String>>,
    /// Per stream: a hash of its identity's certificate chain (0: none yet).
    leaf: Vec<u64>,
    /// Per stream: it saw an error, an end, or an update without its identity.
    bad: Vec<bool>,
    errors: usize,
    lacking: usize,
    updates: usize,
    renewals: usize,
    first_error: Option<String>,
    /// The incident being closed, when each stream first lost it, streams left.
    watch: Option<(String, Vec<Option<i128>>, usize)>,
}

impl Streams {
    fn update(&mut self, i: usize, at: i128, message: &pb::X509svidResponse) {
        let ids: Vec<String> = message
            .svids
            .iter()
            .filter_map(|s| {
                s.spiffe_id
                    .rsplit_once("/incident/")
                    .map(|(_, id)| id.to_owned())
            })
            .collect();
        self.updates += 1;
        match message.svids.iter().find(|s| {
            s.spiffe_id
                .ends_with(&format!("/incident/{}", self.identity))
        }) {
            Some(svid) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                svid.x509_svid.hash(&mut h);
                let leaf = h.finish();
                if self.leaf[i] != 0 && self.leaf[i] != leaf {
                    self.renewals += 1;
                }
                self.leaf[i] = leaf;
            }
            None => {
                self.lacking += 1;
                self.bad[i] = true;
            }
        }
        if let Some((id, times, left)) = &mut self.watch
            && times[i].is_none()
            && !ids.contains(id)
        {
            times[i] = Some(at);
            *left -= 1;
        }
        self.ids[i] = ids;
    }

    fn error(&mut self, i: usize, what: String) {
        self.errors += 1;
        self.bad[i] = true;
        self.ids[i].clear();
        self.first_error.get_or_insert(what);
    }

    fn holding(&self, id: &str) -> usize {
        self.ids
            .iter()
            .filter(|ids| ids.iter().any(|x| x == id))
            .count()
    }
}

type Workload = SpiffeWorkloadApiClient<tonic::transport::Channel>;

async fn follow(i: usize, mut client: Workload, state: Arc<Mutex<Streams>>) {
    loop {
        match client.fetch_x509svid(request()).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.next().await {
                        Some(Ok(message)) => state.lock().unwrap().update(i, now_ns(), &message),
                        Some(Err(status)) => {
                            state.lock().unwrap().error(i, format!("{status}"));
                            break;
                        }
                        None => {
                            state.lock().unwrap().error(i, "stream ended".into());
                            break;
                        }
                    }
                }
            }
            Err(status) => state.lock().unwrap().error(i, format!("{status}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `done` every 2 ms; false after [`WAIT`].
async fn poll(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

async fn child_streams() {
    let sockets: Vec<PathBuf> = values("--socket").into_iter().map(PathBuf::from).collect();
    let streams = arg("--streams", 10_000);
    let per_conn = arg("--per-conn", 64).max(1);
    let identity = values("--identity").pop().expect("--identity");
    let state = Arc::new(Mutex::new(Streams {
        identity: identity.clone(),
        ids: vec![Vec::new(); streams],
        leaf: vec![0; streams],
        bad: vec![false; streams],
        errors: 0,
        lacking: 0,
        updates: 0,
        renewals: 0,
        first_error: None,
        watch: None,
    }));
    // Stream i is on socket i % S, connection (i / S) / per_conn there.
    let mut conns: Vec<Vec<Workload>> = vec![Vec::new(); sockets.len()];
    for i in 0..streams {
        let s = i % sockets.len();
        let c = (i / sockets.len()) / per_conn;
        if conns[s].len() <= c {
            let channel = writ::uds::channel(&sockets[s]).await.expect("agent socket");
            conns[s].push(SpiffeWorkloadApiClient::new(channel));
        }
        tokio::spawn(follow(i, conns[s][c].clone(), Arc::clone(&state)));
    }
    // No `io-std` in tokio's features here: stdin is read by a thread, stdout is std's.
    let say = |line: String| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").expect("write stdout");
        out.flush().expect("flush stdout");
    };
    if !poll(|| state.lock().unwrap().holding(&identity) == streams).await {
        let held = state.lock().unwrap().holding(&identity);
        say(format!("timeout {held}/{streams} hold {identity}"));
        return;
    }
    say("ready".into());
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if tx.send(line.expect("read stdin")).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next()) {
            (Some("await"), Some(id)) => {
                if poll(|| state.lock().unwrap().holding(id) == streams).await {
                    state.lock().unwrap().watch =
                        Some((id.to_owned(), vec![None; streams], streams));
                    format!("held {id}")
                } else {
                    let held = state.lock().unwrap().holding(id);
                    format!("timeout {held}/{streams} hold {id}")
                }
            }
            (Some("lost"), Some(id)) => {
                if poll(|| {
                    state
                        .lock()
                        .unwrap()
                        .watch
                        .as_ref()
                        .is_some_and(|w| w.2 == 0)
                })
                .await
                {
                    let (_, times, _) = state.lock().unwrap().watch.take().unwrap();
                    let times: Vec<String> = times
                        .into_iter()
                        .map(|t| t.unwrap_or(0).to_string())
                        .collect();
                    format!("lost {id} {}", times.join(" "))
                } else {
                    let left = state.lock().unwrap().watch.as_ref().map_or(0, |w| w.2);
                    format!("timeout {left}/{streams} still hold {id}")
                }
            }
            (Some("reset"), _) => {
                let mut s = state.lock().unwrap();
                s.bad.iter_mut().for_each(|b| *b = false);
                (s.errors, s.lacking, s.updates, s.renewals) = (0, 0, 0, 0);
                s.first_error = None;
                "ok".into()
            }
            (Some("stats"), _) => {
                let s = state.lock().unwrap();
                format!(
                    "stats bad={} errors={} lacking={} updates={} renewals={} first_error={:?}",
                    s.bad.iter().filter(|b| **b).count(),
                    s.errors,
                    s.lacking,
                    s.updates,
                    s.renewals,
                    s.first_error.as_deref().unwrap_or("-")
                )
            }
            _ => format!("unknown {line}"),
        };
        say(answer);
    }
}

/// `--fetch`: one FetchX509SVID per socket, all at once; prints `start T` and then
/// `done T N` per socket (its first message, holding N SVIDs).
async fn child_fetch() {
    let sockets: Vec<PathBuf> = values("--socket").into_iter().map(PathBuf::from).collect();
    let mut clients = Vec::new();
    for socket in &sockets {
        let channel = writ::uds::channel(socket).await.expect("agent socket");
        clients.push(SpiffeWorkloadApiClient::new(channel));
    }
    let start = now_ns();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut stream = client
                    .fetch_x509svid(request())
                    .await
                    .expect("fetch")
                    .into_inner();
                let first = stream.next().await.expect("a message").expect("SVIDs");
                (now_ns(), first.svids.len())
            })
        })
        .collect();
    println!("start {start}");
    for task in tasks {
        let (at, n) = task.await.expect("fetch task");
        println!("done {at} {n}");
    }
}

/// The workload child under uid [`WORKLOAD`]: this binary, copied where that uid can run it.
struct WorkloadChild {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl WorkloadChild {
    /// The child holding `streams` streams (`per_conn` per connection) on the two agents'
    /// sockets, all holding LOAD-0, ready and reset.
    async fn start(
        exe: &Path,
        sockets: [&Path; 2],
        streams: usize,
        per_conn: usize,
    ) -> WorkloadChild {
        let mut args = vec!["--child".to_owned()];
        for socket in sockets {
            args.extend(["--socket".to_owned(), socket.display().to_string()]);
        }
        args.extend([
            "--streams".to_owned(),
            streams.to_string(),
            "--per-conn".to_owned(),
            per_conn.to_string(),
            "--identity".to_owned(),
            "LOAD-0".to_owned(),
        ]);
        let mut child = WorkloadChild::spawn(exe, &args);
        assert_eq!(child.line().await, "ready");
        child.ask("reset").await;
        child
    }

    fn spawn(exe: &Path, args: &[String]) -> WorkloadChild {
        let mut child = tokio::process::Command::new("setpriv")
            .args([
                &format!("--reuid={WORKLOAD}"),
                &format!("--regid={WORKLOAD}"),
                "--clear-groups",
            ])
            .arg(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the workload child");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        WorkloadChild {
            child,
            stdin,
            lines,
        }
    }

    async fn line(&mut self) -> String {
        let line = self
            .lines
            .next_line()
            .await
            .expect("read child")
            .expect("the workload child exited");
        assert!(!line.starts_with("timeout"), "workload child: {line}");
        line
    }

    async fn ask(&mut self, command: &str) -> String {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write child");
        self.stdin.flush().await.expect("flush child");
        self.line().await
    }
}

// ---------------------------------------------------------------------------------------
// The sections

async fn revocation(writ: &Path, exe: &Path, dir: &Path) {
    let streams = arg("--streams", 10_000);
    let rounds = arg("--rounds", 5);
    let per_conn = arg("--per-conn", 64);
    let cluster = Cluster::start(writ, dir, "");
    cluster.profile();
    let mut admin = cluster.servers[0].admin().await;
    open_incident(&mut admin, "LOAD-0").await;
    let on_b = cluster.agent("agent-b", &[1]);
    let on_c = cluster.agent("agent-c", &[2]);
    let mut child =
        WorkloadChild::start(exe, [&on_b.socket, &on_c.socket], streams, per_conn).await;
    println!(
        "\n## Revocation across replicas: close on a, {streams} streams ({per_conn} per connection) on agents of b and c"
    );
    println!(
        "round  close ms  unconfirmed | from return: p50 ms    p99 ms    max ms | from start: p50 ms    p99 ms    max ms | before return"
    );
    let (mut all_return, mut all_start, mut closes) = (Vec::new(), Vec::new(), Vec::new());
    // CPU from each close's start until every stream has its update: a, b, c, the two
    // agents, the workload child, PostgreSQL.
    let pids: Vec<Vec<u32>> = vec![
        vec![cluster.servers[0].proc.pid()],
        vec![cluster.servers[1].proc.pid()],
        vec![cluster.servers[2].proc.pid()],
        vec![on_b.proc.pid(), on_c.proc.pid()],
        child.child.id().into_iter().collect(),
        cluster.postgres_pids(),
    ];
    let mut cpu = vec![0u64; pids.len()];
    let mut closing_ns = 0i128;
    for round in 1..=rounds {
        let id = format!("LOAD-{round}");
        open_incident(&mut admin, &id).await;
        child.ask(&format!("await {id}")).await;
        let ticks: Vec<u64> = pids.iter().map(|p| cpu_ticks(p)).collect();
        let started = now_ns();
        let reply = admin
            .close_incident(admin_pb::CloseIncidentRequest { id: id.clone() })
            .await
            .expect("close")
            .into_inner();
        let returned = now_ns();
        let answer = child.ask(&format!("lost {id}")).await;
        closing_ns += now_ns() - started;
        for (total, (p, before)) in cpu.iter_mut().zip(pids.iter().zip(ticks)) {
            *total += cpu_ticks(p).saturating_sub(before);
        }
        let times: Vec<i128> = answer
            .split_whitespace()
            .skip(2)
            .map(|t| t.parse().expect("a time"))
            .collect();
        assert_eq!(times.len(), streams, "{answer:.200}");
        let mut from_return: Vec<i128> = times.iter().map(|t| t - returned).collect();
        let mut from_start: Vec<i128> = times.iter().map(|t| t - started).collect();
        let before = from_return.iter().filter(|t| **t < 0).count();
        println!(
            "{round:>5} {:>9.1} {:>12} | {:>27} | {:>26} | {before:>6}/{streams}",
            ms(returned - started),
            reply.unconfirmed_replicas.len(),
            summary(&mut from_return),
            summary(&mut from_start),
        );
        closes.push(returned - started);
        all_return.extend(from_return);
        all_start.extend(from_start);
    }
    closes.sort_unstable();
    println!(
        "  all {:>9.1} {:>12} | {:>27} | {:>26} |",
        ms(percentile(&closes, 0.5)),
        "(close p50)",
        summary(&mut all_return),
        summary(&mut all_start),
    );
    println!("streams: {}", child.ask("stats").await);
    let wall = closing_ns as f64 / 1e9;
    let share = |ticks: u64| {
        let s = ticks as f64 / 100.0;
        format!("{s:.2} s ({:.0}%)", 100.0 * s / wall)
    };
    println!(
        "CPU from each close's start until the last stream had its update ({wall:.2} s in all; % of one core): \
         a {}, b {}, c {}, agents {}, workload child {}, PostgreSQL {}",
        share(cpu[0]),
        share(cpu[1]),
        share(cpu[2]),
        share(cpu[3]),
        share(cpu[4]),
        share(cpu[5]),
    );
    drop(on_b);
    drop(on_c);
}

async fn issuance(writ: &Path, exe: &Path, dir: &Path) {
    let agents = arg("--agents", 12);
    let svids = arg("--svids", 256);
    let cluster = Cluster::start(writ, dir, "");
    cluster.profile();
    let mut admin = cluster.servers[0].admin().await;
    for i in 1..=svids {
        open_incident(&mut admin, &format!("ISS-{i}")).await;
    }
    println!(
        "\n## Issuance: {agents} fresh agents spread over the replicas, each signing {svids} SVIDs for one workload at once (batches of up to 256 CSRs)"
    );
    println!(
        "replicas  SVIDs   wall s  SVIDs/s | CPU s (% of one core):     a            b            c       agents   PostgreSQL"
    );
    let tick = 100.0; // USER_HZ on Linux
    let repeat = arg("--repeat", 3);
    for (replicas, attempt) in (0..repeat).flat_map(|t| (1..=3usize).map(move |r| (r, t))) {
        let run: Vec<Agent> = (0..agents)
            .map(|j| cluster.agent(&format!("iss{replicas}-{attempt}-{j}"), &[j % replicas]))
            .collect();
        let mut args = vec!["--child".to_string(), "--fetch".into()];
        for agent in &run {
            args.extend(["--socket".into(), agent.socket.display().to_string()]);
        }
        let servers: Vec<u32> = cluster.servers.iter().map(|s| s.proc.pid()).collect();
        let agent_pids: Vec<u32> = run.iter().map(|a| a.proc.pid()).collect();
        let pg = cluster.postgres_pids();
        let before: Vec<u64> = servers.iter().map(|&p| cpu_ticks(&[p])).collect();
        let (agents_before, pg_before) = (cpu_ticks(&agent_pids), cpu_ticks(&pg));
        let mut child = WorkloadChild::spawn(exe, &args);
        let start: i128 = child.line().await["start ".len()..].parse().unwrap();
        let mut end = start;
        let mut total = 0;
        for _ in 0..agents {
            let line = child.line().await;
            let mut words = line.split_whitespace().skip(1);
            end = end.max(words.next().unwrap().parse().unwrap());
            total += words.next().unwrap().parse::<usize>().unwrap();
        }
        let _ = child.child.wait().await;
        let wall = (end - start) as f64 / 1e9;
        let cpu = |ticks: u64| {
            let s = ticks as f64 / tick;
            format!("{s:>5.1} ({:>3.0}%)", 100.0 * s / wall)
        };
        let after: Vec<u64> = servers.iter().map(|&p| cpu_ticks(&[p])).collect();
        println!(
            "{replicas:>8} {total:>6} {wall:>8.2} {:>8.0} | {:>28} {:>12} {:>12} {:>12} {:>12}",
            total as f64 / wall,
            cpu(after[0] - before[0]),
            cpu(after[1] - before[1]),
            cpu(after[2] - before[2]),
            cpu(cpu_ticks(&agent_pids) - agents_before),
            cpu(cpu_ticks(&pg).saturating_sub(pg_before)),
        );
        drop(run);
    }
    println!(
        "(CPU over the wall time; agents include generating the keys and CSRs. The machine's cores are shared by all of them.)"
    );
}

async fn outage(writ: &Path, exe: &Path, dir: &Path) {
    let streams = arg("--streams", 10_000);
    let per_conn = arg("--per-conn", 64);
    let watch_secs = arg("--outage-secs", 90) as u64;
    let kill_at = arg("--kill-at", 24) as u64;
    let mut cluster = Cluster::start(writ, dir, "[ca]\nx509_svid_ttl = \"1m\"\n");
    cluster.profile();
    let mut admin = cluster.servers[0].admin().await;
    open_incident(&mut admin, "LOAD-0").await;
    let one = cluster.agent("agent-1", &[1, 2, 0]);
    let two = cluster.agent("agent-2", &[1, 2, 0]);
    let mut child = WorkloadChild::start(exe, [&one.socket, &two.socket], streams, per_conn).await;
    // The SVIDs were signed just before `ready`: renewal at half-life (30 s ± 10 %)
    // falls inside an outage from `--kill-at` (default 24 s) to 10 s later.
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(kill_at)).await;
    let at_kill = child.ask("stats").await;
    cluster.servers[1].proc.kill();
    let killed = began.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let at_restart = child.ask("stats").await;
    cluster.servers[1].restart();
    let back = began.elapsed();
    let rest = Duration::from_secs(watch_secs).saturating_sub(began.elapsed());
    tokio::time::sleep(rest).await;
    let stats = child.ask("stats").await;
    println!(
        "\n## Outage: {streams} streams on two agents with servers [b, c, a], x509_svid_ttl 1m; b SIGKILLed at {:.1} s, serving again at {:.1} s, watched {:.0} s",
        killed.as_secs_f64(),
        back.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    println!("when b is killed:     {at_kill}");
    println!("before b is restarted: {at_restart}");
    println!("at the end:           {stats}");
    println!("(counters since `ready`; renewals = updates carrying a new LOAD-0 certificate)");
    for (name, agent) in [("agent-1", &one), ("agent-2", &two)] {
        println!(
            "{name} connected to: {}",
            cluster.connections(&agent.proc.stderr()).join(" → ")
        );
    }
    drop((one, two, child));
}

#[tokio::main]
async fn main() {
    if flag("--child") {
        if flag("--fetch") {
            child_fetch().await;
        } else {
            child_streams().await;
        }
        return;
    }
    let writ = values("--writ")
        .pop()
        .map_or_else(|| PathBuf::from("target/release/writ"), PathBuf::from);
    let writ = std::fs::canonicalize(&writ).expect("the writ binary (--writ)");
    let dir = tempfile::Builder::new()
        .prefix("writ-cluster-load-")
        .tempdir()
        .expect("temp dir");
    {
        use std::os::unix::fs::PermissionsExt;
        // The workload uid reaches the agents' sockets and its own binary in here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let exe = dir.path().join("workload");
    std::fs::copy(std::env::current_exe().expect("own path"), &exe).expect("copy self");
    let only = flag("--issuance") || flag("--outage");
    if !only || flag("--revocation") {
        let section = dir.path().join("revocation");
        std::fs::create_dir(&section).unwrap();
        revocation(&writ, &exe, &section).await;
    }
    if flag("--issuance") {
        let section = dir.path().join("issuance");
        std::fs::create_dir(&section).unwrap();
        issuance(&writ, &exe, &section).await;
    }
    if flag("--outage") {
        let section = dir.path().join("outage");
        std::fs::create_dir(&section).unwrap();
        outage(&writ, &exe, &section).await;
    }
    if flag("--keep") {
        println!("kept {}", dir.keep().display());
    }
}
