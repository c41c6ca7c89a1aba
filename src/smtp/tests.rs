//! Protocol tests: whole conversations fed as the server would, in one batch and
//! split at arbitrary points, with a sink that records what reached it.

use std::net::SocketAddr;
use std::rc::Rc;

use super::line::{Event, LineReader, MAX_LINE};
use super::*;

const HOST: &str = "mx.example.org";
const EHLO: &[u8] = b"EHLO client.example\r\n";
const MAIL: &[u8] = b"MAIL FROM:<alice@client.example>\r\n";
const RCPT: &[u8] = b"RCPT TO:<bob@example.org>\r\n";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Open,
    /// Handed to a group commit whose outcome is not known yet.
    Queued,
    Committed(String),
    Aborted,
}

#[derive(Clone, Debug)]
struct Message {
    envelope: Envelope,
    content: Vec<u8>,
    writes: usize,
    outcome: Outcome,
}

/// Records everything and checks the begin/write/commit/abort protocol.
#[derive(Default)]
struct VecSink {
    messages: Vec<Message>,
    fail_begin: bool,
    fail_write: bool,
    fail_commit: bool,
    /// Answer commit with `Commit::Queued`, as the server's group commit does.
    queue: bool,
}

impl VecSink {
    /// Ends the queued group commit of the last message: durable, or not.
    fn resolve(&mut self, durable: bool) -> Result<String, SinkError> {
        let id = format!("msg{}", self.messages.len());
        let message = self.messages.last_mut().expect("no message queued");
        assert_eq!(message.outcome, Outcome::Queued, "nothing queued");
        if !durable {
            message.outcome = Outcome::Aborted;
            return Err(SinkError("syncfs failed".into()));
        }
        message.outcome = Outcome::Committed(id.clone());
        Ok(id)
    }

    fn open(&mut self) -> &mut Message {
        let message = self.messages.last_mut().expect("no message begun");
        assert_eq!(message.outcome, Outcome::Open, "message already finished");
        message
    }

    fn committed(&self) -> Vec<&Message> {
        let done = |m: &&Message| matches!(m.outcome, Outcome::Committed(_));
        self.messages.iter().filter(done).collect()
    }
}

impl MessageSink for VecSink {
    fn begin(&mut self, envelope: &Envelope) -> Result<(), SinkError> {
        if let Some(last) = self.messages.last() {
            assert_ne!(last.outcome, Outcome::Open, "begin while a message is open");
        }
        self.messages.push(Message {
            envelope: envelope.clone(),
            content: Vec::new(),
            writes: 0,
            outcome: Outcome::Open,
        });
        if self.fail_begin {
            return Err(SinkError("begin failed".into()));
        }
        Ok(())
    }

    fn write(&mut self, content: &[u8]) -> Result<(), SinkError> {
        assert!(!content.is_empty(), "empty write");
        let fail = self.fail_write;
        let message = self.open();
        message.content.extend_from_slice(content);
        message.writes += 1;
        if fail {
            return Err(SinkError("disk full".into()));
        }
        Ok(())
    }

    fn commit(&mut self, envelope: &Envelope, size: u64) -> Result<Commit, SinkError> {
        let (fail, queue) = (self.fail_commit, self.queue);
        let id = format!("msg{}", self.messages.len());
        let message = self.open();
        assert_eq!(size, message.content.len() as u64);
        assert_eq!(envelope.recipients, message.envelope.recipients);
        if queue {
            message.outcome = Outcome::Queued;
            return Ok(Commit::Queued);
        }
        if fail {
            return Err(SinkError("fsync failed".into()));
        }
        message.outcome = Outcome::Committed(id.clone());
        Ok(Commit::Done(id))
    }

    fn abort(&mut self) {
        self.open().outcome = Outcome::Aborted;
    }
}

fn config() -> SmtpConfig {
    SmtpConfig {
        hostname: HOST.into(),
        domains: vec!["example.org".into(), "example.net".into()],
        max_message_size: 1000,
        max_recipients: 3,
    }
}

fn peer() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

/// A client permitted early pipelining (gsmtpd's default), so that whole
/// conversations can be fed in one batch; the synchronisation tests turn it
/// off.
fn conn() -> ConnInfo {
    ConnInfo {
        peer: peer(),
        starttls_available: true,
        tls: None,
        pipe_connect: true,
        relay: false,
    }
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLS1.3".into(),
        cipher: "TLS_AES_256_GCM_SHA384".into(),
        bits: 256,
        resumed: false,
    }
}

struct Client {
    smtp: Smtp,
    sink: VecSink,
}

impl Client {
    fn new() -> Client {
        Client::with(config(), conn())
    }

    fn with(config: SmtpConfig, conn: ConnInfo) -> Client {
        Client {
            smtp: Smtp::new(Rc::new(config), conn),
            sink: VecSink::default(),
        }
    }

    /// A client that has sent EHLO and whose replies were read.
    fn ready() -> Client {
        let mut client = Client::new();
        client.send(EHLO);
        client.take();
        client
    }

    /// After EHLO, MAIL and RCPT.
    fn in_transaction() -> Client {
        let mut client = Client::ready();
        assert_eq!(
            client.talk(&[MAIL, RCPT].concat()),
            "250 2.1.0 OK\r\n250 2.1.5 OK\r\n"
        );
        client
    }

    fn greet_and_take(&mut self) -> String {
        self.smtp.greet();
        self.take()
    }

    fn send(&mut self, input: &[u8]) -> Next {
        self.smtp.receive(input, &mut self.sink)
    }

    fn take(&mut self) -> String {
        let output = String::from_utf8(self.smtp.output().to_vec()).unwrap();
        self.smtp.consume_output(output.len());
        output
    }

    /// Sends and returns the replies, expecting the connection to stay open.
    fn talk(&mut self, input: &[u8]) -> String {
        assert_eq!(self.send(input), Next::Continue);
        self.take()
    }
}

/// Everything observable about a conversation; content only for committed
/// messages, because how much of a refused message reached the sink before
/// the refusal depends on where reads split it.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    output: String,
    messages: Vec<Summary>,
    end: Next,
}

#[derive(Debug, PartialEq, Eq)]
struct Summary {
    sender: String,
    recipients: Vec<Recipient>,
    chunking: bool,
    outcome: Outcome,
    /// Only for committed messages.
    content: Option<Vec<u8>>,
}

fn transcript(client: &mut Client, end: Next) -> Transcript {
    let summary = |m: &Message| {
        let committed = matches!(m.outcome, Outcome::Committed(_));
        Summary {
            sender: m.envelope.sender.clone(),
            recipients: m.envelope.recipients.clone(),
            chunking: m.envelope.chunking,
            outcome: m.outcome.clone(),
            content: committed.then(|| m.content.clone()),
        }
    };
    Transcript {
        output: client.take(),
        messages: client.sink.messages.iter().map(summary).collect(),
        end,
    }
}

/// Feeds the pieces as separate reads, stopping where the server would.
fn feed(pieces: &[&[u8]]) -> Transcript {
    let mut client = Client::new();
    client.smtp.greet();
    let mut end = Next::Continue;
    for piece in pieces {
        end = client.send(piece);
        if end != Next::Continue {
            break;
        }
    }
    transcript(&mut client, end)
}

/// Splits each segment (what a client sends before waiting for a reply)
/// into pieces of the lengths `sizes` yields.
fn split<'a>(segments: &[&'a [u8]], sizes: &mut dyn FnMut() -> usize) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    for segment in segments {
        let mut rest = *segment;
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(sizes().clamp(1, rest.len()));
            pieces.push(piece);
            rest = tail;
        }
    }
    pieces
}

/// A deterministic pseudo-random generator, so failures reproduce.
fn lcg(seed: u64, max: usize) -> impl FnMut() -> usize {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        1 + (state >> 33) as usize % max
    }
}

/// Asserts that every way of splitting the segments gives the whole-segment result.
fn assert_split_invariant(segments: &[&[u8]]) -> Transcript {
    let whole = feed(segments);
    assert_eq!(feed(&split(segments, &mut || 1)), whole, "byte by byte");
    for seed in 0..20 {
        let max = [3, 17, 200][seed as usize % 3];
        let pieces = split(segments, &mut lcg(seed, max));
        assert_eq!(feed(&pieces), whole, "seed {seed}");
    }
    for cut in split_everywhere(segments) {
        assert_eq!(feed(&cut), whole);
    }
    whole
}

/// For every byte position, the segments with one extra split there.
fn split_everywhere<'a>(segments: &[&'a [u8]]) -> Vec<Vec<&'a [u8]>> {
    let mut results = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        for at in 1..segment.len() {
            let mut pieces: Vec<&[u8]> = segments[..index].to_vec();
            let (head, tail) = segment.split_at(at);
            pieces.extend([head, tail]);
            pieces.extend_from_slice(&segments[index + 1..]);
            results.push(pieces);
        }
    }
    results
}

fn lines(output: &str) -> Vec<&str> {
    output.split_terminator("\r\n").collect()
}

fn ehlo_reply(starttls: bool, pipe_connect: bool) -> String {
    let mut reply = format!(
        "250-{HOST} Hello client.example [192.0.2.7]\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-PIPELINING\r\n"
    );
    if pipe_connect {
        reply += "250-PIPECONNECT\r\n";
    }
    reply += "250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n";
    if starttls {
        reply += "250-STARTTLS\r\n";
    }
    reply + "250 HELP\r\n"
}

// ---------------------------------------------------------------- greeting, EHLO, HELO

