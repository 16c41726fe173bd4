//! The bodies posted: a Slack incoming-webhook message and writ's generic JSON object
//! (both documented in docs/notifications.md). Pure.
//!
//! Most of a grant is caller text: an agent writes the action, the targets and the
//! evidence. In Slack, `&`, `<` and `>` are control characters (`<url|label>` is a link,
//! `<!here>` a mention), so every caller-supplied text is escaped as Slack's formatting
//! reference says (`&amp;`, `&lt;`, `&gt;`, and nothing else), and can neither link nor
//! mention. Every field is bounded in length and every list in items, in both formats;
//! characters that hide or rewrite text (`policy::text::is_hidden`) are shown as `\u{…}`.
//!
//! Must never: carry the plan itself (approvers read it with `writ grant show`), or any
//! link or token that approves: approving stays an authenticated operator's command,
//! which the body spells out.

use super::Event;
use crate::policy::{DEFAULT_TENANT, Grant, GrantState, Incident};
use serde_json::{Value, json};

/// Longest caller-supplied text field, in characters (longer ones end in `…`).
pub const MAX_FIELD_CHARS: usize = 256;
/// Most items of a list shown (targets, evidence, approvals); the rest are counted.
pub const MAX_ITEMS: usize = 10;
/// Longest text of one Slack block (Slack's limit for a section is 3000).
const MAX_SLACK_SECTION: usize = 2900;
/// Version of the generic JSON body.
pub const JSON_VERSION: u32 = 1;

/// Everything a body says about one event.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// What happened.
    pub event: Event,
    /// The grant, as it is now.
    pub grant: &'a Grant,
    /// Its incident, if the policy still holds it.
    pub incident: Option<&'a Incident>,
    /// Approvals it needs, if known.
    pub approvals_needed: Option<usize>,
    /// When the event was seen, in seconds since the epoch.
    pub at: i64,
}

