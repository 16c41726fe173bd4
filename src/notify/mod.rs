//! Approver notifications (docs/notifications.md): when a remediation grant is requested,
//! approved, denied, or nears the end of its window, writ posts to the configured
//! outbound webhooks (`[[notify]]`), in Slack's incoming-webhook shape or its own JSON.
//!
//! * [`config`]: `[[notify]]` blocks → checked targets; the URL is a secret.
//! * [`diff`]: what to say, from two consecutive policy snapshots (pure).
//! * [`body`]: the Slack and JSON bodies (pure; caller text escaped and bounded).
//! * [`deliver`]: HTTP/1.1 POSTs, retried with backoff, bounded, with counters.
//!
//! [`run`] watches the registry's published policy (so every way a grant changes is
//! covered, and no request handler ever waits on a webhook), queues bodies in a bounded
//! queue per target, and one worker per target posts them in order.
//!
//! Must never: block or fail a request, carry an approve link or token (approving stays
//! an authenticated operator's command, which the body spells out), or log a webhook
//! URL's path or a body.

pub mod body;
pub mod config;
pub mod deliver;
pub mod diff;

pub use config::{Format, RawTarget, Target};
pub use deliver::{CounterValues, Counters, RetryPolicy};

use crate::policy::PolicySnapshot;
use crate::throttle::Throttle;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Bodies waiting per target; when full, new ones are dropped (and counted).
pub const QUEUE_LEN: usize = 1024;
/// At most one "queue full" or "delivery failed" line per target per this long.
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// What happened to a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// Filed: waiting for approvals.
    Requested,
    /// Approved: active for its window.
    Approved,
    /// Denied by an approver.
    Denied,
    /// Active, its window ending within the target's `expiring_before_secs`.
    Expiring,
}

impl Event {
    /// Every event.
    pub const ALL: [Event; 4] = [
        Event::Requested,
        Event::Approved,
        Event::Denied,
        Event::Expiring,
    ];

    /// As configured and as the JSON body's `event`.
    pub fn name(self) -> &'static str {
        match self {
            Event::Requested => "requested",
            Event::Approved => "approved",
            Event::Denied => "denied",
            Event::Expiring => "expiring",
        }
    }
}

/// Every target's counters, by name, in configuration order.
#[derive(Debug, Default)]
pub struct Stats {
    targets: Vec<(String, Arc<Counters>)>,
}

impl Stats {
    /// Zeroed counters for `targets`.
    pub fn for_targets(targets: &[Target]) -> Stats {
        Stats {
            targets: targets
                .iter()
                .map(|t| (t.name.clone(), Arc::new(Counters::default())))
                .collect(),
        }
    }

    /// Each target's name and counters.
    pub fn targets(&self) -> impl Iterator<Item = (&str, &Arc<Counters>)> {
        self.targets.iter().map(|(name, c)| (name.as_str(), c))
    }

    /// The counters of the target `name`.
    pub fn target(&self, name: &str) -> Option<&Arc<Counters>> {
        self.targets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, counters)| counters)
    }
}

/// The body of `notification` for `format`, from `policy`; `None` if the grant is gone.
pub fn render(
    format: Format,
    notification: &diff::Notification,
    policy: &PolicySnapshot,
    at: i64,
) -> Option<Bytes> {
    let (tenant, id) = &notification.grant;
    let grant = policy.grant(tenant, id)?;
    let incident = policy.incident(tenant, &grant.incident);
    let facts = body::Facts {
        event: notification.event,
        grant,
        incident,
        approvals_needed: incident
            .map(|i| crate::policy::grant::required_approvals(&policy.rules, i.severity, grant)),
        at,
    };
    let value = match format {
        Format::Slack => body::slack(&facts),
        Format::Json => body::json(&facts),
    };
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

/// One target's queue, as the watcher sees it.
struct Queue {
    name: String,
    format: Format,
    tracker: diff::Tracker,
    sender: mpsc::Sender<Bytes>,
    counters: Arc<Counters>,
    dropped_log: Throttle,
}

impl Queue {
    /// Queues `body` without waiting; counts and (rate-limited) logs a drop.
    fn offer(&self, body: Bytes, event: Event) {
        if self.sender.try_send(body).is_err() {
            self.counters.count_dropped();
            if let Some(suppressed) = self.dropped_log.allow() {
                tracing::warn!(target_name = %self.name, event = event.name(), suppressed, "notification queue full; notification dropped");
            }
        }
    }
}

/// Aborts the workers when the watcher ends, however it ends.
struct Workers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &self.0 {
            worker.abort();
        }
    }
}

