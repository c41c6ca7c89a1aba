//! How the delivery process makes its queue changes durable: under
//! `--durability sync` one `syncfs` per settle, under `--durability log`
//! its own write-ahead log (`WAL_DIR/delivery`, see `crate::wal`), one
//! `fdatasync` per settle and a checkpoint now and then.
//!
//! What it logs: the bounces it queues (their files, as a worker logs a
//! message) and the outcomes it appends to queued messages' journals
//! (delivered, failed; a deferral rides along when a settle has those).
//! Removing a finished message is not logged: if a power loss brings its
//! file back, its journal (restored from the log if need be) shows every
//! recipient done, and the process removes it again when it starts.
//!
//! Recovery, when the process starts and before it reads the queue (under
//! either `--durability`, so that a switch back to `sync` loses nothing):
//! bounce files put back, then each logged outcome put back into its
//! journal when its message is still queued, then a checkpoint.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Durability;
use crate::queue::{self, QueueDir};
use crate::store::{self, Delivery};
use crate::wal::{self, Entry, ProcessLog};

pub struct QueueLog {
    /// None under `--durability sync`.
    log: Option<ProcessLog>,
}

impl QueueLog {
    /// Opens the log in `wal_dir` and recovers what it holds; keeps it
    /// only under `--durability log`.
    pub fn open(
        wal_dir: &Path,
        durability: &Durability,
        maildir: &Path,
        queue: &QueueDir,
    ) -> Result<QueueLog, String> {
        let dir = wal_dir.join("delivery");
        let interval = match durability {
            Durability::Log { checkpoint } => Some(*checkpoint),
            Durability::Sync => None,
        };
        if interval.is_none() && !dir.exists() {
            return Ok(QueueLog { log: None });
        }
        let every = interval.unwrap_or(Duration::from_secs(2));
        let (mut log, entries) = ProcessLog::open(&dir, &[maildir, queue.root()], every)?;
        if !entries.is_empty() {
            recover(&entries, queue)
                .map_err(|e| format!("recovery from {}: {e}", dir.display()))?;
            log.checkpoint()
                .map_err(|e| format!("write-ahead log {}: {e}", dir.display()))?;
        }
        Ok(QueueLog {
            log: interval.and(Some(log)),
        })
    }

    /// Makes bounces durable: through the log, or (without one, or when
    /// its checkpoints keep failing) the `syncfs` way.
    pub fn commit_bounces(
        &mut self,
        units: Vec<Vec<Delivery>>,
        now: Instant,
    ) -> Vec<io::Result<Vec<PathBuf>>> {
        if units.is_empty() {
            return Vec::new();
        }
        let Some(process_log) = self.log.as_mut() else {
            return store::commit_all(units);
        };
        let Some(log) = process_log.for_commit() else {
            return store::commit_all(units);
        };
        let results = store::commit_logged(units, log, None);
        process_log.committed(now);
        results
    }

    /// Appends each message's new outcomes to its journal and, if
    /// `durable`, makes them durable before returning.
    pub fn record(
        &mut self,
        queue: &QueueDir,
        outcomes: &[(String, Vec<queue::Record>)],
        durable: bool,
        now: Instant,
    ) {
        let mut written: Option<File> = None;
        for (id, records) in outcomes {
            match queue::journal::append(&queue.log_path(id), records) {
                Ok(file) => written = Some(file),
                Err(e) => log::error!("{id}: writing its journal: {e}"),
            }
        }
        if !durable {
            return;
        }
        match self.log_outcomes(outcomes, now) {
            Some(Ok(())) => return,
            Some(Err(e)) => log::error!("write-ahead log: {e}; syncing the journals instead"),
            None => {}
        }
        if let Some(file) = &written
            && let Err(e) = nix::unistd::syncfs(file)
        {
            // Delivered is delivered: the lines still go out, and a crash
            // before the next sync may send these recipients again.
            log::error!("syncfs of the queue's journals: {e}");
        }
    }

    /// One record per message and one commit; None without a log to take
    /// them.
    fn log_outcomes(
        &mut self,
        outcomes: &[(String, Vec<queue::Record>)],
        now: Instant,
    ) -> Option<io::Result<()>> {
        let process_log = self.log.as_mut()?;
        let log = process_log.for_commit()?;
        for (id, records) in outcomes {
            let mut payload = Vec::new();
            let entry = Entry::Outcomes {
                id: id.clone(),
                lines: queue::journal::encode(records),
            };
            if let Err(e) = entry.encode(&mut payload) {
                return Some(Err(io::Error::other(e.to_string())));
            }
            log.append(&payload);
        }
        let result = log.commit();
        if result.is_ok() {
            process_log.committed(now);
        }
        Some(result)
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.log.as_ref().and_then(ProcessLog::next_due)
    }

    pub fn checkpoint_if_due(&mut self, now: Instant, ending: bool) {
        if let Some(log) = self.log.as_mut() {
            log.checkpoint_if_due(now, ending);
        }
    }
}

/// Puts back what the entries after the last checkpoint hold: bounce
/// files first, then the journal lines of messages still queued.
fn recover(entries: &[(u64, Entry)], queue: &QueueDir) -> io::Result<()> {
    let (bounces, restored) = wal::restore_entries(entries)?;
    let mut journals = 0;
    for (sequence, entry) in entries {
        let Entry::Outcomes { id, lines } = entry else {
            continue;
        };
        // Finished and removed, or removed by `gsmtpd queue remove`.
        if !queue::valid_id(id) || !queue.message_path(id).exists() {
            continue;
        }
        let tmp = queue
            .root()
            .join("tmp")
            .join(format!("recovery.P{}.J{sequence}", std::process::id()));
        if queue::journal::restore(&queue.log_path(id), &tmp, lines)? {
            log::warn!("recovery: the journal of {id} rewritten from the write-ahead log");
            journals += 1;
        }
    }
    log::info!(
        "recovery of the delivery process's log: {} bounce(s), {} file(s) rewritten, {} journal(s) rewritten",
        bounces,
        restored.rewritten.len(),
        journals
    );
    Ok(())
}
