//! Issuance measured in process (issue 5, issue 16 item 1): the crypto limit (`mint`) and
//! the ways an SVID is issued end to end, each row on the same cores and the same issuer.
//! Used by `audit-load` (every row, and on PostgreSQL) and `bench` (the crypto limit and
//! the two end-to-end paths, with their ratio). Included with
//! `#[path = "common/issuance.rs"] mod issuance;` beside `mod load;`.
//!
//! A measuring tool, not a service: a setup error fails loudly.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};
use writ::audit::{AuditError, Kind, Record};
use writ::ca::{MintedX509, SubjectKey, SvidRequest};
use writ::config::RawConfig;
use writ::server::Issuer;
use writ::store::SvidRecord;
use writ::{Band, WritClaims};

/// The identity every row issues.
pub const ID: &str = "spiffe://investigate.example.org/agent/triage/incident/INC-4711";

/// How many CSRs the workload-batch rows send per call (an agent's batch for one node).
pub const BATCH: usize = 16;

/// What one measurement did: operations, audit commits, wall time and the latency of
/// each operation.
pub struct Run {
    pub appends: usize,
    pub commits: u64,
    pub elapsed: Duration,
    pub samples: Vec<Duration>,
}

impl Run {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }
}

/// `threads` OS threads, each calling `f(thread, i)` in a loop for `secs`; `commits`
/// reads the commit counter afterwards.
pub fn threaded(
    threads: usize,
    secs: Duration,
    f: impl Fn(usize, u64) + Send + Sync + 'static,
    commits: impl Fn() -> u64,
) -> Run {
    let f = Arc::new(f);
    let start = Instant::now();
    let deadline = start + secs;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let s = Instant::now();
                    f(t, i);
                    samples.push(s.elapsed());
                    i += 1;
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.join().expect("thread"));
    }
    Run {
        appends: samples.len(),
        commits: commits(),
        elapsed: start.elapsed(),
        samples,
    }
}

/// An issuer on a fresh data directory (the directory is removed when the first part is
/// dropped), its store in `store` (a PostgreSQL URL) when given, else redb.
pub fn issuer(store: Option<String>) -> (tempfile::TempDir, Arc<Issuer>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = RawConfig {
        data_dir: Some(dir.path().join("data")),
        store,
        ..RawConfig::default()
    };
    let issuer = Issuer::open(
        raw.resolve().expect("config"),
        Arc::new(writ::clock::SystemClock),
    )
    .expect("issuer");
    entitle(&issuer);
    (dir, issuer)
}

/// Policy entitling a workload to `ID`: a profile and its open incident.
fn entitle(issuer: &Issuer) {
    let now = issuer.cas.now();
    issuer
        .registry
        .create_profile(super::load::triage_profile(now), "bench")
        .expect("profile");
    issuer
        .registry
        .open_incident(super::load::incident(
            "default",
            "INC-4711",
            &["logs:read", "metrics:read"],
            now,
        ))
        .expect("incident");
}

fn request() -> SvidRequest {
    let mut claims = WritClaims::new(Band::Investigative);
    claims.incident = Some("INC-4711".into());
    claims.scopes = vec!["logs:read".into(), "metrics:read".into()];
    SvidRequest {
        spiffe_id: spiffe::SpiffeId::new(ID).expect("id"),
        ttl: None,
        claims: Some(claims),
        dns_names: vec![],
    }
}

/// Mint inside the audit log's sequencer, as `Issuer::issue_x509` does, without the
/// SVID store.
fn mint_audited(issuer: &Issuer, csr: &[u8]) -> MintedX509 {
    let ca = issuer.cas.ca(Band::Investigative);
    let now = issuer.cas.now();
    let mut request = request();
    let (_, minted) = issuer
        .audit
        .append_with(|index| {
            if let Some(claims) = request.claims.as_mut() {
                claims.audit_index = Some(index);
            }
            let minted = ca
                .mint_x509(SubjectKey::Csr(csr), &request, now)
                .map_err(|e| AuditError::Invalid(e.to_string()))?;
            let record = Record::new(now, Kind::Issuance, "svid.issue.investigative", "bench")
                .incident(Some("INC-4711"))
                .spiffe_id(ID)
                .serial(minted.serial.clone())
                .detail(serde_json::json!({
                    "band": "investigative",
                    "format": "x509",
                    "not_after": minted.not_after,
                    "authority": minted.authority_id,
                }));
            Ok::<_, AuditError>((record.encode().expect("encode"), minted))
        })
        .expect("audited mint");
    minted
}

