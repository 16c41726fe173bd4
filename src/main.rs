//! The `writ` binary: parse the command line, run it, print any error once.

use clap::Parser;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WRIT_LOG")
                .unwrap_or_else(|_| EnvFilter::new("warn,writ=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = writ::cli::Cli::parse();
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
