//! The `writ` binary: parse the command line, run it, print any error once.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // `writ … | head` closes stdout early; print macros then panic with EPIPE. Exit
    // quietly as a SIGPIPE'd tool would (128 + 13), rather than dumping a panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    let cli = match writ::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other writ error; `--help` has the rest.
            // The error is clap's first paragraph: a missing-argument error names the
            // arguments on the indented lines after its first, so keep them all.
            let rendered = e.render().to_string();
            let first: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = if first.is_empty() {
                "error: invalid arguments".to_owned()
            } else {
                first.join(" ")
            };
            eprintln!("{first} (see --help)");
            return ExitCode::from(2);
        }
    };
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Errors quote what callers sent (a name, a digest, a server's refusal):
            // escaped, so an error is always the one line it claims to be.
            eprintln!("error: {}", writ::cli::escape(&format!("{error:#}")));
            match error.downcast_ref::<writ::cli::Exit>() {
                Some(exit) => ExitCode::from(exit.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}
