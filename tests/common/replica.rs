//! One server's share of a cluster on a shared store, as `writ server` runs it: its own
//! store connection, audit log and registry, and the loop that follows the others
//! (`writ::server::follow_policy`). Self-contained, so that examples measuring a cluster
//! (examples/replica-propagation.rs) include this same file.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;
use writ::audit::AuditLog;
use writ::clock::{SharedClock, SystemClock};
use writ::policy::grant::RemediationRules;
use writ::server::registry::Registry;
use writ::store::Store;

/// A registry following the cluster's policy.
pub struct Follower {
    pub registry: Arc<Registry>,
    pub store: Arc<Store>,
    /// The follower loop; aborting it cuts the replica off (no notifications, no
    /// heartbeats), as a lost database connection does.
    pub task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Follower {
    /// Connects to `url`, loads the policy and starts following on `runtime`.
    pub fn start(url: &str, runtime: &tokio::runtime::Runtime) -> Follower {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::connect_postgres(&url.parse().expect("url")).expect("store"));
        let audit = Arc::new(
            AuditLog::open(
                &dir.path().join("audit.redb"),
                dir.path(),
                "example.org/writ-audit",
            )
            .expect("audit log"),
        );
        let clock: SharedClock = Arc::new(SystemClock);
        let registry = Arc::new(
            Registry::load(
                Arc::clone(&store),
                RemediationRules::default(),
                audit,
                clock,
                Duration::from_secs(300),
            )
            .expect("registry"),
        );
        let me = registry
            .replica_name()
            .expect("a shared store names the replica")
            .to_owned();
        let task = runtime.spawn(writ::server::follow_policy(
            Arc::clone(&registry),
            Arc::clone(&store),
            me,
        ));
        Follower {
            registry,
            store,
            task,
            _dir: dir,
        }
    }
}
