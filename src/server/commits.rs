//! Group commit of policy changes (docs/architecture.md, "A change, in a storm").
//!
//! The registry decides changes one at a time, each on the policy the one before it
//! left, but no longer waits for a change to be durable before deciding the next. A
//! decided change is queued here with its submitted audit records, the rows it writes
//! and the policy after it. Then its caller waits to lead a commit: the leader takes
//! every change queued so far, waits for their records (one audit group commit holds
//! many), writes all their rows in one store transaction, publishes the last policy
//! once, and tells each caller. So a thousand concurrent opens share a few fsyncs and a
//! few publications instead of making two fsyncs and one publication each.
//!
//! What does not change: a change's records are durable before its rows are written,
//! and its rows before the policy that holds it is published (audited before visible);
//! a caller returns only once its change is published or refused.
//!
//! A failure refuses the change it struck and every change decided after it (each was
//! decided on a policy that now never exists): they are failed, the next change is
//! decided on the published policy again, and a change being decided meanwhile is
//! refused when it is queued (its epoch is over). Records of refused changes may be
//! durable, as a change whose store write failed always left its record: the log says
//! what was decided, the store what took effect (docs/threat-model.md).

use crate::audit::AuditError;
use crate::audit::log::Pending;
use crate::store::{StoreError, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a queued change was not made. Every caller of a failed commit gets one, so it is
/// a description, not the original error (the leader logs that).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Its audit records (or an earlier change's) could not be made durable.
    Audit(String),
    /// The store refused the commit's rows.
    Store(String),
}

impl From<Failure> for AuditError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Audit(why) | Failure::Store(why) => AuditError::Unavailable(why),
        }
    }
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Audit(why) | Failure::Store(why) => StoreError::Db(why),
        }
    }
}

/// Which run of decisions a change was decided in: a failure ends the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch(u64);

/// A queued change's answer, once its commit is over.
pub struct Ticket(Receiver<Result<(), Failure>>);

struct Decided<S> {
    records: Vec<Pending<()>>,
    writes: Vec<Write>,
    /// The policy after it; `None` when it left the policy as it was.
    policy: Option<Arc<S>>,
    done: SyncSender<Result<(), Failure>>,
}

impl<S> Decided<S> {
    fn answer(self, result: Result<(), Failure>) {
        // The caller may have gone (a panicked thread): nothing to tell then.
        let _ = self.done.send(result);
    }
}

struct State<S> {
    /// The policy the last queued change left, which the next is decided on; `None`:
    /// the published one.
    tip: Option<Arc<S>>,
    queue: Vec<Decided<S>>,
    epoch: u64,
}

/// Decided changes waiting for their commit, and the one commit under way.
pub struct Commits<S> {
    state: Mutex<State<S>>,
    /// Held by the caller leading a commit.
    leader: Mutex<()>,
}

impl<S> Default for Commits<S> {
    fn default() -> Self {
        Commits {
            state: Mutex::new(State {
                tip: None,
                queue: Vec::new(),
                epoch: 0,
            }),
            leader: Mutex::new(()),
        }
    }
}

/// What a commit does with what it takes: the I/O, passed in.
pub trait Sinks<S> {
    /// Writes rows in one durable transaction.
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError>;
    /// Publishes a policy.
    fn publish(&self, policy: Arc<S>);
}

impl<S> Commits<S> {
    /// The policy to decide the next change on (the last queued change's, or
    /// `published`), and the run it belongs to. The caller holds the registry's writer.
    pub fn base(&self, published: impl FnOnce() -> Arc<S>) -> (Arc<S>, Epoch) {
        let state = lock(&self.state);
        let base = state.tip.clone().unwrap_or_else(published);
        (base, Epoch(state.epoch))
    }

    /// Queues a change decided in run `epoch`: its submitted `records`, its `writes`
    /// and the `policy` after it (`None`: unchanged). `None` when the run is over (an
    /// earlier change failed while this one was decided): it is refused, and its
    /// records say only what was decided.
    pub fn queue(
        &self,
        epoch: Epoch,
        records: Vec<Pending<()>>,
        writes: Vec<Write>,
        policy: Option<Arc<S>>,
    ) -> Option<Ticket> {
        let mut state = lock(&self.state);
        if state.epoch != epoch.0 {
            return None;
        }
        if let Some(policy) = &policy {
            state.tip = Some(Arc::clone(policy));
        }
        let (done, answer) = sync_channel(1);
        state.queue.push(Decided {
            records,
            writes,
            policy,
            done,
        });
        Some(Ticket(answer))
    }

