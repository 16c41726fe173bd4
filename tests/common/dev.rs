//! An in-process `writ dev`: a real issuer and agent on a temp socket, for suites that
//! drive the Workload API and the agent API with real clients.

use spiffe::WorkloadApiClient;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use writ::agent::{Agent, serve_workload};
use writ::ca::CaConfig;
use writ::clock::{SharedClock, SystemClock};
use writ::config::RawConfig;
use writ::policy::{Incident, IncidentState, Profile, Selector, Severity};
use writ::server::local_node::LocalNode;
use writ::server::{Issuer, bind_unix};
use writ_verifier::Band;

pub struct Dev {
    pub _dir: tempfile::TempDir,
    pub issuer: Arc<Issuer>,
    pub agent: Arc<Agent>,
    pub socket: PathBuf,
    pub stop: watch::Sender<bool>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub async fn start(ca: CaConfig) -> Dev {
    launch(ca, Arc::new(SystemClock), true).await
}

/// `start`, with the issuer and the agent both telling time by `clock`, and without the
/// agent's rotation loop: its waits are real time, which a manual clock does not drive, so
/// the test calls `agent.cache.maintain` itself when it has moved the clock.
pub async fn start_with_clock(ca: CaConfig, clock: SharedClock) -> Dev {
    launch(ca, clock, false).await
}

async fn launch(ca: CaConfig, clock: SharedClock, rotate: bool) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let raw = RawConfig {
        data_dir: Some(dir.path().join("data")),
        ca,
        ..RawConfig::default()
    };
    let config = raw.resolve().unwrap();
    let issuer = Issuer::open(config, Arc::clone(&clock)).unwrap();
    let socket = issuer.config.workload_socket.clone();
    let listener = bind_unix(&socket, 0o666).await.unwrap();
    let agent = Agent::new(Arc::new(LocalNode::new(Arc::clone(&issuer))), clock);
    let (stop, rx) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if rotate {
        tokio::spawn(Arc::clone(&agent).run_rotation(wait(rx.clone())));
    }
    tokio::spawn(Arc::clone(&issuer).run_expiry(wait(rx.clone())));
    tokio::spawn(serve_workload(listener, Arc::clone(&agent), wait(rx)));
    Dev {
        _dir: dir,
        issuer,
        agent,
        socket,
        stop,
    }
}

pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

impl Dev {
    /// Serves this issuer's admin API (with its grpc.health.v1) on `admin.sock` beside the
    /// Workload API socket until `stop` is sent (or the `Dev` dropped); returns its path.
    pub async fn serve_admin(&self, stop: &watch::Sender<bool>) -> PathBuf {
        let path = self.socket.with_file_name("admin.sock");
        let listener = bind_unix(&path, 0o600).await.unwrap();
        let (mut stopped, mut dropped) = (stop.subscribe(), self.stop.subscribe());
        let stopped = async move {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => {}
                _ = dropped.wait_for(|s| *s) => {}
            }
        };
        let health = writ::server::health::start(&self.issuer, std::future::pending()).await;
        tokio::spawn(writ::server::serve_admin(
            listener,
            Arc::clone(&self.issuer),
            health,
            stopped,
        ));
        path
    }

    pub async fn client(&self) -> WorkloadApiClient {
        WorkloadApiClient::connect_to(format!("unix://{}", self.socket.display()))
            .await
            .unwrap()
    }

    pub fn profile(&self, name: &str, selectors: &[Selector], scopes: &[&str]) {
        self.issuer
            .registry
            .create_profile(
                Profile {
                    tenant: "default".into(),
                    name: name.into(),
                    selectors: selectors.iter().cloned().collect(),
                    bands: BTreeSet::from([Band::Investigative]),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    service: false,
                    created_at: 0,
                },
                "test",
            )
            .unwrap();
    }

    /// Opens `id` for `agent`; `order` (seconds) orders incidents opened in one test.
    pub fn open(&self, id: &str, agent: &str, order: i64) {
        let opened_at = self.issuer.cas.now() - 100 + order;
        self.issuer
            .registry
            .open_incident(Incident {
                tenant: "default".into(),
                id: id.into(),
                title: "test".into(),
                severity: Severity::Sev2,
                assigned: BTreeSet::from([agent.to_string()]),
                scopes: BTreeSet::new(),
                state: IncidentState::Open,
                opened_by: "test".into(),
                opened_at,
                closed_by: None,
                closed_at: None,
                max_lifetime_secs: 3600,
                source: None,
            })
            .unwrap();
    }

    /// Opens `id` at `severity` for `agent` with the scopes the remediation suites use
    /// (`logs:read`, `deploy:restart`), opened by alice now.
    pub fn open_remediable(&self, id: &str, agent: &str, severity: Severity) {
        self.issuer
            .registry
            .open_incident(Incident {
                tenant: "default".into(),
                id: id.into(),
                title: "checkout 500s".into(),
                severity,
                assigned: BTreeSet::from([agent.to_string()]),
                scopes: BTreeSet::from(["logs:read".into(), "deploy:restart".into()]),
                state: IncidentState::Open,
                opened_by: "alice".into(),
                opened_at: self.issuer.cas.now(),
                closed_by: None,
                closed_at: None,
                max_lifetime_secs: 3600,
                source: None,
            })
            .unwrap();
    }

    /// A client of `writ.agent.v1` on the agent socket.
    pub async fn agent_client(
        &self,
    ) -> writ::proto::agent::agent_api_client::AgentApiClient<tonic::transport::Channel> {
        writ::proto::agent::agent_api_client::AgentApiClient::new(
            writ::uds::channel(&self.socket).await.unwrap(),
        )
    }

    /// Waits (boundedly) until every workload attestation report the agent has started is
    /// done: reports run off the answer's path, so a test that counts audit records after
    /// a Workload API call waits here first.
    pub async fn reports_settled(&self) {
        let mut in_flight = self.agent.reported.in_flight();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            in_flight.wait_for(|n| *n == 0),
        )
        .await
        .expect("workload attestation reports never finished")
        .expect("the agent is gone");
    }

    pub fn close(&self, id: &str) {
        let now = self.issuer.cas.now();
        self.issuer
            .registry
            .close_incident("default", id, "test", now)
            .unwrap();
    }
}

/// writ's own generated client, for requests the `spiffe` crate would never send.
pub async fn raw_client(
    dev: &Dev,
) -> writ::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    writ::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        writ::uds::channel(&dev.socket).await.unwrap(),
    )
}
