//! Group commit: the messages completed in one turn of the event loop are
//! made durable together, with one `syncfs` per file system and phase
//! instead of three `fsync`s per message.
//!
//! The Maildir rule that a name in `new/` always points at complete data
//! survives a crash at any point, because the names are created only after
//! the data is on stable storage:
//!
//! 1. every message's buffered bytes are written to its file in `tmp/`,
//!    an `O_TMPFILE` inode without a name (or, where that is not
//!    available, a file under a name in `tmp/`);
//! 2. `syncfs` on each file system the files live on (data and inodes;
//!    write-back covers every dirty inode of the file system, named or not);
//! 3. each message is linked into its mailboxes' `new/` (and a `tmp/` name
//!    removed);
//! 4. `syncfs` again, for the directory entries.
//!
//! A crash before step 3 leaves no name in `new/`, and for an anonymous
//! file nothing in `tmp/` either: its inode is freed when the file system
//! recovers.
//!
//! Only then does the caller learn that a message is durable, and only then
//! may it answer 250. A message whose sync fails is rolled back (its names
//! in `new/` removed) and reported as failed, so its client gets a 4xx and
//! retries. Since Linux 5.8 `syncfs` reports writeback errors, sampled from
//! when the file was opened, so a failed write-back cannot pass unnoticed.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use super::Delivery;

/// Makes a file system's written data and metadata durable; tests use one
/// that records or fails.
pub(super) trait Durability {
    fn sync_fs(&mut self, file: &File) -> io::Result<()>;
}

/// The real thing.
struct Syncfs;

impl Durability for Syncfs {
    fn sync_fs(&mut self, file: &File) -> io::Result<()> {
        nix::unistd::syncfs(file).map_err(io::Error::from)
    }
}

/// Warns when the running kernel's `syncfs` cannot report write-back
/// errors (before Linux 5.8), which group commit relies on.
pub fn check_kernel() {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return;
    };
    if reports_writeback_errors(&release) == Some(false) {
        log::warn!(
            "Linux {} is older than 5.8: syncfs does not report write-back errors, \
             so a failing disk could go unnoticed before a 250",
            release.trim()
        );
    }
}

/// For a release string such as "6.1.0-18-amd64"; None if unreadable.
fn reports_writeback_errors(release: &str) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= (5, 8))
}

/// Makes every message durable (see the module documentation) and
/// returns, in order, each one's final paths or why it failed. A message
/// is a unit of deliveries (its Maildir copy and its queue file, when it
/// has local and remote recipients) that succeed together or fail
/// together: a failed one leaves nothing behind.
pub fn commit_all(messages: Vec<Vec<Delivery>>) -> Vec<io::Result<Vec<PathBuf>>> {
    commit_with(messages, &mut Syncfs)
}

pub(super) fn commit_with(
    messages: Vec<Vec<Delivery>>,
    durability: &mut dyn Durability,
) -> Vec<io::Result<Vec<PathBuf>>> {
    let count = messages.len();
    let mut batch = live_batch(messages);
    each_live(&mut batch, Delivery::finish_writing);
    sync_phase(&mut batch, durability);
    each_live(&mut batch, Delivery::publish);
    sync_phase(&mut batch, durability);
    each_live(&mut batch, |delivery| delivery.sync_foreign_dirs());
    let mut results: Vec<io::Result<Vec<PathBuf>>> = (0..count).map(|_| Ok(Vec::new())).collect();
    settle(batch, &mut results);
    results
}

/// Every delivery of every message, live, with its message's index.
fn live_batch(messages: Vec<Vec<Delivery>>) -> Vec<(usize, Entry)> {
    messages
        .into_iter()
        .enumerate()
        .flat_map(|(unit, deliveries)| {
            deliveries
                .into_iter()
                .map(move |d| (unit, Entry::Live(Box::new(d))))
        })
        .collect()
}