    /// Waits until the change of `ticket` is committed or refused, leading commits
    /// while it is not.
    pub fn wait(&self, ticket: &Ticket, sinks: &impl Sinks<S>) -> Result<(), Failure> {
        loop {
            if let Ok(answer) = ticket.0.try_recv() {
                return answer;
            }
            let _leading = lock(&self.leader);
            // A leader before us may have committed it while we waited for the lock.
            if let Ok(answer) = ticket.0.try_recv() {
                return answer;
            }
            let batch = std::mem::take(&mut lock(&self.state).queue);
            self.commit(batch, sinks);
        }
    }

    /// Commits everything queued: afterwards the store holds every decided change. The
    /// caller holds the registry's writer, so nothing is queued meanwhile.
    pub fn drain(&self, sinks: &impl Sinks<S>) {
        let _leading = lock(&self.leader);
        let batch = std::mem::take(&mut lock(&self.state).queue);
        self.commit(batch, sinks);
    }

    fn commit(&self, batch: Vec<Decided<S>>, sinks: &impl Sinks<S>) {
        if batch.is_empty() {
            return;
        }
        let mut made = Vec::with_capacity(batch.len());
        let mut failure = None;
        let mut batch = batch.into_iter();
        // Records are durable in index order, so this waits for the commit (or the
        // few) that holds them all.
        for mut change in batch.by_ref() {
            let durable = std::mem::take(&mut change.records)
                .into_iter()
                .try_for_each(|r| r.wait().map(drop));
            match durable {
                Ok(()) => made.push(change),
                Err(e) => {
                    tracing::error!(error = %e, "a policy change could not be audited; it and the changes decided after it are refused");
                    let why = Failure::Audit(format!("the change could not be audited: {e}"));
                    change.answer(Err(why.clone()));
                    failure = Some(why);
                    break;
                }
            }
        }
        if let Some(why) = &failure {
            for later in batch {
                later.answer(Err(after(why)));
            }
        }
        let writes: Vec<Write> = made
            .iter_mut()
            .flat_map(|c| std::mem::take(&mut c.writes))
            .collect();
        match sinks.write(writes) {
            Ok(()) => {
                if let Some(policy) = made.iter().rev().find_map(|c| c.policy.clone()) {
                    sinks.publish(policy);
                }
                for change in made {
                    change.answer(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "policy changes could not be written; they and the changes decided after them are refused");
                let why = Failure::Store(format!("the change could not be written: {e}"));
                for change in made {
                    change.answer(Err(why.clone()));
                }
                failure = Some(why);
            }
        }
        if let Some(why) = failure {
            // What was decided after the failure was decided on a policy that never
            // exists: refuse it, and decide the next change on the published policy.
            let mut state = lock(&self.state);
            state.epoch += 1;
            state.tip = None;
            for later in std::mem::take(&mut state.queue) {
                later.answer(Err(after(&why)));
            }
        }
    }
}

/// The failure given to a change decided after the one that failed.
fn after(why: &Failure) -> Failure {
    let text = |w: &str| format!("a change decided before this one was not made ({w})");
    match why {
        Failure::Audit(w) => Failure::Audit(text(w)),
        Failure::Store(w) => Failure::Store(text(w)),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Kind, Record};
    use std::cell::RefCell;

    struct Fixture {
        _dir: tempfile::TempDir,
        log: AuditLog,
        commits: Commits<u32>,
        written: RefCell<Vec<String>>,
        published: RefCell<Vec<u32>>,
        store_fails: std::cell::Cell<bool>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let log = AuditLog::open(&dir.path().join("audit.redb"), dir.path(), "test").unwrap();
            Fixture {
                _dir: dir,
                log,
                commits: Commits::default(),
                written: RefCell::new(Vec::new()),
                published: RefCell::new(Vec::new()),
                store_fails: std::cell::Cell::new(false),
            }
        }

        /// Decides change `n`: one record, one row, policy `n`.
        fn decide(&self, n: u32) -> Option<Ticket> {
            let (base, epoch) = self.commits.base(|| Arc::new(0));
            assert!(*base < n, "change {n} decided on {base}");
            let record = Record::new(0, Kind::AdminChange, "test", "tester");
            let pending = self.log.submit(&record).unwrap();
            let row = Write::Delete {
                table: crate::store::Table::Profiles,
                key: format!("row-{n}"),
            };
            self.commits
                .queue(epoch, vec![pending], vec![row], Some(Arc::new(n)))
        }

        fn wait(&self, ticket: &Ticket) -> Result<(), Failure> {
            self.commits.wait(ticket, self)
        }
    }

