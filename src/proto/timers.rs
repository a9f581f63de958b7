//! The one deadline structure for every connection timer.
//!
//! Each connection has at most one deadline at a time (its phase says what it means: head, body,
//! idle, heartbeat or linger), kept in its [`TimerSlot`]. The [`Timers`] heap holds entries
//! `(when, connection)`. Moving a deadline later touches only the slot — the heap entry, when it
//! comes due, finds the later deadline and re-queues itself — so the hot path (a heartbeat
//! pushed back by every event) costs nothing here. Moving it earlier pushes one entry. Entries of
//! closed connections and superseded entries are skipped when they come out, not before: an open
//! connection has at most a few entries, and a closed one leaves its last until that deadline
//! passes, or until [`Timers::compact`] drops it: the owner calls that when the heap has grown
//! well past the connections open, so under churn the heap stays O(connections open) and its
//! memory shrinks back after a burst.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::ConnId;

/// A connection's deadline and the earliest heap entry that stands for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimerSlot {
    deadline: Option<Instant>,
    queued: Option<Instant>,
}

impl TimerSlot {
    /// The current deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// Deadlines of every connection (or of anything else keyed like one: `K`), earliest first.
#[derive(Debug)]
pub struct Timers<K = ConnId> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> Timers<K> {
    /// Sets (or with `None` clears) the deadline of `conn`, whose slot is `slot`.
    pub fn set(&mut self, slot: &mut TimerSlot, conn: K, at: Option<Instant>) {
        slot.deadline = at;
        if let Some(at) = at {
            if slot.queued.is_none_or(|q| at < q) {
                self.heap.push(Reverse((at, conn)));
                slot.queued = Some(at);
            }
        }
    }

    /// How many entries the heap holds, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether the heap holds no entry.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Drops every entry that stands for nothing (its connection is gone, or a newer entry
    /// stands for the slot) and frees the memory they held. `slot` gives the slot of an open
    /// connection. Linear in the heap: call it when stale entries are at least half of it.
    pub fn compact<'a>(&mut self, slot: impl Fn(K) -> Option<&'a TimerSlot>) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.retain(|Reverse((at, key))| slot(*key).is_some_and(|s| s.queued == Some(*at)));
        entries.shrink_to_fit();
        self.heap = BinaryHeap::from(entries);
    }

    /// The earliest entry; it may turn out to be stale, which costs one early wake-up.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the earliest entry if it is due at `now`. Pass it, with the connection's slot if it
    /// is still open, to [`Timers::fire`].
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Whether the entry `at` taken by [`Timers::pop_due`] fires for the connection `conn`
    /// whose slot is `slot`: it is the entry standing for the slot, and the deadline has passed.
    /// A fired deadline is cleared; one that moved later is queued again.
    pub fn fire(&mut self, slot: &mut TimerSlot, conn: K, at: Instant, now: Instant) -> bool {
        if slot.queued != Some(at) {
            return false;
        }
        slot.queued = None;
        match slot.deadline {
            Some(d) if d <= now => {
                slot.deadline = None;
                true
            }
            later => {
                self.set(slot, conn, later);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: ConnId = ConnId {
        index: 0,
        generation: 1,
    };

    fn due(timers: &mut Timers, slot: &mut TimerSlot, now: Instant) -> usize {
        let mut fired = 0;
        while let Some((at, id)) = timers.pop_due(now) {
            fired += usize::from(timers.fire(slot, id, at, now));
        }
        fired
    }

    #[test]
    fn a_later_deadline_costs_no_entry_and_still_fires() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut slot = TimerSlot::default();
        timers.set(&mut slot, A, Some(t0 + Duration::from_secs(1)));
        for s in 2..100 {
            timers.set(&mut slot, A, Some(t0 + Duration::from_secs(s)));
        }
        assert_eq!(timers.heap.len(), 1);
        assert_eq!(due(&mut timers, &mut slot, t0 + Duration::from_secs(1)), 0);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(99)));
        assert_eq!(due(&mut timers, &mut slot, t0 + Duration::from_secs(99)), 1);
        assert_eq!(slot.deadline(), None);
        assert_eq!(timers.next(), None);
    }

    #[test]
    fn an_earlier_deadline_fires_once_and_the_old_entry_is_skipped() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut slot = TimerSlot::default();
        timers.set(&mut slot, A, Some(t0 + Duration::from_secs(10)));
        timers.set(&mut slot, A, Some(t0 + Duration::from_secs(5)));
        assert_eq!(due(&mut timers, &mut slot, t0 + Duration::from_secs(20)), 1);
        assert!(timers.heap.is_empty());
    }

    #[test]
    fn compacting_keeps_only_the_entries_that_stand_for_open_slots() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut open = TimerSlot::default();
        let mut closed = TimerSlot::default();
        let b = ConnId {
            index: 1,
            generation: 1,
        };
        timers.set(&mut open, A, Some(t0 + Duration::from_secs(10)));
        timers.set(&mut open, A, Some(t0 + Duration::from_secs(5)));
        timers.set(&mut closed, b, Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.len(), 3);
        timers.compact(|key| (key == A).then_some(&open));
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(due(&mut timers, &mut open, t0 + Duration::from_secs(5)), 1);
        assert!(timers.is_empty());
    }

    #[test]
    fn a_cleared_deadline_never_fires() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut slot = TimerSlot::default();
        timers.set(&mut slot, A, Some(t0));
        timers.set(&mut slot, A, None);
        assert_eq!(due(&mut timers, &mut slot, t0 + Duration::from_secs(1)), 0);
    }
}