/// The SVID record of an investigative mint, as the issuer writes it.
fn svid_record(request: &SvidRequest, minted: &MintedX509) -> SvidRecord {
    let claims = request.claims.as_ref();
    SvidRecord {
        serial: minted.serial.clone(),
        spiffe_id: request.spiffe_id.to_string(),
        band: Band::Investigative,
        authority_id: minted.authority_id.clone(),
        incident: claims.and_then(|c| c.incident.clone()),
        grant: claims.and_then(|c| c.grant.clone()),
        not_before: minted.not_before,
        not_after: minted.not_after,
    }
}

/// One way to issue, run by the load threads.
type IssuePath = Arc<dyn Fn(&Issuer) + Send + Sync>;

/// The ways to issue, by name:
/// - `mint`: `TrustDomainCa::mint_x509` alone (the crypto limit: CSR check and signature);
/// - `mint+audit`: the mint inside `AuditLog::submit_with`, then the wait, as
///   `Issuer::issue_x509` does it (what the log adds, without the SVID store);
/// - `mint+store`: `CaSet::mint_x509`, then the SVID store's own commit (`Store::put_svid`;
///   issuance before the log);
/// - `Issuer::issue_x509`: mint + audit append + SVID store (one SVID at a time);
/// - `batch of 16`: `Issuer::sign_workload_x509_batch` with 16 CSRs per call, the
///   Workload API's path (policy checked under the issuance gate, then as above).
pub const PATHS: [&str; 5] = [
    "mint",
    "mint+audit",
    "mint+store",
    "Issuer::issue_x509",
    "batch of 16",
];

/// The path `name` issuing for `csr`.
fn path(name: &str, csr: Vec<u8>) -> IssuePath {
    match name {
        "mint" => Arc::new(move |i: &Issuer| {
            i.cas
                .ca(Band::Investigative)
                .mint_x509(SubjectKey::Csr(&csr), &request(), i.cas.now())
                .expect("mint");
        }),
        "mint+audit" => Arc::new(move |i: &Issuer| {
            mint_audited(i, &csr);
        }),
        "mint+store" => Arc::new(move |i: &Issuer| {
            let request = request();
            let minted = i
                .cas
                .mint_x509(Band::Investigative, SubjectKey::Csr(&csr), &request)
                .expect("mint");
            i.store
                .put_svid(&svid_record(&request, &minted))
                .expect("store");
        }),
        "Issuer::issue_x509" => Arc::new(move |i: &Issuer| {
            i.issue_x509(
                Band::Investigative,
                SubjectKey::Csr(&csr),
                request(),
                "bench",
            )
            .expect("issue");
        }),
        "batch of 16" => {
            let batch: Vec<_> = (0..BATCH)
                .map(|_| (spiffe::SpiffeId::new(ID).expect("id"), csr.clone()))
                .collect();
            Arc::new(move |i: &Issuer| {
                for minted in i.sign_workload_x509_batch(&batch, None, "bench") {
                    minted.expect("issue");
                }
            })
        }
        other => panic!("no issuance path {other:?}"),
    }
}

/// Runs the path `name` (one of [`PATHS`]) from `threads` threads for `secs` on `issuer`.
/// Ops are SVIDs (a batch counts 16); latency is one call's.
pub fn measure(issuer: &Arc<Issuer>, name: &str, threads: usize, secs: Duration) -> Run {
    let issue = path(name, super::load::csr());
    let before = issuer.audit.commits();
    let i2 = Arc::clone(issuer);
    let log = Arc::clone(&issuer.audit);
    let run = threaded(
        threads,
        secs,
        move |_, _| issue(&i2),
        move || log.commits() - before,
    );
    if name == "batch of 16" {
        Run {
            appends: run.appends * BATCH,
            ..run
        }
    } else {
        run
    }
}