    impl Sinks<u32> for Fixture {
        fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
            if self.store_fails.get() {
                return Err(StoreError::Db("disk full".into()));
            }
            for w in writes {
                if let Write::Delete { key, .. } = w {
                    self.written.borrow_mut().push(key);
                }
            }
            Ok(())
        }

        fn publish(&self, policy: Arc<u32>) {
            self.published.borrow_mut().push(*policy);
        }
    }

    #[test]
    fn changes_decided_before_a_commit_share_it_and_publish_once() {
        let f = Fixture::new();
        let tickets: Vec<_> = (1..=3).map(|n| f.decide(n).unwrap()).collect();
        // The first waiter leads the commit of all three.
        f.wait(&tickets[0]).unwrap();
        assert_eq!(*f.written.borrow(), ["row-1", "row-2", "row-3"]);
        assert_eq!(
            *f.published.borrow(),
            [3],
            "one publication, of the last policy"
        );
        for t in &tickets[1..] {
            assert_eq!(t.0.try_recv().unwrap(), Ok(()));
        }
        // The next change is decided on the last one.
        let t = f.decide(4).unwrap();
        f.wait(&t).unwrap();
        assert_eq!(*f.published.borrow(), [3, 4]);
    }

    #[test]
    fn a_refused_audit_refuses_the_change_and_every_one_decided_after_it() {
        let f = Fixture::new();
        let first = f.decide(1).unwrap();
        f.wait(&first).unwrap();
        f.log.fail_commits(true);
        let second = f.decide(2).unwrap();
        let third = f.decide(3).unwrap();
        assert!(matches!(f.wait(&second), Err(Failure::Audit(_))));
        assert!(matches!(
            third.0.try_recv().unwrap(),
            Err(Failure::Audit(_))
        ));
        assert_eq!(
            *f.written.borrow(),
            ["row-1"],
            "nothing written after the failure"
        );
        assert_eq!(*f.published.borrow(), [1]);
        // The next change is decided on the published policy again, and is made.
        f.log.fail_commits(false);
        let (base, _) = f.commits.base(|| Arc::new(1));
        assert_eq!(*base, 1);
        let fourth = f.decide(4).unwrap();
        f.wait(&fourth).unwrap();
        assert_eq!(*f.written.borrow(), ["row-1", "row-4"]);
    }

    #[test]
    fn a_refused_store_write_refuses_the_commit_and_what_was_decided_on_it() {
        let f = Fixture::new();
        let first = f.decide(1).unwrap();
        let second = f.decide(2).unwrap();
        f.store_fails.set(true);
        assert!(matches!(f.wait(&first), Err(Failure::Store(_))));
        assert!(matches!(
            second.0.try_recv().unwrap(),
            Err(Failure::Store(_))
        ));
        assert!(f.published.borrow().is_empty(), "nothing published");
        f.store_fails.set(false);
        let (base, _) = f.commits.base(|| Arc::new(0));
        assert_eq!(*base, 0, "decided on the published policy again");
    }

    #[test]
    fn a_change_being_decided_when_a_commit_fails_is_refused_when_queued() {
        let f = Fixture::new();
        let first = f.decide(1).unwrap();
        // A change is being decided on policy 1 ...
        let (base, epoch) = f.commits.base(|| Arc::new(0));
        assert_eq!(*base, 1);
        // ... when the commit of 1 fails.
        f.store_fails.set(true);
        assert!(f.wait(&first).is_err());
        assert!(
            f.commits
                .queue(epoch, Vec::new(), Vec::new(), Some(Arc::new(2)))
                .is_none(),
            "a change decided on a policy that never existed is refused"
        );
    }
}
