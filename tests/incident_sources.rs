//! Incident sources end to end (docs/incident-sources.md): deliveries in the documented
//! shapes of PagerDuty Webhooks v3, incident.io and writ's generic webhook, built here and
//! signed with test secrets, posted by curl to a real `writ dev` over HTTPS (and plain
//! HTTP on loopback). A trigger gives the assigned agent its identity; a resolve takes it
//! away before curl has its answer; every bad delivery is refused, recorded, and changes
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::bin::{DevProcess, json_lines};
use common::procs::{Watch, fetch, ids};
use common::{free_port, quoted, system_now, temp_dir};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The uid the triage agent's workload runs as.
const WORKLOAD: u32 = 2101;
const PD_SECRET: &str = "pd-test-secret-current";
const PD_OLD_SECRET: &str = "pd-test-secret-rotating-out";
/// A Standard Webhooks key: `whsec_` and the base64 of the HMAC key.
const IO_KEY: &[u8] = b"incident-io-test-hmac-key-32byte";
const GENERIC_KEY: &[u8] = b"generic-test-hmac-key-0123456789";

fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", BASE64.encode(key))
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, message).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PagerDuty's header: `v1=<hex HMAC>` for each secret.
fn pagerduty_signature(secrets: &[&str], body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| format!("v1={}", hex(&hmac(s.as_bytes(), body))))
        .collect::<Vec<_>>()
        .join(",")
}

/// Standard Webhooks headers for `body`, sent as delivery `id` at `timestamp`.
fn standard_headers(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    vec![
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        (
            "webhook-signature".into(),
            format!("v1,{}", BASE64.encode(hmac(key, &signed))),
        ),
    ]
}

/// A PagerDuty v3 delivery of `event_type` for incident `incident` of `service`.
fn pagerduty(event_id: &str, event_type: &str, incident: &str, service: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"event": {
        "id": event_id,
        "event_type": event_type,
        "resource_type": "incident",
        "occurred_at": "2026-12-06T10:00:00.000Z",
        "agent": null,
        "client": null,
        "data": {
            "id": incident,
            "type": "incident",
            "self": format!("https://api.pagerduty.com/incidents/{incident}"),
            "html_url": format!("https://acme.pagerduty.com/incidents/{incident}"),
            "number": 42,
            "status": "triggered",
            "incident_key": "checkout-502",
            "created_at": "2026-12-06T10:00:00Z",
            "title": "Checkout is returning 502s",
            "urgency": "high",
            "priority": {"id": "PPRI1", "type": "priority_reference", "summary": "P1"},
            "service": {"id": service, "type": "service_reference", "summary": "checkout"},
            "assignees": [],
            "escalation_policy": {"id": "PESC1", "type": "escalation_policy_reference"},
            "teams": [],
            "conference_bridge": null,
            "resolve_reason": null
        }
    }}))
    .unwrap()
}

/// An incident.io incident in status category `category`.
fn io_incident(id: &str, category: &str) -> Value {
    json!({
        "id": id,
        "reference": "INC-88",
        "name": "Payments API latency",
        "permalink": format!("https://app.incident.io/acme/incidents/{id}"),
        "mode": "standard",
        "visibility": "public",
        "severity": {"id": "01SEV", "name": "Major", "rank": 2},
        "incident_status": {"id": "01ST", "name": "Investigating", "category": category},
        "incident_type": {"id": "01TY", "name": "Production outage"}
    })
}

fn io_created(id: &str) -> Vec<u8> {
    let t = "public_incident.incident_created_v2";
    serde_json::to_vec(&json!({"event_type": t, t: io_incident(id, "live")})).unwrap()
}

fn io_closed(id: &str) -> Vec<u8> {
    let t = "public_incident.incident_status_updated_v2";
    serde_json::to_vec(&json!({"event_type": t, t: {
        "incident": io_incident(id, "closed"),
        "message": "Rolled back the deploy",
        "previous_status": {"id": "01ST", "name": "Fixing", "category": "live"},
        "new_status": {"id": "01ST2", "name": "Closed", "category": "closed"}
    }}))
    .unwrap()
}

