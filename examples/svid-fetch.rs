//! Fetches this process's X.509-SVIDs from the Workload API named by
//! `SPIFFE_ENDPOINT_SOCKET`, with the stock `spiffe` crate client, and prints them as one
//! JSON object. Exit 1 with {"error": ...} when there is no identity.
//!
//! With `--watch`, holds the stream open instead and prints one JSON object per update
//! (each SVID with the SHA-256 of its leaf, so a renewal shows), then `{"error": ...}` and
//! exit 1 when the stream ends; what a long-running workload sees.
//!
//! `cargo run --example svid-fetch` after `writ dev`, a profile and an open incident.

use std::io::Write;
use std::process::ExitCode;
use tokio_stream::StreamExt;

fn describe(ctx: &spiffe::X509Context) -> serde_json::Value {
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
            })
        })
        .collect();
    serde_json::json!({ "svids": svids })
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--watch") {
        return watch().await;
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
