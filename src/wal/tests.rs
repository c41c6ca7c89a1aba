//! The crash test of part 10: a recorded run of the log cut at every byte,
//! and at every record boundary with garbage, zeroes or an older record
//! behind it. Replay must give back exactly the messages whose records
//! were whole, each once and byte for byte, minus those a checkpoint
//! covers.

use std::path::PathBuf;

use super::*;

/// A deterministic pseudo-random generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn message(rng: &mut Lcg, n: u64) -> LoggedMessage {
    let paths = (0..1 + n % 3)
        .map(|f| {
            PathBuf::from(format!(
                "/var/mail/d/u{f}/new/17000000{n:02}.M1P2Q{n}.mx,S=9"
            ))
        })
        .collect();
    let len = rng.next() as usize % 300;
    LoggedMessage {
        paths,
        content: rng.bytes(len),
    }
}

/// A run: messages 1 to 12 with checkpoints after the 4th and the 9th
/// message's records (covering up to their sequence numbers). Returns the
/// log, each record's end offset with what it was.
fn recorded_run() -> (Vec<u8>, Vec<(usize, u64, Entry)>) {
    let mut rng = Lcg(7);
    let mut log = Vec::new();
    let mut ends = Vec::new();
    let mut sequence = 1;
    for n in 1..=12 {
        let mut entries = vec![Entry::Message(message(&mut rng, n))];
        if n == 4 || n == 9 {
            entries.push(Entry::Checkpoint { upto: sequence });
        }
        for entry in entries {
            let mut payload = Vec::new();
            entry.encode(&mut payload).unwrap();
            encode(sequence, &payload, &mut log);
            ends.push((log.len(), sequence, entry));
            sequence += 1;
        }
    }
    (log, ends)
}

/// What replay must restore from the first `cut` bytes of the run.
fn expected(ends: &[(usize, u64, Entry)], cut: usize) -> Vec<(u64, LoggedMessage)> {
    let whole: Vec<_> = ends.iter().filter(|(end, ..)| *end <= cut).collect();
    restorable(&whole)
}

/// What replay must restore from `bytes`, a damaged copy of `log`: the
/// records that are there byte for byte, in order. (A record cut short
/// whose missing tail was zeroes is whole again in a zeroed segment: its
/// bytes are exactly the ones written.)
fn expected_in(
    bytes: &[u8],
    log: &[u8],
    ends: &[(usize, u64, Entry)],
) -> Vec<(u64, LoggedMessage)> {
    let mut start = 0;
    let mut whole = Vec::new();
    for record in ends {
        let end = record.0;
        if bytes.get(start..end) != Some(&log[start..end]) {
            break;
        }
        whole.push(record);
        start = end;
    }
    restorable(&whole)
}

