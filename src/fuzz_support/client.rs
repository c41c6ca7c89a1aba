//! The `smtp_client` target: one [`Client`] connection driven as the
//! delivery process drives it, against arbitrary server bytes in arbitrary
//! reads. The input layout is in the parent module's documentation; the
//! invariants are listed on [`smtp_client`].

use std::collections::BTreeMap;

use crate::smtp_client::{
    Action, CONTENT_LOW_WATER, Client, ClientConfig, Command, Delivery, Early, Ehlo, End, Failure,
    MessageId, Outcome, Outgoing, Refusal, TlsWanted, Wait,
};

use super::{Header, trace};

const CHUNK_SIZES: [usize; 8] = [1, 2, 3, 7, 64, 512, 4096, 65536];
const CONTENT_LENGTHS: [usize; 8] = [0, 1, 2, 17, 100, 1000, 5000, 70_000];
/// Every awkward case of content in a few bytes: dots at line starts,
/// bare LF and CR, a "." line, and no line end at the end.
const CONTENT_PATTERN: &[u8] = b"Subject: fuzz\r\n\r\n.dot\r\n..\r\nbare\nlf\rcr\r\n.\r\nend";
/// No drive loop needs more turns than content bytes plus a few per reply.
const MAX_TURNS: usize = 1 << 22;
/// Pending output may exceed the content low-water mark by one chunk and
/// the commands of one message.
const OUTPUT_SLACK: usize = 8192;

/// What one fuzz input asks for.
struct Plan<'a> {
    tls: TlsWanted,
    implicit_tls: bool,
    /// Kept EHLO responses that allow early pipelining.
    early: bool,
    continue_without_tls: bool,
    partial_writes: Option<usize>,
    quit_when_idle: bool,
    late_tls: bool,
    quit_first: bool,
    messages: Vec<(Outgoing, Vec<u8>)>,
    chunk: usize,
    event: u8,
    event_after: usize,
    payload: &'a [u8],
    chunks: Vec<(usize, usize)>,
}

impl<'a> Plan<'a> {
    fn parse(data: &'a [u8]) -> Plan<'a> {
        let mut h = Header { rest: data };
        let flags = h.byte();
        let count = h.byte();
        let eight_bit = h.byte();
        let utf8 = h.byte();
        let event = h.byte();
        let content = h.byte();
        let write = h.byte();
        let chunk_count = h.byte() % 16;
        let (payload, chunks) = h.chunks(chunk_count);
        let bit = |n: u8| flags & (1 << n) != 0;
        let length = CONTENT_LENGTHS[usize::from(content >> 3 & 7)];
        let body: Vec<u8> = CONTENT_PATTERN
            .iter()
            .copied()
            .cycle()
            .take(length)
            .collect();
        let extra_size = if content & 0x40 != 0 { 1_000_000 } else { 0 };
        let messages = (0..usize::from(count & 7))
            .map(|i| {
                let mut recipients: Vec<String> = (0..=i % 3)
                    .map(|j| format!("r{i}.{j}@example.org"))
                    .collect();
                if utf8 & (1 << (i % 8)) != 0 {
                    recipients.push(format!("j\u{f6}rg{i}@example.org"));
                }
                if i < 5 && count & (1 << (3 + i)) != 0 {
                    recipients.insert(1, format!("bad{i}\r\n@example.org"));
                }
                let outgoing = Outgoing {
                    sender: if i % 3 == 2 {
                        String::new()
                    } else {
                        format!("s{i}@example.net")
                    },
                    recipients,
                    eight_bit: eight_bit & (1 << (i % 8)) != 0,
                    smtputf8: false,
                    size: body.len() as u64 + extra_size,
                };
                (outgoing, body.clone())
            })
            .collect();
        let mut chunk = CHUNK_SIZES[usize::from(content & 7)];
        if length > 10_000 {
            // Keeps a run fast; small chunks are covered by small content.
            chunk = chunk.max(512);
        }
        Plan {
            tls: match flags & 3 {
                0 => TlsWanted::Never,
                1 => TlsWanted::IfOffered,
                _ => TlsWanted::Required,
            },
            implicit_tls: bit(2),
            early: content & 0x80 != 0,
            continue_without_tls: bit(3),
            partial_writes: bit(4).then_some(usize::from(write) + 1),
            quit_when_idle: bit(5),
            late_tls: bit(6),
            quit_first: bit(7),
            messages,
            chunk,
            event: event & 3,
            event_after: usize::from(event >> 2),
            payload,
            chunks,
        }
    }

    fn config(&self) -> ClientConfig {
        let kept = || {
            Ehlo::from_raw(
                b"250-mx.example Hello\r\n250-PIPELINING\r\n250-PIPECONNECT\r\n\
                  250-STARTTLS\r\n250-CHUNKING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n",
            )
        };
        ClientConfig {
            helo_name: "client.example".into(),
            tls: self.tls,
            implicit_tls: self.implicit_tls,
            early: if self.early {
                Early {
                    plain: kept(),
                    tls: kept(),
                }
            } else {
                Early::default()
            },
        }
    }
}

/// A call from the driver's loop that depends on the input, not on the
/// engine's state; the rest of what the driver does follows from
/// `next_action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    QuitFirst,
    Feed(usize, usize),
    Lost,
    TimedOut,
    Quit,
}

