//! Protocol tests: whole conversations with a scripted server, driven as
//! the delivery process would drive the engine, compared byte for byte,
//! and fed split at arbitrary points.

use std::collections::VecDeque;

use super::transaction::CONTENT_LOW_WATER;
use super::*;

const NAME: &str = "client.example";
const BANNER: &[u8] = b"220 mx.example.org ESMTP\r\n";
const MAIL_OK: &[u8] = b"250 2.1.0 Ok\r\n";
const RCPT_OK: &[u8] = b"250 2.1.5 Ok\r\n";
const GO_AHEAD: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
const QUEUED: &[u8] = b"250 2.0.0 Ok: queued as 4711\r\n";
const BYE: &[u8] = b"221 2.0.0 Bye\r\n";
const CONTENT: &[u8] = b"Subject: hi\r\n\r\nhello\r\n";

/// An EHLO reply with these keyword lines.
fn ehlo(keywords: &[&str]) -> Vec<u8> {
    let mut reply = String::new();
    let lines: Vec<&str> = std::iter::once("mx.example.org Hello")
        .chain(keywords.iter().copied())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        let separator = if i + 1 == lines.len() { ' ' } else { '-' };
        reply += &format!("250{separator}{line}\r\n");
    }
    reply.into_bytes()
}

fn full_ehlo() -> Vec<u8> {
    ehlo(&[
        "PIPELINING",
        "SIZE 10000",
        "8BITMIME",
        "SMTPUTF8",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
    ])
}

fn config(tls: TlsWanted) -> ClientConfig {
    ClientConfig {
        helo_name: NAME.into(),
        tls,
        implicit_tls: false,
        early: Early::default(),
    }
}

#[derive(Clone)]
struct Message {
    outgoing: Outgoing,
    content: Vec<u8>,
    /// The driver's chunk size.
    chunk: usize,
}

fn message(recipients: &[&str], content: &[u8]) -> Message {
    Message {
        outgoing: Outgoing {
            sender: "alice@example.net".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            eight_bit: false,
            smtputf8: false,
            size: content.len() as u64,
        },
        content: content.to_vec(),
        chunk: 1000,
    }
}

fn to_bob() -> Message {
    message(&["bob@example.org"], CONTENT)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TlsChoice {
    Continue,
    Quit,
}

/// What the driver does once the script has been fed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finally {
    Nothing,
    Lost,
    TimedOut,
}

struct Sending {
    id: MessageId,
    content: Vec<u8>,
    at: usize,
    chunk: usize,
}

/// The delivery process's side of the engine, as the module documentation
/// asks for it: `next_action()` until `Wait`, then write the output.
struct Driver {
    client: Client,
    wire: Vec<u8>,
    events: Vec<String>,
    queue: VecDeque<Message>,
    sending: Option<Sending>,
    tls_choice: TlsChoice,
    quit_when_idle: bool,
    /// Bytes written per write; usize::MAX writes everything.
    write_step: usize,
    closed: bool,
    finally: Finally,
    /// The waits seen when each script piece was fed.
    waits: Vec<Wait>,
}

#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    wire: String,
    events: Vec<String>,
}

impl Driver {
    fn new(config: ClientConfig, messages: Vec<Message>) -> Driver {
        Driver {
            client: Client::new(config),
            wire: Vec::new(),
            events: Vec::new(),
            queue: messages.into(),
            sending: None,
            tls_choice: TlsChoice::Continue,
            quit_when_idle: true,
            write_step: usize::MAX,
            closed: false,
            finally: Finally::Nothing,
            waits: Vec::new(),
        }
    }

    fn plain(messages: Vec<Message>) -> Driver {
        Driver::new(config(TlsWanted::Never), messages)
    }

