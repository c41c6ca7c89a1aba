//! What became of a queued message's recipients: `log/ID`, appended one
//! line per outcome by the delivery process.
//!
//! ```text
//! D <rcpt> <unix> <host> <reply>          delivered
//! F <rcpt> <unix> <bounce id or -> <why>  failed for good (bounced)
//! T <rcpt> <unix> <next attempt> <why>    deferred
//! ```
//!
//! `rcpt` is the recipient's index in the envelope. A line is complete
//! once its LF is written; a crash can leave a last line without one,
//! which is ignored, so a record counts only if it was whole. A power
//! loss can also leave zeroes where unsynced lines were (the file's size
//! reached the disk, its data did not); a later line appended after them
//! still counts, from the last zero on. Delivered and failed records are
//! made durable before anything is logged about them, so that a recipient
//! logged `=>` is never sent again: by a `syncfs`, or under
//! `--durability log` by the delivery process's write-ahead log, from
//! which [`restore`] puts them back after a power loss.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `host`: where it went, e.g. `mx.example.net [192.0.2.1]:25`
    /// without spaces; `reply`: the final reply.
    Delivered { host: String, reply: String },
    /// Bounced (`bounce`: the DSN's queue id, if one was sent).
    Failed {
        bounce: Option<String>,
        reason: String,
    },
    /// Tried again at `next` (Unix seconds).
    Deferred { next: u64, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub rcpt: usize,
    pub at: u64,
    pub outcome: Outcome,
}

impl Outcome {
    /// Delivered or failed: nothing more will be tried.
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Deferred { .. })
    }
}

impl Record {
    /// Delivered or failed: nothing more will be tried.
    pub fn is_final(&self) -> bool {
        self.outcome.is_final()
    }

    fn line(&self) -> String {
        // Spaces separate fields; the last one is the rest of the line, and
        // no field may break the line.
        let one = |s: &str| -> String {
            let s: String = s
                .chars()
                .map(|c| if c.is_whitespace() { '_' } else { c })
                .collect();
            if s.is_empty() { "-".into() } else { s }
        };
        let rest = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let (kind, field, text) = match &self.outcome {
            Outcome::Delivered { host, reply } => ("D", one(host), rest(reply)),
            Outcome::Failed { bounce, reason } => {
                ("F", one(bounce.as_deref().unwrap_or("-")), rest(reason))
            }
            Outcome::Deferred { next, reason } => ("T", next.to_string(), rest(reason)),
        };
        format!("{kind} {} {} {field} {text}\n", self.rcpt, self.at)
    }

    fn parse(line: &str) -> Option<Record> {
        let mut fields = line.splitn(5, ' ');
        let kind = fields.next()?;
        let rcpt = fields.next()?.parse().ok()?;
        let at = fields.next()?.parse().ok()?;
        let field = fields.next()?;
        let text = fields.next().unwrap_or("").to_string();
        let outcome = match kind {
            "D" => Outcome::Delivered {
                host: field.to_string(),
                reply: text,
            },
            "F" => Outcome::Failed {
                bounce: (field != "-").then(|| field.to_string()),
                reason: text,
            },
            "T" => Outcome::Deferred {
                next: field.parse().ok()?,
                reason: text,
            },
            _ => return None,
        };
        Some(Record { rcpt, at, outcome })
    }
}

/// The lines `append` writes for `records`.
pub fn encode(records: &[Record]) -> Vec<u8> {
    records
        .iter()
        .map(Record::line)
        .collect::<String>()
        .into_bytes()
}

/// Appends `records` to the journal at `path` (created mode 0600). Not
/// synced: the caller makes a batch of journals durable together.
pub fn append(path: &Path, records: &[Record]) -> io::Result<fs::File> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&encode(records))?;
    Ok(file)
}

/// Makes the journal at `path` hold each of `lines` (as [`encode`] made
/// them) after a power loss that may have taken them: if one is missing,
/// the journal is written again, its whole records and the missing ones,
/// under `tmp` and renamed into place. Not synced. True if rewritten.
pub fn restore(path: &Path, tmp: &Path, lines: &[u8]) -> io::Result<bool> {
    let mut records = read(path)?;
    let missing: Vec<Record> = parse_all(lines)
        .into_iter()
        .filter(|r| !records.contains(r))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    records.extend(missing);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    file.write_all(&encode(&records))?;
    fs::rename(tmp, path)?;
    Ok(true)
}

