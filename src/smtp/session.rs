//! The connection state machine: input dispatch, command handling and the public API.

use std::mem;
use std::rc::Rc;

use super::command::{self, Command};
use super::content::Chunk;
use super::data::DotDecoder;
use super::line::{Event, LineReader};
use super::reply::{self, Output, Reply};
use super::transaction::Transaction;
use super::{ConnInfo, MessageSink, Next, Phase, SinkError, SmtpConfig, TlsInfo};

/// Error replies after which the connection is dropped, so a confused or
/// hostile client cannot keep a connection busy forever.
const MAX_ERRORS: u32 = 20;

pub(super) struct Helo {
    pub name: String,
    pub esmtp: bool,
}

/// What the next input bytes are.
pub(super) enum Mode {
    Command,
    Data(DotDecoder),
    Chunk(Chunk),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Open,
    /// STARTTLS was accepted; plaintext input must never be processed again.
    AwaitingTls,
    Closed,
}

/// One SMTP server connection, sans-I/O: see the module documentation.
pub struct Smtp {
    pub(super) config: Rc<SmtpConfig>,
    pub(super) conn: ConnInfo,
    pub(super) helo: Option<Helo>,
    pub(super) txn: Option<Transaction>,
    pub(super) mode: Mode,
    /// The sink has a message that still needs commit() or abort().
    pub(super) sink_open: bool,
    /// A message the sink queued for group commit: its reply waits for
    /// `commit_finished`, and so does every input byte after it (`held`).
    pub(super) awaiting_commit: Option<Transaction>,
    held: Vec<u8>,
    lines: LineReader,
    out: Output,
    errors: u32,
    link: Link,
    quit: bool,
    /// The client sent commands before it could have seen our banner or
    /// the EHLO reply (PIPECONNECT); sticky for the connection.
    pub(super) early_pipelining: bool,
}

impl Smtp {
    pub fn new(config: Rc<SmtpConfig>, conn: ConnInfo) -> Smtp {
        log::debug!("{}: new SMTP session", conn.peer);
        Smtp {
            config,
            conn,
            helo: None,
            txn: None,
            mode: Mode::Command,
            sink_open: false,
            awaiting_commit: None,
            held: Vec::new(),
            lines: LineReader::default(),
            out: Output::default(),
            errors: 0,
            link: Link::Open,
            quit: false,
            early_pipelining: false,
        }
    }

    pub fn greet(&mut self) {
        let banner = format!("{} ESMTP gsmtpd", self.config.hostname);
        self.out.push(&Reply::owned(220, banner));
    }

    /// Processes everything in `input` in order. After `Close` or `StartTls`
    /// the rest of `input` is dropped unseen, and so is any input fed before
    /// `tls_established()` (returning `StartTls` again).
    pub fn receive(&mut self, input: &[u8], sink: &mut dyn MessageSink) -> Next {
        match self.link {
            Link::Closed => {
                self.abort_message(sink);
                return Next::Close;
            }
            Link::AwaitingTls => return Next::StartTls,
            Link::Open => {}
        }
        let mut rest = input;
        while !rest.is_empty() {
            if self.awaiting_commit.is_some() {
                // Answered in order once the queued message's outcome is known.
                self.held.extend_from_slice(rest);
                return Next::Continue;
            }
            let (used, next) = self.step(rest, sink);
            rest = rest.get(used..).unwrap_or_default();
            let next = self.check_errors(next);
            if next != Next::Continue {
                if next == Next::StartTls && !rest.is_empty() {
                    // The STARTTLS command-injection class: never processed.
                    log::warn!(
                        "{}: discarded {} bytes sent after STARTTLS",
                        self.conn.peer,
                        rest.len()
                    );
                }
                self.stop(next, sink);
                return next;
            }
        }
        Next::Continue
    }

    /// Input that arrived before the banner was sent. A client permitted
    /// early pipelining (PIPECONNECT) gets the banner and then the replies
    /// to that input, all in one batch; any other client has broken SMTP's
    /// synchronisation and is refused.
    pub fn early_input(&mut self, input: &[u8], sink: &mut dyn MessageSink) -> Next {
        if !self.conn.pipe_connect {
            log::warn!(
                "{}: sent {} bytes before the banner",
                self.conn.peer,
                input.len()
            );
            self.terminate(reply::SYNC_ERROR);
            return Next::Close;
        }
        self.early_pipelining = true;
        self.greet();
        self.receive(input, sink)
    }

    /// A message was queued for group commit and its outcome is not known
    /// yet: the caller should stop reading until `commit_finished`.
    pub fn awaiting_commit(&self) -> bool {
        self.awaiting_commit.is_some()
    }

    /// The outcome of the message the sink queued: `Ok(id)` once it is on
    /// stable storage, `Err` once the sink has discarded it. Replies to it,
    /// then processes the input held since.
    pub fn commit_finished(
        &mut self,
        outcome: Result<String, SinkError>,
        sink: &mut dyn MessageSink,
    ) -> Next {
        let Some(txn) = self.awaiting_commit.take() else {
            return Next::Continue;
        };
        if self.link == Link::Closed {
            // timed_out or shutting_down already said goodbye.
            return Next::Close;
        }
        let reply = self.commit_reply(&txn, outcome);
        self.final_reply(&reply);
        let held = mem::take(&mut self.held);
        self.receive(&held, sink)
    }