    fn drive(&mut self) {
        loop {
            match self.client.next_action() {
                Action::Wait => {
                    if !self.write() {
                        break;
                    }
                }
                Action::StartTls => {
                    assert!(self.client.output().is_empty(), "output before TLS");
                    self.events.push("starttls".into());
                    self.client.tls_started();
                }
                Action::TlsRefused(reply) => {
                    self.events.push(format!("tls refused: {reply}"));
                    match self.tls_choice {
                        TlsChoice::Continue => self.client.continue_without_tls(),
                        TlsChoice::Quit => self.client.quit(),
                    }
                }
                Action::Ready => {
                    if let Some(message) = self.queue.pop_front() {
                        let id = self.client.submit(message.outgoing).expect("ready");
                        self.sending = Some(Sending {
                            id,
                            content: message.content,
                            at: 0,
                            chunk: message.chunk,
                        });
                    } else if self.quit_when_idle {
                        self.client.quit();
                    } else {
                        self.write();
                        break;
                    }
                }
                Action::NeedContent(id) => {
                    let sending = self.sending.as_mut().expect("content of no message");
                    assert_eq!(sending.id, id);
                    let end = (sending.at + sending.chunk).min(sending.content.len());
                    let chunk = &sending.content[sending.at..end];
                    sending.at = end;
                    self.client
                        .supply_content(chunk, end == sending.content.len());
                }
                Action::Done(delivery) => self.done(&delivery),
                Action::Closed(end) => {
                    let permanent = if end.is_permanent() {
                        " permanently"
                    } else {
                        ""
                    };
                    self.events.push(format!("closed{permanent}: {end}"));
                    while self.write() {}
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// One write of up to write_step bytes; false when there was nothing.
    fn write(&mut self) -> bool {
        let output = self.client.output();
        let n = output.len().min(self.write_step);
        self.wire.extend_from_slice(&output[..n]);
        self.client.consume_output(n);
        n > 0
    }

    fn done(&mut self, delivery: &Delivery) {
        for rcpt in &delivery.recipients {
            let outcome = match &rcpt.outcome {
                Outcome::Delivered(reply) => format!("delivered: {reply}"),
                Outcome::Deferred(failure) => format!("deferred: {failure}"),
                Outcome::Failed(failure) => format!("failed: {failure}"),
            };
            self.events
                .push(format!("#{} {} {outcome}", delivery.id.0, rcpt.address));
        }
    }

    fn feed(&mut self, piece: &[u8]) {
        self.waits.push(self.client.wait());
        self.client.receive(piece);
        self.drive();
    }

    fn run(mut self, pieces: &[&[u8]]) -> Transcript {
        self.drive();
        for piece in pieces {
            if self.closed {
                break;
            }
            self.feed(piece);
        }
        if !self.closed {
            match self.finally {
                Finally::Nothing => {}
                Finally::Lost => self.client.connection_lost(),
                Finally::TimedOut => self.client.timed_out(),
            }
            self.drive();
        }
        self.transcript()
    }

    fn transcript(&self) -> Transcript {
        Transcript {
            wire: String::from_utf8_lossy(&self.wire).into_owned(),
            events: self.events.clone(),
        }
    }
}

fn wire(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\r\n")).collect()
}

// ---------------------------------------------------------------- split helpers

/// Splits each segment (what the server sends at one time) into pieces of
/// the lengths `sizes` yields.
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

/// Asserts that every way of splitting the segments, and writing the
/// output a byte at a time, gives the whole-segment result.
fn assert_split_invariant(make: &dyn Fn() -> Driver, segments: &[&[u8]]) -> Transcript {
    let whole = make().run(segments);
    assert_eq!(
        make().run(&split(segments, &mut || 1)),
        whole,
        "byte by byte"
    );
    let mut trickle = make();
    trickle.write_step = 1;
    assert_eq!(trickle.run(segments), whole, "written a byte at a time");
    for seed in 0..20 {
        let max = [3, 17, 200][seed as usize % 3];
        let pieces = split(segments, &mut lcg(seed, max));
        assert_eq!(make().run(&pieces), whole, "seed {seed}");
    }
    for cut in split_everywhere(segments) {
        assert_eq!(make().run(&cut), whole);
    }
    whole
}

// ---------------------------------------------------------------- greeting

#[test]
fn plain_delivery_one_command_at_a_time() {
    let make = || Driver::plain(vec![to_bob()]);
    let result = assert_split_invariant(
        &make,
        &[
            BANNER,
            &ehlo(&["SIZE 10000"]),
            MAIL_OK,
            RCPT_OK,
            GO_AHEAD,
            QUEUED,
            BYE,
        ],
    );
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net> SIZE=22",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events,
        [
            "#0 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
}

#[test]
fn banner_classes() {
    let run = |banner: &[u8]| Driver::plain(vec![to_bob()]).run(&[banner]);
    let result = run(b"220-mx.example.org ESMTP\r\n220 no UCE\r\n");
    assert_eq!(result.wire, wire(&["EHLO client.example"]));
    assert!(result.events.is_empty());
    // Postfix takes any 2xx.
    assert_eq!(run(b"250 hi\r\n").wire, wire(&["EHLO client.example"]));
    let result = run(b"554 5.7.1 No SMTP service here\r\n");
    assert_eq!(result.wire, wire(&["QUIT"]));
    assert_eq!(
        result.events,
        [
            "closed permanently: 554 5.7.1 No SMTP service here (in reply to initial greeting command)"
        ]
    );
    let result = run(b"450 busy\r\n");
    assert_eq!(result.wire, wire(&["QUIT"]));
    assert_eq!(
        result.events,
        ["closed: 450 busy (in reply to initial greeting command)"]
    );
    // 421: the server is closing; no QUIT.
    let result = run(b"421 4.3.2 shutting down\r\n");
    assert_eq!(result.wire, "");
    assert_eq!(
        result.events,
        ["closed: 421 4.3.2 shutting down (in reply to initial greeting command)"]
    );
    let result = run(b"354 what\r\n");
    assert_eq!(result.wire, "");
    assert_eq!(
        result.events,
        ["closed: protocol error: unexpected reply to initial greeting: 354 what"]
    );
}

#[test]
fn ehlo_refused_temporarily_is_no_reason_for_helo() {
    let result = Driver::plain(vec![]).run(&[BANNER, b"421 4.7.0 try later\r\n"]);
    assert_eq!(result.wire, wire(&["EHLO client.example"]));
    assert_eq!(
        result.events,
        ["closed: 421 4.7.0 try later (in reply to EHLO command)"]
    );
    let result = Driver::plain(vec![]).run(&[BANNER, b"451 later\r\n"]);
    assert_eq!(result.wire, wire(&["EHLO client.example", "QUIT"]));
    assert_eq!(
        result.events,
        ["closed: 451 later (in reply to EHLO command)"]
    );
}

#[test]
fn helo_fallback_uses_no_extensions() {
    let mut message = to_bob();
    message.outgoing.eight_bit = true;
    let make = || Driver::plain(vec![message.clone()]);
    let result = assert_split_invariant(
        &make,
        &[
            BANNER,
            b"500 5.5.1 What?\r\n",
            b"250 mx.example.org\r\n",
            MAIL_OK,
            RCPT_OK,
            GO_AHEAD,
            QUEUED,
            BYE,
        ],
    );
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "HELO client.example",
            // 8-bit content to a server without 8BITMIME: sent as it is.
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events[0],
        "#0 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711"
    );
    let mut driver = Driver::plain(vec![]);
    driver.quit_when_idle = false;
    driver.drive();
    for piece in [BANNER, b"502 no\r\n", b"250 ok\r\n"] {
        driver.feed(piece);
    }
    assert_eq!(driver.client.ehlo(), None);
    assert!(matches!(driver.client.next_action(), Action::Ready));
}

#[test]
fn refusal_completes_a_partly_written_command() {
    let mut client = Client::new(config(TlsWanted::Never));
    client.receive(BANNER);
    client.consume_output(4);
    // A server that answers before our EHLO is all out. After a 421
    // nothing more is sent: no QUIT follows to need the line's end.
    client.receive(b"421 4.7.0 go away\r\n");
    assert_eq!(client.output(), b"");
    let mut client = Client::new(config(TlsWanted::Never));
    client.receive(BANNER);
    client.consume_output(4);
    client.receive(b"451 4.7.0 later\r\n");
    assert_eq!(client.output(), b" client.example\r\nQUIT\r\n");
    assert!(matches!(
        client.next_action(),
        Action::Closed(End::Refused { .. })
    ));
}

#[test]
fn helo_refused() {
    let result = Driver::plain(vec![]).run(&[BANNER, b"502 no\r\n", b"550 go away\r\n"]);
    assert_eq!(
        result.wire,
        wire(&["EHLO client.example", "HELO client.example", "QUIT"])
    );
    assert_eq!(
        result.events,
        ["closed permanently: 550 go away (in reply to HELO command)"]
    );
    let result = Driver::plain(vec![]).run(&[BANNER, b"502 no\r\n", b"450 later\r\n"]);
    assert_eq!(
        result.events,
        ["closed: 450 later (in reply to HELO command)"]
    );
}

#[test]
fn ehlo_reply_is_kept_as_received() {
    let reply = b"250-mx.example.org greets you\r\n250-PIPELINING\r\n250-SIZE 52428800\n250 PIPECONNECT\r\n";
    let mut driver = Driver::plain(vec![]);
    driver.quit_when_idle = false;
    driver.drive();
    driver.feed(BANNER);
    driver.feed(reply);
    let ehlo = driver.client.ehlo().expect("EHLO reply");
    assert_eq!(ehlo.raw, reply);
    assert_eq!(
        ehlo.lines,
        [
            "mx.example.org greets you",
            "PIPELINING",
            "SIZE 52428800",
            "PIPECONNECT"
        ]
    );
    assert!(ehlo.pipelining && ehlo.pipe_connect && ehlo.size);
    assert_eq!(ehlo.size_limit, Some(52428800));
    assert!(!ehlo.chunking && !ehlo.starttls);
}

#[test]
fn helo_name_cannot_break_the_command_line() {
    let mut config = config(TlsWanted::Never);
    config.helo_name = "evil\r\nMAIL FROM:<x>".into();
    let result = Driver::new(config, vec![]).run(&[BANNER]);
    assert_eq!(result.wire, wire(&["EHLO evil??MAIL FROM:<x>"]));
}

// ---------------------------------------------------------------- STARTTLS

#[test]
fn starttls_then_only_the_new_ehlo_reply_counts() {
    let make = || Driver::new(config(TlsWanted::IfOffered), vec![to_bob()]);
    let before = ehlo(&["PIPELINING", "STARTTLS", "SIZE 10"]);
    // Inside TLS: no PIPELINING, no SIZE limit, STARTTLS again (ignored).
    let after = ehlo(&["STARTTLS", "SIZE"]);
    let result = assert_split_invariant(
        &make,
        &[
            BANNER,
            &before,
            b"220 2.0.0 Ready to start TLS\r\n",
            &after,
            MAIL_OK,
            RCPT_OK,
            GO_AHEAD,
            QUEUED,
            BYE,
        ],
    );
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "STARTTLS",
            "EHLO client.example",
            "MAIL FROM:<alice@example.net> SIZE=22",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events,
        [
            "starttls",
            "#0 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
}

#[test]
fn starttls_policies() {
    let offered = ehlo(&["STARTTLS"]);
    let not_offered = ehlo(&["PIPELINING"]);
    let run = |tls, reply: &[u8]| {
        let mut driver = Driver::new(config(tls), vec![]);
        driver.quit_when_idle = false;
        let result = driver.run(&[BANNER, reply]);
        (result, driver_tls_state(tls, reply))
    };
    fn driver_tls_state(tls: TlsWanted, reply: &[u8]) -> bool {
        let mut driver = Driver::new(config(tls), vec![]);
        driver.quit_when_idle = false;
        driver.drive();
        driver.feed(BANNER);
        driver.feed(reply);
        matches!(driver.client.next_action(), Action::Ready)
    }
    // none: never, even when offered.
    let (result, ready) = run(TlsWanted::Never, &offered);
    assert_eq!(result.wire, wire(&["EHLO client.example"]));
    assert!(ready);
    // may: not offered, plaintext.
    let (result, ready) = run(TlsWanted::IfOffered, &not_offered);
    assert_eq!(result.wire, wire(&["EHLO client.example"]));
    assert!(ready);
    // may and must: offered, STARTTLS.
    for tls in [TlsWanted::IfOffered, TlsWanted::Required] {
        let (result, ready) = run(tls, &offered);
        assert_eq!(result.wire, wire(&["EHLO client.example", "STARTTLS"]));
        assert!(!ready);
    }
    // must: not offered, the connection fails temporarily.
    let (result, _) = run(TlsWanted::Required, &not_offered);
    assert_eq!(result.wire, wire(&["EHLO client.example", "QUIT"]));
    assert_eq!(
        result.events,
        ["closed: TLS is required, but STARTTLS is not offered"]
    );
    // must, with implicit TLS: satisfied from the start.
    let mut implicit = config(TlsWanted::Required);
    implicit.implicit_tls = true;
    let mut driver = Driver::new(implicit, vec![]);
    driver.quit_when_idle = false;
    let result = driver.run(&[BANNER, &offered]);
    assert_eq!(result.wire, wire(&["EHLO client.example"]));
    assert!(result.events.is_empty());
}

#[test]
fn starttls_refused() {
    let offered = ehlo(&["STARTTLS", "PIPELINING"]);
    let refusal: &[u8] = b"454 4.7.0 TLS not available due to temporary reason\r\n";
    // must: deferred.
    let result =
        Driver::new(config(TlsWanted::Required), vec![to_bob()]).run(&[BANNER, &offered, refusal]);
    assert_eq!(
        result.wire,
        wire(&["EHLO client.example", "STARTTLS", "QUIT"])
    );
    assert_eq!(
        result.events,
        [
            "closed: 454 4.7.0 TLS not available due to temporary reason (in reply to STARTTLS command)"
        ]
    );
    // may: the driver goes on in plaintext on this connection ...
    let result = Driver::new(config(TlsWanted::IfOffered), vec![to_bob()]).run(&[
        BANNER,
        &offered,
        refusal,
        &[MAIL_OK, RCPT_OK, GO_AHEAD].concat(),
        QUEUED,
        BYE,
    ]);
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "STARTTLS",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events,
        [
            "tls refused: 454 4.7.0 TLS not available due to temporary reason",
            "#0 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
    // ... or gives up on it.
    let mut driver = Driver::new(config(TlsWanted::IfOffered), vec![to_bob()]);
    driver.tls_choice = TlsChoice::Quit;
    let result = driver.run(&[BANNER, &offered, b"502 5.5.1 no\r\n", BYE]);
    assert_eq!(
        result.wire,
        wire(&["EHLO client.example", "STARTTLS", "QUIT"])
    );
    assert_eq!(result.events, ["tls refused: 502 5.5.1 no", "closed: QUIT"]);
}

#[test]
fn starttls_response_injection_fails_the_connection() {
    let offered = ehlo(&["STARTTLS"]);
    let injection =
        "closed: protocol error: plaintext after the reply to STARTTLS (response injection)";
    for (go, rest) in [
        (
            b"220 go\r\n".as_slice(),
            b"250-fake\r\n250 PIPELINING\r\n".as_slice(),
        ),
        (b"220 go\r\n", b"2"),
        (b"220 go\r\n", b"\n"),
    ] {
        // In the same read as the 220 ...
        let result = Driver::new(config(TlsWanted::IfOffered), vec![to_bob()]).run(&[
            BANNER,
            &offered,
            &[go, rest].concat(),
        ]);
        assert_eq!(result.events, [injection], "{rest:?}");
        assert_eq!(result.wire, wire(&["EHLO client.example", "STARTTLS"]));
        // ... or in a later one, before the handshake is done.
        let mut driver = Driver::new(config(TlsWanted::IfOffered), vec![to_bob()]);
        driver.drive();
        for piece in [BANNER, &offered] {
            driver.feed(piece);
        }
        driver.client.receive(go);
        assert!(matches!(driver.client.next_action(), Action::StartTls));
        driver.client.receive(rest);
        assert_eq!(
            driver.client.next_action(),
            Action::Closed(End::Error(ConnectionError::Protocol(
                ProtocolError::StartTlsInjection
            )))
        );
        // tls_started now changes nothing.
        driver.client.tls_started();
        assert!(driver.client.output().is_empty());
        assert!(!driver.client.is_tls());
    }
}

#[test]
fn starttls_waits_for_the_output_to_drain() {
    let mut client = Client::new(config(TlsWanted::IfOffered));
    client.receive(BANNER);
    client.receive(&ehlo(&["STARTTLS"]));
    // A server that answers before our STARTTLS was written.
    client.receive(b"220 go\r\n");
    assert_eq!(client.next_action(), Action::Wait);
    assert_eq!(client.wait(), Wait::Tls);
    let n = client.output().len();
    client.consume_output(n);
    assert_eq!(client.next_action(), Action::StartTls);
    client.tls_started();
    assert!(client.is_tls());
    assert_eq!(client.output(), b"EHLO client.example\r\n");
    assert_eq!(client.wait(), Wait::Hello);
}

// ---------------------------------------------------------------- MAIL

#[test]
fn mail_parameters() {
    let run = |ehlo_reply: &[u8], eight_bit: bool, smtputf8: bool| {
        let mut message = to_bob();
        message.outgoing.eight_bit = eight_bit;
        message.outgoing.smtputf8 = smtputf8;
        let result = Driver::plain(vec![message]).run(&[BANNER, ehlo_reply]);
        result.wire.lines().nth(1).unwrap_or_default().to_owned()
    };
    let all = ehlo(&["SIZE 1000", "8BITMIME", "SMTPUTF8"]);
    assert_eq!(
        run(&all, false, false),
        "MAIL FROM:<alice@example.net> SIZE=22"
    );
    assert_eq!(
        run(&all, true, true),
        "MAIL FROM:<alice@example.net> SIZE=22 BODY=8BITMIME SMTPUTF8"
    );
    let none = ehlo(&["SMTPUTF8"]);
    assert_eq!(run(&none, true, false), "MAIL FROM:<alice@example.net>");
    assert_eq!(
        run(&none, true, true),
        "MAIL FROM:<alice@example.net> SMTPUTF8"
    );
}

#[test]
fn null_sender() {
    let mut bounce = to_bob();
    bounce.outgoing.sender = String::new();
    let result = Driver::plain(vec![bounce]).run(&[BANNER, &ehlo(&[])]);
    assert_eq!(result.wire, wire(&["EHLO client.example", "MAIL FROM:<>"]));
}

#[test]
fn mail_refused_pipelined() {
    for (reply, kind) in [
        (b"451 4.3.0 try again\r\n".as_slice(), "deferred"),
        (b"553 5.7.1 sender rejected\r\n", "failed"),
    ] {
        let make = || {
            Driver::plain(vec![
                message(&["a@example.org", "b@example.org"], CONTENT),
                to_bob(),
            ])
        };
        let replies = [
            reply,
            b"503 5.5.1 need MAIL\r\n",
            b"503 5.5.1 need MAIL\r\n",
            b"503 5.5.1 need MAIL\r\n",
        ]
        .concat();
        let result = assert_split_invariant(
            &make,
            &[
                BANNER,
                &full_ehlo(),
                &replies,
                &[MAIL_OK, RCPT_OK].concat(),
                QUEUED,
                BYE,
            ],
        );
        let text = String::from_utf8_lossy(reply);
        let text = text.trim_end();
        assert_eq!(
            result.wire,
            wire(&[
                "EHLO client.example",
                "MAIL FROM:<alice@example.net> SIZE=22",
                "RCPT TO:<a@example.org>",
                "RCPT TO:<b@example.org>",
                "BDAT 22 LAST",
                "Subject: hi",
                "",
                "hello",
                // No RSET: the server holds no transaction.
                "MAIL FROM:<alice@example.net> SIZE=22",
                "RCPT TO:<bob@example.org>",
                "BDAT 22 LAST",
                "Subject: hi",
                "",
                "hello",
                "QUIT",
            ])
        );
        assert_eq!(
            result.events,
            [
                format!("#0 a@example.org {kind}: {text} (in reply to MAIL FROM command)"),
                format!("#0 b@example.org {kind}: {text} (in reply to MAIL FROM command)"),
                "#1 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711".into(),
                "closed: QUIT".into(),
            ]
        );
    }
}

/// A server without CHUNKING, with PIPELINING.
fn pipelining_ehlo() -> Vec<u8> {
    ehlo(&["PIPELINING", "ENHANCEDSTATUSCODES"])
}

#[test]
fn mail_refused_one_command_at_a_time() {
    let result = Driver::plain(vec![message(&["a@example.org", "b@example.org"], CONTENT)]).run(&[
        BANNER,
        &ehlo(&[]),
        b"550 5.7.1 no\r\n",
        BYE,
    ]);
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net>",
            "QUIT"
        ])
    );
    assert_eq!(
        result.events,
        [
            "#0 a@example.org failed: 550 5.7.1 no (in reply to MAIL FROM command)",
            "#0 b@example.org failed: 550 5.7.1 no (in reply to MAIL FROM command)",
            "closed: QUIT"
        ]
    );
}

// ---------------------------------------------------------------- RCPT

#[test]
fn recipients_pipelined_some_refused() {
    let make = || {
        Driver::plain(vec![message(
            &["a@example.org", "b@example.org", "c@example.org"],
            CONTENT,
        )])
    };
    let replies = [
        MAIL_OK,
        RCPT_OK,
        b"450-4.2.0 mailbox busy\r\n450 4.2.0 try later\r\n",
        b"550 5.1.1 no such user\r\n",
        GO_AHEAD,
    ]
    .concat();
    let result =
        assert_split_invariant(&make, &[BANNER, &pipelining_ehlo(), &replies, QUEUED, BYE]);
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<a@example.org>",
            "RCPT TO:<b@example.org>",
            "RCPT TO:<c@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events,
        [
            "#0 a@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "#0 b@example.org deferred: 450 4.2.0 mailbox busy try later (in reply to RCPT TO command)",
            "#0 c@example.org failed: 550 5.1.1 no such user (in reply to RCPT TO command)",
            "closed: QUIT"
        ]
    );
}

#[test]
fn pipelined_group_goes_out_in_one_write() {
    let mut client = Client::new(config(TlsWanted::Never));
    client.receive(BANNER);
    client.receive(&pipelining_ehlo());
    let n = client.output().len();
    client.consume_output(n);
    assert_eq!(client.next_action(), Action::Ready);
    client
        .submit(message(&["a@example.org", "b@example.org"], CONTENT).outgoing)
        .unwrap();
    assert_eq!(
        client.output(),
        wire(&[
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<a@example.org>",
            "RCPT TO:<b@example.org>",
            "DATA"
        ])
        .as_bytes()
    );
    assert_eq!(client.wait(), Wait::Mail);
    // Not ready for another message meanwhile.
    assert_eq!(client.next_action(), Action::Wait);
    assert!(client.submit(to_bob().outgoing).is_err());
}

#[test]
fn recipients_one_at_a_time() {
    let make = || Driver::plain(vec![message(&["a@example.org", "b@example.org"], CONTENT)]);
    let result = assert_split_invariant(
        &make,
        &[
            BANNER,
            &ehlo(&[]),
            MAIL_OK,
            b"550 5.1.1 unknown\r\n",
            RCPT_OK,
            GO_AHEAD,
            QUEUED,
            BYE,
        ],
    );
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<a@example.org>",
            "RCPT TO:<b@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events,
        [
            "#0 a@example.org failed: 550 5.1.1 unknown (in reply to RCPT TO command)",
            "#0 b@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
}

#[test]
fn no_recipient_accepted_pipelined_then_rset() {
    let make = || Driver::plain(vec![message(&["a@example.org"], CONTENT), to_bob()]);
    let refused = [
        MAIL_OK,
        b"550 5.1.1 unknown\r\n",
        b"554 5.5.1 No valid recipients\r\n",
    ]
    .concat();
    let second = [
        b"250 2.0.0 Reset\r\n".as_slice(),
        MAIL_OK,
        RCPT_OK,
        GO_AHEAD,
    ]
    .concat();
    let result = assert_split_invariant(
        &make,
        &[BANNER, &pipelining_ehlo(), &refused, &second, QUEUED, BYE],
    );
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<a@example.org>",
            "DATA",
            "RSET",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events,
        [
            "#0 a@example.org failed: 550 5.1.1 unknown (in reply to RCPT TO command)",
            "#1 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
}

#[test]
fn no_recipient_accepted_but_the_server_says_354() {
    let make = || Driver::plain(vec![message(&["a@example.org"], CONTENT), to_bob()]);
    let refused = [MAIL_OK, b"450 4.1.1 later\r\n", GO_AHEAD].concat();
    let result = assert_split_invariant(
        &make,
        &[
            BANNER,
            &pipelining_ehlo(),
            &refused,
            b"554 5.5.1 no valid recipients\r\n",
            &[MAIL_OK, RCPT_OK, GO_AHEAD].concat(),
            QUEUED,
        ],
    );
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<a@example.org>",
            "DATA",
            // An empty message, ended at once; that ends the transaction.
            ".",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events[0],
        "#0 a@example.org deferred: 450 4.1.1 later (in reply to RCPT TO command)"
    );
}

#[test]
fn no_recipient_accepted_one_at_a_time_then_rset() {
    let make = || Driver::plain(vec![message(&["a@example.org"], CONTENT), to_bob()]);
    let result = assert_split_invariant(
        &make,
        &[
            BANNER,
            &ehlo(&[]),
            MAIL_OK,
            b"550 no\r\n",
            b"250 reset\r\n",
            MAIL_OK,
            RCPT_OK,
            GO_AHEAD,
            QUEUED,
            BYE,
        ],
    );
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<a@example.org>",
            "RSET",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events,
        [
            "#0 a@example.org failed: 550 no (in reply to RCPT TO command)",
            "#1 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
}

#[test]
fn quit_needs_no_rset() {
    let result = Driver::plain(vec![message(&["a@example.org"], CONTENT)]).run(&[
        BANNER,
        &ehlo(&[]),
        MAIL_OK,
        b"550 no\r\n",
        BYE,
    ]);
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<a@example.org>",
            "QUIT"
        ])
    );
}

#[test]
fn rset_refused_defers_the_message() {
    let make = || Driver::plain(vec![message(&["a@example.org"], CONTENT), to_bob()]);
    let refused = [
        MAIL_OK,
        b"550 5.1.1 unknown\r\n",
        b"554 5.5.1 No valid recipients\r\n",
    ]
    .concat();
    let second = [b"500 5.5.1 what RSET\r\n".as_slice(), MAIL_OK].concat();
    let result = assert_split_invariant(&make, &[BANNER, &pipelining_ehlo(), &refused, &second]);
    assert!(result.wire.ends_with(
        "RSET\r\nMAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nQUIT\r\n"
    ));
    assert_eq!(
        &result.events[1..],
        [
            "#1 bob@example.org deferred: 500 5.5.1 what RSET (in reply to RSET command)",
            "closed: 500 5.5.1 what RSET (in reply to RSET command)"
        ]
    );
}

// ---------------------------------------------------------------- DATA

#[test]
fn data_refused_applies_to_accepted_recipients() {
    for (reply, kind) in [
        (b"451 4.3.0 no\r\n".as_slice(), "deferred"),
        (b"554 5.5.0 no\r\n", "failed"),
    ] {
        let replies = [MAIL_OK, RCPT_OK, b"550 5.1.1 unknown\r\n", reply].concat();
        let result = Driver::plain(vec![
            message(&["a@example.org", "b@example.org"], CONTENT),
            to_bob(),
        ])
        .run(&[BANNER, &pipelining_ehlo(), &replies, b"250 ok\r\n"]);
        assert_eq!(
            result.events[..2],
            [
                format!(
                    "#0 a@example.org {kind}: {} (in reply to DATA command)",
                    String::from_utf8_lossy(reply).trim_end()
                ),
                "#0 b@example.org failed: 550 5.1.1 unknown (in reply to RCPT TO command)".into(),
            ]
        );
        // MAIL was accepted: RSET before the next one.
        assert!(result.wire.ends_with(
            "DATA\r\nRSET\r\nMAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
        ));
    }
}

#[test]
fn end_of_data_classes() {
    for (reply, event) in [
        (
            b"250 2.0.0 Ok: queued as ABC\r\n".as_slice(),
            "delivered: 250 2.0.0 Ok: queued as ABC",
        ),
        (
            b"452 4.3.1 Insufficient system storage\r\n",
            "deferred: 452 4.3.1 Insufficient system storage (in reply to end of DATA command)",
        ),
        (
            b"554 5.7.1 Spam\r\n",
            "failed: 554 5.7.1 Spam (in reply to end of DATA command)",
        ),
    ] {
        let make = || {
            Driver::plain(vec![
                message(&["a@example.org", "b@example.org"], CONTENT),
                to_bob(),
            ])
        };
        let result = assert_split_invariant(
            &make,
            &[
                BANNER,
                &pipelining_ehlo(),
                &[MAIL_OK, RCPT_OK, RCPT_OK, GO_AHEAD].concat(),
                reply,
                &[MAIL_OK, RCPT_OK, GO_AHEAD].concat(),
                QUEUED,
            ],
        );
        assert_eq!(
            result.events[..2],
            [
                format!("#0 a@example.org {event}"),
                format!("#0 b@example.org {event}")
            ]
        );
        assert_eq!(
            result.events[2],
            "#1 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711"
        );
        // The end of data ends the server's transaction, whatever the reply.
        assert!(!result.wire.contains("RSET"));
    }
}

#[test]
fn dot_stuffing_and_line_ends() {
    let content = b"Subject: dots\r\n\r\n.\r\n..two\r\nmid.dle\r\n.\nbare\rcr\r\nno end";
    let mut message = message(&["bob@example.org"], content);
    message.chunk = 3;
    let make = || Driver::plain(vec![message.clone()]);
    let result = assert_split_invariant(
        &make,
        &[BANNER, &ehlo(&[]), MAIL_OK, RCPT_OK, GO_AHEAD, QUEUED],
    );
    let body = result.wire.split_once("DATA\r\n").unwrap().1;
    assert_eq!(
        body,
        "Subject: dots\r\n\r\n..\r\n...two\r\nmid.dle\r\n..\r\nbare\r\ncr\r\nno end\r\n.\r\nQUIT\r\n"
    );
}

#[test]
fn empty_content() {
    let result = Driver::plain(vec![message(&["bob@example.org"], b"")]).run(&[
        BANNER,
        &ehlo(&[]),
        MAIL_OK,
        RCPT_OK,
        GO_AHEAD,
    ]);
    assert!(result.wire.ends_with("DATA\r\n.\r\n"));
    let result = Driver::plain(vec![message(&["bob@example.org"], b"")]).run(&[
        BANNER,
        &ehlo(&["CHUNKING"]),
        MAIL_OK,
        RCPT_OK,
    ]);
    assert!(
        result
            .wire
            .ends_with("RCPT TO:<bob@example.org>\r\nBDAT 0 LAST\r\n")
    );
}

#[test]
fn content_is_asked_for_while_little_is_waiting() {
    let content = vec![b'x'; 3 * CONTENT_LOW_WATER];
    let mut client = Client::new(config(TlsWanted::Never));
    client.receive(BANNER);
    client.receive(&pipelining_ehlo());
    assert_eq!(client.next_action(), Action::Ready);
    let id = client
        .submit(message(&["bob@example.org"], &content).outgoing)
        .unwrap();
    client.receive(&[MAIL_OK, RCPT_OK, GO_AHEAD].concat());
    let mut supplied = 0;
    while let Action::NeedContent(asked) = client.next_action() {
        assert_eq!(asked, id);
        client.supply_content(&content[supplied..supplied + 1000], false);
        supplied += 1000;
    }
    // Stops asking once the low-water mark is passed ...
    assert!(client.output().len() >= CONTENT_LOW_WATER);
    assert!(client.output().len() < CONTENT_LOW_WATER + 2000);
    assert_eq!(client.wait(), Wait::DataBlock);
    // ... and asks again once the output drains.
    let n = client.output().len();
    client.consume_output(n);
    assert_eq!(client.next_action(), Action::NeedContent(id));
    client.supply_content(b"", true);
    assert_eq!(client.wait(), Wait::DataBlock);
    let n = client.output().len();
    client.consume_output(n);
    assert_eq!(client.wait(), Wait::DataEnd);
}

// ---------------------------------------------------------------- BDAT

#[test]
fn bdat_pipelined() {
    let mut message = message(&["a@example.org", "b@example.org"], b"0123456789abcdefghij");
    message.chunk = 8;
    let make = || Driver::plain(vec![message.clone()]);
    let first = [
        MAIL_OK,
        RCPT_OK,
        b"550 5.1.1 unknown\r\n",
        b"250 2.0.0 8 octets\r\n",
    ]
    .concat();
    let result = assert_split_invariant(
        &make,
        &[
            BANNER,
            &full_ehlo(),
            &first,
            b"250 2.0.0 8 octets\r\n",
            b"250 2.0.0 queued\r\n",
            BYE,
        ],
    );
    assert_eq!(
        result.wire,
        [
            "EHLO client.example\r\n",
            "MAIL FROM:<alice@example.net> SIZE=20\r\n",
            "RCPT TO:<a@example.org>\r\n",
            "RCPT TO:<b@example.org>\r\n",
            // The first chunk with the recipients, the rest once they are
            // answered, without waiting for each other's replies.
            "BDAT 8\r\n01234567",
            "BDAT 8\r\n89abcdef",
            "BDAT 6 LAST\r\nghij\r\n",
            "QUIT\r\n",
        ]
        .concat()
    );
    assert_eq!(
        result.events,
        [
            "#0 a@example.org delivered: 250 2.0.0 queued",
            "#0 b@example.org failed: 550 5.1.1 unknown (in reply to RCPT TO command)",
            "closed: QUIT"
        ]
    );
}

#[test]
fn bdat_pipelined_in_one_write() {
    let mut client = Client::new(config(TlsWanted::Never));
    client.receive(BANNER);
    client.receive(&full_ehlo());
    let n = client.output().len();
    client.consume_output(n);
    let id = client.submit(to_bob().outgoing).unwrap();
    assert_eq!(client.next_action(), Action::NeedContent(id));
    client.supply_content(CONTENT, true);
    assert_eq!(
        client.output(),
        [
            "MAIL FROM:<alice@example.net> SIZE=22\r\n",
            "RCPT TO:<bob@example.org>\r\n",
            "BDAT 22 LAST\r\nSubject: hi\r\n\r\nhello\r\n",
        ]
        .concat()
        .as_bytes()
    );
    assert_eq!(client.next_action(), Action::Wait);
}

#[test]
fn bdat_one_chunk_at_a_time() {
    let mut message = message(&["bob@example.org"], b"0123456789abcdefghij\r\n");
    message.chunk = 10;
    let make = || Driver::plain(vec![message.clone()]);
    let result = assert_split_invariant(
        &make,
        &[
            BANNER,
            &ehlo(&["CHUNKING"]),
            MAIL_OK,
            RCPT_OK,
            b"250 2.0.0 10 octets\r\n",
            b"250 2.0.0 10 octets\r\n",
            b"250 2.0.0 queued\r\n",
        ],
    );
    assert_eq!(
        result.wire,
        [
            "EHLO client.example\r\n",
            "MAIL FROM:<alice@example.net>\r\n",
            "RCPT TO:<bob@example.org>\r\n",
            "BDAT 10\r\n0123456789",
            "BDAT 10\r\nabcdefghij",
            "BDAT 2 LAST\r\n\r\n",
            "QUIT\r\n",
        ]
        .concat()
    );
    assert_eq!(
        result.events[0],
        "#0 bob@example.org delivered: 250 2.0.0 queued"
    );
}

#[test]
fn bdat_refused_chunk_stops_the_message() {
    for (reply, kind) in [
        (b"452 4.3.1 full\r\n".as_slice(), "deferred"),
        (b"552 5.3.4 too big\r\n", "failed"),
    ] {
        let text = String::from_utf8_lossy(reply);
        let expected = [
            format!(
                "#0 a@example.org {kind}: {} (in reply to BDAT command)",
                text.trim_end()
            ),
            "#1 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711".into(),
            "closed: QUIT".into(),
        ];
        let mut first = message(&["a@example.org"], b"0123456789abcdefghij");
        first.chunk = 5;
        let second: &[u8] = &[b"250 2.0.0 reset\r\n".as_slice(), MAIL_OK, RCPT_OK, QUEUED].concat();
        // One chunk at a time: none after the refused one.
        let make = || Driver::plain(vec![first.clone(), to_bob()]);
        let result = assert_split_invariant(
            &make,
            &[
                BANNER,
                &ehlo(&["CHUNKING"]),
                MAIL_OK,
                RCPT_OK,
                b"250 2.0.0 5 octets\r\n",
                reply,
                b"250 2.0.0 reset\r\n",
                MAIL_OK,
                RCPT_OK,
                QUEUED,
                BYE,
            ],
        );
        assert_eq!(result.events, expected);
        assert!(
            result
                .wire
                .contains("BDAT 5\r\n01234BDAT 5\r\n56789RSET\r\nMAIL"),
            "{}",
            result.wire
        );
        // Pipelined: the chunks already sent are answered, then RSET.
        let make = || Driver::plain(vec![first.clone(), to_bob()]);
        let chunk_replies = [
            b"250 2.0.0 5 octets\r\n".as_slice(),
            reply,
            b"503 5.5.1 chunk after a failure\r\n",
            b"503 5.5.1 chunk after a failure\r\n",
        ]
        .concat();
        let result = assert_split_invariant(
            &make,
            &[
                BANNER,
                &full_ehlo(),
                &[MAIL_OK, RCPT_OK].concat(),
                &chunk_replies,
                second,
                BYE,
            ],
        );
        assert_eq!(result.events, expected);
        assert!(
            result
                .wire
                .contains("abcdeBDAT 7 LAST\r\nfghij\r\nRSET\r\nMAIL"),
            "{}",
            result.wire
        );
    }
}

#[test]
fn bdat_last_refused() {
    for (reply, event) in [
        (
            b"554 5.7.1 rejected as spam\r\n".as_slice(),
            "failed: 554 5.7.1 rejected as spam (in reply to BDAT LAST command)",
        ),
        (
            b"451 4.7.1 greylisted\r\n",
            "deferred: 451 4.7.1 greylisted (in reply to BDAT LAST command)",
        ),
    ] {
        let make = || Driver::plain(vec![to_bob(), to_bob()]);
        let result = assert_split_invariant(
            &make,
            &[
                BANNER,
                &full_ehlo(),
                &[MAIL_OK, RCPT_OK, reply].concat(),
                &[b"250 2.0.0 reset\r\n".as_slice(), MAIL_OK, RCPT_OK, QUEUED].concat(),
            ],
        );
        assert_eq!(
            result.events[..2],
            [
                format!("#0 bob@example.org {event}"),
                "#1 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711".into(),
            ]
        );
        // RFC 3030 does not say the transaction is over: RSET to be sure.
        assert!(result.wire.contains("hello\r\nRSET\r\nMAIL"));
    }
}

#[test]
fn bdat_pipelined_with_no_recipient_accepted() {
    let mut message = message(&["a@example.org"], b"0123456789");
    message.chunk = 4;
    let make = || Driver::plain(vec![message.clone(), to_bob()]);
    let replies = [
        MAIL_OK,
        b"550 5.1.1 unknown\r\n",
        b"503 5.5.1 no valid recipients\r\n",
    ]
    .concat();
    let result = assert_split_invariant(
        &make,
        &[
            BANNER,
            &full_ehlo(),
            &replies,
            &[b"250 reset\r\n".as_slice(), MAIL_OK, RCPT_OK, QUEUED].concat(),
        ],
    );
    assert_eq!(
        result.wire,
        [
            "EHLO client.example\r\n",
            "MAIL FROM:<alice@example.net> SIZE=10\r\n",
            "RCPT TO:<a@example.org>\r\n",
            "BDAT 4\r\n0123",
            "RSET\r\n",
            "MAIL FROM:<alice@example.net> SIZE=22\r\n",
            "RCPT TO:<bob@example.org>\r\n",
            "BDAT 22 LAST\r\nSubject: hi\r\n\r\nhello\r\n",
            "QUIT\r\n",
        ]
        .concat()
    );
    assert_eq!(
        result.events[..2],
        [
            "#0 a@example.org failed: 550 5.1.1 unknown (in reply to RCPT TO command)",
            "#1 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711"
        ]
    );
}

#[test]
fn bdat_and_data_deliver_the_same_bytes() {
    let content = b"a\r\n.b\nc\rd\r\n..\r\nend";
    let data = Driver::plain(vec![message(&["bob@example.org"], content)]).run(&[
        BANNER,
        &ehlo(&[]),
        MAIL_OK,
        RCPT_OK,
        GO_AHEAD,
    ]);
    let stuffed = data.wire.split_once("DATA\r\n").unwrap().1;
    let stuffed = stuffed.strip_suffix(".\r\n").unwrap();
    let unstuffed: String = stuffed
        .split_inclusive("\r\n")
        .map(|line| line.strip_prefix('.').unwrap_or(line))
        .collect();
    let bdat = Driver::plain(vec![message(&["bob@example.org"], content)]).run(&[
        BANNER,
        &ehlo(&["CHUNKING"]),
        MAIL_OK,
        RCPT_OK,
    ]);
    let raw = bdat.wire.split_once("LAST\r\n").unwrap().1;
    assert_eq!(unstuffed, raw);
    assert_eq!(raw, "a\r\n.b\r\nc\r\nd\r\n..\r\nend\r\n");
}

// ---------------------------------------------------------------- refusals before sending

#[test]
fn too_big_and_smtputf8_fail_without_being_sent() {
    let mut big = message(&["a@example.org", "b@example.org"], CONTENT);
    big.outgoing.size = 10_001;
    let mut utf8 = to_bob();
    utf8.outgoing.smtputf8 = true;
    let mut utf8_address = message(&["j\u{f6}rg@example.org"], CONTENT);
    utf8_address.outgoing.sender = "alice@example.net".into();
    let reply = ehlo(&["PIPELINING", "SIZE 10000"]);
    let result = Driver::plain(vec![big, utf8, utf8_address, to_bob()]).run(&[
        BANNER,
        &reply,
        &[MAIL_OK, RCPT_OK, GO_AHEAD].concat(),
        QUEUED,
    ]);
    assert_eq!(
        result.events,
        [
            "#0 a@example.org failed: message size 10001 exceeds the size limit 10000 of the server",
            "#0 b@example.org failed: message size 10001 exceeds the size limit 10000 of the server",
            "#1 bob@example.org failed: the message needs SMTPUTF8, which the server does not offer",
            "#2 j\u{f6}rg@example.org failed: the message needs SMTPUTF8, which the server does not offer",
            "#3 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
        ]
    );
    // Only the last message went out, and without RSET.
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net> SIZE=22",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT"
        ])
    );
    assert_eq!(Refusal::NeedsSmtputf8.status().to_string(), "5.6.7");
    assert_eq!(
        Refusal::TooBig { size: 2, limit: 1 }.status().to_string(),
        "5.3.4"
    );
}