/// A running `writ dev` with incident sources, and how to post to it.
struct Sources {
    dev: DevProcess,
    base: String,
    /// `--cacert` for curl, when the listener is HTTPS.
    ca: Option<PathBuf>,
    dir: PathBuf,
}

/// An answer: status code and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn decision(&self) -> String {
        assert_eq!(self.status, 200, "{self:?}");
        self.json()["decision"].as_str().unwrap().to_owned()
    }
}

impl Sources {
    /// `writ dev` with a PagerDuty, an incident.io and a generic source; over HTTPS (a
    /// test CA's certificate for 127.0.0.1) when `tls`.
    fn start(dir: &Path, tls: bool) -> Sources {
        let port = free_port();
        let pd = secret_file(dir, "pd.secret", &format!("{PD_SECRET}\n"));
        let pd_old = secret_file(dir, "pd-old.secret", PD_OLD_SECRET);
        let io = secret_file(dir, "io.secret", &whsec(IO_KEY));
        let generic = secret_file(dir, "generic.secret", &whsec(GENERIC_KEY));
        let (tls_lines, ca) = if tls {
            let (cert, key, ca) = server_certificate(dir);
            (
                format!(
                    "webhook_tls_cert = {}\nwebhook_tls_key = {}\n",
                    quoted(&cert),
                    quoted(&key)
                ),
                Some(ca),
            )
        } else {
            (String::new(), None)
        };
        let config = format!(
            r#"webhook_listen = "127.0.0.1:{port}"
{tls_lines}
[[incident_source]]
name = "pd"
kind = "pagerduty"
path = "/webhooks/pagerduty"
secret_file = {pd}
previous_secret_file = {pd_old}

[[incident_source.route]]
service = "PSVC77"
assign = ["triage"]
scopes = ["logs:read"]
severity = {{ P1 = "sev1", P2 = "sev2" }}

[[incident_source]]
name = "io"
kind = "incident-io"
path = "/webhooks/incident-io"
secret_file = {io}
assign = ["triage"]
severity = {{ Major = "sev2" }}

[[incident_source]]
name = "gen"
kind = "generic"
path = "/webhooks/generic"
secret_file = {generic}
assign = ["triage"]
"#,
            pd = quoted(&pd),
            pd_old = quoted(&pd_old),
            io = quoted(&io),
            generic = quoted(&generic),
        );
        let config_path = dir.join("writ.toml");
        std::fs::write(&config_path, config).unwrap();
        let dev = DevProcess::start(
            &dir.join("data"),
            &["--config", config_path.to_str().unwrap()],
        );
        let scheme = if tls { "https" } else { "http" };
        let sources = Sources {
            dev,
            base: format!("{scheme}://127.0.0.1:{port}"),
            ca,
            dir: dir.to_path_buf(),
        };
        sources.wait_listening();
        sources
    }

    /// The listener is bound before the admin socket answers; this only guards a slow
    /// start.
    fn wait_listening(&self) {
        common::procs::wait_until(
            || format!("the webhook listener at {}: {}", self.base, self.dev.log()),
            || self.post_raw("/nowhere", "POST", &[], b"{}").status == 404,
        );
    }

