//! The configuration files shipped in deploy/kubernetes/ are ones writ takes: each
//! ConfigMap's TOML parses with writ's own configuration structs (which refuse unknown
//! keys), so a misspelled key fails here rather than in a cluster. scripts/validate-k8s
//! checks the manifests themselves against the Kubernetes schemas.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use writ::config::{RawAgentConfig, RawConfig};

/// The block scalar under `key: |` in a ConfigMap's YAML, dedented. Plain text: the
/// files keep their TOML as one literal block each.
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines();
    let header = format!("{key}: |");
    lines
        .by_ref()
        .find(|l| l.trim_start() == header)
        .unwrap_or_else(|| panic!("no `{header}` block"));
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .collect();
    assert!(!body.is_empty(), "`{header}` is empty");
    body.iter()
        .map(|l| l.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_shipped_server_and_agent_configs_are_ones_writ_takes() {
    let server = block_scalar(&read("server-config.yaml"), "server.toml");
    let server: RawConfig =
        toml::from_str(&server).unwrap_or_else(|e| panic!("server.toml: {e}\n{server}"));
    let agent = block_scalar(&read("agent-config.yaml"), "agent.toml");
    let agent: RawAgentConfig =
        toml::from_str(&agent).unwrap_or_else(|e| panic!("agent.toml: {e}\n{agent}"));
    assert_eq!(
        server.trust_domain, agent.trust_domain,
        "server and agents must share the base trust domain"
    );
    // An agent attesting by PSAT names a cluster the server reviews tokens for.
    if let Some(cluster) = &agent.psat_cluster {
        assert!(
            server.k8s_psat.iter().any(|c| &c.cluster == cluster),
            "the agent's psat_cluster {cluster:?} is not a [[k8s_psat]] cluster of the server"
        );
    }
}

#[test]
fn a_misspelled_key_is_caught() {
    let yaml = "data:\n  agent.toml: |\n    trust_domian = \"example.org\"\n";
    let agent = block_scalar(yaml, "agent.toml");
    assert!(toml::from_str::<RawAgentConfig>(&agent).is_err());
}
