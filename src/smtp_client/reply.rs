//! Server replies (RFC 5321 4.2) and the reader that assembles them from
//! received bytes, whatever the read boundaries, with bounded memory.

use std::fmt;

use super::ProtocolError;

/// The longest reply line accepted, its CRLF included. RFC 5321 4.5.3.1.5
/// allows 512; real servers send longer ones, so this is the server side's
/// command limit, which no honest reply comes near.
pub const MAX_LINE: usize = 2048;
/// The longest whole reply accepted (a multi-line EHLO reply is the largest
/// honest one, a few hundred bytes).
pub const MAX_REPLY: usize = 64 * 1024;

/// One complete reply, single- or multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// 200 to 599.
    pub code: u16,
    /// The RFC 3463 code at the start of the first line's text, when it has
    /// one whose class matches the reply code (with or without
    /// ENHANCEDSTATUSCODES: many servers send them either way).
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line after the code and separator, enhanced code
    /// included. Invalid UTF-8 is replaced (U+FFFD) and control characters
    /// become `?`, so the text is safe to log and to put into a bounce.
    pub lines: Vec<String>,
}

/// An enhanced mail system status code, e.g. 5.1.1 (RFC 3463).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl EnhancedCode {
    /// `class.subject.detail` at the start of `text`, followed by a space
    /// or the end: class one digit, subject and detail one to three.
    pub fn parse_prefix(text: &str) -> Option<EnhancedCode> {
        let word = text.split(' ').next()?;
        let mut parts = word.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let number = |part: &str, max_digits: usize| {
            let digits =
                (1..=max_digits).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| part.parse::<u16>().ok()).flatten()
        };
        let class = number(class, 1)?;
        Some(EnhancedCode {
            class: u8::try_from(class).ok()?,
            subject: number(subject, 3)?,
            detail: number(detail, 3)?,
        })
    }
}

impl Reply {
    /// The reply's class: 2 to 5.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }

    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }

    /// The lines' text joined by spaces, as one line. A continuation line
    /// that repeats the first line's enhanced code loses the repetition
    /// (`550-5.1.1 a` / `550 5.1.1 b` gives `5.1.1 a b`).
    pub fn text(&self) -> String {
        let mut text = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let mut line = line.as_str();
            if i > 0 {
                if let Some(code) = self.enhanced {
                    let prefix = code.to_string();
                    if let Some(rest) = line.strip_prefix(prefix.as_str()) {
                        line = rest.strip_prefix(' ').unwrap_or(rest);
                    }
                }
                if !text.is_empty() && !line.is_empty() {
                    text.push(' ');
                }
            }
            text.push_str(line);
        }
        text
    }
}

/// `550 5.1.1 No such user`: the code and [`Reply::text`], one line.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        if text.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {text}", self.code)
        }
    }
}

/// What one call to [`ReplyReader::read`] found.
pub(super) enum Read {
    /// The input was kept; no reply is complete yet.
    Pending,
    /// A complete reply, and its bytes exactly as received.
    Reply(Reply, Vec<u8>),
    /// Not SMTP: the connection cannot go on.
    Error(ProtocolError),
}

