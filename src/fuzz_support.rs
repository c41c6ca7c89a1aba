//! The fuzz targets' logic as plain functions, so that the cargo-fuzz
//! targets in `fuzz/` are one-liners and `tests/fuzz_regressions.rs` runs
//! the same code on the committed seeds and crash reproducers under an
//! ordinary `cargo test`. Each function accepts any bytes and panics when
//! one of gsmtpd's invariants is broken; nothing else is a failure.
//!
//! # `smtp_session`: input layout
//!
//! An 8-byte header, then `n` chunk lengths, then the client's bytes
//! (missing header bytes read as 0):
//!
//! | byte | meaning |
//! |------|---------|
//! | 0 | flags: bit 0 `starttls_available`, bit 1 `pipe_connect`, bit 2 the first chunk arrives before the banner (`early_input`, else `greet` + `receive`), bit 3 implicit TLS (`tls_established` before the banner), bit 4 call `tls_established` after a `StartTls`, bit 5 consume the output partially, bits 6-7 how many chunks are fed (and must be dropped) between `StartTls` and `tls_established` |
//! | 1 | the sink's `begin` fails for message i (numbered from 0) when bit i % 8 is set |
//! | 2 | the same for `write` |
//! | 3 | the same for `commit` (for odd-numbered messages, which the sink queues for group commit, the queued commit fails) |
//! | 4 | bits 0-1: 1 `timed_out`, 2 `shutting_down`, 3 both; bits 2-7: after which chunk (past the last one: at the end); skipped while awaiting TLS, as the server does |
//! | 5 | `max_message_size` = 16 * (byte + 1) |
//! | 6 | with partial consumption, the output bytes consumed after each call, minus one |
//! | 7 | `n` = byte % 16: the number of chunk lengths that follow |
//!
//! Each chunk length byte `l` gives a chunk of `l + 1` bytes; the lengths
//! are used cyclically until the client's bytes run out (no lengths: one
//! chunk). The invariants checked are listed on [`smtp_session`].
//!
//! # `smtp_client`: input layout
//!
//! An 8-byte header, then `n` chunk lengths, then the server's bytes, read
//! by the client in those chunks (used cyclically, each `l + 1` bytes; no
//! lengths: one chunk). Code in `fuzz_support/client.rs`; the invariants
//! are listed on [`smtp_client`].
//!
//! | byte | meaning |
//! |------|---------|
//! | 0 | flags: bits 0-1 TLS wanted (0 never, 1 if offered, 2-3 required), bit 2 implicit TLS, bit 3 after a refused STARTTLS go on in plaintext (else QUIT), bit 4 partial writes, bit 5 QUIT once no message is left (else stay idle), bit 6 call `tls_started` only after one more chunk is fed (a STARTTLS response injection), bit 7 `quit()` before the greeting |
//! | 1 | bits 0-2 how many messages the driver submits (message i has `i % 3 + 1` recipients, the null sender when `i % 3 == 2`); bit 3 + i: message i (< 5) also has a recipient with a CRLF in it |
//! | 2 | bit i % 8: message i is 8-bit |
//! | 3 | bit i % 8: message i also has a UTF-8 recipient (so needs SMTPUTF8) |
//! | 4 | bits 0-1: 1 `connection_lost`, 2 `timed_out`, 3 `quit`; bits 2-7: after which chunk (past the last one: at the end) |
//! | 5 | bits 0-2 the driver's content chunk size (1, 2, 3, 7, 64, 512, 4096, 65536), bits 3-5 the content length (0, 1, 2, 17, 100, 1000, 5000, 70000; a pattern with dots, bare CR and LF, no final CRLF), bit 6 declare a million bytes more (SIZE refusals), bit 7 kept EHLO responses (outside and inside TLS) offer PIPECONNECT: early pipelining |
//! | 6 | with partial writes, the bytes written per turn of the loop, minus one |
//! | 7 | `n` = byte % 16: the number of chunk lengths that follow |
//!
//! # `tls_connection`: input layout
//!
//! A 2-byte header, then `n` chunk lengths, then the client's bytes, as
//! the implicit-TLS listener would read them:
//!
//! | byte | meaning |
//! |------|---------|
//! | 0 | flags: bit 0 `pipe_connect`, bit 1 session tickets on, bit 2 `no_new_tickets`, bit 3 consume the TLS output half at a time |
//! | 1 | `n` = byte % 16 chunk lengths follow, each giving `l + 1` bytes, used cyclically |
//!
//! With a real ClientHello after the header GnuTLS answers with its whole
//! first flight, but fuzzed input can never finish the handshake: the
//! server's key share, randoms and certificate are random per process, so
//! no input (not even a replayed capture) carries a valid client Finished.
//! The post-handshake half (decrypting into `Smtp`, encrypting the
//! replies, close_notify) mirrors `server/conn.rs` for completeness but is
//! unreachable here. Coverage feedback also comes only from the Rust side:
//! the system GnuTLS is not instrumented.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::OnceLock;

mod client;

pub use client::smtp_client;

