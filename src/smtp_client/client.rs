//! The connection: greeting, EHLO/HELO, STARTTLS, QUIT and failures, and
//! the public API. Messages are in `transaction.rs`.

use std::collections::VecDeque;

use super::ehlo::Ehlo;
use super::output::Output;
use super::reply::{Read, Reply, ReplyReader};
use super::transaction::Transaction;
use super::{
    Action, ClientConfig, Command, ConnectionError, Delivery, End, Failure, MessageId, Outcome,
    Outgoing, ProtocolError, TlsWanted, Wait,
};

/// A command whose reply has not arrived yet; replies are matched to these
/// in order, however many were pipelined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Rset,
    Mail,
    /// The index of the recipient in the message.
    Rcpt(usize),
    Data,
    EndOfData,
    Bdat {
        last: bool,
    },
    Quit,
}

impl Expect {
    pub fn command(self) -> Command {
        match self {
            Expect::Greeting => Command::Greeting,
            Expect::Ehlo => Command::Ehlo,
            Expect::Helo => Command::Helo,
            Expect::StartTls => Command::StartTls,
            Expect::Rset => Command::Rset,
            Expect::Mail => Command::Mail,
            Expect::Rcpt(_) => Command::Rcpt,
            Expect::Data => Command::Data,
            Expect::EndOfData => Command::EndOfData,
            Expect::Bdat { last: false } => Command::Bdat,
            Expect::Bdat { last: true } => Command::BdatLast,
            Expect::Quit => Command::Quit,
        }
    }

    fn wait(self) -> Wait {
        match self {
            Expect::Greeting => Wait::Greeting,
            Expect::Ehlo | Expect::Helo => Wait::Hello,
            Expect::StartTls => Wait::StartTls,
            Expect::Rset => Wait::Rset,
            Expect::Mail => Wait::Mail,
            Expect::Rcpt(_) => Wait::Rcpt,
            Expect::Data => Wait::DataInit,
            Expect::Bdat { last: false } => Wait::DataBlock,
            Expect::EndOfData | Expect::Bdat { last: true } => Wait::DataEnd,
            Expect::Quit => Wait::Quit,
        }
    }
}

/// Where the connection is.
#[derive(Debug)]
enum Phase {
    Greeting,
    /// EHLO or HELO sent.
    Hello,
    /// STARTTLS sent.
    StartTls,
    /// The server refused STARTTLS under `IfOffered`: the driver decides.
    TlsRefused(Reply),
    /// The driver is running the TLS handshake.
    Handshake,
    /// Ready for a message, or carrying one.
    Open,
    /// QUIT sent.
    Quitting,
    Closed(End),
}

/// One SMTP client connection, sans-I/O: see the module documentation.
pub struct Client {
    config: ClientConfig,
    phase: Phase,
    reader: ReplyReader,
    pub(super) out: Output,
    pub(super) expect: VecDeque<Expect>,
    pub(super) ehlo: Option<Ehlo>,
    tls: bool,
    quit_requested: bool,
    /// The server may still hold the last transaction: RSET before MAIL.
    pub(super) needs_rset: bool,
    pub(super) txn: Option<Transaction>,
    /// Finished messages not yet handed to the driver.
    pub(super) done: VecDeque<Delivery>,
    next_id: u64,
    /// Reused for BDAT chunks, whose size must be known before they go out.
    pub(super) scratch: Vec<u8>,
    /// Pipelining early: the kept EHLO response the server's reply must
    /// match; None when not, or once it did.
    pub(super) early_expected: Option<Ehlo>,
    /// Pipelining early, and the banner has not arrived yet.
    early_greeting: bool,
    /// Early pipelining was used on this connection.
    early_used: bool,
    /// The message sent before the kept EHLO response was confirmed.
    early_message: Option<MessageId>,
    /// The server's EHLO reply offered something else than the kept one:
    /// what `early_message` did not get delivered goes again.
    early_changed: Option<String>,
    /// The latest EHLO response, for the driver to keep: (inside TLS, it).
    ehlo_seen: Option<(bool, Ehlo)>,
}