/// `text` with hidden characters made visible and at most [`MAX_FIELD_CHARS`] characters.
pub fn bounded(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_FIELD_CHARS {
            out.push('…');
            break;
        }
        if crate::policy::text::is_hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Escapes Slack's three control characters, per its formatting reference.
pub fn slack_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Caller text for Slack: bounded, then escaped.
fn caller(text: &str) -> String {
    slack_escape(&bounded(text))
}

/// `word` as one shell word: as it is when it is made of safe characters (writ's ids and
/// names always are), single-quoted otherwise.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/'))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `writ grant VERB ID`, with `--tenant T` outside the default tenant.
fn grant_command(verb: &str, grant: &Grant) -> String {
    let mut command = format!("writ grant {verb} {}", shell_word(&grant.id));
    if grant.tenant != DEFAULT_TENANT {
        command.push_str(" --tenant ");
        command.push_str(&shell_word(&grant.tenant));
    }
    command
}

/// The command an approver types to approve `grant`.
pub fn approve_command(grant: &Grant) -> String {
    grant_command("approve", grant)
}

/// The command that shows `grant`, plan included.
pub fn show_command(grant: &Grant) -> String {
    grant_command("show", grant)
}

/// At most [`MAX_ITEMS`] of `items`, bounded, and how many were left out.
fn bounded_list<'a>(items: impl ExactSizeIterator<Item = &'a String>) -> (Vec<String>, usize) {
    let total = items.len();
    let shown: Vec<String> = items.take(MAX_ITEMS).map(|s| bounded(s)).collect();
    let omitted = total - shown.len();
    (shown, omitted)
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn duration(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

fn state_name(state: GrantState) -> &'static str {
    match state {
        GrantState::Pending => "pending",
        GrantState::Active => "active",
        GrantState::Denied => "denied",
        GrantState::Revoked => "revoked",
        GrantState::Expired => "expired",
    }
}

/// Whether the body should say how to approve: only while the grant waits for approvals.
fn approvable(facts: &Facts<'_>) -> bool {
    facts.grant.state == GrantState::Pending
}

/// The generic JSON body (docs/notifications.md, "The JSON body").
pub fn json(facts: &Facts<'_>) -> Value {
    let grant = facts.grant;
    let (targets, targets_omitted) = bounded_list(grant.targets.iter());
    let (evidence, evidence_omitted) = bounded_list(grant.evidence.iter());
    let approvals: Vec<Value> = grant
        .approvals
        .iter()
        .take(MAX_ITEMS)
        .map(|a| json!({"by": bounded(&a.by), "at": a.at}))
        .collect();
    let incident = match facts.incident {
        Some(i) => json!({
            "id": bounded(&grant.incident),
            "title": bounded(&i.title),
            "severity": i.severity.to_string(),
            "source": i.source.as_ref().map(|s| json!({
                "name": bounded(&s.name),
                "kind": bounded(&s.kind),
                "incident_id": bounded(&s.incident_id),
                "url": s.url.as_deref().map(bounded),
            })),
        }),
        None => json!({
            "id": bounded(&grant.incident),
            "title": null,
            "severity": null,
            "source": null,
        }),
    };
    json!({
        "version": JSON_VERSION,
        "event": facts.event.name(),
        "at": facts.at,
        "tenant": bounded(&grant.tenant),
        "grant": {
            "id": bounded(&grant.id),
            "state": state_name(grant.state),
            "agent": bounded(&grant.agent),
            "action": bounded(&grant.action),
            "targets": targets,
            "targets_omitted": targets_omitted,
            "evidence": evidence,
            "evidence_omitted": evidence_omitted,
            "plan_digest": bounded(&grant.plan_digest),
            "scopes": grant.scopes.iter().take(MAX_ITEMS).map(|s| bounded(s)).collect::<Vec<_>>(),
            "requested_by": bounded(&grant.requested_by),
            "requested_at": grant.requested_at,
            "approvals": approvals,
            "approvals_needed": facts.approvals_needed,
            "window_secs": grant.window_secs,
            "activated_at": grant.activated_at,
            "expires_at": grant.expires_at,
            "ended": grant.ended.as_ref().map(|e| json!({
                "by": bounded(&e.by),
                "at": e.at,
                "reason": bounded(&e.reason),
            })),
            "playbook": grant.playbook.as_deref().map(bounded),
        },
        "incident": incident,
        "approve_command": approvable(facts).then(|| approve_command(grant)),
        "show_command": show_command(grant),
    })
}

/// One line of "what happened", in Slack mrkdwn.
fn headline(facts: &Facts<'_>) -> String {
    let grant = facts.grant;
    format!(
        "writ: grant {} {}: {} on {} ({})",
        caller(&grant.id),
        facts.event.name(),
        caller(&grant.agent),
        caller(&grant.incident),
        caller(&grant.action),
    )
}

/// `items` as a comma-separated list in at most `budget` characters, with how many more
/// there were. Items are whole: none is cut.
fn slack_list(items: &[String], omitted: usize, budget: usize) -> String {
    let mut out = String::new();
    let mut left_out = omitted;
    for (i, item) in items.iter().enumerate() {
        let escaped = slack_escape(item);
        if out.chars().count() + escaped.chars().count() + 2 > budget {
            left_out += items.len() - i;
            break;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&escaped);
    }
    if out.is_empty() && left_out == 0 {
        return "none".to_owned();
    }
    if left_out > 0 {
        out.push_str(&format!(" … and {left_out} more"));
    }
    out
}

/// A section of mrkdwn `text`, cut to [`MAX_SLACK_SECTION`] characters if need be (at a
/// character, and never inside an entity such as `&amp;`).
fn mrkdwn(text: String) -> Value {
    let text = match text.char_indices().nth(MAX_SLACK_SECTION) {
        None => text,
        Some((end, _)) => {
            let mut cut = text[..end].to_owned();
            if let Some(amp) = cut.rfind('&')
                && !cut[amp..].contains(';')
            {
                cut.truncate(amp);
            }
            cut.push('…');
            cut
        }
    };
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})
}