use crate::smtp::{
    Commit, ConnInfo, Envelope, MessageSink, Next, Recipient, SinkError, Smtp, SmtpConfig,
};
use crate::smtp::{Phase, TlsInfo};
use crate::tls::client_hello::{self, Parse};
use crate::tls::ticket_keys::MasterKey;
use crate::tls::{Credentials, Handshake, Priority, ReadStatus, ServerSession, SessionSetup};

const HOST: &str = "mx.example.org";
const DOMAINS: [&str; 2] = ["example.org", "example.net"];
const MAX_RECIPIENTS: usize = 3;

/// Output may exceed input by this factor (the EHLO reply to "EHLO a\n"
/// is about 27 times its size; errors are capped at 20 a connection) ...
const OUTPUT_PER_INPUT_BYTE: usize = 64;
/// ... plus this for the replies that need no input (banner, 421s).
const OUTPUT_SLACK: usize = 1024;

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 40000))
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLS1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        bits: 256,
        resumed: false,
    }
}

/// Reads the header bytes; past the end of the input everything is 0.
struct Header<'a> {
    rest: &'a [u8],
}

impl<'a> Header<'a> {
    fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    /// `n` chunk lengths, then the payload split by them.
    fn chunks(mut self, count: u8) -> (&'a [u8], Vec<(usize, usize)>) {
        let lengths: Vec<usize> = (0..count).map(|_| usize::from(self.byte()) + 1).collect();
        let payload = self.rest;
        let mut chunks = Vec::new();
        let mut at = 0;
        let mut cycle = lengths.iter().cycle();
        while at < payload.len() {
            let len = cycle.next().copied().unwrap_or(payload.len());
            let end = (at + len).min(payload.len());
            chunks.push((at, end));
            at = end;
        }
        (payload, chunks)
    }
}

/// `GSMTPD_FUZZ_TRACE=1` prints what a run did, for triaging a crash.
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("GSMTPD_FUZZ_TRACE").is_some())
}

// ------------------------------------------------------------------ SMTP

/// What one fuzz input asks for.
struct Plan<'a> {
    starttls_available: bool,
    pipe_connect: bool,
    relay: bool,
    early: bool,
    implicit_tls: bool,
    tls_after_starttls: bool,
    partial_consume: Option<usize>,
    tls_delay: usize,
    fail_begin: u8,
    fail_write: u8,
    fail_commit: u8,
    event: u8,
    event_after: usize,
    max_message_size: u64,
    payload: &'a [u8],
    chunks: Vec<(usize, usize)>,
}

impl<'a> Plan<'a> {
    fn parse(data: &'a [u8]) -> Plan<'a> {
        let mut h = Header { rest: data };
        let flags = h.byte();
        let fail_begin = h.byte();
        let fail_write = h.byte();
        let fail_commit = h.byte();
        let event = h.byte();
        let size = h.byte();
        let consume = h.byte();
        let count = h.byte() % 16;
        let (payload, chunks) = h.chunks(count);
        let bit = |n: u8| flags & (1 << n) != 0;
        Plan {
            starttls_available: bit(0),
            pipe_connect: bit(1),
            relay: consume & 0x80 != 0,
            early: bit(2),
            implicit_tls: bit(3),
            tls_after_starttls: bit(4),
            partial_consume: bit(5).then_some(usize::from(consume & 0x7f) + 1),
            tls_delay: usize::from(flags >> 6),
            fail_begin,
            fail_write,
            fail_commit,
            event: event & 3,
            event_after: usize::from(event >> 2),
            max_message_size: 16 * (u64::from(size) + 1),
            payload,
            chunks,
        }
    }

    fn config(&self) -> SmtpConfig {
        SmtpConfig {
            hostname: HOST.into(),
            domains: DOMAINS.iter().map(|d| d.to_string()).collect(),
            max_message_size: self.max_message_size,
            max_recipients: MAX_RECIPIENTS,
        }
    }

    fn conn(&self) -> ConnInfo {
        ConnInfo {
            peer: peer(),
            starttls_available: self.starttls_available,
            tls: None,
            pipe_connect: self.pipe_connect,
            relay: self.relay,
        }
    }
}

/// One call into the state machine; feeds name a range of the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Greet,
    Early(usize, usize),
    Feed(usize, usize),
    TlsEstablished,
    TimedOut,
    ShuttingDown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Open,
    /// Handed to the group commit, outcome not known yet.
    Queued,
    Committed(String),
    Aborted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    sender: String,
    recipients: Vec<Recipient>,
    chunking: bool,
    smtputf8: bool,
    esmtp: bool,
    early_pipelining: Option<bool>,
    tls: bool,
    content: Vec<u8>,
    outcome: Outcome,
}

/// Records what reaches it, fails on request, and checks the MessageSink
/// contract and invariant 2 (see [`smtp_session`]).
struct FuzzSink {
    messages: Vec<Message>,
    fail_begin: u8,
    fail_write: u8,
    fail_commit: u8,
    max_message_size: u64,
    /// Every byte handed to receive/early_input so far.
    fed: Vec<u8>,
    /// Ids committed during the current call.
    committed_now: Vec<String>,
}

