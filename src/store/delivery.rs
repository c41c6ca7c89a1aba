//! One message on its way into one or more mailboxes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::mem;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::{debug, error, warn};
use nix::fcntl::{AT_FDCWD, AtFlags};

use super::dirs::KnownMailboxes;
use super::{PROC_FD, sync_dir};

/// Large enough that a DATA phase costs a handful of write(2) calls, not one
/// per network read.
const BUFFER_SIZE: usize = 64 * 1024;

/// How the file a message is written into exists in `tmp/` before
/// `publish` names it in `new/`.
pub(super) enum TmpFile {
    /// An `O_TMPFILE` inode without any name: linked through
    /// `/proc/self/fd/N`, freed by the kernel if never linked.
    Anonymous,
    /// The fallback, a name in `tmp/`: linked from, then removed; `live`
    /// while it exists.
    Named { path: PathBuf, live: bool },
}

impl TmpFile {
    /// Where `linkat` finds `file`, and the flag it needs: the
    /// `/proc/self/fd` entry is a symlink to follow, a tmp name is the file.
    fn link_source(&self, file: &File) -> (PathBuf, AtFlags) {
        match self {
            TmpFile::Anonymous => (
                Path::new(PROC_FD).join(file.as_raw_fd().to_string()),
                AtFlags::AT_SYMLINK_FOLLOW,
            ),
            TmpFile::Named { path, .. } => (path.clone(), AtFlags::empty()),
        }
    }

    /// Removes the tmp name, if there is one. Only logs a failure, since
    /// nothing depends on it: clean_stale_tmp removes leftovers eventually.
    fn remove_name(&mut self) {
        if let TmpFile::Named { path, live } = self
            && mem::take(live)
        {
            match fs::remove_file(&*path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!("removing {}: {e}", path.display()),
            }
        }
    }
}

/// How a message is kept where it is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Form {
    /// A Maildir file: LF line ends, named `NAME,S=<size>`.
    Maildir,
    /// A queue file: the bytes as given (CRLF, as they go on the wire),
    /// named `NAME` (the message id).
    Queue,
}

/// A message being written into `tmp/`. Dropping it without
/// [`commit`](Delivery::commit) aborts it: an anonymous file just goes
/// away, a named one is removed.
pub struct Delivery {
    /// `None` once `finish_writing` has flushed it into `file`.
    out: Option<BufWriter<File>>,
    file: Option<File>,
    /// The file system of `file`, once written.
    device: u64,
    tmp: TmpFile,
    /// The unique name without the `,S=` suffix.
    name: String,
    form: Form,
    /// Distinct mailbox directories; the first holds the tmp file.
    mailboxes: Vec<PathBuf>,
    known: KnownMailboxes,
    /// Bytes written to the file so far (after CRLF conversion).
    size: u64,
    /// The last byte seen was a CR that may turn out to start a CRLF.
    pending_cr: bool,
    /// A write failed, so the file may be missing data in the middle.
    failed: bool,
    /// Names created in `new/` directories by `publish`.
    linked: Vec<PathBuf>,
    /// `new/` directories on other file systems than `file`.
    foreign_dirs: Vec<PathBuf>,
    /// Where in each mailbox `publish` links it: `new`, or for a queue
    /// file under `--durability log` the worker's held directory.
    into: String,
    /// For the log record: the content as written, when it was still
    /// whole in the buffer at the end (saves reading it back).
    content: Option<Vec<u8>>,
}

impl Delivery {
    pub(super) fn new(
        file: File,
        tmp: TmpFile,
        (name, form): (String, Form),
        mailboxes: Vec<PathBuf>,
        known: KnownMailboxes,
    ) -> Delivery {
        Delivery {
            out: Some(BufWriter::with_capacity(BUFFER_SIZE, file)),
            file: None,
            device: 0,
            tmp,
            name,
            form,
            mailboxes,
            known,
            size: 0,
            pending_cr: false,
            failed: false,
            linked: Vec::new(),
            foreign_dirs: Vec::new(),
            into: "new".into(),
            content: None,
        }
    }

    /// Bytes stored so far (header plus LF-converted content).
    #[cfg(test)]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends content with CRLF line ends, storing it with LF line ends
    /// in a Maildir file (a CRLF split across two calls is still converted;
    /// a CR not followed by LF is kept) and as it is in a queue file.
    pub fn write(&mut self, content: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(earlier_failure());
        }
        let result = match self.form {
            Form::Maildir => self.convert(content),
            Form::Queue => self.emit(content),
        };
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Writes bytes unchanged (a header block in its final form).
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
        while let Some(offset) = memchr::memchr(b'\r', &data[from..]) {
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
        super::commit_all(vec![vec![self]])
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
        self.finish(out)
    }