/// The message being sent.
struct Sending {
    id: MessageId,
    index: usize,
    at: usize,
    /// The last chunk was supplied.
    finished: bool,
}

/// Everything observable at the end of a run, compared for invariant 6.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    wire: Vec<u8>,
    deliveries: Vec<Delivery>,
    end: Option<End>,
    ehlo: Option<Vec<u8>>,
    tls: bool,
}

struct Harness<'a> {
    plan: &'a Plan<'a>,
    client: Client,
    /// Everything the driver wrote.
    wire: Vec<u8>,
    /// Everything the engine ever put into its output, written or not (it
    /// drops what is unwritten when the connection fails, and a fuzzed
    /// server may answer what was never written).
    produced: Vec<u8>,
    /// The output's length when last observed.
    pending: usize,
    next_message: usize,
    sending: Option<Sending>,
    /// Each submitted message: its plan index, and its start in the output.
    submitted: BTreeMap<MessageId, (usize, usize)>,
    deliveries: Vec<Delivery>,
    end: Option<End>,
    /// TLS is to start once one more chunk was fed.
    tls_pending: bool,
}

impl<'a> Harness<'a> {
    fn new(plan: &'a Plan<'a>) -> Harness<'a> {
        Harness {
            plan,
            client: Client::new(plan.config()),
            wire: Vec::new(),
            produced: Vec::new(),
            pending: 0,
            next_message: 0,
            sending: None,
            submitted: BTreeMap::new(),
            deliveries: Vec::new(),
            end: None,
            tls_pending: false,
        }
    }

    /// Adds what the engine appended to its output since the last look.
    /// Output only grows, except when the engine drops all of it.
    fn observe(&mut self) {
        let output = self.client.output();
        let new = output.get(self.pending..).unwrap_or(output);
        self.produced.extend_from_slice(new);
        self.pending = output.len();
    }

    fn apply(&mut self, call: Call) {
        let payload = self.plan.payload;
        match call {
            Call::QuitFirst | Call::Quit => self.client.quit(),
            Call::Feed(from, to) => {
                self.client.receive(&payload[from..to]);
                if self.tls_pending {
                    self.tls_pending = false;
                    self.client.tls_started();
                }
            }
            Call::Lost => self.client.connection_lost(),
            Call::TimedOut => self.client.timed_out(),
        }
        self.observe();
        self.drive();
    }

    /// `next_action` until `Wait`, as the delivery process's loop does.
    fn drive(&mut self) {
        let mut wrote = false;
        for _ in 0..MAX_TURNS {
            self.observe();
            let output_before = self.client.output().len();
            let action = self.client.next_action();
            if self.end.is_some() {
                assert!(
                    matches!(action, Action::Closed(_)),
                    "{action:?} after Closed"
                );
                assert_eq!(self.client.output().len(), 0, "output after Closed");
                return;
            }
            let quiet = matches!(action, Action::Done(_) | Action::Wait);
            match action {
                Action::Wait => {
                    // One write per turn of the loop with partial writes
                    // (a socket that takes little), else everything.
                    if self.plan.partial_writes.is_some() && wrote {
                        return;
                    }
                    wrote = true;
                    if !self.write() {
                        return;
                    }
                }
                Action::StartTls => {
                    assert!(self.client.output().is_empty(), "StartTls with output");
                    if self.plan.late_tls {
                        self.tls_pending = true;
                        return;
                    }
                    self.client.tls_started();
                }
                Action::TlsRefused(reply) => {
                    assert!(reply.is_transient() || reply.is_permanent(), "{reply:?}");
                    if self.plan.continue_without_tls {
                        self.client.continue_without_tls();
                    } else {
                        self.client.quit();
                    }
                }
                Action::Ready => {
                    if !self.ready() {
                        // Idle with nothing to send: wait for the server.
                        self.write();
                        return;
                    }
                }
                Action::NeedContent(id) => self.supply(id),
                Action::Done(delivery) => self.done(delivery),
                Action::Closed(end) => {
                    self.end = Some(end);
                    // Whatever is left (a QUIT) goes out, then the socket closes.
                    while self.write() {}
                    return;
                }
            }
            // Reports and waiting make no output.
            let grown = self.client.output().len() > output_before;
            assert!(!grown || !quiet, "Done or Wait produced output");
            // Invariant 5.
            assert!(
                self.client.output().len()
                    <= CONTENT_LOW_WATER + self.plan.chunk * 2 + OUTPUT_SLACK,
                "{} bytes of output pending",
                self.client.output().len()
            );
        }
        panic!("next_action never said Wait");
    }

    fn write(&mut self) -> bool {
        self.observe();
        let output = self.client.output();
        let n = output
            .len()
            .min(self.plan.partial_writes.unwrap_or(usize::MAX));
        self.wire.extend_from_slice(&output[..n]);
        self.client.consume_output(n);
        self.pending -= n;
        n > 0
    }

    /// Submits the next message or quits; false when it does neither.
    fn ready(&mut self) -> bool {
        assert!(self.sending.is_none(), "Ready while a message is open");
        let Some((outgoing, _)) = self.plan.messages.get(self.next_message) else {
            if self.plan.quit_when_idle {
                self.client.quit();
            }
            return self.plan.quit_when_idle;
        };
        let index = self.next_message;
        self.next_message += 1;
        self.observe();
        let start = self.produced.len();
        let id = match self.client.submit(outgoing.clone()) {
            Ok(id) => id,
            Err(_) => panic!("submit refused after Ready"),
        };
        assert!(
            self.submitted.insert(id, (index, start)).is_none(),
            "id {id:?} reused"
        );
        self.sending = Some(Sending {
            id,
            index,
            at: 0,
            finished: false,
        });
        if self.client.current_message() == Some(id) {
            let second = self.client.submit(outgoing.clone());
            assert!(second.is_err(), "two messages at once");
        }
        true
    }

    fn supply(&mut self, id: MessageId) {
        let Some(sending) = self.sending.as_mut() else {
            panic!("content wanted for {id:?} with no message open");
        };
        assert_eq!(sending.id, id, "content for the wrong message");
        assert!(!sending.finished, "content wanted after the last chunk");
        let content = &self.plan.messages[sending.index].1;
        let end = (sending.at + self.plan.chunk).min(content.len());
        let chunk = &content[sending.at..end];
        sending.at = end;
        sending.finished = end == content.len();
        self.client.supply_content(chunk, sending.finished);
    }

    /// Invariants 2 to 4 for one reported message.
    fn done(&mut self, delivery: Delivery) {
        let Some(&(index, start)) = self.submitted.get(&delivery.id) else {
            panic!("report for an unknown message {:?}", delivery.id);
        };
        assert!(
            !self.deliveries.iter().any(|d| d.id == delivery.id),
            "message {:?} reported twice",
            delivery.id
        );
        if self.sending.as_ref().is_some_and(|s| s.id == delivery.id) {
            self.sending = None;
        }
        let (outgoing, content) = &self.plan.messages[index];
        let addresses: Vec<&str> = delivery
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(addresses, outgoing.recipients, "recipients changed");
        let mut refused = false;
        if self.client.early_message() == Some(delivery.id) {
            // Sent early: a refusal before sending rests on a kept EHLO
            // response, and after a changed EHLO reply no refusal is a
            // verdict; either way it goes again, never bounces.
            let surprised = self.client.early_surprise().is_some();
            assert!(
                !delivery.recipients.iter().any(|r| match &r.outcome {
                    // An address that cannot go into a command is refused
                    // whatever the server offers.
                    Outcome::Failed(Failure::Refused(Refusal::BadAddress(_))) => false,
                    Outcome::Failed(Failure::Refused(_)) => true,
                    Outcome::Failed(_) => surprised,
                    _ => false,
                }),
                "an early message failed: {delivery:?}"
            );
        }
        for rcpt in &delivery.recipients {
            match &rcpt.outcome {
                Outcome::Delivered(reply) => {
                    assert!(reply.is_positive(), "delivered with {reply}");
                    // Produced, if not written: a fuzzed server may answer early.
                    self.observe();
                    assert!(
                        content_sent(&self.produced, start, content),
                        "delivered without the content in the output: {:?}",
                        String::from_utf8_lossy(&self.produced[start..])
                    );
                }
                Outcome::Failed(Failure::Reply { reply, .. }) => {
                    assert!(reply.is_permanent(), "failed with {reply}")
                }
                Outcome::Failed(Failure::Refused(refusal)) => {
                    if !matches!(refusal, Refusal::BadAddress(_)) {
                        refused = true;
                    }
                }
                Outcome::Failed(Failure::Connection(error)) => {
                    panic!("failed for a connection error: {error}")
                }
                Outcome::Deferred(Failure::Reply { command, reply }) => assert!(
                    reply.is_transient() || *command == Command::Rset,
                    "deferred with {reply}"
                ),
                Outcome::Deferred(Failure::Refused(refusal)) => {
                    panic!("deferred for {refusal}")
                }
                Outcome::Deferred(Failure::Connection(_)) => {}
            }
        }
        if refused {
            // Not sent at all: nothing was produced for it.
            self.observe();
            assert_eq!(self.produced.len(), start, "a refused message went out");
        }
        self.deliveries.push(delivery);
    }

    fn finish(mut self) -> Transcript {
        if self.end.is_none() {
            self.client.connection_lost();
            self.drive();
        }
        let end = self.end.clone();
        assert!(end.is_some(), "connection_lost did not close");
        assert_eq!(self.client.wait(), Wait::Closed);
        assert_eq!(
            self.deliveries.len(),
            self.submitted.len(),
            "a submitted message was never reported"
        );
        if let Some(End::Refused { command, .. }) = &end {
            assert!(
                *command != Command::Quit,
                "a reply to QUIT ends with End::Quit"
            );
        }
        Transcript {
            wire: self.wire,
            deliveries: self.deliveries,
            end,
            ehlo: self.client.ehlo().map(|e| e.raw.clone()),
            tls: self.client.is_tls(),
        }
    }
}