fn fails(mask: u8, index: usize) -> bool {
    mask & (1 << (index % 8)) != 0
}

impl FuzzSink {
    fn open(&mut self) -> &mut Message {
        let message = self.messages.last_mut().expect("sink call without begin");
        assert_eq!(
            message.outcome,
            Outcome::Open,
            "sink call after commit/abort"
        );
        message
    }

    /// The group commit's outcome for the queued (last) message.
    fn resolve_queued(&mut self) -> Result<String, SinkError> {
        let index = self.messages.len() - 1;
        let message = &mut self.messages[index];
        assert_eq!(
            message.outcome,
            Outcome::Queued,
            "resolved an unqueued message"
        );
        if fails(self.fail_commit, index) {
            // A failed group commit discards the message itself.
            message.outcome = Outcome::Aborted;
            return Err(SinkError("group commit fails".into()));
        }
        self.finish_commit(index)
    }

    fn finish_commit(&mut self, index: usize) -> Result<String, SinkError> {
        let message = &mut self.messages[index];
        let id = format!("m{index}");
        message.outcome = Outcome::Committed(id.clone());
        self.committed_now.push(id.clone());
        Ok(id)
    }

    fn is_open(&self) -> bool {
        self.messages
            .last()
            .is_some_and(|m| m.outcome == Outcome::Open)
    }
}

impl MessageSink for FuzzSink {
    fn begin(&mut self, envelope: &Envelope) -> Result<(), SinkError> {
        assert!(!self.is_open(), "begin while a message is open");
        let recipients = &envelope.recipients;
        assert!(!recipients.is_empty(), "begin without recipients");
        assert!(recipients.len() <= MAX_RECIPIENTS, "too many recipients");
        for (i, r) in recipients.iter().enumerate() {
            assert!(DOMAINS.contains(&r.domain.as_str()), "relayed to {r:?}");
            assert!(!recipients[..i].contains(r), "duplicate recipient {r:?}");
            assert!(
                !r.local.is_empty()
                    && !r.local.contains(['/', '\0'])
                    && r.local != ".."
                    && r.local != ".",
                "dangerous local part {r:?}"
            );
        }
        self.messages.push(Message {
            sender: envelope.sender.clone(),
            recipients: recipients.clone(),
            chunking: envelope.chunking,
            smtputf8: envelope.smtputf8,
            esmtp: envelope.esmtp,
            early_pipelining: envelope.early_pipelining,
            tls: envelope.tls.is_some(),
            content: Vec::new(),
            outcome: Outcome::Open,
        });
        if fails(self.fail_begin, self.messages.len() - 1) {
            return Err(SinkError("begin fails".into()));
        }
        Ok(())
    }

    fn write(&mut self, content: &[u8]) -> Result<(), SinkError> {
        assert!(!content.is_empty(), "empty write");
        let index = self.messages.len() - 1;
        self.open().content.extend_from_slice(content);
        if fails(self.fail_write, index) {
            return Err(SinkError("write fails".into()));
        }
        Ok(())
    }

    fn commit(&mut self, envelope: &Envelope, size: u64) -> Result<Commit, SinkError> {
        let index = self.messages.len() - 1;
        let max = self.max_message_size;
        let message = self.open();
        assert_eq!(size, message.content.len() as u64, "commit size");
        assert!(size <= max, "committed {size} bytes over the limit {max}");
        assert_eq!(
            envelope.recipients, message.recipients,
            "recipients changed"
        );
        assert_eq!(envelope.chunking, message.chunking, "chunking changed");
        let content = message.content.clone();
        assert!(!has_bare_eol(&content), "committed bare CR/LF: {content:?}");
        if envelope.chunking {
            assert!(
                bdat_last_fed(&self.fed, &content),
                "BDAT message committed without a BDAT LAST carrying its end: {content:?}"
            );
        } else {
            assert!(
                content.is_empty() || content.ends_with(b"\r\n"),
                "DATA content not ending in CRLF"
            );
            assert!(
                data_fed(&self.fed, &content),
                "DATA message committed without DATA + content + CRLF.CRLF in the input: {content:?}"
            );
        }
        if index % 2 == 1 {
            self.open().outcome = Outcome::Queued;
            return Ok(Commit::Queued);
        }
        if fails(self.fail_commit, index) {
            // Still open: the engine must abort it.
            return Err(SinkError("commit fails".into()));
        }
        self.finish_commit(index).map(Commit::Done)
    }

    fn abort(&mut self) {
        self.open().outcome = Outcome::Aborted;
    }
}