impl Client {
    pub fn new(mut config: ClientConfig) -> Client {
        // The name goes into a command line: nothing may end that early.
        config.helo_name = config
            .helo_name
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let tls = config.implicit_tls;
        let mut client = Client {
            config,
            phase: Phase::Greeting,
            reader: ReplyReader::default(),
            out: Output::default(),
            expect: VecDeque::from([Expect::Greeting]),
            ehlo: None,
            tls,
            quit_requested: false,
            needs_rset: false,
            txn: None,
            done: VecDeque::new(),
            next_id: 0,
            scratch: Vec::new(),
            early_expected: None,
            early_greeting: false,
            early_used: false,
            early_message: None,
            early_changed: None,
            ehlo_seen: None,
        };
        client.start_early();
        client
    }

    /// Pipelines early where a kept EHLO response allows it (see
    /// [`super::Early`]).
    fn start_early(&mut self) {
        let usable = |e: &Option<Ehlo>| e.clone().filter(Ehlo::allows_early_pipelining);
        let (plain, tls) = (
            usable(&self.config.early.plain),
            usable(&self.config.early.tls),
        );
        let kept = if self.config.implicit_tls {
            tls
        } else {
            plain.filter(|p| p.starttls || self.config.tls != TlsWanted::Required)
        };
        let Some(kept) = kept else {
            return;
        };
        self.early_greeting = true;
        self.early_used = true;
        self.send_ehlo();
        let starttls = !self.tls && self.config.tls != TlsWanted::Never && kept.starttls;
        if starttls {
            self.out.command("STARTTLS");
            self.expect.push_back(Expect::StartTls);
            self.phase = Phase::StartTls;
        } else {
            self.phase = Phase::Open;
            self.ehlo = Some(kept.clone());
        }
        self.early_expected = Some(kept);
    }

    /// Bytes from the server, in any pieces. Once the connection is closed
    /// they are ignored; while TLS should be starting they fail it.
    pub fn receive(&mut self, input: &[u8]) {
        let mut rest = input;
        while !rest.is_empty() {
            match self.phase {
                Phase::Closed(_) => return,
                Phase::Handshake => {
                    // Whatever the server sent behind its yes to STARTTLS
                    // was sent before TLS: it must never be taken as a
                    // reply inside TLS (CVE-2011-0411's client side).
                    return self.fail(ConnectionError::Protocol(ProtocolError::StartTlsInjection));
                }
                _ => {}
            }
            let (used, read) = self.reader.read(rest);
            rest = rest.get(used..).unwrap_or_default();
            match read {
                Read::Pending => {}
                Read::Error(error) => return self.fail(ConnectionError::Protocol(error)),
                Read::Reply(reply, raw) => self.reply(reply, raw),
            }
        }
    }