fn restorable(whole: &[&(usize, u64, Entry)]) -> Vec<(u64, LoggedMessage)> {
    let checkpoint = whole
        .iter()
        .filter_map(|(_, _, e)| match e {
            Entry::Checkpoint { upto } => Some(*upto),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    whole
        .iter()
        .filter_map(|(_, seq, e)| match e {
            Entry::Message(m) if *seq > checkpoint => Some((*seq, m.clone())),
            _ => None,
        })
        .collect()
}

fn replay(bytes: &[u8]) -> Vec<(u64, LoggedMessage)> {
    to_restore(&scan(bytes, Some(1)).records).unwrap()
}

#[test]
fn a_log_cut_at_every_byte_replays_exactly_the_whole_records() {
    let (log, ends) = recorded_run();
    for cut in 0..=log.len() {
        let got = replay(&log[..cut]);
        assert_eq!(got, expected(&ends, cut), "cut at {cut}");
        // In a preallocated segment the rest is zeroes.
        let mut padded = log[..cut].to_vec();
        padded.resize(log.len() + 4096, 0);
        assert_eq!(
            replay(&padded),
            expected_in(&padded, &log, &ends),
            "cut at {cut}, zeroes behind"
        );
        let scan = scan(&padded, Some(1));
        let at_boundary = cut == 0 || ends.iter().any(|(end, ..)| *end == cut);
        if at_boundary {
            assert_eq!(scan.end, cut);
            assert!(!scan.torn, "cut at {cut}");
        }
    }
}

#[test]
fn garbage_zeroes_or_an_older_record_after_a_boundary_count_for_nothing() {
    let (log, ends) = recorded_run();
    let mut rng = Lcg(99);
    let mut stale = Vec::new();
    // What a reused segment holds: a whole record of an earlier lap.
    encode(1, &log[HEADER_LEN..ends[0].0], &mut stale);
    for &(boundary, ..) in &ends {
        let want = expected(&ends, boundary);
        for tail in [rng.bytes(1), rng.bytes(HEADER_LEN + 50), stale.clone()] {
            let bytes = [&log[..boundary], &tail].concat();
            let scan = scan(&bytes, Some(1));
            assert_eq!(scan.end, boundary);
            assert!(scan.torn || tail.iter().all(|&b| b == 0));
            assert_eq!(to_restore(&scan.records).unwrap(), want, "at {boundary}");
        }
    }
}

#[test]
fn a_flipped_bit_ends_the_log_at_its_record() {
    let (log, ends) = recorded_run();
    // Inside the sixth record.
    let (start, end) = (ends[5].0, ends[6].0);
    for at in start..end {
        let mut bytes = log.clone();
        bytes[at] ^= 0x10;
        let scan = scan(&bytes, Some(1));
        assert_eq!(scan.end, start, "flip at {at}");
        assert!(scan.torn);
    }
}

#[test]
fn records_out_of_sequence_are_not_taken() {
    let mut log = Vec::new();
    encode(5, b"\x02\0\0\0\0\0\0\0\0", &mut log);
    assert!(
        scan(&log, Some(1)).records.is_empty(),
        "the log starts at 1"
    );
    assert_eq!(scan(&log, None).records.len(), 1, "any start");
    encode(7, b"\x02\0\0\0\0\0\0\0\0", &mut log);
    assert_eq!(scan(&log, None).records.len(), 1, "6 is missing");
}

#[test]
fn entries_round_trip_and_bad_ones_are_errors() {
    let mut rng = Lcg(3);
    for entry in [
        Entry::Message(message(&mut rng, 2)),
        Entry::Message(LoggedMessage {
            paths: vec![],
            content: vec![],
        }),
        Entry::Checkpoint { upto: u64::MAX },
        Entry::Outcomes {
            id: "1tFz3c-0009Ld-0a".into(),
            lines: b"D 0 1796000000 mx[192.0.2.1]:25 250 OK\n".to_vec(),
        },
        Entry::Withdrawn {
            sequences: vec![7, u64::MAX],
        },
    ] {
        let mut payload = Vec::new();
        entry.encode(&mut payload).unwrap();
        assert_eq!(Entry::decode(&payload).unwrap(), entry);
        for cut in 0..payload.len() {
            assert!(Entry::decode(&payload[..cut]).is_err(), "cut at {cut}");
        }
        payload.push(0);
        assert!(Entry::decode(&payload).is_err(), "a byte too many");
    }
    assert!(Entry::decode(&[9]).is_err());
    let huge_count = [4, 0xff, 0xff, 0xff, 0xff];
    assert!(
        Entry::decode(&huge_count).is_err(),
        "no allocation of a lie"
    );
}

#[test]
fn withdrawn_records_are_not_replayed() {
    let mut rng = Lcg(5);
    let entries = [
        Entry::Message(message(&mut rng, 1)),
        Entry::Message(message(&mut rng, 2)),
        Entry::Withdrawn { sequences: vec![1] },
    ];
    let mut bytes = Vec::new();
    for (n, entry) in entries.iter().enumerate() {
        let mut payload = Vec::new();
        entry.encode(&mut payload).unwrap();
        encode(n as u64 + 1, &payload, &mut bytes);
    }
    let restore = replay(&bytes);
    assert_eq!(restore.len(), 1);
    assert_eq!(restore[0].0, 2);
}

// ---------------------------------------------------------------- segments

use crate::test_support::TempDir;

fn payloads(n: usize, size: usize) -> Vec<Vec<u8>> {
    let mut rng = Lcg(11);
    (0..n).map(|_| rng.bytes(size)).collect()
}

fn files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut names: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    names.sort();
    names
}

#[test]
fn segments_start_small_and_double_up_to_the_segment_size() {
    let tmp = TempDir::new("wal");
    let dir = tmp.path().join("log");
    let (mut log, _) = Log::open(&dir, 1 << 20).unwrap();
    let sizes =
        |dir: &std::path::Path| -> Vec<u64> { files(dir).into_iter().map(|f| f.1).collect() };
    assert_eq!(sizes(&dir), vec![64 << 10], "a quiet log writes 64 KiB");
    for chunk in payloads(12, 64 << 10) {
        log.append(&chunk);
        log.commit().unwrap();
    }
    let got = sizes(&dir);
    assert_eq!(got[0], 64 << 10);
    assert!(got.windows(2).all(|w| w[0] <= w[1]), "{got:?}");
    assert_eq!(got[1], 128 << 10, "{got:?}");
    assert_eq!(*got.last().unwrap(), 1 << 20, "{got:?}");
    drop(log);
    let (_, records) = Log::open(&dir, 1 << 20).unwrap();
    assert_eq!(records.len(), 12);
}

#[test]
fn a_segment_that_cannot_be_made_fails_its_group_and_nothing_else() {
    let tmp = TempDir::new("wal");
    let dir = tmp.path().join("log");
    let away = tmp.path().join("away");
    let (mut log, _) = Log::open(&dir, 4096).unwrap();
    log.append(b"first");
    log.commit().unwrap();
    // No new segment can be made while the directory is elsewhere (as on
    // a full file system).
    std::fs::rename(&dir, &away).unwrap();
    log.append(&[b'x'; 5000]);
    assert!(log.commit().is_err());
    std::fs::rename(&away, &dir).unwrap();
    assert_eq!(
        log.append(b"second"),
        2,
        "the failed group's number is reused"
    );
    log.commit().unwrap();
    drop(log);
    let (_, records) = Log::open(&dir, 4096).unwrap();
    let got: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(got, vec![&b"first"[..], &b"second"[..]]);
}

#[test]
fn committed_records_come_back_in_sequence_after_reopening() {
    let tmp = TempDir::new("wal");
    let dir = tmp.path().join("log");
    let data = payloads(50, 300);
    {
        let (mut log, records) = Log::open(&dir, 4096).unwrap();
        assert!(records.is_empty());
        for (i, p) in data.iter().enumerate() {
            assert_eq!(log.append(p), i as u64 + 1);
            if i % 7 == 6 {
                log.commit().unwrap();
            }
        }
        log.commit().unwrap();
    }
    let (log, records) = Log::open(&dir, 4096).unwrap();
    let got: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(got, data, "across several 4 KiB segments");
    assert_eq!(log.next_sequence(), 51);
    // Every segment was written full of zeroes once: sizes never grow.
    for (name, size) in files(&dir) {
        assert!(name.starts_with("wal-"), "{name}");
        assert_eq!(size, 4096, "{name}");
    }
}

#[test]
fn released_segments_are_reused_and_their_old_records_never_come_back() {
    let tmp = TempDir::new("wal");
    let dir = tmp.path().join("log");
    let data = payloads(60, 300);
    let (mut log, _) = Log::open(&dir, 4096).unwrap();
    for p in &data[..30] {
        log.append(p);
        log.commit().unwrap();
    }
    let before = files(&dir).len();
    log.release(30).unwrap();
    let spares = files(&dir)
        .iter()
        .filter(|(n, _)| n.starts_with("spare-"))
        .count();
    assert_eq!(spares, before - 1, "all but the current one");
    for p in &data[30..] {
        log.append(p);
        log.commit().unwrap();
    }
    assert_eq!(files(&dir).len(), before, "no new file: spares were reused");
    drop(log);
    let (_, records) = Log::open(&dir, 4096).unwrap();
    let sequences: Vec<u64> = records.iter().map(|r| r.sequence).collect();
    let first = sequences[0];
    assert!(
        first <= 31,
        "everything after the release is there: {first}"
    );
    assert_eq!(
        sequences,
        (first..=60).collect::<Vec<u64>>(),
        "in sequence, nothing old from a reused segment"
    );
    for r in &records {
        assert_eq!(r.payload, data[r.sequence as usize - 1]);
    }
}

#[test]
fn a_torn_tail_is_ignored_and_overwritten() {
    let tmp = TempDir::new("wal");
    let dir = tmp.path().join("log");
    let data = payloads(3, 100);
    let (mut log, _) = Log::open(&dir, 4096).unwrap();
    log.append(&data[0]);
    log.append(&data[1]);
    log.commit().unwrap();
    drop(log);
    // A crash in the middle of the next group's write.
    let segment = dir.join(&files(&dir)[0].0);
    let mut torn = Vec::new();
    encode(3, &data[2], &mut torn);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let end = 2 * (HEADER_LEN + 100) as u64;
    file.write_all_at(&torn[..torn.len() / 2], end).unwrap();
    let (mut log, records) = Log::open(&dir, 4096).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(log.append(b"again"), 3);
    log.commit().unwrap();
    drop(log);
    let (_, records) = Log::open(&dir, 4096).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2].payload, b"again");
}

