//! Durable Maildir delivery.
//!
//! Layout: `ROOT/DOMAIN/LOCALPART/{tmp,new,cur}`, directories mode 0700,
//! message files mode 0600.
//!
//! A message is written into `tmp/` of its first mailbox under the name
//! `SECS.M<usec>P<pid>Q<counter>.<hostname>` and, once complete and fsync'd,
//! hard-linked into every mailbox's `new/` as
//! `SECS.M<usec>P<pid>Q<counter>.<hostname>,S=<size>`, where `<size>` is the
//! byte size of the stored (LF line end) file. `,S=` lets Dovecot and
//! Courier skip a stat() for quota accounting; it comes before any `:2,`
//! info suffix a reader adds when moving the file to `cur/`.
//!
//! [`commit_all`] returns a message's paths only once its file data and
//! every `new/` directory entry are on stable storage, so the caller may
//! answer 250 then; it does so for many messages at once (group commit).
//! If it fails, every name it had created in a `new/` is removed again.

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

pub use clean::{STALE_TMP_AGE, clean_stale_tmp};
pub use commit::{check_kernel, commit_all};
pub use delivery::Delivery;

use dirs::KnownMailboxes;

/// Delivers messages into one Maildir tree.
pub struct Store {
    root: PathBuf,
    /// Already escaped for use in a Maildir file name.
    hostname: String,
    pid: u32,
    known: KnownMailboxes,
}

impl Store {
    /// `root` is the Maildir tree root (MAILDIR); it is created (mode 0700)
    /// if missing.
    pub fn open(root: &Path, hostname: &str) -> io::Result<Store> {
        dirs::ensure_root(root)?;
        Ok(Store {
            root: root.to_path_buf(),
            hostname: unique::escape_hostname(hostname),
            pid: std::process::id(),
            known: KnownMailboxes::default(),
        })
    }

    /// The Maildir tree root this store delivers into.
    #[cfg(test)]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts one message for these (domain, local-part) mailboxes and
    /// writes `header` (LF line ends, stored verbatim) at its top.
    /// Mailboxes listed more than once get one copy.
    pub fn begin(&mut self, mailboxes: &[(String, String)], header: &[u8]) -> io::Result<Delivery> {
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

        let name = unique::maildir_name(
            unique::now(),
            self.pid,
            unique::next_counter(),
            &self.hostname,
        );
        let tmp_dir = dirs[0].join("tmp");
        let tmp_path = tmp_dir.join(&name);
        // create_new: a name clash with another writer must fail, never
        // let two messages share one file.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path);
        let file = match file {
            Ok(file) => file,
            Err(e) => {
                // Perhaps someone removed the mailbox since we cached it.
                self.known.forget(&dirs);
                return Err(e);
            }
        };
        let mut delivery = Delivery::new(file, tmp_dir, name, dirs, self.known.clone());
        delivery.write_raw(header)?;
        Ok(delivery)
    }

    /// A fresh id for log lines, Exim-like base62 `TTTTTT-PPPPPP-CC` from
    /// the current time, the pid and a process-wide counter (the last part
    /// grows beyond two digits once the counter passes 62²).
    pub fn next_id(&mut self) -> String {
        unique::log_id(unique::now(), self.pid, unique::next_counter())
    }
}

/// fsync a directory so that entries created in or removed from it survive
/// a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
