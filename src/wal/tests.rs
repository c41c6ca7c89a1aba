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
    let files = (0..1 + n % 3)
        .map(|f| {
            let len = rng.next() as usize % 300;
            LoggedFile {
                path: PathBuf::from(format!(
                    "/var/mail/d/u{f}/new/17000000{n:02}.M1P2Q{n}.mx,S=9"
                )),
                content: rng.bytes(len),
            }
        })
        .collect();
    LoggedMessage { files }
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
            Entry::Message(_) => None,
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
        Entry::Message(LoggedMessage { files: vec![] }),
        Entry::Checkpoint { upto: u64::MAX },
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
}