/// Each message's outcome into `results` (indexed by message): its final
/// paths, or the first failure of its parts.
fn settle(batch: Vec<(usize, Entry)>, results: &mut [io::Result<Vec<PathBuf>>]) {
    for (unit, entry) in batch {
        match (entry, &mut results[unit]) {
            (Entry::Live(delivery), Ok(paths)) => paths.extend((*delivery).delivered()),
            (Entry::Failed(e), result @ Ok(_)) => *result = Err(e),
            // A failed unit's live parts were failed with it.
            (_, Err(_)) => {}
        }
    }
}

/// `--durability log`: the group's files are written without being
/// synced, their names and bytes go into the write-ahead log, one
/// `fdatasync` of the log makes the whole group durable, and only then are
/// the files linked under those names; a checkpoint (`syncfs`, later) makes
/// the files durable on their own and frees the log. After a crash,
/// recovery rewrites from the log what a power loss took
/// (`crate::wal::restore`). Logging comes first so that no name can reach
/// the disk without its record: a file linked before its record was
/// durable could come back empty after a power loss with nothing to
/// repair it. A file that fails to link after the commit fails its
/// message (4xx), and its record is withdrawn.
///
/// A worker's queue files are linked into `held` (`queue/held-N/`), not
/// `queue/new/`: the delivery process must not send one, and remove it,
/// before a checkpoint covers it, or replay would bring it back. The
/// worker's checkpoint moves them into `new/`. The delivery process's own
/// bounces (`held` None) go straight into `new/`: its log also records
/// what became of them, so their replay finds them finished.
pub fn commit_logged(
    messages: Vec<Vec<Delivery>>,
    log: &mut crate::wal::Log,
    held: Option<&str>,
) -> Vec<io::Result<Vec<PathBuf>>> {
    let count = messages.len();
    let mut results: Vec<io::Result<Vec<PathBuf>>> = (0..count).map(|_| Ok(Vec::new())).collect();
    let mut batch = live_batch(messages);
    if let Some(held) = held {
        for (_, entry) in batch.iter_mut() {
            if let Entry::Live(delivery) = entry {
                delivery.hold_in(held);
            }
        }
    }
    each_live(&mut batch, Delivery::finish_writing_logged);
    let sequences = log_group(&mut batch, log);
    each_live(&mut batch, Delivery::publish);
    if let Some(sequences) = sequences {
        withdraw_failed(&batch, &sequences, log);
    }
    settle(batch, &mut results);
    results
}

/// One record per live delivery (its Maildir file, or its queue file),
/// then one commit of the log: every live message fails with it if it
/// fails. Returns each delivery's record, once committed.
fn log_group(batch: &mut [(usize, Entry)], log: &mut crate::wal::Log) -> Option<Vec<Option<u64>>> {
    let mut sequences = vec![None; batch.len()];
    for ((_, entry), sequence) in batch.iter_mut().zip(sequences.iter_mut()) {
        let Entry::Live(delivery) = entry else {
            continue;
        };
        let mut payload = Vec::new();
        let logged = delivery.logged().and_then(|message| {
            crate::wal::Entry::Message(message)
                .encode(&mut payload)
                .map_err(|e| io::Error::other(format!("write-ahead log: {e}")))
        });
        match logged {
            Ok(()) => *sequence = Some(log.append(&payload)),
            Err(e) => entry.fail(e),
        }
    }
    fail_whole_messages(batch);
    if let Err(e) = log.commit() {
        for (_, entry) in batch.iter_mut() {
            if matches!(entry, Entry::Live(_)) {
                entry.fail(io::Error::new(e.kind(), format!("write-ahead log: {e}")));
            }
        }
        return None;
    }
    Some(sequences)
}

