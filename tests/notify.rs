//! Approver notifications end to end (docs/notifications.md): `writ dev` with two
//! `[[notify]]` targets (Slack-shaped and JSON) posting to receivers in this test, grants
//! requested, approved and denied with the real CLI. Each receiver answers 500 to the
//! first post it gets and 200 after, so the first notification is only delivered by a
//! retry.
//!
//! The CLI runs as an approver by uid (through `setpriv`): these tests need root (see
//! `common::require_root`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::bin::{As, DevProcess, restart_args};

const ALICE: u32 = 65534; // approver

/// How long a notification may take to arrive before the test calls it lost (never a
/// duration the test asserts).
const PATIENCE: Duration = Duration::from_secs(60);

/// The secret part of the Slack-shaped target's URL: must reach the receiver, and never
/// the server's log.
const SECRET_PATH: &str = "/services/T0001/B0001/s3cr3tW3bh00kPath";

/// One POST as the receiver read it.
#[derive(Debug, Clone)]
struct Post {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    /// What the receiver answered.
    status: u16,
}

impl Post {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 receiver on a loopback port: one request per connection, 500 to the
/// first, 200 to the rest. Every post is sent on a channel, in order.
struct Receiver {
    port: u16,
    posts: mpsc::Receiver<Post>,
    seen: Vec<Post>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, posts) = mpsc::channel();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let status = if n == 0 { 500 } else { 200 };
                match read_post(stream, status) {
                    Some(post) => {
                        if tx.send(post).is_err() {
                            return;
                        }
                    }
                    None => continue,
                }
            }
        });
        Receiver {
            port,
            posts,
            seen: Vec::new(),
        }
    }

    /// Reads posts until `done` holds of all seen so far; returns them.
    fn until(&mut self, what: &str, done: impl Fn(&[Post]) -> bool) -> &[Post] {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.posts.recv_timeout(left) {
                Ok(post) => self.seen.push(post),
                Err(_) => panic!("{what}: not received; got {:#?}", self.seen),
            }
        }
        &self.seen
    }
}

/// Reads one request (head, then `Content-Length` bytes of body), answers `status`.
fn read_post(stream: std::net::TcpStream, status: u16) -> Option<Post> {
    stream.set_read_timeout(Some(PATIENCE)).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    assert_eq!(parts.next(), Some("POST"), "{request_line}");
    let path = parts.next()?.to_owned();
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{request_line}");
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("a Content-Length");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let reason = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    )
    .ok()?;
    Some(Post {
        path,
        headers,
        body: serde_json::from_slice(&body).expect("a JSON body"),
        status,
    })
}

/// The JSON target's delivered posts (answered 200) of `event` for `grant`.
fn json_posts<'a>(posts: &'a [Post], event: &str, grant: &str) -> Vec<&'a Post> {
    posts
        .iter()
        .filter(|p| p.status == 200)
        .filter(|p| p.body["event"] == event && p.body["grant"]["id"] == grant)
        .collect()
}

/// Every mrkdwn text of a Slack body, `text` first, joined by newlines.
fn slack_text(body: &Value) -> String {
    let mut texts = vec![body["text"].as_str().expect("text").to_owned()];
    for block in body["blocks"].as_array().expect("blocks") {
        assert_eq!(block["type"], "section", "{block}");
        assert_eq!(block["text"]["type"], "mrkdwn", "{block}");
        texts.push(block["text"]["text"].as_str().unwrap().to_owned());
    }
    texts.join("\n")
}

/// The Slack target's delivered posts whose headline says `what` of `grant`.
fn slack_posts<'a>(posts: &'a [Post], what: &str, grant: &str) -> Vec<&'a Post> {
    let headline = format!("writ: grant {grant} {what}:");
    posts
        .iter()
        .filter(|p| p.status == 200)
        .filter(|p| p.body["text"].as_str().unwrap_or("").starts_with(&headline))
        .collect()
}

