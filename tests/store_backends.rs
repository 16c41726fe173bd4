//! The store's contract, proved against both backends: the embedded redb file and a real
//! PostgreSQL (a throwaway cluster per test, tests/common/postgres.rs). Then what only a
//! shared database has to prove: servers racing one join token, servers migrating at
//! once, a change that fails half way keeping nothing, and a database that restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::postgres::Postgres;
use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use writ::Band;
use writ::policy::grant::{Grant, GrantState};
use writ::policy::{Incident, IncidentState, RevokedSerial, Severity};
use writ::store::{JoinTokenRecord, Store, StoreError, SvidRecord, TokenUse};

/// A backend under test, and how to open it again (a restart, or another server).
enum Backend {
    Redb(tempfile::TempDir),
    Postgres(Postgres, String),
}

impl Backend {
    fn redb() -> Backend {
        Backend::Redb(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Option<Backend> {
        let pg = Postgres::start()?;
        pg.create_database("writ");
        let url = pg.url("writ");
        Some(Backend::Postgres(pg, url))
    }

    fn open(&self) -> Store {
        match self {
            Backend::Redb(dir) => Store::open(&dir.path().join("writ.redb")).unwrap(),
            Backend::Postgres(_, url) => Store::connect_postgres(&url.parse().unwrap()).unwrap(),
        }
    }
}

/// Runs `check` against redb, then PostgreSQL.
fn both(check: impl Fn(&Backend)) {
    check(&Backend::redb());
    if let Some(pg) = Backend::postgres() {
        check(&pg);
    }
}

/// A server's start reads the live indexes, not all history: a row written enters them,
/// and one the start no longer keeps (history) leaves them, staying in its table.
#[test]
fn live_rows_come_from_the_live_index_and_history_leaves_it() {
    both(|backend| {
        let store = backend.open();
        let live = incident("LIVE-1", "open");
        let mut old = incident("OLD-1", "closed long ago");
        old.state = IncidentState::Closed;
        old.closed_at = Some(1_000);
        let g = grant("g-1", "LIVE-1");
        store
            .put_policy_changes(&[live.clone(), old.clone()], std::slice::from_ref(&g))
            .unwrap();
        let is_open = |i: &Incident| i.is_open();
        // Built on the first read, from the table: only what is live goes in.
        assert_eq!(store.live_incidents(is_open).unwrap(), vec![live.clone()]);
        assert_eq!(store.live_incidents(|_| true).unwrap(), vec![live.clone()]);
        assert_eq!(store.live_grants(|_| true).unwrap(), vec![g.clone()]);
        // A row written enters the index; once the start no longer keeps it, it leaves.
        let mut ended = incident("LIVE-2", "then closed");
        store.put_incident(&ended).unwrap();
        assert_eq!(store.live_incidents(|_| true).unwrap().len(), 2);
        ended.state = IncidentState::Closed;
        ended.closed_at = Some(2_000);
        store.put_incident(&ended).unwrap();
        assert_eq!(store.live_incidents(is_open).unwrap(), vec![live.clone()]);
        assert_eq!(store.live_incidents(|_| true).unwrap(), vec![live.clone()]);
        // History stays in the tables.
        assert_eq!(store.incident("default", "OLD-1").unwrap(), Some(old));
        assert_eq!(store.incident("default", "LIVE-2").unwrap(), Some(ended));
        assert_eq!(store.incidents().unwrap().len(), 3);
    });
}

fn incident(id: &str, title: &str) -> Incident {
    Incident {
        tenant: "default".into(),
        id: id.into(),
        title: title.into(),
        severity: Severity::Sev2,
        assigned: BTreeSet::from(["triage".to_string()]),
        scopes: BTreeSet::from(["logs:read".to_string()]),
        state: IncidentState::Open,
        opened_by: "uid:0".into(),
        opened_at: 1_000,
        closed_by: None,
        closed_at: None,
        max_lifetime_secs: 3600,
        source: None,
    }
}

fn grant(id: &str, incident: &str) -> Grant {
    let plan = "kubectl rollout restart deploy/checkout\n".to_string();
    Grant {
        tenant: "default".into(),
        id: id.into(),
        incident: incident.into(),
        agent: "fixer".into(),
        action: "restart checkout".into(),
        targets: BTreeSet::from(["deploy/checkout".to_string()]),
        evidence: vec!["https://logs.example/q?id=1".into()],
        plan_digest: writ::policy::grant::plan_digest(&plan),
        plan,
        scopes: BTreeSet::new(),
        window_secs: 600,
        requested_by: "uid:0".into(),
        requested_by_uid: None,
        requested_at: 1_000,
        approvals: Vec::new(),
        state: GrantState::Pending,
        activated_at: None,
        expires_at: None,
        ended: None,
        playbook: None,
    }
}

fn svid(serial: &str, not_after: i64) -> SvidRecord {
    SvidRecord {
        serial: serial.into(),
        spiffe_id: "spiffe://investigate.example.org/agent/triage/incident/INC-1".into(),
        band: Band::Investigative,
        authority_id: "a1".into(),
        incident: Some("INC-1".into()),
        grant: None,
        not_before: 0,
        not_after,
    }
}

fn token(expires_at: i64) -> JoinTokenRecord {
    JoinTokenRecord {
        created_at: 0,
        expires_at,
        used_at: None,
        node_id: None,
    }
}

#[test]
fn records_round_trip_and_survive_reopening() {
    both(|backend| {
        let store = backend.open();
        // Text a caller may send survives byte for byte: a NUL, right-to-left marks, emoji.
        let odd = incident("INC-2", "db \u{0000} down \u{202e} 🔥 \"quoted\"");
        store
            .put_policy_changes(
                &[incident("INC-1", "db down"), odd.clone()],
                &[grant("g-000000000001", "INC-1")],
            )
            .unwrap();
        store.put_svids(&[svid("0a", 10), svid("0b", 20)]).unwrap();
        store.put_authorities("example.org", &[], 7).unwrap();
        drop(store);

        let store = backend.open();
        assert_eq!(
            store.schema_version().unwrap(),
            if matches!(backend, Backend::Redb(_)) {
                3
            } else {
                8
            }
        );
        assert_eq!(store.incident("default", "INC-2").unwrap(), Some(odd));
        assert_eq!(store.incident("default", "INC-3").unwrap(), None);
        assert_eq!(
            store.grant("default", "g-000000000001").unwrap(),
            Some(grant("g-000000000001", "INC-1"))
        );
        let ids: Vec<String> = store
            .incidents()
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["INC-1", "INC-2"]);
        let open = store.incidents_where(|i| i.title == "db down").unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(store.svid("0b").unwrap(), Some(svid("0b", 20)));
        assert_eq!(store.authorities("example.org").unwrap(), (vec![], 7));
        assert_eq!(store.authorities("other.org").unwrap(), (vec![], 0));
    });
}

#[test]
fn expired_svids_are_pruned_and_live_ones_kept() {
    both(|backend| {
        let store = backend.open();
        store
            .put_svids(&[svid("01", 100), svid("02", 200), svid("03", 300)])
            .unwrap();
        assert_eq!(store.prune_expired_svids(200).unwrap(), 1);
        let left: Vec<String> = store
            .svids()
            .unwrap()
            .into_iter()
            .map(|r| r.serial)
            .collect();
        assert_eq!(left, ["02", "03"]);
        assert_eq!(store.prune_expired_svids(200).unwrap(), 0);
    });
}

#[test]
fn revoked_serials_are_added_and_pruned_in_one_write() {
    both(|backend| {
        let entry = |serial: &str| RevokedSerial {
            serial: serial.into(),
            spiffe_id: "spiffe://example.org/service/logs".into(),
            trust_domain: "example.org".into(),
            revoked_at: 1,
            revoked_by: "alice".into(),
            not_after: 2,
        };
        let store = backend.open();
        store
            .put_policy_and_serial_changes(&[], &[], &[entry("4001"), entry("4002")], &[])
            .unwrap();
        store
            .put_policy_and_serial_changes(&[], &[], &[entry("4003")], &["4001".into()])
            .unwrap();
        drop(store);
        let kept: Vec<String> = backend
            .open()
            .revoked_serials()
            .unwrap()
            .into_iter()
            .map(|r| r.serial)
            .collect();
        assert_eq!(kept, ["4002", "4003"]);
    });
}

#[test]
fn profiles_are_replaced_and_deleted() {
    both(|backend| {
        let store = backend.open();
        let mut profile: writ::policy::Profile = serde_json::from_value(serde_json::json!({
            "name": "triage",
            "selectors": ["unix:uid:1000"],
            "bands": ["investigative"],
            "scopes": ["logs:read"],
            "service": false,
            "created_at": 1
        }))
        .unwrap_or_else(|e| panic!("profile json: {e}"));
        store.put_profile(&profile).unwrap();
        profile.scopes.insert("metrics:read".into());
        store.put_profile(&profile).unwrap();
        assert_eq!(store.profiles().unwrap(), vec![profile]);
        assert!(store.delete_profile("default", "triage").unwrap());
        assert!(!store.delete_profile("default", "triage").unwrap());
        assert!(store.profiles().unwrap().is_empty());
    });
}

#[test]
fn the_same_names_in_two_tenants_are_two_rows() {
    both(|backend| {
        let store = backend.open();
        let acme: writ::policy::Tenant = serde_json::from_value(serde_json::json!({
            "name": "acme", "base": "acme.test", "state": "active",
            "created_by": "root", "created_at": 1
        }))
        .unwrap();
        store.put_tenant_changes(&acme, &[], &[]).unwrap();
        let ours = incident("INC-1", "ours");
        let theirs = Incident {
            tenant: "acme".into(),
            ..incident("INC-1", "theirs")
        };
        store.put_incident(&ours).unwrap();
        store.put_incident(&theirs).unwrap();
        // Reopened: another server, or a restart, reads the same.
        drop(store);
        let store = backend.open();
        assert_eq!(store.tenants().unwrap(), vec![acme.clone()]);
        assert_eq!(store.incident("default", "INC-1").unwrap(), Some(ours));
        assert_eq!(
            store.incident("acme", "INC-1").unwrap(),
            Some(theirs.clone())
        );
        assert_eq!(store.incident("globex", "INC-1").unwrap(), None);
        assert_eq!(store.incidents().unwrap().len(), 2);
        // Disabling closes the tenant's incidents in the same write as the tenant.
        let disabled = writ::policy::Tenant {
            state: writ::policy::TenantState::Disabled,
            ..acme
        };
        let closed = Incident {
            state: IncidentState::Closed,
            ..theirs
        };
        store
            .put_tenant_changes(&disabled, std::slice::from_ref(&closed), &[])
            .unwrap();
        assert_eq!(store.tenants().unwrap(), vec![disabled]);
        assert_eq!(store.incident("acme", "INC-1").unwrap(), Some(closed));
        assert!(
            store
                .incident("default", "INC-1")
                .unwrap()
                .unwrap()
                .is_open()
        );
    });
}

/// A webhook delivery's row (what a source incident led to, the deliveries handled) is
/// written with the incident it opened in one transaction, per tenant, whatever the
/// source's id holds.
#[test]
fn source_incidents_are_written_with_their_incidents_per_tenant() {
    use writ::sources::rules::SourceIncident;
    both(|backend| {
        let store = backend.open();
        assert_eq!(store.source_incident("default", "pd", "Q1").unwrap(), None);
        let mut row = SourceIncident::new("default", "pd", "Q1");
        row.opened.push("pd-Q1".into());
        row.deliveries.push("evt-1".into());
        let opened = incident("pd-Q1", "from PagerDuty");
        store
            .put_source_changes(&row, std::slice::from_ref(&opened), &[])
            .unwrap();
        // A source id with slashes is one key, not another tenant's or source's.
        let odd = SourceIncident::new("default", "pd", "a/b/c");
        store.put_source_changes(&odd, &[], &[]).unwrap();
        let other = SourceIncident {
            tombstone: true,
            ..SourceIncident::new("acme", "pd", "Q1")
        };
        store.put_source_changes(&other, &[], &[]).unwrap();
        drop(store);
        let store = backend.open();
        assert_eq!(
            store.source_incident("default", "pd", "Q1").unwrap(),
            Some(row)
        );
        assert_eq!(store.incident("default", "pd-Q1").unwrap(), Some(opened));
        assert_eq!(
            store.source_incident("default", "pd", "a/b/c").unwrap(),
            Some(odd)
        );
        assert_eq!(
            store.source_incident("acme", "pd", "Q1").unwrap(),
            Some(other)
        );
        assert_eq!(store.source_incident("default", "io", "Q1").unwrap(), None);
    });
}

#[test]
fn join_tokens_are_single_use_and_expire() {
    both(|backend| {
        let store = backend.open();
        store.put_join_token("aa", &token(100)).unwrap();
        store.put_join_token("bb", &token(100)).unwrap();
        assert_eq!(
            store.consume_join_token("aa", 50, "n1").unwrap(),
            TokenUse::Consumed
        );
        assert_eq!(
            store.consume_join_token("aa", 51, "n2").unwrap(),
            TokenUse::Replayed
        );
        assert_eq!(
            store.consume_join_token("bb", 100, "n3").unwrap(),
            TokenUse::Expired
        );
        assert_eq!(
            store.consume_join_token("cc", 1, "n4").unwrap(),
            TokenUse::Unknown
        );
        // An expired token stays unused: presenting it changed nothing.
        assert_eq!(
            store.consume_join_token("bb", 100, "n3").unwrap(),
            TokenUse::Expired
        );
    });
}

/// Two servers (two stores on one database), eight nodes each presenting the same token
/// at the same instant: exactly one is admitted, and the token names it.
#[test]
fn servers_racing_one_join_token_admit_exactly_one_node() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let servers = [Arc::new(backend.open()), Arc::new(backend.open())];
    for round in 0..5 {
        let hash = format!("token-{round}");
        servers[0].put_join_token(&hash, &token(i64::MAX)).unwrap();
        let barrier = Arc::new(Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&servers[i % 2]);
                let barrier = Arc::clone(&barrier);
                let hash = hash.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    (
                        i,
                        store
                            .consume_join_token(&hash, 10, &format!("node-{i}"))
                            .unwrap(),
                    )
                })
            })
            .collect();
        let outcomes: Vec<(usize, TokenUse)> =
            racers.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<usize> = outcomes
            .iter()
            .filter(|(_, u)| *u == TokenUse::Consumed)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|(_, u)| matches!(u, TokenUse::Consumed | TokenUse::Replayed)),
            "{outcomes:?}"
        );
        let (pg, _) = match &backend {
            Backend::Postgres(pg, url) => (pg, url),
            Backend::Redb(_) => unreachable!(),
        };
        let node = pg.psql(
            "writ",
            &format!("SELECT body->>'node_id' FROM join_tokens WHERE key = '{hash}'"),
        );
        assert_eq!(node, format!("node-{}", winners[0]));
    }
}