fn has_bare_eol(content: &[u8]) -> bool {
    content.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => content.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || content[i - 1] != b'\r',
        _ => false,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The command lines in `fed` that start with `verb` (in any case):
/// (start, end of the text without LF and one CR, index after the LF).
/// A command need not start a line: it may follow a BDAT chunk's bytes.
fn command_lines<'a>(
    fed: &'a [u8],
    verb: &'a [u8],
) -> impl Iterator<Item = (usize, usize, usize)> + 'a {
    (0..fed.len()).filter_map(move |start| {
        let rest = &fed[start..];
        if !rest.get(..verb.len())?.eq_ignore_ascii_case(verb) {
            return None;
        }
        let lf = start + rest.iter().position(|&b| b == b'\n')?;
        let end = if fed[lf - 1] == b'\r' { lf - 1 } else { lf };
        Some((start, end.max(start), lf + 1))
    })
}

/// The verb and trimmed argument of a command line, as the parser splits it.
fn verb_arg(line: &[u8]) -> Option<(&[u8], &str)> {
    let (verb, arg) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[][..]),
    };
    let arg = std::str::from_utf8(arg).ok()?;
    Some((verb, arg.trim_matches([' ', '\t'])))
}

/// Some DATA command line in `fed` is followed by `content`, dot-stuffed,
/// and the terminating ".\r\n".
fn data_fed(fed: &[u8], content: &[u8]) -> bool {
    command_lines(fed, b"DATA").any(|(start, end, next)| {
        matches!(verb_arg(&fed[start..end]), Some((verb, "")) if verb.eq_ignore_ascii_case(b"DATA"))
            && encodes(&fed[next..], content)
    })
}

/// `wire` starts with the DATA encoding of `content` and the terminator.
fn encodes(mut wire: &[u8], mut content: &[u8]) -> bool {
    loop {
        let Some(eol) = find(wire, b"\r\n") else {
            return false;
        };
        let line = &wire[..eol];
        if line == b"." {
            return content.is_empty();
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        let Some(rest) = content.strip_prefix(line) else {
            return false;
        };
        let Some(rest) = rest.strip_prefix(b"\r\n") else {
            return false;
        };
        content = rest;
        wire = &wire[eol + 2..];
    }
}

/// Some "BDAT n LAST" line in `fed` is followed by the last n bytes of `content`.
fn bdat_last_fed(fed: &[u8], content: &[u8]) -> bool {
    command_lines(fed, b"BDAT").any(|(start, end, next)| {
        let Some((verb, arg)) = verb_arg(&fed[start..end]) else {
            return false;
        };
        let words: Vec<&str> = arg.split(' ').filter(|w| !w.is_empty()).collect();
        let [size, last] = words[..] else {
            return false;
        };
        let Ok(size) = size.parse::<usize>() else {
            return false;
        };
        verb.eq_ignore_ascii_case(b"BDAT")
            && last.eq_ignore_ascii_case("LAST")
            && size <= content.len()
            && fed.get(next..next + size) == Some(&content[content.len() - size..])
    })
}

/// Invariant 1: `out` is a sequence of complete, well-formed reply lines,
/// and every multi-line reply ends in it. Returns the ids of the
/// "250 2.0.0 OK id=" replies.
fn check_replies(out: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut rest = out;
    let mut open: Option<&[u8]> = None;
    while !rest.is_empty() {
        let eol = find(rest, b"\r\n").unwrap_or_else(|| panic!("reply without CRLF: {rest:?}"));
        let line = &rest[..eol];
        rest = &rest[eol + 2..];
        assert!(line.len() >= 4, "short reply line {line:?}");
        let (code, separator, text) = (&line[..3], line[3], &line[4..]);
        assert!(
            code.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&code[0]),
            "bad reply code in {line:?}"
        );
        assert!(
            separator == b' ' || separator == b'-',
            "bad separator in {line:?}"
        );
        let text = std::str::from_utf8(text).unwrap_or_else(|_| panic!("non-UTF-8 reply {line:?}"));
        assert!(
            !text.chars().any(char::is_control),
            "control character in reply {line:?}"
        );
        if let Some(first) = open {
            assert_eq!(first, code, "multi-line reply changes its code: {out:?}");
        }
        open = (separator == b'-').then_some(code);
        if let ("250", Some(id)) = (
            std::str::from_utf8(code).unwrap_or(""),
            text.strip_prefix("2.0.0 OK id="),
        ) {
            ids.push(id.to_owned());
        }
    }
    assert!(open.is_none(), "unfinished multi-line reply: {out:?}");
    ids
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Open,
    AwaitingTls,
    Closed,
}

/// Everything observable at the end of a run, compared for invariant 5.
/// Content only of committed messages: how much of a refused message
/// reached the sink depends on how reads split it.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    output: String,
    messages: Vec<Message>,
    link: Link,
    quit: bool,
    in_transaction: bool,
    phase: Phase,
    tls: bool,
}

struct Harness<'a> {
    plan: &'a Plan<'a>,
    smtp: Smtp,
    sink: FuzzSink,
    link: Link,
    /// Output consumed so far.
    written: Vec<u8>,
    /// What `smtp.output()` held after the last consume.
    pending: Vec<u8>,
    fed: usize,
}

