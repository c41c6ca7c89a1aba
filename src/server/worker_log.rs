//! A worker's write-ahead log under `--durability log` (see `crate::wal`
//! and `store::commit_logged`): recovery, checkpoints, and the queue
//! files held until a checkpoint covers them.
//!
//! - Recovery, before the worker serves anyone (and, for every worker's
//!   log, by the supervisor at start: [`recover_all`]): every message the
//!   log holds after its last checkpoint has its files put back where a
//!   power loss took them (`wal::restore`), then a checkpoint.
//! - A checkpoint, every `--checkpoint-interval` while records wait (or
//!   [`QUEUE_HOLD`] after a queue file was held): see
//!   `wal::ProcessLog`. After it, the worker's held queue files
//!   (`queue/held-N/`) move into `queue/new/` and are announced to the
//!   delivery process. Only then may it send one and remove it: a queue
//!   file it removed while a log record still named it would come back at
//!   the next recovery, and go out twice.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::queue::QueueDir;
use crate::wal::{self, Log, ProcessLog};

/// How long a queue file waits at most for the checkpoint that lets the
/// delivery process take it: relaying should not wait for the interval.
pub const QUEUE_HOLD: Duration = Duration::from_millis(100);

pub struct WorkerLog {
    log: ProcessLog,
    queue: QueueDir,
    slot: usize,
    held: String,
    /// Queue files moved into `new/`, not yet announced.
    released: Vec<String>,
}

impl WorkerLog {
    /// Opens worker `slot`'s log under `wal_dir` and recovers what it
    /// holds.
    pub fn open(
        wal_dir: &Path,
        slot: usize,
        maildir: &Path,
        queue: &QueueDir,
        interval: Duration,
    ) -> Result<WorkerLog, String> {
        let dir = wal_dir.join(format!("worker-{slot}"));
        let (log, entries) = ProcessLog::open(&dir, &[maildir, queue.root()], interval)?;
        let mut worker_log = WorkerLog {
            log,
            queue: queue.clone(),
            slot,
            held: QueueDir::held_name(slot),
            released: Vec::new(),
        };
        if !entries.is_empty() {
            let what = |e: std::io::Error| format!("write-ahead log {}: {e}", dir.display());
            let (messages, restored) = wal::restore_entries(&entries).map_err(what)?;
            log::info!(
                "recovery from {}: {messages} message(s) after the last checkpoint, {} file(s) rewritten, {} intact",
                dir.display(),
                restored.rewritten.len(),
                restored.intact
            );
            worker_log.log.checkpoint().map_err(what)?;
        }
        // Whatever is held now is covered: by the checkpoint just made,
        // or by one that a crash kept from moving it on.
        worker_log.release_held();
        Ok(worker_log)
    }

    /// The log and the held directory's name, for a group commit
    /// (`store::commit_logged`); None while checkpoints keep failing.
    pub fn for_commit(&mut self) -> Option<(&mut Log, &str)> {
        let held = self.held.as_str();
        self.log.for_commit().map(|log| (log, held))
    }

    /// A group went into the log at `now`; `queued` if it held queue files.
    pub fn committed(&mut self, now: Instant, queued: bool) {
        self.log.committed(now);
        if queued {
            self.log.hurry(now + QUEUE_HOLD);
        }
    }

    /// When the next checkpoint is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.log.next_due()
    }

    /// Checkpoints if one is due at `now` (or `now` is the end), then
    /// moves the held queue files on.
    pub fn checkpoint_if_due(&mut self, now: Instant, ending: bool) {
        if self.log.checkpoint_if_due(now, ending) {
            self.release_held();
        }
    }

    /// The queue files moved into `new/` since last asked, for the
    /// delivery process.
    pub fn take_released(&mut self) -> Vec<String> {
        std::mem::take(&mut self.released)
    }

    fn release_held(&mut self) {
        match self.queue.release_held(self.slot) {
            Ok(ids) => self.released.extend(ids),
            // Tried again after the next checkpoint, and at the next start.
            Err(e) => log::error!(
                "moving held queue files from {} into the queue: {e}",
                self.held
            ),
        }
    }
}

