//! Per-connection deadlines in one min-heap. A connection's deadline moves
//! on almost every read; rather than touching the heap each time, an entry
//! that comes due is checked against the connection's current deadline and
//! pushed again if that moved later (lazy re-arming). Entries superseded by
//! an earlier deadline are recognised and dropped when they surface.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerKey {
    pub slot: usize,
    pub serial: u64,
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
}

/// Per-connection bookkeeping that goes with `Timers`.
#[derive(Debug)]
pub struct Deadline {
    pub at: Instant,
    /// The earliest heap entry for this connection that is still current.
    armed: Option<Instant>,
}

impl Deadline {
    pub fn new(at: Instant) -> Deadline {
        Deadline { at, armed: None }
    }
}

impl Timers {
    /// Records a new deadline, pushing an entry only when no current entry
    /// would come due at or before it.
    pub fn set(&mut self, d: &mut Deadline, at: Instant, key: TimerKey) {
        d.at = at;
        if d.armed.is_none_or(|armed| at < armed) {
            self.heap.push(Reverse((at, key)));
            d.armed = Some(at);
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the next entry due at `now`, if any. The caller looks the key up
    /// and passes the connection's `Deadline` to `expired`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Decides what a popped entry means for its connection: true when the
    /// connection's deadline has really passed; otherwise re-arms it.
    pub fn expired(
        &mut self,
        d: &mut Deadline,
        entry_at: Instant,
        key: TimerKey,
        now: Instant,
    ) -> bool {
        if d.armed != Some(entry_at) {
            return false; // superseded by an earlier entry
        }
        d.armed = None;
        if d.at <= now {
            return true;
        }
        let at = d.at;
        self.set(d, at, key);
        false
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Entries of closed connections linger until they come due; when they
    /// outnumber the live ones, the heap is rebuilt from the live ones.
    pub fn compact<'a>(&mut self, live: impl Iterator<Item = (&'a mut Deadline, TimerKey)>) {
        self.heap.clear();
        for (d, key) in live {
            d.armed = None;
            let at = d.at;
            self.set(d, at, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const KEY: TimerKey = TimerKey { slot: 3, serial: 9 };

    fn fire(t: &mut Timers, d: &mut Deadline, now: Instant) -> bool {
        let mut fired = false;
        while let Some((at, key)) = t.pop_due(now) {
            assert_eq!(key, KEY);
            fired |= t.expired(d, at, key, now);
        }
        fired
    }

    #[test]
    fn compaction_keeps_only_live_deadlines() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut dead = Deadline::new(t0);
        for slot in 0..100 {
            t.set(
                &mut dead,
                t0 + Duration::from_secs(slot),
                TimerKey {
                    slot: slot as usize,
                    serial: 1,
                },
            );
            dead.armed = None;
        }
        let mut live = Deadline::new(t0);
        t.set(&mut live, t0 + Duration::from_secs(5), KEY);
        assert_eq!(t.len(), 101);
        t.compact(std::iter::once((&mut live, KEY)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_due(), Some(t0 + Duration::from_secs(5)));
        assert!(fire(&mut t, &mut live, t0 + Duration::from_secs(5)));
    }

    #[test]
    fn later_deadline_rearms_lazily_and_earlier_one_pushes() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        let mut d = Deadline::new(t0);
        t.set(&mut d, t0 + 10 * s, KEY);
        for i in 1..100 {
            t.set(&mut d, t0 + (10 + i) * s, KEY); // activity: no push
        }
        assert_eq!(t.len(), 1);
        assert!(!fire(&mut t, &mut d, t0 + 10 * s), "moved later");
        assert_eq!(t.next_due(), Some(t0 + 109 * s));
        t.set(&mut d, t0 + 20 * s, KEY); // closing: earlier
        assert_eq!(t.len(), 2);
        assert!(!fire(&mut t, &mut d, t0 + 19 * s));
        assert!(fire(&mut t, &mut d, t0 + 20 * s));
        assert!(!fire(&mut t, &mut d, t0 + 200 * s), "stale entry dropped");
        assert_eq!(t.len(), 0);
    }
}
