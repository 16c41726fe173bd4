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

use common::procs::{AgentProc, ServerProc, Watch, fetch, ids};
use common::{free_port, temp_dir, toml_string};
use std::path::{Path, PathBuf};

/// The uid of the workload: no operator's.
const WORKLOAD: u32 = 65533;

const IDENTITY: &str = "spiffe://investigate.example.org/agent/triage/incident/INC-1";

/// A `writ server` with a short X.509-SVID lifetime, so renewals happen while the test
/// watches.
fn server(dir: &Path) -> ServerProc {
    ServerProc::start(dir, "server", "[ca]\nx509_svid_ttl = \"1m\"\n")
}

/// A profile for the workload's uid, an incident assigned to it, and what the agent
/// needs to trust and attest to `server`: `(bundle path, join token)`.
fn prepare(server: &ServerProc, dir: &Path) -> (PathBuf, String) {
    let bundle = server.base_pem(dir);
    let token = server.token();
    server.entitle(WORKLOAD, "INC-1");
    (bundle, token)
}

/// The leaf digest of the identity in the watch's last update, which must be a served
/// SVID.
fn current_leaf(watch: &Watch) -> String {
    let updates = watch.updates();
    let last = updates.last().expect("the watch got no update");
    assert_eq!(ids(last), Some(vec![IDENTITY.to_owned()]), "{updates:#?}");
    last["svids"][0]["leaf_sha256"]
        .as_str()
        .expect("leaf digest")
        .to_owned()
}

#[test]
fn an_agent_skips_a_dead_address_and_gets_its_identity_from_the_next() {
    if !common::require_root() {
        return;
    }
    let dir = temp_dir();
    let dir = dir.path();
    let server = server(dir);
    let (bundle, token) = prepare(&server, dir);
    let dead = format!("127.0.0.1:{}", free_port());
    // The live one by name: "localhost" may resolve to ::1 first, where nothing listens.
    let live = format!("localhost:{}", server.port);
    let mut agent = AgentProc::start(
        dir,
        "agent",
        &format!("[{}, {}]", toml_string(&dead), toml_string(&live)),
        &bundle,
        &token,
        "",
        // The link's steps while starting are debug detail.
        Some("warn,writ=debug"),
    );
    let answer = fetch(WORKLOAD, &agent.socket());
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
    let mut server = server(dir);
    let (bundle, token) = prepare(&server, dir);
    // The old single-address form of `server_address`.
    let mut agent = AgentProc::start(
        dir,
        "agent",
        &toml_string(&server.address()),
        &bundle,
        &token,
        "",
        None,
    );
    let watch = Watch::start(WORKLOAD, &agent.socket(), &dir.join("watch.log"));
    watch.wait_for("the identity", |u| ids(u).is_some_and(|i| !i.is_empty()));

    server.kill();
    agent.wait_log(&["lost server", &server.address()]);
    agent.wait_log(&["all servers down"]);
    // Cut off: the workload keeps what it holds, with no error and no redaction, and a
    // fresh call is still answered from the cache.
    let held = current_leaf(&watch);
    assert!(
        watch.updates().iter().all(|u| u.get("error").is_none()),
        "{:#?}",
        watch.updates()
    );
    let answer = fetch(WORKLOAD, &agent.socket());
    assert_eq!(ids(&answer), Some(vec![IDENTITY.to_owned()]), "{answer}");
    assert_eq!(answer["svids"][0]["leaf_sha256"], held.as_str());
    assert_eq!(
        current_leaf(&watch),
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
