//! One message on its way into one or more mailboxes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::mem;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, error, warn};

use super::dirs::KnownMailboxes;
use super::sync_dir;

/// Large enough that a DATA phase costs a handful of write(2) calls, not one
/// per network read.
const BUFFER_SIZE: usize = 64 * 1024;

/// A message being written into `tmp/`. Dropping it without
/// [`commit`](Delivery::commit) aborts it and removes the tmp file.
pub struct Delivery {
    /// `None` once `finish_writing` has flushed it into `file`.
    out: Option<BufWriter<File>>,
    file: Option<File>,
    /// The file system of `file`, once written.
    device: u64,
    tmp_path: PathBuf,
    /// The unique name without the `,S=` suffix.
    name: String,
    /// Distinct mailbox directories; the first holds the tmp file.
    mailboxes: Vec<PathBuf>,
    known: KnownMailboxes,
    /// Bytes written to the file so far (after CRLF conversion).
    size: u64,
    /// The last byte seen was a CR that may turn out to start a CRLF.
    pending_cr: bool,
    /// A write failed, so the file may be missing data in the middle.
    failed: bool,
    /// The tmp name still exists and Drop must remove it.
    tmp_live: bool,
    /// Names created in `new/` directories by `publish`.
    linked: Vec<PathBuf>,
    /// `new/` directories on other file systems than `file`.
    foreign_dirs: Vec<PathBuf>,
}

impl Delivery {
    pub(super) fn new(
        file: File,
        tmp_dir: PathBuf,
        name: String,
        mailboxes: Vec<PathBuf>,
        known: KnownMailboxes,
    ) -> Delivery {
        Delivery {
            out: Some(BufWriter::with_capacity(BUFFER_SIZE, file)),
            file: None,
            device: 0,
            tmp_path: tmp_dir.join(&name),
            name,
            mailboxes,
            known,
            size: 0,
            pending_cr: false,
            failed: false,
            tmp_live: true,
            linked: Vec::new(),
            foreign_dirs: Vec::new(),
        }
    }

    /// Bytes stored so far (header plus LF-converted content).
    #[cfg(test)]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends content with CRLF line ends, storing it with LF line ends.
    /// A CRLF split across two calls is still converted; a CR not followed
    /// by LF is kept.
    pub fn write(&mut self, content: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(earlier_failure());
        }
        let result = self.convert(content);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Writes bytes unchanged (the header, which already has LF line ends).
    pub(super) fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let result = self.emit(bytes);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn convert(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.pending_cr {
            self.pending_cr = false;
            // A following LF is emitted by the loop below, which drops the CR.
            if data[0] != b'\n' {
                self.emit(b"\r")?;
            }
        }
        let mut start = 0;
        let mut from = 0;
        while let Some(offset) = data[from..].iter().position(|&b| b == b'\r') {
            let cr = from + offset;
            match data.get(cr + 1) {
                None => {
                    self.emit(&data[start..cr])?;
                    self.pending_cr = true;
                    return Ok(());
                }
                Some(b'\n') => {
                    self.emit(&data[start..cr])?;
                    start = cr + 1;
                }
                Some(_) => {}
            }
            from = cr + 1;
        }
        self.emit(&data[start..])
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        let out = self.out.as_mut().ok_or_else(finished)?;
        out.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Makes the message durable in every mailbox's `new/` and returns the
    /// final paths: a group commit of one (see [`super::commit_all`]).
    #[cfg(test)]
    pub fn commit(self) -> io::Result<Vec<PathBuf>> {
        super::commit_all(vec![self])
            .pop()
            .unwrap_or_else(|| Err(finished()))
    }

    /// Writes out what is still buffered. The message is then complete in
    /// `tmp/` but not yet durable.
    pub(super) fn finish_writing(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(earlier_failure());
        }
        if self.pending_cr {
            // The content ended in a lone CR, which is kept as is.
            self.pending_cr = false;
            self.write_raw(b"\r")?;
        }
        let out = self.out.take().ok_or_else(finished)?;
        let file = match out.into_inner() {
            Ok(file) => file,
            Err(e) => {
                let error = io::Error::new(e.error().kind(), e.error().to_string());
                // into_parts, not drop: dropping would retry the failed write.
                drop(e.into_inner().into_parts());
                return Err(error);
            }
        };
        self.device = file.metadata()?.dev();
        self.file = Some(file);
        Ok(())
    }

    /// The written file, which stays open until the delivery ends, so that
    /// it can name its file system to `syncfs`.
    pub(super) fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The file system the tmp file (and every hard link to it) lives on.
    pub(super) fn device(&self) -> u64 {
        self.device
    }