#[test]
fn a_record_larger_than_a_segment_gets_one_of_its_own() {
    let tmp = TempDir::new("wal");
    let dir = tmp.path().join("log");
    let big = payloads(1, 10_000).remove(0);
    let (mut log, _) = Log::open(&dir, 4096).unwrap();
    log.append(b"small");
    log.commit().unwrap();
    log.append(&big);
    log.commit().unwrap();
    drop(log);
    let (_, records) = Log::open(&dir, 4096).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].payload, big);
}

// ---------------------------------------------------------------- restore

fn maildir(root: &std::path::Path, user: &str) -> PathBuf {
    let mailbox = root.join("example.org").join(user);
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(mailbox.join(sub)).unwrap();
    }
    mailbox
}

fn logged(paths: &[&PathBuf], content: &[u8]) -> LoggedMessage {
    LoggedMessage {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        content: content.to_vec(),
    }
}

#[test]
fn restore_puts_back_what_a_power_loss_took_and_nothing_twice() {
    use std::os::unix::fs::MetadataExt;
    let tmp = TempDir::new("wal-restore");
    let alice = maildir(tmp.path(), "alice");
    let bob = maildir(tmp.path(), "bob");
    let name = |n: u32| format!("1700000000.M{n}P1Q{n}.mx,S=5");
    let whole = alice.join("new").join(name(1));
    let short = alice.join("new").join(name(2));
    let missing = bob.join("new").join(name(3));
    let moved = bob.join("new").join(name(4));
    let moved_short = alice.join("new").join(name(5));
    std::fs::write(&whole, b"one\n\n").unwrap();
    std::fs::write(&short, b"").unwrap();
    let moved_to = bob.join("cur").join(format!("{}:2,S", name(4)));
    std::fs::write(&moved_to, b"four\n").unwrap();
    let moved_short_to = alice.join("cur").join(format!("{}:2,RS", name(5)));
    std::fs::write(&moved_short_to, b"fi").unwrap();
    let inode = std::fs::metadata(&whole).unwrap().ino();
    let messages = vec![
        (1, logged(&[&whole], b"one\n\n")),
        (2, logged(&[&short, &missing], b"two\n\n")),
        (3, logged(&[&moved], b"four\n")),
        (4, logged(&[&moved_short], b"five\n")),
    ];
    let restored = restore(&messages, "test").unwrap();
    assert_eq!(restored.intact, 2, "{restored:?}");
    assert_eq!(
        restored.rewritten,
        vec![short.clone(), missing.clone(), moved_short_to.clone()]
    );
    assert_eq!(std::fs::read(&short).unwrap(), b"two\n\n");
    assert_eq!(std::fs::read(&missing).unwrap(), b"two\n\n");
    assert_eq!(std::fs::read(&moved_short_to).unwrap(), b"five\n");
    assert!(
        !moved.exists(),
        "a message a reader moved is not put back in new/"
    );
    assert!(!moved_short.exists());
    assert_eq!(
        std::fs::metadata(&whole).unwrap().ino(),
        inode,
        "left alone"
    );
    for mailbox in [&alice, &bob] {
        assert_eq!(std::fs::read_dir(mailbox.join("tmp")).unwrap().count(), 0);
    }
    // Running it again changes nothing.
    let again = restore(&messages, "test").unwrap();
    assert_eq!(again.intact, 5);
    assert!(again.rewritten.is_empty());
}