/// Assembles replies from input split anywhere. Holds at most one line
/// (MAX_LINE) and one reply (MAX_REPLY).
#[derive(Default)]
pub(super) struct ReplyReader {
    /// The unterminated tail of a line.
    partial: Vec<u8>,
    /// The lines of the reply so far, as received.
    raw: Vec<u8>,
    /// The code of a multi-line reply in progress.
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyReader {
    /// Consumes input up to the end of the first reply it completes (the
    /// rest is the caller's to feed again) and says what it found.
    pub fn read(&mut self, input: &[u8]) -> (usize, Read) {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                // A line that cannot end within MAX_LINE fails now, not
                // when (if ever) its end arrives.
                if self.partial.len() + rest.len() >= MAX_LINE {
                    return (input.len(), Read::Error(ProtocolError::LineTooLong));
                }
                if self.raw.len() + self.partial.len() + rest.len() > MAX_REPLY {
                    return (input.len(), Read::Error(ProtocolError::ReplyTooLong));
                }
                self.partial.extend_from_slice(rest);
                return (input.len(), Read::Pending);
            };
            used += lf + 1;
            if self.partial.len() + lf + 1 > MAX_LINE {
                return (used, Read::Error(ProtocolError::LineTooLong));
            }
            if self.raw.len() + self.partial.len() + lf + 1 > MAX_REPLY {
                return (used, Read::Error(ProtocolError::ReplyTooLong));
            }
            self.partial.extend_from_slice(&rest[..=lf]);
            let line = std::mem::take(&mut self.partial);
            match self.line(&line) {
                Ok(false) => {}
                Ok(true) => {
                    let reply = self.finish();
                    return (used, Read::Reply(reply.0, reply.1));
                }
                Err(error) => return (used, Read::Error(error)),
            }
        }
        (used, Read::Pending)
    }

    /// Takes one line with its LF; true when it ended the reply.
    fn line(&mut self, line: &[u8]) -> Result<bool, ProtocolError> {
        self.raw.extend_from_slice(line);
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let bad = || ProtocolError::BadReply(excerpt(text));
        let (code, rest) = match text {
            [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', rest @ ..] => {
                let digit = |d: &u8| u16::from(d - b'0');
                (digit(a) * 100 + digit(b) * 10 + digit(c), rest)
            }
            _ => return Err(bad()),
        };
        // "250" alone is a last line with no text; some servers send it.
        let (last, text) = match rest {
            [] => (true, &[][..]),
            [b' ', text @ ..] => (true, text),
            [b'-', text @ ..] => (false, text),
            _ => return Err(bad()),
        };
        if self.code.is_some_and(|first| first != code) {
            return Err(ProtocolError::MixedCodes);
        }
        self.code = Some(code);
        self.lines.push(clean(text));
        Ok(last)
    }

    fn finish(&mut self) -> (Reply, Vec<u8>) {
        let code = self.code.take().unwrap_or_default();
        let lines = std::mem::take(&mut self.lines);
        let enhanced = lines
            .first()
            .and_then(|first| EnhancedCode::parse_prefix(first))
            .filter(|e| u16::from(e.class) == code / 100);
        (
            Reply {
                code,
                enhanced,
                lines,
            },
            std::mem::take(&mut self.raw),
        )
    }
}