#[test]
fn utf8_addresses_use_smtputf8_when_offered() {
    let mut message = message(&["j\u{f6}rg@example.org"], CONTENT);
    message.outgoing.sender = "\u{e9}l\u{e8}ve@example.net".into();
    let result = Driver::plain(vec![message]).run(&[BANNER, &ehlo(&["SMTPUTF8"])]);
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<\u{e9}l\u{e8}ve@example.net> SMTPUTF8"
        ])
    );
}

#[test]
fn addresses_cannot_inject_commands() {
    let mut bad_sender = to_bob();
    bad_sender.outgoing.sender = "a@b>\r\nRCPT TO:<victim@example.org".into();
    let bad_rcpts = message(
        &[
            "x@example.org> NOTIFY=NEVER",
            "",
            "y\n@example.org",
            "ok@example.org",
        ],
        CONTENT,
    );
    let result = Driver::plain(vec![bad_sender, bad_rcpts]).run(&[
        BANNER,
        &pipelining_ehlo(),
        &[MAIL_OK, RCPT_OK, GO_AHEAD].concat(),
        QUEUED,
    ]);
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<ok@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(
        result.events,
        [
            r#"#0 bob@example.org failed: invalid address "a@b>\r\nRCPT TO:<victim@example.org""#,
            r#"#1 x@example.org> NOTIFY=NEVER failed: invalid address "x@example.org> NOTIFY=NEVER""#,
            r#"#1  failed: invalid address """#,
            "#1 y\n@example.org failed: invalid address \"y\\n@example.org\"",
            "#1 ok@example.org delivered: 250 2.0.0 Ok: queued as 4711",
        ]
    );
}

