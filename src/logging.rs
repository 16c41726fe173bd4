//! The process's logs: their format (text or one JSON object per line) and their levels
//! per module, chosen from the command line, the config file or the default, and the one
//! subscriber that writes them to stderr (docs/configuration.md, "Logs").
//!
//! What a log line may carry is the code's business, not this module's: never a key, a
//! token or a JWT (tests/logs.rs runs a whole scenario at debug and looks for them).

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, the event's fields (its
    /// message among them), the current span's fields and the spans it is in.
    Json,
}

/// The levels when nothing says otherwise: writ's lifecycle, its dependencies' warnings.
pub const DEFAULT_LEVEL: &str = "warn,writ=info";

/// The settings in force.
#[derive(Debug)]
pub struct LogSettings {
    /// The format.
    pub format: LogFormat,
    /// The filter, parsed.
    filter: EnvFilter,
}

/// Why the log settings were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A directive of the level string does not parse.
    #[error(
        "log level {given:?} (from {from}) is not a valid filter, e.g. \"info,writ::agent=debug\": {reason}"
    )]
    Level {
        /// The string given, bounded.
        given: String,
        /// Where it came from.
        from: &'static str,
        /// What the parser said (as text: as a cause, it would repeat itself).
        reason: String,
    },
    /// A subscriber was already installed in this process.
    #[error("the log subscriber is already set")]
    AlreadySet,
}

impl LogSettings {
    /// Chooses: the command line (a flag or its environment variable) beats the config
    /// file, which beats the defaults (text, [`DEFAULT_LEVEL`]). An invalid level is an
    /// error, never ignored.
    pub fn choose(
        flag_format: Option<LogFormat>,
        flag_level: Option<&str>,
        file_format: Option<LogFormat>,
        file_level: Option<&str>,
    ) -> Result<Self, LogError> {
        let format = flag_format.or(file_format).unwrap_or_default();
        let (level, from) = match (flag_level, file_level) {
            (Some(flag), _) => (flag, "--log-level or WRIT_LOG"),
            (None, Some(file)) => (file, "log_level in the config file"),
            (None, None) => (DEFAULT_LEVEL, "the default"),
        };
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| LogError::Level {
                given: level.chars().take(200).collect(),
                from,
                reason: e.to_string(),
            })?;
        Ok(LogSettings { format, filter })
    }

    /// Installs the process's subscriber, writing to stderr.
    pub fn install(self) -> Result<(), LogError> {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(self.filter)
            .with_writer(std::io::stderr);
        let installed = match self.format {
            LogFormat::Text => builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init(),
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .try_init(),
        };
        installed.map_err(|_| LogError::AlreadySet)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_command_line_beats_the_file_which_beats_the_default() {
        let chosen = |ff, fl, cf, cl| {
            let s = LogSettings::choose(ff, fl, cf, cl).unwrap();
            (s.format, s.filter.to_string())
        };
        assert_eq!(
            chosen(None, None, None, None),
            (LogFormat::Text, "writ=info,warn".to_owned())
        );
        let (format, level) = chosen(None, None, Some(LogFormat::Json), Some("debug"));
        assert_eq!((format, level.as_str()), (LogFormat::Json, "debug"));
        let (format, level) = chosen(
            Some(LogFormat::Text),
            Some("info,writ::agent=debug"),
            Some(LogFormat::Json),
            Some("debug"),
        );
        assert_eq!(format, LogFormat::Text);
        assert!(level.contains("writ::agent=debug"), "{level}");
    }

    #[test]
    fn an_invalid_level_is_an_error_naming_where_it_came_from() {
        for (flag, file, from) in [
            (Some("info,writ=loud"), None, "--log-level"),
            (
                None,
                Some("info,writ=noisy"),
                "log_level in the config file",
            ),
        ] {
            let e = LogSettings::choose(None, flag, None, file)
                .unwrap_err()
                .to_string();
            assert!(e.contains(from), "{e}");
            assert!(e.contains("not a valid filter"), "{e}");
        }
    }

    #[test]
    fn formats_are_read_from_toml_in_lowercase() {
        #[derive(Deserialize)]
        struct F {
            f: LogFormat,
        }
        let f: F = toml::from_str("f = \"json\"").unwrap();
        assert_eq!(f.f, LogFormat::Json);
        assert!(toml::from_str::<F>("f = \"xml\"").is_err());
    }
}
