//! One connection to a next hop: the TCP socket, TLS once it is started
//! (by STARTTLS, or from the first byte on an `smtps:` route), and the SMTP
//! client engine (`crate::smtp_client`), driven by the delivery process's
//! loop. It takes its destination's waiting jobs one after the other while
//! there are any, and reports each message's results and its own end.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::mem;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::destination::{Address, Job, Key};
use super::resumption::Resumption;
use super::schedule::Schedule;
use crate::client_cache::{ClientCache, KeyParts};
use crate::clock::unix_now;
use crate::queue::QueueDir;
use crate::routing::TlsLevel;
use crate::smtp_client::{
    Action, Client, ClientConfig, ConnectionError, Early, End, Failure, MessageId, Outcome,
    Outgoing, TlsWanted, Wait,
};
use crate::tls::{ClientSession, ClientSetup, Credentials, Handshake, Priority, ReadStatus};

/// RFC 5321 gives no connect timeout; Postfix waits 30 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A whole TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Content goes to the engine in pieces of this size.
const CHUNK: usize = 64 * 1024;

/// What every outbound TLS session is made from.
pub struct ClientTls {
    /// With the trust anchors of --ca-file or the system store.
    pub credentials: Rc<Credentials>,
    pub priority: Rc<Priority>,
    /// `--tls-priority` and the trust anchors' label, for the session
    /// cache's keys.
    pub priority_text: String,
    pub trust: String,
}

/// What a connection needs from the loop while it runs.
pub struct Ctx<'a> {
    /// Its destination's waiting jobs.
    pub jobs: &'a mut VecDeque<Job>,
    pub schedule: &'a Schedule,
    pub queue: &'a QueueDir,
    pub tls: &'a ClientTls,
    pub cache: &'a mut ClientCache,
    /// `--ehlo-cache-expire`, seconds.
    pub ehlo_expire: u64,
    /// The process is stopping: take no new job.
    pub stopping: bool,
    /// Messages found removed from the queue (`gsmtpd queue remove`).
    pub gone: &'a mut Vec<String>,
}

/// What the loop learns from a connection.
#[derive(Debug)]
pub enum Event {
    /// The results of a job's message, per recipient in job order.
    Results {
        job: Job,
        results: Vec<Outcome>,
        /// `X=` of the log line, when TLS was used.
        tls: Option<String>,
        /// Early pipelining was used (`L*`).
        early: bool,
    },
    /// A job taken and not sent after all (the connection failed before
    /// the server could take its message): back to the destination's.
    Unsent(Job),
    /// The connection is over.
    Closed(Closed),
}

#[derive(Debug)]
pub struct Closed {
    /// Why, in the words of a log line (None after a QUIT).
    pub reason: Option<String>,
    /// The server refused us for good (5xx greeting or HELO).
    pub permanent: bool,
    /// The TLS handshake failed (under `may` another try goes without
    /// STARTTLS).
    pub tls_failed: bool,
    /// It never got as far as a message: another address may be tried.
    pub before_any_message: bool,
    /// Early pipelining met a surprise: its job is back in the queue of
    /// the destination, to go again at once the ordinary way.
    pub again: bool,
}

enum Tls {
    Off,
    Handshaking(Box<ClientSession>),
    On(Box<ClientSession>),
}

/// The message being sent.
struct Sending {
    job: Job,
    id: MessageId,
    file: Option<File>,
    left: u64,
}

pub struct Connection {
    pub socket: TcpStream,
    pub key: Key,
    pub address: Address,
    /// Where `address` is among the destination's addresses.
    pub attempt: usize,
    /// STARTTLS is not used on this connection (after a failed handshake
    /// under `may`).
    pub plaintext: bool,
    pub deadline: Instant,
    connected: bool,
    /// Fast Open deferred the connect to the first write: the socket is
    /// writable at once and has no peer yet.
    deferred: bool,
    client: Client,
    tls: Tls,
    resumption: Option<Resumption>,
    /// The EHLO responses early pipelining relies on (kept from earlier
    /// connections to this address).
    early: Early,
    sending: Option<Sending>,
    messages: usize,
    events: Vec<Event>,
    closed: bool,
}