#[test]
fn banner() {
    let mut client = Client::new();
    client.smtp.greet();
    assert_eq!(client.take(), format!("220 {HOST} ESMTP gsmtpd\r\n"));
    assert_eq!(client.smtp.phase(), Phase::Command);
    assert!(!client.smtp.in_transaction());
    assert!(!client.smtp.is_tls());
}

#[test]
fn ehlo_advertises_extensions() {
    let mut client = Client::new();
    assert_eq!(client.talk(EHLO), ehlo_reply(true, true));
    // Clients cache the reply, so it must not change for the same state.
    assert_eq!(client.talk(EHLO), ehlo_reply(true, true));
}

#[test]
fn ehlo_options_follow_connection() {
    let mut plain = conn();
    plain.starttls_available = false;
    plain.pipe_connect = true;
    let mut client = Client::with(config(), plain);
    assert_eq!(client.talk(EHLO), ehlo_reply(false, true));

    let mut implicit = conn();
    implicit.tls = Some(tls_info());
    implicit.pipe_connect = false;
    let mut client = Client::with(config(), implicit);
    assert!(client.smtp.is_tls());
    assert_eq!(client.talk(EHLO), ehlo_reply(false, false));
}

#[test]
fn helo_is_plain_smtp() {
    let mut client = Client::new();
    assert_eq!(
        client.talk(b"HELO client.example\r\n"),
        format!("250 {HOST} Hello client.example [192.0.2.7]\r\n")
    );
    // Without PIPELINING every command waits for its reply.
    for command in [MAIL, RCPT, b"DATA\r\n"] {
        client.talk(command);
    }
    client.talk(b"hi\r\n.\r\n");
    let envelope = &client.sink.committed()[0].envelope;
    assert!(!envelope.esmtp);
    assert_eq!(envelope.helo, "client.example");
    assert_eq!(envelope.protocol(), "SMTP");
}

