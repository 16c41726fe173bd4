//! The layers of the crate, checked from its source (docs/architecture.md, "Modules and
//! what each owns"): the agent, which runs on every host, is built against the node API
//! contract and never against the issuer; and no two top-level modules depend on each
//! other, directly or around a loop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Top-level module → the top-level modules its code names as `crate::<module>`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "main" || name == "lib" {
            continue;
        }
        let files = if path.is_dir() {
            rust_files(&path)
        } else {
            vec![path.clone()]
        };
        let mut deps = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (at, _) in text.match_indices("crate::") {
                let dep: String = text[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !dep.is_empty() && dep != name {
                    deps.insert(dep);
                }
            }
        }
        graph.insert(name, deps);
    }
    graph
}

#[test]
fn the_agent_imports_nothing_of_the_server() {
    let graph = graph();
    let agent = &graph["agent"];
    for forbidden in ["server", "store", "config", "cli"] {
        assert!(
            !agent.contains(forbidden),
            "src/agent uses crate::{forbidden}: the agent must depend on node_api, not on the issuer"
        );
    }
    assert!(agent.contains("node_api"));
    for forbidden in ["server", "agent", "store", "cli"] {
        assert!(
            !graph["node_api"].contains(forbidden),
            "the node API contract uses crate::{forbidden}: it belongs to neither side"
        );
    }
}

#[test]
fn no_module_depends_on_itself_around_a_loop() {
    let graph = graph();
    // Depth-first search for a back edge; report the loop it closes.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            panic!("module cycle: {}", cycle.join(" → "));
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_owned());
        for dep in graph.get(node).into_iter().flatten() {
            visit(dep, graph, path, done);
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}
