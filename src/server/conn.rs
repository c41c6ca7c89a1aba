//! One client connection: moves bytes between the socket, the TLS session
//! (when there is one) and the SMTP state machine, and decides when the
//! connection ends. Reads are drained until `WouldBlock` (mio is
//! edge-triggered); replies produced by one batch of input go out in one
//! write.

use std::fmt;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::Shared;
use super::delivery::{Pending, StoreSink, tls_field};
use super::listener::Kind;
use super::timers::{Deadline, TimerKey};
use super::tls_context::resumption_words;
use crate::smtp::{ConnInfo, Next, Phase, SinkError, Smtp, TlsInfo};
use crate::tls::client_hello::{self, Hello, Parse};
use crate::tls::{Handshake, Negotiated, ReadStatus, ServerSession, TlsError};

/// Past this much unsent output, stop reading from a client that does not
/// read its replies.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// How long a closing connection may take to accept its last bytes.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Why a connection ended, as the close log line says it.
#[derive(Debug)]
pub enum Close {
    Quit,
    /// The state machine ended it (too many errors, synchronisation error).
    Protocol,
    Lost,
    /// The client ended TLS with close_notify, without QUIT.
    TlsClosed,
    Timeout,
    HandshakeTimeout,
    Shutdown,
    Tls(TlsError),
    Io(io::Error),
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Close::Quit => f.write_str("closed by QUIT"),
            Close::Protocol => f.write_str("closed after a protocol error"),
            Close::Lost => f.write_str("lost"),
            Close::TlsClosed => f.write_str("closed by the client's TLS close_notify"),
            Close::Timeout => f.write_str("closed: timeout"),
            Close::HandshakeTimeout => f.write_str("closed: TLS handshake timeout"),
            Close::Shutdown => f.write_str("closed: server shutting down"),
            Close::Tls(e) => write!(f, "closed: {e}"),
            Close::Io(e) => write!(f, "lost: {e}"),
        }
    }
}

enum Tls {
    Off,
    /// TLS has begun and the ClientHello is still arriving. The session is
    /// made only once it is here, so it can be handed the ticket master
    /// that issued the ticket the client offers.
    AwaitingHello(Vec<u8>),
    /// The ClientHello is here and names a TLS 1.2 session, which the
    /// supervisor is asked for before the session is made; what else the
    /// client sends meanwhile is kept.
    AwaitingSession(Vec<u8>, Hello),
    Handshaking(Box<ServerSession>, Option<Hello>),
    Established(Box<ServerSession>),
}

pub struct Conn {
    pub socket: TcpStream,
    pub peer: SocketAddr,
    key: TimerKey,
    pub deadline: Deadline,
    smtp: Smtp,
    tls: Tls,
    /// Cleartext that must reach the client before any TLS record: the
    /// STARTTLS 220 reply when the socket could not take it at once.
    pre_tls: Vec<u8>,
    pending: Option<Pending>,
    closing: Option<Close>,
    /// The client's input ended (FIN, or TLS close_notify) while a message
    /// of its waited for its group commit: what it sent before the end
    /// (a pipelined QUIT) is still answered, then the connection closes
    /// with this reason. A client that pipelines its end of data, QUIT and
    /// close_notify, as Exim does, otherwise never hears its 250 and sends
    /// the message again.
    input_ended: Option<Close>,
    read_paused: bool,
    /// Input that arrives while this is false came before the client could
    /// have seen our banner (early pipelining, or a synchronisation error).
    banner_sent: bool,
    /// When the command line in progress, or the message data in progress,
    /// began: each has a total deadline besides the idle timeout.
    line_since: Option<Instant>,
    message_since: Option<Instant>,
}

type Step = Result<(), Close>;