// ---------------------------------------------------------------- several messages

#[test]
fn several_messages_with_failures_between() {
    let messages = vec![
        to_bob(),
        message(&["mail-refused@example.org"], CONTENT),
        message(&["rcpt-refused@example.org"], CONTENT),
        message(&["data-deferred@example.org"], CONTENT),
        to_bob(),
    ];
    let make = || Driver::plain(messages.clone());
    let segments: [&[u8]; 9] = [
        BANNER,
        &pipelining_ehlo(),
        &[MAIL_OK, RCPT_OK, GO_AHEAD].concat(),
        QUEUED,
        &[
            b"550 5.7.1 sender refused\r\n".as_slice(),
            b"503 5.5.1 need MAIL\r\n",
            b"503 5.5.1 need MAIL\r\n",
        ]
        .concat(),
        &[
            MAIL_OK,
            b"550 5.1.1 unknown\r\n",
            b"554 5.5.1 no recipients\r\n",
        ]
        .concat(),
        &[
            b"250 2.0.0 reset\r\n".as_slice(),
            MAIL_OK,
            RCPT_OK,
            b"451 4.3.0 queue full\r\n",
        ]
        .concat(),
        &[
            b"250 2.0.0 reset\r\n".as_slice(),
            MAIL_OK,
            RCPT_OK,
            GO_AHEAD,
        ]
        .concat(),
        QUEUED,
    ];
    let result = assert_split_invariant(&make, &segments);
    assert_eq!(
        result.events,
        [
            "#0 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "#1 mail-refused@example.org failed: 550 5.7.1 sender refused (in reply to MAIL FROM command)",
            "#2 rcpt-refused@example.org failed: 550 5.1.1 unknown (in reply to RCPT TO command)",
            "#3 data-deferred@example.org deferred: 451 4.3.0 queue full (in reply to DATA command)",
            "#4 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
        ]
    );
    let commands: Vec<&str> = result
        .wire
        .lines()
        .filter(|l| l.starts_with("MAIL") || l.starts_with("RSET") || l.starts_with("QUIT"))
        .collect();
    assert_eq!(
        commands,
        [
            "MAIL FROM:<alice@example.net>",
            "MAIL FROM:<alice@example.net>",
            "MAIL FROM:<alice@example.net>",
            "RSET",
            "MAIL FROM:<alice@example.net>",
            "RSET",
            "MAIL FROM:<alice@example.net>",
            "QUIT",
        ]
    );
}