impl<'a> Harness<'a> {
    fn new(plan: &'a Plan<'a>) -> Harness<'a> {
        Harness {
            plan,
            smtp: Smtp::new(Rc::new(plan.config()), plan.conn()),
            sink: FuzzSink {
                messages: Vec::new(),
                fail_begin: plan.fail_begin,
                fail_write: plan.fail_write,
                fail_commit: plan.fail_commit,
                max_message_size: plan.max_message_size,
                fed: Vec::new(),
                committed_now: Vec::new(),
            },
            link: Link::Open,
            written: Vec::new(),
            pending: Vec::new(),
            fed: 0,
        }
    }

    fn apply(&mut self, call: Call) {
        assert_eq!(
            self.smtp.output(),
            &self.pending[..],
            "output changed between calls"
        );
        self.sink.committed_now.clear();
        let payload = self.plan.payload;
        let next = match call {
            Call::Greet => {
                self.smtp.greet();
                None
            }
            Call::Early(from, to) | Call::Feed(from, to) => {
                let input = &payload[from..to];
                self.sink.fed.extend_from_slice(input);
                self.fed += input.len();
                let mut next = if matches!(call, Call::Early(..)) {
                    self.smtp.early_input(input, &mut self.sink)
                } else {
                    self.smtp.receive(input, &mut self.sink)
                };
                // The server's group commit ends within the same loop turn.
                while self.smtp.awaiting_commit() {
                    assert_eq!(next, Next::Continue, "{next:?} while awaiting a commit");
                    let outcome = self.sink.resolve_queued();
                    next = self.smtp.commit_finished(outcome, &mut self.sink);
                }
                Some(next)
            }
            Call::TlsEstablished => {
                self.smtp.tls_established(tls_info());
                None
            }
            Call::TimedOut => {
                self.smtp.timed_out();
                None
            }
            Call::ShuttingDown => {
                self.smtp.shutting_down();
                None
            }
        };
        let output = self.smtp.output();
        assert!(
            output.starts_with(&self.pending),
            "unconsumed output was lost or changed"
        );
        let new = &output[self.pending.len()..];
        let ids = check_replies(new);
        // Invariant 2: every commit gets its 250, and only commits do.
        assert_eq!(
            ids, self.sink.committed_now,
            "250 replies vs commits: {new:?}"
        );
        // Invariant 3.
        match (self.link, call) {
            (Link::Closed, _) => assert!(new.is_empty(), "output after Close: {new:?}"),
            (Link::AwaitingTls, Call::Feed(..) | Call::Early(..)) => {
                assert!(new.is_empty(), "output before tls_established: {new:?}")
            }
            _ => {}
        }
        // Invariant 4.
        let total = self.written.len() + output.len();
        let bound = OUTPUT_PER_INPUT_BYTE * (self.fed + 1) + OUTPUT_SLACK;
        assert!(
            total <= bound,
            "{total} output bytes for {} input bytes",
            self.fed
        );
        self.link = match (self.link, call, next) {
            (Link::Closed, _, Some(next)) => {
                assert_eq!(next, Next::Close, "receive after Close");
                Link::Closed
            }
            (Link::AwaitingTls, _, Some(next)) => {
                assert_eq!(next, Next::StartTls, "receive before tls_established");
                Link::AwaitingTls
            }
            (_, _, Some(Next::Close)) => Link::Closed,
            (_, _, Some(Next::StartTls)) => {
                assert!(!self.smtp.is_tls(), "STARTTLS accepted under TLS");
                assert!(
                    self.plan.starttls_available,
                    "STARTTLS accepted but not offered"
                );
                Link::AwaitingTls
            }
            (link, _, Some(Next::Continue)) => link,
            (Link::AwaitingTls, Call::TlsEstablished, None) => Link::Open,
            (_, Call::TimedOut | Call::ShuttingDown, None) => Link::Closed,
            (link, _, None) => link,
        };
        if next.is_some() && self.link != Link::Open {
            // Close and StartTls end the message in the sink (stop()).
            assert!(!self.sink.is_open(), "message left open by {next:?}");
        }
        self.consume();
    }

    fn consume(&mut self) {
        let output = self.smtp.output();
        let n = match self.plan.partial_consume {
            Some(step) => step.min(output.len()),
            None => output.len(),
        };
        self.written.extend_from_slice(&output[..n]);
        self.pending = output[n..].to_vec();
        self.smtp.consume_output(n);
    }

    fn finish(mut self) -> Transcript {
        assert_eq!(self.smtp.output(), &self.pending[..]);
        self.written.extend_from_slice(&self.pending);
        let n = self.pending.len();
        self.smtp.consume_output(n);
        assert!(self.smtp.output().is_empty(), "consume_output left bytes");
        let mut messages = self.sink.messages;
        for m in &mut messages {
            if !matches!(m.outcome, Outcome::Committed(_)) {
                m.content.clear();
            }
        }
        Transcript {
            output: String::from_utf8(self.written).expect("output is UTF-8"),
            messages,
            link: self.link,
            quit: self.smtp.quit_received(),
            in_transaction: self.smtp.in_transaction(),
            phase: self.smtp.phase(),
            tls: self.smtp.is_tls(),
        }
    }
}