    /// What to send to the server.
    pub fn output(&self) -> &[u8] {
        self.out.pending()
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// What the driver should do now. `Done` results come first, once each;
    /// `Closed` repeats.
    pub fn next_action(&mut self) -> Action {
        if let Some(delivery) = self.done.pop_front() {
            return Action::Done(delivery);
        }
        match &self.phase {
            Phase::Closed(end) => Action::Closed(end.clone()),
            Phase::Handshake if self.out.is_empty() => Action::StartTls,
            Phase::TlsRefused(reply) => Action::TlsRefused(reply.clone()),
            Phase::Open => match self.content_wanted() {
                Some(id) => Action::NeedContent(id),
                None if self.ready() => Action::Ready,
                None => Action::Wait,
            },
            _ => Action::Wait,
        }
    }

    /// Which timeout applies now.
    pub fn wait(&self) -> Wait {
        match &self.phase {
            Phase::Greeting => Wait::Greeting,
            Phase::Hello => Wait::Hello,
            Phase::StartTls => Wait::StartTls,
            Phase::TlsRefused(_) => Wait::Idle,
            Phase::Handshake => Wait::Tls,
            Phase::Open => self.transaction_wait(),
            Phase::Quitting => Wait::Quit,
            Phase::Closed(_) => Wait::Closed,
        }
    }

    /// Sends a message, if the connection is ready for one (after
    /// [`Action::Ready`]); otherwise gives it back. A message the server
    /// cannot take (SIZE, SMTPUTF8, a bad address) is reported failed at
    /// once, by [`Action::Done`], without being sent.
    pub fn submit(&mut self, message: Outgoing) -> Result<MessageId, Outgoing> {
        if !self.ready() {
            return Err(message);
        }
        let id = MessageId(self.next_id);
        self.next_id += 1;
        if self.early_expected.is_some() {
            self.early_message = Some(id);
        }
        self.start(id, message);
        Ok(id)
    }

    /// The next chunk of the message's content, in wire form (CRLF line
    /// ends, not dot-stuffed), after [`Action::NeedContent`]; `last` with
    /// the final chunk (which may be empty). Chunks may split the content
    /// anywhere. Ignored when no content is wanted (the message failed
    /// meanwhile, say).
    pub fn supply_content(&mut self, chunk: &[u8], last: bool) {
        self.content(chunk, last);
    }

    /// The driver's TLS handshake succeeded (after [`Action::StartTls`]):
    /// everything learnt before is forgotten and EHLO goes out again.
    pub fn tls_started(&mut self) {
        if !matches!(self.phase, Phase::Handshake) {
            return;
        }
        self.tls = true;
        self.ehlo = None;
        self.reader = ReplyReader::default();
        if self.quit_requested {
            self.send_quit();
            return;
        }
        self.send_ehlo();
        let kept = self.config.early.tls.clone();
        if let Some(kept) = kept.filter(Ehlo::allows_early_pipelining) {
            // The first message's commands go with this EHLO.
            self.early_used = true;
            self.phase = Phase::Open;
            self.ehlo = Some(kept.clone());
            self.early_expected = Some(kept);
        }
    }

    /// Early pipelining was used on this connection (and, if it is still
    /// open or ended well, met no surprise).
    pub fn early_pipelining(&self) -> bool {
        self.early_used
    }

    /// The message sent before the kept EHLO response was confirmed.
    pub fn early_message(&self) -> Option<MessageId> {
        self.early_message
    }

    /// Why early pipelining met a surprise on this connection, if it did.
    pub fn early_surprise(&self) -> Option<&str> {
        self.early_changed.as_deref()
    }

    /// The EHLO response received since the last call, and whether it came
    /// inside TLS: for the driver to keep for early pipelining.
    pub fn take_ehlo_seen(&mut self) -> Option<(bool, Ehlo)> {
        self.ehlo_seen.take()
    }

    /// After [`Action::TlsRefused`]: go on in plaintext.
    pub fn continue_without_tls(&mut self) {
        if matches!(self.phase, Phase::TlsRefused(_)) {
            self.phase = Phase::Open;
            self.advance();
        }
    }

    /// Ends the connection politely: QUIT as soon as nothing else is
    /// outstanding (at once when ready; after the message in progress, or
    /// the greeting, EHLO, STARTTLS or TLS step in progress, otherwise).
    /// Once QUIT is sent the connection ends with its reply: the driver
    /// may wait for it or close at once.
    pub fn quit(&mut self) {
        if matches!(self.phase, Phase::Closed(_) | Phase::Quitting) {
            return;
        }
        self.quit_requested = true;
        self.advance();
    }

    /// The connection failed (EOF, a reset, a TLS error): every open
    /// recipient is deferred.
    pub fn connection_lost(&mut self) {
        let wait = self.wait();
        self.fail(ConnectionError::Lost(wait));
    }

    /// The timeout of [`Client::wait`] expired: every open recipient is
    /// deferred.
    pub fn timed_out(&mut self) {
        let wait = self.wait();
        self.fail(ConnectionError::TimedOut(wait));
    }

    /// The server's EHLO reply in force (the one inside TLS after
    /// STARTTLS); None before it and after a fallback to HELO.
    pub fn ehlo(&self) -> Option<&Ehlo> {
        self.ehlo.as_ref()
    }

    /// TLS is on (implicit, or started after STARTTLS).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The message in progress.
    pub fn current_message(&self) -> Option<MessageId> {
        self.txn.as_ref().map(|txn| txn.id)
    }

    fn ready(&self) -> bool {
        // Pipelining early, the first message goes behind the EHLO whose
        // reply is still due.
        let early = self.early_expected.is_some()
            && self
                .expect
                .iter()
                .all(|e| matches!(e, Expect::Greeting | Expect::Ehlo));
        matches!(self.phase, Phase::Open)
            && self.txn.is_none()
            && (self.expect.is_empty() || early)
            && !self.quit_requested
    }

    pub(super) fn pipelining(&self) -> bool {
        self.ehlo.as_ref().is_some_and(|e| e.pipelining)
    }

    fn transaction_wait(&self) -> Wait {
        let Some(txn) = &self.txn else {
            return Wait::Idle;
        };
        if txn.sending_content() && !self.out.is_empty() {
            return Wait::DataBlock;
        }
        match self.expect.front() {
            Some(expect) => expect.wait(),
            None if txn.sending_content() || txn.awaits_content() => Wait::DataBlock,
            None => Wait::Idle,
        }
    }

    fn reply(&mut self, reply: Reply, raw: Vec<u8>) {
        let Some(expect) = self.expect.pop_front() else {
            return self.fail(ConnectionError::Unsolicited(reply));
        };
        if expect == Expect::Quit {
            // Whatever it says, the conversation is over.
            self.out.clear();
            self.expect.clear();
            self.phase = Phase::Closed(End::Quit);
            return;
        }
        if expect == Expect::Greeting && self.early_greeting {
            self.early_greeting = false;
            if reply.class() != 2 {
                return self.surprise(format!("banner {reply}"));
            }
            // EHLO is on its way already.
            return self.advance();
        }
        if expect == Expect::Ehlo
            && let Some(kept) = self.early_expected.take()
        {
            return self.on_early_ehlo(kept, reply, raw);
        }
        if reply.code == 421 {
            // RFC 5321 3.8: the server is closing; no more replies come.
            return self.server_closing(expect.command(), reply);
        }
        match expect {
            Expect::Greeting => self.on_greeting(reply),
            Expect::Ehlo => self.on_ehlo(reply, raw),
            Expect::Helo => self.on_helo(reply),
            Expect::StartTls => self.on_starttls(reply),
            _ => self.on_transaction_reply(expect, reply),
        }
        self.advance();
    }

    /// Sends what the state allows: the message's next commands, or QUIT.
    pub(super) fn advance(&mut self) {
        match self.phase {
            Phase::Open => {
                if self.txn.is_some() {
                    self.pump();
                }
                if self.txn.is_none() && self.expect.is_empty() && self.quit_requested {
                    self.send_quit();
                }
            }
            Phase::TlsRefused(_) if self.quit_requested => self.send_quit(),
            _ => {}
        }
    }

    fn on_greeting(&mut self, reply: Reply) {
        match reply.class() {
            2 if self.quit_requested => self.send_quit(),
            2 => self.send_ehlo(),
            4 | 5 => self.refuse(Command::Greeting, reply),
            _ => self.unexpected(Command::Greeting, reply),
        }
    }

    /// The reply to an EHLO sent early. Refused, the server will take
    /// nothing: the connection fails. Offering something else than the
    /// kept one, the commands sent behind it were answered by a server we
    /// misjudged: their replies still say what it did with the message,
    /// but what did not get it delivered is not held against it (see
    /// [`Client::report`]); the connection goes on with the new reply.
    fn on_early_ehlo(&mut self, kept: Ehlo, reply: Reply, raw: Vec<u8>) {
        if reply.class() != 2 {
            return self.surprise(format!("EHLO refused: {reply}"));
        }
        let ehlo = Ehlo::parse(&reply, raw);
        if !ehlo.same_offer(&kept) {
            self.early_changed = Some("the EHLO response changed".into());
        }
        self.ehlo_seen = Some((self.tls, ehlo.clone()));
        self.ehlo = Some(ehlo);
        self.advance();
    }

    /// Hands a finished message to the driver. The one sent early, when
    /// the server's EHLO reply then changed or had not come yet (a message
    /// refused before sending, on the kept response's word), has every
    /// recipient that was not delivered deferred for early pipelining
    /// instead, whatever the server said (a 5xx to a command it no longer
    /// knows is no verdict on the message): the driver sends those again
    /// the ordinary way, decided on the server's real reply.
    pub(super) fn report(&mut self, mut delivery: Delivery) {
        if self.early_message == Some(delivery.id) {
            // Before the EHLO reply came, a refusal rests on the kept
            // response's word.
            let unconfirmed = self.early_expected.is_some();
            for rcpt in &mut delivery.recipients {
                let why = match &rcpt.outcome {
                    Outcome::Delivered(_)
                    | Outcome::Deferred(Failure::Connection(ConnectionError::EarlyPipelining(_))) =>
                    {
                        continue;
                    }
                    Outcome::Failed(_) if unconfirmed => "refused on a kept EHLO response".into(),
                    _ => match &self.early_changed {
                        Some(why) => why.clone(),
                        None => continue,
                    },
                };
                rcpt.outcome =
                    Outcome::Deferred(Failure::Connection(ConnectionError::EarlyPipelining(why)));
            }
        }
        self.done.push_back(delivery);
    }

    /// The server did not answer early pipelining as it did before.
    fn surprise(&mut self, why: String) {
        self.fail(ConnectionError::EarlyPipelining(why));
    }

    fn on_ehlo(&mut self, reply: Reply, raw: Vec<u8>) {
        match reply.class() {
            2 => {
                let ehlo = Ehlo::parse(&reply, raw);
                self.ehlo_seen = Some((self.tls, ehlo.clone()));
                self.ehlo = Some(ehlo);
                self.after_hello();
            }
            // Only a permanent refusal means the server does not know
            // EHLO (RFC 5321 3.2); a 4xx is the server's trouble.
            5 => {
                self.out.command(&format!("HELO {}", self.config.helo_name));
                self.expect.push_back(Expect::Helo);
            }
            4 => self.refuse(Command::Ehlo, reply),
            _ => self.unexpected(Command::Ehlo, reply),
        }
    }

    fn on_helo(&mut self, reply: Reply) {
        match reply.class() {
            2 => {
                self.ehlo = None;
                self.after_hello();
            }
            4 | 5 => self.refuse(Command::Helo, reply),
            _ => self.unexpected(Command::Helo, reply),
        }
    }

    fn after_hello(&mut self) {
        let offered = self.ehlo.as_ref().is_some_and(|e| e.starttls);
        if self.quit_requested {
            self.send_quit();
        } else if !self.tls && self.config.tls != TlsWanted::Never && offered {
            self.out.command("STARTTLS");
            self.expect.push_back(Expect::StartTls);
            self.phase = Phase::StartTls;
        } else if !self.tls && self.config.tls == TlsWanted::Required {
            self.out.command("QUIT");
            self.expect.clear();
            self.phase = Phase::Closed(End::TlsNotOffered);
        } else {
            self.phase = Phase::Open;
        }
    }

    fn on_starttls(&mut self, reply: Reply) {
        match reply.class() {
            2 => self.phase = Phase::Handshake,
            4 | 5 if self.config.tls == TlsWanted::Required => {
                self.refuse(Command::StartTls, reply)
            }
            4 | 5 => self.phase = Phase::TlsRefused(reply),
            _ => self.unexpected(Command::StartTls, reply),
        }
    }

    fn send_ehlo(&mut self) {
        self.out.command(&format!("EHLO {}", self.config.helo_name));
        self.expect.push_back(Expect::Ehlo);
        self.phase = Phase::Hello;
    }

    fn send_quit(&mut self) {
        self.out.command("QUIT");
        self.expect.push_back(Expect::Quit);
        self.phase = Phase::Quitting;
    }

    /// The server will not go on: say QUIT (RFC 5321 3.1 asks for it after
    /// a refused greeting) and close without waiting. A message in
    /// progress (only possible after RSET) is deferred. The output is kept:
    /// the driver may have written part of a command, whose rest must come
    /// before the QUIT.
    pub(super) fn refuse(&mut self, command: Command, reply: Reply) {
        self.abandon(Failure::Reply {
            command,
            reply: reply.clone(),
        });
        self.out.command("QUIT");
        self.expect.clear();
        self.phase = Phase::Closed(End::Refused { command, reply });
    }

    /// A 421: the open recipients are deferred with it, and the server
    /// closes, so no QUIT.
    fn server_closing(&mut self, command: Command, reply: Reply) {
        self.abandon(Failure::Reply {
            command,
            reply: reply.clone(),
        });
        self.out.clear();
        self.expect.clear();
        self.phase = Phase::Closed(End::Refused { command, reply });
    }

    pub(super) fn unexpected(&mut self, command: Command, reply: Reply) {
        self.fail(ConnectionError::Protocol(ProtocolError::UnexpectedReply {
            command,
            reply,
        }));
    }

    /// The connection cannot go on: defer what is open and close at once,
    /// dropping whatever was not written yet (nothing more goes to a
    /// server that broke the protocol, or to a dead connection).
    fn fail(&mut self, error: ConnectionError) {
        let end = match self.phase {
            Phase::Closed(_) => return,
            // After QUIT nothing is open: the end is the one asked for.
            Phase::Quitting => End::Quit,
            _ => {
                self.abandon(Failure::Connection(error.clone()));
                End::Error(error)
            }
        };
        self.out.clear();
        self.expect.clear();
        self.phase = Phase::Closed(end);
    }

    /// Reports the message in progress with every open recipient deferred.
    fn abandon(&mut self, failure: Failure) {
        if let Some(mut txn) = self.txn.take() {
            txn.settle_all(|| Outcome::Deferred(failure.clone()));
            let delivery = txn.delivery();
            self.report(delivery);
        }
    }
}
