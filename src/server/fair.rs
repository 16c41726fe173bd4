//! Slots shared fairly between tenants (docs/multi-tenant.md, "Fairness"). Two uses:
//!
//! * the registry's one writer, a strict lock ([`Fair::lock`]): one holder at a time;
//! * issuance ([`Fair::shared`]): a tenant alone takes as many slots as it has callers (a
//!   storm's signatures and commits overlap: nothing is held back for no one), but while
//!   another tenant is active (holding, waiting, or done less than [`LINGER`] ago) at most
//!   `slots` are held in all, and a tenant holding none is let in at once. So a storm
//!   drains down to the cap when another tenant shows up, and that tenant's call waits
//!   behind a few of the storm's, not all of them.
//!
//! Waiters queue per tenant, and freed slots pass to the next tenant with a waiter after
//! the one served last, round-robin; within a tenant, urgent waiters (revocations) first,
//! then first come first served. So one tenant's storm (a thousand incident opens, a
//! thousand CSRs) delays another tenant's call by at most a call of each busy tenant,
//! never by the whole storm, and a tenant's own revocation does not wait behind its own
//! storm.
//!
//! The order is decided by `Turns`, a pure state machine (time passed in); [`Fair`] only
//! parks and wakes threads on it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a tenant counts as active after its last call ended: another tenant's
/// one-at-a-time calls keep a storm capped between them.
pub const LINGER: Duration = Duration::from_secs(1);

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
    /// A lock: never more than `slots` held, whoever asks.
    strict: bool,
    /// Slots held, or handed and not yet taken, in all and by tenant (no zero kept).
    held: usize,
    held_by: BTreeMap<String, usize>,
    next_ticket: u64,
    /// Waiters by tenant; no empty entry is kept.
    waiting: BTreeMap<String, Waiters>,
    /// Tickets handed a slot on a release, until they wake and take it.
    handed: std::collections::BTreeSet<u64>,
    /// The tenant a slot went to last.
    last: Option<String>,
    /// When each tenant's last call ended (kept for [`LINGER`]).
    ended: BTreeMap<String, Instant>,
}

impl Turns {
    fn new(slots: usize, strict: bool) -> Turns {
        Turns {
            slots: slots.max(1),
            strict,
            held: 0,
            held_by: BTreeMap::new(),
            next_ticket: 0,
            waiting: BTreeMap::new(),
            handed: std::collections::BTreeSet::new(),
            last: None,
            ended: BTreeMap::new(),
        }
    }

    fn holds(&self, tenant: &str) -> usize {
        self.held_by.get(tenant).copied().unwrap_or(0)
    }

    /// Whether a tenant other than `tenant` holds, waits, or ended a call within
    /// [`LINGER`] of `now`.
    fn others_active(&self, tenant: &str, now: Instant) -> bool {
        self.held_by.keys().any(|t| t != tenant)
            || self.waiting.keys().any(|t| t != tenant)
            || self
                .ended
                .iter()
                .any(|(t, at)| t != tenant && now.saturating_duration_since(*at) < LINGER)
    }

    /// Whether `tenant` may hold one more slot now.
    fn may_take(&self, tenant: &str, now: Instant) -> bool {
        if self.held < self.slots {
            return true;
        }
        !self.strict && (self.holds(tenant) == 0 || !self.others_active(tenant, now))
    }

    fn grant(&mut self, tenant: &str) {
        self.held += 1;
        *self.held_by.entry(tenant.to_owned()).or_default() += 1;
        self.last = Some(tenant.to_owned());
    }

    /// Arrives for `tenant`: `Ok(())` if it takes a slot at once, else the ticket to wait
    /// on. Behind its own tenant's waiters, always; behind others' only if it holds some.
    fn arrive(&mut self, tenant: &str, urgency: Urgency, now: Instant) -> Result<(), u64> {
        let queue_ahead = match self.strict || self.holds(tenant) > 0 {
            true => !self.waiting.is_empty(),
            false => self.waiting.contains_key(tenant),
        };
        if !queue_ahead && self.may_take(tenant, now) {
            self.grant(tenant);
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

    /// A holder of `tenant` leaves at `now`: freed slots go to the first waiter of each
    /// next tenant after the last one served (round-robin in name order) that may take
    /// one, for as long as any may.
    fn release(&mut self, tenant: &str, now: Instant) {
        self.held = self.held.saturating_sub(1);
        if let Some(n) = self.held_by.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.held_by.remove(tenant);
            }
        }
        self.ended.insert(tenant.to_owned(), now);
        self.ended
            .retain(|_, at| now.saturating_duration_since(*at) < LINGER);
        while let Some(next) = self.next_eligible(now) {
            let ticket = self.waiting.get_mut(&next).and_then(Waiters::pop);
            if self.waiting.get(&next).is_some_and(Waiters::is_empty) {
                self.waiting.remove(&next);
            }
            if let Some(ticket) = ticket {
                self.handed.insert(ticket);
                self.grant(&next);
            }
        }
    }