fn private_file(path: &Path, text: &str, mode: u32) -> String {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn approvers_hear_of_requests_approvals_denials_and_expiry_even_after_a_failed_post() {
    if !common::require_root() {
        return;
    }
    let dir = common::temp_dir();
    let mut slack = Receiver::start();
    let mut json = Receiver::start();
    let url_file = private_file(
        &dir.path().join("slack.url"),
        &format!("http://127.0.0.1:{}{SECRET_PATH}\n", slack.port),
        0o600,
    );
    let config = private_file(
        &dir.path().join("writ.toml"),
        &format!(
            "[[notify]]\nname = \"sre-slack\"\nformat = \"slack\"\nurl_file = {url_file:?}\n\n\
             [[notify]]\nname = \"relay\"\nformat = \"json\"\nurl = \"http://127.0.0.1:{}/hook?tag=writ\"\n\
             events = [\"requested\", \"approved\", \"denied\", \"expiring\"]\nexpiring_before_secs = 2\n",
            json.port
        ),
        0o644,
    );
    let dev = DevProcess::start(
        &dir.path().join("data"),
        &["--config", &config, "--operator", "alice=65534:approver"],
    );
    dev.create_fixer();
    dev.ok(&[
        "incident",
        "open",
        "INC-7",
        "--title",
        "checkout <500s> & <!here>",
        "--severity",
        "sev3",
        "--assign",
        "fixer",
    ]);
    let plan = private_file(
        &dir.path().join("plan.txt"),
        "kubectl -n shop rollout restart deploy/checkout\n",
        0o644,
    );
    // Caller text that would link and mention in Slack if it were not escaped.
    let action = "restart <https://evil.example|checkout> & ping <!channel>";
    let request = |window: &str| {
        let mut args = restart_args("INC-7", &plan);
        args[7] = action;
        args.extend([
            "--target",
            "deploy/checkout",
            "--evidence",
            "https://logs.example/q?service=checkout&status=500",
            "--window",
            window,
        ]);
        let out = dev.ok(&args);
        out.trim().to_owned()
    };

    // Requested, then approved by alice (sev3: one approval): active for 3 s, so the
    // JSON target (warned 2 s before the end) also hears it is expiring.
    let approved = request("3s");
    let posts = json.until("requested, first grant", |p| {
        !json_posts(p, "requested", &approved).is_empty()
    });
    // The first post was answered 500 and the same body posted again.
    assert_eq!(posts[0].status, 500);
    assert_eq!(posts[1].status, 200);
    assert_eq!(
        posts[0].body, posts[1].body,
        "the retry posts the same body"
    );
    let requested = json_posts(posts, "requested", &approved)[0].body.clone();
    assert_eq!(requested["version"], 1);
    assert_eq!(requested["tenant"], "default");
    assert_eq!(requested["grant"]["state"], "pending");
    assert_eq!(requested["grant"]["agent"], "fixer");
    assert_eq!(requested["grant"]["action"], action);
    assert_eq!(
        requested["grant"]["targets"],
        serde_json::json!(["deploy/checkout"])
    );
    assert_eq!(
        requested["grant"]["evidence"],
        serde_json::json!(["https://logs.example/q?service=checkout&status=500"])
    );
    assert_eq!(requested["grant"]["requested_by"], "uid:0");
    assert_eq!(requested["grant"]["approvals_needed"], 1);
    assert_eq!(requested["grant"]["window_secs"], 3);
    assert_eq!(
        requested["grant"]["plan_digest"],
        dev.json(&["grant", "show", &approved])["plan_digest"]
    );
    assert_eq!(requested["incident"]["id"], "INC-7");
    assert_eq!(requested["incident"]["title"], "checkout <500s> & <!here>");
    assert_eq!(requested["incident"]["severity"], "sev3");
    assert_eq!(
        requested["approve_command"],
        format!("writ grant approve {approved}")
    );
    let post = &json.seen[1];
    assert_eq!(post.path, "/hook?tag=writ");
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(
        post.header("host"),
        Some(format!("127.0.0.1:{}", json.port).as_str())
    );

    let approval = dev.json_as(As::Uid(ALICE), &["grant", "approve", &approved]);
    assert_eq!(approval["state"], "active");
    let posts = json.until("approved and expiring", |p| {
        !json_posts(p, "approved", &approved).is_empty()
            && !json_posts(p, "expiring", &approved).is_empty()
    });
    let body = &json_posts(posts, "approved", &approved)[0].body;
    assert_eq!(body["grant"]["state"], "active");
    assert_eq!(body["grant"]["approvals"][0]["by"], "alice");
    assert!(
        body["approve_command"].is_null(),
        "nothing left to approve: {body}"
    );
    let expiring = &json_posts(posts, "expiring", &approved)[0].body;
    assert!(
        expiring["grant"]["expires_at"].as_i64().is_some(),
        "{expiring}"
    );

    // Requested, then denied.
    let denied = request("10m");
    dev.ok_as(
        As::Uid(ALICE),
        &[
            "grant",
            "deny",
            &denied,
            "--reason",
            "not <now> & not like this",
        ],
    );
    let posts = json.until("requested and denied, second grant", |p| {
        !json_posts(p, "requested", &denied).is_empty()
            && !json_posts(p, "denied", &denied).is_empty()
    });
    let body = &json_posts(posts, "denied", &denied)[0].body;
    assert_eq!(body["grant"]["state"], "denied");
    assert_eq!(body["grant"]["ended"]["by"], "alice");
    assert_eq!(
        body["grant"]["ended"]["reason"],
        "not <now> & not like this"
    );
    for event in ["requested", "approved", "expiring"] {
        assert_eq!(json_posts(posts, event, &approved).len(), 1, "one {event}");
    }

    // The Slack-shaped target heard the same, escaped.
    let posts = slack.until("slack: requested, approved, requested, denied", |p| {
        !slack_posts(p, "approved", &approved).is_empty()
            && !slack_posts(p, "denied", &denied).is_empty()
            && !slack_posts(p, "requested", &denied).is_empty()
    });
    assert_eq!((posts[0].status, posts[1].status), (500, 200));
    assert_eq!(
        posts[0].body, posts[1].body,
        "the retry posts the same body"
    );
    for post in posts {
        assert_eq!(post.path, SECRET_PATH);
        let text = slack_text(&post.body);
        // Caller text neither links nor mentions: no `<` or `>` reaches Slack.
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
    }
    let requested = slack_text(&slack_posts(posts, "requested", &approved)[0].body);
    for shown in [
        "restart &lt;https://evil.example|checkout&gt; &amp; ping &lt;!channel&gt;",
        "INC-7 (sev3) checkout &lt;500s&gt; &amp; &lt;!here&gt;",
        "*Agent:* fixer",
        "deploy/checkout",
        "https://logs.example/q?service=checkout&amp;status=500",
        "0 of 1",
        &format!("```writ grant approve {approved}```"),
    ] {
        assert!(requested.contains(shown), "{shown:?} missing: {requested}");
    }
    let approved_text = slack_text(&slack_posts(posts, "approved", &approved)[0].body);
    assert!(approved_text.contains("1 of 1 (alice)"), "{approved_text}");
    assert!(!approved_text.contains("grant approve"), "{approved_text}");
    let denied_text = slack_text(&slack_posts(posts, "denied", &denied)[0].body);
    assert!(
        denied_text.contains("*Denied by:* alice: not &lt;now&gt; &amp; not like this"),
        "{denied_text}"
    );
    assert!(
        slack_posts(posts, "requested", &denied)[0]
            .body
            .to_string()
            .contains(&format!("writ grant approve {denied}"))
    );
    // Its 3 s window is within the Slack target's default 120 s warning: not warned of
    // (by now the JSON target, warned 2 s before the end, has been).
    assert!(slack_posts(posts, "expiring", &approved).is_empty());

    // The failed first posts were logged, by target name and host, never the secret path.
    let log = dev.log();
    assert!(
        log.contains("retrying") && log.contains("sre-slack") && log.contains("relay"),
        "{log}"
    );
    assert!(log.contains("HTTP 500"), "{log}");
    assert!(
        !log.contains(SECRET_PATH) && !log.contains("s3cr3t"),
        "{log}"
    );
}

#[test]
fn a_world_readable_url_file_stops_the_server_at_start() {
    let dir = common::temp_dir();
    let url_file = private_file(
        &dir.path().join("slack.url"),
        "https://hooks.slack.example/services/T/B/s3cr3t\n",
        0o644,
    );
    let config = private_file(
        &dir.path().join("writ.toml"),
        &format!("[[notify]]\nname = \"sre-slack\"\nformat = \"slack\"\nurl_file = {url_file:?}\n"),
        0o644,
    );
    let out = std::process::Command::new(common::bin::WRIT)
        .args(["dev", "--config", &config, "--data-dir"])
        .arg(dir.path().join("data"))
        .env("WRIT_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("[[notify]] sre-slack"), "{stderr}");
    assert!(stderr.contains("group or others"), "{stderr}");
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}
