//! The outbound queue on disk, in `STATE_DIR/queue`:
//!
//! - `new/ID`: one file per message, written once by the worker that
//!   accepted it, through the same group commit as a Maildir delivery
//!   (`crate::store`): an envelope block (LF-terminated `key value` lines,
//!   then an empty line), then the message as it goes on the wire (CRLF
//!   line ends, not dot-stuffed), beginning with our `Received:` line. It
//!   is complete and on stable storage before the client's `250`.
//! - `log/ID`: what became of each recipient, appended by the delivery
//!   process (`journal`): a recipient recorded delivered or failed is
//!   never sent again, so that record is made durable before the `=>` or
//!   `**` line is logged. A torn last line (a crash mid-append) is ignored.
//! - `tmp/`: where a message is written before it has a name.
//! - `held-N/`: under `--durability log`, worker N's queue files that
//!   only its write-ahead log makes durable so far; its next checkpoint
//!   moves them into `new/` (`crate::store::commit_logged`).
//!
//! A message whose recipients are all delivered or failed is removed.

pub mod cli;
pub mod journal;

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

pub use journal::{Outcome, Record};

/// The first line of every queue file: the format and its version.
const MAGIC: &str = "gsmtpd-queue 1";

/// A queued message's envelope: everything needed to send it onward, and
/// to bounce it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    /// Unix seconds when it was accepted.
    pub arrival: u64,
    /// The reverse-path as the client gave it; empty for the null sender.
    pub sender: String,
    /// Mailboxes as they go into RCPT TO.
    pub recipients: Vec<String>,
    /// The client declared 8-bit content (BODY=8BITMIME).
    pub eight_bit: bool,
    /// The transaction used SMTPUTF8.
    pub smtputf8: bool,
    /// Who sent it to us, for bounces: `(helo) [ip]:port`.
    pub received_from: String,
}

#[derive(Debug)]
pub enum QueueError {
    Io(io::Error),
    /// Not a queue file, or a damaged one.
    Format(String),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Io(e) => e.fmt(f),
            QueueError::Format(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for QueueError {
    fn from(e: io::Error) -> QueueError {
        QueueError::Io(e)
    }
}

impl Envelope {
    /// The envelope block at the top of a queue file.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push(' ');
            out.push_str(value);
            out.push('\n');
        };
        line("gsmtpd-queue", "1");
        line("id", &self.id);
        line("arrival", &self.arrival.to_string());
        line("sender", &self.sender);
        line("from", &self.received_from);
        line("body", if self.eight_bit { "8bitmime" } else { "7bit" });
        line("smtputf8", if self.smtputf8 { "yes" } else { "no" });
        for r in &self.recipients {
            line("rcpt", r);
        }
        out.push('\n');
        out.into_bytes()
    }

    /// Reads the envelope block of a queue file; returns it and the number
    /// of bytes it took (where the message begins).
    pub fn read(input: &mut impl BufRead) -> Result<(Envelope, u64), QueueError> {
        let bad = |why: &str| QueueError::Format(why.to_string());
        let mut env = Envelope {
            id: String::new(),
            arrival: 0,
            sender: String::new(),
            recipients: Vec::new(),
            eight_bit: false,
            smtputf8: false,
            received_from: String::new(),
        };
        let mut consumed = 0u64;
        let mut first = true;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = input.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Err(bad("the envelope ends early"));
            }
            consumed += n as u64;
            let text = std::str::from_utf8(&line[..n - 1]).map_err(|_| bad("not UTF-8"))?;
            if first {
                if text != MAGIC {
                    return Err(bad("not a gsmtpd queue file"));
                }
                first = false;
                continue;
            }
            if text.is_empty() {
                break;
            }
            let (key, value) = text
                .split_once(' ')
                .ok_or_else(|| bad("a line without a value"))?;
            match key {
                "id" => env.id = value.to_string(),
                "arrival" => env.arrival = value.parse().map_err(|_| bad("arrival"))?,
                "sender" => env.sender = value.to_string(),
                "from" => env.received_from = value.to_string(),
                "body" => env.eight_bit = value == "8bitmime",
                "smtputf8" => env.smtputf8 = value == "yes",
                "rcpt" => env.recipients.push(value.to_string()),
                // Written by a newer version: not needed to send it.
                _ => {}
            }
        }
        if env.id.is_empty() || env.recipients.is_empty() {
            return Err(bad("no id or no recipient"));
        }
        Ok((env, consumed))
    }
}

/// The queue's directories under the state directory.
#[derive(Clone, Debug)]
pub struct QueueDir {
    root: PathBuf,
}

impl QueueDir {
    pub fn new(state_dir: &Path) -> QueueDir {
        QueueDir {
            root: state_dir.join("queue"),
        }
    }