impl Conn {
    pub fn new(
        socket: TcpStream,
        peer: SocketAddr,
        kind: Kind,
        key: TimerKey,
        shared: &mut Shared,
    ) -> Conn {
        let info = ConnInfo {
            peer,
            starttls_available: kind == Kind::Starttls,
            tls: None,
            pipe_connect: shared.pipe_connect_hosts.matches(peer.ip()),
            relay: shared.relay_from.matches(peer.ip()),
        };
        let tls = match kind {
            Kind::Starttls => Tls::Off,
            Kind::Implicit => Tls::AwaitingHello(Vec::new()),
        };
        let timeout = match kind {
            Kind::Starttls => shared.timeouts.command,
            Kind::Implicit => shared.timeouts.handshake,
        };
        let mut conn = Conn {
            socket,
            peer,
            key,
            deadline: Deadline::new(shared.now),
            smtp: Smtp::new(shared.smtp_config.clone(), info),
            tls,
            pre_tls: Vec::new(),
            pending: None,
            closing: None,
            input_ended: None,
            read_paused: false,
            banner_sent: false,
            line_since: None,
            message_since: None,
        };
        conn.set_deadline(shared, timeout);
        conn
    }

    /// Greets a plain connection; an implicit-TLS one is greeted once the
    /// handshake is done. Whatever the client already sent is read first:
    /// an early-pipelining client then gets the banner and the replies to
    /// its commands in one write (Exim's PIPE_CONNECT).
    pub fn start(&mut self, shared: &mut Shared) -> Option<Close> {
        let step = if matches!(self.tls, Tls::Off) {
            self.read_socket(shared, true)
        } else {
            Ok(())
        };
        let step = step.and_then(|()| {
            self.greet_if_silent();
            self.flush()
        });
        self.finish(step)
    }

    fn greet_if_silent(&mut self) {
        if !self.banner_sent && matches!(self.tls, Tls::Off | Tls::Established(_)) {
            self.smtp.greet();
            self.banner_sent = true;
        }
    }

    pub fn key(&self) -> TimerKey {
        self.key
    }

    pub fn in_transaction(&self) -> bool {
        self.smtp.in_transaction()
    }

    /// Handles a readiness event. Some(reason) means: remove the connection.
    /// `peer_closed`: the event also reported the peer's FIN or an error,
    /// which a short read would not reveal (see `read_into`).
    pub fn on_ready(
        &mut self,
        readable: bool,
        peer_closed: bool,
        writable: bool,
        shared: &mut Shared,
    ) -> Option<Close> {
        let step = self.service(readable, peer_closed, writable, shared);
        self.finish(step)
    }

    fn service(
        &mut self,
        readable: bool,
        peer_closed: bool,
        writable: bool,
        shared: &mut Shared,
    ) -> Step {
        if readable && self.may_read() {
            self.read_socket(shared, peer_closed)?;
        }
        self.flush()?;
        if writable && self.read_paused && self.output_len() == 0 {
            self.read_paused = false;
            self.resume_reading(shared)?;
        }
        Ok(())
    }

    /// Not while the client ignores its replies, nor while a message's
    /// group commit is pending (its reply must precede any later one).
    fn may_read(&self) -> bool {
        !self.read_paused && !self.smtp.awaiting_commit() && self.input_ended.is_none()
    }

    /// The client's input is over: the connection ends now, unless a
    /// message of its awaits its commit (see `input_ended`).
    fn input_end(&mut self, why: Close) -> Step {
        if !self.smtp.awaiting_commit() {
            return Err(why);
        }
        self.input_ended.get_or_insert(why);
        Ok(())
    }

    /// Edge-triggered: data left unread while paused raises no new event,
    /// so reading resumes without one.
    fn resume_reading(&mut self, shared: &mut Shared) -> Step {
        if self.may_read() {
            self.read_socket(shared, true)?;
        }
        self.flush()
    }

