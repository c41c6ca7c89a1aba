//! The EHLO reply: the extensions the engine uses, and the reply itself for
//! the driver (which may cache it to pipeline early on a later connection).

use super::reply::{Read, Reply, ReplyReader};

/// What the server's latest EHLO reply said. After STARTTLS only the reply
/// to the EHLO sent inside TLS counts (RFC 3207 4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ehlo {
    /// The reply exactly as received, every byte (CRLFs included), so that
    /// a cached copy can be compared with a later one byte for byte.
    pub raw: Vec<u8>,
    /// The text of each line, the greeting line first (made safe as
    /// [`Reply::lines`] are).
    pub lines: Vec<String>,
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 3030: BDAT.
    pub chunking: bool,
    /// RFC 1870: SIZE advertised, so MAIL carries SIZE=.
    pub size: bool,
    /// RFC 1870: the server's fixed limit; None without one (`SIZE`,
    /// `SIZE 0` or a value that is not a number).
    pub size_limit: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// Exim's early pipelining keyword; the engine does not act on it.
    pub pipe_connect: bool,
}

impl Ehlo {
    pub(super) fn parse(reply: &Reply, raw: Vec<u8>) -> Ehlo {
        let mut ehlo = Ehlo {
            raw,
            lines: reply.lines.clone(),
            pipelining: false,
            chunking: false,
            size: false,
            size_limit: None,
            eight_bit_mime: false,
            smtputf8: false,
            starttls: false,
            enhanced_status_codes: false,
            pipe_connect: false,
        };
        // The first line is the greeting; each further line is a keyword
        // and its parameters (RFC 5321 4.1.1.1), keywords in any case.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split(' ').filter(|w| !w.is_empty());
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ehlo.pipelining = true,
                "CHUNKING" => ehlo.chunking = true,
                "SIZE" => {
                    ehlo.size = true;
                    ehlo.size_limit = words.next().and_then(decimal).filter(|&n| n > 0);
                }
                "8BITMIME" => ehlo.eight_bit_mime = true,
                "SMTPUTF8" => ehlo.smtputf8 = true,
                "STARTTLS" => ehlo.starttls = true,
                "ENHANCEDSTATUSCODES" => ehlo.enhanced_status_codes = true,
                "PIPECONNECT" => ehlo.pipe_connect = true,
                _ => {}
            }
        }
        ehlo
    }
}

impl Ehlo {
    /// A reply kept by the driver ([`Ehlo::raw`]), parsed again: None
    /// unless it is exactly one positive reply.
    pub fn from_raw(raw: &[u8]) -> Option<Ehlo> {
        let (used, read) = ReplyReader::default().read(raw);
        match read {
            Read::Reply(reply, _) if used == raw.len() && reply.class() == 2 => {
                Some(Ehlo::parse(&reply, raw.to_vec()))
            }
            _ => None,
        }
    }

    /// Early pipelining may rely on this response: Exim's PIPECONNECT,
    /// and PIPELINING for the commands that follow the EHLO.
    pub fn allows_early_pipelining(&self) -> bool {
        self.pipe_connect && self.pipelining
    }

    /// The server offers the same as in `other`: every line but the first
    /// (which greets the client by name and address), byte for byte.
    pub fn same_offer(&self, other: &Ehlo) -> bool {
        self.lines.get(1..) == other.lines.get(1..)
    }
}

fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Ehlo {
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        };
        Ehlo::parse(&reply, Vec::new())
    }

    #[test]
    fn keywords() {
        let ehlo = parse(&[
            "mx.example.org Hello",
            "size 1000",
            "8BITMIME",
            "Pipelining",
            "CHUNKING",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "STARTTLS",
            "PIPECONNECT",
            "AUTH PLAIN LOGIN",
        ]);
        assert!(ehlo.pipelining && ehlo.chunking && ehlo.eight_bit_mime && ehlo.smtputf8);
        assert!(ehlo.starttls && ehlo.enhanced_status_codes && ehlo.pipe_connect);
        assert!(ehlo.size);
        assert_eq!(ehlo.size_limit, Some(1000));
        assert_eq!(ehlo.lines.len(), 10);
    }

    #[test]
    fn a_kept_response_parses_again_and_compares_by_its_offer() {
        let raw = b"250-mx.test Hello a [192.0.2.1]\r\n250-PIPELINING\r\n250 PIPECONNECT\r\n";
        let ehlo = Ehlo::from_raw(raw).unwrap();
        assert!(ehlo.allows_early_pipelining());
        assert_eq!(ehlo.raw, raw);
        let other = Ehlo::from_raw(
            b"250-mx.test Hello b [192.0.2.2]\r\n250-PIPELINING\r\n250 PIPECONNECT\r\n",
        )
        .unwrap();
        assert!(ehlo.same_offer(&other), "only the greeting line differs");
        let changed =
            Ehlo::from_raw(b"250-mx.test Hello a [192.0.2.1]\r\n250 PIPELINING\r\n").unwrap();
        assert!(!ehlo.same_offer(&changed));
        assert!(!changed.allows_early_pipelining());
        for bad in [
            &b"550 no\r\n"[..],
            b"250-mx\r\n",
            b"250 mx\r\n250 again\r\n",
            b"",
        ] {
            assert!(Ehlo::from_raw(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_greeting_line_is_no_keyword() {
        let ehlo = parse(&["PIPELINING"]);
        assert!(!ehlo.pipelining);
        let ehlo = parse(&["mx", "PIPELINING-NOT", "XSTARTTLS", ""]);
        assert!(!ehlo.pipelining && !ehlo.starttls);
    }

    #[test]
    fn size_without_a_limit() {
        for (line, limit) in [
            ("SIZE", None),
            ("SIZE 0", None),
            ("SIZE lots", None),
            ("SIZE 99999999999999999999999", None),
            ("SIZE  52428800", Some(52428800)),
        ] {
            let ehlo = parse(&["mx", line]);
            assert!(ehlo.size, "{line}");
            assert_eq!(ehlo.size_limit, limit, "{line}");
        }
    }
}
