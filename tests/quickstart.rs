//! docs/quickstart.md, run as written: the doc is the single source of the commands, so
//! the doc and this test cannot drift.
//!
//! Every `sh` block runs in order, in one `bash` (`set -euo pipefail`), in an empty temp
//! directory, with these substitutions only:
//! * the block starting with `# build` is replaced by a `PATH` to this test build's `writ`
//!   and examples (scripts/test builds the examples before the tests) and to the venv of
//!   `WRIT_PYTHON` (py-spiffe; without it the py-spiffe line is skipped, loudly);
//! * `OPS_API_ADDR` is a free port, so that parallel runs do not collide;
//! * a line ending in `# refused` must fail. It is retried until it fails, for up to 10 s:
//!   the doc promises "within a second"; this waits for the event instead of asserting a
//!   duration, and fails if the refusal never comes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

const REFUSED: &str = "# refused";

/// The `sh` fenced blocks of `markdown`, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "unterminated sh block");
    blocks
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The bash script the blocks make, after the substitutions above.
fn script(blocks: &[String], path: &str, python: Option<&Path>, addr: &str) -> String {
    let mut out = String::from(
        r#"set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT
refused() {
  for _ in $(seq 50); do
    if ! (eval "$1"); then echo "(refused, as expected)"; return 0; fi
    sleep 0.2
  done
  echo "NOT REFUSED: $1" >&2
  return 1
}
"#,
    );
    out.push_str(&format!("export PATH={}\n", quote(path)));
    out.push_str(&format!("export OPS_API_ADDR={}\n", quote(addr)));
    if python.is_none() {
        out.push_str(
            "python3() { echo 'skipped py-spiffe: WRIT_PYTHON is not set (scripts/test sets it)' >&2; }\n",
        );
    }
    for (i, block) in blocks.iter().enumerate() {
        if block.starts_with("# build") {
            continue;
        }
        out.push_str(&format!("echo '== block {i}' >&2\n"));
        for line in block.lines() {
            match line.strip_suffix(REFUSED) {
                Some(command) => {
                    out.push_str(&format!("refused {}\n", quote(command.trim_end())));
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_script_keeps_the_doc_commands_and_marks_refusals() {
    let blocks = sh_blocks(
        "x\n```sh\n# build\ncargo build\n```\n```sh\na 'b'\nc d  # refused\n```\n```text\nno\n```\n",
    );
    assert_eq!(blocks.len(), 2);
    let s = script(&blocks, "/p", None, "127.0.0.1:1");
    assert!(!s.contains("cargo build"));
    assert!(s.contains("\na 'b'\n"));
    assert!(s.contains("\nrefused 'c d'\n"));
    assert!(!s.contains("no\n"));
}

#[test]
fn the_quickstart_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/quickstart.md")).unwrap();
    let blocks = sh_blocks(&doc);
    assert!(
        blocks.first().is_some_and(|b| b.starts_with("# build")),
        "the quickstart starts with its build block"
    );
    // About ten steps of a command or two: keep it that way.
    let commands = blocks[1..]
        .iter()
        .flat_map(|b| b.lines())
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .count();
    assert!(
        commands <= 24,
        "{commands} commands is no longer a quickstart"
    );

    let writ = PathBuf::from(env!("CARGO_BIN_EXE_writ"));
    let bin = writ.parent().unwrap().to_path_buf();
    let examples = bin.join("examples");
    for example in ["ops-api", "ops-call", "request-grant", "svid-fetch"] {
        assert!(
            examples.join(example).exists(),
            "{} is missing: build the examples first (`cargo build --examples`; scripts/test does)",
            examples.join(example).display()
        );
    }
    let python = std::env::var_os("WRIT_PYTHON").map(PathBuf::from);
    let mut path = format!("{}:{}", bin.display(), examples.display());
    if let Some(python) = &python {
        path.push_str(&format!(":{}", python.parent().unwrap().display()));
    } else {
        eprintln!("py-spiffe step skipped: set WRIT_PYTHON (scripts/test does)");
    }
    path.push_str(&format!(":{}", std::env::var("PATH").unwrap_or_default()));
    let addr = format!("127.0.0.1:{}", free_port());
    let script = script(&blocks, &path, python.as_deref(), &addr);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("quickstart.sh"), &script).unwrap();
    // A hung step must not hang CI: `timeout` ends the script (and its trap the jobs).
    let out = Command::new("timeout")
        .args(["300", "bash", "quickstart.sh"])
        .current_dir(dir.path())
        .env_remove("WRIT_ADMIN_SOCKET")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = ["writ.log", "ops-api.log"]
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}",
                std::fs::read_to_string(dir.path().join(f)).unwrap_or_default()
            )
        })
        .collect::<String>();
    let context = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}\n{logs}");
    assert!(out.status.success(), "the quickstart failed\n{context}");
    if std::env::var_os("WRIT_QUICKSTART_SHOW").is_some() {
        eprintln!("{context}");
    }

    // What each step promises, seen in its output.
    assert!(
        logs.contains("WARNING: --demo-single-user"),
        "the one-user demo says so when it starts\n{context}"
    );
    let investigative = "spiffe://investigate.example.org/agent/sre-agent/incident/INC-1";
    if python.is_some() {
        assert!(
            stdout.lines().any(|l| l == investigative),
            "py-spiffe printed the investigative identity\n{context}"
        );
    }
    assert!(
        stdout.contains(&format!("\"spiffe_id\":\"{investigative}\"")),
        "svid-fetch printed it\n{context}"
    );
    assert!(
        stdout.contains("INC-1: checkout-7d9f 500"),
        "logs were read\n{context}"
    );
    assert!(
        stdout.contains("restarted per approved plan"),
        "the write succeeded\n{context}"
    );
    assert_eq!(
        stdout.matches("(refused, as expected)").count(),
        4,
        "four refusals\n{context}"
    );
    // The ops API's decision log names callers by SPIFFE ID (step 9's grep).
    assert!(
        stdout.lines().any(|l| l.contains("allowed")
            && l.contains(
                "spiffe_id=spiffe://remediate.example.org/agent/sre-agent/incident/INC-1/grant/"
            )),
        "the allowed write is logged with its SPIFFE ID\n{context}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("denied") && l.contains(investigative)),
        "the refused write is logged with its SPIFFE ID\n{context}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("denied at handshake") && l.contains("incident INC-1 is revoked")),
        "the replayed certificate is refused as revoked\n{context}"
    );
    // Step 10: the audit log tells the story and proves itself intact.
    for step in [
        "opened",
        "identity issued",
        "plan proposed",
        "approved",
        "closed",
    ] {
        assert!(
            stdout.contains(step),
            "the timeline shows {step:?}\n{context}"
        );
    }
    assert!(
        stdout.contains("audit log intact"),
        "the audit log verifies\n{context}"
    );
}
