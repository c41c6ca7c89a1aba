//! Delivery status notifications (RFC 3464), sans-I/O: the bounce gsmtpd
//! sends to a message's envelope sender when recipients failed for good or
//! expired in the queue. The caller passes everything in, the times
//! included (nothing here reads a clock), and sends the result with the
//! null reverse-path `<>`.
//!
//! The bounce is a `multipart/report; report-type=delivery-status`
//! (RFC 6522) of three parts: a text for people in the style of Postfix's
//! bounces, the `message/delivery-status` fields for programs, and the
//! original message's header block as `text/rfc822-headers`.
//!
//! Non-ASCII (RFC 6533): when an address or a diagnostic is not ASCII the
//! report becomes `global-delivery-status`, with the `utf-8` address type
//! for such addresses and UTF-8 text; UTF-8 headers are returned as
//! `message/global-headers`, and headers that are not UTF-8 at all as
//! `text/rfc822-headers` with `8bit`, byte for byte. The caller learns from
//! [`Composed`] whether the bounce needs 8BITMIME or SMTPUTF8.

use std::fmt;

use crate::received::rfc5322_date;

/// An RFC 3463 status code, e.g. 5.1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Status {
    /// 4.4.7, delivery time expired: for recipients still undeliverable when
    /// the queue lifetime ends.
    pub const EXPIRED: Status = Status::new(4, 4, 7);

    pub const fn new(class: u8, subject: u16, detail: u16) -> Status {
        Status {
            class,
            subject,
            detail,
        }
    }

    /// `class.subject.detail`: class 2, 4 or 5, then one to three digits each.
    pub fn parse(text: &str) -> Option<Status> {
        let mut parts = text.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let number = |part: &str| {
            let digits = (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| part.parse::<u16>().ok()).flatten()
        };
        let class = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        Some(Status::new(class, number(subject)?, number(detail)?))
    }

    /// The status an SMTP reply line (`550 5.1.1 No such user`) reports:
    /// its enhanced code when it has one of the reply's class, else the
    /// class alone (`550 No such user` gives 5.0.0). A line that is no
    /// reply, or a 2xx/3xx one, gives 5.0.0: it is only asked about
    /// failures.
    pub fn from_reply(reply: &str) -> Status {
        let class = match reply.as_bytes() {
            [b'4', b'0'..=b'9', b'0'..=b'9', ..] => 4,
            _ => 5,
        };
        let rest = reply.get(3..).unwrap_or_default();
        let separator_ok = rest.is_empty() || rest.starts_with([' ', '-']);
        let enhanced = rest
            .get(1..)
            .and_then(|text| text.split(' ').next())
            .and_then(Status::parse)
            .filter(|status| separator_ok && status.class == class);
        enhanced.unwrap_or(Status::new(class, 0, 0))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Why a recipient failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    /// The remote server's reply, as one line (`550 5.1.1 No such user`),
    /// and the command it answered (`RCPT TO`), when known.
    Smtp {
        reply: String,
        command: Option<String>,
    },
    /// This MTA's own reason (the message is too big for the next hop, the
    /// domain has a null MX, ...) and its status.
    Local { status: Status, text: String },
}

/// One recipient the bounce reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// As the original envelope had it.
    pub address: String,
    pub status: Status,
    /// The host that refused it (for `Remote-MTA`), when there was one.
    pub remote_mta: Option<String>,
    pub diagnostic: Option<Diagnostic>,
    /// Unix seconds.
    pub last_attempt: Option<u64>,
    /// Given up because the queue lifetime ran out, not refused for good.
    pub expired: bool,
}

impl Recipient {
    /// Failed for good: refused by `remote_mta` with a 5xx, or for a
    /// reason of our own. The status comes from the diagnostic.
    pub fn failed(
        address: &str,
        remote_mta: Option<&str>,
        diagnostic: Diagnostic,
        last_attempt: Option<u64>,
    ) -> Recipient {
        let status = match &diagnostic {
            Diagnostic::Smtp { reply, .. } => Status::from_reply(reply),
            Diagnostic::Local { status, .. } => *status,
        };
        Recipient {
            address: address.to_owned(),
            status,
            remote_mta: remote_mta.map(str::to_owned),
            diagnostic: Some(diagnostic),
            last_attempt,
            expired: false,
        }
    }

