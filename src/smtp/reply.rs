//! Reply texts and the outgoing byte buffer.

use std::borrow::Cow;

/// One single-line reply; `text` starts with the enhanced status code where one applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Reply {
    pub code: u16,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn fixed(code: u16, text: &'static str) -> Reply {
        Reply {
            code,
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, text: String) -> Reply {
        Reply {
            code,
            text: Cow::Owned(text),
        }
    }

    pub fn is_error(&self) -> bool {
        self.code >= 500
    }
}

pub(super) const OK: Reply = Reply::fixed(250, "2.0.0 OK");
pub(super) const MAIL_OK: Reply = Reply::fixed(250, "2.1.0 OK");
pub(super) const RCPT_OK: Reply = Reply::fixed(250, "2.1.5 OK");
pub(super) const START_DATA: Reply = Reply::fixed(354, "End data with <CR><LF>.<CR><LF>");
pub(super) const START_TLS: Reply = Reply::fixed(220, "2.0.0 Ready to start TLS");
pub(super) const HELP: Reply = Reply::fixed(
    214,
    "2.0.0 See RFC 5321 https://www.rfc-editor.org/rfc/rfc5321",
);
pub(super) const VRFY: Reply = Reply::fixed(
    252,
    "2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
);

pub(super) const TOO_MANY_RECIPIENTS: Reply = Reply::fixed(452, "4.5.3 Too many recipients");
pub(super) const STORAGE: Reply = Reply::fixed(452, "4.3.1 Insufficient system storage");

pub(super) const UNRECOGNIZED: Reply = Reply::fixed(500, "5.5.2 Unrecognized command");
pub(super) const LINE_TOO_LONG: Reply = Reply::fixed(500, "5.5.2 Line too long");
pub(super) const NUL_IN_COMMAND: Reply = Reply::fixed(500, "5.5.2 NUL character in command");
pub(super) const BAD_UTF8: Reply = Reply::fixed(501, "5.5.2 Invalid UTF-8 in command");
pub(super) const MAIL_SYNTAX: Reply = Reply::fixed(501, "5.5.2 Syntax: MAIL FROM:<address>");
pub(super) const RCPT_SYNTAX: Reply = Reply::fixed(501, "5.5.2 Syntax: RCPT TO:<address>");
pub(super) const HELO_SYNTAX: Reply = Reply::fixed(501, "5.5.4 Syntax: HELO/EHLO hostname");
pub(super) const BDAT_SYNTAX: Reply = Reply::fixed(501, "5.5.4 Syntax: BDAT size [LAST]");
pub(super) const NO_ARGUMENTS: Reply = Reply::fixed(501, "5.5.4 No arguments allowed");
pub(super) const VRFY_SYNTAX: Reply = Reply::fixed(501, "5.5.4 Syntax: VRFY address");
pub(super) const BAD_PARAM_VALUE: Reply = Reply::fixed(501, "5.5.4 Invalid parameter value");
pub(super) const EXPN: Reply = Reply::fixed(502, "5.5.1 EXPN not supported");
pub(super) const NO_STARTTLS: Reply = Reply::fixed(502, "5.5.1 STARTTLS not available");
pub(super) const NEED_HELO: Reply = Reply::fixed(503, "5.5.1 Error: send HELO/EHLO first");
pub(super) const NESTED_MAIL: Reply = Reply::fixed(503, "5.5.1 Error: nested MAIL command");
pub(super) const NEED_MAIL: Reply = Reply::fixed(503, "5.5.1 Error: need MAIL command");
pub(super) const NO_RECIPIENTS: Reply = Reply::fixed(503, "5.5.1 Error: No valid recipients");
pub(super) const DATA_AFTER_BDAT: Reply =
    Reply::fixed(503, "5.5.1 Error: DATA not allowed after BDAT");
pub(super) const RCPT_AFTER_BDAT: Reply =
    Reply::fixed(503, "5.5.1 Error: RCPT not allowed after BDAT");
pub(super) const ALREADY_TLS: Reply = Reply::fixed(503, "5.5.1 TLS already active");
pub(super) const RELAY_DENIED: Reply = Reply::fixed(550, "5.7.1 Relaying denied");
pub(super) const TOO_BIG: Reply =
    Reply::fixed(552, "5.3.4 Message size exceeds fixed maximum message size");
pub(super) const BAD_RECIPIENT: Reply = Reply::fixed(553, "5.1.3 Bad recipient address syntax");
pub(super) const BAD_SENDER: Reply = Reply::fixed(553, "5.1.7 Bad sender address syntax");
pub(super) const NEED_SMTPUTF8: Reply =
    Reply::fixed(553, "5.6.7 Non-ASCII address requires SMTPUTF8");
pub(super) const SYNC_ERROR: Reply = Reply::fixed(554, "5.5.0 SMTP synchronization error");
pub(super) const BARE_EOL: Reply = Reply::fixed(
    554,
    "5.6.0 Message contains bare CR or LF characters (RFC 5321 2.3.8)",
);
pub(super) const UNKNOWN_PARAM: Reply = Reply::fixed(555, "5.5.4 Unsupported parameter");

/// Reply bytes not yet written by the server.
#[derive(Default)]
pub(super) struct Output {
    buf: Vec<u8>,
    written: usize,
}

impl Output {
    pub fn pending(&self) -> &[u8] {
        self.buf.get(self.written..).unwrap_or_default()
    }

    pub fn consume(&mut self, n: usize) {
        self.written = self.written.saturating_add(n).min(self.buf.len());
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
        } else if self.written > self.buf.len() / 2 {
            // Amortised compaction keeps consume O(1) per byte without growing forever.
            self.buf.drain(..self.written);
            self.written = 0;
        }
    }

    pub fn push(&mut self, reply: &Reply) {
        self.line(reply.code, ' ', &reply.text);
    }

    /// A multi-line reply: every line but the last uses the "CODE-" continuation.
    pub fn push_lines(&mut self, code: u16, lines: &[String]) {
        let last = lines.len().saturating_sub(1);
        for (i, text) in lines.iter().enumerate() {
            self.line(code, if i == last { ' ' } else { '-' }, text);
        }
    }

    fn line(&mut self, code: u16, separator: char, text: &str) {
        self.buf
            .extend_from_slice(format!("{code}{separator}{text}\r\n").as_bytes());
    }
}