    /// The next tenant round-robin after the last one served that has a waiter who may
    /// take a slot now.
    fn next_eligible(&self, now: Instant) -> Option<String> {
        let after = self.last.clone().unwrap_or_default();
        let (later, earlier): (Vec<&String>, Vec<&String>) =
            self.waiting.keys().partition(|t| **t > after);
        later
            .into_iter()
            .chain(earlier)
            .find(|t| self.may_take(t, now))
            .cloned()
    }
}

/// How many condition variables waiters are spread over.
const BELLS: usize = 64;

/// Slots passed round-robin between tenants (see the module docs).
#[derive(Debug)]
pub struct Fair {
    turns: Mutex<Turns>,
    /// A waiter sleeps on the bell of its ticket (modulo [`BELLS`]); a release rings
    /// the bells of the tickets it handed slots to. So a handoff wakes the waiter it
    /// serves and the few sharing its bell, not all of a storm's (which cost a thousand
    /// wakeups per change when one condition variable was shared).
    bells: [Condvar; BELLS],
}

/// Holding a slot of a [`Fair`]; dropping it passes the slot on.
#[derive(Debug)]
pub struct FairGuard<'a> {
    fair: &'a Fair,
    tenant: String,
}

impl Fair {
    /// A lock: one holder at a time, passed round-robin between tenants.
    pub fn lock() -> Fair {
        Fair::with(Turns::new(1, true))
    }

    /// Slots shared between tenants: uncapped for a tenant alone, `slots` (at least
    /// one) in all while several are active (see the module docs).
    pub fn shared(slots: usize) -> Fair {
        Fair::with(Turns::new(slots, false))
    }

    fn with(turns: Turns) -> Fair {
        Fair {
            turns: Mutex::new(turns),
            bells: std::array::from_fn(|_| Condvar::new()),
        }
    }

    fn bell(&self, ticket: u64) -> &Condvar {
        &self.bells[(ticket % BELLS as u64) as usize]
    }