    /// Still undeliverable when the queue lifetime ran out: status 4.4.7,
    /// with the last error when there was one.
    pub fn expired(
        address: &str,
        remote_mta: Option<&str>,
        last_error: Option<Diagnostic>,
        last_attempt: Option<u64>,
    ) -> Recipient {
        Recipient {
            address: address.to_owned(),
            status: Status::EXPIRED,
            remote_mta: remote_mta.map(str::to_owned),
            diagnostic: last_error,
            last_attempt,
            expired: true,
        }
    }
}

/// What a bounce is made of.
#[derive(Clone, Copy, Debug)]
pub struct Bounce<'a> {
    /// Our host name: `Reporting-MTA`, and the domain of the `From` address
    /// and the `Message-ID`.
    pub hostname: &'a str,
    /// The original message's envelope sender, who gets the bounce.
    pub sender: &'a str,
    /// When the original message arrived, Unix seconds.
    pub arrival: u64,
    /// Now, Unix seconds: the bounce's `Date`.
    pub date: u64,
    /// Unique to this bounce (its queue id, say): the `Message-ID` and the
    /// MIME boundary are made from it.
    pub id: &'a str,
    pub recipients: &'a [Recipient],
    /// The original message in wire form, or at least its beginning: its
    /// header block is returned.
    pub original: &'a [u8],
}

/// A bounce ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Composed {
    /// The whole message in wire form (CRLF line ends, not dot-stuffed).
    pub message: Vec<u8>,
    /// With its angle brackets.
    pub message_id: String,
    /// The header fields hold UTF-8 (the sender's address): send it with
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// Some part is 8-bit: send it with BODY=8BITMIME.
    pub eight_bit: bool,
}

/// The rule that keeps bounces from looping: never one for a message whose
/// envelope sender is null (`<>`), such as a bounce (RFC 5321 4.5.5,
/// RFC 3464 2).
pub fn bounce_allowed(sender: &str) -> bool {
    !(sender.is_empty() || sender == "<>")
}