/// Servers starting together on an empty database: each migrates or waits for the one
/// that does; all come up on the same schema, and the tables exist once.
#[test]
fn servers_starting_together_migrate_once() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("fresh");
    let url: writ::store::PostgresUrl = pg.url("fresh").parse().unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                Store::connect_postgres(&url).map(|s| s.schema_version().unwrap())
            })
        })
        .collect();
    for start in starts {
        assert_eq!(start.join().unwrap().unwrap(), 8);
    }
    assert_eq!(
        pg.psql(
            "fresh",
            "SELECT value FROM writ_meta WHERE key = 'schema_version'"
        ),
        "8"
    );
}

#[test]
fn a_database_of_a_newer_schema_is_refused() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    drop(backend.open());
    let Backend::Postgres(pg, url) = &backend else {
        unreachable!()
    };
    pg.psql(
        "writ",
        "UPDATE writ_meta SET value = 99 WHERE key = 'schema_version'",
    );
    match Store::connect_postgres(&url.parse().unwrap()) {
        Err(StoreError::Schema {
            found: 99,
            supported: 8,
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// Closing an incident and revoking its grant is one transaction: when the grant's write
/// fails (here a trigger refuses it, as a full disk or a lost connection would), the
/// incident is not closed either.
#[test]
fn a_policy_change_that_fails_half_way_keeps_nothing() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let store = backend.open();
    store
        .put_policy_changes(
            &[incident("INC-1", "db down")],
            &[grant("g-000000000001", "INC-1")],
        )
        .unwrap();
    let Backend::Postgres(pg, _) = &backend else {
        unreachable!()
    };
    pg.psql(
        "writ",
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$;
         CREATE TRIGGER refuse BEFORE UPDATE ON grants FOR EACH ROW EXECUTE FUNCTION refuse();",
    );
    let mut closed = incident("INC-1", "db down");
    closed.state = IncidentState::Closed;
    closed.closed_at = Some(2_000);
    let mut revoked = grant("g-000000000001", "INC-1");
    revoked.state = GrantState::Revoked;
    let err = store.put_policy_changes(&[closed], &[revoked]).unwrap_err();
    assert!(err.to_string().contains("refused by test"), "{err}");
    assert_eq!(
        store.incident("default", "INC-1").unwrap().unwrap().state,
        IncidentState::Open
    );
    assert_eq!(
        store
            .grant("default", "g-000000000001")
            .unwrap()
            .unwrap()
            .state,
        GrantState::Pending
    );
}

/// The database restarting: calls fail with an error while it is down (never hang, never
/// panic), and the same store works again once it is back, without reopening.
#[test]
fn the_store_fails_cleanly_while_the_database_is_down_and_recovers_by_itself() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let store = backend.open();
    store.put_incident(&incident("INC-1", "db down")).unwrap();
    let Backend::Postgres(pg, _) = &backend else {
        unreachable!()
    };
    pg.stop();
    let err = store.incident("default", "INC-1").unwrap_err();
    assert!(err.to_string().starts_with("store: postgres"), "{err}");
    assert!(
        store
            .put_incident(&incident("INC-2", "cache down"))
            .is_err()
    );
    pg.start_again();
    let mut back = None;
    for _ in 0..100 {
        match store.incident("default", "INC-1") {
            Ok(found) => {
                back = found;
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    assert_eq!(back.map(|i| i.id).as_deref(), Some("INC-1"));
    // The write that failed while it was down did not half happen.
    assert_eq!(store.incident("default", "INC-2").unwrap(), None);
}

/// TLS to the database: with `sslrootcert` the store requires TLS and verifies the
/// server's certificate and name against that CA; another CA is refused, and so is a
/// plain connection to a server that only speaks TLS on TCP.
#[test]
fn the_store_reaches_postgresql_over_verified_tls() {
    let Some(pg) = Postgres::start() else { return };
    pg.create_database("writ");
    let ca = common::https::TestCa::new("db test CA");
    let other = common::https::TestCa::new("someone else's CA");
    let server = ca.leaf("db", &["localhost"]);
    let port = pg.serve_tls(&server.cert_pem, &server.key_pem);

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, &other.pem).unwrap();
    let url = |ca: Option<&std::path::Path>| {
        let base = format!("postgresql://writ@localhost:{port}/writ");
        match ca {
            Some(ca) => format!("{base}?sslrootcert={}", ca.display()),
            None => base,
        }
    };

    let store = Store::connect_postgres(&url(Some(&ca_file)).parse().unwrap()).unwrap();
    store.put_incident(&incident("INC-1", "over TLS")).unwrap();
    assert_eq!(
        store.incident("default", "INC-1").unwrap().unwrap().title,
        "over TLS"
    );
    let encrypted = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE s.ssl AND a.application_name = 'writ'",
    );
    assert_ne!(encrypted, "0", "no encrypted connection from writ");

    let err = Store::connect_postgres(&url(Some(&other_file)).parse().unwrap()).unwrap_err();
    assert!(err.to_string().contains("postgres"), "{err}");
    let err = Store::connect_postgres(&url(None).parse().unwrap()).unwrap_err();
    assert!(err.to_string().contains("postgres"), "{err}");
}

/// Signing replicas' intermediate requests (docs/ha.md): posted by one server, seen
/// pending by another, answered once (a second answer changes nothing), and gone from
/// the pending list once answered. The embedded store takes none.
#[test]
fn intermediate_requests_are_answered_once_across_servers() {
    use writ::store::{IntermediateAnswer, NewIntermediateRequest};
    let redb = Backend::redb().open();
    let ask = |band: Band| NewIntermediateRequest {
        replica: "b-1".into(),
        trust_domain: Some(spiffe::TrustDomain::new(band.trust_domain_name("acme.test")).unwrap()),
        band,
        csr: vec![0x30, 0x00],
        key_sha256: "ab".repeat(32),
    };
    assert!(redb.post_intermediate_request(&ask(Band::Base)).is_err());
    assert!(redb.pending_intermediate_requests().unwrap().is_empty());

    let Some(backend) = Backend::postgres() else {
        return;
    };
    let (replica, holder) = (backend.open(), backend.open());
    let base = replica.post_intermediate_request(&ask(Band::Base)).unwrap();
    let remediation = replica
        .post_intermediate_request(&ask(Band::Remediation))
        .unwrap();
    let pending = holder.pending_intermediate_requests().unwrap();
    assert_eq!(
        pending.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![base, remediation]
    );
    assert_eq!(pending[0].request, ask(Band::Base));
    assert!(
        holder
            .answer_intermediate_request(base, &IntermediateAnswer::Certified(vec![1, 2, 3]))
            .unwrap()
    );
    assert!(
        !holder
            .answer_intermediate_request(base, &IntermediateAnswer::Refused("late".into()))
            .unwrap(),
        "an answered request is never answered again"
    );
    assert!(
        holder
            .answer_intermediate_request(
                remediation,
                &IntermediateAnswer::Refused("bad csr".into())
            )
            .unwrap()
    );
    let row = replica.intermediate_request(base).unwrap().unwrap();
    assert_eq!(row.certificate, Some(vec![1, 2, 3]));
    assert_eq!(row.refused, None);
    let row = replica.intermediate_request(remediation).unwrap().unwrap();
    assert_eq!(
        (row.certificate, row.refused),
        (None, Some("bad csr".into()))
    );
    assert!(holder.pending_intermediate_requests().unwrap().is_empty());
    assert_eq!(replica.intermediate_request(base + 1000).unwrap(), None);

    // Housekeeping: rows a week old (answered or not) and replicas silent for a day go.
    let stale = replica.post_intermediate_request(&ask(Band::Base)).unwrap();
    let Backend::Postgres(pg, _) = &backend else {
        unreachable!()
    };
    pg.psql(
        "writ",
        &format!(
            "UPDATE intermediate_requests SET requested_at = now() - interval '8 days' \
             WHERE id IN ({base}, {stale})"
        ),
    );
    assert!(holder.pending_intermediate_requests().unwrap().is_empty());
    assert_eq!(replica.intermediate_request(base).unwrap(), None);
    assert!(replica.intermediate_request(remediation).unwrap().is_some());
    holder.heartbeat("gone-1", 0).unwrap();
    holder.heartbeat("here-1", 0).unwrap();
    pg.psql(
        "writ",
        "UPDATE replicas SET heartbeat_at = now() - interval '2 days' WHERE name = 'gone-1'",
    );
    holder.heartbeat("here-1", 0).unwrap();
    let names: Vec<String> = holder
        .replicas()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec!["here-1".to_owned()]);
}

/// Upgrading a database of schema 5 (intermediate requests keyed by band only) to 6: the
/// rows already there keep everything they had, read with no trust domain (the root's
/// holder takes the deployment's of their band, `signers::requested_trust_domain`); one
/// still pending is still pending and can be answered; new rows name their trust domain.
#[test]
fn intermediate_requests_from_before_trust_domains_survive_the_upgrade() {
    use writ::store::{IntermediateAnswer, NewIntermediateRequest};
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Backend::Postgres(pg, _) = &backend else {
        unreachable!()
    };
    // Schema 5 exactly: migration 6 only adds the column, 7 the source_incidents table
    // and 8 the live indexes.
    drop(backend.open());
    pg.psql(
        "writ",
        "DROP TABLE source_incidents, live_incidents, live_grants; \
         ALTER TABLE intermediate_requests DROP COLUMN trust_domain; \
         UPDATE writ_meta SET value = 5 WHERE key = 'schema_version'",
    );
    let key = "cd".repeat(32);
    pg.psql(
        "writ",
        &format!(
            "INSERT INTO intermediate_requests (replica, band, csr, key_sha256) \
             VALUES ('b-1', 'investigative', '\\x3000', '{key}')"
        ),
    );
    let old_pending = pg.psql(
        "writ",
        "SELECT id FROM intermediate_requests WHERE replica = 'b-1'",
    );
    pg.psql(
        "writ",
        &format!(
            "INSERT INTO intermediate_requests (replica, band, csr, key_sha256, certificate) \
             VALUES ('b-2', 'base', '\\x3000', '{key}', '\\x010203')"
        ),
    );

    let store = backend.open();
    assert_eq!(store.schema_version().unwrap(), 8);
    let pending = store.pending_intermediate_requests().unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].id.to_string(), old_pending);
    assert_eq!(
        pending[0].request,
        NewIntermediateRequest {
            replica: "b-1".into(),
            trust_domain: None,
            band: Band::Investigative,
            csr: vec![0x30, 0x00],
            key_sha256: key.clone(),
        }
    );
    let latest = store.latest_intermediate_requests().unwrap();
    assert_eq!(latest.len(), 2);
    let certified = latest.iter().find(|r| r.request.replica == "b-2").unwrap();
    assert_eq!(
        (
            certified.request.trust_domain.as_ref(),
            certified.request.band
        ),
        (None, Band::Base)
    );
    assert_eq!(certified.certificate, Some(vec![1, 2, 3]));
    assert!(
        store
            .answer_intermediate_request(pending[0].id, &IntermediateAnswer::Refused("old".into()))
            .unwrap()
    );

    // A request posted now names its trust domain, and reads back with it.
    let tenant_band = spiffe::TrustDomain::new("remediate.acme.test").unwrap();
    let fresh = NewIntermediateRequest {
        replica: "b-1".into(),
        trust_domain: Some(tenant_band.clone()),
        band: Band::Remediation,
        csr: vec![0x30, 0x00],
        key_sha256: "ef".repeat(32),
    };
    let id = store.post_intermediate_request(&fresh).unwrap();
    assert_eq!(
        store.intermediate_request(id).unwrap().unwrap().request,
        fresh
    );
    assert_eq!(
        pg.psql(
            "writ",
            &format!("SELECT trust_domain FROM intermediate_requests WHERE id = {id}")
        ),
        tenant_band.to_string()
    );
}
