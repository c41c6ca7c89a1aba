//! A worker's write-ahead log under `--durability log` (see `crate::wal`
//! and `store::commit_logged`): recovery when the worker starts, and
//! checkpoints.
//!
//! - Recovery, before the worker serves anyone: every message the log
//!   holds after its last checkpoint has its Maildir files put back where
//!   a power loss took them (`wal::restore`), then a checkpoint.
//! - A checkpoint, every `--checkpoint-interval` while records wait: one
//!   `syncfs` of the Maildir's file system makes the logged files durable
//!   on their own; a checkpoint record then tells replay to skip them, and
//!   the segments they filled are reused.
//! - A checkpoint that fails keeps the records and is tried again at the
//!   next interval. Failing [`MAX_FAILURES`] times in a row, the log
//!   stops taking groups: their clients get a 4xx rather than a 250 that
//!   rests on a file system that does not write.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::wal::{self, Entry, Log};

/// Segment size: a checkpoint frees the log long before it fills one at
/// the rates a worker takes mail.
const SEGMENT_SIZE: u64 = 64 << 20;
/// Failed checkpoints in a row after which groups are refused.
pub const MAX_FAILURES: u32 = 3;

pub struct WorkerLog {
    log: Log,
    /// The Maildir root, to name its file system to `syncfs`.
    maildir: File,
    interval: Duration,
    /// Records wait for a checkpoint since then.
    dirty_since: Option<Instant>,
    failures: u32,
}

impl WorkerLog {
    /// Opens the log in `dir` and recovers what it holds.
    pub fn open(dir: &Path, maildir: &Path, interval: Duration) -> Result<WorkerLog, String> {
        let what = |e: io::Error| format!("write-ahead log {}: {e}", dir.display());
        let (log, records) = Log::open(dir, SEGMENT_SIZE).map_err(what)?;
        let messages = wal::to_restore(&records).map_err(|e| format!("{}: {e}", dir.display()))?;
        let maildir = File::open(maildir).map_err(|e| format!("{}: {e}", maildir.display()))?;
        let mut worker_log = WorkerLog {
            log,
            maildir,
            interval,
            dirty_since: None,
            failures: 0,
        };
        if !messages.is_empty() {
            let restored = wal::restore(&messages, &format!("recovery.P{}", std::process::id()))
                .map_err(what)?;
            for path in &restored.rewritten {
                log::warn!(
                    "recovery: {} rewritten from the write-ahead log",
                    path.display()
                );
            }
            log::info!(
                "recovery from {}: {} message(s) after the last checkpoint, {} file(s) rewritten, {} intact",
                dir.display(),
                messages.len(),
                restored.rewritten.len(),
                restored.intact
            );
            worker_log.checkpoint().map_err(what)?;
        }
        Ok(worker_log)
    }

    /// The log, for a group commit; None while checkpoints keep failing.
    pub fn for_commit(&mut self) -> Option<&mut Log> {
        (self.failures < MAX_FAILURES).then_some(&mut self.log)
    }

    /// A group went into the log at `now`.
    pub fn committed(&mut self, now: Instant) {
        self.dirty_since.get_or_insert(now);
    }

    /// When the next checkpoint is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.dirty_since.map(|since| since + self.interval)
    }

    /// Checkpoints if one is due at `now` (or `now` is the end).
    pub fn checkpoint_if_due(&mut self, now: Instant, ending: bool) {
        let due = self.next_due().is_some_and(|at| ending || at <= now);
        if !due {
            return;
        }
        match self.checkpoint() {
            Ok(()) => {
                if self.failures > 0 {
                    log::info!("write-ahead log: checkpoint succeeded again");
                }
                self.failures = 0;
                self.dirty_since = None;
            }
            Err(e) => {
                self.failures += 1;
                // Tried again one interval later.
                self.dirty_since = Some(now);
                log::error!(
                    "write-ahead log checkpoint failed ({} in a row{}): {e}",
                    self.failures,
                    if self.failures >= MAX_FAILURES {
                        "; new messages get 4xx until one succeeds"
                    } else {
                        ""
                    }
                );
            }
        }
    }

    /// Syncs the Maildir's file system, then records and frees what that
    /// made durable.
    fn checkpoint(&mut self) -> io::Result<()> {
        let upto = self.log.next_sequence() - 1;
        nix::unistd::syncfs(&self.maildir).map_err(io::Error::from)?;
        let mut payload = Vec::new();
        Entry::Checkpoint { upto }
            .encode(&mut payload)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.log.append(&payload);
        self.log.commit()?;
        self.log.release(upto)
    }
}
