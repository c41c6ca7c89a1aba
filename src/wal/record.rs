//! Framing: a record's header and checksum, and the scan that finds the
//! whole records in sequence at the start of a byte range.

/// "GSWL".
pub const MAGIC: u32 = 0x4753_574c;
/// magic, length, sequence, CRC.
pub const HEADER_LEN: usize = 4 + 4 + 8 + 4;
/// A record's payload is at most this long: a message up to the largest
/// `--max-message-size` the server accepts, with room for its paths.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// One whole, checksummed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub sequence: u64,
    pub payload: Vec<u8>,
}

/// Appends the record for `payload` with `sequence` to `out`.
pub fn encode(sequence: u64, payload: &[u8], out: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&checksum(sequence, length, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(sequence: u64, length: u32, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&sequence.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &length.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// What a scan found.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    /// The whole records in sequence, from the start.
    pub records: Vec<Record>,
    /// Where the next record goes: just after the last whole one.
    pub end: usize,
    /// Something other than zeroes followed (a torn record, an old one, or
    /// garbage); a writer overwrites it.
    pub torn: bool,
}

/// The whole records at the start of `bytes`, the first with `first`
/// sequence number (None: whatever the first record has) and each next
/// one more.
pub fn scan(bytes: &[u8], first: Option<u64>) -> Scan {
    let mut records = Vec::new();
    let mut at = 0;
    let mut expected = first;
    while let Some((record, len)) = parse(&bytes[at..], expected) {
        expected = Some(record.sequence + 1);
        records.push(record);
        at += len;
    }
    let torn = bytes[at..].iter().any(|&b| b != 0);
    Scan {
        records,
        end: at,
        torn,
    }
}

/// The record at the start of `bytes` and its length, if it is whole,
/// checksummed and has the expected sequence number.
fn parse(bytes: &[u8], expected: Option<u64>) -> Option<(Record, usize)> {
    let header = bytes.get(..HEADER_LEN)?;
    let field = |at: usize, n: usize| &header[at..at + n];
    let magic = u32::from_le_bytes(field(0, 4).try_into().ok()?);
    let length = u32::from_le_bytes(field(4, 4).try_into().ok()?);
    let sequence = u64::from_le_bytes(field(8, 8).try_into().ok()?);
    let crc = u32::from_le_bytes(field(16, 4).try_into().ok()?);
    if magic != MAGIC || length as usize > MAX_PAYLOAD {
        return None;
    }
    if expected.is_some_and(|e| e != sequence) {
        return None;
    }
    let end = HEADER_LEN.checked_add(length as usize)?;
    let payload = bytes.get(HEADER_LEN..end)?;
    if checksum(sequence, length, payload) != crc {
        return None;
    }
    Some((
        Record {
            sequence,
            payload: payload.to_vec(),
        },
        end,
    ))
}
