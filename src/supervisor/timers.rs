//! Deadlines: a min-heap with lazy cancellation (each key carries the
//! generation it was set for; a stale one is dropped when it pops). O(log n)
//! per timer, whatever the number of instances.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// The FSM deadline of an instance.
    Deadline { idx: usize, epoch: u64 },
    /// A probe: run it (interval/retry) or time it out.
    Probe { idx: usize, slot: usize, epoch: u64 },
    /// A client that has not sent a full request in time.
    Conn { id: u64 },
    /// A hook or probe command that overran its timeout.
    Hook { pid: i32 },
    /// The deferred bind audit of instances that became ready.
    Audit,
    /// A start failure's answer stops waiting for its log tails.
    Tails { idx: usize, job: u64 },
    /// The gap after a read of every instance's usage is over.
    UsageRead,
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Key)>>,
    seq: u64,
}

impl Timers {
    pub fn add(&mut self, at: Instant, key: Key) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, key)));
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Drops cancelled timers from the head, so that a cancelled deadline
    /// never wakes the loop (`live` tells a key still matters).
    pub fn purge_head(&mut self, mut live: impl FnMut(&Key) -> bool) {
        while let Some(Reverse((_, _, k))) = self.heap.peek() {
            if live(k) {
                break;
            }
            self.heap.pop();
        }
    }

    pub fn pop_due(&mut self, now: Instant) -> Option<Key> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse((_, _, k))| k),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stale_heads_are_purged_live_ones_kept() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.add(t0 + Duration::from_secs(1), Key::Conn { id: 1 });
        t.add(t0 + Duration::from_secs(2), Key::Conn { id: 2 });
        t.add(t0 + Duration::from_secs(3), Key::Conn { id: 3 });
        t.purge_head(|k| *k != Key::Conn { id: 1 } && *k != Key::Conn { id: 3 });
        assert_eq!(
            t.next_deadline(),
            Some(t0 + Duration::from_secs(2)),
            "only the stale head goes"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn pops_in_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.add(t0 + Duration::from_millis(20), Key::Conn { id: 2 });
        t.add(t0 + Duration::from_millis(10), Key::Conn { id: 1 });
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(
            t.pop_due(t0 + Duration::from_millis(30)),
            Some(Key::Conn { id: 1 })
        );
        assert_eq!(
            t.pop_due(t0 + Duration::from_millis(30)),
            Some(Key::Conn { id: 2 })
        );
        assert_eq!(t.len(), 0);
    }
}