    fn post_raw(
        &self,
        path: &str,
        method: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Answer {
        let body_file = self.dir.join("body.json");
        let out_file = self.dir.join("answer.json");
        std::fs::write(&body_file, body).unwrap();
        let _ = std::fs::remove_file(&out_file);
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "30", "-o"])
            .arg(&out_file)
            .args(["-w", "%{http_code}", "-X", method])
            .args(["-H", "content-type: application/json"]);
        for (name, value) in headers {
            curl.arg("-H").arg(format!("{name}: {value}"));
        }
        if let Some(ca) = &self.ca {
            curl.arg("--cacert").arg(ca);
        }
        let out = curl
            .arg("--data-binary")
            .arg(format!("@{}", body_file.display()))
            .arg(format!("{}{path}", self.base))
            .output()
            .expect("run curl");
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        Answer {
            status,
            body: std::fs::read_to_string(&out_file).unwrap_or_default(),
        }
    }

    fn pagerduty(&self, secrets: &[&str], body: &[u8]) -> Answer {
        let signature = pagerduty_signature(secrets, body);
        self.post_raw(
            "/webhooks/pagerduty",
            "POST",
            &[("x-pagerduty-signature".into(), signature)],
            body,
        )
    }

    fn standard(&self, path: &str, key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Answer {
        self.post_raw(
            path,
            "POST",
            &standard_headers(key, id, timestamp, body),
            body,
        )
    }

    fn incident_io(&self, id: &str, body: &[u8]) -> Answer {
        self.standard("/webhooks/incident-io", IO_KEY, id, system_now(), body)
    }

    fn generic(&self, id: &str, body: Value) -> Answer {
        let body = serde_json::to_vec(&body).unwrap();
        self.standard("/webhooks/generic", GENERIC_KEY, id, system_now(), &body)
    }

    fn incidents(&self) -> Vec<Value> {
        json_lines(&self.dev.ok(&["incident", "list", "--json"]))
    }

    fn incident_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .incidents()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    fn state(&self, id: &str) -> String {
        self.dev.json(&["incident", "show", id])["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The audit records of `action`.
    fn audited(&self, action: &str) -> Vec<Value> {
        json_lines(&self.dev.ok(&["audit", "tail", "-n", "10000", "--json"]))
            .into_iter()
            .filter(|r| r["action"] == action)
            .collect()
    }
}

/// A test CA and its certificate for 127.0.0.1: (cert file, key file, CA file).
fn server_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = common::https::TestCa::new("webhook test CA");
    let leaf = ca.leaf("writ webhooks", &["127.0.0.1"]);
    let cert_path = dir.join("webhook.pem");
    let key_path = secret_file(dir, "webhook.key", &leaf.key_pem);
    std::fs::write(&cert_path, leaf.cert_pem).unwrap();
    (cert_path, key_path, ca.write(&dir.join("webhook-ca.pem")))
}

const PD_INCIDENT: &str = "Q2INC9";
const PD_ID: &str = "pd-Q2INC9";

fn identity(incident: &str) -> String {
    format!("spiffe://investigate.example.org/agent/triage/incident/{incident}")
}

/// The issue's "done when": a PagerDuty-shaped and an incident.io-shaped resolve close
/// a writ incident and revoke its identities end to end, over HTTPS.
#[test]
fn pagerduty_and_incident_io_open_and_close_identities_end_to_end() {
    if !common::require_root() {
        return;
    }
    let dir = temp_dir();
    let s = Sources::start(dir.path(), true);
    s.dev.ok(&[
        "profile",
        "create",
        "triage",
        "--selector",
        &format!("unix:uid:{WORKLOAD}"),
        "--band",
        "investigative",
        "--scope",
        "logs:read",
    ]);
    let workload = s.dev.data_dir.join("workload.sock");

    // PagerDuty: a trigger opens pd-Q2INC9, and the agent's stream gets it. (A stock
    // client's stream ends at its first "no identity", so the watch starts after.)
    let trigger = pagerduty("01TRIGGER", "incident.triggered", PD_INCIDENT, "PSVC77");
    let answer = s.pagerduty(&[PD_SECRET], &trigger);
    assert_eq!(answer.decision(), format!("opened {PD_ID}"));
    assert_eq!(answer.json()["incident"], PD_ID);
    let watch = Watch::start(WORKLOAD, &workload, &dir.path().join("watch.log"));
    watch.wait_for("the PagerDuty incident's identity", |u| {
        ids(u).is_some_and(|i| i.contains(&identity(PD_ID)))
    });
    let shown = s.dev.json(&["incident", "show", PD_ID]);
    assert_eq!(shown["severity"], "sev1", "P1 maps to sev1: {shown}");
    assert_eq!(shown["scopes"], json!(["logs:read"]));
    assert_eq!(shown["opened_by"], "source:pd");
    assert_eq!(shown["title"], "Checkout is returning 502s");
    assert_eq!(
        shown["source"],
        json!({"name": "pd", "kind": "pagerduty", "incident_id": PD_INCIDENT,
               "url": format!("https://acme.pagerduty.com/incidents/{PD_INCIDENT}")})
    );
    let human = s.dev.ok(&["incident", "show", PD_ID]);
    assert!(
        human.contains("source:        pd (pagerduty) incident Q2INC9 https://acme.pagerduty.com/incidents/Q2INC9"),
        "{human}"
    );

    // PagerDuty retries a delivery it did not see answered: the same event is a no-op.
    let again = s.pagerduty(&[PD_SECRET], &trigger);
    assert_eq!(again.decision(), "delivery already handled");

    // The resolve, signed during a secret rotation with the secret being rotated out:
    // by the time curl has its answer, a fresh fetch holds no identity for the incident.
    let resolve = pagerduty("01RESOLVE", "incident.resolved", PD_INCIDENT, "PSVC77");
    let answer = s.pagerduty(&[PD_OLD_SECRET], &resolve);
    assert_eq!(answer.decision(), format!("closed {PD_ID}"));
    let after = fetch(WORKLOAD, &workload);
    assert!(
        !ids(&after).unwrap_or_default().contains(&identity(PD_ID)),
        "an identity outlived the resolve: {after}"
    );
    assert_eq!(s.state(PD_ID), "closed");
    watch.wait_for("the close to reach the open stream", |u| {
        ids(u).is_none_or(|i| i.is_empty())
    });

    // incident.io: created (live) opens, status closed closes.
    let io_id = "01HZX4K9M2";
    let answer = s.incident_io("msg_open_1", &io_created(io_id));
    assert_eq!(answer.decision(), format!("opened io-{io_id}"));
    let watch = Watch::start(WORKLOAD, &workload, &dir.path().join("watch-io.log"));
    watch.wait_for("the incident.io incident's identity", |u| {
        ids(u).is_some_and(|i| i.contains(&identity(&format!("io-{io_id}"))))
    });
    assert_eq!(
        s.dev.json(&["incident", "show", &format!("io-{io_id}")])["severity"],
        "sev2"
    );
    let answer = s.incident_io("msg_close_1", &io_closed(io_id));
    assert_eq!(answer.decision(), format!("closed io-{io_id}"));
    let after = fetch(WORKLOAD, &workload);
    assert!(
        ids(&after).unwrap_or_default().is_empty(),
        "an identity outlived the incident.io close: {after}"
    );

    // The decision chain reads as any incident's, with the source's id and link.
    let timeline = json_lines(&s.dev.ok(&["incident", "timeline", PD_ID, "--json"]));
    let actions: Vec<&str> = timeline
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(actions.starts_with(&["incident.open"]), "{actions:?}");
    assert!(actions.contains(&"source.duplicate"), "{actions:?}");
    assert!(actions.contains(&"incident.close"), "{actions:?}");
    for record in timeline.iter().filter(|r| r["actor"] == "source:pd") {
        assert_eq!(
            record["detail"]["source"]["incident_id"], PD_INCIDENT,
            "{record}"
        );
        assert_eq!(
            record["detail"]["source"]["url"],
            format!("https://acme.pagerduty.com/incidents/{PD_INCIDENT}")
        );
    }
}

/// Every bad delivery: refused, recorded, nothing changed. Plain HTTP on loopback.
#[test]
fn bad_deliveries_are_refused_recorded_and_change_nothing() {
    let dir = temp_dir();
    let s = Sources::start(dir.path(), false);
    let trigger = pagerduty("01TRIG", "incident.triggered", PD_INCIDENT, "PSVC77");

    // Wrong secret, no signature, a signature of another body: 401, and nothing to read
    // in the answer.
    for answer in [
        s.pagerduty(&["not-the-secret"], &trigger),
        s.post_raw("/webhooks/pagerduty", "POST", &[], &trigger),
        s.post_raw(
            "/webhooks/pagerduty",
            "POST",
            &[(
                "x-pagerduty-signature".into(),
                pagerduty_signature(&[PD_SECRET], b"{}"),
            )],
            &trigger,
        ),
    ] {
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (401, ""),
            "{answer:?}"
        );
    }
    // incident.io: a right signature on a stale or future timestamp is a replay: 401.
    let created = io_created("01STALE");
    for timestamp in [system_now() - 3600, system_now() + 3600] {
        let answer = s.standard(
            "/webhooks/incident-io",
            IO_KEY,
            "msg_1",
            timestamp,
            &created,
        );
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (401, ""),
            "{answer:?}"
        );
    }
    // Another source's secret does not sign for this one.
    let answer = s.standard(
        "/webhooks/incident-io",
        GENERIC_KEY,
        "msg_2",
        system_now(),
        &created,
    );
    assert_eq!(answer.status, 401);
    assert!(s.incident_ids().is_empty(), "{:?}", s.incident_ids());

    // Oversized (refused before it is read whole), malformed, wrong path, wrong method.
    let big = vec![b' '; 300 * 1024];
    assert_eq!(s.pagerduty(&[PD_SECRET], &big).status, 413);
    let answer = s.pagerduty(&[PD_SECRET], b"{\"event\": ");
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{answer:?}"
    );
    assert_eq!(
        s.post_raw("/webhooks/other", "POST", &[], b"{}").status,
        404
    );
    assert_eq!(
        s.post_raw("/webhooks/pagerduty", "GET", &[], b"").status,
        405
    );

    // An unmapped service is refused, not guessed (PagerDuty's source has no catch-all).
    let unmapped = pagerduty("01UNMAPPED", "incident.triggered", "QOTHER", "PNOBODY");
    let decision = s.pagerduty(&[PD_SECRET], &unmapped).decision();
    assert!(
        decision.starts_with("refused: no rule maps service"),
        "{decision}"
    );

    // A resolve before its trigger leaves a tombstone: the late trigger opens nothing.
    let early = pagerduty("01EARLY", "incident.resolved", "QLATE", "PSVC77");
    assert!(
        s.pagerduty(&[PD_SECRET], &early)
            .decision()
            .starts_with("ended before")
    );
    let late = pagerduty("01LATE", "incident.triggered", "QLATE", "PSVC77");
    let decision = s.pagerduty(&[PD_SECRET], &late).decision();
    assert!(
        decision.starts_with("refused: the source ended"),
        "{decision}"
    );
    assert!(s.incident_ids().is_empty(), "{:?}", s.incident_ids());

    // The generic webhook opens and closes; a replayed delivery id is a no-op even with
    // a fresh timestamp, and a second trigger for an open incident opens nothing more.
    let open = json!({"incident_id": "INC-7", "action": "open", "service": "checkout",
                      "severity": "SEV2", "title": "Checkout down",
                      "url": "https://irm.example.com/incidents/7"});
    assert_eq!(
        s.generic("gen-1", open.clone()).decision(),
        "opened gen-INC-7"
    );
    assert_eq!(
        s.generic("gen-1", open.clone()).decision(),
        "delivery already handled"
    );
    assert!(s.generic("gen-2", open).decision().contains("already open"));
    // A field writ's shape does not have refuses the whole body.
    let answer = s.generic(
        "gen-3",
        json!({"incident_id": "INC-7", "action": "close", "x": 1}),
    );
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(s.state("gen-INC-7"), "open");
    let close = json!({"incident_id": "INC-7", "action": "close"});
    assert_eq!(
        s.generic("gen-4", close.clone()).decision(),
        "closed gen-INC-7"
    );
    assert_eq!(s.state("gen-INC-7"), "closed");
    // A close for an incident already closed is recorded and changes nothing.
    assert!(
        s.generic("gen-5", close)
            .decision()
            .contains("already closed")
    );
    // Ids are never reused: a reopening is a new incident.
    let reopen = json!({"incident_id": "INC-7", "action": "reopen"});
    assert_eq!(s.generic("gen-6", reopen).decision(), "opened gen-INC-7-r2");
    assert_eq!(s.incident_ids(), ["gen-INC-7", "gen-INC-7-r2"]);

    // Every refusal is in the audit log; unauthenticated ones are throttled, counted.
    let unauthenticated = s.audited("source.unauthenticated");
    assert!(!unauthenticated.is_empty());
    assert!(
        unauthenticated.iter().all(|r| r["detail"]["reason"]
            .as_str()
            .is_some_and(|why| !why.is_empty())),
        "{unauthenticated:#?}"
    );
    let malformed = s.audited("source.malformed");
    assert_eq!(malformed.len(), 2, "{malformed:#?}");
    let refused = s.audited("source.refused");
    let refused_ids: Vec<&str> = refused
        .iter()
        .map(|r| r["detail"]["source"]["incident_id"].as_str().unwrap())
        .collect();
    assert_eq!(refused_ids, ["QOTHER", "QLATE"], "{refused:#?}");
    assert_eq!(refused[0]["incident"], "pd-QOTHER");
    assert_eq!(s.audited("source.tombstone").len(), 1);
    assert_eq!(s.audited("source.duplicate").len(), 1);
    // The refusal shows in the timeline of the incident it would have been.
    let timeline = s.dev.ok(&["incident", "timeline", "pd-QLATE"]);
    assert!(timeline.contains("source:pd"), "{timeline}");
    // No secret reached the server's log.
    let log = s.dev.log();
    for secret in [
        PD_SECRET,
        PD_OLD_SECRET,
        &whsec(IO_KEY),
        &whsec(GENERIC_KEY),
    ] {
        assert!(!log.contains(secret), "a secret in the log");
    }
}

