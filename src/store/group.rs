//! Group commit for issued SVIDs' rows: callers that arrive while a commit is under way
//! queue their writes, and the next commit takes them all, one durable transaction (one
//! fsync) for the group. Issuance is audited the same way (`audit::log`), so a storm of
//! CSRs costs a commit per group, not per CSR, and another tenant's issuance waits for
//! one group, not for every CSR before it (docs/performance.md).
//!
//! Leader and followers: the first caller to find no commit under way commits whatever is
//! queued; the others wait for the commit that took their writes, or take the lead when
//! the one before theirs ends.

use super::{StoreError, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// One caller's writes and where its commit's outcome goes.
type Queued = (Vec<Write>, Arc<OnceLock<Result<(), String>>>);

/// Commits queued writes in groups (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    queued: Vec<Queued>,
    committing: bool,
}

impl GroupCommit {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits `writes` with whatever else is queued, through `commit`; returns once they
    /// are durable (or the group's commit failed: then every caller in it gets the error).
    pub(crate) fn write(
        &self,
        writes: Vec<Write>,
        commit: impl FnOnce(Vec<Write>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // A caller leads at most one commit: the one that takes its own writes.
        let mut commit = Some(commit);
        let outcome = Arc::new(OnceLock::new());
        let mut state = self.state();
        state.queued.push((writes, Arc::clone(&outcome)));
        loop {
            if let Some(result) = outcome.get() {
                return result.clone().map_err(StoreError::Db);
            }
            if !state.committing
                && let Some(commit) = commit.take()
            {
                state.committing = true;
                let group = std::mem::take(&mut state.queued);
                drop(state);
                let (writes, outcomes): (Vec<Vec<Write>>, Vec<_>) = group.into_iter().unzip();
                let result = commit(writes.into_iter().flatten().collect()).map_err(|e| match e {
                    StoreError::Db(why) => why,
                    other => other.to_string(),
                });
                for o in outcomes {
                    let _ = o.set(result.clone());
                }
                state = self.state();
                state.committing = false;
                self.done.notify_all();
                continue;
            }
            state = self
                .done
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::Table;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    fn row(n: usize) -> Write {
        Write::Put {
            table: Table::Svids,
            key: n.to_string(),
            body: Vec::new(),
        }
    }

    #[test]
    fn callers_during_a_commit_share_the_next_one_and_every_write_is_committed_once() {
        let group = Arc::new(GroupCommit::default());
        let commits = Arc::new(AtomicUsize::new(0));
        let committed = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (group, commits, committed) = (
                    Arc::clone(&group),
                    Arc::clone(&commits),
                    Arc::clone(&committed),
                );
                std::thread::spawn(move || {
                    for i in 0..20 {
                        group
                            .write(vec![row(t * 100 + i)], |writes| {
                                commits.fetch_add(1, SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                committed.lock().unwrap().extend(writes);
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut keys: Vec<String> = committed
            .lock()
            .unwrap()
            .iter()
            .map(|w| match w {
                Write::Put { key, .. } => key.clone(),
                Write::Delete { key, .. } => key.clone(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 16 * 20, "every write committed, once");
        assert!(
            commits.load(SeqCst) < 16 * 20,
            "callers shared commits ({} commits)",
            commits.load(SeqCst)
        );
    }

    #[test]
    fn a_failed_commit_fails_every_caller_in_it_and_the_next_group_commits() {
        let group = GroupCommit::default();
        let err = group.write(vec![row(1)], |_| Err(StoreError::Db("disk full".into())));
        assert!(matches!(err, Err(StoreError::Db(e)) if e == "disk full"));
        let mut seen = Vec::new();
        group
            .write(vec![row(2)], |w| {
                seen.extend(w);
                Ok(())
            })
            .unwrap();
        assert_eq!(seen.len(), 1, "the failed group's writes are not retried");
    }
}
