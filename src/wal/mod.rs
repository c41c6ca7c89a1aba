//! The write-ahead log of part 10 (`--durability log`): how records are
//! framed, found again after a crash, and what replay makes of them
//! (sans-I/O), and the segment files they live in ([`Log`]: preallocated,
//! reused, one `fdatasync` per group), and a process's log with its
//! checkpoints ([`ProcessLog`]).
//!
//! A record is
//!
//! ```text
//! magic u32 | length u32 | sequence u64 | crc32c u32 | payload (length bytes)
//! ```
//!
//! little-endian, the CRC-32C over sequence, length and payload. Sequence
//! numbers go up by one from record to record across the whole log, so a
//! reader stops at the first thing that is not the next whole record: a
//! torn write at the end (a short header or payload, a checksum that does
//! not match), the zeroes of a preallocated segment, or an older record
//! left in a reused segment (its sequence number is lower). Only whole,
//! checksummed records in sequence count; nothing after the first gap
//! does, since a group is acknowledged only once everything before it is
//! durable.
//!
//! A record that a crash cut short can read as whole in a zeroed segment
//! when the bytes it lacked were zeroes: its content is then exactly what
//! was written, so it counts, like any record that reached the disk
//! before its group's 250 went out. Replay restores such a message, and a
//! client that never saw the 250 sends it again: the duplicate window
//! every MTA has (RFC 1047), never a lost or partial message.
//!
//! Payloads ([`Entry`]): a message (the final paths of its files and
//! their content, once), a queued message's journal lines (the delivery
//! process's outcomes), or a checkpoint (everything up to a sequence
//! number is durable in its files, so replay may skip it).

mod entry;
mod process;
mod record;
mod restore;
mod segments;

#[cfg(test)]
mod tests;

pub use entry::{Entry, EntryError, LoggedMessage};
pub use process::{CHECKPOINT_BYTES, MAX_FAILURES, ProcessLog};
pub use record::{HEADER_LEN, MAGIC, Record, Scan, encode, scan};
pub use restore::{Restored, restore, restore_entries};
pub use segments::Log;

/// What replay applies: every message and outcome that the last
/// checkpoint does not cover and no later record withdrew, in log order,
/// each once.
pub fn after_checkpoint(records: &[Record]) -> Result<Vec<(u64, Entry)>, EntryError> {
    let mut checkpoint = 0;
    let mut withdrawn = std::collections::HashSet::new();
    let mut entries = Vec::new();
    for record in records {
        match Entry::decode(&record.payload)? {
            Entry::Checkpoint { upto } => checkpoint = checkpoint.max(upto),
            Entry::Withdrawn { sequences } => withdrawn.extend(sequences),
            entry => entries.push((record.sequence, entry)),
        }
    }
    entries.retain(|(sequence, _)| *sequence > checkpoint && !withdrawn.contains(sequence));
    Ok(entries)
}

/// The messages among `entries`, for [`restore`].
pub fn messages(entries: &[(u64, Entry)]) -> Vec<(u64, LoggedMessage)> {
    entries
        .iter()
        .filter_map(|(sequence, entry)| match entry {
            Entry::Message(message) => Some((*sequence, message.clone())),
            _ => None,
        })
        .collect()
}

/// What replay restores: the messages logged after the last checkpoint
/// that covers them, in log order, each once.
pub fn to_restore(records: &[Record]) -> Result<Vec<(u64, LoggedMessage)>, EntryError> {
    Ok(messages(&after_checkpoint(records)?))
}
