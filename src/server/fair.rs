//! Slots shared fairly between tenants (docs/multi-tenant.md, "Fairness"). Two uses: the
//! registry's one writer (one slot) and issuance (a few slots, so signatures and commits
//! still overlap). Waiters queue per tenant, and each slot freed passes to the next tenant
//! with a waiter after the one it was last handed to, round-robin; within a tenant, urgent
//! waiters (revocations) first, then first come first served. So one tenant's storm (a
//! thousand incident opens, a thousand CSRs) delays another tenant's call by at most one
//! call of each other busy tenant, never by the whole storm, and a tenant's own revocation
//! does not wait behind its own storm.
//!
//! The order is decided by `Turns`, a pure state machine; [`Fair`] only parks and wakes
//! threads on it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

/// How urgent a waiter is within its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// First come first served.
    Normal,
    /// Before the tenant's normal waiters (a revocation: it closes a window, it must not
    /// wait for a storm of openings).
    Urgent,
}

/// One tenant's waiting tickets, oldest first.
#[derive(Debug, Default)]
struct Waiters {
    urgent: VecDeque<u64>,
    normal: VecDeque<u64>,
}

impl Waiters {
    fn pop(&mut self) -> Option<u64> {
        self.urgent.pop_front().or_else(|| self.normal.pop_front())
    }

    fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.normal.is_empty()
    }
}

/// Whose turn it is: the pure part of [`Fair`].
#[derive(Debug)]
struct Turns {
    slots: usize,
    /// Slots held, or handed and not yet taken.
    held: usize,
    next_ticket: u64,
    /// Waiters by tenant; no empty entry is kept. Someone waits only while every slot is
    /// held: a freed slot is handed on at once.
    waiting: BTreeMap<String, Waiters>,
    /// Tickets handed a slot on a release, until they wake and take it.
    handed: BTreeSet<u64>,
    /// The tenant a slot went to last.
    last: Option<String>,
}

impl Turns {
    fn new(slots: usize) -> Turns {
        Turns {
            slots: slots.max(1),
            held: 0,
            next_ticket: 0,
            waiting: BTreeMap::new(),
            handed: BTreeSet::new(),
            last: None,
        }
    }

    /// Arrives for `tenant`: `Ok(())` if a slot is free and taken at once, else the
    /// ticket to wait on.
    fn arrive(&mut self, tenant: &str, urgency: Urgency) -> Result<(), u64> {
        if self.held < self.slots {
            self.held += 1;
            self.last = Some(tenant.to_owned());
            return Ok(());
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let waiters = self.waiting.entry(tenant.to_owned()).or_default();
        match urgency {
            Urgency::Urgent => waiters.urgent.push_back(ticket),
            Urgency::Normal => waiters.normal.push_back(ticket),
        }
        Err(ticket)
    }

    /// Whether `ticket` was handed a slot; takes it if so.
    fn take(&mut self, ticket: u64) -> bool {
        self.handed.remove(&ticket)
    }

    /// A holder leaves: its slot goes to the first waiter of the next tenant after the
    /// last one served with anyone waiting (round-robin in name order), or becomes free.
    fn release(&mut self) {
        self.held = self.held.saturating_sub(1);
        let after = self.last.clone().unwrap_or_default();
        let next = self
            .waiting
            .range::<String, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .next()
            .or_else(|| self.waiting.iter().next())
            .map(|(tenant, _)| tenant.clone());
        let Some(tenant) = next else {
            return;
        };
        let ticket = self.waiting.get_mut(&tenant).and_then(Waiters::pop);
        if self.waiting.get(&tenant).is_some_and(Waiters::is_empty) {
            self.waiting.remove(&tenant);
        }
        if let Some(ticket) = ticket {
            self.handed.insert(ticket);
            self.held += 1;
        }
        self.last = Some(tenant);
    }
}

/// Slots passed round-robin between tenants (see the module docs).
#[derive(Debug)]
pub struct Fair {
    turns: Mutex<Turns>,
    woken: Condvar,
}

/// Holding a slot of a [`Fair`]; dropping it passes the slot on.
#[derive(Debug)]
pub struct FairGuard<'a> {
    fair: &'a Fair,
}

impl Fair {
    /// `slots` free slots (at least one; one makes it a lock).
    pub fn new(slots: usize) -> Fair {
        Fair {
            turns: Mutex::new(Turns::new(slots)),
            woken: Condvar::new(),
        }
    }