/// Reply text as a safe string: whatever the server sent, nothing in it can
/// break a log line or a header field.
fn clean(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The start of a bad line, for the driver's log.
fn excerpt(line: &[u8]) -> String {
    const MAX: usize = 80;
    let mut text = clean(&line[..line.len().min(MAX)]);
    if line.len() > MAX {
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Vec<Result<Reply, ProtocolError>> {
        let mut reader = ReplyReader::default();
        let mut rest = input;
        let mut replies = Vec::new();
        while !rest.is_empty() {
            let (used, read) = reader.read(rest);
            rest = &rest[used..];
            match read {
                Read::Pending => assert!(rest.is_empty()),
                Read::Reply(reply, _) => replies.push(Ok(reply)),
                Read::Error(error) => {
                    replies.push(Err(error));
                    break;
                }
            }
        }
        replies
    }

    fn one(input: &[u8]) -> Reply {
        match read_all(input).as_slice() {
            [Ok(reply)] => reply.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn single_and_multi_line() {
        let reply = one(b"250 2.1.0 Ok\r\n");
        assert_eq!(reply.code, 250);
        assert_eq!(reply.enhanced.unwrap().to_string(), "2.1.0");
        assert_eq!(reply.to_string(), "250 2.1.0 Ok");
        let reply = one(b"550-5.1.1 The account\r\n550-5.1.1 does not\r\n550 5.1.1 exist\r\n");
        assert_eq!(reply.lines.len(), 3);
        assert_eq!(reply.to_string(), "550 5.1.1 The account does not exist");
        let reply = one(b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n");
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.to_string(), "250 mx.example PIPELINING SIZE 100");
    }

    #[test]
    fn lenient_forms() {
        // Bare LF, a code alone, a code with an empty continuation.
        assert_eq!(one(b"250 Ok\n").lines, ["Ok"]);
        assert_eq!(one(b"250\r\n").to_string(), "250");
        assert_eq!(one(b"250-\r\n250 x\r\n").to_string(), "250 x");
        // Only one CR is the line end's.
        assert_eq!(one(b"250 Ok\r\r\n").lines, ["Ok?"]);
    }

    #[test]
    fn enhanced_codes_need_the_right_class_and_shape() {
        let code = |line: &[u8]| one(line).enhanced.map(|c| c.to_string());
        assert_eq!(code(b"451 4.7.1 Try later\r\n").as_deref(), Some("4.7.1"));
        assert_eq!(code(b"451 5.7.1 Try later\r\n"), None);
        assert_eq!(code(b"550 5.1.10\r\n").as_deref(), Some("5.1.10"));
        assert_eq!(code(b"550 5.1234.1 x\r\n"), None);
        assert_eq!(code(b"550 5.1.1x y\r\n"), None);
        assert_eq!(code(b"550 5.1 y\r\n"), None);
        assert_eq!(code(b"550 5.1.1.1 y\r\n"), None);
        assert_eq!(code(b"550 Mailbox unavailable\r\n"), None);
    }

    #[test]
    fn garbage_and_limits() {
        let error = |input: &[u8]| match read_all(input).last() {
            Some(Err(error)) => error.clone(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(error(b"hello\r\n"), ProtocolError::BadReply(_)));
        assert!(matches!(error(b"25\r\n"), ProtocolError::BadReply(_)));
        assert!(matches!(error(b"150 x\r\n"), ProtocolError::BadReply(_)));
        assert!(matches!(error(b"650 x\r\n"), ProtocolError::BadReply(_)));
        assert!(matches!(error(b"250_x\r\n"), ProtocolError::BadReply(_)));
        assert!(matches!(error(b"2a0 x\r\n"), ProtocolError::BadReply(_)));
        assert_eq!(error(b"250-a\r\n251 b\r\n"), ProtocolError::MixedCodes);
        let at_limit = [b"250 ".as_slice(), &[b'x'; MAX_LINE - 6], b"\r\n"].concat();
        assert_eq!(at_limit.len(), MAX_LINE);
        assert_eq!(one(&at_limit).code, 250);
        let over = [b"250 ".as_slice(), &[b'x'; MAX_LINE - 5], b"\r\n"].concat();
        assert_eq!(error(&over), ProtocolError::LineTooLong);
        // Without its end: fails as soon as it cannot fit.
        assert_eq!(error(&[b'2'; MAX_LINE]), ProtocolError::LineTooLong);
        let mut reader = ReplyReader::default();
        assert!(matches!(
            reader.read(&[b'2'; MAX_LINE - 1]).1,
            Read::Pending
        ));
        let line = [b"250-".as_slice(), &[b'x'; 1000], b"\r\n"].concat();
        let many = line.repeat(MAX_REPLY / line.len() + 1);
        assert_eq!(error(&many), ProtocolError::ReplyTooLong);
    }

    #[test]
    fn text_is_made_safe() {
        let reply = one(b"550 5.7.1 caf\xc3\xa9 \xff\x1b[31m\tx\r\n");
        assert_eq!(reply.lines, ["5.7.1 caf\u{e9} \u{fffd}?[31m?x"]);
    }

    #[test]
    fn raw_bytes_and_the_rest_of_the_input() {
        let mut reader = ReplyReader::default();
        let input = b"250-a\r\n250 b\r\n220 next";
        let (used, read) = reader.read(input);
        assert_eq!(used, 14);
        match read {
            Read::Reply(_, raw) => assert_eq!(raw, b"250-a\r\n250 b\r\n"),
            _ => panic!("no reply"),
        }
        assert!(matches!(reader.read(&input[used..]).1, Read::Pending));
        match reader.read(b" ok\r\n").1 {
            Read::Reply(reply, raw) => {
                assert_eq!(reply.to_string(), "220 next ok");
                assert_eq!(raw, b"220 next ok\r\n");
            }
            _ => panic!("no reply"),
        }
    }
}
