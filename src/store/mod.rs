//! Durable Maildir delivery.
//!
//! Layout: `ROOT/DOMAIN/LOCALPART/{tmp,new,cur}`, directories mode 0700,
//! message files mode 0600.
//!
//! A message is written into an anonymous file (`O_TMPFILE`) in `tmp/` of
//! its first mailbox, which has no name at all until, complete and on stable
//! storage, it is linked (through `/proc/self/fd/N`) into every mailbox's
//! `new/` as `SECS.M<usec>P<pid>Q<counter>.<hostname>,S=<size>`, where
//! `<size>` is the byte size of the stored (LF line end) file. `,S=` lets
//! Dovecot and Courier skip a stat() for quota accounting; it comes before
//! any `:2,` info suffix a reader adds when moving the file to `cur/`.
//!
//! A delivery abandoned before that, by an error or a crash, leaves nothing
//! in `tmp/`: the kernel frees an unlinked inode once its last descriptor
//! is closed (after a crash, when the file system recovers its orphans).
//!
//! Where `O_TMPFILE` is refused (older kernels, some file systems such as
//! NFS) or `/proc/self/fd` is missing, the message is written under the
//! name `SECS.M<usec>P<pid>Q<counter>.<hostname>` in `tmp/` instead, linked
//! from there and the tmp name removed; a crash can then leave that name
//! behind for [`clean_stale_tmp`], which also removes what older versions
//! left.
//!
//! [`commit_all`] returns a message's paths only once its file data and
//! every `new/` directory entry are on stable storage, so the caller may
//! answer 250 then; it does so for many messages at once (group commit).
//! If it fails, every name it had created in a `new/` is removed again.
//!
//! The outbound queue (`crate::queue`) is written the same way: a message
//! for other domains is a queue file, written into the queue's `tmp/` and
//! linked into its `new/` under the message id, in the same group commit
//! as the Maildir copies of the same message.

mod clean;
mod commit;
mod delivery;
mod dirs;
mod unique;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use log::info;

pub use clean::{STALE_TMP_AGE, clean_stale_tmp};
pub use commit::{check_kernel, commit_all, commit_logged};
pub use delivery::Delivery;
use delivery::Form;
pub use unique::MessageId;

use delivery::TmpFile;
use dirs::KnownMailboxes;

/// Where an open file can be named for `linkat(..., AT_SYMLINK_FOLLOW)`,
/// which links an `O_TMPFILE` inode without the CAP_DAC_READ_SEARCH that
/// `AT_EMPTY_PATH` needs.
const PROC_FD: &str = "/proc/self/fd";

/// Delivers messages into one Maildir tree.
pub struct Store {
    root: PathBuf,
    /// Already escaped for use in a Maildir file name.
    hostname: String,
    known: KnownMailboxes,
    /// Messages start as `O_TMPFILE` inodes until the kernel or a file
    /// system refuses one, then as names in `tmp/`.
    anonymous_tmp: bool,
    /// The outbound queue's root (with `tmp/` and `new/`), if this store
    /// queues mail for other domains.
    queue: Option<PathBuf>,
}

impl Store {
    /// `root` is the Maildir tree root (MAILDIR); it is created (mode 0700)
    /// if missing.
    pub fn open(root: &Path, hostname: &str) -> io::Result<Store> {
        dirs::ensure_root(root)?;
        let mut store = Store {
            root: root.to_path_buf(),
            hostname: unique::escape_hostname(hostname),
            known: KnownMailboxes::default(),
            anonymous_tmp: true,
            queue: None,
        };
        if !Path::new(PROC_FD).is_dir() {
            store.use_named_tmp(&format!("{PROC_FD} is not available"));
        }
        Ok(store)
    }

    /// Queues mail for other domains into `queue` (a root with `tmp/` and
    /// `new/`, which the caller has made).
    pub fn with_queue(mut self, queue: &Path) -> Store {
        self.queue = Some(queue.to_path_buf());
        self
    }