impl Connection {
    pub fn connect(
        key: Key,
        address: Address,
        attempt: usize,
        plaintext: bool,
        hostname: &str,
        early: Early,
        now: Instant,
    ) -> io::Result<Connection> {
        let tls = if plaintext || key.tls.level == TlsLevel::None {
            TlsWanted::Never
        } else if key.tls.level == TlsLevel::May {
            TlsWanted::IfOffered
        } else {
            TlsWanted::Required
        };
        let client = Client::new(ClientConfig {
            helo_name: hostname.to_string(),
            tls,
            implicit_tls: key.hop.implicit_tls(),
            early: early.clone(),
        });
        // We speak first (early pipelining, or a ClientHello): our first
        // bytes may ride in the SYN. Never otherwise: with Fast Open the
        // kernel sends no SYN until the first write, and a server that
        // speaks first would wait for it forever.
        let (socket, deferred) = if client.early_pipelining() || key.hop.implicit_tls() {
            connect_fast_open(address.addr)?
        } else {
            (TcpStream::connect(address.addr)?, false)
        };
        // Commands go out as they are written, not behind the previous
        // segment's ACK.
        socket.set_nodelay(true)?;
        Ok(Connection {
            socket,
            key,
            address,
            attempt,
            plaintext,
            deadline: now + CONNECT_TIMEOUT,
            connected: false,
            deferred,
            client,
            tls: Tls::Off,
            resumption: None,
            early,
            sending: None,
            messages: 0,
            events: Vec::new(),
            closed: false,
        })
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        mem::take(&mut self.events)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// A readiness event.
    pub fn on_ready(&mut self, readable: bool, writable: bool, ctx: &mut Ctx<'_>, now: Instant) {
        if self.closed {
            return;
        }
        if !self.connected {
            if !writable && !readable {
                return;
            }
            match self.socket.take_error() {
                Ok(None) if self.deferred || self.socket.peer_addr().is_ok() => {
                    self.on_connected(ctx, now)
                }
                Ok(None) => return,
                Ok(Some(e)) | Err(e) => return self.abort(format!("connect: {e}"), false),
            }
        }
        if readable {
            self.read(ctx, now);
        }
        self.drive(ctx, now);
    }

    fn on_connected(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        self.connected = true;
        self.rearm(now);
        if self.key.hop.implicit_tls() {
            self.start_tls(ctx, now);
        }
    }

    /// The deadline passed.
    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        if self.closed {
            return;
        }
        if !self.connected {
            return self.abort("connect: timed out".into(), false);
        }
        if let Tls::Handshaking(_) = self.tls {
            return self.abort("TLS handshake: timed out".into(), true);
        }
        self.client.timed_out();
        self.drive(ctx, now);
    }

    /// The loop stops: end politely between messages, or at once.
    pub fn stop(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        if !self.connected {
            return self.abort("stopping".into(), false);
        }
        self.drive(ctx, now);
    }

