//! The TLS 1.2 session-cache lookups a worker has asked the supervisor
//! for. A connection whose client offers a session ID waits for the
//! answer before its session is made (so no handshake waits inside
//! GnuTLS), but never longer than `LOOKUP_WAIT`: after that its handshake
//! goes on without the cache, as a miss.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::timers::TimerKey;

/// The supervisor answers from its own loop within microseconds; this
/// only bounds the cost of a supervisor that is stuck (a stalled disk).
pub const LOOKUP_WAIT: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct Lookups {
    next: u64,
    /// Oldest first; deadlines grow with the requests.
    waiting: VecDeque<(u64, TimerKey, Instant)>,
}

impl Lookups {
    /// Registers a lookup for connection `conn`; returns its request id.
    pub fn begin(&mut self, conn: TimerKey, now: Instant) -> u64 {
        self.next += 1;
        self.waiting.push_back((self.next, conn, now + LOOKUP_WAIT));
        self.next
    }

    /// The connection that asked `request`, if it still waits.
    pub fn answered(&mut self, request: u64) -> Option<TimerKey> {
        let i = self.waiting.iter().position(|(r, _, _)| *r == request)?;
        self.waiting.remove(i).map(|(_, conn, _)| conn)
    }

    /// Connections whose lookup has waited long enough.
    pub fn expired(&mut self, now: Instant) -> Vec<TimerKey> {
        let mut out = Vec::new();
        while let Some(&(_, conn, at)) = self.waiting.front() {
            if at > now {
                break;
            }
            self.waiting.pop_front();
            out.push(conn);
        }
        out
    }

    /// Every connection still waiting (the supervisor is gone).
    pub fn abandon(&mut self) -> Vec<TimerKey> {
        self.waiting.drain(..).map(|(_, conn, _)| conn).collect()
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.front().map(|(_, _, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(slot: usize) -> TimerKey {
        TimerKey { slot, serial: 1 }
    }

    #[test]
    fn answers_find_their_connection_and_late_ones_expire() {
        let t0 = Instant::now();
        let mut l = Lookups::default();
        let a = l.begin(key(1), t0);
        let b = l.begin(key(2), t0 + Duration::from_millis(100));
        assert_eq!(l.answered(b), Some(key(2)));
        assert_eq!(l.answered(b), None, "answered once");
        assert_eq!(l.next_due(), Some(t0 + LOOKUP_WAIT));
        assert!(
            l.expired(t0 + LOOKUP_WAIT - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(l.expired(t0 + LOOKUP_WAIT), vec![key(1)]);
        assert_eq!(l.answered(a), None, "an expired lookup's answer is dropped");
        assert_eq!(l.next_due(), None);
    }
}
