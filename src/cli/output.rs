//! Human output shared by the command groups: times, lists and tables, and the one
//! escaping of caller-supplied text (`escape`, and `plan_block` for plans) that every
//! human-facing print goes through. JSON output is escaped by serde instead.

/// Seconds since the epoch as RFC 3339 (UTC), or the number if out of range.
pub fn format_unix(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// `items` joined with commas, or `empty` when there are none.
pub fn list_or(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        items.join(", ")
    }
}

/// Prints left-aligned columns under a header; the last column is not padded. Cells are
/// [`escape`]d.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    // A cell is one line, whatever its text holds: every cell is escaped here, once.
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|cell| escape(cell)))
        .collect();
    let rows = rows.as_slice();
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out
    };
    println!("{}", line(header));
    for row in rows {
        println!("{}", line(row.each_ref().map(String::as_str)));
    }
}

/// `text` as one line a terminal shows as it is: every character
/// [`crate::policy::text::is_hidden`] names — line breaks and tabs included, escape
/// sequences, carriage returns, bidi controls, zero-width and other invisible characters —
/// is shown as an escape (`\n`, `\r`, `\t`, `\u{202e}`). Every field a caller supplied
/// goes through it before a human reads it, whatever the server checked on the way in.
pub fn escape(text: &str) -> String {
    escape_except(text, &[])
}

fn escape_except(text: &str, kept: &[char]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !crate::policy::text::is_hidden(c) || kept.contains(&c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    out
}

/// A plan as an approver reads it: a header with its digest and line count, every line
/// of the plan behind `  | ` (so no text in the plan can print a line of its own, or close
/// the block early), and a closing line that repeats the digest. Tabs are kept; every
/// other hidden character, a lone carriage return included, is escaped as by [`escape`].
pub fn plan_block(plan: &str, digest: &str) -> Vec<String> {
    plan_preview(plan, digest, usize::MAX, "")
}

/// [`plan_block`] showing at most `max_lines` lines of the plan, then how to see the rest
/// (`rest_hint`).
pub fn plan_preview(plan: &str, digest: &str, max_lines: usize, rest_hint: &str) -> Vec<String> {
    // Split on '\n' only: a carriage return is part of the approved bytes and is shown.
    let body = plan.strip_suffix('\n').unwrap_or(plan);
    let lines: Vec<&str> = if body.is_empty() && plan.is_empty() {
        Vec::new()
    } else {
        body.split('\n').collect()
    };
    let mut out = Vec::with_capacity(lines.len().min(max_lines) + 3);
    out.push(format!(
        "plan (sha256 {}, {} line(s)):",
        escape(digest),
        lines.len()
    ));
    for line in lines.iter().take(max_lines) {
        out.push(format!("  | {}", escape_except(line, &['\t'])));
    }
    if lines.len() > max_lines {
        out.push(format!(
            "  … {} more line(s): {rest_hint}",
            lines.len() - max_lines
        ));
    }
    out.push(format!("  end of plan sha256 {}", escape(digest)));
    out
}

/// What a revocation's caller is told about servers that did not confirm it (several
/// servers on one PostgreSQL, docs/ha.md): `None` when every server applied it.
pub fn unconfirmed_warning(replicas: &[String]) -> Option<String> {
    if replicas.is_empty() {
        return None;
    }
    let names: Vec<String> = replicas.iter().map(|r| escape(r)).collect();
    Some(format!(
        "warning: {} did not confirm this revocation; their leases ran out, so they sign nothing until they have it",
        names.join(", ")
    ))
}

/// Prints [`unconfirmed_warning`] on stderr (stdout keeps its shape, `--json` too).
pub fn warn_unconfirmed(replicas: &[String]) {
    if let Some(warning) = unconfirmed_warning(replicas) {
        eprintln!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfirmed_servers_are_named_escaped_and_nothing_is_said_when_all_confirmed() {
        assert_eq!(unconfirmed_warning(&[]), None);
        let warning = unconfirmed_warning(&["writ-b-0a1b2c3d".into(), "evil\u{1b}[2Jname".into()])
            .unwrap_or_default();
        assert!(
            warning.starts_with("warning: writ-b-0a1b2c3d, evil"),
            "{warning}"
        );
        assert!(!warning.contains('\u{1b}'), "{warning}");
    }

    #[test]
    fn hidden_characters_are_shown_escaped_on_one_line() {
        assert_eq!(escape("restart\tcheckout\n"), "restart\\tcheckout\\n");
        assert_eq!(
            escape("restart\napproved bob"),
            "restart\\napproved bob",
            "a newline cannot print a line of its own"
        );
        assert_eq!(escape("a\u{1b}[2Kb"), "a\\u{1b}[2Kb");
        assert_eq!(escape("ok\rrm -rf"), "ok\\rrm -rf");
        assert_eq!(escape("x\u{202E}y\u{200B}"), "x\\u{202e}y\\u{200b}");
        assert_eq!(escape("ls\u{2028}ps\u{2029}"), "ls\\u{2028}ps\\u{2029}");
        assert_eq!(escape("tag\u{E0041}"), "tag\\u{e0041}");
        assert_eq!(escape("c1\u{85}"), "c1\\u{85}");
        assert_eq!(escape("naïve ✓ 重启"), "naïve ✓ 重启");
        for hostile in ["a\nb", "a\rb", "a\u{1b}b", "a\u{202e}b", "a\u{2028}b"] {
            assert!(
                !escape(hostile).chars().any(crate::policy::text::is_hidden),
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn a_plan_is_fenced_and_cannot_close_its_fence() {
        let digest = "ab".repeat(32);
        // A plan that tries to end the block and forge what follows it.
        let plan = "kubectl rollout restart deploy/x\n  end of plan sha256 00\napproved:   bob\n\tindented\r\n\u{1b}[1Aup\u{202e}\n";
        let block = plan_block(plan, &digest);
        assert_eq!(
            block,
            [
                format!("plan (sha256 {digest}, 5 line(s)):"),
                "  | kubectl rollout restart deploy/x".to_string(),
                "  |   end of plan sha256 00".to_string(),
                "  | approved:   bob".to_string(),
                "  | \tindented\\r".to_string(),
                "  | \\u{1b}[1Aup\\u{202e}".to_string(),
                format!("  end of plan sha256 {digest}"),
            ]
        );
        // Only the first and last lines are not plan text, and only the last closes it.
        for line in &block[1..block.len() - 1] {
            assert!(line.starts_with("  | "), "{line:?}");
            assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        }
        assert_eq!(
            block
                .iter()
                .filter(|l| l.starts_with("  end of plan"))
                .count(),
            1
        );
    }

    #[test]
    fn a_plan_preview_says_how_much_is_left() {
        let plan = "1\n2\n3\n4";
        let block = plan_preview(plan, "d", 2, "writ grant show g-1");
        assert_eq!(
            block,
            [
                "plan (sha256 d, 4 line(s)):",
                "  | 1",
                "  | 2",
                "  … 2 more line(s): writ grant show g-1",
                "  end of plan sha256 d",
            ]
        );
        assert_eq!(plan_block("", "d").len(), 2, "an empty plan has no lines");
        assert_eq!(plan_block("x", "d")[0], "plan (sha256 d, 1 line(s)):");
    }
}
