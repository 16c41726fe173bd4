//! An existing deployment's data becomes the default tenant's on upgrade (issue 13): a
//! store written by writ before tenants existed (commit 2009080, `writ dev` with a profile,
//! an open and a closed incident, a pending grant and a playbook: tests/data/
//! store-written-by-2009080.redb) opens under this build, is upgraded in place, and means
//! exactly what it meant: the same objects, all in the default tenant, the same identities.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
    assert_eq!(store.schema_version().unwrap(), 2, "upgraded in place");
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
        policy.incidents.insert(i.key(), i);
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
    assert_eq!(store.schema_version().unwrap(), 2);
    assert_eq!(store.incident(DEFAULT_TENANT, "INC-1").unwrap(), Some(open));
    assert_eq!(store.incident("acme", "INC-1").unwrap(), Some(theirs));
}