    fn turns(&self) -> MutexGuard<'_, Turns> {
        self.turns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a slot on behalf of `tenant`.
    pub fn enter(&self, tenant: &str, urgency: Urgency) -> FairGuard<'_> {
        let mut turns = self.turns();
        if let Err(ticket) = turns.arrive(tenant, urgency, Instant::now()) {
            while !turns.take(ticket) {
                turns = self
                    .bell(ticket)
                    .wait(turns)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        FairGuard {
            fair: self,
            tenant: tenant.to_owned(),
        }
    }
}

impl Drop for FairGuard<'_> {
    fn drop(&mut self) {
        let mut turns = self.fair.turns();
        turns.release(&self.tenant, Instant::now());
        for ticket in &turns.handed {
            self.fair.bell(*ticket).notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use Urgency::{Normal, Urgent};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// The holder of `from` releases at `now`; returns the one ticket handed a slot (taken).
    fn pass(t: &mut Turns, from: &str, now: Instant) -> u64 {
        t.release(from, now);
        assert_eq!(t.handed.len(), 1, "one slot freed, one handed");
        let handed = *t.handed.first().unwrap();
        assert!(t.take(handed));
        handed
    }

    /// Passes a strict lock around `n` times, each holder releasing in turn.
    fn pass_around(
        t: &mut Turns,
        first: &str,
        n: usize,
        who: &dyn Fn(u64) -> &'static str,
    ) -> Vec<u64> {
        let now = Instant::now();
        let mut holder = first.to_owned();
        (0..n)
            .map(|_| {
                let ticket = pass(t, &holder, now);
                holder = who(ticket).to_owned();
                ticket
            })
            .collect()
    }

    #[test]
    fn the_lock_passes_round_robin_between_tenants_and_in_order_within_one() {
        let now = Instant::now();
        let mut t = Turns::new(1, true);
        assert_eq!(t.arrive("a", Normal, now), Ok(()));
        // a storms; b and c each ask once, after a's first waiters.
        let a: Vec<u64> = (0..4)
            .map(|_| t.arrive("a", Normal, now).unwrap_err())
            .collect();
        let b = t.arrive("b", Normal, now).unwrap_err();
        let c = t.arrive("c", Normal, now).unwrap_err();
        let who = |ticket: u64| match ticket {
            x if x == b => "b",
            x if x == c => "c",
            _ => "a",
        };
        let order = pass_around(&mut t, "a", 6, &who);
        // a held it: b, c, then a's in arrival order.
        assert_eq!(order, [b, c, a[0], a[1], a[2], a[3]]);
        t.release("a", now);
        assert_eq!(t.held, 0, "free once no one waits");
        assert!(t.held_by.is_empty());
        assert_eq!(t.arrive("z", Normal, now), Ok(()));
    }

    #[test]
    fn a_waiter_of_another_tenant_goes_before_the_rest_of_a_storm() {
        let now = Instant::now();
        let mut t = Turns::new(1, true);
        assert_eq!(t.arrive("a", Normal, now), Ok(()));
        let a1 = t.arrive("a", Normal, now).unwrap_err();
        let a2 = t.arrive("a", Normal, now).unwrap_err();
        assert_eq!(pass(&mut t, "a", now), a1);
        // b arrives while a's storm goes on: it is next, not after a2.
        let b = t.arrive("b", Normal, now).unwrap_err();
        assert_eq!(pass(&mut t, "a", now), b);
        assert_eq!(pass(&mut t, "b", now), a2);
        assert!(!t.take(a2), "a ticket is taken once");
    }

    #[test]
    fn an_urgent_waiter_goes_before_its_own_tenants_storm_not_before_other_tenants() {
        let now = Instant::now();
        let mut t = Turns::new(1, true);
        assert_eq!(t.arrive("b", Normal, now), Ok(()));
        let a: Vec<u64> = (0..3)
            .map(|_| t.arrive("a", Normal, now).unwrap_err())
            .collect();
        let revoke = t.arrive("a", Urgent, now).unwrap_err();
        let b = t.arrive("b", Normal, now).unwrap_err();
        let who = |ticket: u64| if ticket == b { "b" } else { "a" };
        let order = pass_around(&mut t, "b", 5, &who);
        // b held it: a's turn goes to its revocation first; then b; then a's storm.
        assert_eq!(order, [revoke, b, a[0], a[1], a[2]]);
    }

    #[test]
    fn a_strict_lock_never_lets_two_in_and_zero_slots_means_one() {
        let now = Instant::now();
        let mut t = Turns::new(0, true);
        assert_eq!(t.arrive("a", Normal, now), Ok(()));
        assert!(
            t.arrive("b", Normal, now).is_err(),
            "b holds none, yet waits"
        );
        assert!(t.arrive("a", Normal, now).is_err());
    }

    #[test]
    fn a_tenant_alone_takes_as_many_shared_slots_as_it_asks_for() {
        let now = Instant::now();
        let mut t = Turns::new(2, false);
        for _ in 0..10 {
            assert_eq!(t.arrive("a", Normal, now), Ok(()));
        }
        assert_eq!(t.held, 10);
    }

    #[test]
    fn another_tenant_gets_in_at_once_and_a_storm_drains_to_the_cap_while_it_is_active() {
        let t0 = Instant::now();
        let mut t = Turns::new(2, false);
        for _ in 0..5 {
            assert_eq!(t.arrive("a", Normal, t0), Ok(()));
        }
        // b holds nothing: in at once, over the cap.
        assert_eq!(t.arrive("b", Normal, t0), Ok(()));
        assert_eq!(t.held, 6);
        // a's next calls wait while b is active, and a's releases are not handed on to
        // them until the total is under the cap.
        let a: Vec<u64> = (0..3)
            .map(|_| t.arrive("a", Normal, t0).unwrap_err())
            .collect();
        for held in [5, 4, 3, 2] {
            t.release("a", t0);
            assert!(t.handed.is_empty());
            assert_eq!(t.held, held);
        }
        // b's second call, while it holds one and a waits: behind a's waiters.
        let b2 = t.arrive("b", Normal, t0).unwrap_err();
        // Under the cap: round-robin from b (served last) gives a's first waiter the slot.
        t.release("a", t0);
        assert_eq!(t.handed.iter().copied().collect::<Vec<_>>(), [a[0]]);
        assert!(t.take(a[0]));
        t.release("b", t0);
        assert_eq!(t.handed.iter().copied().collect::<Vec<_>>(), [b2]);
        assert!(t.take(b2));
        // b's last call ends; a stays capped for LINGER after it, then takes every slot.
        t.release("b", t0);
        assert_eq!(t.handed.iter().copied().collect::<Vec<_>>(), [a[1]]);
        assert!(t.take(a[1]));
        let later = t0 + LINGER;
        t.release("a", later);
        assert!(t.take(a[2]));
        assert!(t.waiting.is_empty());
        assert_eq!(t.arrive("a", Normal, later), Ok(()));
        assert_eq!(t.arrive("a", Normal, later), Ok(()));
        assert!(t.held > t.slots, "uncapped again: {}", t.held);
    }

    /// `threads` threads of two tenants enter `fair` 50 times each; never more than
    /// `most_allowed` inside at once, and every entry is served.
    fn hammer(fair: Fair, threads: usize, most_allowed: usize) {
        let fair = Arc::new(fair);
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
            most.load(SeqCst) <= most_allowed,
            "{} inside at once",
            most.load(SeqCst)
        );
        let turns = fair.turns();
        assert_eq!(turns.held, 0);
        assert!(turns.held_by.is_empty());
        assert!(turns.handed.is_empty() && turns.waiting.is_empty());
    }

    #[test]
    fn the_lock_is_held_by_one_thread_at_a_time_and_every_waiter_gets_it() {
        hammer(Fair::lock(), 16, 1);
    }

    #[test]
    fn shared_slots_serve_every_waiter_and_hold_no_more_than_the_cap_plus_a_tenant_each() {
        // While both tenants are active: the cap, plus one for a tenant that held none.
        hammer(Fair::shared(4), 16, 16);
    }
}