    pub fn output(&self) -> &[u8] {
        self.out.pending()
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// RFC 3207 4.2: forget everything learned before the handshake.
    pub fn tls_established(&mut self, tls: TlsInfo) {
        log::debug!(
            "{}: TLS established: {} {} {} bits, resumed={}",
            self.conn.peer,
            tls.version,
            tls.cipher,
            tls.bits,
            tls.resumed
        );
        self.conn.tls = Some(tls);
        self.helo = None;
        self.reset_state();
        if self.link == Link::AwaitingTls {
            self.link = Link::Open;
        }
    }

    pub fn phase(&self) -> Phase {
        match self.mode {
            Mode::Command => Phase::Command,
            Mode::Data(_) | Mode::Chunk(_) => Phase::Data,
        }
    }

    /// A command line has begun and not ended: the server bounds the total
    /// time one line may take (a client trickling bytes is not idle).
    pub fn mid_command(&self) -> bool {
        matches!(self.mode, Mode::Command) && self.lines.in_line()
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some() || self.awaiting_commit.is_some()
    }

    pub fn timed_out(&mut self) {
        let text = format!("4.4.2 {} Error: timeout exceeded", self.config.hostname);
        self.terminate(Reply::owned(421, text));
    }

    pub fn shutting_down(&mut self) {
        let text = format!("4.3.2 {} Service shutting down", self.config.hostname);
        self.terminate(Reply::owned(421, text));
    }

    pub fn is_tls(&self) -> bool {
        self.conn.tls.is_some()
    }

    /// True once the client said QUIT (so a close is the client's choice).
    pub fn quit_received(&self) -> bool {
        self.quit
    }

    /// A reply to a command; error replies count towards MAX_ERRORS.
    pub(super) fn reply(&mut self, reply: &Reply) {
        if reply.is_error() {
            self.errors += 1;
            log::info!("{}: {} {}", self.conn.peer, reply.code, reply.text);
        }
        self.out.push(reply);
    }

    /// The reply to message content, which does not count as a command error.
    pub(super) fn final_reply(&mut self, reply: &Reply) {
        self.out.push(reply);
    }

    pub(super) fn abort_message(&mut self, sink: &mut dyn MessageSink) {
        if self.sink_open {
            sink.abort();
            self.sink_open = false;
        }
    }

    pub(super) fn reset_transaction(&mut self, sink: &mut dyn MessageSink) {
        self.abort_message(sink);
        self.txn = None;
    }

    fn step(&mut self, input: &[u8], sink: &mut dyn MessageSink) -> (usize, Next) {
        match &mut self.mode {
            Mode::Command => self.command_input(input, sink),
            Mode::Data(decoder) => {
                let step = decoder.step(input);
                let bare = decoder.bare_eol();
                let used = step.used;
                self.data_input(input, step, bare, sink);
                (used, Next::Continue)
            }
            Mode::Chunk(chunk) => {
                let part = chunk.take(input.len());
                let bytes = input.get(..part.len).unwrap_or_default();
                self.chunk_input(bytes, part, sink);
                (part.len, Next::Continue)
            }
        }
    }

    fn check_errors(&mut self, next: Next) -> Next {
        if next != Next::Continue || self.errors < MAX_ERRORS {
            return next;
        }
        let text = format!("4.7.0 {} Too many errors", self.config.hostname);
        self.out.push(&Reply::owned(421, text));
        log::warn!("{}: too many errors, closing", self.conn.peer);
        Next::Close
    }

    fn stop(&mut self, next: Next, sink: &mut dyn MessageSink) {
        self.abort_message(sink);
        self.reset_state();
        self.link = if next == Next::StartTls {
            Link::AwaitingTls
        } else {
            Link::Closed
        };
    }

    fn terminate(&mut self, reply: Reply) {
        if self.link != Link::Closed {
            log::info!("{}: {} {}", self.conn.peer, reply.code, reply.text);
            self.out.push(&reply);
            self.close();
        }
    }

    fn close(&mut self) {
        self.reset_state();
        self.link = Link::Closed;
    }

    /// Leaves `sink_open` alone: only a call with the sink can clear it.
    fn reset_state(&mut self) {
        self.txn = None;
        self.mode = Mode::Command;
        self.lines.clear();
    }

    fn command_input(&mut self, input: &[u8], sink: &mut dyn MessageSink) -> (usize, Next) {
        let (used, event) = self.lines.read(input);
        let next = match event {
            Event::Line(line) => self.command(&line, used < input.len(), sink),
            Event::TooLong => {
                self.reply(&reply::LINE_TOO_LONG);
                Next::Continue
            }
            Event::Pending => Next::Continue,
        };
        (used, next)
    }

    /// `more`: input follows this line in the same batch.
    fn command(&mut self, line: &[u8], more: bool, sink: &mut dyn MessageSink) -> Next {
        match command::parse(line) {
            Ok(command) => self.dispatch(command, more, sink),
            Err(reply) => {
                self.reply(&reply);
                Next::Continue
            }
        }
    }

    fn dispatch(&mut self, command: Command<'_>, more: bool, sink: &mut dyn MessageSink) -> Next {
        if more && !self.may_pipeline_after(&command) {
            log::warn!("{}: pipelined past a synchronisation point", self.conn.peer);
            self.reply(&reply::SYNC_ERROR);
            return Next::Close;
        }
        match command {
            Command::Helo(arg) => self.helo(arg, false, sink),
            Command::Ehlo(arg) => self.helo(arg, true, sink),
            Command::Mail(arg) => self.mail(arg),
            Command::Rcpt(arg) => self.rcpt(arg),
            Command::Data(arg) => return self.data(arg, more, sink),
            Command::Bdat(arg) => self.bdat(arg, sink),
            Command::Rset(arg) => self.rset(arg, sink),
            Command::Noop => self.reply(&reply::OK),
            Command::Quit(arg) => return self.quit(arg),
            Command::Vrfy(arg) => self.vrfy(arg),
            Command::Expn => self.reply(&reply::EXPN),
            Command::Help => self.reply(&reply::HELP),
            Command::StartTls(arg) => return self.starttls(arg),
        }
        Next::Continue
    }

    /// RFC 2920 and Exim's synchronisation rules: may the client already
    /// have sent more input behind this command? After EHLO/HELO only with
    /// PIPECONNECT (that is early pipelining); otherwise only once PIPELINING
    /// was advertised (EHLO done). DATA is checked where it is handled,
    /// STARTTLS discards what follows, and nothing follows QUIT.
    fn may_pipeline_after(&mut self, command: &Command<'_>) -> bool {
        match command {
            Command::Helo(_) | Command::Ehlo(_) if self.conn.pipe_connect => {
                self.early_pipelining = true;
                true
            }
            Command::Helo(_) | Command::Ehlo(_) => false,
            Command::StartTls(_) | Command::Quit(_) | Command::Data(_) => true,
            _ => self.helo.as_ref().is_some_and(|h| h.esmtp),
        }
    }

    fn helo(&mut self, arg: &str, esmtp: bool, sink: &mut dyn MessageSink) {
        // The argument is echoed in the reply: a control character could forge reply lines.
        if arg.is_empty() || arg.chars().any(char::is_control) {
            return self.reply(&reply::HELO_SYNTAX);
        }
        self.reset_transaction(sink);
        let greeting = format!(
            "{} Hello {} [{}]",
            self.config.hostname,
            arg,
            self.conn.peer.ip()
        );
        if esmtp {
            let lines = self.ehlo_lines(greeting);
            self.out.push_lines(250, &lines);
        } else {
            self.out.push(&Reply::owned(250, greeting));
        }
        self.helo = Some(Helo {
            name: arg.to_owned(),
            esmtp,
        });
    }

    /// Depends only on the configuration and TLS state, so clients may cache it.
    fn ehlo_lines(&self, greeting: String) -> Vec<String> {
        let offer_tls = self.conn.starttls_available && !self.is_tls();
        let optional = |on: bool, name: &str| on.then(|| name.to_owned());
        [
            Some(greeting),
            Some(format!("SIZE {}", self.config.max_message_size)),
            Some("8BITMIME".to_owned()),
            Some("PIPELINING".to_owned()),
            optional(self.conn.pipe_connect, "PIPECONNECT"),
            Some("CHUNKING".to_owned()),
            Some("ENHANCEDSTATUSCODES".to_owned()),
            Some("SMTPUTF8".to_owned()),
            optional(offer_tls, "STARTTLS"),
            Some("HELP".to_owned()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn rset(&mut self, arg: &str, sink: &mut dyn MessageSink) {
        if !arg.is_empty() {
            return self.reply(&reply::NO_ARGUMENTS);
        }
        self.reset_transaction(sink);
        self.reply(&reply::OK);
    }

    fn vrfy(&mut self, arg: &str) {
        let reply = if arg.is_empty() {
            reply::VRFY_SYNTAX
        } else {
            reply::VRFY
        };
        self.reply(&reply);
    }

    fn quit(&mut self, arg: &str) -> Next {
        if !arg.is_empty() {
            self.reply(&reply::NO_ARGUMENTS);
            return Next::Continue;
        }
        let text = format!("2.0.0 {} closing connection", self.config.hostname);
        self.reply(&Reply::owned(221, text));
        self.quit = true;
        Next::Close
    }

    fn starttls(&mut self, arg: &str) -> Next {
        let refusal = if self.is_tls() {
            Some(reply::ALREADY_TLS)
        } else if !self.conn.starttls_available {
            Some(reply::NO_STARTTLS)
        } else if !arg.is_empty() {
            Some(reply::NO_ARGUMENTS)
        } else {
            None
        };
        match refusal {
            Some(refusal) => {
                self.reply(&refusal);
                Next::Continue
            }
            None => {
                self.reply(&reply::START_TLS);
                Next::StartTls
            }
        }
    }
}