/// The content as it must appear on the wire, computed independently of
/// the engine: every CRLF, bare CR or bare LF ends a line, every line ends
/// in CRLF (a last line without an end gets one), and for DATA a line that
/// starts with "." gets another.
fn reference_encoding(content: &[u8], stuff: bool) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut rest = content;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        lines.push(&rest[..end]);
        rest = &rest[end..];
        if rest.starts_with(b"\r\n") {
            rest = &rest[2..];
        } else if !rest.is_empty() {
            rest = &rest[1..];
        }
    }
    let mut out = Vec::new();
    for line in lines {
        if stuff && line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The message's commands start at `start` in `wire`: the content follows
/// its DATA line, encoded and ended by ".", or is the concatenation of its
/// BDAT chunks up to LAST.
fn content_sent(wire: &[u8], start: usize, content: &[u8]) -> bool {
    let mut at = start;
    let mut chunks = Vec::new();
    while at < wire.len() {
        let Some(eol) = wire[at..].windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let line = &wire[at..at + eol];
        at += eol + 2;
        if line == b"DATA" {
            let expected = [reference_encoding(content, true), b".\r\n".to_vec()].concat();
            return wire[at..].starts_with(&expected);
        }
        if let Some(arg) = line.strip_prefix(b"BDAT ") {
            let arg = String::from_utf8_lossy(arg);
            let (size, last) = match arg.strip_suffix(" LAST") {
                Some(size) => (size, true),
                None => (&*arg, false),
            };
            let Ok(size) = size.parse::<usize>() else {
                return false;
            };
            let Some(chunk) = wire.get(at..at + size) else {
                return false;
            };
            chunks.extend_from_slice(chunk);
            at += size;
            if last {
                return chunks == reference_encoding(content, false);
            }
        }
    }
    false
}

/// Runs the plan with its chunking, and returns the calls made.
fn run_split(plan: &Plan<'_>) -> (Transcript, Vec<Call>) {
    let mut h = Harness::new(plan);
    let mut calls = Vec::new();
    let mut call = |h: &mut Harness<'_>, call: Call| {
        h.apply(call);
        calls.push(call);
    };
    if plan.quit_first {
        call(&mut h, Call::QuitFirst);
    } else {
        h.drive();
    }
    let event = |h: &mut Harness<'_>, call: &mut dyn FnMut(&mut Harness<'_>, Call)| match plan.event
    {
        1 => call(h, Call::Lost),
        2 => call(h, Call::TimedOut),
        3 => call(h, Call::Quit),
        _ => {}
    };
    let mut evented = false;
    for (i, &(from, to)) in plan.chunks.iter().enumerate() {
        if h.end.is_some() {
            break;
        }
        call(&mut h, Call::Feed(from, to));
        if i == plan.event_after {
            event(&mut h, &mut call);
            evented = true;
        }
    }
    if !evented && h.end.is_none() {
        event(&mut h, &mut call);
    }
    (h.finish(), calls)
}

