//! Tells `Certs` when the certificate, key and OCSP files may have changed,
//! so that a new connection costs one `read` of an inotify descriptor instead
//! of a `stat` of every file.
//!
//! The directories holding the files are watched (and, when a path is a
//! symlink, the directory of its target too). The kernel queues the event
//! before the rename, write or unlink that caused it returns, so a change
//! made before a client connected is seen when its session starts. What
//! inotify cannot see (NFS, a change made on another host) is left to the
//! caller's periodic check.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

pub struct FileWatch {
    /// None when inotify is unusable: every call then says "maybe".
    inotify: Option<Inotify>,
    dirs: Vec<PathBuf>,
    /// File names whose content or metadata matter (other files in the
    /// same directories, such as the session cache, are written all the
    /// time and only a rename, link or unlink of theirs counts).
    names: BTreeSet<OsString>,
    /// Some directory is not watched (it was removed, replaced, or could
    /// not be watched): add the watches again on the next call.
    rearm: bool,
}

/// Renames, links and unlinks change what a path resolves to, whatever the
/// name (a symlink swapped in the directory, Kubernetes' `..data`).
fn namespace_events() -> AddWatchFlags {
    AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
}

/// The directory itself went away, or events were lost.
fn lost_events() -> AddWatchFlags {
    AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_IGNORED
        | AddWatchFlags::IN_UNMOUNT
        | AddWatchFlags::IN_Q_OVERFLOW
}

fn content_events() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_CLOSE_WRITE
}

impl FileWatch {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a Path>) -> FileWatch {
        let mut dirs = BTreeSet::new();
        let mut names = BTreeSet::new();
        for path in paths {
            let resolved = fs::canonicalize(path).ok();
            for p in std::iter::once(path).chain(resolved.as_deref()) {
                let dir = match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                dirs.insert(dir);
                if let Some(name) = p.file_name() {
                    names.insert(name.to_owned());
                }
            }
        }
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| {
                log::debug!(
                    "inotify unavailable ({e}): certificate files are checked on every connection"
                )
            })
            .ok();
        let mut watch = FileWatch {
            inotify,
            dirs: dirs.into_iter().collect(),
            names,
            rearm: true,
        };
        watch.arm();
        watch
    }

    /// The inotify descriptor, for an event loop to wait on (it becomes
    /// readable when something happened in a watched directory).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        self.inotify.as_ref().map(|i| i.as_fd().as_raw_fd())
    }

    /// Whether a watched file may have changed since the last call. True
    /// whenever that cannot be ruled out.
    pub fn changed(&mut self) -> bool {
        let Some(inotify) = &self.inotify else {
            return true;
        };
        let mut changed = false;
        loop {
            match inotify.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    for e in &events {
                        if e.mask.intersects(lost_events()) {
                            self.rearm = true;
                            changed = true;
                        } else if e.mask.intersects(namespace_events())
                            || e.name.as_ref().is_none_or(|n| self.names.contains(n))
                        {
                            changed = true;
                        }
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("inotify: {e}; checking certificate files on every connection");
                    self.inotify = None;
                    return true;
                }
            }
        }
        if self.rearm {
            // Whatever happened while a directory was unwatched went
            // unseen, so nothing can be ruled out, now or until every watch
            // is back. Watching before the caller looks at the files means
            // a change made after that look is queued for the next call.
            self.arm();
            changed = true;
        }
        changed
    }

    /// Adds a watch on every directory (again: for one still watched this
    /// changes nothing). True if all are watched.
    fn arm(&mut self) -> bool {
        let Some(inotify) = &self.inotify else {
            return false;
        };
        let mask = namespace_events()
            | content_events()
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        let mut all = true;
        for dir in &self.dirs {
            if let Err(e) = inotify.add_watch(dir.as_path(), mask) {
                log::debug!("inotify: cannot watch {}: {e}", dir.display());
                all = false;
            }
        }
        self.rearm = !all;
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn sees_replacement_rewrite_and_link_swaps_but_not_other_files() {
        let tmp = TempDir::new("file-watch");
        let dir = tmp.path();
        let cert = dir.join("cert.pem");
        fs::write(&cert, b"one").unwrap();
        fs::write(dir.join("other"), b"x").unwrap();
        let mut watch = FileWatch::new([cert.as_path()]);
        assert!(!watch.changed());
        // Atomic replacement.
        fs::write(dir.join("cert.tmp"), b"two").unwrap();
        assert!(watch.changed(), "creating a file is a namespace change");
        fs::rename(dir.join("cert.tmp"), &cert).unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
        // Rewritten in place.
        fs::write(&cert, b"three").unwrap();
        assert!(watch.changed());
        // Another file's content is none of our business.
        fs::write(dir.join("other"), b"y").unwrap();
        assert!(!watch.changed());
    }

    #[test]
    fn follows_symlinks_and_recreated_directories() {
        let tmp = TempDir::new("file-watch");
        let real = tmp.path().join("real");
        let live = tmp.path().join("live");
        fs::create_dir(&real).unwrap();
        fs::create_dir(&live).unwrap();
        fs::write(real.join("cert.pem"), b"one").unwrap();
        let link = live.join("cert.pem");
        std::os::unix::fs::symlink(real.join("cert.pem"), &link).unwrap();
        let mut watch = FileWatch::new([link.as_path()]);
        assert!(!watch.changed());
        // The target rewritten in place.
        fs::write(real.join("cert.pem"), b"two").unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
        // The directory removed and made again: changes keep being seen.
        fs::remove_file(&link).unwrap();
        fs::remove_dir(&live).unwrap();
        assert!(watch.changed());
        assert!(watch.changed(), "unwatched while the directory is missing");
        fs::create_dir(&live).unwrap();
        std::os::unix::fs::symlink(real.join("cert.pem"), &link).unwrap();
        assert!(watch.changed(), "recreated while unwatched");
        assert!(!watch.changed());
        fs::remove_file(&link).unwrap();
        assert!(watch.changed());
    }
}