// ---------------------------------------------------------------- 421, garbage, limits

#[test]
fn a_421_defers_everything_open() {
    let make = || {
        Driver::plain(vec![message(
            &["a@example.org", "b@example.org", "c@example.org"],
            CONTENT,
        )])
    };
    let replies = [
        MAIL_OK,
        b"550 5.1.1 unknown\r\n".as_slice(),
        RCPT_OK,
        b"421 4.3.2 shutting down\r\n",
    ]
    .concat();
    let result = assert_split_invariant(&make, &[BANNER, &pipelining_ehlo(), &replies, b"ignored"]);
    assert_eq!(
        result.events,
        [
            "#0 a@example.org failed: 550 5.1.1 unknown (in reply to RCPT TO command)",
            "#0 b@example.org deferred: 421 4.3.2 shutting down (in reply to RCPT TO command)",
            "#0 c@example.org deferred: 421 4.3.2 shutting down (in reply to RCPT TO command)",
            "closed: 421 4.3.2 shutting down (in reply to RCPT TO command)",
        ]
    );
    assert!(result.wire.ends_with("DATA\r\n"), "no QUIT after 421");
}

#[test]
fn unsolicited_replies() {
    let mut driver = Driver::plain(vec![]);
    driver.quit_when_idle = false;
    let result = driver.run(&[BANNER, &ehlo(&[]), b"421 4.4.2 idle too long\r\n"]);
    assert_eq!(
        result.events,
        ["closed: unsolicited reply: 421 4.4.2 idle too long"]
    );
    // During content: a deferral, never a bounce.
    let mut message = to_bob();
    message.chunk = 5;
    let mut client = Client::new(config(TlsWanted::Never));
    client.receive(BANNER);
    client.receive(&ehlo(&[]));
    client.submit(message.outgoing).unwrap();
    for reply in [MAIL_OK, RCPT_OK, GO_AHEAD] {
        client.receive(reply);
    }
    assert!(matches!(client.next_action(), Action::NeedContent(_)));
    client.supply_content(b"Subj", false);
    client.receive(b"552 5.3.4 too much\r\n");
    let Action::Done(delivery) = client.next_action() else {
        panic!("not done");
    };
    assert_eq!(
        delivery.recipients[0].outcome,
        Outcome::Deferred(Failure::Connection(ConnectionError::Unsolicited(Reply {
            code: 552,
            enhanced: Some(EnhancedCode {
                class: 5,
                subject: 3,
                detail: 4
            }),
            lines: vec!["5.3.4 too much".into()],
        })))
    );
    assert!(matches!(
        client.next_action(),
        Action::Closed(End::Error(_))
    ));
}