    /// `finish_writing`, keeping a copy of the content for the log record
    /// when all of it is still in the buffer.
    pub(super) fn finish_writing_logged(&mut self) -> io::Result<()> {
        if let Some(out) = &self.out
            && out.buffer().len() as u64 == self.size
            && !self.pending_cr
        {
            self.content = Some(out.buffer().to_vec());
        }
        self.finish_writing()
    }

    fn finish(&mut self, out: BufWriter<File>) -> io::Result<()> {
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
    /// tmp name if it has one. Nothing is synced here: the caller must
    /// already have made the data durable, and makes the names durable
    /// afterwards. On error nothing of the message remains in any `new/`.
    pub(super) fn publish(&mut self) -> io::Result<()> {
        let final_name = self.final_name();
        let mut linked = Vec::with_capacity(self.mailboxes.len());
        let mut foreign = Vec::new();
        if let Err(e) = self.link_all(&final_name, &mut linked, &mut foreign) {
            roll_back(&linked);
            return Err(e);
        }
        self.linked = linked;
        self.foreign_dirs = foreign;
        // Failing from here on would make the client send the message
        // again, so this only logs problems.
        self.tmp.remove_name();
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

    /// A queue file is linked into `dir` of the queue instead of `new/`,
    /// where the delivery process does not look (see `commit_logged`).
    pub(super) fn hold_in(&mut self, dir: &str) {
        if self.form == Form::Queue {
            self.into = dir.to_string();
        }
    }

    /// The name `publish` gives it in every mailbox.
    fn final_name(&self) -> String {
        match self.form {
            Form::Maildir => format!("{},S={}", self.name, self.size),
            Form::Queue => self.name.clone(),
        }
    }

    /// What a write-ahead log record holds of this delivery, once written
    /// and before it is published: every name `publish` will give it, and
    /// the file's bytes.
    pub(super) fn logged(&mut self) -> io::Result<crate::wal::LoggedMessage> {
        use std::os::unix::fs::FileExt;
        let file = self.file.as_ref().ok_or_else(finished)?;
        let content = match self.content.take() {
            Some(content) => content,
            None => {
                let mut content = vec![0u8; usize::try_from(self.size).map_err(io::Error::other)?];
                file.read_exact_at(&mut content, 0)?;
                content
            }
        };
        let name = self.final_name();
        Ok(crate::wal::LoggedMessage {
            paths: self
                .mailboxes
                .iter()
                .map(|mailbox| mailbox.join(&self.into).join(&name))
                .collect(),
            content,
        })
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
    /// tmp name if there still is one.
    pub(super) fn failed(mut self, e: &io::Error) {
        warn!("delivery {} failed: {e}", self.name);
        roll_back(&mem::take(&mut self.linked));
        self.known.forget(&self.mailboxes);
    }

    /// Links the written file into every `new/`, recording each created
    /// name in `linked` as it goes so a failure can undo them, and the
    /// `new/` directories on other file systems in `foreign`.
    fn link_all(
        &self,
        final_name: &str,
        linked: &mut Vec<PathBuf>,
        foreign: &mut Vec<PathBuf>,
    ) -> io::Result<()> {
        let file = self.file.as_ref().ok_or_else(finished)?;
        // Every link is made from the open file, never from a name already
        // in new/, which a reader may have moved to cur/ by then.
        let (source, flags) = self.tmp.link_source(file);
        for mailbox in &self.mailboxes {
            let target = mailbox.join(&self.into).join(final_name);
            // link, not rename, for a named tmp file too: link refuses to
            // replace an existing name where rename would silently
            // overwrite another message.
            let result = nix::unistd::linkat(AT_FDCWD, &source, AT_FDCWD, &target, flags);
            match result.map_err(io::Error::from) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                    copy_into(file, &self.name, mailbox, &target)?;
                    foreign.push(mailbox.join("new"));
                }
                Err(e) => return Err(e),
            }
            linked.push(target);
        }
        Ok(())
    }
}

/// For a mailbox on another file system than the first one: copy the
/// message from `file` (the written one) into the mailbox's own `tmp/`
/// under `name`, make the copy durable, link it into `new/` as `target`,
/// and drop the copy's tmp name.
fn copy_into(mut file: &File, name: &str, mailbox: &Path, target: &Path) -> io::Result<()> {
    let copy_path = mailbox.join("tmp").join(name);
    let mut copy = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&copy_path)?;
    let result = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| io::copy(&mut file, &mut copy))
        .and_then(|_| copy.sync_all())
        .and_then(|()| fs::hard_link(&copy_path, target));
    drop(copy);
    if let Err(e) = fs::remove_file(&copy_path) {
        warn!("removing {}: {e}", copy_path.display());
    }
    result
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            // into_parts, not drop: no point flushing data about to be
            // deleted.
            drop(out.into_parts());
        }
        // An anonymous file is freed when `file` or `out` closes it.
        self.tmp.remove_name();
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