    /// Starts the queue file of message `id` (mail for other domains):
    /// `head` (its envelope block and our trace header) goes first, the
    /// content after it is stored as written.
    pub fn begin_queued(&mut self, id: MessageId, head: &[u8]) -> io::Result<Delivery> {
        let queue = self
            .queue
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "this store has no queue"))?;
        let name = id.to_string();
        let (file, tmp) = self.create_tmp(&queue.join("tmp"), &name)?;
        let mut delivery = Delivery::new(
            file,
            tmp,
            (name, Form::Queue),
            vec![queue],
            self.known.clone(),
        );
        delivery.write_raw(head)?;
        Ok(delivery)
    }

    /// From now on every message starts under a name in `tmp/`.
    fn use_named_tmp(&mut self, why: &str) {
        self.anonymous_tmp = false;
        info!("{why}: writing messages under names in tmp/ instead");
    }

    /// Makes this store write every message under a name in `tmp/`, as
    /// where `O_TMPFILE` or `/proc/self/fd` is not available.
    #[cfg(test)]
    pub(super) fn force_named_tmp(&mut self) {
        self.use_named_tmp("forced by a test");
    }

    /// The Maildir tree root this store delivers into.
    #[cfg(test)]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts message `id` for these (domain, local-part) mailboxes and
    /// writes `header` (LF line ends, stored verbatim) at its top.
    /// Mailboxes listed more than once get one copy.
    pub fn begin(
        &mut self,
        id: MessageId,
        mailboxes: &[(String, String)],
        header: &[u8],
    ) -> io::Result<Delivery> {
        if mailboxes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "delivery without mailboxes",
            ));
        }
        let mut seen = HashSet::with_capacity(mailboxes.len());
        let mut dirs = Vec::with_capacity(mailboxes.len());
        for (domain, local) in mailboxes {
            // The SMTP layer validates these already; checking again here
            // keeps a bug there from writing outside the tree.
            dirs::check_component("domain", domain)?;
            dirs::check_component("local part", local)?;
            if seen.insert((domain.as_str(), local.as_str())) {
                dirs.push(self.known.ensure(&self.root, domain, local)?);
            }
        }

        let name = id.maildir_name(&self.hostname);
        let (file, tmp) = match self.create_tmp(&dirs[0].join("tmp"), &name) {
            Ok(created) => created,
            Err(e) => {
                // Perhaps someone removed the mailbox since we cached it.
                self.known.forget(&dirs);
                return Err(e);
            }
        };
        let mut delivery =
            Delivery::new(file, tmp, (name, Form::Maildir), dirs, self.known.clone());
        delivery.write_raw(header)?;
        Ok(delivery)
    }

    /// Opens the file a new message is written into: an `O_TMPFILE` inode
    /// in `tmp_dir` if possible, else `tmp_dir/name`. Readable too, so
    /// that copies to other file systems can be made from it.
    fn create_tmp(&mut self, tmp_dir: &Path, name: &str) -> io::Result<(fs::File, TmpFile)> {
        if self.anonymous_tmp {
            let anonymous = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .mode(0o600)
                .open(tmp_dir);
            match anonymous {
                Ok(file) => return Ok((file, TmpFile::Anonymous)),
                // Refused by this kernel (EISDIR: too old to know the flag)
                // or this file system. Not tried again, so that such a
                // store does not pay a failed open per message; where
                // mailboxes span file systems, those that would allow it
                // lose only the saving, not safety.
                Err(e) if tmpfile_unsupported(&e) => {
                    self.use_named_tmp(&format!("O_TMPFILE refused in {}: {e}", tmp_dir.display()));
                }
                Err(e) => return Err(e),
            }
        }
        let path = tmp_dir.join(name);
        // create_new: a name clash with another writer must fail, never
        // let two messages share one file.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((file, TmpFile::Named { path, live: true }))
    }

    /// A fresh message id, from the current time, this process's pid
    /// (read now, so that a forked worker counts as itself) and a
    /// process-wide counter.
    pub fn next_id(&self) -> MessageId {
        MessageId::next()
    }
}

/// `open(O_TMPFILE)` failed because the kernel or file system does not
/// support it, not for a reason that a named file would share.
fn tmpfile_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
    )
}

/// fsync a directory so that entries created in or removed from it survive
/// a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