#[test]
fn garbage_and_impossible_replies_defer() {
    let cases: [(&[u8], &str); 6] = [
        (
            b"HTTP/1.1 400 Bad Request\r\n",
            r#"protocol error: malformed reply "HTTP/1.1 400 Bad Request""#,
        ),
        (
            b"250-a\r\n251 b\r\n",
            "protocol error: multi-line reply with different codes",
        ),
        (
            b"354 go on\r\n",
            "protocol error: unexpected reply to MAIL FROM: 354 go on",
        ),
        (
            b"\x00\xff\r\n",
            "protocol error: malformed reply \"?\u{fffd}\"",
        ),
        (
            &[b'2'; MAX_LINE],
            "protocol error: reply line over 2048 bytes",
        ),
        (b"250-x\r\n", ""),
    ];
    for (garbage, error) in cases {
        let result = Driver::plain(vec![to_bob()]).run(&[BANNER, &ehlo(&[]), garbage]);
        if error.is_empty() {
            // An unfinished reply: still waiting.
            assert_eq!(result.events, Vec::<String>::new());
            continue;
        }
        assert_eq!(
            result.events,
            [
                format!("#0 bob@example.org deferred: {error}"),
                format!("closed: {error}")
            ]
        );
        assert!(result.wire.ends_with("MAIL FROM:<alice@example.net>\r\n"));
    }
    // 2xx to DATA.
    let result =
        Driver::plain(vec![to_bob()]).run(&[BANNER, &ehlo(&[]), MAIL_OK, RCPT_OK, b"250 sure\r\n"]);
    assert_eq!(
        result.events[0],
        "#0 bob@example.org deferred: protocol error: unexpected reply to DATA: 250 sure"
    );
}

#[test]
fn a_huge_reply_fails_the_connection() {
    let line = [b"250-".as_slice(), &[b'x'; 1000], b"\r\n"].concat();
    let mut driver = Driver::plain(vec![]);
    driver.drive();
    driver.feed(BANNER);
    for _ in 0..70 {
        if !driver.closed {
            driver.feed(&line);
        }
    }
    assert_eq!(
        driver.events,
        ["closed: protocol error: reply over 65536 bytes"]
    );
}

// ---------------------------------------------------------------- QUIT

#[test]
fn quit_waits_for_the_message_in_progress() {
    let mut client = Client::new(config(TlsWanted::Never));
    client.receive(BANNER);
    client.receive(&pipelining_ehlo());
    client.submit(to_bob().outgoing).unwrap();
    client.quit();
    client.receive(&[MAIL_OK, RCPT_OK, GO_AHEAD].concat());
    assert!(!client.output().ends_with(b"QUIT\r\n"));
    assert!(matches!(client.next_action(), Action::NeedContent(_)));
    client.supply_content(CONTENT, true);
    client.receive(QUEUED);
    assert!(client.output().ends_with(b".\r\nQUIT\r\n"));
    assert!(matches!(client.next_action(), Action::Done(_)));
    assert_eq!(client.next_action(), Action::Wait);
    assert_eq!(client.wait(), Wait::Quit);
    // The server closes without a 221: fine, the end is the one asked for.
    client.connection_lost();
    assert_eq!(client.next_action(), Action::Closed(End::Quit));
    assert_eq!(client.next_action(), Action::Closed(End::Quit));
}

#[test]
fn quit_before_ready() {
    let mut client = Client::new(config(TlsWanted::IfOffered));
    client.quit();
    assert!(client.output().is_empty());
    client.receive(BANNER);
    assert_eq!(client.output(), b"QUIT\r\n");
    // During STARTTLS: after the handshake, inside TLS.
    let mut client = Client::new(config(TlsWanted::IfOffered));
    client.receive(BANNER);
    client.receive(&ehlo(&["STARTTLS"]));
    client.receive(b"220 go\r\n");
    client.quit();
    let n = client.output().len();
    client.consume_output(n);
    assert_eq!(client.next_action(), Action::StartTls);
    client.tls_started();
    assert_eq!(client.output(), b"QUIT\r\n");
    client.receive(b"221 bye\r\n");
    assert_eq!(client.next_action(), Action::Closed(End::Quit));
}

