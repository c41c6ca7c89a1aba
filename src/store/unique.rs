//! Unique Maildir file names and log ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Process-wide rather than per Store: names are unique only per
/// (time, pid, counter), and two Stores in one process (say one per thread)
/// with their own counters could produce the same name in one microsecond.
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn next_counter() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
}

const BASE62: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Time since the epoch; a clock set before 1970 yields zero rather than an
/// error, since uniqueness still comes from pid and counter.
fn now() -> Duration {
    crate::clock::since_epoch()
}

/// `n` in base62, left-padded with '0' to at least `min_width` digits.
pub(super) fn base62(mut n: u64, min_width: usize) -> String {
    let mut digits = Vec::with_capacity(min_width.max(11));
    loop {
        digits.push(BASE62[(n % 62) as usize]);
        n /= 62;
        if n == 0 {
            break;
        }
    }
    while digits.len() < min_width {
        digits.push(b'0');
    }
    digits.iter().rev().map(|&b| char::from(b)).collect()
}

/// The Maildir spec reserves '/' and ':' in file names ('/' separates
/// paths, ':' starts the info suffix), so they are written as octal escapes.
pub(super) fn escape_hostname(host: &str) -> String {
    let mut out = String::with_capacity(host.len());
    for c in host.chars() {
        match c {
            '/' => out.push_str("\\057"),
            ':' => out.push_str("\\072"),
            c => out.push(c),
        }
    }
    out
}

/// One message, counted once: its log id and its Maildir file name are
/// both made from the same time, pid and counter, so an operator can find
/// the file of a log line (`Q<counter>` is the id's last part in decimal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageId {
    at: Duration,
    pid: u32,
    counter: u64,
}

impl MessageId {
    /// The next id of this process.
    pub fn next() -> MessageId {
        MessageId {
            at: now(),
            pid: std::process::id(),
            counter: next_counter(),
        }
    }

    /// `SECS.M<usec>P<pid>Q<counter>.<host>`; `host` must already be escaped.
    pub(super) fn maildir_name(&self, host: &str) -> String {
        maildir_name(self.at, self.pid, self.counter, host)
    }
}

/// Exim-like base62 `TTTTTT-PPPPPP-CC` (the last part grows beyond two
/// digits once the counter passes 62²).
impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&log_id(self.at, self.pid, self.counter))
    }
}

/// `SECS.M<usec>P<pid>Q<counter>.<host>`; `host` must already be escaped.
pub(super) fn maildir_name(now: Duration, pid: u32, counter: u64, host: &str) -> String {
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        pid,
        counter,
        host
    )
}

pub(super) fn log_id(now: Duration, pid: u32, counter: u64) -> String {
    format!(
        "{}-{}-{}",
        base62(now.as_secs(), 6),
        base62(u64::from(pid), 6),
        base62(counter, 2)
    )
}
