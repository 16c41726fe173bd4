//! The store's SVID records are written by the issuer, and only by it (issue 11): every
//! X.509-SVID the issuer hands out is recorded, with what the SVID says, before it is
//! returned; a refused one leaves no record; the CA alone mints and records nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{csr, dev, investigative_request, plain_request};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use writ::ca::{MintedX509, SubjectKey, SvidRequest};
use writ::server::{IssueError, Issuer};
use writ::store::SvidRecord;
use writ_verifier::Band;

const ID: &str = "spiffe://investigate.example.org/agent/triage/incident/INC-1";

/// The store's SVID records by serial.
fn records(issuer: &Issuer) -> BTreeMap<String, SvidRecord> {
    let svids = issuer.store.svids().unwrap();
    svids.into_iter().map(|r| (r.serial.clone(), r)).collect()
}

/// The records in `after` that are not in `before`.
fn added(
    before: &BTreeMap<String, SvidRecord>,
    after: &BTreeMap<String, SvidRecord>,
) -> Vec<SvidRecord> {
    after
        .iter()
        .filter(|(serial, _)| !before.contains_key(*serial))
        .map(|(_, r)| r.clone())
        .collect()
}

/// The record the issuer must have written for `minted`, issued for `request` in `band`.
fn expected(band: Band, request: &SvidRequest, minted: &MintedX509) -> SvidRecord {
    let claims = request.claims.as_ref();
    SvidRecord {
        serial: minted.serial.clone(),
        spiffe_id: request.spiffe_id.to_string(),
        band,
        authority_id: minted.authority_id.clone(),
        incident: claims.and_then(|c| c.incident.clone()),
        grant: claims.and_then(|c| c.grant.clone()),
        not_before: minted.not_before,
        not_after: minted.not_after,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_issued_x509_svid_is_recorded_and_nothing_refused_is() {
    let dev = dev::start(writ::ca::CaConfig::default()).await;
    dev.profile("triage", &[writ::policy::Selector::Uid(dev::my_uid())], &[]);
    dev.open("INC-1", "triage", 1);
    let issuer = Arc::clone(&dev.issuer);
    let id = common::id(ID);

    // The Workload API's path: a batch of one good CSR and one that is not a CSR.
    let before = records(&issuer);
    let (_key, good) = csr();
    let (i, items) = (
        Arc::clone(&issuer),
        vec![(id.clone(), good), (id.clone(), b"not a CSR".to_vec())],
    );
    let mut results = blocking(move || i.sign_workload_x509_batch(&items, None, "test")).await;
    assert_eq!(results.len(), 2);
    let refused = results.pop().unwrap();
    assert!(
        matches!(&refused, Err(IssueError::Ca(e)) if e.is_invalid_argument()),
        "{refused:?}"
    );
    let minted = results.pop().unwrap().unwrap();
    let after = records(&issuer);
    let new = added(&before, &after);
    assert_eq!(new.len(), 1, "one SVID issued, one refused: {new:?}");
    let record = &new[0];
    assert_eq!(record.serial, minted.serial);
    assert_eq!(record.spiffe_id, ID);
    assert_eq!(record.band, Band::Investigative);
    assert_eq!(record.incident.as_deref(), Some("INC-1"));
    assert_eq!(record.grant, None);
    assert_eq!(
        (record.not_before, record.not_after),
        (minted.not_before, minted.not_after)
    );
    assert_eq!(record.authority_id, minted.authority_id);

    // The operator's path (policy checked by the caller): one record, as the SVID says.
    let before = after;
    let request = investigative_request();
    let (_key, good) = csr();
    let (i, r) = (Arc::clone(&issuer), request.clone());
    let minted =
        blocking(move || i.issue_x509(Band::Investigative, SubjectKey::Csr(&good), r, "test"))
            .await
            .unwrap();
    let after = records(&issuer);
    assert_eq!(
        added(&before, &after),
        vec![expected(Band::Investigative, &request, &minted)]
    );

    // Refused by the CA (a TTL of zero): nothing recorded.
    let mut zero = investigative_request();
    zero.ttl = Some(Duration::ZERO);
    let (_key, good) = csr();
    let i = Arc::clone(&issuer);
    let refused =
        blocking(move || i.issue_x509(Band::Investigative, SubjectKey::Csr(&good), zero, "test"))
            .await;
    assert!(
        matches!(&refused, Err(IssueError::Ca(e)) if e.is_invalid_argument()),
        "{refused:?}"
    );
    assert_eq!(records(&issuer), after, "a refused issuance was recorded");

    // The CA alone mints and records nothing: recording is the issuer's.
    let (_key, good) = csr();
    let minted = issuer
        .cas
        .mint_x509(
            Band::Investigative,
            SubjectKey::Csr(&good),
            &investigative_request(),
        )
        .unwrap();
    assert!(!minted.cert_der.is_empty());
    assert_eq!(records(&issuer), after, "the CA wrote an SVID record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_svid_is_recorded_in_the_base_band() {
    let dev = dev::start(writ::ca::CaConfig::default()).await;
    let issuer = Arc::clone(&dev.issuer);
    let before = records(&issuer);
    let key = rcgen::KeyPair::generate().unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let request = plain_request("spiffe://example.org/writ/server");
    let (i, r) = (Arc::clone(&issuer), request.clone());
    let minted = blocking(move || i.mint_server_x509(&spki, &r))
        .await
        .unwrap();
    assert_eq!(
        added(&before, &records(&issuer)),
        vec![expected(Band::Base, &request, &minted)]
    );

    // Outside the base trust domain it is refused, and nothing is recorded.
    let before = records(&issuer);
    let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
    let i = Arc::clone(&issuer);
    let refused = blocking(move || {
        i.mint_server_x509(&spki, &plain_request("spiffe://investigate.example.org/x"))
    })
    .await;
    assert!(
        matches!(&refused, Err(e) if e.is_invalid_argument()),
        "{refused:?}"
    );
    assert_eq!(records(&issuer), before);
}