/// The bounce for these recipients; None when no bounce may be sent
/// ([`bounce_allowed`]) or there is nothing to report.
pub fn compose(bounce: &Bounce<'_>) -> Option<Composed> {
    if !bounce_allowed(bounce.sender) || bounce.recipients.is_empty() {
        return None;
    }
    let host = clean(bounce.hostname);
    let text = notification(bounce, &host);
    let (report_type, status) = delivery_status(bounce, &host);
    let headers = header_block(bounce.original);
    let parts = [
        Part {
            description: "Notification",
            content_type: if text.is_ascii() {
                "text/plain; charset=us-ascii"
            } else {
                "text/plain; charset=utf-8"
            },
            body: text.into_bytes(),
        },
        Part {
            description: "Delivery report",
            content_type: if report_type == "delivery-status" {
                "message/delivery-status"
            } else {
                "message/global-delivery-status"
            },
            body: status.into_bytes(),
        },
        Part {
            description: "Undelivered Message Headers",
            content_type: if headers.is_ascii() || std::str::from_utf8(&headers).is_err() {
                "text/rfc822-headers"
            } else {
                "message/global-headers"
            },
            body: headers,
        },
    ];
    let boundary = boundary(bounce, &host, &parts);
    let eight_bit = parts.iter().any(|p| !p.body.is_ascii());
    let message_id = format!("<{}@{}>", id_part(bounce.id), id_host(&host));
    let sender = clean(bounce.sender);
    let mut m = Vec::with_capacity(4096 + parts.iter().map(|p| p.body.len()).sum::<usize>());
    line(
        &mut m,
        &format!("From: Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    line(&mut m, &format!("To: <{sender}>"));
    line(&mut m, "Subject: Undelivered Mail Returned to Sender");
    line(&mut m, &format!("Date: {}", rfc5322_date(bounce.date)));
    line(&mut m, &format!("Message-ID: {message_id}"));
    line(&mut m, "Auto-Submitted: auto-replied");
    line(&mut m, "MIME-Version: 1.0");
    line(
        &mut m,
        &format!("Content-Type: multipart/report; report-type={report_type};"),
    );
    line(&mut m, &format!("\tboundary=\"{boundary}\""));
    line(
        &mut m,
        &format!(
            "Content-Transfer-Encoding: {}",
            if eight_bit { "8bit" } else { "7bit" }
        ),
    );
    line(&mut m, "");
    line(&mut m, "This is a MIME-encapsulated message.");
    for part in &parts {
        // The CRLF before a delimiter belongs to the delimiter (RFC 2046
        // 5.1.1), so each body keeps its own last CRLF.
        line(&mut m, "");
        line(&mut m, &format!("--{boundary}"));
        line(
            &mut m,
            &format!("Content-Description: {}", part.description),
        );
        line(&mut m, &format!("Content-Type: {}", part.content_type));
        if !part.body.is_ascii() {
            line(&mut m, "Content-Transfer-Encoding: 8bit");
        }
        line(&mut m, "");
        m.extend_from_slice(&part.body);
    }
    m.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(Composed {
        message: m,
        message_id,
        smtputf8: !sender.is_ascii() || !host.is_ascii(),
        eight_bit,
    })
}

/// Appends one line and its CRLF.
fn line(m: &mut Vec<u8>, text: &str) {
    m.extend_from_slice(text.as_bytes());
    m.extend_from_slice(b"\r\n");
}

struct Part {
    description: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

/// Lines of the text part are wrapped at this width, as a mail reader shows them.
const WIDTH: usize = 76;

/// The part for people, in the manner of Postfix's bounces.
fn notification(bounce: &Bounce<'_>, host: &str) -> String {
    let paragraphs = [
        format!("This is the mail delivery system at host {host}."),
        "I'm sorry to have to tell you that your message could not be delivered to one or more of its recipients. The mail system has given up on them; the details are below, and the headers of your message are attached.".to_owned(),
        format!("For further help, write to <postmaster@{host}> and include this report."),
    ];
    let mut text = String::new();
    for paragraph in paragraphs {
        text += &wrap(&paragraph, "");
        text += "\r\n";
    }
    text += "                   The mail delivery system\r\n";
    for rcpt in bounce.recipients {
        let mut reason = match &rcpt.diagnostic {
            Some(Diagnostic::Smtp { reply, command }) => {
                let mut said = match &rcpt.remote_mta {
                    Some(mta) => format!("host {} said: {}", clean(mta), clean(reply)),
                    None => format!("the server said: {}", clean(reply)),
                };
                if let Some(command) = command {
                    said += &format!(" (in reply to {} command)", clean(command));
                }
                said
            }
            Some(Diagnostic::Local { text, .. }) => clean(text),
            None => "delivery failed".to_owned(),
        };
        if rcpt.expired {
            let waited = duration(bounce.date.saturating_sub(bounce.arrival));
            reason = match rcpt.diagnostic {
                Some(_) => format!(
                    "delivery time expired: the message was undeliverable for {waited}; the last error: {reason}"
                ),
                None => {
                    format!("delivery time expired: the message was undeliverable for {waited}")
                }
            };
        }
        text += "\r\n";
        text += &wrap(&format!("<{}>: {reason}", clean(&rcpt.address)), "    ");
    }
    text
}

/// `5 days`, `3 hours`, `10 minutes`.
fn duration(seconds: u64) -> String {
    let (n, unit) = if seconds >= 2 * 86_400 {
        (seconds / 86_400, "days")
    } else if seconds >= 2 * 3600 {
        (seconds / 3600, "hours")
    } else {
        (seconds / 60, "minutes")
    };
    format!("{n} {unit}")
}

/// The `message/delivery-status` body (RFC 3464 2.1) and the report type.
fn delivery_status(bounce: &Bounce<'_>, host: &str) -> (&'static str, String) {
    let global = bounce.recipients.iter().any(|r| {
        !r.address.is_ascii()
            || !r.remote_mta.as_deref().unwrap_or_default().is_ascii()
            || match &r.diagnostic {
                Some(Diagnostic::Smtp { reply, .. }) => !reply.is_ascii(),
                Some(Diagnostic::Local { text, .. }) => !text.is_ascii(),
                None => false,
            }
    });
    let mut fields = String::new();
    let mut field = |name: &str, value: &str| {
        fields += &wrap(&format!("{name}: {}", clean(value)), " ");
    };
    field("Reporting-MTA", &format!("dns; {host}"));
    field("Arrival-Date", &rfc5322_date(bounce.arrival));
    for rcpt in bounce.recipients {
        fields += "\r\n";
        let mut field = |name: &str, value: &str| {
            fields += &wrap(&format!("{name}: {}", clean(value)), " ");
        };
        // RFC 6533 3: a non-ASCII address has the utf-8 type, and
        // may be UTF-8 as it is in a global report.
        let kind = if rcpt.address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        field("Final-Recipient", &format!("{kind}; {}", rcpt.address));
        field("Action", "failed");
        field("Status", &rcpt.status.to_string());
        if let Some(mta) = &rcpt.remote_mta {
            field("Remote-MTA", &format!("dns; {mta}"));
        }
        match &rcpt.diagnostic {
            Some(Diagnostic::Smtp { reply, .. }) => {
                field("Diagnostic-Code", &format!("smtp; {reply}"))
            }
            Some(Diagnostic::Local { text, .. }) => {
                field("Diagnostic-Code", &format!("X-gsmtpd; {text}"))
            }
            None => {}
        }
        if let Some(when) = rcpt.last_attempt {
            field("Last-Attempt-Date", &rfc5322_date(when));
        }
    }
    let report_type = if global {
        "global-delivery-status"
    } else {
        "delivery-status"
    };
    (report_type, fields)
}

/// The original's header block up to the empty line that ends it, every
/// line ended by CRLF (a bare CR or LF ends a line too, as the SMTP
/// client sends it). Other bytes are kept as they are.
fn header_block(original: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    let mut rest = original;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let line = &rest[..end];
        if line.is_empty() {
            break;
        }
        block.extend_from_slice(line);
        block.extend_from_slice(b"\r\n");
        rest = &rest[end..];
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.get(1..))
            .unwrap_or_default();
    }
    block
}

/// A boundary made from the bounce's id, date and host (as Postfix makes
/// its own), that occurs nowhere in the parts: with a counter appended
/// until it does not. RFC 2046 allows 70 characters from a small set.
fn boundary(bounce: &Bounce<'_>, host: &str, parts: &[Part]) -> String {
    const ALLOWED: &[u8] = b"'()+_,-./:=?";
    let base: String = format!("{}.{}/{host}", bounce.id, bounce.date)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || (c.is_ascii() && ALLOWED.contains(&(c as u8))) {
                c
            } else {
                '-'
            }
        })
        .take(56)
        .collect();
    let occurs = |candidate: &str| {
        let candidate = candidate.as_bytes();
        parts.iter().any(|part| {
            part.body
                .windows(candidate.len())
                .any(|window| window == candidate)
        })
    };
    let mut candidate = base.clone();
    let mut n = 0u64;
    while occurs(&candidate) {
        n += 1;
        candidate = format!("{base}.{n}");
    }
    candidate
}