/// At start, before any worker runs: recovers every worker's log in
/// `wal_dir`, those of worker slots no longer configured included, and
/// moves every held queue file on.
pub fn recover_all(
    wal_dir: &Path,
    maildir: &Path,
    queue: &QueueDir,
    interval: Duration,
) -> Result<(), String> {
    let entries = match std::fs::read_dir(wal_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", wal_dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", wal_dir.display()))?;
        let name = entry.file_name();
        let Some(slot) = name
            .to_str()
            .and_then(|n| n.strip_prefix("worker-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let mut worker_log = WorkerLog::open(wal_dir, slot, maildir, queue, interval)?;
        let released = worker_log.take_released();
        if !released.is_empty() {
            log::info!(
                "recovery: {} queue file(s) of worker {slot} moved into the queue",
                released.len()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::Store;
    use crate::test_support::TempDir;

    struct Setup {
        _tmp: TempDir,
        wal: std::path::PathBuf,
        maildir: std::path::PathBuf,
        queue: QueueDir,
        store: Store,
    }

    fn setup() -> Setup {
        let tmp = TempDir::new("worker-log");
        let maildir = tmp.path().join("Maildir");
        let queue = QueueDir::new(tmp.path());
        queue.create().unwrap();
        let store = Store::open(&maildir, "mx.example.org")
            .unwrap()
            .with_queue(queue.root());
        Setup {
            wal: tmp.path().join("wal"),
            _tmp: tmp,
            maildir,
            queue,
            store,
        }
    }

    fn open(s: &Setup) -> WorkerLog {
        WorkerLog::open(&s.wal, 0, &s.maildir, &s.queue, Duration::from_secs(3600)).unwrap()
    }

    /// Commits one queue file through the log; returns its id and bytes.
    fn commit_queued(s: &mut Setup, log: &mut WorkerLog) -> (String, Vec<u8>) {
        let id = s.store.next_id();
        let mut delivery = s.store.begin_queued(id, b"gsmtpd-queue 1\n").unwrap();
        delivery.write(b"Subject: away\r\n\r\nx\r\n").unwrap();
        let (wal, held) = log.for_commit().unwrap();
        let held = held.to_string();
        let paths = crate::store::commit_logged(vec![vec![delivery]], wal, Some(&held))
            .pop()
            .unwrap()
            .unwrap();
        log.committed(Instant::now(), true);
        (id.to_string(), fs::read(&paths[0]).unwrap())
    }

    #[test]
    fn a_held_queue_file_moves_into_the_queue_only_after_a_checkpoint() {
        let mut s = setup();
        let mut log = open(&s);
        let (id, _) = commit_queued(&mut s, &mut log);
        let held = s.queue.root().join("held-0").join(&id);
        assert!(held.is_file() && !s.queue.message_path(&id).exists());
        assert_eq!(s.queue.held().unwrap(), vec![id.clone()]);
        assert!(
            s.queue.ids().unwrap().is_empty(),
            "not the delivery process's yet"
        );
        let due = log.next_due().unwrap();
        assert!(due <= Instant::now() + QUEUE_HOLD, "not the hour");
        log.checkpoint_if_due(Instant::now(), false);
        assert!(held.exists(), "not due yet");
        log.checkpoint_if_due(due, false);
        assert!(!held.exists() && s.queue.message_path(&id).is_file());
        assert!(s.queue.held().unwrap().is_empty());
        assert_eq!(log.take_released(), vec![id]);
        assert_eq!(log.next_due(), None, "nothing waits");
    }

    #[test]
    fn recovery_rewrites_a_held_queue_file_a_power_loss_emptied_and_releases_it() {
        let mut s = setup();
        let mut log = open(&s);
        let (id, bytes) = commit_queued(&mut s, &mut log);
        let (lost, _) = commit_queued(&mut s, &mut log);
        drop(log);
        // The power loss: one file came back empty, the other not at all.
        fs::write(s.queue.root().join("held-0").join(&id), b"").unwrap();
        fs::remove_file(s.queue.root().join("held-0").join(&lost)).unwrap();
        let mut log = open(&s);
        assert_eq!(fs::read(s.queue.message_path(&id)).unwrap(), bytes);
        assert!(s.queue.message_path(&lost).is_file());
        let mut released = log.take_released();
        released.sort();
        let mut want = vec![id, lost];
        want.sort();
        assert_eq!(released, want);
        drop(log);
        // Covered by recovery's checkpoint: nothing comes back twice.
        let mut log = open(&s);
        assert!(log.take_released().is_empty());
    }

    #[test]
    fn a_held_file_a_crash_kept_from_moving_on_moves_at_the_next_start() {
        let mut s = setup();
        let mut log = open(&s);
        let (id, _) = commit_queued(&mut s, &mut log);
        // The checkpoint record went in, the move did not (as a crash
        // between the two, or a power loss that lost the rename, leaves it).
        log.log.checkpoint().unwrap();
        drop(log);
        recover_all(&s.wal, &s.maildir, &s.queue, Duration::from_secs(2)).unwrap();
        assert!(s.queue.message_path(&id).is_file());
        assert!(!s.queue.root().join("held-0").join(&id).exists());
    }
}