    fn turns(&self) -> MutexGuard<'_, Turns> {
        self.turns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a slot on behalf of `tenant`.
    pub fn enter(&self, tenant: &str, urgency: Urgency) -> FairGuard<'_> {
        let mut turns = self.turns();
        if let Err(ticket) = turns.arrive(tenant, urgency) {
            while !turns.take(ticket) {
                turns = self
                    .woken
                    .wait(turns)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        FairGuard { fair: self }
    }
}

impl Drop for FairGuard<'_> {
    fn drop(&mut self) {
        self.fair.turns().release();
        self.fair.woken.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use Urgency::{Normal, Urgent};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// Releases once and returns the ticket handed the slot, taking it.
    fn pass(t: &mut Turns) -> u64 {
        t.release();
        let handed = *t.handed.first().unwrap();
        assert!(t.take(handed));
        handed
    }

    #[test]
    fn the_lock_passes_round_robin_between_tenants_and_in_order_within_one() {
        let mut t = Turns::new(1);
        assert_eq!(t.arrive("a", Normal), Ok(()));
        // a storms; b and c each ask once, after a's first waiters.
        let a: Vec<u64> = (0..4).map(|_| t.arrive("a", Normal).unwrap_err()).collect();
        let b = t.arrive("b", Normal).unwrap_err();
        let c = t.arrive("c", Normal).unwrap_err();
        let order: Vec<u64> = (0..6).map(|_| pass(&mut t)).collect();
        // a held it: b, c, then a's in arrival order.
        assert_eq!(order, [b, c, a[0], a[1], a[2], a[3]]);
        t.release();
        assert_eq!(t.held, 0, "free once no one waits");
        assert_eq!(t.arrive("z", Normal), Ok(()));
    }

    #[test]
    fn a_waiter_of_another_tenant_goes_before_the_rest_of_a_storm() {
        let mut t = Turns::new(1);
        assert_eq!(t.arrive("a", Normal), Ok(()));
        let a1 = t.arrive("a", Normal).unwrap_err();
        let a2 = t.arrive("a", Normal).unwrap_err();
        assert_eq!(pass(&mut t), a1);
        // b arrives while a's storm goes on: it is next, not after a2.
        let b = t.arrive("b", Normal).unwrap_err();
        assert_eq!(pass(&mut t), b);
        assert_eq!(pass(&mut t), a2);
        assert!(!t.take(a2), "a ticket is taken once");
    }

    #[test]
    fn an_urgent_waiter_goes_before_its_own_tenants_storm_not_before_other_tenants() {
        let mut t = Turns::new(1);
        assert_eq!(t.arrive("b", Normal), Ok(()));
        let a: Vec<u64> = (0..3).map(|_| t.arrive("a", Normal).unwrap_err()).collect();
        let revoke = t.arrive("a", Urgent).unwrap_err();
        let b = t.arrive("b", Normal).unwrap_err();
        let order: Vec<u64> = (0..5).map(|_| pass(&mut t)).collect();
        // b held it: a's turn goes to its revocation first; then b; then a's storm.
        assert_eq!(order, [revoke, b, a[0], a[1], a[2]]);
    }

    #[test]
    fn several_slots_are_taken_at_once_and_a_freed_one_goes_to_the_next_tenant() {
        let mut t = Turns::new(3);
        for _ in 0..3 {
            assert_eq!(t.arrive("a", Normal), Ok(()));
        }
        let a = t.arrive("a", Normal).unwrap_err();
        let b = t.arrive("b", Normal).unwrap_err();
        assert_eq!(pass(&mut t), b, "a held the last slot: b is next");
        assert_eq!(pass(&mut t), a);
        assert_eq!(t.held, 3);
        for _ in 0..3 {
            t.release();
        }
        assert_eq!(t.held, 0);
        assert!(t.handed.is_empty() && t.waiting.is_empty());
    }

    #[test]
    fn zero_slots_means_one() {
        let mut t = Turns::new(0);
        assert_eq!(t.arrive("a", Normal), Ok(()));
        assert!(t.arrive("a", Normal).is_err());
    }

    /// `threads` threads of two tenants enter `fair` 50 times each; never more than
    /// `slots` inside at once, and every entry is served.
    fn hammer(slots: usize, threads: usize) {
        let fair = Arc::new(Fair::new(slots));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (fair, inside, most, done) = (
                    Arc::clone(&fair),
                    Arc::clone(&inside),
                    Arc::clone(&most),
                    Arc::clone(&done),
                );
                std::thread::spawn(move || {
                    for n in 0..50 {
                        let urgency = if n % 7 == 0 { Urgent } else { Normal };
                        let _held = fair.enter(if i % 4 == 0 { "b" } else { "a" }, urgency);
                        let now = inside.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, SeqCst);
                        done.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(done.load(SeqCst), threads * 50);
        assert!(
            most.load(SeqCst) <= slots,
            "{} inside at once",
            most.load(SeqCst)
        );
        let turns = fair.turns();
        assert_eq!(turns.held, 0);
        assert!(turns.handed.is_empty() && turns.waiting.is_empty());
    }

    #[test]
    fn one_slot_is_held_by_one_thread_at_a_time_and_every_waiter_gets_it() {
        hammer(1, 16);
    }

    #[test]
    fn many_slots_are_never_exceeded_and_every_waiter_gets_one() {
        hammer(4, 16);
    }
}
