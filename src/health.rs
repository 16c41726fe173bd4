//! `grpc.health.v1`, the standard gRPC health service (through tonic-health), for every
//! socket writ serves: the admin API, the node API and the Workload API
//! (docs/architecture.md, "Health and reflection").
//!
//! What it owns: publishing one process's [`Readiness`] as the status of the overall
//! service (`""`) and of every named service on its sockets at once, re-checking it on a
//! schedule and when prompted, and logging each change once. What is ready is decided
//! elsewhere: the issuer's in `server::health`, the agent's by its `NodeApi`. Must never:
//! say SERVING before a readiness check passed, or put a check's reason (which may name
//! files or databases) in an answer: callers see the status only.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// Whether a process can do its work now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Everything it depends on is open and working.
    Ready,
    /// It cannot serve, and why (for its log, never sent to a caller).
    NotReady(String),
}

impl Readiness {
    /// The status `grpc.health.v1` reports for it.
    pub fn status(&self) -> ServingStatus {
        match self {
            Readiness::Ready => ServingStatus::Serving,
            Readiness::NotReady(_) => ServingStatus::NotServing,
        }
    }
}

/// How often readiness is checked when nothing prompts it sooner: the longest a failure
/// noticed only by a check (a store file deleted, a database gone) stays unreported.
pub const RECHECK: Duration = Duration::from_secs(5);

/// The health one process publishes for its services; clones publish to the same
/// statuses, and every [`Health::service`] answers from them.
#[derive(Clone, Debug)]
pub struct Health {
    reporter: HealthReporter,
    services: Vec<String>,
    /// What was published last, so a change is logged once.
    last: Arc<Mutex<Option<Readiness>>>,
}

impl Health {
    /// Health for the overall service and `services` (fully qualified names), every one
    /// NOT_SERVING until [`Health::publish`] says otherwise.
    pub async fn new(services: &[&str]) -> Health {
        let reporter = HealthReporter::new();
        let health = Health {
            reporter,
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            last: Arc::default(),
        };
        // tonic-health starts the overall service at SERVING: nothing is checked yet.
        health.set(ServingStatus::NotServing).await;
        health
    }

    /// The `grpc.health.v1.Health` service, to add to a server.
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for service in &self.services {
            self.reporter.set_service_status(service, status).await;
        }
    }

    /// Publishes `readiness` for every service; logs it when it changed.
    pub async fn publish(&self, readiness: Readiness) {
        let changed = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let changed = last.as_ref() != Some(&readiness);
            *last = Some(readiness.clone());
            changed
        };
        if changed {
            match &readiness {
                Readiness::Ready => tracing::info!(services = ?self.services, "serving"),
                Readiness::NotReady(why) => {
                    tracing::error!(services = ?self.services, reason = %why, "not serving")
                }
            }
        }
        self.set(readiness.status()).await;
    }

    /// Publishes what `check` says now (so a server started after this answers with a
    /// checked status); then, in a task this spawns, again every [`RECHECK`] and whenever
    /// `wake` changes, until `shutdown`, and then NOT_SERVING. `check` may block (it
    /// runs on the blocking pool).
    pub async fn follow<W: Send + Sync + 'static>(
        self,
        check: impl Fn() -> Readiness + Send + Sync + 'static,
        mut wake: Option<watch::Receiver<W>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let check: Arc<dyn Fn() -> Readiness + Send + Sync> = Arc::new(check);
        let run = |check: &Arc<dyn Fn() -> Readiness + Send + Sync>| {
            let check = Arc::clone(check);
            async move {
                tokio::task::spawn_blocking(move || check())
                    .await
                    .unwrap_or_else(|e| {
                        Readiness::NotReady(format!("the readiness check failed: {e}"))
                    })
            }
        };
        self.publish(run(&check).await).await;
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            loop {
                let woken = async {
                    match wake.as_mut() {
                        Some(wake) => {
                            if wake.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(RECHECK) => {}
                    () = woken => {}
                }
                self.publish(run(&check).await).await;
            }
            self.set(ServingStatus::NotServing).await;
        })
    }
}

/// A file as it was opened (its path, device and inode), so that a readiness check can
/// tell it was deleted or replaced under the running process: a redb file unlinked
/// while open still takes writes, which no later start would see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedFile {
    path: std::path::PathBuf,
    id: (u64, u64),
}

impl OpenedFile {
    /// The file now at `path`.
    pub fn at(path: &std::path::Path) -> std::io::Result<OpenedFile> {
        Ok(OpenedFile {
            path: path.to_owned(),
            id: Self::id(path)?,
        })
    }