// ---------------------------------------------------------------- lost, timed out

/// A conversation with every wait in it: TLS, pipelined MAIL/RCPT/DATA,
/// content, and QUIT.
fn every_wait() -> (Vec<Vec<u8>>, Vec<Wait>) {
    let segments = vec![
        BANNER.to_vec(),
        ehlo(&["STARTTLS", "PIPELINING"]),
        b"220 go\r\n".to_vec(),
        pipelining_ehlo(),
        MAIL_OK.to_vec(),
        [RCPT_OK, RCPT_OK].concat(),
        GO_AHEAD.to_vec(),
        QUEUED.to_vec(),
        BYE.to_vec(),
    ];
    let waits = vec![
        Wait::Greeting,
        Wait::Hello,
        Wait::StartTls,
        Wait::Hello,
        Wait::Mail,
        Wait::Rcpt,
        Wait::DataInit,
        Wait::DataEnd,
        Wait::Quit,
    ];
    (segments, waits)
}

#[test]
fn lost_or_timed_out_at_every_step() {
    let (segments, waits) = every_wait();
    let segments: Vec<&[u8]> = segments.iter().map(Vec::as_slice).collect();
    let make = |finally| {
        let mut driver = Driver::new(
            config(TlsWanted::IfOffered),
            vec![message(&["a@example.org", "b@example.org"], CONTENT)],
        );
        driver.finally = finally;
        driver
    };
    let mut driver = make(Finally::Nothing);
    driver.drive();
    for segment in &segments {
        driver.feed(segment);
    }
    assert_eq!(driver.waits, waits);
    for (finally, word) in [
        (Finally::Lost, "connection lost"),
        (Finally::TimedOut, "timed out"),
    ] {
        for fed in 0..segments.len() {
            let result = make(finally).run(&segments[..fed]);
            let wait = waits[fed];
            let error = match wait {
                Wait::Greeting => "waiting for the greeting",
                Wait::Hello => "waiting for the reply to EHLO/HELO",
                Wait::StartTls => "waiting for the reply to STARTTLS",
                Wait::Mail => "waiting for the reply to MAIL FROM",
                Wait::Rcpt => "waiting for the reply to RCPT TO",
                Wait::DataInit => "waiting for the reply to DATA",
                Wait::DataEnd => "waiting for the reply to the end of the message",
                Wait::Quit => "waiting for the reply to QUIT",
                _ => unreachable!(),
            };
            let open = (4..8).contains(&fed);
            let mut expected = Vec::new();
            if fed >= 3 {
                expected.push("starttls".to_owned());
            }
            if open {
                for rcpt in ["a@example.org", "b@example.org"] {
                    expected.push(format!("#0 {rcpt} deferred: {word} ({error})"));
                }
            }
            if fed == 8 {
                expected.push("#0 a@example.org delivered: 250 2.0.0 Ok: queued as 4711".into());
                expected.push("#0 b@example.org delivered: 250 2.0.0 Ok: queued as 4711".into());
                expected.push("closed: QUIT".into());
            } else {
                expected.push(format!("closed: {word} ({error})"));
            }
            assert_eq!(result.events, expected, "after {fed} segments");
        }
    }
    // During the handshake, while sending content, and idle.
    let mut client = Client::new(config(TlsWanted::IfOffered));
    client.receive(BANNER);
    client.receive(&ehlo(&["STARTTLS"]));
    client.receive(b"220 go\r\n");
    client.connection_lost();
    assert_eq!(
        client.next_action(),
        Action::Closed(End::Error(ConnectionError::Lost(Wait::Tls)))
    );
    let mut client = Client::new(config(TlsWanted::Never));
    client.receive(BANNER);
    client.receive(&ehlo(&[]));
    assert_eq!(client.wait(), Wait::Idle);
    let id = client.submit(to_bob().outgoing).unwrap();
    for reply in [MAIL_OK, RCPT_OK, GO_AHEAD] {
        client.receive(reply);
    }
    client.supply_content(b"partial", false);
    assert_eq!(client.wait(), Wait::DataBlock);
    client.timed_out();
    assert_eq!(
        client.next_action(),
        Action::Done(Delivery {
            id,
            recipients: vec![RecipientResult {
                address: "bob@example.org".into(),
                outcome: Outcome::Deferred(Failure::Connection(ConnectionError::TimedOut(
                    Wait::DataBlock
                ))),
            }],
        })
    );
    assert_eq!(
        client.next_action(),
        Action::Closed(End::Error(ConnectionError::TimedOut(Wait::DataBlock)))
    );
    // Nothing changes after the end.
    client.receive(QUEUED);
    client.connection_lost();
    client.quit();
    assert!(client.output().is_empty());
    assert_eq!(
        client.next_action(),
        Action::Closed(End::Error(ConnectionError::TimedOut(Wait::DataBlock)))
    );
}

#[test]
fn rfc_5321_timeouts() {
    let minutes = |wait: Wait| wait.timeout().map(|d| d.as_secs() / 60);
    assert_eq!(minutes(Wait::Greeting), Some(5));
    assert_eq!(minutes(Wait::Mail), Some(5));
    assert_eq!(minutes(Wait::Rcpt), Some(5));
    assert_eq!(minutes(Wait::DataInit), Some(2));
    assert_eq!(minutes(Wait::DataBlock), Some(3));
    assert_eq!(minutes(Wait::DataEnd), Some(10));
    assert_eq!(minutes(Wait::Idle), None);
    assert_eq!(minutes(Wait::Tls), None);
}

// ---------------------------------------------------------------- split invariance

#[test]
fn whole_conversation_split_anywhere() {
    let mut big = message(
        &["a@example.org", "b@example.org"],
        b"line one\r\n.dot\r\nline three\r\n",
    );
    big.chunk = 7;
    let messages = vec![big, message(&["c@example.org"], CONTENT), to_bob()];
    let make = || Driver::new(config(TlsWanted::IfOffered), messages.clone());
    let before = b"220-mx.example.org ESMTP\r\n220 ready\r\n";
    let segments: [&[u8]; 11] = [
        before,
        &ehlo(&["STARTTLS", "PIPELINING"]),
        b"220 2.0.0 go ahead\r\n",
        &full_ehlo(),
        &[
            MAIL_OK,
            RCPT_OK,
            b"452-4.2.2 over quota\r\n452 4.2.2 try later\r\n",
        ]
        .concat(),
        b"250 2.0.0 7 octets\r\n",
        &[
            b"250 2.0.0 7 octets\r\n".as_slice(),
            b"250 2.0.0 7 octets\r\n",
            b"250 2.0.0 Ok: queued as A\r\n",
        ]
        .concat(),
        &[
            MAIL_OK,
            b"550-5.1.1 no\r\n550 5.1.1 such user\r\n",
            b"503 5.5.1 no valid recipients\r\n",
        ]
        .concat(),
        &[b"250 2.0.0 reset\r\n".as_slice(), MAIL_OK, RCPT_OK].concat(),
        b"250 2.0.0 Ok: queued as B\r\n",
        BYE,
    ];
    let result = assert_split_invariant(&make, &segments);
    assert_eq!(
        result.events,
        [
            "starttls",
            "#0 a@example.org delivered: 250 2.0.0 Ok: queued as A",
            "#0 b@example.org deferred: 452 4.2.2 over quota try later (in reply to RCPT TO command)",
            "#1 c@example.org failed: 550 5.1.1 no such user (in reply to RCPT TO command)",
            "#2 bob@example.org delivered: 250 2.0.0 Ok: queued as B",
            "closed: QUIT",
        ]
    );
    assert_eq!(
        result.wire,
        [
            "EHLO client.example\r\n",
            "STARTTLS\r\n",
            "EHLO client.example\r\n",
            "MAIL FROM:<alice@example.net> SIZE=28\r\n",
            "RCPT TO:<a@example.org>\r\n",
            "RCPT TO:<b@example.org>\r\n",
            // The first chunk with the recipients, the others once they
            // are answered.
            "BDAT 7\r\nline on",
            "BDAT 7\r\ne\r\n.dot",
            "BDAT 7\r\n\r\nline ",
            "BDAT 7 LAST\r\nthree\r\n",
            "MAIL FROM:<alice@example.net> SIZE=22\r\n",
            "RCPT TO:<c@example.org>\r\n",
            "BDAT 22 LAST\r\nSubject: hi\r\n\r\nhello\r\n",
            "RSET\r\n",
            "MAIL FROM:<alice@example.net> SIZE=22\r\n",
            "RCPT TO:<bob@example.org>\r\n",
            "BDAT 22 LAST\r\nSubject: hi\r\n\r\nhello\r\n",
            "QUIT\r\n",
        ]
        .concat()
    );
}

#[test]
fn replies_before_ready_may_share_a_read() {
    let make = || Driver::plain(vec![to_bob()]);
    let together = [BANNER, &full_ehlo()].concat();
    let apart = make().run(&[BANNER, &full_ehlo(), &[MAIL_OK, RCPT_OK].concat(), QUEUED]);
    assert_eq!(
        make().run(&[&together, &[MAIL_OK, RCPT_OK].concat(), QUEUED]),
        apart
    );
}

// ---------------------------------------------------------------- early pipelining

/// A kept EHLO response with these keyword lines.
fn kept(keywords: &[&str]) -> Option<Ehlo> {
    Some(Ehlo::from_raw(&ehlo(keywords)).unwrap())
}