    /// Where messages are (`new/`) and are written first (`tmp/`): the
    /// layout `crate::store` delivers into.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn message_path(&self, id: &str) -> PathBuf {
        self.root.join("new").join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.root.join("log").join(id)
    }

    /// The name of worker `slot`'s held directory, under the root.
    pub fn held_name(slot: usize) -> String {
        format!("held-{slot}")
    }

    /// The ids of queue files waiting in any worker's held directory.
    pub fn held(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        let dirs = match fs::read_dir(&self.root) {
            Ok(dirs) => dirs,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e),
        };
        for dir in dirs {
            let dir = dir?;
            if !dir.file_name().to_string_lossy().starts_with("held-") {
                continue;
            }
            for entry in fs::read_dir(dir.path())? {
                if let Some(id) = entry?.file_name().to_str().filter(|id| valid_id(id)) {
                    ids.push(id.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Moves every file of worker `slot`'s held directory into `new/`
    /// (creating the directory if missing): the caller knows them durable
    /// and covered by a checkpoint. Returns the ids moved.
    pub fn release_held(&self, slot: usize) -> io::Result<Vec<String>> {
        use std::os::unix::fs::DirBuilderExt;
        let held = self.root.join(Self::held_name(slot));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&held)?;
        let mut moved = Vec::new();
        for entry in fs::read_dir(&held)? {
            let name = entry?.file_name();
            let Some(id) = name.to_str().filter(|id| valid_id(id)) else {
                continue;
            };
            fs::rename(held.join(id), self.message_path(id))?;
            moved.push(id.to_string());
        }
        moved.sort();
        Ok(moved)
    }

    /// Creates the directories (mode 0700) if missing.
    pub fn create(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for sub in ["tmp", "new", "log"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(self.root.join(sub))?;
        }
        Ok(())
    }

    /// Every queued message's id, oldest name first.
    pub fn ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        let dir = match fs::read_dir(self.root.join("new")) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e),
        };
        for entry in dir {
            let name = entry?.file_name();
            if let Some(name) = name.to_str()
                && valid_id(name)
            {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The message's envelope, the size of its content, and each
    /// recipient's last recorded outcome.
    pub fn load(&self, id: &str) -> Result<Loaded, QueueError> {
        if !valid_id(id) {
            return Err(QueueError::Format(format!("'{id}' is not a queue id")));
        }
        let file = fs::File::open(self.message_path(id))?;
        let total = file.metadata()?.len();
        let mut input = BufReader::new(file);
        let (envelope, offset) = Envelope::read(&mut input)?;
        let records = journal::read(&self.log_path(id))?;
        Ok(Loaded {
            size: total.saturating_sub(offset),
            content_offset: offset,
            outcomes: journal::last_outcomes(&records, envelope.recipients.len()),
            records,
            envelope,
        })
    }

    /// The message's content (after the envelope), for `queue show`.
    pub fn headers(&self, id: &str) -> Result<Vec<u8>, QueueError> {
        let loaded = self.load(id)?;
        let mut file = fs::File::open(self.message_path(id))?;
        io::copy(
            &mut (&mut file).take(loaded.content_offset),
            &mut io::sink(),
        )?;
        let mut head = Vec::new();
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 || line == b"\r\n" || line == b"\n" {
                break;
            }
            head.extend_from_slice(&line);
        }
        Ok(head)
    }

    /// Removes the message and its journal. True if it was there.
    pub fn remove(&self, id: &str) -> io::Result<bool> {
        if !valid_id(id) {
            return Ok(false);
        }
        let existed = match fs::remove_file(self.message_path(id)) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        match fs::remove_file(self.log_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(existed)
    }
}

/// A queued message as read back.
#[derive(Debug)]
pub struct Loaded {
    pub envelope: Envelope,
    /// Bytes of the message itself (on the wire, before dot-stuffing).
    pub size: u64,
    /// Where the message begins in its file.
    pub content_offset: u64,
    /// Per recipient, in envelope order: its last outcome, if any.
    pub outcomes: Vec<Option<Record>>,
    pub records: Vec<Record>,
}

/// Queue ids are the message ids of the log: base62 and dashes, so a name
/// from the command line can never leave the queue directory.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            id: "1tFz3c-0009Ld-0a".into(),
            arrival: 1_796_000_000,
            sender: "a@client.example".into(),
            recipients: vec!["bob@remote.example".into(), "\"c d\"@remote.example".into()],
            eight_bit: true,
            smtputf8: false,
            received_from: "(client.example) [192.0.2.7]:4000".into(),
        }
    }

    #[test]
    fn the_envelope_reads_back_and_says_where_the_message_begins() {
        let env = envelope();
        let mut file = env.encode();
        let offset = file.len() as u64;
        file.extend_from_slice(b"Received: x\r\n\r\nbody\r\n");
        let (back, at) = Envelope::read(&mut &file[..]).unwrap();
        assert_eq!(back, env);
        assert_eq!(at, offset);
        let null = Envelope {
            sender: String::new(),
            ..envelope()
        };
        assert_eq!(Envelope::read(&mut &null.encode()[..]).unwrap().0, null);
    }

    #[test]
    fn damaged_files_are_refused() {
        let good = envelope().encode();
        for cut in 0..good.len() {
            assert!(Envelope::read(&mut &good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Envelope::read(&mut &b"From a\n\n"[..]).is_err());
        let no_rcpt = Envelope {
            recipients: vec![],
            ..envelope()
        };
        assert!(Envelope::read(&mut &no_rcpt.encode()[..]).is_err());
    }

    #[test]
    fn ids_cannot_name_other_files() {
        assert!(valid_id("1tFz3c-0009Ld-0a"));
        for bad in ["", "../x", "a/b", ".", "a b", "x\n"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