/// The records of deliveries that failed after the log's commit (or with
/// another part of their message) count for nothing at replay: their
/// clients get a 4xx and send them again.
fn withdraw_failed(batch: &[(usize, Entry)], sequences: &[Option<u64>], log: &mut crate::wal::Log) {
    let withdrawn: Vec<u64> = batch
        .iter()
        .zip(sequences)
        .filter_map(|((_, entry), sequence)| match entry {
            Entry::Failed(_) => *sequence,
            Entry::Live(_) => None,
        })
        .collect();
    if withdrawn.is_empty() {
        return;
    }
    let mut payload = Vec::new();
    let entry = crate::wal::Entry::Withdrawn {
        sequences: withdrawn,
    };
    let result = entry
        .encode(&mut payload)
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|()| {
            log.append(&payload);
            log.commit()
        });
    if let Err(e) = result {
        // Replay may then write a message its client was refused: a
        // duplicate once the client sends it again, never a loss.
        log::error!("write-ahead log: withdrawing refused messages: {e}");
    }
}

enum Entry {
    Live(Box<Delivery>),
    Failed(io::Error),
}

impl Entry {
    /// A live delivery fails: it undoes what it did and keeps the reason.
    fn fail(&mut self, e: io::Error) {
        if let Entry::Live(delivery) = std::mem::replace(self, Entry::Failed(e))
            && let Entry::Failed(e) = self
        {
            delivery.failed(e);
        }
    }
}

/// Runs one step of the commit on every delivery still live, then fails
/// the rest of every message of which a delivery failed.
fn each_live(batch: &mut [(usize, Entry)], mut step: impl FnMut(&mut Delivery) -> io::Result<()>) {
    for (_, entry) in batch.iter_mut() {
        if let Entry::Live(delivery) = entry
            && let Err(e) = step(delivery)
        {
            entry.fail(e);
        }
    }
    fail_whole_messages(batch);
}

/// A message is durable everywhere or nowhere: its other deliveries fail
/// with the one that failed (undoing what they did).
fn fail_whole_messages(batch: &mut [(usize, Entry)]) {
    let failed: Vec<(usize, String)> = batch
        .iter()
        .filter_map(|(unit, entry)| match entry {
            Entry::Failed(e) => Some((*unit, e.to_string())),
            Entry::Live(_) => None,
        })
        .collect();
    for (unit, entry) in batch.iter_mut() {
        if let Some((_, why)) = failed.iter().find(|(u, _)| u == unit)
            && matches!(entry, Entry::Live(_))
        {
            entry.fail(io::Error::other(format!(
                "another part of the message failed: {why}"
            )));
        }
    }
}

/// One `syncfs` per file system among the live deliveries; every delivery
/// on a file system whose sync failed fails with it (and its message).
fn sync_phase(batch: &mut [(usize, Entry)], durability: &mut dyn Durability) {
    let mut devices: Vec<u64> = Vec::new();
    for (_, entry) in batch.iter() {
        if let Entry::Live(delivery) = entry
            && !devices.contains(&delivery.device())
        {
            devices.push(delivery.device());
        }
    }
    for device in devices {
        let file = batch.iter().find_map(|(_, entry)| match entry {
            Entry::Live(d) if d.device() == device => d.file(),
            _ => None,
        });
        let Some(result) = file.map(|file| durability.sync_fs(file)) else {
            continue;
        };
        let Err(e) = result else {
            continue;
        };
        for (_, entry) in batch.iter_mut() {
            if matches!(entry, Entry::Live(d) if d.device() == device) {
                entry.fail(io::Error::new(e.kind(), format!("syncfs: {e}")));
            }
        }
    }
    fail_whole_messages(batch);
}

#[cfg(test)]
mod tests {
    use super::reports_writeback_errors;

    #[test]
    fn kernel_releases() {
        assert_eq!(reports_writeback_errors("6.1.0-18-amd64\n"), Some(true));
        assert_eq!(reports_writeback_errors("5.8.0"), Some(true));
        assert_eq!(reports_writeback_errors("5.4.0-150-generic"), Some(false));
        assert_eq!(reports_writeback_errors("4.19.0"), Some(false));
        assert_eq!(reports_writeback_errors("garbage"), None);
    }
}