/// Posts the bodies of one target's queue, in order, one at a time.
async fn worker(
    target: Target,
    mut queue: mpsc::Receiver<Bytes>,
    counters: Arc<Counters>,
    policy: RetryPolicy,
) {
    let failed_log = Throttle::new(LOG_WINDOW);
    while let Some(body) = queue.recv().await {
        let outcome =
            deliver::deliver(&target.name, &target.endpoint, body, &policy, &counters).await;
        if !matches!(outcome, deliver::Outcome::Status(200..=299))
            && let Some(suppressed) = failed_log.allow()
        {
            tracing::error!(target_name = %target.name, at = %target.endpoint.shown(), outcome = %outcome, suppressed, "notification not delivered; giving up on it");
        }
    }
}

/// Watches `policy` and posts notifications to `targets` until `shutdown` resolves
/// (queued ones not yet posted are then dropped). `now` tells the time in seconds since
/// the epoch. The first snapshot is the baseline: only changes after it are said, but
/// active grants in it may still be warned of as expiring.
pub async fn run(
    targets: Vec<Target>,
    stats: Arc<Stats>,
    mut policy: watch::Receiver<Arc<PolicySnapshot>>,
    now: impl Fn() -> i64,
    retry: RetryPolicy,
    shutdown: impl Future<Output = ()>,
) {
    if targets.is_empty() {
        return;
    }
    tokio::pin!(shutdown);
    let mut queues = Vec::with_capacity(targets.len());
    let mut workers = Workers(Vec::with_capacity(targets.len()));
    for target in targets {
        let counters = stats
            .target(&target.name)
            .cloned()
            .unwrap_or_else(|| Arc::new(Counters::default()));
        let (sender, receiver) = mpsc::channel(QUEUE_LEN);
        tracing::info!(target_name = %target.name, at = %target.endpoint.shown(), format = ?target.format, events = ?target.interest.events, "posting grant notifications");
        queues.push(Queue {
            name: target.name.clone(),
            format: target.format,
            tracker: diff::Tracker::new(target.interest.clone()),
            sender,
            counters: Arc::clone(&counters),
            dropped_log: Throttle::new(LOG_WINDOW),
        });
        workers.0.push(tokio::spawn(worker(
            target,
            receiver,
            counters,
            retry.clone(),
        )));
    }
    let mut last = Arc::clone(&policy.borrow_and_update());
    loop {
        let current = Arc::clone(&policy.borrow_and_update());
        let at = now();
        for queue in &mut queues {
            for notification in queue.tracker.observe(&last.grants, &current.grants, at) {
                if let Some(body) = render(queue.format, &notification, &current, at) {
                    queue.offer(body, notification.event);
                }
            }
        }
        last = current;
        let wake = queues
            .iter()
            .filter_map(|q| q.tracker.next_wake(&last.grants, at))
            .min();
        let sleep = match wake {
            // A little after the second it is due, so the clock has reached it.
            Some(due) => Duration::from_secs(u64::try_from(due - at).unwrap_or(0))
                .saturating_add(Duration::from_millis(50)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            () = &mut shutdown => break,
            changed = policy.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(sleep) => {}
        }
    }
    drop(workers);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (sender, mut receiver) = mpsc::channel(2);
        let queue = Queue {
            name: "t".into(),
            format: Format::Json,
            tracker: diff::Tracker::default(),
            sender,
            counters: Arc::new(Counters::default()),
            dropped_log: Throttle::new(LOG_WINDOW),
        };
        for n in 0..5u8 {
            queue.offer(Bytes::from(vec![n]), Event::Requested);
        }
        assert_eq!(queue.counters.values().dropped, 3);
        assert_eq!(receiver.try_recv().unwrap(), Bytes::from(vec![0]));
        assert_eq!(receiver.try_recv().unwrap(), Bytes::from(vec![1]));
        assert!(
            receiver.try_recv().is_err(),
            "the first ones are kept, in order"
        );
    }
}