    /// The group commit of this connection's message is over: the reply,
    /// then whatever the client sent meanwhile.
    pub fn on_committed(
        &mut self,
        outcome: Result<String, SinkError>,
        shared: &mut Shared,
    ) -> Option<Close> {
        let mut sink = StoreSink::new(shared, &mut self.pending, self.peer, self.key);
        let next = self.smtp.commit_finished(outcome, &mut sink);
        let step = self
            .after_input(next, shared)
            .and_then(|()| self.resume_reading(shared));
        self.finish(step)
    }

    pub fn on_timeout(&mut self, shared: &mut Shared) -> Option<Close> {
        if self.smtp.awaiting_commit() {
            // The commit comes within COMMIT_WAIT_MAX and re-arms the timer.
            return None;
        }
        if self.closing.is_some() {
            return Some(Close::Timeout);
        }
        if self.handshaking() {
            return Some(Close::HandshakeTimeout);
        }
        log::info!(
            "SMTP command timeout on connection from [{}]:{}",
            self.peer.ip(),
            self.peer.port()
        );
        self.smtp.timed_out();
        self.begin_close(Close::Timeout, shared);
        let step = self.flush();
        self.finish(step)
    }

    /// SIGTERM: connections between transactions end now with 421; those
    /// in a transaction finish it first (see `feed_smtp`).
    pub fn on_shutdown(&mut self, shared: &mut Shared) -> Option<Close> {
        if self.handshaking() {
            return Some(Close::Shutdown);
        }
        if self.closing.is_some() || self.smtp.in_transaction() {
            return None;
        }
        self.smtp.shutting_down();
        self.begin_close(Close::Shutdown, shared);
        let step = self.flush();
        self.finish(step)
    }

    fn finish(&mut self, step: Step) -> Option<Close> {
        if let Err(close) = step {
            // Best effort: a TLS alert or last reply may still fit.
            let _ = self.write_out();
            return Some(close);
        }
        if self.closing.is_some() && self.output_len() == 0 {
            let _ = self.socket.shutdown(Shutdown::Write);
            return self.closing.take();
        }
        if self.input_ended.is_some() && !self.smtp.awaiting_commit() && self.closing.is_none() {
            // Everything the client sent is answered; it will send no QUIT.
            let _ = self.write_out();
            return self.input_ended.take();
        }
        if let Tls::Established(session) = &mut self.tls
            && self.pre_tls.is_empty()
        {
            session.release_idle_buffers();
        }
        None
    }

    /// `drain`: read until EAGAIN (see `read_into`).
    fn read_socket(&mut self, shared: &mut Shared, drain: bool) -> Step {
        let mut buf = mem::take(&mut shared.read_buf);
        let step = self.read_into(&mut buf, shared, drain);
        shared.read_buf = buf;
        step
    }