    fn read(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.socket.read(&mut buf) {
                Ok(0) => {
                    self.client.connection_lost();
                    return;
                }
                Ok(n) => self.received(&buf[..n], ctx, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.client.connection_lost();
                    return;
                }
            }
            if self.closed {
                return;
            }
        }
    }

    fn received(&mut self, bytes: &[u8], ctx: &mut Ctx<'_>, now: Instant) {
        match &mut self.tls {
            Tls::Off => self.client.receive(bytes),
            Tls::Handshaking(session) => {
                session.feed(bytes);
                self.continue_handshake(ctx, now);
            }
            Tls::On(session) => {
                session.feed(bytes);
                self.decrypt(ctx);
            }
        }
    }

    /// Hands the engine what TLS can decrypt of the input so far, and
    /// caches a TLS 1.3 ticket that came with it.
    fn decrypt(&mut self, ctx: &mut Ctx<'_>) {
        let Tls::On(session) = &mut self.tls else {
            return;
        };
        let mut plain = Vec::new();
        let status = session.read(&mut plain);
        if let Some(r) = self.resumption.as_mut() {
            r.after_read(session, ctx.cache);
        }
        match status {
            Ok(ReadStatus::Open) => self.client.receive(&plain),
            Ok(ReadStatus::Closed) => {
                self.client.receive(&plain);
                self.client.connection_lost();
            }
            Err(_) => self.client.connection_lost(),
        }
    }

    /// Does what the engine asks until it waits for the server.
    fn drive(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        while !self.closed {
            let action = self.client.next_action();
            log::trace!("{} [{}]: {action:?}", self.address.host, self.address.addr);
            match action {
                Action::Wait => break,
                // The engine asks until the handshake is over: once
                // started, it goes on as the server's flights arrive.
                Action::StartTls => {
                    if matches!(self.tls, Tls::Off) {
                        self.flush();
                        self.start_tls(ctx, now);
                    }
                    break;
                }
                // `may`: go on in plaintext, as Postfix does.
                Action::TlsRefused(_) => self.client.continue_without_tls(),
                Action::Ready => self.next_message(ctx),
                Action::NeedContent(_) => self.supply_content(),
                Action::Done(delivery) => {
                    let Some(job) = self.sending.take().map(|s| s.job) else {
                        continue;
                    };
                    let outcomes = delivery.recipients.into_iter().map(|r| r.outcome);
                    let (again, results): (Vec<_>, Vec<_>) = job
                        .rcpts
                        .iter()
                        .copied()
                        .zip(outcomes)
                        .partition(|(_, o)| never_sent(o));
                    if !again.is_empty() {
                        // Pipelined early and never answered, or answered
                        // by a server that surprised us: these go again,
                        // at once and the ordinary way (on this connection
                        // if it goes on, else on the next one), as they
                        // would have without early pipelining.
                        ctx.jobs.push_front(Job {
                            id: job.id.clone(),
                            rcpts: again.iter().map(|(rcpt, _)| *rcpt).collect(),
                        });
                    }
                    if results.is_empty() {
                        continue;
                    }
                    self.messages += 1;
                    let (rcpts, results) = results.into_iter().unzip();
                    self.events.push(Event::Results {
                        job: Job { id: job.id, rcpts },
                        results,
                        tls: self.tls_field(),
                        early: self.client.early_pipelining(),
                    });
                }
                Action::Closed(end) => {
                    self.keep_ehlo(ctx);
                    self.flush();
                    self.end(end, ctx);
                    return;
                }
            }
        }
        self.keep_ehlo(ctx);
        self.flush();
        self.rearm(now);
    }

    /// Keeps the server's EHLO response for early pipelining next time,
    /// where it offers that and differs from the one kept; forgets the
    /// kept ones when it no longer offers it.
    fn keep_ehlo(&mut self, ctx: &mut Ctx<'_>) {
        let Some((tls, ehlo)) = self.client.take_ehlo_seen() else {
            return;
        };
        let kept = if tls {
            &self.early.tls
        } else {
            &self.early.plain
        };
        let addr = self.address.addr;
        if let Some(why) = self.client.early_surprise() {
            log::info!(
                "{} [{}]:{}: early pipelining: {why}; what the server did not take goes again the ordinary way",
                self.address.host,
                addr.ip(),
                addr.port()
            );
        }
        if ehlo.allows_early_pipelining() {
            if !kept.as_ref().is_some_and(|k| k.same_offer(&ehlo)) {
                let expires = unix_now().saturating_add(ctx.ehlo_expire as i64);
                ctx.cache.store_ehlo(addr, tls, &ehlo.raw, expires);
            }
        } else if kept.is_some() {
            log::info!(
                "{} [{}]:{} no longer offers PIPECONNECT{}",
                self.address.host,
                addr.ip(),
                addr.port(),
                if tls { " inside TLS" } else { "" }
            );
            ctx.cache.forget_ehlo(addr);
        }
    }

    /// The next job of the destination, or QUIT when there is none.
    fn next_message(&mut self, ctx: &mut Ctx<'_>) {
        while !ctx.stopping {
            let Some(job) = ctx.jobs.pop_front() else {
                break;
            };
            let Some(message) = ctx.schedule.get(&job.id) else {
                continue;
            };
            let env = &message.envelope;
            let outgoing = Outgoing {
                sender: env.sender.clone(),
                recipients: job
                    .rcpts
                    .iter()
                    .filter_map(|&i| env.recipients.get(i).cloned())
                    .collect(),
                eight_bit: env.eight_bit,
                smtputf8: env.smtputf8,
                size: message.size,
            };
            // The file is opened now: removed from the queue meanwhile
            // (`gsmtpd queue remove`), the job is dropped.
            let file = File::open(ctx.queue.message_path(&job.id)).and_then(|mut f| {
                f.seek(SeekFrom::Start(message.content_offset))?;
                Ok(f)
            });
            let Ok(file) = file else {
                log::info!("{}: no longer in the queue", job.id);
                ctx.gone.push(job.id);
                continue;
            };
            match self.client.submit(outgoing) {
                Ok(id) => {
                    self.sending = Some(Sending {
                        job,
                        id,
                        file: Some(file),
                        left: message.size,
                    });
                    return;
                }
                Err(_) => {
                    ctx.jobs.push_front(job);
                    break;
                }
            }
        }
        self.client.quit();
    }

    fn supply_content(&mut self) {
        let Some(sending) = self.sending.as_mut() else {
            return;
        };
        let mut chunk = vec![0u8; CHUNK.min(sending.left as usize)];
        let read = match sending.file.as_mut() {
            Some(file) => file.read_exact(&mut chunk),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        };
        if let Err(e) = read {
            // The queue file shrank or vanished under us: nothing we could
            // still send is the message, so the connection is given up and
            // the recipients deferred.
            log::error!("{}: reading the queue file: {e}", sending.job.id);
            self.client.connection_lost();
            return;
        }
        sending.left -= chunk.len() as u64;
        let last = sending.left == 0;
        if last {
            sending.file = None;
        }
        let _ = sending.id;
        self.client.supply_content(&chunk, last);
    }

    fn start_tls(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        let verify = self.key.tls.level == TlsLevel::Verify;
        let host = self.address.host.as_str();
        let is_name = host.parse::<std::net::IpAddr>().is_err();
        let policy = format!(
            "{:?}{}",
            self.key.tls.level,
            if self.key.tls.ocsp { "+ocsp" } else { "" }
        );
        let parts = KeyParts {
            host,
            addr: self.address.addr,
            sni: is_name.then_some(host),
            implicit_tls: self.key.hop.implicit_tls(),
            policy: &policy,
            priority: &ctx.tls.priority_text,
            trust: &ctx.tls.trust,
        };
        let (resumption, cached) = Resumption::begin(ctx.cache, &parts, self.key.tls.ocsp);
        let session = ClientSession::new(ClientSetup {
            credentials: &ctx.tls.credentials,
            priority: &ctx.tls.priority,
            server_name: is_name.then_some(host),
            verify_name: verify.then_some(host),
            ocsp: true,
            resume: cached.as_ref().map(|c| c.data.as_slice()),
            tickets: ctx.cache.is_on(),
        });
        self.resumption = Some(resumption);
        match session {
            Ok(session) => {
                self.tls = Tls::Handshaking(Box::new(session));
                self.deadline = now + HANDSHAKE_TIMEOUT;
                self.continue_handshake(ctx, now);
            }
            Err(e) => self.abort(format!("TLS: {e}"), true),
        }
    }

    fn continue_handshake(&mut self, ctx: &mut Ctx<'_>, now: Instant) {
        let Tls::Handshaking(session) = &mut self.tls else {
            return;
        };
        let done = session.handshake();
        let verify_failure = match &done {
            Err(e) if e.code == crate::ffi::GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR => {
                session.verify_failure()
            }
            _ => None,
        };
        self.flush();
        match done {
            Ok(Handshake::InProgress) => {}
            Ok(Handshake::Done) => {
                let Tls::Handshaking(mut session) = mem::replace(&mut self.tls, Tls::Off) else {
                    return;
                };
                let stapled = self
                    .resumption
                    .as_mut()
                    .is_some_and(|r| r.settle(&mut session, ctx.cache));
                self.tls = Tls::On(session);
                if self.key.tls.ocsp && !stapled {
                    return self.abort(
                        "TLS: no valid stapled OCSP response (+ocsp requires one)".into(),
                        false,
                    );
                }
                if !self.key.hop.implicit_tls() {
                    self.client.tls_started();
                }
                // What came with the server's last flight (on smtps, its
                // banner; under TLS 1.3, tickets).
                self.decrypt(ctx);
                self.rearm(now);
                self.drive(ctx, now);
            }
            Err(e) => {
                let why = match verify_failure {
                    Some(v) => format!("TLS: certificate verification failed: {v}"),
                    None => e.to_string(),
                };
                self.abort(why, true);
            }
        }
    }

    /// `TLS1.3:TLS_AES_256_GCM_SHA384:256` (with `*` when resumed).
    fn tls_field(&self) -> Option<String> {
        let Tls::On(session) = &self.tls else {
            return None;
        };
        let n = session.negotiated();
        let star = if n.resumed { "*" } else { "" };
        Some(format!("{}:{}:{}{star}", n.version, n.cipher, n.bits))
    }

    /// Writes what the engine (through TLS, once it is on) has for the
    /// server.
    fn flush(&mut self) {
        let plain = self.client.output().len();
        if let Tls::On(session) = &mut self.tls
            && plain > 0
        {
            if session.write(self.client.output()).is_err() {
                self.client.consume_output(plain);
                self.client.connection_lost();
                return;
            }
            self.client.consume_output(plain);
        }
        let result = match &mut self.tls {
            Tls::Off => {
                let n = write_some(&mut self.socket, self.client.output());
                n.map(|n| self.client.consume_output(n))
            }
            Tls::Handshaking(session) | Tls::On(session) => {
                write_some(&mut self.socket, session.pending_output())
                    .map(|n| session.consume_output(n))
            }
        };
        if result.is_err() {
            self.client.connection_lost();
        }
    }

    fn rearm(&mut self, now: Instant) {
        if let Some(timeout) = self.client.wait().timeout() {
            self.deadline = now + timeout;
        }
    }

    /// The engine says the connection is over.
    fn end(&mut self, end: End, ctx: &mut Ctx<'_>) {
        let mut reason = match &end {
            End::Quit => None,
            other => Some(other.to_string()),
        };
        let early = self.client.early_pipelining();
        // A failed connection after a changed EHLO response is one too:
        // its message went back to the queue to go again at once.
        let surprise = matches!(&end, End::Error(ConnectionError::EarlyPipelining(_)))
            || (self.client.early_surprise().is_some() && !matches!(end, End::Quit));
        let injected = matches!(&end, End::Error(ConnectionError::Protocol(p))
            if *p == crate::smtp_client::ProtocolError::StartTlsInjection);
        if surprise || (early && injected) {
            // What was kept no longer holds: next time, the ordinary way.
            ctx.cache.forget_ehlo(self.address.addr);
        }
        if surprise && let Some(r) = reason.as_mut() {
            r.push_str(
                "; the kept EHLO responses are dropped and the mail goes again the ordinary way",
            );
        }
        let before_any_message = self.messages == 0 && self.sending.is_none();
        self.finish(Closed {
            reason,
            permanent: end.is_permanent(),
            tls_failed: false,
            before_any_message,
            again: surprise,
        });
    }

    /// We end the connection (a failed connect, TLS, OCSP), before any
    /// message could have reached the server.
    fn abort(&mut self, reason: String, tls_failed: bool) {
        // Pipelining early, a message may already be under way: the
        // server never had it (no content goes before the EHLO reply).
        if let Some(sending) = self.sending.take() {
            self.events.push(Event::Unsent(sending.job));
        }
        self.finish(Closed {
            reason: Some(reason),
            permanent: false,
            tls_failed,
            before_any_message: self.messages == 0,
            again: false,
        });
    }

    fn finish(&mut self, closed: Closed) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.log_tls();
        self.events.push(Event::Closed(closed));
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Connection {
    /// One line per TLS session as it ends (the ticket of a TLS 1.3
    /// session comes after the handshake, so only now is all known).
    fn log_tls(&self) {
        let (Some(x), Some(r)) = (self.tls_field(), &self.resumption) else {
            return;
        };
        log::info!(
            "TLS session with {} [{}]:{} X={x} {}",
            self.address.host,
            self.address.addr.ip(),
            self.address.addr.port(),
            r.describe(x.ends_with('*'))
        );
    }
}