    fn id(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Whether `path` still names that file; if not, what became of it.
    pub fn check(&self) -> Result<(), String> {
        match Self::id(&self.path) {
            Ok(id) if id == self.id => Ok(()),
            Ok(_) => Err(format!(
                "{} was replaced by another file",
                self.path.display()
            )),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health as _;

    /// What a `Check` of `name` answers: the status, or the error's code.
    async fn check(health: &Health, name: &str) -> Result<i32, tonic::Code> {
        HealthService::from_health_reporter(health.reporter.clone())
            .check(tonic::Request::new(HealthCheckRequest {
                service: name.into(),
            }))
            .await
            .map(|answer| answer.into_inner().status)
            .map_err(|status| status.code())
    }

    #[tokio::test]
    async fn nothing_is_serving_before_a_check_passed_and_every_service_follows_readiness() {
        let health = Health::new(&["a.A", "b.B"]).await;
        let serving = Ok(ServingStatus::Serving as i32);
        let not_serving = Ok(ServingStatus::NotServing as i32);
        for name in ["", "a.A", "b.B"] {
            assert_eq!(check(&health, name).await, not_serving, "{name}");
        }
        health.publish(Readiness::Ready).await;
        for name in ["", "a.A", "b.B"] {
            assert_eq!(check(&health, name).await, serving, "{name}");
        }
        health
            .publish(Readiness::NotReady("the store is gone".into()))
            .await;
        for name in ["", "a.A", "b.B"] {
            assert_eq!(check(&health, name).await, not_serving, "{name}");
        }
        // A service this process does not serve is not found, never SERVING.
        assert_eq!(check(&health, "c.C").await, Err(tonic::Code::NotFound));
    }

    #[test]
    fn an_opened_file_deleted_or_replaced_fails_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writ.redb");
        std::fs::write(&path, b"a").unwrap();
        let opened = OpenedFile::at(&path).unwrap();
        assert_eq!(opened.check(), Ok(()));
        std::fs::write(&path, b"changed in place").unwrap();
        assert_eq!(opened.check(), Ok(()), "the same file, written");
        let held = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let gone = opened.check().unwrap_err();
        assert!(gone.contains("writ.redb"), "{gone}");
        // Another file at the same path (the held one keeps its inode from reuse).
        std::fs::write(&path, b"b").unwrap();
        let replaced = opened.check().unwrap_err();
        assert!(replaced.contains("replaced"), "{replaced}");
        drop(held);
    }

    #[tokio::test]
    async fn following_publishes_each_check_and_ends_not_serving() {
        let health = Health::new(&["a.A"]).await;
        let (ready_tx, ready_rx) = watch::channel(true);
        let ready = ready_rx.clone();
        let (stop, stopped) = watch::channel(false);
        let follower = health
            .clone()
            .follow(
                move || match *ready.borrow() {
                    true => Readiness::Ready,
                    false => Readiness::NotReady("not yet".into()),
                },
                Some(ready_rx),
                async move {
                    let mut stopped = stopped;
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )
            .await;
        // The first check is published before `follow` returns: a server started next
        // never answers the unchecked status.
        let serving = Ok(ServingStatus::Serving as i32);
        assert_eq!(check(&health, "a.A").await, serving);
        let mut statuses = watch_status(&health, "a.A").await;
        // Each change of `wake` is checked at once, not at the next RECHECK.
        ready_tx.send_replace(false);
        wait_for(&mut statuses, ServingStatus::NotServing).await;
        ready_tx.send_replace(true);
        wait_for(&mut statuses, ServingStatus::Serving).await;
        stop.send_replace(true);
        follower.await.unwrap();
        assert_eq!(
            check(&health, "").await,
            Ok(ServingStatus::NotServing as i32)
        );
    }

    type Statuses = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<
                    Item = Result<tonic_health::pb::HealthCheckResponse, tonic::Status>,
                > + Send,
        >,
    >;

    /// A `Watch` of `name`: every status it takes.
    async fn watch_status(health: &Health, name: &str) -> Statuses {
        let stream = HealthService::from_health_reporter(health.reporter.clone())
            .watch(tonic::Request::new(HealthCheckRequest {
                service: name.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        Box::pin(stream)
    }

    /// Waits (boundedly) until `statuses` reports `want`.
    async fn wait_for(statuses: &mut Statuses, want: ServingStatus) {
        use tokio_stream::StreamExt;
        let wait = async {
            while let Some(answer) = statuses.next().await {
                if answer.unwrap().status == want as i32 {
                    return;
                }
            }
            panic!("the watch ended before {want:?}");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("never {want:?}"));
    }
}