    /// Reads until the socket is empty. A read that fills less than the
    /// buffer already says so — TCP hands over all it has — and anything
    /// arriving later raises a new edge-triggered event, so the read that
    /// would only return EAGAIN is skipped (one syscall per TLS flight),
    /// as nginx does. Not when `drain` is asked for: after an event that
    /// reported the peer's FIN or an error together with data (a short
    /// read shows the data, only the next read shows the end), or when the
    /// read does not follow an event at all.
    fn read_into(&mut self, buf: &mut [u8], shared: &mut Shared, drain: bool) -> Step {
        while self.closing.is_none() {
            let n = match self.socket.read(buf) {
                Ok(0) => return self.input_end(Close::Lost),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Close::Io(e)),
            };
            self.ingest(&buf[..n], shared)?;
            if self.smtp.awaiting_commit() || self.input_ended.is_some() {
                return Ok(());
            }
            if self.output_len() > OUTPUT_HIGH_WATER {
                self.read_paused = true;
                return Ok(());
            }
            if n < buf.len() && !drain {
                return Ok(());
            }
        }
        Ok(())
    }

    fn handshaking(&self) -> bool {
        matches!(
            self.tls,
            Tls::AwaitingHello(_) | Tls::AwaitingSession(..) | Tls::Handshaking(..)
        )
    }

    fn ingest(&mut self, bytes: &[u8], shared: &mut Shared) -> Step {
        match &mut self.tls {
            Tls::Off => self.feed_smtp(bytes, shared),
            Tls::AwaitingHello(buffered) => {
                buffered.extend_from_slice(bytes);
                self.start_handshake(shared)
            }
            Tls::AwaitingSession(buffered, _) => {
                buffered.extend_from_slice(bytes);
                Ok(())
            }
            Tls::Handshaking(session, _) => {
                session.feed(bytes);
                self.advance_handshake(shared)
            }
            Tls::Established(session) => {
                session.feed(bytes);
                self.decrypt(shared)
            }
        }
    }

    /// Makes the session once the whole ClientHello is buffered (or it is
    /// clear that it cannot be read, which GnuTLS then answers properly),
    /// after asking the supervisor for the TLS 1.2 session it names.
    fn start_handshake(&mut self, shared: &mut Shared) -> Step {
        let Tls::AwaitingHello(buffered) = &mut self.tls else {
            return Ok(());
        };
        let hello = match client_hello::parse(buffered) {
            Parse::Incomplete => return Ok(()),
            Parse::Complete(hello) => Some(hello),
            Parse::NotClientHello => None,
        };
        let buffered = mem::take(buffered);
        if let Some(hello) = hello {
            if let Some(id) = shared.tls.lookup_for(&hello)
                && shared.look_up_session(self.key, id)
            {
                self.tls = Tls::AwaitingSession(buffered, hello);
                return Ok(());
            }
            return self.make_session(buffered, Some(hello), None, shared);
        }
        self.make_session(buffered, None, None, shared)
    }

    /// The supervisor answered the lookup (`data`: the cached session), or
    /// the answer is not coming: the handshake begins.
    pub fn on_session(&mut self, data: Option<Vec<u8>>, shared: &mut Shared) -> Option<Close> {
        let Tls::AwaitingSession(..) = &self.tls else {
            return None;
        };
        let Tls::AwaitingSession(buffered, hello) = mem::replace(&mut self.tls, Tls::Off) else {
            return None;
        };
        let found = data.map(|d| (hello.session_id.clone(), d));
        let step = self
            .make_session(buffered, Some(hello), found, shared)
            .and_then(|()| self.flush());
        self.finish(step)
    }

    fn make_session(
        &mut self,
        buffered: Vec<u8>,
        hello: Option<Hello>,
        found: Option<(Vec<u8>, Vec<u8>)>,
        shared: &mut Shared,
    ) -> Step {
        let mut session = shared
            .tls
            .session(hello.as_ref(), found)
            .map_err(Close::Tls)?;
        session.feed(&buffered);
        self.tls = Tls::Handshaking(Box::new(session), hello);
        self.advance_handshake(shared)
    }

    fn advance_handshake(&mut self, shared: &mut Shared) -> Step {
        let Tls::Handshaking(session, _) = &mut self.tls else {
            return Ok(());
        };
        let done = session.handshake().map_err(Close::Tls);
        // A TLS 1.2 session cached by this handshake reaches the supervisor
        // before our last flight reaches the client, so that the client
        // finds it however soon it comes back, on whichever worker.
        shared.send_cache_ops();
        match done? {
            Handshake::InProgress => return Ok(()),
            Handshake::Done => {}
        }
        let Tls::Handshaking(session, hello) = mem::replace(&mut self.tls, Tls::Off) else {
            return Ok(());
        };
        let negotiated = session.negotiated();
        let info = TlsInfo {
            version: negotiated.version.to_string(),
            cipher: negotiated.cipher.clone(),
            bits: negotiated.bits,
            resumed: negotiated.resumed,
        };
        self.tls = Tls::Established(session);
        self.smtp.tls_established(info.clone());
        let timeout = shared.timeouts.command;
        self.set_deadline(shared, timeout);
        // A TLS 1.3 client may send its first commands with its Finished:
        // on the implicit-TLS listener that is before our banner.
        let step = self.decrypt(shared).and_then(|()| {
            self.greet_if_silent();
            // The TLS 1.3 tickets, the banner and any replies go out before
            // the bookkeeping below: a client that leaves right after its
            // handshake, as scanners do, still gets its tickets.
            self.flush()
        });
        self.established(shared, hello.as_ref(), &negotiated, &info);
        step
    }

    /// Bookkeeping once a handshake is done and its output written.
    fn established(
        &self,
        shared: &mut Shared,
        hello: Option<&Hello>,
        negotiated: &Negotiated,
        info: &TlsInfo,
    ) {
        let Tls::Established(session) = &self.tls else {
            return;
        };
        let resumption = resumption_words(shared.tls.resumption_supported(), hello, negotiated);
        log::info!(
            "TLS established with [{}]:{} X={} cert={} resumption={resumption}",
            self.peer.ip(),
            self.peer.port(),
            tls_field(info),
            shared.tls.served(session)
        );
    }

    fn decrypt(&mut self, shared: &mut Shared) -> Step {
        let Tls::Established(session) = &mut self.tls else {
            return Ok(());
        };
        let mut plain = mem::take(&mut shared.plain);
        plain.clear();
        let status = session.read(&mut plain);
        let step = match status {
            Ok(_) if !plain.is_empty() => self.feed_smtp(&plain, shared),
            _ => Ok(()),
        };
        shared.plain = plain;
        step?;
        match status.map_err(Close::Tls)? {
            ReadStatus::Open => Ok(()),
            ReadStatus::Closed if self.closing.is_some() => Ok(()),
            ReadStatus::Closed => self.input_end(Close::TlsClosed),
        }
    }

    fn feed_smtp(&mut self, bytes: &[u8], shared: &mut Shared) -> Step {
        let mut sink = StoreSink::new(shared, &mut self.pending, self.peer, self.key);
        let next = if self.banner_sent {
            self.smtp.receive(bytes, &mut sink)
        } else {
            self.banner_sent = true;
            self.smtp.early_input(bytes, &mut sink)
        };
        self.after_input(next, shared)
    }

    /// What the state machine's answer to new input means for the connection.
    fn after_input(&mut self, next: Next, shared: &mut Shared) -> Step {
        self.rearm(shared);
        match next {
            Next::Continue if shared.shutting_down && !self.smtp.in_transaction() => {
                self.smtp.shutting_down();
                self.begin_close(Close::Shutdown, shared);
                Ok(())
            }
            Next::Continue => Ok(()),
            Next::Close => {
                let reason = if self.smtp.quit_received() {
                    Close::Quit
                } else {
                    Close::Protocol
                };
                self.begin_close(reason, shared);
                Ok(())
            }
            Next::StartTls => self.start_tls(shared),
        }
    }

    /// STARTTLS was accepted. Anything the client sent after it, before it
    /// could have seen our 220, is an injection attempt: the state machine
    /// dropped the rest of its batch, and what is still in the socket is
    /// drained and dropped here, before the 220 goes out.
    fn start_tls(&mut self, shared: &mut Shared) -> Step {
        let discarded = self.discard_input()?;
        if discarded > 0 {
            log::warn!(
                "discarded {discarded} bytes sent after STARTTLS by [{}]:{}",
                self.peer.ip(),
                self.peer.port()
            );
        }
        self.pre_tls.extend_from_slice(self.smtp.output());
        let n = self.smtp.output().len();
        self.smtp.consume_output(n);
        self.tls = Tls::AwaitingHello(Vec::new());
        let timeout = shared.timeouts.handshake;
        self.set_deadline(shared, timeout);
        self.write_out()
    }

    fn discard_input(&mut self) -> Result<usize, Close> {
        // Not the shared read buffer: the caller is reading into it.
        let mut scratch = [0u8; 4096];
        let mut total = 0;
        loop {
            match self.socket.read(&mut scratch) {
                Ok(0) => return Err(Close::Lost),
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Close::Io(e)),
            }
        }
    }

    /// Ends the conversation once the queued output (the last reply, and
    /// close_notify under TLS) has been written.
    fn begin_close(&mut self, reason: Close, shared: &mut Shared) {
        if let Tls::Established(session) = &mut self.tls {
            let _ = encrypt(session, &mut self.smtp);
            session.bye();
        }
        self.closing = Some(reason);
        let key = self.key;
        let at = shared.now + CLOSE_GRACE;
        shared.timers.set(&mut self.deadline, at, key);
    }

    fn flush(&mut self) -> Step {
        if let Tls::Established(session) = &mut self.tls {
            encrypt(session, &mut self.smtp).map_err(Close::Tls)?;
        }
        self.write_out()
    }

    /// Writes what is queued for the socket until done or `WouldBlock`.
    fn write_out(&mut self) -> Step {
        write_some(&mut self.socket, &mut self.pre_tls)?;
        if !self.pre_tls.is_empty() {
            return Ok(());
        }
        match &mut self.tls {
            Tls::Off => {
                let n = write_slice(&mut self.socket, self.smtp.output())?;
                self.smtp.consume_output(n);
            }
            Tls::AwaitingHello(_) | Tls::AwaitingSession(..) => {}
            Tls::Handshaking(session, _) | Tls::Established(session) => {
                let n = write_slice(&mut self.socket, session.pending_output())?;
                session.consume_output(n);
            }
        }
        Ok(())
    }

    fn output_len(&self) -> usize {
        let tls = match &self.tls {
            Tls::Off | Tls::AwaitingHello(_) | Tls::AwaitingSession(..) => 0,
            Tls::Handshaking(session, _) | Tls::Established(session) => {
                session.pending_output().len()
            }
        };
        self.pre_tls.len() + self.smtp.output().len() + tls
    }

    /// After input: the idle timeout of the current phase, bounded by the
    /// total allowed for the command line or message in progress, so that
    /// a client trickling a byte every few seconds (slowloris) still ends.
    fn rearm(&mut self, shared: &mut Shared) {
        let now = shared.now;
        let t = &shared.timeouts;
        let data = self.smtp.phase() == Phase::Data;
        self.line_since = self
            .smtp
            .mid_command()
            .then(|| self.line_since.unwrap_or(now));
        self.message_since = data.then(|| self.message_since.unwrap_or(now));
        let idle = if data { t.data } else { t.command };
        let mut at = now + idle;
        if let Some(since) = self.line_since {
            at = at.min(since + t.command);
        }
        if let Some(since) = self.message_since {
            at = at.min(since + t.message);
        }
        self.set_deadline_at(shared, at);
    }

    fn set_deadline(&mut self, shared: &mut Shared, timeout: Duration) {
        let at = shared.now + timeout;
        self.set_deadline_at(shared, at);
    }

    fn set_deadline_at(&mut self, shared: &mut Shared, at: Instant) {
        if self.closing.is_some() {
            return;
        }
        let key = self.key;
        shared.timers.set(&mut self.deadline, at, key);
    }
}

/// Moves the state machine's replies into TLS records.
fn encrypt(session: &mut ServerSession, smtp: &mut Smtp) -> Result<(), TlsError> {
    let n = smtp.output().len();
    if n > 0 {
        session.write(smtp.output())?;
        smtp.consume_output(n);
    }
    Ok(())
}

fn write_some(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Step {
    let n = write_slice(socket, buf)?;
    buf.drain(..n);
    Ok(())
}

/// Writes as much of `buf` as the socket takes; returns how much that was.
fn write_slice(socket: &mut TcpStream, buf: &[u8]) -> Result<usize, Close> {
    let mut written = 0;
    while written < buf.len() {
        match socket.write(&buf[written..]) {
            Ok(0) => return Err(Close::Lost),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Close::Io(e)),
        }
    }
    Ok(written)
}