/// Runs the plan with its chunking, and returns the calls made.
fn run_split(plan: &Plan<'_>) -> (Transcript, Vec<Call>) {
    let mut h = Harness::new(plan);
    let mut calls = Vec::new();
    let mut call = |h: &mut Harness<'_>, call: Call| {
        h.apply(call);
        calls.push(call);
    };
    if plan.implicit_tls {
        call(&mut h, Call::TlsEstablished);
    }
    if !plan.early || plan.chunks.is_empty() {
        call(&mut h, Call::Greet);
    }
    let mut fed_while_awaiting = 0;
    let event = |h: &mut Harness<'_>, call: &mut dyn FnMut(&mut Harness<'_>, Call)| {
        // The server never calls the state machine while TLS is starting.
        if h.link == Link::AwaitingTls {
            return;
        }
        if plan.event & 2 != 0 {
            call(h, Call::ShuttingDown);
        }
        if plan.event & 1 != 0 {
            call(h, Call::TimedOut);
        }
    };
    let mut evented = false;
    for (i, &(from, to)) in plan.chunks.iter().enumerate() {
        if h.link == Link::AwaitingTls
            && plan.tls_after_starttls
            && fed_while_awaiting >= plan.tls_delay
        {
            call(&mut h, Call::TlsEstablished);
        }
        let awaiting = h.link == Link::AwaitingTls;
        if i == 0 && plan.early {
            call(&mut h, Call::Early(from, to));
        } else {
            call(&mut h, Call::Feed(from, to));
        }
        if awaiting {
            fed_while_awaiting += 1;
        } else {
            fed_while_awaiting = 0;
        }
        if i == plan.event_after {
            event(&mut h, &mut call);
            evented = true;
        }
    }
    if !evented {
        event(&mut h, &mut call);
    }
    (h.finish(), calls)
}

/// The same calls with the feeds joined wherever a read boundary does not
/// matter: everywhere except right after an LF (where it decides whether
/// a command was pipelined) and where other calls come between.
fn merge(calls: &[Call], payload: &[u8]) -> Vec<Call> {
    let mut merged: Vec<Call> = Vec::new();
    for &call in calls {
        match (merged.last_mut(), call) {
            (Some(Call::Early(_, end) | Call::Feed(_, end)), Call::Feed(from, to))
                if *end == from && payload[from - 1] != b'\n' =>
            {
                *end = to;
            }
            _ => merged.push(call),
        }
    }
    merged
}

fn execute(plan: &Plan<'_>, calls: &[Call]) -> Transcript {
    let mut h = Harness::new(plan);
    for &call in calls {
        h.apply(call);
    }
    h.finish()
}

/// Drives one SMTP session (`crate::smtp::Smtp`) with fuzzer-chosen
/// connection flags, chunking, sink failures and timeouts (layout in the
/// module documentation), and panics unless:
///
/// 1. every reply line is 3 digits, ' ' or '-', text without control
///    characters, CRLF; the lines of a multi-line reply share the code and
///    the reply is complete within one call;
/// 2. the sink only commits content that the input carried: after a DATA
///    line, dot-stuffed, followed by ".\r\n" (so ending in CRLF), or as the
///    tail of a "BDAT n LAST" chunk; without bare CR/LF, within the size
///    limit, with valid recipients; each successful commit gets its
///    "250 2.0.0 OK id=" in the same call and nothing else gets one; the
///    sink's begin/write/commit/abort protocol holds;
/// 3. after `Next::StartTls` no input produces output until
///    `tls_established`, and after `Close` (or a 421) nothing does;
/// 4. all output so far <= 64 * (input fed + 1) + 1024 bytes (the internal
///    buffers are not observable; the line reader's limit bounds them);
/// 5. the result (all output, the messages and their committed content,
///    the final state) equals that of the same calls with the input
///    joined into as few reads as possible. Read boundaries right after an
///    LF are kept, since they decide whether the client pipelined (which
///    gsmtpd rightly treats differently), as are those where timeouts or
///    `tls_established` happen. Skipped when sink writes fail, because the
///    sink then fails at write boundaries, which depend on the reads.
pub fn smtp_session(data: &[u8]) {
    let plan = Plan::parse(data);
    let (split, calls) = run_split(&plan);
    if trace() {
        eprintln!("calls: {calls:?}\n{split:#?}");
    }
    if plan.fail_write != 0 {
        return;
    }
    let merged = merge(&calls, plan.payload);
    if merged != calls {
        let whole = execute(&plan, &merged);
        assert_eq!(split, whole, "split {calls:?} vs joined {merged:?}");
    }
}

// ------------------------------------------------------------------ TLS

/// Made once per thread: a self-signed certificate takes a while.
struct TlsFixture {
    credentials: Rc<Credentials>,
    priority: Rc<Priority>,
    ticket_key: MasterKey,
    smtp_config: Rc<SmtpConfig>,
}

thread_local! {
    static TLS: TlsFixture = tls_fixture();
}

