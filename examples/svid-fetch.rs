//! Fetches this process's X.509-SVIDs from the Workload API named by
//! `SPIFFE_ENDPOINT_SOCKET`, with the stock `spiffe` crate client, and prints them as one
//! JSON object. Exit 1 with {"error": ...} when there is no identity.
//!
//! `cargo run --example svid-fetch` after `writ dev`, a profile and an open incident.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let result = async {
        let client = spiffe::WorkloadApiClient::connect_env().await?;
        client.fetch_x509_context().await
    }
    .await;
    match result {
        Ok(ctx) => {
            let svids: Vec<_> = ctx
                .svids()
                .iter()
                .map(|svid| {
                    serde_json::json!({
                        "spiffe_id": svid.spiffe_id().to_string(),
                        "hint": svid.hint(),
                        // Leaf plus intermediates (2 when the server signs through one).
                        "chain_len": svid.cert_chain().len(),
                    })
                })
                .collect();
            println!("{}", serde_json::json!({ "svids": svids }));
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", serde_json::json!({ "error": format!("{e:?}") }));
            ExitCode::FAILURE
        }
    }
}
