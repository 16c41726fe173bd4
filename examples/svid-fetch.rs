//! Fetches this process's X.509-SVIDs from the Workload API named by
//! `SPIFFE_ENDPOINT_SOCKET`, with the stock `spiffe` crate client, and prints them as one
//! JSON object. Exit 1 with {"error": ...} when there is no identity.
//!
//! With `--watch`, holds the stream open instead and prints one JSON object per update
//! (each SVID with the SHA-256 of its leaf, so a renewal shows), then `{"error": ...}` and
//! exit 1 when the stream ends; what a long-running workload sees.
//!
//! With `--revocations`, prints instead the first set writ's revocation feed (on the same
//! socket) sends this process: `{"covers": [...], "entries": [[kind, trust domain, id], ...]}`.
//!
//! `cargo run --example svid-fetch` after `writ dev`, a profile and an open incident.

use std::io::Write;
use std::process::ExitCode;
use tokio_stream::StreamExt;

/// DER certificates as one PEM text.
fn pem<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn describe(ctx: &spiffe::X509Context) -> serde_json::Value {
    // Every trust domain whose bundle the workload was given, with its roots (PEM).
    let bundles: serde_json::Map<String, serde_json::Value> = ctx
        .bundle_set()
        .iter()
        .map(|(td, bundle)| {
            let roots = pem(bundle.authorities().iter().map(|c| c.as_ref()));
            (td.to_string(), serde_json::Value::String(roots))
        })
        .collect();
    let svids: Vec<_> = ctx
        .svids()
        .iter()
        .map(|svid| {
            let leaf = ring::digest::digest(&ring::digest::SHA256, svid.leaf().as_ref());
            let leaf: String = leaf.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({
                "spiffe_id": svid.spiffe_id().to_string(),
                "hint": svid.hint(),
                "leaf_sha256": leaf,
                // Leaf plus intermediates (2 when the server signs through one).
                "chain_len": svid.cert_chain().len(),
                "chain_pem": pem(svid.cert_chain().iter().map(|c| c.as_ref())),
            })
        })
        .collect();
    serde_json::json!({ "svids": svids, "bundles": bundles })
}

async fn watch() -> ExitCode {
    let error = async {
        let client = spiffe::WorkloadApiClient::connect_env().await?;
        let mut updates = client.stream_x509_contexts().await?;
        while let Some(update) = updates.next().await {
            let ctx = update?;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", describe(&ctx));
            let _ = out.flush();
        }
        Ok::<_, spiffe::WorkloadApiError>(())
    }
    .await
    .err()
    .map_or("the stream ended".to_owned(), |e| format!("{e:?}"));
    println!("{}", serde_json::json!({ "error": error }));
    ExitCode::FAILURE
}

/// The first revocation set the feed sends this process, as JSON.
async fn revocations() -> ExitCode {
    use writ::proto::revocation::{WatchRequest, entry::Kind, revocation_client::RevocationClient};
    let result = async {
        let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET")?;
        let socket = endpoint.strip_prefix("unix://").unwrap_or(&endpoint);
        let channel = writ::uds::channel(std::path::Path::new(socket)).await?;
        let mut request = tonic::Request::new(WatchRequest {});
        request
            .metadata_mut()
            .insert("workload.spiffe.io", "true".parse()?);
        let mut stream = RevocationClient::new(channel)
            .watch(request)
            .await?
            .into_inner();
        let set = stream.message().await?.ok_or("the feed ended")?;
        let entries: Vec<_> = set
            .entries
            .iter()
            .map(|e| {
                let kind = Kind::try_from(e.kind).map_or("unknown", |k| k.as_str_name());
                serde_json::json!([kind, e.trust_domain, e.id])
            })
            .collect();
        Ok::<_, Box<dyn std::error::Error>>(serde_json::json!({
            "covers": set.covers,
            "entries": entries,
        }))
    }
    .await;
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", serde_json::json!({ "error": e.to_string() }));
            ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--watch") => return watch().await,
        Some("--revocations") => return revocations().await,
        _ => {}
    }
    let result = async {
        let client = spiffe::WorkloadApiClient::connect_env().await?;
        client.fetch_x509_context().await
    }
    .await;
    match result {
        Ok(ctx) => {
            println!("{}", describe(&ctx));
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", serde_json::json!({ "error": format!("{e:?}") }));
            ExitCode::FAILURE
        }
    }
}