/// Every whole record of the journal at `path` (none if it is missing).
pub fn read(path: &Path) -> io::Result<Vec<Record>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(parse_all(&bytes))
}

fn parse_all(bytes: &[u8]) -> Vec<Record> {
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(last) => &bytes[..=last],
        None => return Vec::new(),
    };
    whole
        .split(|&b| b == b'\n')
        // What follows the last zero: a line appended after the zeroes a
        // power loss left.
        .map(|line| match line.iter().rposition(|&b| b == 0) {
            Some(zero) => &line[zero + 1..],
            None => line,
        })
        .filter_map(|line| Record::parse(&String::from_utf8_lossy(line)))
        .collect()
}

/// Each recipient's last record, by index.
pub fn last_outcomes(records: &[Record], recipients: usize) -> Vec<Option<Record>> {
    let mut out = vec![None; recipients];
    for r in records {
        if let Some(slot) = out.get_mut(r.rcpt) {
            // A final outcome is never undone by a later deferral record
            // (which a race could write; it would be harmless but wrong).
            if slot.as_ref().is_none_or(|prev: &Record| !prev.is_final()) {
                *slot = Some(r.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        vec![
            Record {
                rcpt: 0,
                at: 100,
                outcome: Outcome::Deferred {
                    next: 400,
                    reason: "451 4.3.0 try\nlater".into(),
                },
            },
            Record {
                rcpt: 1,
                at: 101,
                outcome: Outcome::Delivered {
                    host: "mx.example.net [192.0.2.1]:25".into(),
                    reply: "250 2.0.0 OK id=x".into(),
                },
            },
            Record {
                rcpt: 0,
                at: 500,
                outcome: Outcome::Failed {
                    bounce: Some("1tG000-000001-01".into()),
                    reason: "550 5.1.1 no such user".into(),
                },
            },
        ]
    }

    #[test]
    fn records_read_back_and_a_torn_last_line_is_ignored() {
        let text: String = records().iter().map(Record::line).collect();
        let back = parse_all(text.as_bytes());
        assert_eq!(back.len(), 3);
        assert_eq!(
            back[0].outcome,
            Outcome::Deferred {
                next: 400,
                reason: "451 4.3.0 try later".into()
            }
        );
        assert_eq!(
            back[1].outcome,
            Outcome::Delivered {
                host: "mx.example.net_[192.0.2.1]:25".into(),
                reply: "250 2.0.0 OK id=x".into()
            }
        );
        assert_eq!(back[2], records()[2]);
        // Cut anywhere inside the last line: the first two remain.
        let cut = text.len() - 5;
        assert_eq!(parse_all(&text.as_bytes()[..cut]).len(), 2);
        assert_eq!(parse_all(b"D 0 1 h"), vec![], "no newline, no record");
    }

    #[test]
    fn lines_after_the_zeroes_of_a_power_loss_still_count() {
        let text = encode(&records());
        let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
        // The first line's data lost (zeroes), the second torn then
        // zeroed, the third appended after restart.
        let mut damaged = vec![0u8; lines[0].len()];
        damaged.extend_from_slice(&lines[1][..5]);
        damaged.extend_from_slice(&[0; 7]);
        damaged.extend_from_slice(lines[2]);
        damaged.extend_from_slice(&[0; 9]);
        assert_eq!(parse_all(&damaged), vec![records()[2].clone()]);
    }

    #[test]
    fn restore_puts_back_missing_records_once() {
        let dir = crate::test_support::TempDir::new("journal");
        let path = dir.path().join("journal");
        let tmp = dir.path().join("journal.tmp");
        let all = records();
        let mut damaged = encode(&all[..1]);
        damaged.extend_from_slice(&[0; 30]);
        fs::write(&path, &damaged).unwrap();
        assert!(restore(&path, &tmp, &encode(&all[1..])).unwrap());
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2], all[2]);
        assert!(!restore(&path, &tmp, &encode(&all)).unwrap(), "all there");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_final_outcome_stands() {
        let mut r = records();
        r.push(Record {
            rcpt: 0,
            at: 600,
            outcome: Outcome::Deferred {
                next: 900,
                reason: "late".into(),
            },
        });
        let last = last_outcomes(&r, 3);
        assert!(matches!(
            last[0].as_ref().unwrap().outcome,
            Outcome::Failed { .. }
        ));
        assert!(last[1].as_ref().unwrap().is_final());
        assert_eq!(last[2], None);
    }
}