fn early_config(tls: TlsWanted, plain: &[&str], inside: &[&str]) -> ClientConfig {
    ClientConfig {
        early: Early {
            plain: kept(plain),
            tls: kept(inside),
        },
        ..config(tls)
    }
}

const PLAIN_EARLY: &[&str] = &["PIPELINING", "PIPECONNECT", "SIZE 10000"];

#[test]
fn early_pipelining_sends_the_first_message_before_the_banner() {
    let make = || {
        Driver::new(
            early_config(TlsWanted::Never, PLAIN_EARLY, &[]),
            vec![to_bob()],
        )
    };
    // Before the server has said anything:
    let mut before = make();
    before.drive();
    assert_eq!(
        String::from_utf8_lossy(&before.wire),
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net> SIZE=22",
            "RCPT TO:<bob@example.org>",
            "DATA",
        ])
    );
    let reply = ehlo(PLAIN_EARLY);
    let result = assert_split_invariant(
        &make,
        &[
            &[BANNER, &reply, MAIL_OK, RCPT_OK, GO_AHEAD].concat(),
            QUEUED,
            BYE,
        ],
    );
    assert!(
        result.wire.ends_with(&wire(&["hello", ".", "QUIT"])),
        "{}",
        result.wire
    );
    assert_eq!(
        result.events,
        [
            "#0 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
    let mut driver = make();
    driver.drive();
    for piece in [BANNER, &reply] {
        driver.feed(piece);
    }
    assert!(driver.client.early_pipelining());
    let (tls, seen) = driver.client.take_ehlo_seen().unwrap();
    assert!(!tls && seen.raw == reply);
}

#[test]
fn early_pipelining_sends_bdat_content_with_the_first_flight() {
    let keywords = ["PIPELINING", "PIPECONNECT", "CHUNKING"];
    let make = || {
        Driver::new(
            early_config(TlsWanted::Never, &keywords, &[]),
            vec![to_bob()],
        )
    };
    let mut before = make();
    before.drive();
    assert_eq!(
        String::from_utf8_lossy(&before.wire),
        [
            wire(&[
                "EHLO client.example",
                "MAIL FROM:<alice@example.net>",
                "RCPT TO:<bob@example.org>",
                "BDAT 22 LAST",
            ]),
            String::from_utf8_lossy(CONTENT).into_owned()
        ]
        .concat(),
        "the whole message before the server's first byte, as Exim sends it"
    );
    let result = assert_split_invariant(
        &make,
        &[BANNER, &ehlo(&keywords), MAIL_OK, RCPT_OK, QUEUED, BYE],
    );
    assert_eq!(
        result.events,
        [
            "#0 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
}

#[test]
fn early_pipelining_over_starttls_sends_ehlo_and_starttls_then_one_write_inside() {
    let plain = ["PIPELINING", "PIPECONNECT", "STARTTLS"];
    let inside = ["PIPELINING", "PIPECONNECT", "SIZE 10000"];
    let make = || {
        Driver::new(
            early_config(TlsWanted::IfOffered, &plain, &inside),
            vec![to_bob()],
        )
    };
    let mut before = make();
    before.drive();
    assert_eq!(
        String::from_utf8_lossy(&before.wire),
        wire(&["EHLO client.example", "STARTTLS"])
    );
    let result = assert_split_invariant(
        &make,
        &[
            &[BANNER, &ehlo(&plain), b"220 2.0.0 go\r\n"].concat(),
            &[&ehlo(&inside), MAIL_OK, RCPT_OK, GO_AHEAD].concat(),
            QUEUED,
            BYE,
        ],
    );
    assert_eq!(
        result.wire,
        wire(&[
            "EHLO client.example",
            "STARTTLS",
            "EHLO client.example",
            "MAIL FROM:<alice@example.net> SIZE=22",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
            "QUIT",
        ])
    );
    assert_eq!(result.events[0], "starttls");
    assert_eq!(
        result.events[1],
        "#0 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711"
    );
    // What came inside TLS right after the handshake, in one write:
    let mut driver = make();
    driver.drive();
    driver.feed(&[BANNER, &ehlo(&plain), b"220 2.0.0 go\r\n"].concat());
    assert!(
        String::from_utf8_lossy(&driver.wire).ends_with(&wire(&[
            "STARTTLS",
            "EHLO client.example",
            "MAIL FROM:<alice@example.net> SIZE=22",
            "RCPT TO:<bob@example.org>",
            "DATA",
        ])),
        "{}",
        String::from_utf8_lossy(&driver.wire)
    );
}

#[test]
fn early_pipelining_on_implicit_tls_sends_the_message_with_the_ehlo() {
    let inside = ["PIPELINING", "PIPECONNECT"];
    let mut driver = Driver::new(
        ClientConfig {
            implicit_tls: true,
            ..early_config(TlsWanted::Required, &[], &inside)
        },
        vec![to_bob()],
    );
    driver.drive();
    assert_eq!(
        String::from_utf8_lossy(&driver.wire),
        wire(&[
            "EHLO client.example",
            "MAIL FROM:<alice@example.net>",
            "RCPT TO:<bob@example.org>",
            "DATA",
        ])
    );
}

#[test]
fn a_kept_response_without_pipeconnect_means_the_ordinary_way() {
    for keywords in [&["PIPELINING"][..], &["PIPECONNECT"]] {
        let mut driver = Driver::new(
            early_config(TlsWanted::Never, keywords, &[]),
            vec![to_bob()],
        );
        driver.drive();
        assert!(
            driver.wire.is_empty(),
            "{keywords:?}: nothing before the banner"
        );
        assert!(!driver.client.early_pipelining());
    }
    // Under `encrypt` a kept response without STARTTLS is not used.
    let mut driver = Driver::new(
        early_config(TlsWanted::Required, PLAIN_EARLY, &[]),
        vec![to_bob()],
    );
    driver.drive();
    assert!(driver.wire.is_empty());
}

#[test]
fn a_refused_banner_or_ehlo_fails_the_connection_and_defers_the_message() {
    let refused = b"550 go away\r\n".to_vec();
    let busy = b"421 busy\r\n".to_vec();
    for (script, why) in [
        (vec![b"554 no\r\n".as_slice()], "banner 554 no"),
        (vec![&busy[..]], "banner 421 busy"),
        (vec![BANNER, &refused], "EHLO refused: 550 go away"),
    ] {
        let result = Driver::new(
            early_config(TlsWanted::Never, PLAIN_EARLY, &[]),
            vec![to_bob()],
        )
        .run(&script);
        let failure = format!("early pipelining: {why}");
        assert_eq!(
            result.events,
            [
                format!("#0 bob@example.org deferred: {failure}"),
                format!("closed: {failure}")
            ],
        );
        assert!(!result.wire.contains("QUIT"), "{}", result.wire);
    }
    // Plaintext behind the 220 to an early STARTTLS is an injection.
    let plain = ["PIPELINING", "PIPECONNECT", "STARTTLS"];
    let inside = ["PIPELINING", "PIPECONNECT"];
    let result = Driver::new(
        early_config(TlsWanted::IfOffered, &plain, &inside),
        vec![to_bob()],
    )
    .run(&[&[BANNER, &ehlo(&plain), b"220 go\r\n250 fake\r\n"].concat()]);
    assert_eq!(
        result.events,
        ["closed: protocol error: plaintext after the reply to STARTTLS (response injection)"]
    );
}

#[test]
fn a_changed_ehlo_reply_keeps_what_was_delivered_and_never_bounces_the_rest() {
    // SIZE changed: the server still took the message.
    let changed = ehlo(&["PIPELINING", "PIPECONNECT", "SIZE 20000"]);
    let mut driver = Driver::new(
        early_config(TlsWanted::Never, PLAIN_EARLY, &[]),
        vec![to_bob()],
    );
    driver.drive();
    for piece in [BANNER, &changed, MAIL_OK, RCPT_OK, GO_AHEAD, QUEUED, BYE] {
        driver.feed(piece);
    }
    assert_eq!(
        driver.events,
        [
            "#0 bob@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
    assert_eq!(
        driver.client.early_surprise(),
        Some("the EHLO response changed")
    );
    // A refusal after a changed reply is no verdict: deferred to go again,
    // and the connection goes on.
    let two = message(&["bob@example.org", "carol@example.org"], CONTENT);
    let result = Driver::new(early_config(TlsWanted::Never, PLAIN_EARLY, &[]), vec![two]).run(&[
        BANNER,
        &changed,
        MAIL_OK,
        b"550 5.1.1 no such user\r\n",
        RCPT_OK,
        GO_AHEAD,
        QUEUED,
        BYE,
    ]);
    assert_eq!(
        result.events,
        [
            "#0 bob@example.org deferred: early pipelining: the EHLO response changed",
            "#0 carol@example.org delivered: 250 2.0.0 Ok: queued as 4711",
            "closed: QUIT"
        ]
    );
    // Inside TLS the same.
    let plain = ["PIPELINING", "PIPECONNECT", "STARTTLS"];
    let inside = ["PIPELINING", "PIPECONNECT"];
    let result = Driver::new(
        early_config(TlsWanted::IfOffered, &plain, &inside),
        vec![to_bob()],
    )
    .run(&[
        BANNER,
        &ehlo(&plain),
        b"220 go\r\n",
        &ehlo(&["PIPELINING"]),
        b"503 5.5.1 no\r\n",
        b"503 5.5.1 no\r\n",
        b"503 5.5.1 no\r\n",
        BYE,
    ]);
    assert_eq!(
        result.events[1],
        "#0 bob@example.org deferred: early pipelining: the EHLO response changed"
    );
}