fn tls_fixture() -> TlsFixture {
    crate::tls::init().expect("gnutls_global_init");
    let now = crate::clock::unix_secs() as i64;
    let pem = crate::tls::x509::self_signed(HOST, now, 30).expect("self-signed certificate");
    let mut credentials = Credentials::new().expect("credentials");
    credentials
        .add_pem(&pem.certificate, &pem.key)
        .expect("loading the certificate");
    TlsFixture {
        credentials: Rc::new(credentials),
        priority: Rc::new(Priority::new(crate::config::DEFAULT_PRIORITY).expect("priority")),
        ticket_key: MasterKey::generate().expect("ticket key"),
        smtp_config: Rc::new(SmtpConfig {
            hostname: HOST.into(),
            domains: DOMAINS.iter().map(|d| d.to_string()).collect(),
            max_message_size: 10_000,
            max_recipients: MAX_RECIPIENTS,
        }),
    }
}

/// A TLS record stream: every record complete, with a known content type,
/// a TLS version and a length GnuTLS may send.
fn check_records(mut wire: &[u8]) {
    while !wire.is_empty() {
        assert!(wire.len() >= 5, "truncated record header: {wire:?}");
        let (ty, major, minor) = (wire[0], wire[1], wire[2]);
        let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
        assert!((20..=24).contains(&ty), "record type {ty}");
        assert!(major == 3 && minor <= 4, "record version {major}.{minor}");
        assert!(len <= (1 << 14) + 2048, "record of {len} bytes");
        assert!(wire.len() >= 5 + len, "truncated record");
        wire = &wire[5 + len..];
    }
}

/// The server's side of one connection, as `server/conn.rs` drives it.
struct TlsHarness<'a> {
    fixture: &'a TlsFixture,
    tickets: bool,
    no_new_tickets: bool,
    half_consume: bool,
    /// The bytes of the whole input after the header (for parse checks).
    all: &'a [u8],
    /// Consumed so far out of `all`.
    fed: usize,
    awaiting: Vec<u8>,
    session: Option<ServerSession>,
    established: bool,
    closed: bool,
    smtp: Smtp,
    banner_sent: bool,
    sink: FuzzSink,
    /// Everything the server sent (consumed output).
    wire: Vec<u8>,
    /// What `pending_output` held after the last consume.
    pending: Vec<u8>,
    plaintext: usize,
}

