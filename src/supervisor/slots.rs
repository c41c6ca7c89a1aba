//! One worker slot's life: the process that holds it, its channel, and
//! when a worker that died is started again. A worker that dies after a
//! normal life is replaced at once; one that keeps dying soon after its
//! start (a crash loop) is started again after a growing pause instead of
//! as fast as the supervisor can fork. Sans-I/O: the caller passes the
//! time.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::control::Channel;

/// A worker that dies sooner than this after its start counts toward a
/// crash loop.
pub const QUICK_DEATH: Duration = Duration::from_secs(10);
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Slot {
    pub pid: Option<Pid>,
    pub channel: Option<Channel>,
    /// The worker said it listens.
    pub ready: bool,
    started: Option<Instant>,
    /// Deaths in a row, each within QUICK_DEATH of its start.
    quick_deaths: u32,
    /// When to start a replacement.
    pub restart_at: Option<Instant>,
}

impl Slot {
    pub fn started(&mut self, pid: Pid, channel: Channel, now: Instant) {
        self.pid = Some(pid);
        self.channel = Some(channel);
        self.ready = false;
        self.started = Some(now);
        self.restart_at = None;
    }

    /// The worker died at `now`: returns the pause before its replacement
    /// (also recorded in `restart_at`).
    pub fn died(&mut self, now: Instant) -> Duration {
        let quick = self
            .started
            .is_some_and(|at| now.saturating_duration_since(at) < QUICK_DEATH);
        self.quick_deaths = if quick { self.quick_deaths + 1 } else { 0 };
        self.pid = None;
        self.channel = None;
        self.ready = false;
        let pause = pause(self.quick_deaths);
        self.restart_at = Some(now + pause);
        pause
    }
}

/// None after a normal life or a first quick death (one early death is
/// not yet a loop); then 250 ms, 500 ms, 1 s, ... up to 30 s for the
/// 2nd, 3rd, 4th, ... quick death in a row.
pub fn pause(quick_deaths: u32) -> Duration {
    match quick_deaths {
        0 | 1 => Duration::ZERO,
        n => FIRST_PAUSE
            .saturating_mul(1 << (n - 2).min(16))
            .min(LONGEST_PAUSE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loop_backs_off_and_a_normal_life_resets_it() {
        let t0 = Instant::now();
        let mut slot = Slot::default();
        let pid = Pid::from_raw(100);
        let chan = || Channel::pair().unwrap().0;
        slot.started(pid, chan(), t0);
        // Lived an hour: replaced at once.
        let t = t0 + Duration::from_secs(3600);
        assert_eq!(slot.died(t), Duration::ZERO);
        assert_eq!(slot.restart_at, Some(t));
        // Then dies within a second of every start.
        let mut now = t;
        let mut pauses = Vec::new();
        for _ in 0..9 {
            slot.started(pid, chan(), now);
            now += Duration::from_millis(500);
            let p = slot.died(now);
            pauses.push(p.as_millis());
            now += p;
        }
        assert_eq!(
            pauses,
            vec![0, 250, 500, 1000, 2000, 4000, 8000, 16000, 30000]
        );
        // A worker that then lives normally resets the count.
        slot.started(pid, chan(), now);
        assert_eq!(slot.died(now + QUICK_DEATH), Duration::ZERO);
        assert!(slot.pid.is_none() && slot.channel.is_none());
    }
}