    /// Links the written file into every mailbox's `new/` and drops its
    /// tmp name. Nothing is synced here: the caller must already have made
    /// the data durable, and makes the names durable afterwards. On error
    /// nothing of the message remains in any `new/`.
    pub(super) fn publish(&mut self) -> io::Result<()> {
        let final_name = format!("{},S={}", self.name, self.size);
        let mut linked = Vec::with_capacity(self.mailboxes.len());
        let mut foreign = Vec::new();
        if let Err(e) = self.link_all(&final_name, &mut linked, &mut foreign) {
            roll_back(&linked);
            return Err(e);
        }
        self.linked = linked;
        self.foreign_dirs = foreign;
        // Failing from here on would make the client send the message
        // again, so problems removing the tmp name are only logged
        // (clean_stale_tmp removes leftovers eventually).
        self.tmp_live = false;
        if let Err(e) = fs::remove_file(&self.tmp_path) {
            warn!("removing {}: {e}", self.tmp_path.display());
        }
        Ok(())
    }

    /// Syncs the `new/` directories that lie on another file system than
    /// the tmp file (the copies made by `copy_into`), which the caller's
    /// `syncfs` does not cover.
    pub(super) fn sync_foreign_dirs(&self) -> io::Result<()> {
        for dir in &self.foreign_dirs {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// The message is on stable storage in every `new/`.
    pub(super) fn delivered(mut self) -> Vec<PathBuf> {
        debug!(
            "delivered {} ({} bytes) to {} mailbox(es)",
            self.name,
            self.size,
            self.linked.len()
        );
        mem::take(&mut self.linked)
    }

    /// The commit failed: undoes whatever `publish` did, and lets the next
    /// delivery check and recreate the mailbox directories, since the
    /// failure may be one that vanished or was replaced. Drop removes the
    /// tmp file if it is still there.
    pub(super) fn failed(mut self, e: &io::Error) {
        warn!("delivery {} failed: {e}", self.name);
        roll_back(&mem::take(&mut self.linked));
        self.known.forget(&self.mailboxes);
    }

    /// Links the tmp file into every `new/`, recording each created name in
    /// `linked` as it goes so a failure can undo them, and the `new/`
    /// directories on other file systems in `foreign`.
    fn link_all(
        &self,
        final_name: &str,
        linked: &mut Vec<PathBuf>,
        foreign: &mut Vec<PathBuf>,
    ) -> io::Result<()> {
        for mailbox in &self.mailboxes {
            let target = mailbox.join("new").join(final_name);
            // link, not rename, even for the first mailbox: link refuses to
            // replace an existing name where rename would silently
            // overwrite another message.
            match fs::hard_link(&self.tmp_path, &target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                    self.copy_into(mailbox, &target)?;
                    foreign.push(mailbox.join("new"));
                }
                Err(e) => return Err(e),
            }
            linked.push(target);
        }
        Ok(())
    }

    /// For a mailbox on another file system than the first one: copy the
    /// message into its own `tmp/`, make the copy durable, link it into
    /// `new/` as `target`, and drop the copy's tmp name.
    fn copy_into(&self, mailbox: &Path, target: &Path) -> io::Result<()> {
        let copy_path = mailbox.join("tmp").join(&self.name);
        let mut copy = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy_path)?;
        let result = File::open(&self.tmp_path)
            .and_then(|mut src| io::copy(&mut src, &mut copy))
            .and_then(|_| copy.sync_all())
            .and_then(|()| fs::hard_link(&copy_path, target));
        drop(copy);
        if let Err(e) = fs::remove_file(&copy_path) {
            warn!("removing {}: {e}", copy_path.display());
        }
        result
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            // into_parts, not drop: no point flushing data about to be
            // deleted.
            drop(out.into_parts());
        }
        if self.tmp_live {
            match fs::remove_file(&self.tmp_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!("removing {}: {e}", self.tmp_path.display()),
            }
        }
    }
}

/// Removes names already linked into `new/` dirs by a failed commit and
/// syncs their directories, so that no partial delivery survives a crash.
fn roll_back(linked: &[PathBuf]) {
    for path in linked {
        if let Err(e) = fs::remove_file(path) {
            error!("cannot undo partial delivery {}: {e}", path.display());
            continue;
        }
        if let Some(dir) = path.parent()
            && let Err(e) = sync_dir(dir)
        {
            error!("fsync {} after undoing delivery: {e}", dir.display());
        }
    }
}

fn earlier_failure() -> io::Error {
    io::Error::other("an earlier write to this message failed")
}

fn finished() -> io::Error {
    io::Error::other("message already committed")
}
