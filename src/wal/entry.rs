//! Payloads: what a record says.
//!
//! ```text
//! message:    1u8 | paths u16 | per path: length u16, path | content length u32, content
//! checkpoint: 2u8 | upto u64
//! outcomes:   3u8 | id length u16, id | lines length u32, lines
//! withdrawn:  4u8 | count u32 | sequence u64 per record
//! ```
//!
//! little-endian. A message's paths are every name its group commit
//! linked (a Maildir file in each of its mailboxes, all one content), so
//! its bytes are logged once however many mailboxes it went to.

use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

const MESSAGE: u8 = 1;
const CHECKPOINT: u8 = 2;
const OUTCOMES: u8 = 3;
const WITHDRAWN: u8 = 4;

/// A message as the log holds it: every name its commit linked, and the
/// bytes each of them holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedMessage {
    pub paths: Vec<PathBuf>,
    pub content: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Message(LoggedMessage),
    /// Every message up to this sequence number is durable in its files.
    Checkpoint {
        upto: u64,
    },
    /// Lines appended to queued message `id`'s journal (`queue/log/ID`)
    /// by the delivery process: what became of its recipients.
    Outcomes {
        id: String,
        lines: Vec<u8>,
    },
    /// These messages' records count for nothing: logged, then refused
    /// (linking a file failed after the log's commit), so their clients
    /// got a 4xx and replay must not write them.
    Withdrawn {
        sequences: Vec<u64>,
    },
}

/// A whole, checksummed record whose payload makes no sense: written by
/// something else, or a bug. Never silently skipped.
#[derive(Debug, PartialEq, Eq)]
pub struct EntryError(pub String);

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Entry {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EntryError> {
        match self {
            Entry::Checkpoint { upto } => {
                out.push(CHECKPOINT);
                out.extend_from_slice(&upto.to_le_bytes());
            }
            Entry::Message(message) => {
                out.push(MESSAGE);
                let paths = u16::try_from(message.paths.len())
                    .map_err(|_| EntryError("too many paths in one message".into()))?;
                out.extend_from_slice(&paths.to_le_bytes());
                for path in &message.paths {
                    let path = path.as_os_str().as_bytes();
                    let len = u16::try_from(path.len())
                        .map_err(|_| EntryError("path too long".into()))?;
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(path);
                }
                let content_len = u32::try_from(message.content.len())
                    .map_err(|_| EntryError("message too large".into()))?;
                out.extend_from_slice(&content_len.to_le_bytes());
                out.extend_from_slice(&message.content);
            }
            Entry::Outcomes { id, lines } => {
                out.push(OUTCOMES);
                let id_len =
                    u16::try_from(id.len()).map_err(|_| EntryError("id too long".into()))?;
                out.extend_from_slice(&id_len.to_le_bytes());
                out.extend_from_slice(id.as_bytes());
                let lines_len = u32::try_from(lines.len())
                    .map_err(|_| EntryError("journal lines too long".into()))?;
                out.extend_from_slice(&lines_len.to_le_bytes());
                out.extend_from_slice(lines);
            }
            Entry::Withdrawn { sequences } => {
                out.push(WITHDRAWN);
                let count = u32::try_from(sequences.len())
                    .map_err(|_| EntryError("too many records withdrawn".into()))?;
                out.extend_from_slice(&count.to_le_bytes());
                for sequence in sequences {
                    out.extend_from_slice(&sequence.to_le_bytes());
                }
            }
        }
        Ok(())
    }

    pub fn decode(payload: &[u8]) -> Result<Entry, EntryError> {
        let mut r = Reader(payload);
        let entry = match r.u8()? {
            CHECKPOINT => Entry::Checkpoint { upto: r.u64()? },
            MESSAGE => {
                let count = r.u16()?;
                let mut paths = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let len = usize::from(r.u16()?);
                    paths.push(PathBuf::from(std::ffi::OsString::from_vec(
                        r.take(len)?.to_vec(),
                    )));
                }
                let content_len = r.u32()? as usize;
                let content = r.take(content_len)?.to_vec();
                Entry::Message(LoggedMessage { paths, content })
            }
            OUTCOMES => {
                let id_len = usize::from(r.u16()?);
                let id = String::from_utf8(r.take(id_len)?.to_vec())
                    .map_err(|_| EntryError("an id that is not UTF-8".into()))?;
                let lines_len = r.u32()? as usize;
                let lines = r.take(lines_len)?.to_vec();
                Entry::Outcomes { id, lines }
            }
            WITHDRAWN => {
                let count = r.u32()? as usize;
                if count > r.0.len() / 8 {
                    return Err(EntryError("entry cut short".into()));
                }
                let sequences = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
                Entry::Withdrawn { sequences }
            }
            other => return Err(EntryError(format!("unknown entry kind {other}"))),
        };
        if !r.0.is_empty() {
            return Err(EntryError(format!("{} bytes after the entry", r.0.len())));
        }
        Ok(entry)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError("entry cut short".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, EntryError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, EntryError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, EntryError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EntryError> {
        self.take(N)?
            .try_into()
            .map_err(|_| EntryError("entry cut short".into()))
    }
}
