//! Mailbox directory creation and the cache of mailboxes known to exist.

use std::cell::{RefCell, RefMut};
use std::collections::HashSet;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::sync_dir;

/// Past this many cached mailboxes the cache starts over, so a stream of
/// distinct recipients cannot grow it without bound.
const MAX_KNOWN: usize = 4096;

/// Rejects names that would escape or confuse the tree: empty, with '/' or
/// control characters, or starting with '.' (covers "." and "..").
pub(super) fn check_component(what: &str, name: &str) -> io::Result<()> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.chars().any(char::is_control);
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} {name:?} is not usable as a mailbox directory name"),
        ));
    }
    Ok(())
}

/// Creates `dir` with mode 0700; `Ok(true)` if it was created, `Ok(false)`
/// if a directory (or a symlink to one) was already there.
fn make_dir(dir: &Path) -> io::Result<bool> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::metadata(dir)?.is_dir() {
                Ok(false)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} exists and is not a directory", dir.display()),
                ))
            }
        }
        Err(e) => Err(e),
    }
}

/// Creates `root` and any missing ancestors (mode 0700), syncing the parent
/// of each directory created so the tree itself survives a crash.
pub(super) fn ensure_root(root: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut dir = root;
    loop {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} exists and is not a directory", dir.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(dir);
                match dir.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => dir = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for dir in missing.into_iter().rev() {
        make_dir(dir)?;
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

/// Mailboxes whose directories this process has created or seen, shared
/// with [`super::Delivery`] so a failed commit can drop its mailboxes and
/// have the next delivery recreate whatever went missing.
#[derive(Clone, Default)]
pub(super) struct KnownMailboxes(Rc<RefCell<HashSet<PathBuf>>>);

impl KnownMailboxes {
    /// Never held across a call that could borrow it again.
    fn set(&self) -> RefMut<'_, HashSet<PathBuf>> {
        self.0.borrow_mut()
    }

    /// Returns `ROOT/DOMAIN/LOCAL`, creating it and its `tmp`, `new` and
    /// `cur` if this process has not seen it yet.
    pub(super) fn ensure(&self, root: &Path, domain: &str, local: &str) -> io::Result<PathBuf> {
        let domain_dir = root.join(domain);
        let mailbox = domain_dir.join(local);
        if self.set().contains(&mailbox) {
            return Ok(mailbox);
        }
        make_dir(&domain_dir)?;
        make_dir(&mailbox)?;
        for sub in ["tmp", "new", "cur"] {
            make_dir(&mailbox.join(sub))?;
        }
        // Sync every level, not only those just created: an earlier attempt
        // may have created a directory and then failed before syncing its
        // parent, and mkdir would now report it as merely existing. This
        // runs once per mailbox per process, so the cost is small.
        sync_dir(&mailbox)?;
        sync_dir(&domain_dir)?;
        sync_dir(root)?;

        let mut known = self.set();
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(mailbox.clone());
        Ok(mailbox)
    }

    pub(super) fn forget(&self, mailboxes: &[PathBuf]) {
        let mut known = self.set();
        for mailbox in mailboxes {
            known.remove(mailbox);
        }
    }
}
