//! The log on disk: a directory of segment files, written in place.
//!
//! - `wal-ID` (ID in hex, increasing) holds records; the newest is the one
//!   written. A new segment is written full of zeroes and synced once when
//!   it is made (the first 64 KiB, each next one twice the last up to the
//!   log's segment size, so a quiet server writes little and a busy one
//!   soon has large segments), so later commits only overwrite blocks that already
//!   exist: one `fdatasync` per group, with no metadata to commit (an
//!   `fallocate`d file would have unwritten extents, whose conversion is
//!   a journal commit each time).
//! - A segment whose records a checkpoint covers, all of them, is renamed
//!   `spare-ID` and reused when the current one is full. Its old records
//!   stay until overwritten; a scan stops at them, since their sequence
//!   numbers are lower. A spare's rename into `wal-ID` is made durable
//!   (the directory synced) before any record goes into it.
//!
//! Opening reads every segment, oldest first, and returns the records of
//! the log as one run in sequence; writing goes on after the last one.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::record::{self, Record};

const PREFIX: &str = "wal-";
const SPARE: &str = "spare-";

struct Segment {
    id: u64,
    file: File,
    /// Bytes of records in it (where the next record goes).
    len: u64,
    /// The file's size (preallocated).
    size: u64,
    /// The sequence number of its last record (0: none yet).
    last: u64,
}

/// The first segment's size (or the segment size, if smaller).
const FIRST_SEGMENT: u64 = 64 << 10;

pub struct Log {
    dir: PathBuf,
    /// The largest a new segment gets.
    segment_size: u64,
    /// What the next new segment gets.
    next_size: u64,
    /// Oldest first; the last one is written.
    segments: VecDeque<Segment>,
    spares: Vec<(u64, PathBuf)>,
    next_id: u64,
    next_sequence: u64,
    /// Records appended since the last commit.
    pending: Vec<u8>,
    /// The sequence number of the first of them.
    pending_first: u64,
    /// Bytes of records committed since the log was opened.
    written: u64,
    /// A commit failed: what reached the disk is unknown (after a failed
    /// `fdatasync` Linux may have marked the pages clean without writing
    /// them), so nothing more is committed until the log is opened again.
    broken: bool,
}