#[test]
fn helo_ehlo_need_argument() {
    let mut client = Client::new();
    let syntax = "501 5.5.4 Syntax: HELO/EHLO hostname\r\n";
    assert_eq!(client.talk(b"HELO\r\n"), syntax);
    assert_eq!(client.talk(b"EHLO   \r\n"), syntax);
    assert_eq!(
        client.talk(b"EHLO a\rb\r\n"),
        syntax,
        "control characters would be echoed"
    );
    assert_eq!(
        client.talk(MAIL),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
}

#[test]
fn ehlo_resets_transaction() {
    let mut client = Client::in_transaction();
    assert!(client.smtp.in_transaction());
    client.talk(EHLO);
    assert!(!client.smtp.in_transaction());
    assert_eq!(client.talk(MAIL), "250 2.1.0 OK\r\n");
    client.talk(b"HELO again.example\r\n");
    assert!(!client.smtp.in_transaction());
}

#[test]
fn verbs_are_case_insensitive_and_bare_lf_ends_lines() {
    let mut client = Client::new();
    assert!(client.talk(b"ehlo client.example\n").starts_with("250-"));
    assert_eq!(
        client.talk(b"mail from:<alice@client.example>\nrCpT tO:<bob@example.org>\r\nnoop\n"),
        "250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.0.0 OK\r\n"
    );
}

#[test]
fn trailing_blanks_and_crs_end_a_command_line() {
    // `openssl s_client -crlf` sends a typed line as CR CR LF.
    let mut client = Client::new();
    assert_eq!(
        client.talk(b"EHLO client.example\r\r\n"),
        ehlo_reply(true, true)
    );
    assert_eq!(
        client.talk(
            b"MAIL FROM:<alice@client.example> \t\r\nRCPT TO:<bob@example.org>\r\r\nNOOP \r\n"
        ),
        "250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.0.0 OK\r\n"
    );
    assert_eq!(
        client.talk(b"DATA\r\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    // Inside the message the bare-CR rule still holds.
    assert_eq!(
        client.talk(b"a\r\r\n.\r\n"),
        "554 5.6.0 Message contains bare CR or LF characters (RFC 5321 2.3.8)\r\n"
    );
    assert_eq!(client.send(b"QUIT\r\r\n"), Next::Close);
    assert!(client.take().starts_with("221 2.0.0 "));
}

#[test]
fn trailing_blanks_before_bdat_content_are_not_content() {
    let mut client = Client::in_transaction();
    assert_eq!(
        client.talk(b"BDAT 4 LAST \r\r\nab\r\n"),
        "250 2.0.0 OK id=msg1\r\n"
    );
    assert_eq!(client.sink.committed()[0].content, b"ab\r\n");
}

#[test]
fn only_trailing_blanks_go() {
    let mut client = Client::ready();
    // A CR inside the line is still part of it.
    assert_eq!(
        client.talk(b"MAIL FROM:<a\rb@client.example>\r\n"),
        "553 5.1.7 Bad sender address syntax\r\n"
    );
    assert_eq!(
        client.talk(b" \r\t \r\n"),
        "500 5.5.2 Unrecognized command\r\n"
    );
}

// ---------------------------------------------------------------- simple commands

#[test]
fn simple_commands() {
    let mut client = Client::new();
    let cases: &[(&[u8], &str)] = &[
        (b"NOOP\r\n", "250 2.0.0 OK"),
        (b"NOOP anything\r\n", "250 2.0.0 OK"),
        (b"RSET\r\n", "250 2.0.0 OK"),
        (b"RSET x\r\n", "501 5.5.4 No arguments allowed"),
        (
            b"VRFY bob\r\n",
            "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
        ),
        (b"VRFY\r\n", "501 5.5.4 Syntax: VRFY address"),
        (b"EXPN list\r\n", "502 5.5.1 EXPN not supported"),
        (
            b"HELP\r\n",
            "214 2.0.0 See RFC 5321 https://www.rfc-editor.org/rfc/rfc5321",
        ),
        (
            b"HELP MAIL\r\n",
            "214 2.0.0 See RFC 5321 https://www.rfc-editor.org/rfc/rfc5321",
        ),
        (b"FOO\r\n", "500 5.5.2 Unrecognized command"),
        (b"NOOPX\r\n", "500 5.5.2 Unrecognized command"),
        (b"\r\n", "500 5.5.2 Unrecognized command"),
        (b"NO\0OP\r\n", "500 5.5.2 NUL character in command"),
        (b"NOOP \0\r\n", "500 5.5.2 NUL character in command"),
        (
            b"MAIL FROM:<\xff@x>\r\n",
            "501 5.5.2 Invalid UTF-8 in command",
        ),
        (b"QUIT now\r\n", "501 5.5.4 No arguments allowed"),
    ];
    for (input, reply) in cases {
        assert_eq!(client.talk(input), format!("{reply}\r\n"), "{input:?}");
    }
}

#[test]
fn quit_closes() {
    let mut client = Client::in_transaction();
    assert_eq!(client.send(b"QUIT\r\nNOOP\r\n"), Next::Close);
    assert_eq!(
        client.take(),
        format!("221 2.0.0 {HOST} closing connection\r\n")
    );
    assert!(!client.smtp.in_transaction());
    assert_eq!(client.send(b"NOOP\r\n"), Next::Close);
    assert_eq!(client.take(), "");
}

#[test]
fn quit_aborts_unfinished_bdat_message() {
    let mut client = Client::in_transaction();
    client.talk(b"BDAT 3\r\nabc");
    assert_eq!(client.send(b"QUIT\r\n"), Next::Close);
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
}

#[test]
fn pipelined_commands_answered_in_order() {
    let mut client = Client::ready();
    let input = [
        MAIL,
        RCPT,
        b"RCPT TO:<carol@evil.example>\r\n",
        b"RCPT TO:<dave@example.net>\r\n",
        b"NOOP\r\n",
        b"DATA\r\n",
    ]
    .concat();
    assert_eq!(
        client.talk(&input),
        "250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.7.1 Relaying denied\r\n250 2.1.5 OK\r\n\
         250 2.0.0 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(client.smtp.phase(), Phase::Data);
    assert_eq!(client.talk(b"x\r\n.\r\n"), "250 2.0.0 OK id=msg1\r\n");
    let recipients = &client.sink.committed()[0].envelope.recipients;
    assert_eq!(recipients.len(), 2);
    assert_eq!(recipients[1].domain, "example.net");
}

#[test]
fn enhanced_codes_on_every_reply_but_banner_and_hello() {
    let segments: &[&[u8]] = &[
        b"EHLO client.example\r\nHELO client.example\r\nEHLO client.example\r\nNOOP\r\nRSET\r\n\
          VRFY x\r\nEXPN x\r\nHELP\r\nFOO\r\nMAIL FROM:<a@b.example> FOO=1\r\n\
          MAIL FROM:<a@b.example> SIZE=5000\r\nRCPT TO:<x@example.org>\r\n\
          MAIL FROM:<a@b.example>\r\nRCPT TO:<x@evil.example>\r\nRCPT TO:<x@example.org>\r\n\
          BDAT 3\r\nabcDATA\r\nBDAT 2 LAST\r\nde\
          MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n",
        b"a\nb\r\n.\r\nSTARTTLS x\r\nQUIT\r\n",
    ];
    let output = feed(segments).output;
    let banner = format!("220 {HOST} ESMTP gsmtpd");
    let hello = format!("250 {HOST} Hello ");
    for line in lines(&output) {
        let exempt = line == banner
            || line.starts_with("250-")
            || line == "250 HELP"
            || line.starts_with(&hello)
            || line.starts_with("354 ");
        if exempt {
            continue;
        }
        let code = &line[..3];
        let enhanced = line[4..].split(' ').next().unwrap();
        let parts: Vec<&str> = enhanced.split('.').collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert_eq!(parts[0], &code[..1], "{line}");
        assert!(parts.iter().all(|p| p.parse::<u16>().is_ok()), "{line}");
    }
    assert!(output.contains("554 5.6.0"));
    assert!(output.contains("250 2.0.0 3 octets received"));
}

// ---------------------------------------------------------------- MAIL

#[test]
fn mail_sequence_errors() {
    let mut client = Client::new();
    assert_eq!(
        client.talk(MAIL),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    client.talk(EHLO);
    assert_eq!(client.talk(MAIL), "250 2.1.0 OK\r\n");
    assert!(client.smtp.in_transaction());
    assert_eq!(
        client.talk(MAIL),
        "503 5.5.1 Error: nested MAIL command\r\n"
    );
    assert_eq!(client.talk(b"RSET\r\n"), "250 2.0.0 OK\r\n");
    assert!(!client.smtp.in_transaction());
    assert_eq!(client.talk(MAIL), "250 2.1.0 OK\r\n");
}

#[test]
fn mail_syntax() {
    let cases: &[(&str, &str)] = &[
        (
            "MAIL FROM:alice@client.example",
            "501 5.5.2 Syntax: MAIL FROM:<address>",
        ),
        (
            "MAIL FROM:<alice@client.example",
            "501 5.5.2 Syntax: MAIL FROM:<address>",
        ),
        (
            "MAIL TO:<alice@client.example>",
            "501 5.5.2 Syntax: MAIL FROM:<address>",
        ),
        ("MAIL", "501 5.5.2 Syntax: MAIL FROM:<address>"),
        (
            "MAIL FROM:<a@b.example>SIZE=1",
            "501 5.5.2 Syntax: MAIL FROM:<address>",
        ),
        (
            "MAIL FROM:<a..b@b.example>",
            "553 5.1.7 Bad sender address syntax",
        ),
        (
            "MAIL FROM:<a@-b.example>",
            "553 5.1.7 Bad sender address syntax",
        ),
        (
            "MAIL FROM:<a@b..example>",
            "553 5.1.7 Bad sender address syntax",
        ),
        ("MAIL FROM:<a@>", "553 5.1.7 Bad sender address syntax"),
        ("MAIL FROM:<@x:>", "553 5.1.7 Bad sender address syntax"),
        ("MAIL FROM:<a>", "553 5.1.7 Bad sender address syntax"),
        (
            "MAIL FROM:<a@b.example> FOO=1",
            "555 5.5.4 Unsupported parameter",
        ),
        (
            "MAIL FROM:<a@b.example> RET=HDRS",
            "555 5.5.4 Unsupported parameter",
        ),
        (
            "MAIL FROM:<a@b.example> SIZE=x",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.example> SIZE=",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.example> SIZE",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.example> SIZE=-1",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.example> SIZE=123456789012345678901",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.example> SIZE=18446744073709551616",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.example> SIZE=1 SIZE=1",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.example> BODY=BINARYMIME",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.example> SMTPUTF8=yes",
            "501 5.5.4 Invalid parameter value",
        ),
        (
            "MAIL FROM:<a@b.example> SIZE=1001",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        (
            "MAIL FROM:<a@b.example> SIZE=18446744073709551615",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        (
            "MAIL FROM:<jörg@b.example>",
            "553 5.6.7 Non-ASCII address requires SMTPUTF8",
        ),
        (
            "MAIL FROM:<a@bücher.example>",
            "553 5.6.7 Non-ASCII address requires SMTPUTF8",
        ),
    ];
    for (command, reply) in cases {
        let mut client = Client::ready();
        let output = client.talk(format!("{command}\r\n").as_bytes());
        assert_eq!(output, format!("{reply}\r\n"), "{command}");
        assert!(!client.smtp.in_transaction(), "{command}");
    }
}

/// Accepted MAIL commands and the sender they record.
#[test]
fn mail_accepts() {
    let cases: &[(&str, &str)] = &[
        ("MAIL FROM:<>", ""),
        ("MAIL FROM: <alice@client.example>", "alice@client.example"),
        ("mail from:<Alice@Client.Example>", "Alice@Client.Example"),
        (
            "MAIL FROM:<@relay.example,@r2.example:alice@client.example>",
            "alice@client.example",
        ),
        (
            "MAIL FROM:<\"john doe\"@client.example>",
            "\"john doe\"@client.example",
        ),
        (
            "MAIL FROM:<\"a>b\"@client.example>",
            "\"a>b\"@client.example",
        ),
        ("MAIL FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]"),
        ("MAIL FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
        ("MAIL FROM:<a@b.example> SIZE=1000", "a@b.example"),
        (
            "MAIL FROM:<a@b.example>  size=10  body=8bitmime ",
            "a@b.example",
        ),
        (
            "MAIL FROM:<jörg@bücher.example> SMTPUTF8",
            "jörg@bücher.example",
        ),
    ];
    for (command, sender) in cases {
        let mut client = Client::ready();
        let output = client
            .talk(format!("{command}\r\n{}DATA\r\n", "RCPT TO:<bob@example.org>\r\n").as_bytes());
        assert_eq!(lines(&output)[0], "250 2.1.0 OK", "{command}");
        client.talk(b".\r\n");
        assert_eq!(
            client.sink.committed()[0].envelope.sender,
            *sender,
            "{command}"
        );
    }
}

#[test]
fn mail_params_reach_envelope() {
    let mut client = Client::ready();
    client.talk(
        b"MAIL FROM:<a@b.example> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n",
    );
    client.talk(b".\r\n");
    let envelope = &client.sink.committed()[0].envelope;
    assert_eq!(envelope.body, Body::EightBitMime);
    assert!(envelope.smtputf8);
    assert_eq!(envelope.protocol(), "UTF8SMTP");
    assert_eq!(envelope.peer, peer());
}

#[test]
fn params_need_ehlo() {
    let mut client = Client::new();
    client.talk(b"HELO client.example\r\n");
    assert_eq!(
        client.talk(b"MAIL FROM:<a@b.example> SIZE=10\r\n"),
        "555 5.5.4 Unsupported parameter\r\n"
    );
    assert_eq!(
        client.talk(b"MAIL FROM:<a@b.example>\r\n"),
        "250 2.1.0 OK\r\n"
    );
}

#[test]
fn protocol_names() {
    let mut envelope = Envelope {
        helo: "h".into(),
        esmtp: false,
        peer: peer(),
        tls: None,
        sender: String::new(),
        recipients: Vec::new(),
        body: Body::SevenBit,
        smtputf8: false,
        chunking: false,
        early_pipelining: None,
    };
    assert_eq!(envelope.protocol(), "SMTP");
    envelope.esmtp = true;
    assert_eq!(envelope.protocol(), "ESMTP");
    envelope.tls = Some(tls_info());
    assert_eq!(envelope.protocol(), "ESMTPS");
    envelope.smtputf8 = true;
    assert_eq!(envelope.protocol(), "UTF8SMTPS");
    envelope.tls = None;
    assert_eq!(envelope.protocol(), "UTF8SMTP");
}

// ---------------------------------------------------------------- RCPT

#[test]
fn rcpt_needs_mail() {
    let mut client = Client::ready();
    assert_eq!(client.talk(RCPT), "503 5.5.1 Error: need MAIL command\r\n");
}

fn rcpt_reply(command: &str, smtputf8: bool) -> (String, Vec<Recipient>) {
    let mut client = Client::ready();
    let mail = if smtputf8 {
        "MAIL FROM:<> SMTPUTF8\r\n"
    } else {
        "MAIL FROM:<>\r\n"
    };
    client.talk(mail.as_bytes());
    let reply = client.talk(format!("{command}\r\n").as_bytes());
    let recipients = client
        .smtp
        .txn
        .as_ref()
        .unwrap()
        .envelope
        .recipients
        .clone();
    (reply, recipients)
}

fn recipient(local: &str, domain: &str) -> Recipient {
    Recipient {
        local: local.into(),
        domain: domain.into(),
        relay: false,
    }
}

fn relayed(local: &str, domain: &str) -> Recipient {
    Recipient {
        relay: true,
        ..recipient(local, domain)
    }
}

#[test]
fn rcpt_accepts() {
    let cases: &[(&str, bool, Recipient)] = &[
        (
            "RCPT TO:<bob@example.org>",
            false,
            recipient("bob", "example.org"),
        ),
        (
            "RCPT TO: <bob@example.org>",
            false,
            recipient("bob", "example.org"),
        ),
        (
            "RCPT TO:<Bob.Smith@EXAMPLE.Net>",
            false,
            recipient("Bob.Smith", "example.net"),
        ),
        (
            "RCPT TO:<postmaster>",
            false,
            recipient("postmaster", "example.org"),
        ),
        (
            "RCPT TO:<PostMaster>",
            false,
            recipient("postmaster", "example.org"),
        ),
        (
            "RCPT TO:<postmaster@example.net>",
            false,
            recipient("postmaster", "example.net"),
        ),
        (
            "RCPT TO:<@relay.example:bob@example.org>",
            false,
            recipient("bob", "example.org"),
        ),
        (
            "RCPT TO:<\"john doe\"@example.org>",
            false,
            recipient("john doe", "example.org"),
        ),
        (
            "RCPT TO:<\"a\\\"b\"@example.org>",
            false,
            recipient("a\"b", "example.org"),
        ),
        (
            "RCPT TO:<\"a@b\"@example.org>",
            false,
            recipient("a@b", "example.org"),
        ),
        (
            "RCPT TO:<a+tag@example.org>",
            false,
            recipient("a+tag", "example.org"),
        ),
        (
            "RCPT TO:<jörg@example.org>",
            true,
            recipient("jörg", "example.org"),
        ),
        (
            "RCPT TO:<\"jörg x\"@example.org>",
            true,
            recipient("jörg x", "example.org"),
        ),
    ];
    for (command, smtputf8, expected) in cases {
        let (reply, recipients) = rcpt_reply(command, *smtputf8);
        assert_eq!(reply, "250 2.1.5 OK\r\n", "{command}");
        assert_eq!(recipients, vec![expected.clone()], "{command}");
    }
}

#[test]
fn rcpt_refusals() {
    let relay = "550 5.7.1 Relaying denied";
    let bad = "553 5.1.3 Bad recipient address syntax";
    let cases: &[(&str, bool, &str)] = &[
        ("RCPT TO:<bob@evil.example>", false, relay),
        ("RCPT TO:<bob@example.org.evil.example>", false, relay),
        ("RCPT TO:<bob@sub.example.org>", false, relay),
        ("RCPT TO:<bob@[192.0.2.1]>", false, relay),
        ("RCPT TO:<bob@[IPv6:::1]>", false, relay),
        ("RCPT TO:<postmaster@evil.example>", false, relay),
        ("RCPT TO:<bob>", false, bad),
        ("RCPT TO:<>", false, bad),
        ("RCPT TO:<bob@example.org.>", false, bad),
        (
            "RCPT TO:bob@example.org",
            false,
            "501 5.5.2 Syntax: RCPT TO:<address>",
        ),
        (
            "RCPT FROM:<bob@example.org>",
            false,
            "501 5.5.2 Syntax: RCPT TO:<address>",
        ),
        (
            "RCPT TO:<bob@example.org> NOTIFY=NEVER",
            false,
            "555 5.5.4 Unsupported parameter",
        ),
        (
            "RCPT TO:<bob@example.org> SIZE=1",
            false,
            "555 5.5.4 Unsupported parameter",
        ),
        (
            "RCPT TO:<jörg@example.org>",
            false,
            "553 5.6.7 Non-ASCII address requires SMTPUTF8",
        ),
    ];
    for (command, smtputf8, reply) in cases {
        let (output, recipients) = rcpt_reply(command, *smtputf8);
        assert_eq!(output, format!("{reply}\r\n"), "{command}");
        assert!(recipients.is_empty(), "{command}");
    }
}

/// A --relay-from client may send anywhere; our own domains stay local.
#[test]
fn a_relay_client_gets_other_domains_queued_and_ours_delivered() {
    let mut client = Client::with(
        SmtpConfig {
            max_recipients: 10,
            ..config()
        },
        ConnInfo {
            relay: true,
            ..conn()
        },
    );
    client.send(EHLO);
    client.take();
    client.talk(b"MAIL FROM:<a@client.example>\r\n");
    for rcpt in [
        "RCPT TO:<bob@example.org>",
        "RCPT TO:<Carol@Remote.Example>",
        "RCPT TO:<\"dave x\"@remote.example>",
        "RCPT TO:<a/b@remote.example>",
        "RCPT TO:<eve@[192.0.2.1]>",
    ] {
        assert_eq!(
            client.talk(format!("{rcpt}\r\n").as_bytes()),
            "250 2.1.5 OK\r\n",
            "{rcpt}"
        );
    }
    // Still refused for everyone: a local mailbox name that is no directory.
    assert_eq!(
        client.talk(b"RCPT TO:<../x@example.org>\r\n"),
        "553 5.1.3 Bad recipient address syntax\r\n"
    );
    let recipients = client
        .smtp
        .txn
        .as_ref()
        .unwrap()
        .envelope
        .recipients
        .clone();
    assert_eq!(
        recipients,
        vec![
            recipient("bob", "example.org"),
            relayed("Carol", "remote.example"),
            relayed("dave x", "remote.example"),
            relayed("a/b", "remote.example"),
            relayed("eve", "[192.0.2.1]"),
        ]
    );
    let mailboxes: Vec<String> = recipients.iter().map(Recipient::mailbox).collect();
    assert_eq!(
        mailboxes,
        [
            "bob@example.org",
            "Carol@remote.example",
            "\"dave x\"@remote.example",
            "a/b@remote.example",
            "eve@[192.0.2.1]"
        ]
    );
}

#[test]
fn mailboxes_are_quoted_where_rfc_5321_needs_it() {
    let text = |local: &str| recipient(local, "x.example").mailbox();
    assert_eq!(text("a.b+c"), "a.b+c@x.example");
    assert_eq!(text("jörg"), "jörg@x.example");
    assert_eq!(text("a b"), "\"a b\"@x.example");
    assert_eq!(text("a\"b"), "\"a\\\"b\"@x.example");
    assert_eq!(text("a\\b"), "\"a\\\\b\"@x.example");
    assert_eq!(text(".a"), "\".a\"@x.example");
    assert_eq!(text("a..b"), "\"a..b\"@x.example");
    assert_eq!(text("a@b"), "\"a@b\"@x.example");
}

/// Local-parts become directory names.
#[test]
fn rcpt_refuses_dangerous_local_parts() {
    let long = format!("RCPT TO:<{}@example.org>", "a".repeat(65));
    let commands = [
        "RCPT TO:<../etc@example.org>",
        "RCPT TO:<..@example.org>",
        "RCPT TO:<.@example.org>",
        "RCPT TO:<.hidden@example.org>",
        "RCPT TO:<a/b@example.org>",
        "RCPT TO:</etc/passwd@example.org>",
        "RCPT TO:<\"..\"@example.org>",
        "RCPT TO:<\".\"@example.org>",
        "RCPT TO:<\".x\"@example.org>",
        "RCPT TO:<\"a/b\"@example.org>",
        "RCPT TO:<\"../x\"@example.org>",
        "RCPT TO:<\"\"@example.org>",
        "RCPT TO:<\"a\tb\"@example.org>",
        "RCPT TO:<\"a\\\tb\"@example.org>",
        "RCPT TO:<\"a\u{7f}b\"@example.org>",
        "RCPT TO:<\"a\u{85}b\"@example.org>",
        "RCPT TO:<a\u{85}b@example.org>",
        &long,
    ];
    for command in commands {
        let (output, recipients) = rcpt_reply(command, true);
        assert_eq!(
            output, "553 5.1.3 Bad recipient address syntax\r\n",
            "{command:?}"
        );
        assert!(recipients.is_empty());
    }
    let (output, _) = rcpt_reply(&format!("RCPT TO:<{}@example.org>", "a".repeat(64)), false);
    assert_eq!(output, "250 2.1.5 OK\r\n");
}

#[test]
fn postmaster_needs_a_domain() {
    let mut config = config();
    config.domains.clear();
    let mut client = Client::with(config, conn());
    client.talk(&[EHLO, MAIL].concat());
    assert_eq!(
        client.talk(b"RCPT TO:<postmaster>\r\n"),
        "550 5.7.1 Relaying denied\r\n"
    );
}

#[test]
fn too_many_recipients() {
    let mut client = Client::ready();
    let input = [
        MAIL,
        b"RCPT TO:<a@example.org>\r\n",
        b"RCPT TO:<b@example.org>\r\n",
        b"RCPT TO:<a@example.org>\r\n",
        b"RCPT TO:<c@example.org>\r\n",
        b"RCPT TO:<d@example.org>\r\n",
        b"RCPT TO:<e@example.org>\r\n",
    ]
    .concat();
    assert_eq!(
        client.talk(&input),
        "250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n\
         452 4.5.3 Too many recipients\r\n452 4.5.3 Too many recipients\r\n"
    );
    client.talk(b"DATA\r\n");
    client.talk(b".\r\n");
    let recipients = &client.sink.committed()[0].envelope.recipients;
    let locals: Vec<&str> = recipients.iter().map(|r| r.local.as_str()).collect();
    assert_eq!(locals, ["a", "b", "c"], "the duplicate is stored once");
}

// ---------------------------------------------------------------- DATA

#[test]
fn data_sequence_errors() {
    let mut client = Client::ready();
    assert_eq!(
        client.talk(b"DATA\r\n"),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    client.talk(MAIL);
    assert_eq!(
        client.talk(b"DATA\r\n"),
        "503 5.5.1 Error: No valid recipients\r\n"
    );
    client.talk(b"RCPT TO:<x@evil.example>\r\n");
    assert_eq!(
        client.talk(b"DATA\r\n"),
        "503 5.5.1 Error: No valid recipients\r\n"
    );
    client.talk(RCPT);
    assert_eq!(
        client.talk(b"DATA now\r\n"),
        "501 5.5.4 No arguments allowed\r\n"
    );
    assert_eq!(client.smtp.phase(), Phase::Command);
    assert!(client.sink.messages.is_empty());
}

#[test]
fn data_delivers_message() {
    let mut client = Client::in_transaction();
    assert_eq!(
        client.talk(b"DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(client.smtp.phase(), Phase::Data);
    assert!(client.smtp.in_transaction());
    let reply = client.talk(b"Subject: hi\r\n\r\nHello\r\n.\r\nNOOP\r\n");
    assert_eq!(reply, "250 2.0.0 OK id=msg1\r\n250 2.0.0 OK\r\n");
    assert_eq!(client.smtp.phase(), Phase::Command);
    assert!(!client.smtp.in_transaction());
    let message = &client.sink.messages[0];
    assert_eq!(message.outcome, Outcome::Committed("msg1".into()));
    assert_eq!(message.content, b"Subject: hi\r\n\r\nHello\r\n");
    assert_eq!(message.writes, 1, "content goes to the sink in one run");
    assert_eq!(message.envelope.sender, "alice@client.example");
    assert_eq!(message.envelope.helo, "client.example");
    assert!(message.envelope.esmtp);
    assert!(!message.envelope.chunking);
    assert_eq!(message.envelope.protocol(), "ESMTP");
    // HELO is kept: the next transaction needs no new EHLO.
    assert_eq!(client.talk(MAIL), "250 2.1.0 OK\r\n");
}

#[test]
fn dot_unstuffing() {
    let mut client = Client::in_transaction();
    client.talk(b"DATA\r\n");
    let reply = client.talk(b"..\r\n...x\r\n.y\r\na.b\r\n..\r\n.\r\n");
    assert_eq!(reply, "250 2.0.0 OK id=msg1\r\n");
    assert_eq!(
        client.sink.messages[0].content,
        b".\r\n..x\r\ny\r\na.b\r\n.\r\n"
    );
}

#[test]
fn empty_message_first_line_dot() {
    let mut client = Client::in_transaction();
    client.talk(b"DATA\r\n");
    assert_eq!(client.talk(b".\r\n"), "250 2.0.0 OK id=msg1\r\n");
    assert_eq!(client.sink.messages[0].content, b"");
    assert_eq!(client.sink.messages[0].writes, 0);
}

#[test]
fn data_terminator_split_across_reads() {
    let mut client = Client::in_transaction();
    client.talk(b"DATA\r\n");
    let mut output = String::new();
    for piece in [&b"abc\r"[..], b"\n", b".", b"\r", b"\n"] {
        output += &client.talk(piece);
    }
    assert_eq!(output, "250 2.0.0 OK id=msg1\r\n");
    assert_eq!(client.sink.messages[0].content, b"abc\r\n");
}

#[test]
fn data_sync_error() {
    let mut client = Client::in_transaction();
    let next = client.send(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!(next, Next::Close);
    assert_eq!(client.take(), "554 5.5.0 SMTP synchronization error\r\n");
    assert!(!client.smtp.in_transaction());
    assert!(client.sink.messages.is_empty(), "nothing reached the sink");
    assert_eq!(client.send(b"QUIT\r\n"), Next::Close);
    assert_eq!(client.take(), "");
}

#[test]
fn data_sync_error_even_for_one_byte() {
    let mut client = Client::ready();
    let next = client.send(&[MAIL, RCPT, b"DATA\r\nS"].concat());
    assert_eq!(next, Next::Close);
    assert_eq!(
        client.take(),
        "250 2.1.0 OK\r\n250 2.1.5 OK\r\n554 5.5.0 SMTP synchronization error\r\n"
    );
}

/// Only a DATA that would get 354 is a synchronisation point; after a refused
/// one the client's input is read as commands again.
#[test]
fn refused_data_is_no_sync_point() {
    let mut client = Client::ready();
    let reply = client.talk(&[MAIL, b"DATA\r\nNOOP\r\n"].concat());
    assert_eq!(
        reply,
        "250 2.1.0 OK\r\n503 5.5.1 Error: No valid recipients\r\n250 2.0.0 OK\r\n"
    );
}

/// `size` (at least 100) content bytes in lines that each start with a dot.
fn message_of(size: usize) -> Vec<u8> {
    let line = |len: usize| [b".".as_slice(), &vec![b'x'; len - 3], b"\r\n"].concat();
    let mut content = line(100).repeat(size / 100 - 1);
    content.extend_from_slice(&line(100 + size % 100));
    content
}

fn stuff(content: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

#[test]
fn size_limit_counts_unstuffed_content() {
    let content = message_of(1000);
    assert_eq!(content.len(), 1000);
    let mut client = Client::in_transaction();
    client.talk(b"DATA\r\n");
    let wire = stuff(&content);
    assert!(wire.len() > 1000 + 3, "the stuffing dots do not count");
    assert_eq!(client.talk(&wire), "250 2.0.0 OK id=msg1\r\n");
    assert_eq!(client.sink.messages[0].content, content);
}

#[test]
fn size_limit_one_over() {
    let content = message_of(1001);
    let segments: &[&[u8]] = &[
        &[EHLO, MAIL, RCPT, b"DATA\r\n"].concat(),
        &[&stuff(&content)[..], b"NOOP\r\n"].concat(),
    ];
    let result = assert_split_invariant(segments);
    assert!(result.output.ends_with(
        "354 End data with <CR><LF>.<CR><LF>\r\n\
         552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 OK\r\n"
    ));
    assert_eq!(result.messages[0].outcome, Outcome::Aborted);
}

#[test]
fn oversized_message_stops_writing() {
    let mut client = Client::in_transaction();
    client.talk(b"DATA\r\n");
    client.talk(&vec![b'x'; 600]);
    assert_eq!(client.sink.messages[0].content.len(), 600);
    client.talk(&vec![b'x'; 600]);
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
    assert_eq!(
        client.sink.messages[0].content.len(),
        600,
        "nothing over the limit is written"
    );
    for _ in 0..100 {
        client.talk(&vec![b'y'; 1000]);
    }
    assert_eq!(
        client.talk(b"\r\n.\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
}

#[test]
fn sink_begin_failure() {
    let mut client = Client::in_transaction();
    client.sink.fail_begin = true;
    assert_eq!(
        client.talk(b"DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(
        client.talk(b"hello\r\n.\r\n"),
        "452 4.3.1 Insufficient system storage\r\n"
    );
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
    assert!(client.sink.messages[0].content.is_empty());
    assert!(!client.smtp.in_transaction());
}

#[test]
fn sink_write_failure() {
    let mut client = Client::in_transaction();
    client.sink.fail_write = true;
    client.talk(b"DATA\r\n");
    client.talk(b"hello\r\n");
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
    assert_eq!(
        client.talk(b"more\r\n.\r\n"),
        "452 4.3.1 Insufficient system storage\r\n"
    );
    assert_eq!(client.sink.messages[0].writes, 1);
}

#[test]
fn sink_commit_failure() {
    let mut client = Client::in_transaction();
    client.sink.fail_commit = true;
    client.talk(b"DATA\r\n");
    assert_eq!(
        client.talk(b"hello\r\n.\r\n"),
        "452 4.3.1 Insufficient system storage\r\n"
    );
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
    assert!(!client.smtp.in_transaction());
}

// -------------------------------------------------------- group commit

impl Client {
    /// Reports the queued commit's outcome; returns the replies and Next.
    fn finish_commit(&mut self, durable: bool) -> (String, Next) {
        assert!(self.smtp.awaiting_commit());
        let outcome = self.sink.resolve(durable);
        let next = self.smtp.commit_finished(outcome, &mut self.sink);
        (self.take(), next)
    }
}

#[test]
fn queued_commit_holds_its_250_and_all_later_input() {
    let mut client = Client::in_transaction();
    client.sink.queue = true;
    assert!(client.talk(b"DATA\r\n").starts_with("354 "));
    // RSET and NOOP pipelined behind the end of data, as RFC 2920 allows.
    assert_eq!(client.talk(b"hello\r\n.\r\nRSET\r\nNOO"), "");
    assert!(client.smtp.awaiting_commit());
    assert!(client.smtp.in_transaction(), "shutdown must wait for it");
    assert_eq!(client.sink.messages[0].outcome, Outcome::Queued);
    // A caller that reads on anyway gets its input held too, in order.
    assert_eq!(client.talk(b"P\r\n"), "");
    let (replies, next) = client.finish_commit(true);
    assert_eq!(next, Next::Continue);
    assert_eq!(
        replies,
        "250 2.0.0 OK id=msg1\r\n250 2.0.0 OK\r\n250 2.0.0 OK\r\n"
    );
    assert!(!client.smtp.awaiting_commit());
    assert!(!client.smtp.in_transaction());
}

#[test]
fn queued_commit_failure_is_452_and_the_session_goes_on() {
    let mut client = Client::in_transaction();
    client.sink.queue = true;
    client.talk(b"DATA\r\n");
    assert_eq!(client.talk(b"hello\r\n.\r\nQUIT\r\n"), "");
    let (replies, next) = client.finish_commit(false);
    assert_eq!(
        replies,
        "452 4.3.1 Insufficient system storage\r\n221 2.0.0 mx.example.org closing connection\r\n"
    );
    assert_eq!(next, Next::Close);
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
}

#[test]
fn queued_bdat_messages_commit_one_after_the_other() {
    let mut client = Client::ready();
    client.sink.queue = true;
    let two = [
        MAIL,
        RCPT,
        b"BDAT 2 LAST\r\nhi",
        MAIL,
        RCPT,
        b"BDAT 3 LAST\r\nyou",
    ]
    .concat();
    assert_eq!(client.talk(&two), "250 2.1.0 OK\r\n250 2.1.5 OK\r\n");
    let (replies, _) = client.finish_commit(true);
    // The second message was held whole behind the first one's commit.
    assert_eq!(
        replies,
        "250 2.0.0 OK id=msg1\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n"
    );
    let (replies, next) = client.finish_commit(true);
    assert_eq!(replies, "250 2.0.0 OK id=msg2\r\n");
    assert_eq!(next, Next::Continue);
    let contents: Vec<&[u8]> = client
        .sink
        .committed()
        .iter()
        .map(|m| &m.content[..])
        .collect();
    assert_eq!(contents, [&b"hi"[..], b"you"]);
}

#[test]
fn data_bare_line_ends_refused() {
    for body in [
        &b"a\nb\r\n"[..],
        b"a\rb\r\n",
        b"a\r\r\n",
        b"\n",
        b"a\r\n.\n",
    ] {
        let mut client = Client::in_transaction();
        client.talk(b"DATA\r\n");
        let reply = client.talk(&[body, b"\r\n.\r\n"].concat());
        assert_eq!(
            reply, "554 5.6.0 Message contains bare CR or LF characters (RFC 5321 2.3.8)\r\n",
            "{body:?}"
        );
        assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
        assert!(!client.smtp.in_transaction());
        assert_eq!(client.talk(MAIL), "250 2.1.0 OK\r\n");
    }
}

#[test]
fn write_runs_break_only_at_stuffed_dots() {
    let mut client = Client::in_transaction();
    client.talk(b"DATA\r\n");
    client.talk(&vec![b'a'; 300]);
    client.talk(b"\r\n..b\r\nc\r\n");
    client.talk(b".\r\n");
    // One run per read, plus one more where the stuffing dot was removed.
    assert_eq!(client.sink.messages[0].writes, 3);
}

// ---------------------------------------------------------------- BDAT

#[test]
fn bdat_chunks() {
    let mut client = Client::in_transaction();
    let reply = client.talk(b"BDAT 5\r\nhelloBDAT 7\r\n\r\n.\r\n.\nBDAT 0 LAST\r\n");
    assert_eq!(
        reply,
        "250 2.0.0 5 octets received\r\n250 2.0.0 7 octets received\r\n\
         554 5.6.0 Message contains bare CR or LF characters (RFC 5321 2.3.8)\r\n"
    );

    let mut client = Client::in_transaction();
    let reply = client.talk(b"BDAT 5\r\nhelloBDAT 9 last\r\n\r\n..\r\n.\r\n");
    assert_eq!(
        reply,
        "250 2.0.0 5 octets received\r\n250 2.0.0 OK id=msg1\r\n"
    );
    let message = &client.sink.messages[0];
    assert_eq!(
        message.content, b"hello\r\n..\r\n.\r\n",
        "no dot handling in BDAT"
    );
    assert!(message.envelope.chunking);
    assert!(!client.smtp.in_transaction());
}

#[test]
fn bdat_split_across_reads() {
    let mut client = Client::in_transaction();
    assert_eq!(client.talk(b"BDAT 11 LAST\r\nabc"), "");
    assert_eq!(client.smtp.phase(), Phase::Data);
    assert_eq!(client.talk(b"de\r\nf"), "");
    assert_eq!(
        client.talk(b"g\r\nNOOP\r\n"),
        "250 2.0.0 OK id=msg1\r\n250 2.0.0 OK\r\n"
    );
    assert_eq!(client.smtp.phase(), Phase::Command);
    assert_eq!(client.sink.messages[0].content, b"abcde\r\nfg\r\n");
}

#[test]
fn bdat_crlf_split_across_chunks() {
    let mut client = Client::in_transaction();
    let reply = client.talk(b"BDAT 2\r\na\rBDAT 1 LAST\r\n\n");
    assert_eq!(
        reply,
        "250 2.0.0 2 octets received\r\n250 2.0.0 OK id=msg1\r\n"
    );
    assert_eq!(client.sink.messages[0].content, b"a\r\n");
}

#[test]
fn bdat_bare_line_ends_refused_at_last() {
    for (chunk, label) in [
        (&b"a\r"[..], "trailing CR"),
        (b"a\nb", "bare LF"),
        (b"a\rb", "bare CR"),
    ] {
        let mut client = Client::in_transaction();
        let mut input = format!("BDAT {}\r\n", chunk.len()).into_bytes();
        input.extend_from_slice(chunk);
        input.extend_from_slice(b"BDAT 2 LAST\r\nzz");
        let reply = client.talk(&input);
        let first = format!("250 2.0.0 {} octets received\r\n", chunk.len());
        assert_eq!(
            reply,
            format!(
                "{first}554 5.6.0 Message contains bare CR or LF characters (RFC 5321 2.3.8)\r\n"
            ),
            "{label}"
        );
        assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
    }
    let mut client = Client::in_transaction();
    let reply = client.talk(b"BDAT 2 LAST\r\na\r");
    assert_eq!(
        reply,
        "554 5.6.0 Message contains bare CR or LF characters (RFC 5321 2.3.8)\r\n"
    );
}

#[test]
fn bdat_zero_last() {
    let mut client = Client::in_transaction();
    assert_eq!(client.talk(b"BDAT 0 LAST\r\n"), "250 2.0.0 OK id=msg1\r\n");
    assert_eq!(client.sink.messages[0].content, b"");
    assert_eq!(client.smtp.phase(), Phase::Command);
}

#[test]
fn bdat_without_mail_consumes_its_bytes() {
    let mut client = Client::ready();
    let reply = client.talk(b"BDAT 12\r\nNOOP\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(
        reply,
        "503 5.5.1 Error: need MAIL command\r\n250 2.0.0 OK\r\n"
    );
    let mut client = Client::new();
    assert_eq!(client.talk(b"BDAT 6 LAST\r\n"), "");
    let reply = client.talk(b"QUIT\r\n");
    assert_eq!(reply, "503 5.5.1 Error: need MAIL command\r\n");
    assert!(client.sink.messages.is_empty());
}

#[test]
fn bdat_without_recipients_consumes_its_bytes() {
    let mut client = Client::ready();
    client.talk(MAIL);
    let reply = client.talk(b"BDAT 6\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(
        reply,
        "503 5.5.1 Error: No valid recipients\r\n250 2.0.0 OK\r\n"
    );
    assert!(client.smtp.in_transaction());
    assert!(client.sink.messages.is_empty());
}

#[test]
fn bdat_syntax_errors_leave_bytes_as_commands() {
    let cases = [
        "BDAT",
        "BDAT x",
        "BDAT -1",
        "BDAT 1 FIRST",
        "BDAT 1 LAST x",
        "BDAT 123456789012345678901",
        "BDAT 18446744073709551616",
    ];
    for command in cases {
        let mut client = Client::in_transaction();
        let reply = client.talk(format!("{command}\r\nNOOP\r\n").as_bytes());
        assert_eq!(
            reply, "501 5.5.4 Syntax: BDAT size [LAST]\r\n250 2.0.0 OK\r\n",
            "{command}"
        );
    }
}

#[test]
fn bdat_huge_size_consumes_until_close() {
    let mut client = Client::in_transaction();
    assert_eq!(client.talk(b"BDAT 18446744073709551615\r\nabc"), "");
    assert_eq!(client.smtp.phase(), Phase::Data);
    assert_eq!(
        client.sink.messages.len(),
        0,
        "refused before any byte was stored"
    );
    assert_eq!(client.talk(b"QUIT\r\n"), "", "still chunk content");
}

#[test]
fn bdat_size_limit() {
    let mut client = Client::in_transaction();
    let mut input = b"BDAT 1000 LAST\r\n".to_vec();
    input.extend_from_slice(&[b'x'; 1000]);
    assert_eq!(client.talk(&input), "250 2.0.0 OK id=msg1\r\n");

    let mut client = Client::in_transaction();
    let mut input = b"BDAT 600\r\n".to_vec();
    input.extend_from_slice(&[b'x'; 600]);
    input.extend_from_slice(b"BDAT 401 LAST\r\n");
    input.extend_from_slice(&[b'x'; 401]);
    input.extend_from_slice(b"BDAT 1 LAST\r\nx");
    assert_eq!(
        client.talk(&input),
        "250 2.0.0 600 octets received\r\n\
         552 5.3.4 Message size exceeds fixed maximum message size\r\n\
         503 5.5.1 Error: need MAIL command\r\n"
    );
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
    assert_eq!(client.sink.messages[0].content.len(), 600);
}

#[test]
fn bdat_size_limit_first_chunk_never_begins() {
    let mut client = Client::in_transaction();
    let mut input = b"BDAT 1001\r\n".to_vec();
    input.extend_from_slice(&[b'x'; 1001]);
    assert_eq!(
        client.talk(&input),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(client.sink.messages.is_empty());
    assert!(!client.smtp.in_transaction());
}

#[test]
fn bdat_sink_failure() {
    let mut client = Client::in_transaction();
    client.sink.fail_write = true;
    let reply = client.talk(b"BDAT 3\r\nabcBDAT 3 LAST\r\ndef");
    assert_eq!(
        reply,
        "452 4.3.1 Insufficient system storage\r\n503 5.5.1 Error: need MAIL command\r\n"
    );
    assert_eq!(client.sink.messages.len(), 1);
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);

    let mut client = Client::in_transaction();
    client.sink.fail_commit = true;
    assert_eq!(
        client.talk(b"BDAT 3 LAST\r\nabc"),
        "452 4.3.1 Insufficient system storage\r\n"
    );
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
}

#[test]
fn data_after_bdat_refused() {
    let mut client = Client::in_transaction();
    let reply = client.talk(b"BDAT 3\r\nabcDATA\r\n");
    assert_eq!(
        reply,
        "250 2.0.0 3 octets received\r\n503 5.5.1 Error: DATA not allowed after BDAT\r\n"
    );
    assert_eq!(
        client.talk(b"BDAT 2 LAST\r\nde"),
        "250 2.0.0 OK id=msg1\r\n"
    );
    assert_eq!(client.sink.messages[0].content, b"abcde");
}

#[test]
fn rset_aborts_chunked_message() {
    let mut client = Client::in_transaction();
    client.talk(b"BDAT 3\r\nabc");
    assert_eq!(client.sink.messages[0].outcome, Outcome::Open);
    assert_eq!(client.talk(b"RSET\r\n"), "250 2.0.0 OK\r\n");
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
    assert!(!client.smtp.in_transaction());
}

// ---------------------------------------------------------------- smuggling

const SMUGGLING: [&[u8]; 9] = [
    b"\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
];

const SMUGGLED: &[u8] =
    b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n.\r\n";

fn assert_single_message(result: &Transcript, sequence: &[u8]) {
    assert_eq!(result.messages.len(), 1, "{sequence:?}: {result:?}");
    let Summary {
        sender,
        outcome,
        content,
        ..
    } = &result.messages[0];
    assert_eq!(sender, "alice@client.example");
    let tail = result.output.split("\r\n250 HELP\r\n").nth(1).unwrap();
    let replies = lines(tail);
    // Only the NUL variant has no bare line end: it is one ordinary message.
    let committed = sequence.contains(&0);
    let expected = if committed {
        "250 2.0.0 OK id=msg1"
    } else {
        "554 5.6.0 Message contains bare CR or LF characters (RFC 5321 2.3.8)"
    };
    assert_eq!(replies.last(), Some(&expected), "{sequence:?}: {replies:?}");
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.starts_with("250 2.1.0"))
            .count(),
        1,
        "{sequence:?}"
    );
    if committed {
        let content = content.as_ref().unwrap();
        let smuggled = &SMUGGLED[..SMUGGLED.len() - 3];
        let inside = content.windows(smuggled.len()).any(|w| w == smuggled);
        assert!(inside, "the smuggled text is content of the one message");
    } else {
        assert_eq!(*outcome, Outcome::Aborted);
    }
}

#[test]
fn smuggling_in_data() {
    for sequence in SMUGGLING {
        let data = [b"Subject: hi\r\n\r\nbody", sequence, SMUGGLED].concat();
        let segments: &[&[u8]] = &[&[EHLO, MAIL, RCPT, b"DATA\r\n"].concat(), &data];
        let result = assert_split_invariant(segments);
        assert_single_message(&result, sequence);
        let replies = lines(&result.output);
        assert_eq!(
            replies[replies.len() - 2],
            "354 End data with <CR><LF>.<CR><LF>"
        );
    }
}

#[test]
fn smuggling_in_bdat() {
    for sequence in SMUGGLING {
        let chunk = [b"Subject: hi\r\n\r\nbody", sequence, SMUGGLED].concat();
        let command = format!("BDAT {} LAST\r\n", chunk.len());
        let input = [EHLO, MAIL, RCPT, command.as_bytes(), &chunk].concat();
        let result = assert_split_invariant(&[&input]);
        assert_single_message(&result, sequence);
    }
}

/// The same sequences at the very start of the content, where a line begins too.
#[test]
fn smuggling_at_content_start() {
    for sequence in SMUGGLING {
        let data = [sequence, SMUGGLED].concat();
        let segments: &[&[u8]] = &[&[EHLO, MAIL, RCPT, b"DATA\r\n"].concat(), &data];
        let result = feed(segments);
        assert_eq!(result.messages.len(), 1, "{sequence:?}");
        assert_eq!(
            lines(&result.output)
                .iter()
                .filter(|r| r.starts_with("250 2.1.0"))
                .count(),
            1
        );
    }
}

// ---------------------------------------------------------------- split invariance

#[test]
fn whole_conversation_split_anywhere() {
    let first = [
        EHLO,
        b"MAIL FROM:<alice@client.example> SIZE=100 BODY=8BITMIME\r\n",
        RCPT,
        b"RCPT TO:<postmaster>\r\n",
        b"RCPT TO:<x@evil.example>\r\n",
        b"DATA\r\n",
    ]
    .concat();
    let long_line = [b"NOOP ".as_slice(), &[b'x'; 3000], b"\r\n"].concat();
    let second = [
        b"Subject: one\r\n\r\n..stuffed\r\n.\r\n".as_slice(),
        b"NOOP\r\nBOGUS\r\n",
        &long_line,
        b"VRFY x\r\nBDAT 4\r\nMAIL",
        MAIL,
        b"BDAT 5\r\nRCPT ",
        RCPT,
        b"BDAT 9 LAST\r\nab\r\ncd\r\n.",
        b"RSET\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n",
    ]
    .concat();
    let third = b"bare\nline\r\n.\r\nQUIT\r\nNOOP\r\n".as_slice();
    let result = assert_split_invariant(&[&first, &second, third]);
    let expected = [
        "250 2.1.0 OK",
        "250 2.1.5 OK",
        "250 2.1.5 OK",
        "550 5.7.1 Relaying denied",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 OK id=msg1",
        "250 2.0.0 OK",
        "500 5.5.2 Unrecognized command",
        "500 5.5.2 Line too long",
        "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
        "503 5.5.1 Error: need MAIL command",
        "250 2.1.0 OK",
        "503 5.5.1 Error: No valid recipients",
        "250 2.1.5 OK",
        "250 2.0.0 OK id=msg2",
        "250 2.0.0 OK",
        "250 2.1.0 OK",
        "250 2.1.5 OK",
        "354 End data with <CR><LF>.<CR><LF>",
        "554 5.6.0 Message contains bare CR or LF characters (RFC 5321 2.3.8)",
        "221 2.0.0 mx.example.org closing connection",
    ];
    let replies = lines(&result.output);
    let after_ehlo = replies.iter().position(|r| *r == "250 HELP").unwrap() + 1;
    assert_eq!(&replies[after_ehlo..], expected);
    assert_eq!(result.end, Next::Close);
    assert_eq!(result.messages.len(), 3);
    assert_eq!(
        result.messages[0].content.as_deref(),
        Some(&b"Subject: one\r\n\r\n.stuffed\r\n"[..])
    );
    assert_eq!(
        result.messages[1].content.as_deref(),
        Some(&b"ab\r\ncd\r\n."[..])
    );
    assert!(result.messages[1].chunking, "chunking");
    assert_eq!(result.messages[2].outcome, Outcome::Aborted);
}

// ---------------------------------------------------------------- line length

#[test]
fn line_length_limit() {
    let mut client = Client::new();
    let at_limit = [b"NOOP ".as_slice(), &vec![b'x'; MAX_LINE - 7], b"\r\n"].concat();
    assert_eq!(at_limit.len(), MAX_LINE);
    assert_eq!(client.talk(&at_limit), "250 2.0.0 OK\r\n");
    let over = [b"NOOP ".as_slice(), &vec![b'x'; MAX_LINE - 6], b"\r\n"].concat();
    assert_eq!(client.talk(&over), "500 5.5.2 Line too long\r\n");
    let bare_lf_at_limit = [b"NOOP ".as_slice(), &vec![b'x'; MAX_LINE - 6], b"\n"].concat();
    assert_eq!(client.talk(&bare_lf_at_limit), "250 2.0.0 OK\r\n");
}

#[test]
fn long_line_reported_once_and_recovered() {
    let mut client = Client::new();
    let mut output = String::new();
    for _ in 0..10_000 {
        output += &client.talk(b"x");
    }
    output += &client.talk(b"y\r\nNOOP\r\n");
    assert_eq!(output, "500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n");
    assert_eq!(client.talk(&[b'z'; 100_000]), "500 5.5.2 Line too long\r\n");
    assert_eq!(client.talk(b"\nNOOP\r\n"), "250 2.0.0 OK\r\n");
}

#[test]
fn line_buffer_is_bounded() {
    let mut reader = LineReader::default();
    let mut used = 0;
    let input = vec![b'a'; MAX_LINE - 1];
    while used < input.len() {
        let (n, event) = reader.read(&input[used..used + 1]);
        assert!(matches!(event, Event::Pending));
        used += n;
    }
    assert_eq!(reader.buffered(), MAX_LINE - 1);
    assert!(matches!(reader.read(b"a").1, Event::TooLong));
    assert_eq!(reader.buffered(), 0);
    assert!(matches!(reader.read(&[b'b'; 5000]).1, Event::Pending));
    assert_eq!(reader.buffered(), 0);
    let (n, event) = reader.read(b"b\nNOOP\r\n");
    assert_eq!(n, 2);
    assert!(matches!(event, Event::Pending));
    let (_, event) = reader.read(b"NOOP\r\n");
    assert!(matches!(event, Event::Line(line) if *line == *b"NOOP"));
}

// ---------------------------------------------------------------- STARTTLS

#[test]
fn starttls_discards_pipelined_input() {
    let mut client = Client::new();
    let input = [EHLO, b"STARTTLS\r\n", MAIL, RCPT, b"DATA\r\nEHL"].concat();
    assert_eq!(client.send(&input), Next::StartTls);
    assert_eq!(
        client.take(),
        ehlo_reply(true, true) + "220 2.0.0 Ready to start TLS\r\n"
    );
    // Until the handshake is done, plaintext is never looked at.
    assert_eq!(client.send(b"O x\r\nNOOP\r\n"), Next::StartTls);
    assert_eq!(client.take(), "");
    client.smtp.tls_established(tls_info());
    assert!(client.smtp.is_tls());
    // "EHL" was not kept: this line is "O x", not "EHLO x".
    assert_eq!(
        client.talk(b"O x\r\n"),
        "500 5.5.2 Unrecognized command\r\n"
    );
    assert_eq!(
        client.talk(MAIL),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    assert_eq!(client.talk(EHLO), ehlo_reply(false, true));
    assert_eq!(
        client.talk(b"STARTTLS\r\n"),
        "503 5.5.1 TLS already active\r\n"
    );
    client.talk(&[MAIL, RCPT, b"DATA\r\n"].concat());
    client.talk(b"hi\r\n.\r\n");
    let envelope = &client.sink.committed()[0].envelope;
    assert_eq!(envelope.tls, Some(tls_info()));
    assert_eq!(envelope.protocol(), "ESMTPS");
}

#[test]
fn starttls_discards_partial_line_before_it() {
    let mut client = Client::ready();
    assert_eq!(
        client.send(b"STARTTLS\r\nMAIL FROM:<evil@x"),
        Next::StartTls
    );
    client.smtp.tls_established(tls_info());
    client.take();
    assert_eq!(client.talk(b">\r\n"), "500 5.5.2 Unrecognized command\r\n");
}

#[test]
fn starttls_resets_transaction() {
    let mut client = Client::in_transaction();
    client.talk(b"BDAT 2\r\nab");
    assert_eq!(client.send(b"STARTTLS\r\n"), Next::StartTls);
    assert_eq!(client.take(), "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
    assert!(!client.smtp.in_transaction());
    client.smtp.tls_established(tls_info());
    assert_eq!(client.talk(RCPT), "503 5.5.1 Error: need MAIL command\r\n");
}

#[test]
fn starttls_refusals() {
    let mut client = Client::ready();
    assert_eq!(
        client.talk(b"STARTTLS now\r\n"),
        "501 5.5.4 No arguments allowed\r\n"
    );

    let mut plain = conn();
    plain.starttls_available = false;
    let mut client = Client::with(config(), plain);
    assert_eq!(
        client.talk(b"STARTTLS\r\n"),
        "502 5.5.1 STARTTLS not available\r\n"
    );

    let mut implicit = conn();
    implicit.tls = Some(tls_info());
    implicit.pipe_connect = false;
    let mut client = Client::with(config(), implicit);
    assert_eq!(
        client.talk(b"STARTTLS\r\n"),
        "503 5.5.1 TLS already active\r\n"
    );
}

// ---------------------------------------------------------------- ending connections

#[test]
fn timed_out_closes() {
    let mut client = Client::in_transaction();
    client.talk(b"DATA\r\n");
    client.talk(b"partial content\r\n");
    client.smtp.timed_out();
    assert_eq!(
        client.take(),
        format!("421 4.4.2 {HOST} Error: timeout exceeded\r\n")
    );
    assert!(!client.smtp.in_transaction());
    assert_eq!(client.smtp.phase(), Phase::Command);
    client.smtp.timed_out();
    client.smtp.shutting_down();
    assert_eq!(client.take(), "", "only one 421");
    assert_eq!(client.sink.messages[0].outcome, Outcome::Open);
    assert_eq!(client.send(b".\r\nQUIT\r\n"), Next::Close);
    assert_eq!(client.take(), "");
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
}

#[test]
fn shutting_down_closes() {
    let mut client = Client::in_transaction();
    client.talk(b"BDAT 5\r\nab");
    client.smtp.shutting_down();
    assert_eq!(
        client.take(),
        format!("421 4.3.2 {HOST} Service shutting down\r\n")
    );
    assert_eq!(client.send(b"cde"), Next::Close);
    assert_eq!(client.sink.messages[0].outcome, Outcome::Aborted);
    assert_eq!(client.take(), "");
}

#[test]
fn too_many_errors() {
    let mut client = Client::new();
    for _ in 0..19 {
        assert_eq!(
            client.talk(b"FOO\r\n"),
            "500 5.5.2 Unrecognized command\r\n"
        );
    }
    assert_eq!(client.talk(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    assert_eq!(client.send(b"MAIL FROM:<a@b.example>\r\n"), Next::Close);
    assert_eq!(
        client.take(),
        format!("503 5.5.1 Error: send HELO/EHLO first\r\n421 4.7.0 {HOST} Too many errors\r\n")
    );
    assert_eq!(client.send(b"NOOP\r\n"), Next::Close);
    assert_eq!(client.take(), "");
}

#[test]
fn too_many_errors_pipelined() {
    let mut client = Client::new();
    assert_eq!(client.send(&b"FOO\r\n".repeat(30)), Next::Close);
    let output = client.take();
    let replies = lines(&output);
    assert_eq!(replies.len(), 21);
    assert_eq!(replies[20], format!("421 4.7.0 {HOST} Too many errors"));
}

#[test]
fn refused_content_is_not_a_command_error() {
    let mut client = Client::ready();
    for _ in 0..25 {
        client.talk(&[MAIL, RCPT, b"DATA\r\n"].concat());
        let reply = client.talk(b"a\nb\r\n.\r\n");
        assert!(reply.starts_with("554 5.6.0"));
    }
}

#[test]
fn output_is_consumed_partially() {
    let mut client = Client::new();
    client.smtp.greet();
    let all = client.smtp.output().to_vec();
    client.smtp.consume_output(5);
    assert_eq!(client.smtp.output(), &all[5..]);
    client.talk(b"NOOP\r\n");
    client.smtp.consume_output(usize::MAX);
    assert_eq!(client.smtp.output(), b"");
    client.send(b"NOOP\r\n");
    assert_eq!(client.smtp.output(), b"250 2.0.0 OK\r\n");
}

fn no_early_pipelining() -> Client {
    let mut c = conn();
    c.pipe_connect = false;
    Client::with(config(), c)
}

const SYNC: &str = "554 5.5.0 SMTP synchronization error\r\n";

#[test]
fn pipelining_past_ehlo_needs_pipeconnect() {
    let mut client = no_early_pipelining();
    assert_eq!(client.send(&[EHLO, MAIL].concat()), Next::Close);
    assert_eq!(
        client.take(),
        SYNC,
        "as in Exim, the EHLO itself is not answered"
    );
    assert!(client.sink.messages.is_empty());
}

#[test]
fn without_pipelining_every_command_is_a_synchronisation_point() {
    let mut client = no_early_pipelining();
    client.talk(b"HELO client.example\r\n");
    assert_eq!(client.send(&[MAIL, RCPT].concat()), Next::Close);
    assert_eq!(client.take(), SYNC, "not even MAIL is answered");
    let mut client = no_early_pipelining();
    assert_eq!(
        client.send(b"NOOP\r\nNOOP\r\n"),
        Next::Close,
        "before EHLO too"
    );
}

#[test]
fn with_pipelining_only_data_is_a_synchronisation_point() {
    let mut client = no_early_pipelining();
    client.talk(EHLO);
    assert_eq!(
        client
            .talk(&[MAIL, RCPT, b"NOOP\r\n", b"DATA\r\n"].concat())
            .lines()
            .count(),
        4
    );
}

#[test]
fn early_input_from_a_client_not_permitted_is_refused_without_a_banner() {
    let mut client = no_early_pipelining();
    assert_eq!(client.smtp.early_input(EHLO, &mut client.sink), Next::Close);
    assert_eq!(client.take(), SYNC);
    assert_eq!(client.send(b"QUIT\r\n"), Next::Close);
}

#[test]
fn early_input_gets_the_banner_then_its_replies_in_one_batch() {
    let mut client = Client::new();
    let early = [EHLO, MAIL, RCPT, b"DATA\r\n"].concat();
    assert_eq!(
        client.smtp.early_input(&early, &mut client.sink),
        Next::Continue
    );
    let expected = format!("220 {HOST} ESMTP gsmtpd\r\n")
        + &ehlo_reply(true, true)
        + "250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n";
    assert_eq!(client.take(), expected);
    client.talk(b"hi\r\n.\r\n");
    assert_eq!(
        client.sink.committed()[0].envelope.early_pipelining,
        Some(true)
    );
}

#[test]
fn pipeconnect_advertised_but_unused_or_not_advertised() {
    let mut client = Client::new();
    client.greet_and_take();
    for command in [EHLO, MAIL, RCPT, b"DATA\r\n", b"hi\r\n.\r\n"] {
        client.talk(command);
    }
    assert_eq!(
        client.sink.committed()[0].envelope.early_pipelining,
        Some(false)
    );
    let mut client = no_early_pipelining();
    for command in [EHLO, MAIL, RCPT, b"DATA\r\n", b"hi\r\n.\r\n"] {
        client.talk(command);
    }
    assert_eq!(client.sink.committed()[0].envelope.early_pipelining, None);
}

/// Found by fuzzing: the sink fixes the mailboxes when the first chunk
/// begins the message, so a later RCPT would be acknowledged and never
/// delivered (RFC 3030: every RCPT comes before the first BDAT).
#[test]
fn rcpt_after_the_first_bdat_chunk_is_refused() {
    let mut client = Client::in_transaction();
    client.talk(b"BDAT 3\r\nabc");
    assert_eq!(
        client.talk(b"RCPT TO:<late@example.org>\r\n"),
        "503 5.5.1 Error: RCPT not allowed after BDAT\r\n"
    );
    client.talk(b"BDAT 2 LAST\r\nde");
    let committed = client.sink.committed();
    assert_eq!(committed[0].envelope.recipients.len(), 1);
}