/// Deferred before the server took it: early pipelining met a surprise
/// (what the server took is reported delivered; see
/// `smtp_client::Early`), or the connection failed before the banner or
/// the EHLO reply, which only a message pipelined early can meet.
fn never_sent(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Deferred(Failure::Connection(
            ConnectionError::EarlyPipelining(_)
                | ConnectionError::Lost(Wait::Greeting | Wait::Hello)
                | ConnectionError::TimedOut(Wait::Greeting | Wait::Hello)
        ))
    )
}

/// A non-blocking connect with TCP_FASTOPEN_CONNECT (RFC 7413): where
/// the kernel holds a cookie for the server (`net.ipv4.tcp_fastopen` has
/// the client bit, 1, by default), the SYN waits for the first write and
/// carries it; otherwise the connect goes as usual and fetches a cookie.
/// A kernel without the option connects as usual. True with the stream
/// when the connect was deferred.
fn connect_fast_open(addr: std::net::SocketAddr) -> io::Result<(TcpStream, bool)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if let Err(e) = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::TcpFastOpenConnect,
        &true,
    ) {
        log::debug!("TCP_FASTOPEN_CONNECT: {e}");
    }
    let deferred = match socket.connect(&addr.into()) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => false,
        Err(e) => return Err(e),
    };
    Ok((TcpStream::from_std(socket.into()), deferred))
}

/// Writes as much as the socket takes.
fn write_some(socket: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match socket.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // Fast Open: the handshake is under way and took none of it.
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