/// The Message-ID's left part: the id's letters, digits and `-_`.
fn id_part(id: &str) -> String {
    let part: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if part.is_empty() {
        "bounce".to_owned()
    } else {
        part
    }
}

/// The Message-ID's domain: the host name's letters, digits, `-` and `.`.
fn id_host(host: &str) -> String {
    let part: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let part = part.trim_matches('.');
    if part.is_empty() {
        "localhost".to_owned()
    } else {
        part.to_owned()
    }
}

/// Text that goes into a header field or a line of its own: no control
/// character may end the line early (a reply text could otherwise forge
/// fields of the report).
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Wraps a line at spaces to WIDTH characters: the space becomes CRLF and
/// `indent`. With a one-space indent that is folding a header field (RFC
/// 5322 2.2.3), which unfolds to exactly the value. A word longer than a
/// line stays whole. Ends with CRLF.
fn wrap(line: &str, indent: &str) -> String {
    let mut out = String::new();
    let mut width = 0;
    let mut line_start = 0;
    for (i, word) in line.split(' ').enumerate() {
        let len = word.chars().count();
        if i > 0 {
            if width + 1 + len > WIDTH && width > line_start {
                out += "\r\n";
                out += indent;
                width = indent.len();
                line_start = width;
            } else {
                out.push(' ');
                width += 1;
            }
        }
        out += word;
        width += len;
    }
    out + "\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "mx.example.org";
    const ORIGINAL: &[u8] = b"Received: from client.example\r\n\tby mx.example.org;\r\n\tTue, 24 Nov 2026 01:42:47 +0000\r\nFrom: Alice <alice@example.net>\r\nTo: bob@example.com\r\nSubject: lunch\r\nMessage-ID: <1@example.net>\r\n\r\nShall we?\r\n--not-a-boundary\r\n";
    const ARRIVAL: u64 = 1_795_484_567;
    const NOW: u64 = ARRIVAL + 5 * 86_400 + 60;

    fn refused() -> Recipient {
        Recipient::failed(
            "bob@example.com",
            Some("mx.example.com"),
            Diagnostic::Smtp {
                reply: "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table".into(),
                command: Some("RCPT TO".into()),
            },
            Some(ARRIVAL + 10),
        )
    }

    fn too_big() -> Recipient {
        Recipient::failed(
            "carol@example.com",
            None,
            Diagnostic::Local {
                status: Status::new(5, 3, 4),
                text: "message size 2000 exceeds the size limit 1000 of the server".into(),
            },
            Some(ARRIVAL + 10),
        )
    }

    fn expired() -> Recipient {
        Recipient::expired(
            "dave@example.com",
            Some("mx2.example.com"),
            Some(Diagnostic::Smtp {
                reply: "451 4.3.0 Temporary lookup failure".into(),
                command: Some("RCPT TO".into()),
            }),
            Some(NOW - 100),
        )
    }

    fn bounce<'a>(recipients: &'a [Recipient], original: &'a [u8]) -> Bounce<'a> {
        Bounce {
            hostname: HOST,
            sender: "alice@example.net",
            arrival: ARRIVAL,
            date: NOW,
            id: "1tFz3c-0009Ld-00",
            recipients,
            original,
        }
    }

    /// Header fields, unfolded, in order.
    type Fields = Vec<(String, String)>;

    /// A parsed bounce: its header fields, the boundary, and each part's
    /// header fields and body.
    struct Parsed {
        headers: Fields,
        boundary: String,
        parts: Vec<(Fields, Vec<u8>)>,
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// Header fields of a block, unfolded.
    fn fields(block: &[u8]) -> Fields {
        // Unfolding: a line starting with white space continues the field.
        let text = String::from_utf8_lossy(block)
            .replace("\r\n\t", " ")
            .replace("\r\n ", " ");
        text.split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|line| {
                let (name, value) = line.split_once(": ").expect("a header field");
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn parse(message: &[u8]) -> Parsed {
        // Wire form: every line ends in CRLF, no bare CR or LF, none too long.
        assert!(message.ends_with(b"\r\n"));
        for (i, &b) in message.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(message.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
                b'\n' => assert_eq!(message[i - 1], b'\r', "bare LF at {i}"),
                _ => {}
            }
        }
        for line in message.split(|&b| b == b'\n') {
            assert!(line.len() <= 998, "line of {} bytes", line.len());
        }
        let split = find(message, b"\r\n\r\n").expect("a header block");
        let headers = fields(&message[..split + 2]);
        let content_type = field(&headers, "Content-Type")[0].to_owned();
        let boundary = content_type
            .split_once("boundary=\"")
            .expect("a boundary")
            .1
            .trim_end_matches('"')
            .to_owned();
        assert!(boundary.len() <= 70);
        let body = &message[split + 4..];
        let delimiter = format!("\r\n--{boundary}");
        let mut pieces = Vec::new();
        let mut rest = body;
        while let Some(at) = find(rest, delimiter.as_bytes()) {
            pieces.push(&rest[..at]);
            rest = &rest[at + delimiter.len()..];
        }
        assert_eq!(rest, b"--\r\n", "the close delimiter ends the message");
        assert_eq!(pieces[0], b"This is a MIME-encapsulated message.\r\n");
        let parts = pieces[1..]
            .iter()
            .map(|piece| {
                let piece = piece
                    .strip_prefix(b"\r\n")
                    .expect("CRLF after the delimiter");
                let split = find(piece, b"\r\n\r\n").expect("part headers");
                (fields(&piece[..split + 2]), piece[split + 4..].to_vec())
            })
            .collect();
        Parsed {
            headers,
            boundary,
            parts,
        }
    }

    fn groups(body: &[u8]) -> Vec<Fields> {
        String::from_utf8(body.to_vec())
            .unwrap()
            .split("\r\n\r\n")
            .map(|group| fields(group.as_bytes()))
            .collect()
    }

    #[test]
    fn a_bounce_in_three_parts() {
        let recipients = [refused(), too_big(), expired()];
        let composed = compose(&bounce(&recipients, ORIGINAL)).unwrap();
        assert!(!composed.smtputf8 && !composed.eight_bit);
        let parsed = parse(&composed.message);
        let h = &parsed.headers;
        assert_eq!(
            field(h, "From"),
            ["Mail Delivery System <MAILER-DAEMON@mx.example.org>"]
        );
        assert_eq!(field(h, "To"), ["<alice@example.net>"]);
        assert_eq!(field(h, "Subject"), ["Undelivered Mail Returned to Sender"]);
        assert_eq!(field(h, "Date"), [rfc5322_date(NOW).as_str()]);
        assert_eq!(
            field(h, "Message-ID"),
            ["<1tFz3c-0009Ld-00@mx.example.org>"]
        );
        assert_eq!(composed.message_id, "<1tFz3c-0009Ld-00@mx.example.org>");
        assert_eq!(field(h, "Auto-Submitted"), ["auto-replied"]);
        assert_eq!(field(h, "MIME-Version"), ["1.0"]);
        assert_eq!(field(h, "Content-Transfer-Encoding"), ["7bit"]);
        assert_eq!(
            field(h, "Content-Type"),
            [format!(
                "multipart/report; report-type=delivery-status; boundary=\"{}\"",
                parsed.boundary
            )
            .as_str()]
        );
        let types: Vec<&str> = parsed
            .parts
            .iter()
            .map(|(h, _)| field(h, "Content-Type")[0])
            .collect();
        assert_eq!(
            types,
            [
                "text/plain; charset=us-ascii",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );

        let status = groups(&parsed.parts[1].1);
        assert_eq!(status.len(), 4);
        assert_eq!(field(&status[0], "Reporting-MTA"), ["dns; mx.example.org"]);
        assert_eq!(
            field(&status[0], "Arrival-Date"),
            [rfc5322_date(ARRIVAL).as_str()]
        );
        let bob = &status[1];
        assert_eq!(field(bob, "Final-Recipient"), ["rfc822; bob@example.com"]);
        assert_eq!(field(bob, "Action"), ["failed"]);
        assert_eq!(field(bob, "Status"), ["5.1.1"]);
        assert_eq!(field(bob, "Remote-MTA"), ["dns; mx.example.com"]);
        assert_eq!(
            field(bob, "Diagnostic-Code"),
            [
                "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual mailbox table"
            ]
        );
        assert_eq!(
            field(bob, "Last-Attempt-Date"),
            [rfc5322_date(ARRIVAL + 10).as_str()]
        );
        let carol = &status[2];
        assert_eq!(field(carol, "Status"), ["5.3.4"]);
        assert_eq!(field(carol, "Remote-MTA"), Vec::<&str>::new());
        assert_eq!(
            field(carol, "Diagnostic-Code"),
            ["X-gsmtpd; message size 2000 exceeds the size limit 1000 of the server"]
        );
        let dave = &status[3];
        assert_eq!(field(dave, "Action"), ["failed"]);
        assert_eq!(field(dave, "Status"), ["4.4.7"]);
        assert_eq!(
            field(dave, "Diagnostic-Code"),
            ["smtp; 451 4.3.0 Temporary lookup failure"]
        );

        // The original's header block, exactly, without its body.
        let block = &ORIGINAL[..find(ORIGINAL, b"\r\n\r\n").unwrap() + 2];
        assert_eq!(parsed.parts[2].1, block);

        let text = String::from_utf8(parsed.parts[0].1.clone()).unwrap();
        assert!(text.starts_with("This is the mail delivery system at host mx.example.org.\r\n"));
        assert!(text.contains(
            "<bob@example.com>: host mx.example.com said: 550 5.1.1 <bob@example.com>:\r\n    Recipient address rejected"
        ), "{text}");
        assert!(text.contains("(in reply to RCPT TO command)"));
        assert!(text.contains(
            "<carol@example.com>: message size 2000 exceeds the size limit 1000 of the\r\n    server\r\n"
        ), "{text}");
        assert!(text.contains(
            "<dave@example.com>: delivery time expired: the message was undeliverable for\r\n    5 days; the last error: host mx2.example.com said: 451 4.3.0"
        ), "{text}");
        for line in text.split("\r\n") {
            assert!(line.chars().count() <= 78, "{line:?}");
        }
    }

    #[test]
    fn no_bounce_for_the_null_sender() {
        assert!(!bounce_allowed(""));
        assert!(!bounce_allowed("<>"));
        assert!(bounce_allowed("alice@example.net"));
        let recipients = [refused()];
        let mut b = bounce(&recipients, ORIGINAL);
        b.sender = "";
        assert_eq!(compose(&b), None);
        assert_eq!(compose(&bounce(&[], ORIGINAL)), None);
    }

    #[test]
    fn status_from_replies() {
        let status = |reply: &str| Status::from_reply(reply).to_string();
        assert_eq!(status("550 5.1.1 No such user"), "5.1.1");
        assert_eq!(status("550 No such user"), "5.0.0");
        assert_eq!(status("552 5.3.4"), "5.3.4");
        assert_eq!(status("550 4.1.1 mixed up"), "5.0.0");
        assert_eq!(status("452 4.2.2 Over quota"), "4.2.2");
        assert_eq!(status("421 closing"), "4.0.0");
        assert_eq!(status("550-5.7.1 first line"), "5.7.1");
        assert_eq!(status("550 5.1.10 null MX"), "5.1.10");
        assert_eq!(status("550 5.1.1000 x"), "5.0.0");
        assert_eq!(status("5505.1.1"), "5.0.0");
        assert_eq!(status("garbage"), "5.0.0");
        assert_eq!(status(""), "5.0.0");
        assert_eq!(Status::parse("4.4.7"), Some(Status::EXPIRED));
        assert_eq!(Status::parse("3.1.1"), None);
        assert_eq!(Status::parse("5.1"), None);
        assert_eq!(Status::parse("5.1.1.1"), None);
    }

    #[test]
    fn header_block_extraction() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        // Line ends made CRLF; the first empty line ends the block however written.
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody"), b"A: 1\r\nB: 2\r\n");
        assert_eq!(
            header_block(b"A: 1\r\n\tfolded\r\n\r\n"),
            b"A: 1\r\n\tfolded\r\n"
        );
        // Only headers, the last line unterminated (a truncated original).
        assert_eq!(header_block(b"A: 1\r\nB: 2"), b"A: 1\r\nB: 2\r\n");
        assert_eq!(header_block(b"\r\nbody"), b"");
        assert_eq!(header_block(b""), b"");
        // 8-bit bytes are kept.
        assert_eq!(
            header_block(b"Subject: \xe9t\xe9\r\n\r\n"),
            b"Subject: \xe9t\xe9\r\n"
        );
    }

    #[test]
    fn the_boundary_never_occurs_in_the_content() {
        let recipients = [refused()];
        let first = compose(&bounce(&recipients, ORIGINAL)).unwrap();
        let boundary = parse(&first.message).boundary;
        // An original that holds exactly that boundary, and the next one.
        let hostile = format!("X-Trap: {boundary}\r\nX-Trap: {boundary}.1\r\n\r\n");
        let second = compose(&bounce(&recipients, hostile.as_bytes())).unwrap();
        let parsed = parse(&second.message);
        assert_eq!(parsed.boundary, format!("{boundary}.2"));
        assert_eq!(parsed.parts.len(), 3);
        let block = hostile.trim_end_matches("\r\n").to_owned() + "\r\n";
        assert_eq!(parsed.parts[2].1, block.as_bytes());
    }

    #[test]
    fn replies_cannot_forge_fields_and_long_ones_are_folded() {
        let forged = Recipient::failed(
            "bob@example.com",
            Some("mx.example.com\r\nAction: delivered"),
            Diagnostic::Smtp {
                reply: format!("550 5.7.1 {}\r\nStatus: 2.0.0", "blah ".repeat(60)),
                command: None,
            },
            None,
        );
        let recipients = [forged];
        let composed = compose(&bounce(&recipients, ORIGINAL)).unwrap();
        let parsed = parse(&composed.message);
        let status = groups(&parsed.parts[1].1);
        assert_eq!(field(&status[1], "Action"), ["failed"]);
        assert_eq!(field(&status[1], "Status"), ["5.7.1"]);
        assert_eq!(
            field(&status[1], "Remote-MTA"),
            ["dns; mx.example.com??Action: delivered"]
        );
        let body = String::from_utf8(parsed.parts[1].1.clone()).unwrap();
        for line in body.split("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
        }
        assert!(field(&status[1], "Diagnostic-Code")[0].ends_with("blah ??Status: 2.0.0"));
    }

    #[test]
    fn utf8_addresses_make_a_global_report() {
        let recipients = [
            Recipient::failed(
                "j\u{f6}rg@b\u{fc}cher.example",
                Some("mx.xn--bcher-kva.example"),
                Diagnostic::Smtp {
                    reply: "550 5.1.1 unbekannter Empf\u{e4}nger".into(),
                    command: Some("RCPT TO".into()),
                },
                None,
            ),
            refused(),
        ];
        let original =
            "From: J\u{f6}rg <j@example.net>\r\nSubject: Gr\u{fc}\u{df}e\r\n\r\nhallo\r\n";
        let mut b = bounce(&recipients, original.as_bytes());
        b.sender = "\u{e9}l\u{e8}ve@example.net";
        let composed = compose(&b).unwrap();
        assert!(composed.smtputf8 && composed.eight_bit);
        let parsed = parse(&composed.message);
        assert_eq!(
            field(&parsed.headers, "To"),
            ["<\u{e9}l\u{e8}ve@example.net>"]
        );
        assert!(
            field(&parsed.headers, "Content-Type")[0]
                .contains("report-type=global-delivery-status;")
        );
        assert_eq!(
            field(&parsed.headers, "Content-Transfer-Encoding"),
            ["8bit"]
        );
        let types: Vec<&str> = parsed
            .parts
            .iter()
            .map(|(h, _)| field(h, "Content-Type")[0])
            .collect();
        assert_eq!(
            types,
            [
                "text/plain; charset=utf-8",
                "message/global-delivery-status",
                "message/global-headers"
            ]
        );
        for (h, _) in &parsed.parts {
            assert_eq!(field(h, "Content-Transfer-Encoding"), ["8bit"]);
        }
        let status = groups(&parsed.parts[1].1);
        assert_eq!(
            field(&status[1], "Final-Recipient"),
            ["utf-8; j\u{f6}rg@b\u{fc}cher.example"]
        );
        assert_eq!(
            field(&status[2], "Final-Recipient"),
            ["rfc822; bob@example.com"]
        );
        assert_eq!(
            parsed.parts[2].1,
            "From: J\u{f6}rg <j@example.net>\r\nSubject: Gr\u{fc}\u{df}e\r\n".as_bytes()
        );
    }

    #[test]
    fn headers_that_are_not_utf8_are_returned_byte_for_byte() {
        let original = b"Subject: caf\xe9 cr\xe8me\r\nFrom: x@example.net\r\n\r\nbody";
        let recipients = [refused()];
        let composed = compose(&bounce(&recipients, original)).unwrap();
        assert!(composed.eight_bit && !composed.smtputf8);
        let parsed = parse(&composed.message);
        let (headers, body) = &parsed.parts[2];
        assert_eq!(field(headers, "Content-Type"), ["text/rfc822-headers"]);
        assert_eq!(field(headers, "Content-Transfer-Encoding"), ["8bit"]);
        assert_eq!(
            body,
            b"Subject: caf\xe9 cr\xe8me\r\nFrom: x@example.net\r\n"
        );
        // The report itself stays ASCII.
        assert_eq!(
            field(&parsed.parts[1].0, "Content-Type"),
            ["message/delivery-status"]
        );
    }

    #[test]
    fn identifiers_are_made_safe() {
        let recipients = [refused()];
        let mut b = bounce(&recipients, ORIGINAL);
        b.id = "a b<c>\u{e9}";
        b.hostname = "mx.example.org.";
        let composed = compose(&b).unwrap();
        assert_eq!(composed.message_id, "<a-b-c--@mx.example.org>");
        let parsed = parse(&composed.message);
        assert!(
            parsed
                .boundary
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&c))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(5 * 86_400 + 7), "5 days");
        assert_eq!(duration(86_400), "24 hours");
        assert_eq!(duration(3 * 3600), "3 hours");
        assert_eq!(duration(90 * 60), "90 minutes");
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("short line", "  "), "short line\r\n");
        let long = format!("{} {}", "a".repeat(70), "b".repeat(10));
        assert_eq!(
            wrap(&long, "    "),
            format!("{}\r\n    {}\r\n", "a".repeat(70), "b".repeat(10))
        );
        // A word longer than a line stays whole.
        let word = "x".repeat(100);
        assert_eq!(
            wrap(&format!("k: {word}"), "    "),
            format!("k:\r\n    {word}\r\n")
        );
    }
}
