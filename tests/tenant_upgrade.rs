//! An existing deployment's data becomes the default tenant's on upgrade (issue 13): a
//! store written by writ before tenants existed (commit 2009080, `writ dev` with a profile,
//! an open and a closed incident, a pending grant and a playbook: tests/data/
//! store-written-by-2009080.redb) opens under this build, is upgraded in place, and means
//! exactly what it meant: the same objects, all in the default tenant, the same identities.
//! PostgreSQL likewise, with the same rows in a database of the schema before tenants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use writ::policy::{DEFAULT_TENANT, PolicySnapshot, Selector, entitlements};
use writ::store::Store;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/store-written-by-2009080.redb"
);

#[test]
fn a_store_written_before_tenants_is_the_default_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("writ.redb");
    std::fs::copy(FIXTURE, &path).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 3, "upgraded in place");
    assert!(store.tenants().unwrap().is_empty());

    let profiles = store.profiles().unwrap();
    assert_eq!(profiles.len(), 1);
    assert_eq!(
        (profiles[0].tenant.as_str(), profiles[0].name.as_str()),
        (DEFAULT_TENANT, "triage")
    );
    let open = store.incident(DEFAULT_TENANT, "INC-1").unwrap().unwrap();
    assert!(open.is_open());
    assert_eq!(open.tenant, DEFAULT_TENANT);
    // Written before the live indexes: the first read builds them from the tables.
    assert_eq!(
        store.live_incidents(|i| i.is_open()).unwrap(),
        vec![open.clone()]
    );
    assert_eq!(
        store.live_incidents(|_| true).unwrap(),
        vec![open.clone()],
        "only what was live went into the index"
    );
    assert!(
        !store
            .incident(DEFAULT_TENANT, "INC-0")
            .unwrap()
            .unwrap()
            .is_open()
    );
    let grants = store.grants().unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].tenant, DEFAULT_TENANT);
    assert_eq!(
        store.grant(DEFAULT_TENANT, &grants[0].id).unwrap().as_ref(),
        Some(&grants[0])
    );
    let playbooks = store.playbooks().unwrap();
    assert_eq!(playbooks.len(), 1);
    assert_eq!(playbooks[0].tenant, DEFAULT_TENANT);

    // The same identity as before the upgrade, now saying its tenant.
    let mut policy = PolicySnapshot::default();
    for p in profiles {
        policy.profiles.insert(p.key(), p);
    }
    for i in store.incidents().unwrap() {
        policy.incidents.insert(i.key(), std::sync::Arc::new(i));
    }
    let base = writ_verifier::parse_trust_domain("example.org").unwrap();
    let uid: Selector = "unix:uid:1001".parse().unwrap();
    let held = entitlements(&policy, &base, &BTreeSet::from([uid]));
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].spiffe_id.to_string(),
        "spiffe://investigate.example.org/agent/triage/incident/INC-1"
    );
    assert_eq!(held[0].claims.tenant.as_deref(), Some(DEFAULT_TENANT));

    // A tenant added to the upgraded store keeps its own INC-1 apart from the old one.
    let acme: writ::policy::Tenant = serde_json::from_value(serde_json::json!({
        "name": "acme", "base": "acme.test", "state": "active",
        "created_by": "root", "created_at": 1
    }))
    .unwrap();
    let theirs = writ::policy::Incident {
        tenant: "acme".into(),
        title: "theirs".into(),
        ..open.clone()
    };
    store
        .put_tenant_changes(&acme, std::slice::from_ref(&theirs), &[])
        .unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 3);
    assert_eq!(store.incident(DEFAULT_TENANT, "INC-1").unwrap(), Some(open));
    assert_eq!(store.incident("acme", "INC-1").unwrap(), Some(theirs));
}

/// The rows `table` of the fixture holds, as writ 2009080 wrote them: (key, JSON bytes).
fn fixture_rows(table: &str) -> Vec<(String, Vec<u8>)> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("writ.redb");
    std::fs::copy(FIXTURE, &path).unwrap();
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    let definition: TableDefinition<&str, &[u8]> = TableDefinition::new(table);
    let rows = tx.open_table(definition).unwrap();
    rows.iter()
        .unwrap()
        .map(|row| {
            let (k, v) = row.unwrap();
            (k.value().to_owned(), v.value().to_vec())
        })
        .collect()
}

/// The same upgrade on PostgreSQL: a database at schema 4 (the last before tenants) holding
/// the rows 2009080 wrote, byte for byte, migrates to the latest schema at connect and means what it
/// meant, every object the default tenant's.
#[test]
fn a_postgresql_database_written_before_tenants_is_the_default_tenants() {
    let Some(pg) = common::postgres::Postgres::start() else {
        return;
    };
    pg.create_database("writ");
    let url = pg.url("writ");
    // Schema 4 exactly: migration 5 only adds the tenants table, 6 one column of
    // intermediate_requests, 7 the source_incidents table and 8 the live indexes.
    drop(Store::connect_postgres(&url.parse().unwrap()).unwrap());
    pg.psql(
        "writ",
        "DROP TABLE tenants, source_incidents, live_incidents, live_grants; ALTER TABLE intermediate_requests DROP COLUMN trust_domain; \
         UPDATE writ_meta SET value = 4 WHERE key = 'schema_version'",
    );
    for table in ["profiles", "incidents", "grants", "playbooks"] {
        let rows = fixture_rows(table);
        assert!(!rows.is_empty(), "the fixture has {table}");
        for (key, body) in rows {
            let body = String::from_utf8(body).unwrap();
            assert!(!body.contains("$w$") && !key.contains('\''));
            pg.psql(
                "writ",
                &format!("INSERT INTO {table} (key, body) VALUES ('{key}', $w${body}$w$)"),
            );
        }
    }
    let store = Store::connect_postgres(&url.parse().unwrap()).unwrap();
    assert_eq!(store.schema_version().unwrap(), 8);
    assert!(store.tenants().unwrap().is_empty());
    let profiles = store.profiles().unwrap();
    assert_eq!(profiles.len(), 1);
    assert_eq!(profiles[0].tenant, DEFAULT_TENANT);
    let open = store.incident(DEFAULT_TENANT, "INC-1").unwrap().unwrap();
    assert!(open.is_open());
    assert_eq!(store.incidents().unwrap().len(), 2);
    assert!(
        store
            .grants()
            .unwrap()
            .iter()
            .all(|g| g.tenant == DEFAULT_TENANT)
    );
    assert_eq!(store.playbooks().unwrap()[0].tenant, DEFAULT_TENANT);
    // And a tenant's INC-1 beside the old one.
    let theirs = writ::policy::Incident {
        tenant: "acme".into(),
        ..open.clone()
    };
    let acme: writ::policy::Tenant = serde_json::from_value(serde_json::json!({
        "name": "acme", "base": "acme.test", "state": "active",
        "created_by": "root", "created_at": 1
    }))
    .unwrap();
    store
        .put_tenant_changes(&acme, std::slice::from_ref(&theirs), &[])
        .unwrap();
    assert_eq!(store.incident(DEFAULT_TENANT, "INC-1").unwrap(), Some(open));
    assert_eq!(store.incident("acme", "INC-1").unwrap(), Some(theirs));
}