/// A source's configuration is checked at start: a plain-HTTP listener off loopback
/// and a secret file others can read are refused with their reason.
#[test]
fn a_bad_source_configuration_stops_the_start_with_its_reason() {
    let dir = temp_dir();
    let dir = dir.path();
    let open_secret = dir.join("open.secret");
    std::fs::write(&open_secret, "s").unwrap();
    std::fs::set_permissions(&open_secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let good_secret = secret_file(dir, "good.secret", "s");
    for (config, says) in [
        (
            format!(
                "webhook_listen = \"0.0.0.0:{}\"\n[[incident_source]]\nname = \"pd\"\nkind = \"pagerduty\"\npath = \"/pd\"\nsecret_file = {}\n",
                free_port(),
                quoted(&good_secret)
            ),
            "loopback",
        ),
        (
            format!(
                "webhook_listen = \"127.0.0.1:{}\"\n[[incident_source]]\nname = \"pd\"\nkind = \"pagerduty\"\npath = \"/pd\"\nsecret_file = {}\n",
                free_port(),
                quoted(&open_secret)
            ),
            "group or others",
        ),
        (
            format!(
                "[[incident_source]]\nname = \"pd\"\nkind = \"pagerduty\"\npath = \"/pd\"\nsecret_file = {}\n",
                quoted(&good_secret)
            ),
            "need webhook_listen",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(common::bin::WRIT)
            .args(["dev", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with a bad source: {stderr}");
        assert!(stderr.contains(says), "{says:?} not in: {stderr}");
    }
}
