//! Removal of stale files left in `tmp/` by deliveries cut short by a crash:
//! those written under a name in `tmp/` because `O_TMPFILE` was not
//! available, and those of versions that always did so. An anonymous
//! (`O_TMPFILE`) file leaves nothing to remove.

use std::fs::{self, DirEntry};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use log::{info, warn};

/// The age the Maildir spec gives for tmp files that are certainly
/// abandoned.
pub const STALE_TMP_AGE: Duration = Duration::from_secs(36 * 60 * 60);

/// Removes regular files in any `ROOT/*/*/tmp/` last modified more than
/// `max_age` ago and returns how many. The spec speaks of access time, but
/// mtime is used since atime is unreliable under noatime/relatime and a
/// tmp file is only ever written. A missing root counts as empty; problems
/// below the root are logged and skipped so one bad mailbox cannot stop the
/// cleanup of the others.
pub fn clean_stale_tmp(root: &Path, max_age: Duration) -> io::Result<usize> {
    let domains = match subdirs(root) {
        Ok(domains) => domains,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for domain in domains {
        let mailboxes = match subdirs(&domain) {
            Ok(mailboxes) => mailboxes,
            Err(e) => {
                warn!("reading {}: {e}", domain.display());
                continue;
            }
        };
        for mailbox in mailboxes {
            let tmp = mailbox.join("tmp");
            let entries = match fs::read_dir(&tmp) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    warn!("reading {}: {e}", tmp.display());
                    continue;
                }
            };
            for entry in entries {
                match remove_if_stale(entry, now, max_age) {
                    Ok(true) => removed += 1,
                    Ok(false) => {}
                    Err(e) => warn!("cleaning {}: {e}", tmp.display()),
                }
            }
        }
    }
    if removed > 0 {
        info!(
            "removed {removed} stale file(s) from tmp/ under {}",
            root.display()
        );
    }
    Ok(removed)
}

/// Directories in `dir`, following symlinks (a domain or mailbox may be a
/// link to another volume). Dot names are skipped: domains and local parts
/// never start with '.', so such entries belong to someone else.
fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            out.push(path);
        }
    }
    Ok(out)
}

fn remove_if_stale(
    entry: io::Result<DirEntry>,
    now: SystemTime,
    max_age: Duration,
) -> io::Result<bool> {
    let entry = entry?;
    // DirEntry::metadata does not follow symlinks: only plain files that
    // deliveries create are candidates.
    let meta = entry.metadata()?;
    if !meta.is_file() {
        return Ok(false);
    }
    // An mtime in the future (clock stepped back) counts as fresh.
    let age = now.duration_since(meta.modified()?).unwrap_or_default();
    if age <= max_age {
        return Ok(false);
    }
    fs::remove_file(entry.path())?;
    Ok(true)
}