/// The Slack incoming-webhook body: `text` (the notification line) and `blocks`.
pub fn slack(facts: &Facts<'_>) -> Value {
    let grant = facts.grant;
    let incident = match facts.incident {
        Some(i) => format!(
            "{} ({}) {}",
            caller(&grant.incident),
            i.severity,
            caller(&i.title)
        ),
        None => caller(&grant.incident),
    };
    // Two sections, so the longest fields (title, action, reason) fit Slack's limit.
    let head = format!(
        "*writ: grant {} {}*\n*Incident:* {incident}\n*Action:* {}",
        caller(&grant.id),
        facts.event.name(),
        caller(&grant.action)
    );
    let mut lines = Vec::new();
    if let Some(source) = facts.incident.and_then(|i| i.source.as_ref()) {
        let mut from = format!(
            "*Source:* {} {} ({})",
            caller(&source.kind),
            caller(&source.incident_id),
            caller(&source.name)
        );
        if let Some(url) = &source.url {
            from.push(' ');
            from.push_str(&caller(url));
        }
        lines.push(from);
    }
    lines.push(format!("*Agent:* {}", caller(&grant.agent)));
    lines.push(format!("*Plan digest:* `{}`", caller(&grant.plan_digest)));
    lines.push(format!("*Requested by:* {}", caller(&grant.requested_by)));
    let (approvers, approvers_omitted) = bounded_list(grant.approvals.iter().map(|a| &a.by));
    let so_far = match facts.approvals_needed {
        Some(needed) => format!("{} of {needed}", grant.approvals.len()),
        None => grant.approvals.len().to_string(),
    };
    lines.push(format!(
        "*Approvals:* {so_far}{}",
        if approvers.is_empty() {
            String::new()
        } else {
            format!(" ({})", slack_list(&approvers, approvers_omitted, 400))
        }
    ));
    let mut window = format!("*Window:* {}", duration(grant.window_secs));
    if let Some(end) = grant.expires_at {
        window.push_str(&format!(", ends {}", rfc3339(end)));
        if facts.event == Event::Expiring {
            window.push_str(&format!(
                " (in {})",
                duration((end - facts.at).max(0) as u64)
            ));
        }
    }
    lines.push(window);
    if let Some(ending) = &grant.ended {
        lines.push(format!(
            "*{} by:* {}: {}",
            if grant.state == GrantState::Denied {
                "Denied"
            } else {
                "Ended"
            },
            caller(&ending.by),
            caller(&ending.reason)
        ));
    }
    if let Some(playbook) = &grant.playbook {
        lines.push(format!("*Playbook:* {}", caller(playbook)));
    }
    lines.push(format!("*Tenant:* {}", caller(&grant.tenant)));
    let (targets, targets_omitted) = bounded_list(grant.targets.iter());
    let (evidence, evidence_omitted) = bounded_list(grant.evidence.iter());
    let mut blocks = vec![
        mrkdwn(head),
        mrkdwn(lines.join("\n")),
        mrkdwn(format!(
            "*Targets:* {}",
            slack_list(&targets, targets_omitted, MAX_SLACK_SECTION)
        )),
        mrkdwn(format!(
            "*Evidence:* {}",
            slack_list(&evidence, evidence_omitted, MAX_SLACK_SECTION)
        )),
    ];
    let next = if approvable(facts) {
        format!(
            "Read the plan with `{}`, then approve as an operator:\n```{}```",
            slack_escape(&show_command(grant)),
            slack_escape(&approve_command(grant))
        )
    } else {
        format!("Details: `{}`", slack_escape(&show_command(grant)))
    };
    blocks.push(mrkdwn(next));
    json!({"text": headline(facts), "blocks": blocks})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::policy::grant::{Approval, Ending};
    use crate::policy::{IncidentState, Severity};
    use std::collections::BTreeSet;

    fn grant() -> Grant {
        Grant {
            tenant: "default".into(),
            id: "g-0123456789ab".into(),
            incident: "INC-7".into(),
            agent: "fixer".into(),
            action: "restart checkout".into(),
            targets: BTreeSet::from(["deploy/checkout".to_owned()]),
            evidence: vec![
                "https://logs.example/q?a=1&b=2".into(),
                "TICKET-4711".into(),
            ],
            plan: "SECRET-PLAN-TEXT\n".into(),
            plan_digest: "ab".repeat(32),
            scopes: BTreeSet::from(["deploy:restart".to_owned()]),
            window_secs: 600,
            requested_by: "uid:0".into(),
            requested_by_uid: Some(0),
            requested_at: 1_000,
            approvals: vec![],
            state: GrantState::Pending,
            activated_at: None,
            expires_at: None,
            ended: None,
            playbook: None,
        }
    }

    fn incident() -> Incident {
        Incident {
            tenant: "default".into(),
            id: "INC-7".into(),
            title: "checkout 500s".into(),
            severity: Severity::Sev3,
            assigned: BTreeSet::new(),
            scopes: BTreeSet::new(),
            state: IncidentState::Open,
            opened_by: "carol".into(),
            opened_at: 900,
            closed_by: None,
            closed_at: None,
            max_lifetime_secs: 3600,
            source: None,
        }
    }

    fn facts<'a>(event: Event, grant: &'a Grant, incident: &'a Incident) -> Facts<'a> {
        Facts {
            event,
            grant,
            incident: Some(incident),
            approvals_needed: Some(1),
            at: 1_050,
        }
    }

    /// Every mrkdwn text of a Slack body, `text` first.
    fn slack_texts(body: &Value) -> Vec<String> {
        let mut out = vec![body["text"].as_str().unwrap().to_owned()];
        for block in body["blocks"].as_array().unwrap() {
            assert_eq!(block["type"], "section");
            assert_eq!(block["text"]["type"], "mrkdwn");
            out.push(block["text"]["text"].as_str().unwrap().to_owned());
        }
        out
    }

    #[test]
    fn a_requested_grant_says_everything_an_approver_needs_and_how_to_approve() {
        let (g, i) = (grant(), incident());
        let body = json(&facts(Event::Requested, &g, &i));
        assert_eq!(body["version"], 1);
        assert_eq!(body["event"], "requested");
        assert_eq!(body["at"], 1_050);
        assert_eq!(body["tenant"], "default");
        assert_eq!(body["grant"]["id"], "g-0123456789ab");
        assert_eq!(body["grant"]["state"], "pending");
        assert_eq!(body["grant"]["agent"], "fixer");
        assert_eq!(body["grant"]["action"], "restart checkout");
        assert_eq!(body["grant"]["targets"], json!(["deploy/checkout"]));
        assert_eq!(body["grant"]["targets_omitted"], 0);
        assert_eq!(
            body["grant"]["evidence"],
            json!(["https://logs.example/q?a=1&b=2", "TICKET-4711"])
        );
        assert_eq!(body["grant"]["plan_digest"], "ab".repeat(32));
        assert_eq!(body["grant"]["requested_by"], "uid:0");
        assert_eq!(body["grant"]["approvals"], json!([]));
        assert_eq!(body["grant"]["approvals_needed"], 1);
        assert_eq!(body["grant"]["window_secs"], 600);
        assert_eq!(body["incident"]["id"], "INC-7");
        assert_eq!(body["incident"]["title"], "checkout 500s");
        assert_eq!(body["incident"]["severity"], "sev3");
        assert!(body["incident"]["source"].is_null(), "opened by hand");
        assert_eq!(body["approve_command"], "writ grant approve g-0123456789ab");
        assert_eq!(body["show_command"], "writ grant show g-0123456789ab");

        let slack = slack(&facts(Event::Requested, &g, &i));
        let all = slack_texts(&slack).join("\n");
        for shown in [
            "grant g-0123456789ab requested",
            "INC-7 (sev3) checkout 500s",
            "*Agent:* fixer",
            "restart checkout",
            &"ab".repeat(32),
            "uid:0",
            "0 of 1",
            "10m",
            "deploy/checkout",
            "https://logs.example/q?a=1&amp;b=2",
            "TICKET-4711",
            "```writ grant approve g-0123456789ab```",
            "`writ grant show g-0123456789ab`",
        ] {
            assert!(all.contains(shown), "{shown:?} missing: {all}");
        }
        let serialized = format!("{body}{slack}");
        assert!(
            !serialized.contains("SECRET-PLAN-TEXT"),
            "the plan is never sent"
        );
    }

    #[test]
    fn an_incident_from_a_source_names_it_escaped() {
        let g = grant();
        let i = Incident {
            source: Some(crate::policy::IncidentSource {
                name: "pd-prod".into(),
                kind: "pagerduty".into(),
                incident_id: "Q1W2E3".into(),
                url: Some("https://acme.pagerduty.example/incidents/Q1W2E3?a=<b>&c".into()),
            }),
            ..incident()
        };
        let body = json(&facts(Event::Requested, &g, &i));
        assert_eq!(
            body["incident"]["source"],
            json!({
                "name": "pd-prod",
                "kind": "pagerduty",
                "incident_id": "Q1W2E3",
                "url": "https://acme.pagerduty.example/incidents/Q1W2E3?a=<b>&c",
            })
        );
        let all = slack_texts(&slack(&facts(Event::Requested, &g, &i))).join("\n");
        assert!(
            all.contains("*Source:* pagerduty Q1W2E3 (pd-prod) https://acme.pagerduty.example/incidents/Q1W2E3?a=&lt;b&gt;&amp;c"),
            "{all}"
        );
    }

    #[test]
    fn outside_the_default_tenant_the_command_names_the_tenant() {
        let mut g = grant();
        g.tenant = "acme".into();
        assert_eq!(
            approve_command(&g),
            "writ grant approve g-0123456789ab --tenant acme"
        );
        let i = incident();
        let body = json(&facts(Event::Requested, &g, &i));
        assert_eq!(
            body["approve_command"],
            "writ grant approve g-0123456789ab --tenant acme"
        );
        let all = slack_texts(&slack(&facts(Event::Requested, &g, &i))).join("\n");
        assert!(
            all.contains("```writ grant approve g-0123456789ab --tenant acme```"),
            "{all}"
        );
        // Never a second shell word from a stored value, however it got there.
        g.tenant = "a b;rm -rf /".into();
        g.id = "g-1'x".into();
        assert_eq!(
            approve_command(&g),
            r"writ grant approve 'g-1'\''x' --tenant 'a b;rm -rf /'"
        );
    }

    #[test]
    fn approved_denied_and_expiring_bodies_carry_no_approve_command() {
        let i = incident();
        let mut approved = grant();
        approved.state = GrantState::Active;
        approved.approvals = vec![Approval {
            by: "alice".into(),
            at: 1_040,
            plan_digest: "ab".repeat(32),
        }];
        approved.activated_at = Some(1_040);
        approved.expires_at = Some(1_640);
        let body = json(&facts(Event::Approved, &approved, &i));
        assert_eq!(body["event"], "approved");
        assert!(body["approve_command"].is_null());
        assert_eq!(
            body["grant"]["approvals"],
            json!([{"by": "alice", "at": 1_040}])
        );
        assert_eq!(body["grant"]["expires_at"], 1_640);
        let all = slack_texts(&slack(&facts(Event::Approved, &approved, &i))).join("\n");
        assert!(all.contains("1 of 1 (alice)"), "{all}");
        assert!(!all.contains("grant approve"), "{all}");

        let expiring = Facts {
            at: 1_520,
            ..facts(Event::Expiring, &approved, &i)
        };
        let all = slack_texts(&slack(&expiring)).join("\n");
        assert!(all.contains("expiring") && all.contains("(in 2m)"), "{all}");
        assert_eq!(json(&expiring)["event"], "expiring");

        let mut denied = grant();
        denied.state = GrantState::Denied;
        denied.ended = Some(Ending {
            at: 1_060,
            by: "alice".into(),
            reason: "restart will not fix a <full> disk".into(),
        });
        let body = json(&facts(Event::Denied, &denied, &i));
        assert_eq!(body["grant"]["state"], "denied");
        assert_eq!(
            body["grant"]["ended"],
            json!({"by": "alice", "at": 1_060, "reason": "restart will not fix a <full> disk"})
        );
        assert!(body["approve_command"].is_null());
        let all = slack_texts(&slack(&facts(Event::Denied, &denied, &i))).join("\n");
        assert!(
            all.contains("*Denied by:* alice: restart will not fix a &lt;full&gt; disk"),
            "{all}"
        );
    }

    #[test]
    fn caller_text_cannot_link_mention_or_forge_lines_in_slack() {
        let mut g = grant();
        g.action = "fix <https://evil.example|the dashboard> & <!channel> <@U123>".into();
        g.targets = BTreeSet::from(["<!here>".to_owned()]);
        g.evidence = vec!["<http://phish.example>".into()];
        g.agent = "fixer\n*Approvals:* 2 of 1".into();
        let mut i = incident();
        i.title = "db > 9000 & <#C1>".into();
        let body = slack(&facts(Event::Requested, &g, &i));
        for text in slack_texts(&body) {
            // The only `<` or `>` would be our own markup, and the body has none.
            assert!(!text.contains('<') && !text.contains('>'), "{text}");
            assert!(
                !text
                    .replace("&amp;", "")
                    .replace("&lt;", "")
                    .replace("&gt;", "")
                    .contains('&'),
                "{text}"
            );
        }
        let all = slack_texts(&body).join("\n");
        assert!(
            all.contains("fix &lt;https://evil.example|the dashboard&gt; &amp; &lt;!channel&gt; &lt;@U123&gt;"),
            "{all}"
        );
        assert!(all.contains("&lt;!here&gt;") && all.contains("&lt;http://phish.example&gt;"));
        assert!(all.contains("db &gt; 9000 &amp; &lt;#C1&gt;"), "{all}");
        assert!(all.contains("fixer\\u{a}*Approvals:* 2 of 1"), "{all}");
        assert_eq!(all.matches("\n*Approvals:*").count(), 1, "{all}");
        // The JSON body keeps the text as written (it is JSON-escaped by serde).
        assert_eq!(
            json(&facts(Event::Requested, &g, &i))["grant"]["action"],
            g.action.as_str()
        );
    }

    #[test]
    fn every_field_and_list_is_bounded() {
        let mut g = grant();
        g.action = "&".repeat(10_000);
        g.targets = (0..500)
            .map(|n| format!("deploy/{n:03}-{}", "x".repeat(1_000)))
            .collect();
        g.evidence = (0..500)
            .map(|n| format!("https://e.example/{n}/{}", "<".repeat(1_000)))
            .collect();
        g.approvals = (0..50)
            .map(|n| Approval {
                by: format!("op{n}"),
                at: 1_000,
                plan_digest: "ab".repeat(32),
            })
            .collect();
        let i = Incident {
            title: "t".repeat(100_000),
            ..incident()
        };
        let body = json(&facts(Event::Requested, &g, &i));
        assert_eq!(
            body["grant"]["action"].as_str().unwrap().chars().count(),
            MAX_FIELD_CHARS + 1
        );
        assert!(body["grant"]["action"].as_str().unwrap().ends_with('…'));
        assert_eq!(
            body["grant"]["targets"].as_array().unwrap().len(),
            MAX_ITEMS
        );
        assert_eq!(body["grant"]["targets_omitted"], 490);
        assert_eq!(
            body["grant"]["evidence"].as_array().unwrap().len(),
            MAX_ITEMS
        );
        assert_eq!(body["grant"]["evidence_omitted"], 490);
        assert_eq!(
            body["grant"]["approvals"].as_array().unwrap().len(),
            MAX_ITEMS
        );
        assert_eq!(
            body["incident"]["title"].as_str().unwrap().chars().count(),
            MAX_FIELD_CHARS + 1
        );
        assert!(body.to_string().len() < 64 * 1024);

        let slack = slack(&facts(Event::Requested, &g, &i));
        for text in slack_texts(&slack) {
            assert!(
                text.chars().count() <= 3000,
                "{} chars",
                text.chars().count()
            );
        }
        let all = slack_texts(&slack).join("\n");
        assert!(all.contains("more"), "{all}");
        assert!(slack.to_string().len() < 64 * 1024);
        // The safety net: a section is cut, never inside an entity.
        let cut = mrkdwn(format!("x{}", "&amp;".repeat(1_000)));
        let cut = cut["text"]["text"].as_str().unwrap();
        assert!(cut.chars().count() <= MAX_SLACK_SECTION + 1);
        assert!(cut.ends_with("&amp;…"), "{}", &cut[cut.len() - 20..]);
        // Cut at characters, not bytes: no panic on multi-byte text.
        assert_eq!(
            bounded(&"é".repeat(1_000)).chars().count(),
            MAX_FIELD_CHARS + 1
        );
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn hidden_characters_are_shown_not_obeyed() {
        assert_eq!(bounded("a\u{202e}b\tc"), "a\\u{202e}b\\u{9}c");
        assert_eq!(slack_escape("a&b<c>d\"'"), "a&amp;b&lt;c&gt;d\"'");
    }
}
