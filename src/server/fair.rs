//! A lock shared fairly between tenants (docs/multi-tenant.md, "Fairness"): the registry's
//! one writer. Waiters queue per tenant, and on release the lock passes to the next tenant
//! with a waiter after the one that held it last, round-robin; within a tenant, first come
//! first served. So one tenant's storm of changes (a thousand incident opens) delays
//! another tenant's change by at most one change of each other busy tenant, never by the
//! whole storm.
//!
//! The order is decided by `Turns`, a pure state machine; [`FairLock`] only parks and
//! wakes threads on it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Whose turn it is: the pure part of [`FairLock`].
#[derive(Debug, Default)]
struct Turns {
    /// Someone holds the lock (or was just handed it).
    held: bool,
    next_ticket: u64,
    /// Waiting tickets by tenant, oldest first; no empty queue is kept.
    waiting: BTreeMap<String, VecDeque<u64>>,
    /// The ticket the lock was handed to on the last release, until it wakes and takes it.
    handed: Option<u64>,
    /// The tenant that held the lock last.
    last: Option<String>,
}

impl Turns {
    /// Arrives for `tenant`: `Ok(())` if the lock is free and taken at once, else the
    /// ticket to wait on.
    fn arrive(&mut self, tenant: &str) -> Result<(), u64> {
        if !self.held {
            self.held = true;
            self.last = Some(tenant.to_owned());
            return Ok(());
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.waiting
            .entry(tenant.to_owned())
            .or_default()
            .push_back(ticket);
        Err(ticket)
    }

    /// Whether `ticket` was handed the lock; takes it if so.
    fn take(&mut self, ticket: u64) -> bool {
        if self.handed == Some(ticket) {
            self.handed = None;
            return true;
        }
        false
    }

    /// The holder leaves: the lock goes to the oldest waiter of the next tenant after the
    /// last holder's with anyone waiting (round-robin in name order), or becomes free.
    fn release(&mut self) {
        let after = self.last.clone().unwrap_or_default();
        let next = self
            .waiting
            .range::<String, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .next()
            .or_else(|| self.waiting.iter().next())
            .map(|(tenant, _)| tenant.clone());
        let Some(tenant) = next else {
            self.held = false;
            return;
        };
        let queue = self.waiting.get_mut(&tenant);
        let ticket = queue.and_then(VecDeque::pop_front);
        if self.waiting.get(&tenant).is_some_and(VecDeque::is_empty) {
            self.waiting.remove(&tenant);
        }
        self.handed = ticket;
        self.held = ticket.is_some();
        self.last = Some(tenant);
    }
}

/// A mutual-exclusion lock passed round-robin between tenants (see the module docs).
#[derive(Debug, Default)]
pub struct FairLock {
    turns: Mutex<Turns>,
    woken: Condvar,
}

/// Holding a [`FairLock`]; releasing it passes it on.
#[derive(Debug)]
pub struct FairGuard<'a> {
    lock: &'a FairLock,
}

impl FairLock {
    /// A free lock.
    pub fn new() -> FairLock {
        FairLock::default()
    }

    fn turns(&self) -> MutexGuard<'_, Turns> {
        self.turns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for the lock on behalf of `tenant`.
    pub fn lock(&self, tenant: &str) -> FairGuard<'_> {
        let mut turns = self.turns();
        if let Err(ticket) = turns.arrive(tenant) {
            while !turns.take(ticket) {
                turns = self
                    .woken
                    .wait(turns)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        FairGuard { lock: self }
    }
}

impl Drop for FairGuard<'_> {
    fn drop(&mut self) {
        self.lock.turns().release();
        self.lock.woken.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_lock_passes_round_robin_between_tenants_and_in_order_within_one() {
        let mut t = Turns::default();
        assert_eq!(t.arrive("a"), Ok(()));
        // a storms; b and c each ask once, after a's first waiters.
        let a: Vec<u64> = (0..4).map(|_| t.arrive("a").unwrap_err()).collect();
        let b = t.arrive("b").unwrap_err();
        let c = t.arrive("c").unwrap_err();
        let mut order = Vec::new();
        for _ in 0..6 {
            t.release();
            let handed = t.handed.unwrap();
            assert!(t.take(handed));
            order.push(handed);
        }
        // a held it: b, c, then a's in arrival order.
        assert_eq!(order, [b, c, a[0], a[1], a[2], a[3]]);
        t.release();
        assert!(!t.held, "free once no one waits");
        assert_eq!(t.arrive("z"), Ok(()));
    }

    #[test]
    fn a_waiter_of_another_tenant_goes_before_the_rest_of_a_storm() {
        let mut t = Turns::default();
        assert_eq!(t.arrive("a"), Ok(()));
        let a1 = t.arrive("a").unwrap_err();
        let a2 = t.arrive("a").unwrap_err();
        t.release();
        assert!(t.take(a1));
        // b arrives while a's storm goes on: it is next, not after a2.
        let b = t.arrive("b").unwrap_err();
        t.release();
        assert!(t.take(b));
        t.release();
        assert!(t.take(a2));
        assert!(!t.take(a2), "a ticket is taken once");
    }

    #[test]
    fn threads_hold_it_one_at_a_time_and_every_waiter_gets_it() {
        let lock = Arc::new(FairLock::new());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (lock, inside, done) =
                    (Arc::clone(&lock), Arc::clone(&inside), Arc::clone(&done));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _held = lock.lock(if i % 4 == 0 { "b" } else { "a" });
                        let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(now, 0, "two holders at once");
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 16 * 50);
        assert!(!lock.turns().held);
    }
}