impl Log {
    /// Opens (or creates) the log in `dir`: the log and its records, in
    /// sequence, for replay.
    pub fn open(dir: &Path, segment_size: u64) -> io::Result<(Log, Vec<Record>)> {
        fs::create_dir_all(dir)?;
        let mut ids = Vec::new();
        let mut spares = Vec::new();
        let mut next_id = 1;
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let parse = |hex: &str| u64::from_str_radix(hex, 16).ok();
            if let Some(id) = name.strip_prefix(PREFIX).and_then(parse) {
                ids.push(id);
                next_id = next_id.max(id + 1);
            } else if let Some(id) = name.strip_prefix(SPARE).and_then(parse) {
                spares.push((id, dir.join(&*name)));
                next_id = next_id.max(id + 1);
            }
        }
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        let mut records: Vec<Record> = Vec::new();
        for id in ids {
            let path = dir.join(format!("{PREFIX}{id:016x}"));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let bytes = fs::read(&path)?;
            // Each segment goes on from the one before.
            let first = records.last().map(|r| r.sequence + 1);
            let scan = record::scan(&bytes, first);
            let last = scan.records.last().map_or(0, |r| r.sequence);
            records.extend(scan.records);
            segments.push_back(Segment {
                id,
                file,
                len: scan.end as u64,
                size: bytes.len() as u64,
                last,
            });
        }
        let next_sequence = records.last().map_or(1, |r| r.sequence + 1);
        let largest = segments.iter().map(|s| s.size).max().unwrap_or(0);
        let mut log = Log {
            dir: dir.to_path_buf(),
            segment_size,
            next_size: FIRST_SEGMENT
                .max(largest.saturating_mul(2))
                .min(segment_size),
            segments,
            spares,
            next_id,
            next_sequence,
            pending: Vec::new(),
            pending_first: next_sequence,
            written: 0,
            broken: false,
        };
        if log.segments.is_empty() {
            log.add_segment(0)?;
        }
        Ok((log, records))
    }

    /// Queues a record; it is durable once [`Log::commit`] returned.
    /// Returns its sequence number.
    pub fn append(&mut self, payload: &[u8]) -> u64 {
        let sequence = self.next_sequence;
        if self.pending.is_empty() {
            self.pending_first = sequence;
        }
        self.next_sequence += 1;
        record::encode(sequence, payload, &mut self.pending);
        sequence
    }

    /// Writes the queued records and makes them durable: one write and one
    /// `fdatasync` (a new segment, when the current one is full, is made
    /// first). If no segment can be made (a full file system), nothing of
    /// the group reached the log: its records are dropped, their sequence
    /// numbers go to the next group, and the log stays usable. A failed
    /// write or sync breaks it (see `broken`).
    pub fn commit(&mut self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "an earlier write or sync of the log failed; it takes no more until reopened",
            ));
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let needed = self.pending.len() as u64;
        let fits = self
            .segments
            .back()
            .is_some_and(|s| s.len + needed <= s.size);
        if !fits && let Err(e) = self.add_segment(needed) {
            self.pending.clear();
            self.next_sequence = self.pending_first;
            return Err(e);
        }
        let result = self.write_pending();
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn write_pending(&mut self) -> io::Result<()> {
        let needed = self.pending.len() as u64;
        let last = self.next_sequence - 1;
        let Some(segment) = self.segments.back_mut() else {
            return Err(io::Error::other("the log has no segment"));
        };
        segment.file.write_all_at(&self.pending, segment.len)?;
        segment.file.sync_data()?;
        segment.len += needed;
        segment.last = last;
        self.written += needed;
        self.pending.clear();
        Ok(())
    }

    /// Every record up to `upto` is durable elsewhere: the segments that
    /// hold only such records become spares (the current one never does).
    pub fn release(&mut self, upto: u64) -> io::Result<()> {
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.last <= upto) {
            let Some(segment) = self.segments.pop_front() else {
                break;
            };
            let id = self.take_id();
            let spare = self.dir.join(format!("{SPARE}{id:016x}"));
            fs::rename(self.segment_path(segment.id), &spare)?;
            self.spares.push((id, spare));
        }
        Ok(())
    }

    /// Bytes of records the log holds (what a checkpoint would free).
    pub fn held(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Bytes of records committed since the log was opened.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The sequence number the next record gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{id:016x}"))
    }

    /// A new current segment with room for `needed` bytes: a spare when
    /// one is large enough, else a new file written full of zeroes.
    fn add_segment(&mut self, needed: u64) -> io::Result<()> {
        let id = self.take_id();
        let path = self.segment_path(id);
        let size = self.next_size.max(needed);
        self.next_size = self.next_size.saturating_mul(2).min(self.segment_size);
        let spare = self.spares.pop();
        let file = match spare {
            Some((_, spare)) if fs::metadata(&spare)?.len() >= size => {
                fs::rename(&spare, &path)?;
                OpenOptions::new().read(true).write(true).open(&path)?
            }
            other => {
                if let Some((_, small)) = other {
                    fs::remove_file(small)?;
                }
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                if let Err(e) = zero_fill(&file, size).and_then(|()| file.sync_all()) {
                    // Not a segment yet: at most a file of zeroes, which a
                    // later open would take for an empty one.
                    let _ = fs::remove_file(&path);
                    return Err(e);
                }
                file
            }
        };
        File::open(&self.dir)?.sync_all()?;
        let size = file.metadata()?.len();
        self.segments.push_back(Segment {
            id,
            file,
            len: 0,
            size,
            last: 0,
        });
        Ok(())
    }
}

/// Writes `size` zero bytes: real blocks, not an unwritten extent.
fn zero_fill(file: &File, size: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeroes = vec![0u8; CHUNK as usize];
    let mut at = 0;
    while at < size {
        let n = CHUNK.min(size - at);
        file.write_all_at(&zeroes[..n as usize], at)?;
        at += n;
    }
    Ok(())
}
