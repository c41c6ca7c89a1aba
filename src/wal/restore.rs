//! Recovery's last step: putting back, byte for byte, the Maildir files of
//! the messages the log holds after its last checkpoint.
//!
//! After a power loss a file that was linked into `new/` but not yet
//! synced can come back empty or short (ext4's delayed allocation), or
//! not at all. For each logged file:
//!
//! - where it is, with the logged bytes: left alone (no duplicate);
//! - where a Maildir reader moved it (`cur/NAME:2,FLAGS`): the same, and
//!   if its bytes differ they are rewritten under that name, flags kept;
//! - where it is with other bytes: rewritten;
//! - nowhere: written into `new/`.
//!
//! Every write goes to `tmp/` and is renamed into place, so no reader sees
//! a partial file; then one `syncfs` per file system makes it all durable
//! before anything else runs. A message a reader had already deleted in
//! the seconds before the crash, and that no checkpoint covered, comes
//! back: a duplicate, never a loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Entry, LoggedMessage};

/// What recovery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Files written again (missing, empty or short).
    pub rewritten: Vec<PathBuf>,
    /// Files found whole, where they were or moved to `cur/`.
    pub intact: usize,
}

/// Recovery's first step, for any process's log: puts back the files of
/// the messages among `entries` (see [`restore`]), logging each one
/// rewritten. Returns how many messages there were and what it did.
pub fn restore_entries(entries: &[(u64, Entry)]) -> io::Result<(usize, Restored)> {
    let messages = super::messages(entries);
    let restored = restore(&messages, &format!("recovery.P{}", std::process::id()))?;
    for path in &restored.rewritten {
        log::warn!(
            "recovery: {} rewritten from the write-ahead log",
            path.display()
        );
    }
    Ok((messages.len(), restored))
}

/// Puts back every file of `messages`.
pub fn restore(messages: &[(u64, LoggedMessage)], unique: &str) -> io::Result<Restored> {
    let mut restored = Restored::default();
    let mut devices: Vec<(u64, PathBuf)> = Vec::new();
    for (sequence, message) in messages {
        for (n, path) in message.paths.iter().enumerate() {
            let target = found(path)?.unwrap_or_else(|| path.clone());
            if fs::read(&target).is_ok_and(|bytes| bytes == message.content) {
                restored.intact += 1;
                continue;
            }
            let tmp = tmp_dir(path)?.join(format!("{unique}.R{sequence}.{n}"));
            write_new(&tmp, &message.content)?;
            fs::rename(&tmp, &target)?;
            let device = fs::metadata(&target)?.dev();
            if !devices.iter().any(|(d, _)| *d == device) {
                devices.push((device, target.clone()));
            }
            restored.rewritten.push(target);
        }
    }
    for (_, path) in devices {
        nix::unistd::syncfs(File::open(&path)?).map_err(io::Error::from)?;
    }
    Ok(restored)
}

/// Where the file logged as `path` (`.../new/NAME`) is now: there, or in
/// `cur/` under `NAME` or `NAME:INFO`.
fn found(path: &Path) -> io::Result<Option<PathBuf>> {
    if path.exists() {
        return Ok(Some(path.to_path_buf()));
    }
    let (Some(name), Some(new)) = (path.file_name(), path.parent()) else {
        return Ok(None);
    };
    let Some(cur) = new.parent().map(|mailbox| mailbox.join("cur")) else {
        return Ok(None);
    };
    if new.file_name() != Some("new".as_ref()) || !cur.is_dir() {
        return Ok(None);
    }
    let name = name.to_string_lossy();
    let moved = format!("{name}:");
    for entry in fs::read_dir(&cur)? {
        let entry = entry?;
        let other = entry.file_name();
        let other = other.to_string_lossy();
        if other == name || other.starts_with(&moved) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// `tmp/` beside the `new/` (or queue directory) the file belongs in.
fn tmp_dir(path: &Path) -> io::Result<PathBuf> {
    path.parent()
        .and_then(Path::parent)
        .map(|root| root.join("tmp"))
        .filter(|tmp| tmp.is_dir())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no tmp/ beside {}", path.display()),
            )
        })
}

fn write_new(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)
}