impl TlsHarness<'_> {
    /// One read from the socket.
    fn ingest(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.fed += bytes.len();
        match &mut self.session {
            None => {
                self.awaiting.extend_from_slice(bytes);
                self.start_handshake();
            }
            Some(session) => {
                session.feed(bytes);
                assert_eq!(
                    session.pending_output(),
                    &self.pending[..],
                    "feed produced output"
                );
                if self.established {
                    self.decrypt();
                } else {
                    self.advance_handshake();
                }
            }
        }
        self.flush();
    }

    fn start_handshake(&mut self) {
        let parsed = client_hello::parse(&self.awaiting);
        match &parsed {
            Parse::Incomplete => return,
            Parse::Complete(hello) => {
                assert!(
                    hello.session_id.len() <= 32,
                    "session id of {}",
                    hello.session_id.len()
                );
                assert!(
                    hello.ticket_key_name.is_none() || hello.offers_ticket,
                    "{hello:?}"
                );
            }
            Parse::NotClientHello => {}
        }
        // All-or-nothing: bytes after the decision point cannot change it.
        assert_eq!(
            client_hello::parse(self.all),
            parsed,
            "parse changed with more input"
        );
        let fixture = self.fixture;
        let setup = SessionSetup {
            credentials: &fixture.credentials,
            priority: &fixture.priority,
            ticket_key: self.tickets.then_some(&fixture.ticket_key),
            no_new_tickets: self.no_new_tickets,
            cache: None,
            lifetime: 3600,
        };
        let mut session = ServerSession::new(setup).expect("ServerSession::new");
        assert!(session.pending_output().is_empty());
        session.feed(&std::mem::take(&mut self.awaiting));
        self.session = Some(session);
        self.advance_handshake();
    }

    fn advance_handshake(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        // Once per read, as the server does, then again while that makes
        // progress (it must stop: the input is finite).
        for _ in 0..4 {
            let before = session.pending_output().len();
            match session.handshake() {
                Ok(Handshake::Done) => {
                    self.handshake_done();
                    return;
                }
                Ok(Handshake::InProgress) => {
                    assert!(!self.established);
                    if session.pending_output().len() == before {
                        return;
                    }
                }
                Err(error) => {
                    if trace() {
                        eprintln!("handshake: {error}");
                    }
                    self.closed = true;
                    return;
                }
            }
        }
    }

    fn handshake_done(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        self.established = true;
        let n = session.negotiated();
        let _ = (
            session.server_name(),
            session.served_certificate(),
            session.tickets_sent(),
        );
        assert!(n.version.starts_with("TLS1.") && n.version != "TLS1.0" && n.version != "TLS1.1");
        let info = TlsInfo {
            version: n.version.to_string(),
            cipher: n.cipher,
            bits: n.bits,
            resumed: n.resumed,
        };
        self.smtp.tls_established(info);
        self.decrypt();
        if !self.banner_sent && !self.closed {
            self.smtp.greet();
            self.banner_sent = true;
        }
    }

    fn decrypt(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        assert!(
            self.established,
            "decrypting before the handshake completed"
        );
        let mut plain = Vec::new();
        let status = session.read(&mut plain);
        self.plaintext += plain.len();
        assert!(self.plaintext <= self.fed, "more plaintext than ciphertext");
        if !plain.is_empty() {
            self.sink.fed.extend_from_slice(&plain);
            let next = if self.banner_sent {
                self.smtp.receive(&plain, &mut self.sink)
            } else {
                self.banner_sent = true;
                self.smtp.early_input(&plain, &mut self.sink)
            };
            assert_ne!(next, Next::StartTls, "STARTTLS under implicit TLS");
            if next == Next::Close {
                self.encrypt();
                if let Some(session) = self.session.as_mut() {
                    session.bye();
                }
                self.closed = true;
            }
        }
        match status {
            Ok(ReadStatus::Open) => {}
            Ok(ReadStatus::Closed) | Err(_) => self.closed = true,
        }
    }

    /// Moves the SMTP replies into TLS records.
    fn encrypt(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let out = self.smtp.output();
        if out.is_empty() {
            return;
        }
        assert!(
            self.established,
            "SMTP output before the handshake completed"
        );
        check_replies(out);
        let n = out.len();
        if session.write(out).is_err() {
            self.closed = true;
        }
        self.smtp.consume_output(n);
    }

    fn flush(&mut self) {
        if self.established && !self.closed {
            self.encrypt();
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let out = session.pending_output();
        assert!(out.starts_with(&self.pending), "pending TLS output changed");
        let n = if self.half_consume {
            out.len().div_ceil(2)
        } else {
            out.len()
        };
        let expected = out[n..].to_vec();
        self.wire.extend_from_slice(&out[..n]);
        session.consume_output(n);
        assert_eq!(session.pending_output(), &expected[..], "consume_output");
        self.pending = expected;
    }

    fn finish(mut self) {
        if self.established && !self.closed {
            // The client went away; a shutdown would still say goodbye.
            self.smtp.shutting_down();
            self.encrypt();
            if let Some(session) = self.session.as_mut() {
                session.bye();
            }
        }
        if let Some(session) = self.session.as_mut() {
            let out = session.pending_output();
            assert!(out.starts_with(&self.pending), "pending TLS output changed");
            self.wire.extend_from_slice(out);
        }
        if !self.established {
            assert!(self.smtp.output().is_empty(), "SMTP spoke before TLS");
            assert!(self.sink.fed.is_empty(), "SMTP fed before TLS");
        }
        if trace() {
            eprintln!(
                "fed {} bytes, session {}, established {}, closed {}, sent {} bytes",
                self.fed,
                self.session.is_some(),
                self.established,
                self.closed,
                self.wire.len(),
            );
        }
        check_records(&self.wire);
    }
}

/// One connection on the implicit-TLS listener with the client's bytes
/// from the input (layout in the module documentation): the ClientHello
/// peek, a GnuTLS server session over the in-memory transport, the
/// handshake and, should it complete, SMTP over TLS. Panics when GnuTLS's
/// output is not a well-formed record stream, when `pending_output`
/// changes other than by GnuTLS's pushes and `consume_output`, when the
/// ClientHello parser's verdict changes with more input, when plaintext
/// exceeds ciphertext or reaches SMTP before the handshake completed, or
/// when the SMTP replies are malformed.
pub fn tls_connection(data: &[u8]) {
    let mut h = Header { rest: data };
    let flags = h.byte();
    let count = h.byte() % 16;
    let (payload, chunks) = h.chunks(count);
    TLS.with(|fixture| {
        let pipe_connect = flags & 1 != 0;
        let mut harness = TlsHarness {
            fixture,
            tickets: flags & 2 != 0,
            no_new_tickets: flags & 4 != 0,
            half_consume: flags & 8 != 0,
            all: payload,
            fed: 0,
            awaiting: Vec::new(),
            session: None,
            established: false,
            closed: false,
            smtp: Smtp::new(
                Rc::clone(&fixture.smtp_config),
                ConnInfo {
                    peer: peer(),
                    starttls_available: false,
                    tls: None,
                    pipe_connect,
                    relay: false,
                },
            ),
            banner_sent: false,
            sink: FuzzSink {
                messages: Vec::new(),
                fail_begin: 0,
                fail_write: 0,
                fail_commit: 0,
                max_message_size: fixture.smtp_config.max_message_size,
                fed: Vec::new(),
                committed_now: Vec::new(),
            },
            wire: Vec::new(),
            pending: Vec::new(),
            plaintext: 0,
        };
        for &(from, to) in &chunks {
            harness.ingest(&payload[from..to]);
        }
        harness.finish();
    });
}
