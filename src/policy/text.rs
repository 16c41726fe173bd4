//! Free text from callers — incident titles, grant actions, targets, evidence references,
//! reasons, playbook actions and descriptions, activity summaries — and the one rule for
//! it: one line of characters that show as themselves.
//!
//! An approver decides on what a terminal shows them. A newline in an action can print a
//! forged `approved bob` or `scopes:` line under it; a carriage return, an escape sequence
//! or a bidi override can rewrite or reorder what is already on the line. So every input
//! path refuses such text with [`line()`], and every human-facing printer escapes what
//! [`is_hidden`] names anyway (`src/cli/output.rs`), for text stored before this rule or
//! reaching it some other way. Plans are the one multi-line field: they are hashed and
//! approved byte for byte, and printed fenced with their digest instead.

use super::PolicyError;

/// Whether `c` can change what a reader sees instead of showing as itself: every control
/// character (C0 with newline and tab, DEL, C1), every format character (Unicode category
/// Cf: the bidi marks, embeddings, overrides and isolates that reorder text, the
/// zero-width and invisible characters that hide or join it, the soft hyphen, the tag
/// characters that carry invisible ASCII, interlinear annotations), and the Unicode line
/// and paragraph separators, which some terminals break lines on.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

/// Checks one line of free text named `what`: not blank, at most `max_bytes` bytes, and
/// no character [`is_hidden`] (so no newline, tab, escape, carriage return or bidi
/// control). The error names the field and the rule, never echoes the text.
pub fn line(what: &str, text: &str, max_bytes: usize) -> Result<(), PolicyError> {
    let bad = |reason: String| PolicyError::BadText {
        what: what.into(),
        reason,
    };
    if text.trim().is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if text.len() > max_bytes {
        return Err(bad(format!("at most {max_bytes} bytes")));
    }
    if let Some(c) = text.chars().find(|c| is_hidden(*c)) {
        return Err(bad(format!(
            "must be one line of visible text, without control characters or invisible formatting (found U+{:04X})",
            c as u32
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_line_of_visible_text_passes() {
        for ok in [
            "restart checkout",
            "https://logs.example/q?id=1&x=2",
            "naïve ✓ — 重启",
            "deploy/checkout",
        ] {
            assert!(line("action", ok, 1024).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn line_breaks_escapes_and_reordering_are_refused() {
        for bad in [
            "restart\napproved bob",
            "restart\r\nscopes: iam:*",
            "tab\there",
            "ok\rrm -rf /",
            "\u{1b}[2Kclean",
            "x\u{85}y",
            "abc\u{202E}fdp.exe",
            "a\u{2066}b\u{2069}",
            "zero\u{200B}width",
            "line\u{2028}separator",
            "para\u{2029}graph",
            "soft\u{AD}hyphen",
            "bom\u{FEFF}",
            "tag\u{E0041}\u{E0042}",
        ] {
            let err = line("action", bad, 1024).unwrap_err();
            assert!(
                matches!(&err, PolicyError::BadText { what, .. } if what == "action"),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("one line"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn blank_and_oversized_text_is_refused() {
        assert!(line("title", "", 10).is_err());
        assert!(line("title", "   ", 10).is_err());
        assert!(line("title", &"x".repeat(11), 10).is_err());
        assert!(line("title", &"x".repeat(10), 10).is_ok());
    }

    #[test]
    fn the_error_does_not_echo_the_text() {
        let err = line("evidence", "x\napproved bob", 100).unwrap_err();
        assert!(!err.to_string().contains("approved"), "{err}");
        assert!(err.to_string().contains("U+000A"), "{err}");
    }
}
