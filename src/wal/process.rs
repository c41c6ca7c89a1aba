//! One process's write-ahead log and its checkpoints: a worker's for the
//! messages it accepts, the delivery process's for its bounces and its
//! recipients' outcomes.
//!
//! - Opening replays: it returns every entry after the last checkpoint,
//!   for the owner to put back what a power loss took, and the owner
//!   then checkpoints ([`ProcessLog::checkpoint`]) before doing anything
//!   else.
//! - A checkpoint: one `syncfs` per file system the logged files live on
//!   makes them durable on their own; a checkpoint record then tells
//!   replay to skip everything before it, and the segments that held only
//!   such records are reused. What needs the files durable and covered
//!   comes after (a worker moves its held queue files on).
//! - It is due `interval` after the first record that waits for one,
//!   sooner when the owner asks ([`ProcessLog::hurry`]), and at once when
//!   [`CHECKPOINT_BYTES`] of records wait, so the log stays within its
//!   first segment however fast mail comes in.
//! - A checkpoint that fails keeps the records and is tried again one
//!   interval later. Failing [`MAX_FAILURES`] times in a row, the log
//!   stops taking groups ([`ProcessLog::for_commit`] is None): new work is
//!   refused rather than acknowledged on a file system that does not
//!   write.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Entry, Log};

/// Segment size: a checkpoint frees the log long before it fills one.
const SEGMENT_SIZE: u64 = 64 << 20;
/// Records waiting for a checkpoint that make one due at once.
pub const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Failed checkpoints in a row after which groups are refused.
pub const MAX_FAILURES: u32 = 3;

pub struct ProcessLog {
    log: Log,
    dir: PathBuf,
    /// An open directory on each file system the logged files live on,
    /// to name it to `syncfs`.
    file_systems: Vec<File>,
    interval: Duration,
    /// The first record waiting for a checkpoint went in then.
    dirty_since: Option<Instant>,
    /// The owner wants a checkpoint by then.
    wanted_by: Option<Instant>,
    /// `log.written()` at the last checkpoint.
    written_at_checkpoint: u64,
    failures: u32,
}

impl ProcessLog {
    /// Opens (or creates) the log in `dir`, whose records' files live
    /// under `roots`; returns it and the entries to replay, in log order.
    pub fn open(
        dir: &Path,
        roots: &[&Path],
        interval: Duration,
    ) -> Result<(ProcessLog, Vec<(u64, Entry)>), String> {
        let what = |e: io::Error| format!("write-ahead log {}: {e}", dir.display());
        let (log, records) = Log::open(dir, SEGMENT_SIZE).map_err(what)?;
        let entries =
            super::after_checkpoint(&records).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut file_systems: Vec<File> = Vec::new();
        let mut devices = Vec::new();
        for root in roots {
            let file = File::open(root).map_err(|e| format!("{}: {e}", root.display()))?;
            let device = file
                .metadata()
                .map_err(|e| format!("{}: {e}", root.display()))?
                .dev();
            if !devices.contains(&device) {
                devices.push(device);
                file_systems.push(file);
            }
        }
        let process_log = ProcessLog {
            log,
            dir: dir.to_path_buf(),
            file_systems,
            interval,
            dirty_since: None,
            wanted_by: None,
            written_at_checkpoint: 0,
            failures: 0,
        };
        Ok((process_log, entries))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log, for a group commit; None while checkpoints keep failing.
    pub fn for_commit(&mut self) -> Option<&mut Log> {
        (self.failures < MAX_FAILURES).then_some(&mut self.log)
    }

    /// A group went into the log at `now`.
    pub fn committed(&mut self, now: Instant) {
        self.dirty_since.get_or_insert(now);
    }

    /// Something waits on the next checkpoint: have it by `by`.
    pub fn hurry(&mut self, by: Instant) {
        self.wanted_by = Some(self.wanted_by.map_or(by, |at| at.min(by)));
    }

    /// When the next checkpoint is due, if records wait for one.
    pub fn next_due(&self) -> Option<Instant> {
        let since = self.dirty_since?;
        let due = since + self.interval;
        Some(self.wanted_by.map_or(due, |by| by.min(due)))
    }

    fn is_due(&self, now: Instant) -> bool {
        let full = self.log.written() - self.written_at_checkpoint >= CHECKPOINT_BYTES;
        self.dirty_since.is_some() && (full || self.next_due().is_some_and(|at| at <= now))
    }

    /// Checkpoints if one is due at `now`, or records wait and this is
    /// the end. True if a checkpoint succeeded.
    pub fn checkpoint_if_due(&mut self, now: Instant, ending: bool) -> bool {
        if !(self.is_due(now) || ending && self.dirty_since.is_some()) {
            return false;
        }
        match self.checkpoint() {
            Ok(()) => {
                if self.failures > 0 {
                    log::info!(
                        "write-ahead log {}: checkpoint succeeded again",
                        self.dir.display()
                    );
                }
                self.failures = 0;
                true
            }
            Err(e) => {
                self.failures += 1;
                // Tried again one interval later.
                self.dirty_since = Some(now);
                self.wanted_by = None;
                log::error!(
                    "write-ahead log {} checkpoint failed ({} in a row{}): {e}",
                    self.dir.display(),
                    self.failures,
                    if self.failures >= MAX_FAILURES {
                        "; new work is refused until one succeeds"
                    } else {
                        ""
                    }
                );
                false
            }
        }
    }

    /// Syncs the logged files' file systems, then records and frees what
    /// that made durable.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        let upto = self.log.next_sequence() - 1;
        for file in &self.file_systems {
            nix::unistd::syncfs(file).map_err(|e| io::Error::other(format!("syncfs: {e}")))?;
        }
        let mut payload = Vec::new();
        Entry::Checkpoint { upto }
            .encode(&mut payload)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.log.append(&payload);
        self.log.commit()?;
        self.dirty_since = None;
        self.wanted_by = None;
        self.written_at_checkpoint = self.log.written();
        self.log.release(upto)
    }
}