/// The same calls with each feed that holds no LF joined to the next one:
/// such a read completes no reply, so the engine's state, and with it
/// everything the driver does after it, is unchanged by it. (A read that
/// completes a reply cannot be joined even when it ends mid-line: the
/// driver reacts to that reply, by submitting a message or supplying
/// content, before the next reply may arrive.)
fn merge(calls: &[Call], payload: &[u8]) -> Vec<Call> {
    let mut merged: Vec<Call> = Vec::new();
    for &call in calls {
        match (merged.last_mut(), call) {
            (Some(Call::Feed(start, end)), Call::Feed(from, to))
                if *end == from && !payload[*start..*end].contains(&b'\n') =>
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
    if !calls.contains(&Call::QuitFirst) {
        h.drive();
    }
    for &call in calls {
        if h.end.is_some() {
            break;
        }
        h.apply(call);
    }
    h.finish()
}

/// Drives one SMTP client connection (`crate::smtp_client::Client`) with
/// fuzzer-chosen TLS policy, messages, content, chunking of the server's
/// bytes, partial writes, and a lost connection, timeout or QUIT (layout
/// in the module documentation), doing what `next_action` asks as the
/// delivery process does, and panics unless:
///
/// 1. `next_action` settles (says Wait) and never panics; `StartTls` comes
///    with empty output; after `Closed` nothing changes and no output is
///    made; only `submit` and `supply_content` make output between
///    replies;
/// 2. every submitted message is reported exactly once, with exactly its
///    recipients in order, by the time the connection ends (the harness
///    ends it with `connection_lost` if the server's bytes did not);
/// 3. delivered means a 2xx reply and the content in the output after the
///    message's commands, exactly as an independent encoder makes it
///    (dot-stuffed after DATA and ended by ".", or BDAT chunks up to LAST);
///    failed means a 5xx or a refusal; deferred means a 4xx, a refused
///    RSET or a connection error, never a refusal;
/// 4. a message refused before sending (SIZE, SMTPUTF8) made no output;
/// 5. pending output stays within the content low-water mark plus a chunk;
/// 6. with whole writes, the result (wire, reports, end, EHLO reply, TLS)
///    equals that of the same run with every read that holds no LF joined
///    to the next (the line reader's state across reads changes nothing).
pub fn smtp_client(data: &[u8]) {
    let plan = Plan::parse(data);
    let (split, calls) = run_split(&plan);
    if trace() {
        eprintln!("calls: {calls:?}\n{split:#?}");
        eprintln!("wire: {}", String::from_utf8_lossy(&split.wire));
    }
    if plan.partial_writes.is_some() {
        // Content is asked for by how much output waits, which depends on
        // how many writes happened, which depends on the reads.
        return;
    }
    let merged = merge(&calls, plan.payload);
    if merged != calls {
        let whole = execute(&plan, &merged);
        assert_eq!(split, whole, "split {calls:?} vs joined {merged:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_encoding_agrees_with_the_rules() {
        assert_eq!(reference_encoding(b"", true), b"");
        assert_eq!(reference_encoding(b"a", true), b"a\r\n");
        assert_eq!(
            reference_encoding(b".a\nb\r\r\n.\r", true),
            b"..a\r\nb\r\n\r\n..\r\n"
        );
        assert_eq!(reference_encoding(b".a\r\n", false), b".a\r\n");
    }

    /// A whole delivery through the harness: the seeds rely on it.
    #[test]
    fn a_plain_delivery_is_delivered() {
        let server = b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n";
        // One message (count 1), content length 17 in chunks of 3, quit
        // when idle, one chunk.
        // Reads: banner and EHLO reply, the pipelined replies, the end of
        // data, QUIT.
        let header = [0x20, 1, 0, 0, 0, (3 << 3) | 2, 0, 4, 31, 23, 11, 8];
        let data = [&header[..], server].concat();
        let plan = Plan::parse(&data);
        let (transcript, _) = run_split(&plan);
        assert_eq!(transcript.end, Some(End::Quit));
        let delivery = &transcript.deliveries[0];
        assert!(matches!(
            delivery.recipients[0].outcome,
            Outcome::Delivered(_)
        ));
        smtp_client(&data);
    }
}
