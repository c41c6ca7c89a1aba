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
//! which is ignored, so a record counts only if it was whole. Delivered
//! and failed records are made durable before anything is logged about
//! them, so that a recipient logged `=>` is never sent again.

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

/// Appends `records` to the journal at `path` (created mode 0600). Not
/// synced: the caller makes a batch of journals durable together.
pub fn append(path: &Path, records: &[Record]) -> io::Result<fs::File> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    let text: String = records.iter().map(Record::line).collect();
    file.write_all(text.as_bytes())?;
    Ok(file)
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
    String::from_utf8_lossy(whole)
        .lines()
        .filter_map(Record::parse)
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
