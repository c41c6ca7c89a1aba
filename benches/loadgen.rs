//! loadgen: TLS handshake load generator for gsmtpd (or any TLS/SMTP server)
//! on loopback. Measures handshakes per second, full or resumed, with rustls
//! as the client, one blocking connection at a time per worker thread.
//!
//! Per connection: TCP connect, optionally the SMTP STARTTLS dialogue, the
//! TLS handshake, optionally EHLO/QUIT inside TLS (`--smtp`), then
//! close_notify, a TCP half-close, and a wait for the server to close (so
//! TLS 1.3 session tickets sent after the handshake are received and the
//! server has finished its work on the connection before the next one
//! starts). Exim takes a client's close_notify as the end of TLS, not of
//! the connection, and goes on in cleartext: the half-close ends its
//! session, and its cleartext `421` after our close_notify is read and
//! dropped (counted as `cleartext_after_close`), not taken for a TLS error.
//!
//! With `--server-pid`, the CPU time of the server and of every process
//! descended from it (alive, exited, or reaped: see `common::ProcTree`) is
//! read before and after the measured connections, each time once the
//! processes the server started while the load generator ran have exited
//! (an Exim daemon forks one per connection; gsmtpd's supervisor has
//! long-lived workers), so the figure per connection is the whole cost of a
//! connection for a server of several processes, forking or pre-forked,
//! too.
//!
//! `--mode tcp` makes bare TCP connections (connect, half-close, wait for
//! the server to close) without TLS: against a sink that accepts, reads
//! until EOF and closes (`limit --tcp-sink`), it measures the kernel's and
//! a minimal server's share of a loopback connection.
//!
//! Only loopback targets are accepted: an IP literal in 127.0.0.0/8 or ::1,
//! or `localhost` (taken as 127.0.0.1 without any name lookup).
//!
//! Run `loadgen --help` for the flags.
mod common;

use common::{ProcId, ProcTree, json_str, load_roots, loopback_target, num, percentile_ms};

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use getopts::Options;
use rustls::client::{Resumption, Tls12Resumption};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, InvalidMessage, RootCertStore};

/// Connect, read and write timeout of every socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions kept per worker's in-memory cache (one server name is used).
const SESSION_CACHE: usize = 32;
/// A reply longer than this is a protocol error.
const MAX_REPLY: usize = 64 * 1024;
/// Before each CPU reading: how long to wait at most for the processes the
/// server started during the run to exit, how often to look, and a
/// pause after that for the server to finish with the last connections.
const SETTLE_MAX: Duration = Duration::from_secs(10);
const SETTLE_POLL: Duration = Duration::from_millis(10);
const SETTLE_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Implicit,
    Starttls,
    /// Bare TCP: connect, half-close, read until the server closes.
    Tcp,
}

struct Opts {
    target: SocketAddr,
    target_str: String,
    mode: Mode,
    tls13: bool,
    resume: bool,
    tickets: bool,
    /// Without --resume: still ask for TLS 1.2 tickets.
    request_tickets: bool,
    /// None in tcp mode only.
    ca: Option<String>,
    server_name: String,
    concurrency: usize,
    count: u64,
    duration: Duration,
    warmup: u64,
    smtp: bool,
    /// Messages per connection (implies an SMTP session), each `body`.
    messages: u32,
    body: Vec<u8>,
    pipelining: bool,
    rcpt: String,
    server_pid: Option<u32>,
    json: Option<String>,
}

#[derive(Clone, Copy)]
enum ErrKind {
    Connect = 0,
    Tls = 1,
    /// A 4xx reply where a 2xx or 3xx one was expected.
    Smtp4xx = 2,
    /// A 5xx reply where a 2xx or 3xx one was expected.
    Smtp5xx = 3,
    /// Any other SMTP trouble: a malformed reply, another code than the one
    /// expected, the connection closed or failing while awaiting a reply.
    Smtp = 4,
    Timeout = 5,
}

const KINDS: usize = 6;
const KIND_NAMES: [&str; KINDS] = ["connect", "tls", "smtp-4xx", "smtp-5xx", "smtp", "timeout"];

struct Failure {
    kind: ErrKind,
    msg: String,
}

fn fail(kind: ErrKind, msg: impl Into<String>) -> Failure {
    Failure {
        kind,
        msg: msg.into(),
    }
}

/// Classifies an I/O error: socket timeouts are `timeout`, errors rustls
/// wrapped (alerts, bad certificates, decode errors) are `tls`, anything else
/// is `default` (the phase the connection was in).
fn io_fail(e: io::Error, default: ErrKind) -> Failure {
    let kind = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ErrKind::Timeout,
        _ if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => ErrKind::Tls,
        _ => default,
    };
    match kind {
        ErrKind::Timeout => fail(kind, format!("nothing for {}s ({e})", IO_TIMEOUT.as_secs())),
        _ => fail(kind, e.to_string()),
    }
}

fn tls_fail(e: rustls::Error) -> Failure {
    fail(ErrKind::Tls, e.to_string())
}

/// (flag, value hint or "" for a plain flag, help).
const FLAGS: [(&str, &str, &str); 19] = [
    ("connect", "HOST:PORT", "target, loopback only"),
    (
        "mode",
        "MODE",
        "implicit (default), starttls, or tcp (no TLS: connect, half-close, wait for EOF)",
    ),
    ("tls", "VER", "TLS version: 1.2 or 1.3 (default)"),
    ("resume", "", "resume sessions (cache shared per thread)"),
    (
        "no-tickets-client",
        "",
        "with --resume: TLS 1.2 by session ID only",
    ),
    (
        "request-tickets",
        "",
        "without --resume: ask for TLS 1.2 tickets, never resume",
    ),
    (
        "ca",
        "FILE",
        "PEM CA certificate(s) to verify the server (not in tcp mode)",
    ),
    ("server-name", "NAME", "name to verify (default localhost)"),
    ("concurrency", "N", "worker threads (default 2)"),
    ("count", "N", "measured connections (default 2000)"),
    ("duration", "SECONDS", "time limit of the run (default 10)"),
    ("warmup", "N", "connections not counted (default 20)"),
    ("smtp", "", "EHLO and QUIT inside TLS after the handshake"),
    (
        "messages",
        "M",
        "deliver M messages per connection (implies --smtp)",
    ),
    (
        "size",
        "BYTES",
        "message size with --messages (default 4096)",
    ),
    (
        "pipelining",
        "",
        "send MAIL, RCPT and DATA in one write (RFC 2920)",
    ),
    (
        "rcpt",
        "ADDR",
        "recipient with --messages (default bench@localhost)",
    ),
    (
        "server-pid",
        "PID",
        "report the CPU per connection of this process and its descendants",
    ),
    ("json", "FILE", "also write the results as JSON here"),
];

fn options() -> Options {
    let mut o = Options::new();
    for (name, hint, help) in FLAGS {
        if hint.is_empty() {
            o.optflag("", name, help);
        } else {
            o.optopt("", name, help, hint);
        }
    }
    o.optflag("h", "help", "print this help");
    o
}

fn parse_args(args: &[String]) -> Result<Option<Opts>, String> {
    let m = options().parse(args).map_err(|e| e.to_string())?;
    if m.opt_present("help") {
        return Ok(None);
    }
    if !m.free.is_empty() {
        return Err(format!("unexpected argument {:?}", m.free[0]));
    }
    let target_str = m.opt_str("connect").ok_or("--connect is required")?;
    let target = loopback_target("connect", &target_str)?;
    let mode = match m.opt_str("mode").as_deref() {
        None | Some("implicit") => Mode::Implicit,
        Some("starttls") => Mode::Starttls,
        Some("tcp") => Mode::Tcp,
        Some(x) => return Err(format!("--mode: {x:?} is not implicit, starttls or tcp")),
    };
    let tls13 = match m.opt_str("tls").as_deref() {
        None | Some("1.3") => true,
        Some("1.2") => false,
        Some(x) => return Err(format!("--tls: {x:?} is not 1.2 or 1.3")),
    };
    let ca = m.opt_str("ca");
    if ca.is_none() && mode != Mode::Tcp {
        return Err("--ca is required".into());
    }
    if mode == Mode::Tcp && (m.opt_present("smtp") || m.opt_present("messages")) {
        return Err("--mode tcp: no --smtp or --messages without TLS".into());
    }
    let concurrency: usize = num(&m, "concurrency", 2)?;
    if !(1..=1024).contains(&concurrency) {
        return Err("--concurrency: must be 1..1024".into());
    }
    let count: u64 = num(&m, "count", 2000)?;
    let secs: f64 = num(&m, "duration", 10.0)?;
    if count == 0 || !(secs > 0.0 && secs <= 86400.0) {
        return Err("--count and --duration must be positive (duration ≤ 86400)".into());
    }
    let server_pid = match m.opt_str("server-pid") {
        None => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| format!("--server-pid: bad value {s:?}"))?,
        ),
    };
    Ok(Some(Opts {
        target,
        target_str,
        mode,
        tls13,
        resume: m.opt_present("resume"),
        tickets: !m.opt_present("no-tickets-client"),
        request_tickets: m.opt_present("request-tickets"),
        ca,
        server_name: m
            .opt_str("server-name")
            .unwrap_or_else(|| "localhost".into()),
        concurrency,
        count,
        duration: Duration::from_secs_f64(secs),
        warmup: num(&m, "warmup", 20)?,
        smtp: m.opt_present("smtp") || m.opt_present("messages"),
        messages: num(&m, "messages", 0)?,
        body: message_body(num(&m, "size", 4096)?),
        pipelining: m.opt_present("pipelining"),
        rcpt: m
            .opt_str("rcpt")
            .unwrap_or_else(|| "bench@localhost".into()),
        server_pid,
        json: m.opt_str("json"),
    }))
}

/// One config per worker thread: its resumption cache is that thread's.
fn client_config(o: &Opts, roots: &Arc<RootCertStore>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if o.tls13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12]
    };
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    cfg.resumption = if o.resume {
        let tls12 = if o.tickets {
            Tls12Resumption::SessionIdOrTickets
        } else {
            Tls12Resumption::SessionIdOnly
        };
        Resumption::in_memory_sessions(SESSION_CACHE).tls12_resumption(tls12)
    } else if o.request_tickets {
        // Nothing is stored, so nothing is offered: every handshake is a
        // full one, but a TLS 1.2 server sees a client that asks for a
        // ticket, as the first connection of a client able to resume does
        // (TLS 1.3 servers issue tickets either way). A server then sends a
        // ticket rather than keep the session in its session-ID cache.
        Resumption::disabled().tls12_resumption(Tls12Resumption::SessionIdOrTickets)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(cfg))
}

/// Reads one (possibly multi-line) SMTP reply and returns its code and last
/// line; bytes after it stay in `buf`.
fn read_reply<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> Result<(u16, String), Failure> {
    let mut chunk = [0u8; 2048];
    loop {
        let mut start = 0;
        while let Some(pos) = buf[start..].windows(2).position(|w| w == b"\r\n") {
            let line = &buf[start..start + pos];
            start += pos + 2;
            let code = line
                .get(..3)
                .filter(|c| c.iter().all(u8::is_ascii_digit))
                .map(|c| c.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')));
            let Some(code) = code else {
                return Err(fail(ErrKind::Smtp, "malformed reply line"));
            };
            match line.get(3) {
                None | Some(b' ') => {
                    let text = String::from_utf8_lossy(line).into_owned();
                    buf.drain(..start);
                    return Ok((code, text));
                }
                Some(b'-') => {}
                Some(_) => return Err(fail(ErrKind::Smtp, "malformed reply line")),
            }
        }
        if buf.len() > MAX_REPLY {
            return Err(fail(ErrKind::Smtp, "reply too long"));
        }
        let n = r.read(&mut chunk).map_err(|e| io_fail(e, ErrKind::Smtp))?;
        if n == 0 {
            return Err(fail(ErrKind::Smtp, "connection closed before a reply"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a reply; any code but `want` is an error of the kind its class
/// says (4xx, 5xx, or an unexpected success).
fn expect<R: Read>(r: &mut R, buf: &mut Vec<u8>, want: u16, after: &str) -> Result<(), Failure> {
    let (code, text) = read_reply(r, buf)?;
    if code == want {
        return Ok(());
    }
    let kind = match code {
        400..=499 => ErrKind::Smtp4xx,
        500..=599 => ErrKind::Smtp5xx,
        _ => ErrKind::Smtp,
    };
    Err(fail(kind, format!("{after}: got {text:?}, want {want}")))
}

fn send<W: Write>(w: &mut W, line: &[u8]) -> Result<(), Failure> {
    w.write_all(line).map_err(|e| io_fail(e, ErrKind::Smtp))
}

/// How a connection ended after our close_notify.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// close_notify from the server, its EOF or its reset.
    Tls,
    /// Cleartext where the next TLS record should begin: the server took
    /// our close_notify for the end of TLS only (Exim does) and wrote in
    /// the clear, which is read to EOF and dropped.
    Cleartext,
}

/// Sends close_notify and half-closes the socket, then reads until the
/// server closes (close_notify or EOF), processing what arrives meanwhile,
/// such as TLS 1.3 tickets.
fn close(tls: &mut ClientConnection, sock: &mut TcpStream) -> Result<Closed, Failure> {
    tls.send_close_notify();
    while tls.wants_write() {
        tls.write_tls(sock).map_err(|e| io_fail(e, ErrKind::Tls))?;
    }
    // The server may already have closed: then the half-close has nothing
    // to do, and its failure tells nothing.
    let _ = sock.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    loop {
        match tls.read_tls(sock) {
            Ok(0) => return Ok(Closed::Tls),
            Ok(_) => {}
            // A server may reset rather than close once it has our alert.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(Closed::Tls),
            Err(e) => return Err(io_fail(e, ErrKind::Tls)),
        }
        let state = match tls.process_new_packets() {
            Ok(state) => state,
            Err(rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType)) => {
                drain(sock, ErrKind::Tls)?;
                return Ok(Closed::Cleartext);
            }
            Err(e) => return Err(tls_fail(e)),
        };
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            let n = tls
                .reader()
                .read(&mut sink)
                .map_err(|e| io_fail(e, ErrKind::Tls))?;
            left = left.saturating_sub(n.max(1));
        }
        if state.peer_has_closed() {
            return Ok(Closed::Tls);
        }
    }
}

/// Reads and drops what the socket holds until EOF (or a reset); a
/// failure is of `kind` (or a timeout).
fn drain(sock: &mut TcpStream, kind: ErrKind) -> Result<(), Failure> {
    let mut sink = [0u8; 4096];
    loop {
        match sock.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(io_fail(e, kind)),
        }
    }
}

/// What one connection did.
struct Done {
    /// Connect → handshake done, or → 221 to QUIT with `--smtp`, or (tcp
    /// mode) → the server's close.
    latency: Duration,
    resumed: bool,
    closed: Closed,
}

/// One connection. `cfg` is None in tcp mode only.
fn one_conn(
    o: &Opts,
    cfg: Option<&Arc<ClientConfig>>,
    name: &ServerName<'static>,
    buf: &mut Vec<u8>,
) -> Result<Done, Failure> {
    let t0 = Instant::now();
    let mut sock = TcpStream::connect_timeout(&o.target, IO_TIMEOUT)
        .map_err(|e| io_fail(e, ErrKind::Connect))?;
    let setup = sock
        .set_nodelay(true)
        .and_then(|_| sock.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|_| sock.set_write_timeout(Some(IO_TIMEOUT)));
    setup.map_err(|e| io_fail(e, ErrKind::Connect))?;
    buf.clear();
    let Some(cfg) = cfg.filter(|_| o.mode != Mode::Tcp) else {
        // Nothing to say: half-close, then wait for the server's close, as
        // a TLS connection ends after its close_notify.
        sock.shutdown(Shutdown::Write)
            .map_err(|e| io_fail(e, ErrKind::Connect))?;
        drain(&mut sock, ErrKind::Connect)?;
        return Ok(Done {
            latency: t0.elapsed(),
            resumed: false,
            closed: Closed::Tls,
        });
    };
    if o.mode == Mode::Starttls {
        expect(&mut sock, buf, 220, "banner")?;
        send(&mut sock, b"EHLO loadgen.test\r\n")?;
        expect(&mut sock, buf, 250, "EHLO")?;
        send(&mut sock, b"STARTTLS\r\n")?;
        expect(&mut sock, buf, 220, "STARTTLS")?;
        if !buf.is_empty() {
            return Err(fail(ErrKind::Smtp, "data after the 220 to STARTTLS"));
        }
    }
    let mut tls = ClientConnection::new(Arc::clone(cfg), name.clone()).map_err(tls_fail)?;
    while tls.is_handshaking() {
        tls.complete_io(&mut sock)
            .map_err(|e| io_fail(e, ErrKind::Tls))?;
    }
    while tls.wants_write() {
        tls.write_tls(&mut sock)
            .map_err(|e| io_fail(e, ErrKind::Tls))?;
    }
    let resumed = tls.handshake_kind() == Some(HandshakeKind::Resumed);
    let mut latency = t0.elapsed();
    if o.smtp {
        let mut s = rustls::Stream::new(&mut tls, &mut sock);
        if o.mode == Mode::Implicit {
            expect(&mut s, buf, 220, "banner")?;
        }
        send(&mut s, b"EHLO loadgen.test\r\n")?;
        expect(&mut s, buf, 250, "EHLO")?;
        for _ in 0..o.messages {
            deliver(o, &mut s, buf)?;
        }
        send(&mut s, b"QUIT\r\n")?;
        expect(&mut s, buf, 221, "QUIT")?;
        latency = t0.elapsed();
    }
    let closed = close(&mut tls, &mut sock)?;
    Ok(Done {
        latency,
        resumed,
        closed,
    })
}

/// One message: the envelope commands (in one write with --pipelining,
/// each awaiting its reply otherwise), then the content.
fn deliver<S: Read + Write>(o: &Opts, s: &mut S, buf: &mut Vec<u8>) -> Result<(), Failure> {
    let mail = b"MAIL FROM:<loadgen@loadgen.test>\r\n";
    let rcpt = format!("RCPT TO:<{}>\r\n", o.rcpt);
    if o.pipelining {
        send(s, &[&mail[..], rcpt.as_bytes(), b"DATA\r\n"].concat())?;
        expect(s, buf, 250, "MAIL")?;
        expect(s, buf, 250, "RCPT")?;
        expect(s, buf, 354, "DATA")?;
    } else {
        send(s, mail)?;
        expect(s, buf, 250, "MAIL")?;
        send(s, rcpt.as_bytes())?;
        expect(s, buf, 250, "RCPT")?;
        send(s, b"DATA\r\n")?;
        expect(s, buf, 354, "DATA")?;
    }
    send(s, &o.body)?;
    expect(s, buf, 250, "end of data")
}

/// About `size` bytes of 78-byte lines, then the terminating dot.
fn message_body(size: usize) -> Vec<u8> {
    let mut body = b"Subject: loadgen\r\n\r\n".to_vec();
    while body.len() < size {
        body.extend_from_slice(&[b'x'; 76]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    body
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    ok: u64,
    resumed: u64,
    cleartext_after_close: u64,
    errors: [u64; KINDS],
    first_error: [Option<String>; KINDS],
}

impl Tally {
    fn record(&mut self, r: Result<Done, Failure>) {
        match r {
            Ok(d) => {
                self.ok += 1;
                self.resumed += u64::from(d.resumed);
                self.cleartext_after_close += u64::from(d.closed == Closed::Cleartext);
                self.latencies_us
                    .push(u32::try_from(d.latency.as_micros()).unwrap_or(u32::MAX));
            }
            Err(f) => {
                let k = f.kind as usize;
                self.errors[k] += 1;
                self.first_error[k].get_or_insert(f.msg);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        self.resumed += other.resumed;
        self.cleartext_after_close += other.cleartext_after_close;
        for (k, first) in other.first_error.into_iter().enumerate() {
            self.errors[k] += other.errors[k];
            if self.first_error[k].is_none() {
                self.first_error[k] = first;
            }
        }
    }

    fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

struct Shared {
    /// Workers and the main thread meet twice: warmup done, clock started.
    barrier: Barrier,
    start: OnceLock<Instant>,
    issued: AtomicU64,
}

fn worker(
    o: &Opts,
    cfg: Option<Arc<ClientConfig>>,
    warmup: u64,
    sh: &Shared,
) -> (Tally, Tally, Instant) {
    let name = ServerName::try_from(o.server_name.clone()).expect("checked in main");
    let mut buf = Vec::with_capacity(4096);
    let mut warm = Tally::default();
    for _ in 0..warmup {
        warm.record(one_conn(o, cfg.as_ref(), &name, &mut buf));
    }
    sh.barrier.wait();
    sh.barrier.wait();
    let deadline = *sh.start.get().expect("set between the barriers") + o.duration;
    let mut tally = Tally::default();
    while Instant::now() < deadline && sh.issued.fetch_add(1, Ordering::Relaxed) < o.count {
        tally.record(one_conn(o, cfg.as_ref(), &name, &mut buf));
    }
    (warm, tally, Instant::now())
}

/// sysconf(_SC_CLK_TCK) through getconf(1), which avoids unsafe FFI; Linux
/// reports 100 on every architecture, which is also the fallback.
fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

struct Report {
    conns: u64,
    secs: f64,
    rate: f64,
    resumed_pct: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    /// Messages acknowledged per second (0 without --messages).
    msg_rate: f64,
    cpu_us_per_conn: Option<f64>,
    cpu_us_per_msg: Option<f64>,
    /// The load generator's own CPU (all its threads) per connection: on a
    /// machine it shares with the server, what the client takes from it.
    client_cpu_us_per_conn: Option<f64>,
    /// Whether, at both CPU readings, every process that the server started
    /// while the load generator ran had exited (see `settle`).
    settled: bool,
    /// Processes counted at the second reading: the server and its
    /// descendants (0 without --server-pid).
    processes: usize,
}

impl Opts {
    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Implicit => "implicit",
            Mode::Starttls => "starttls",
            Mode::Tcp => "tcp",
        }
    }

    fn tls_name(&self) -> &'static str {
        if self.tls13 { "1.3" } else { "1.2" }
    }

    /// Whether a TLS 1.2 ClientHello asks for (or offers) a ticket.
    fn tls12_ticket_requested(&self) -> bool {
        if self.resume {
            self.tickets
        } else {
            self.request_tickets
        }
    }
}

fn text_line(o: &Opts, t: &Tally, r: &Report) -> String {
    let mut line = format!(
        "target={} mode={} tls={} resume={} conns={} secs={:.2} conn/s={:.1} resumed={:.1}% \
         p50={:.2}ms p90={:.2}ms p99={:.2}ms errors={}",
        o.target_str,
        o.mode_name(),
        o.tls_name(),
        if o.resume { "yes" } else { "no" },
        r.conns,
        r.secs,
        r.rate,
        r.resumed_pct,
        r.p50,
        r.p90,
        r.p99,
        t.error_total(),
    );
    for (k, n) in t.errors.iter().enumerate().filter(|(_, n)| **n > 0) {
        let _ = write!(line, " errors.{}={n}", KIND_NAMES[k]);
    }
    if t.cleartext_after_close > 0 {
        let _ = write!(line, " cleartext_after_close={}", t.cleartext_after_close);
    }
    let us = |v: Option<f64>| v.map_or("-".into(), |us| format!("{us:.0}"));
    if o.messages > 0 {
        let _ = write!(
            line,
            " msgs/conn={} msgs/s={:.1} server_cpu_us/msg={}",
            o.messages,
            r.msg_rate,
            us(r.cpu_us_per_msg)
        );
    }
    if o.server_pid.is_some() && !r.settled {
        line.push_str(" unsettled");
    }
    line + " server_cpu_us/conn="
        + &us(r.cpu_us_per_conn)
        + " client_cpu_us/conn="
        + &us(r.client_cpu_us_per_conn)
}

fn json_doc(o: &Opts, t: &Tally, r: &Report) -> String {
    let by_kind: Vec<String> = KIND_NAMES
        .iter()
        .zip(t.errors)
        .map(|(k, n)| format!("\"{k}\": {n}"))
        .collect();
    let first: Vec<String> = KIND_NAMES
        .iter()
        .zip(&t.first_error)
        .filter_map(|(k, f)| f.as_ref().map(|m| format!("\"{k}\": {}", json_str(m))))
        .collect();
    let us = |v: Option<f64>| v.map_or("null".into(), |us| format!("{us:.1}"));
    let fields = [
        ("target", json_str(&o.target_str)),
        ("mode", json_str(o.mode_name())),
        ("tls", json_str(o.tls_name())),
        ("resume", o.resume.to_string()),
        ("tls12_tickets", o.tickets.to_string()),
        (
            "tls12_ticket_requested",
            o.tls12_ticket_requested().to_string(),
        ),
        ("smtp", o.smtp.to_string()),
        ("messages_per_conn", o.messages.to_string()),
        ("message_bytes", (o.body.len() - 3).to_string()),
        ("pipelining", o.pipelining.to_string()),
        ("concurrency", o.concurrency.to_string()),
        ("warmup", o.warmup.to_string()),
        ("conns", r.conns.to_string()),
        ("ok", t.ok.to_string()),
        ("secs", format!("{:.3}", r.secs)),
        ("conn_per_s", format!("{:.1}", r.rate)),
        ("msgs_per_s", format!("{:.1}", r.msg_rate)),
        ("resumed_pct", format!("{:.1}", r.resumed_pct)),
        ("p50_ms", format!("{:.3}", r.p50)),
        ("p90_ms", format!("{:.3}", r.p90)),
        ("p99_ms", format!("{:.3}", r.p99)),
        ("errors", t.error_total().to_string()),
        ("errors_by_kind", format!("{{{}}}", by_kind.join(", "))),
        ("first_error_by_kind", format!("{{{}}}", first.join(", "))),
        ("cleartext_after_close", t.cleartext_after_close.to_string()),
        ("server_cpu_us_per_conn", us(r.cpu_us_per_conn)),
        ("server_cpu_us_per_msg", us(r.cpu_us_per_msg)),
        ("client_cpu_us_per_conn", us(r.client_cpu_us_per_conn)),
        (
            "server_settled",
            (o.server_pid.is_some() && r.settled).to_string(),
        ),
        ("server_processes", r.processes.to_string()),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  \"{k}\": {v}"))
        .collect();
    format!("{{\n{}\n}}\n", body.join(",\n"))
}

/// Waits until every process in the server's tree that was not in `base`,
/// the descendants it had when the load generator started, has exited,
/// then pauses briefly and reads the tree's CPU; the bool is false if one
/// was still running after SETTLE_MAX.
///
/// The rule is about what the run made, not about children in general:
/// a process started during the run (Exim's child per connection) may
/// still be working on one of our connections, and its exit, which costs
/// CPU too, is the connection's; once it has exited, all of that is in the
/// reading, from its own stat while it is a zombie and from its parent's
/// cutime once reaped. Zombies are not waited for: an Exim daemon idle in
/// select() can miss the SIGCHLD of its last child (it arrives between its
/// check of the flag and the select) and reap it only at the next
/// connection. Processes that were there before the first connection
/// (gsmtpd's workers; an Exim daemon has none when idle) live as long as
/// the server and are read where they are, alive: waiting for them to go,
/// as "no child left" did, would wait forever. A process of `base` that
/// ends during the run is counted right as well (see `ProcTree`). A
/// pre-forked server that replaces a worker during the run never settles:
/// its figure would mix a crash into the run, which is reported unsettled.
fn settle(pid: u32, base: &BTreeSet<ProcId>) -> (bool, Option<ProcTree>) {
    let deadline = Instant::now() + SETTLE_MAX;
    let settled = loop {
        match ProcTree::read(pid) {
            Some(t)
                if t.descendants
                    .difference(base)
                    .all(|p| t.zombies.contains(p)) =>
            {
                break true;
            }
            None => break false,
            Some(t) if Instant::now() >= deadline => {
                let left: Vec<String> = t
                    .descendants
                    .difference(base)
                    .filter(|p| !t.zombies.contains(p))
                    .map(describe)
                    .collect();
                eprintln!("loadgen: still there: {}", left.join(", "));
                break false;
            }
            Some(_) => thread::sleep(SETTLE_POLL),
        }
    };
    thread::sleep(SETTLE_PAUSE);
    (settled, ProcTree::read(pid))
}

/// "PID (NAME) STATE, parent PPID, in WCHAN" from /proc, for a process
/// that did not go away.
fn describe(&(pid, _): &ProcId) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let head: Vec<&str> = stat.splitn(5, ' ').take(4).collect();
    let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    format!("{} in {wchan:?}", head.join(" "))
}

fn run(o: &Opts) -> Result<bool, String> {
    ServerName::try_from(o.server_name.clone())
        .map_err(|e| format!("--server-name {:?}: {e}", o.server_name))?;
    // The server's processes before our first connection.
    let base = match o.server_pid {
        Some(pid) => {
            ProcTree::read(pid)
                .ok_or(format!("--server-pid {pid}: cannot read /proc/{pid}/stat"))?
                .descendants
        }
        None => BTreeSet::new(),
    };
    let tck = clock_ticks_per_sec();
    // Configs are built before any connection, one per thread.
    let configs = match &o.ca {
        Some(ca) if o.mode != Mode::Tcp => {
            let roots = load_roots(ca)?;
            (0..o.concurrency)
                .map(|_| client_config(o, &roots).map(Some))
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => vec![None; o.concurrency],
    };
    let sh = Shared {
        barrier: Barrier::new(o.concurrency + 1),
        start: OnceLock::new(),
        issued: AtomicU64::new(0),
    };
    let n = o.concurrency as u64;
    let mut settled = true;
    let mut processes = 0;
    let me = std::process::id();
    let (warm, tally, secs, cpu, own_cpu) = thread::scope(|s| {
        let handles: Vec<_> = configs
            .into_iter()
            .enumerate()
            .map(|(i, cfg)| {
                let share = o.warmup / n + u64::from((i as u64) < o.warmup % n);
                let sh = &sh;
                s.spawn(move || worker(o, cfg, share, sh))
            })
            .collect();
        sh.barrier.wait();
        let cpu0 = o.server_pid.and_then(|pid| {
            let (ok, tree) = settle(pid, &base);
            settled &= ok;
            tree.map(|t| t.ticks)
        });
        let own0 = ProcTree::read(me).map(|t| t.ticks);
        let start = *sh.start.get_or_init(Instant::now);
        sh.barrier.wait();
        let mut warm = Tally::default();
        let mut tally = Tally::default();
        let mut end = start;
        for h in handles {
            let (w, t, e) = h.join().expect("worker panicked");
            warm.merge(w);
            tally.merge(t);
            end = end.max(e);
        }
        let own1 = ProcTree::read(me).map(|t| t.ticks);
        let cpu1 = o.server_pid.and_then(|pid| {
            let (ok, tree) = settle(pid, &base);
            settled &= ok;
            processes = tree.as_ref().map_or(0, |t| 1 + t.descendants.len());
            tree.map(|t| t.ticks)
        });
        let cpu = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
        let own_cpu = own0.zip(own1).map(|(a, b)| b.saturating_sub(a));
        (warm, tally, (end - start).as_secs_f64(), cpu, own_cpu)
    });
    for (phase, t) in [("warmup", &warm), ("run", &tally)] {
        for (k, first) in t.first_error.iter().enumerate() {
            if let Some(msg) = first {
                eprintln!(
                    "loadgen: {phase}: {} {} errors, first: {msg}",
                    t.errors[k], KIND_NAMES[k]
                );
            }
        }
    }
    if !settled {
        eprintln!(
            "loadgen: processes that the server started during the run were still \
             running {}s after it (connection processes that did not end, or a \
             worker replaced): its CPU figure is not the run's",
            SETTLE_MAX.as_secs()
        );
    }
    let mut lat = tally.latencies_us.clone();
    lat.sort_unstable();
    let conns = tally.ok + tally.error_total();
    // Messages acknowledged: every connection that succeeded delivered all.
    let msgs = tally.ok * u64::from(o.messages);
    let cpu_us = cpu.map(|ticks| ticks as f64 * 1e6 / tck as f64);
    let own_us = own_cpu.map(|ticks| ticks as f64 * 1e6 / tck as f64);
    let report = Report {
        conns,
        secs,
        rate: tally.ok as f64 / secs.max(1e-9),
        resumed_pct: 100.0 * tally.resumed as f64 / tally.ok.max(1) as f64,
        p50: percentile_ms(&lat, 50.0),
        p90: percentile_ms(&lat, 90.0),
        p99: percentile_ms(&lat, 99.0),
        msg_rate: msgs as f64 / secs.max(1e-9),
        cpu_us_per_conn: cpu_us.filter(|_| conns > 0).map(|us| us / conns as f64),
        cpu_us_per_msg: cpu_us.filter(|_| msgs > 0).map(|us| us / msgs as f64),
        client_cpu_us_per_conn: own_us.filter(|_| conns > 0).map(|us| us / conns as f64),
        settled,
        processes,
    };
    println!("{}", text_line(o, &tally, &report));
    if let Some(path) = &o.json {
        fs::write(path, json_doc(o, &tally, &report)).map_err(|e| format!("--json {path}: {e}"))?;
    }
    Ok(tally.error_total() == 0 && settled)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench` to harness = false targets; ignore it.
    let args: Vec<String> = args.into_iter().filter(|a| a != "--bench").collect();
    if args.is_empty() {
        // `cargo test --all-targets` and a bare `cargo bench` run this
        // target without arguments: there is nothing to measure then.
        eprintln!("loadgen: no --connect given, nothing to do (see --help)");
        return ExitCode::SUCCESS;
    }
    match parse_args(&args) {
        Ok(None) => {
            print!(
                "{}",
                options().usage("Usage: loadgen --connect HOST:PORT --ca FILE [options]")
            );
            ExitCode::SUCCESS
        }
        Ok(Some(o)) => match run(&o) {
            Ok(true) => ExitCode::SUCCESS,
            // The results are printed and written; the status says they
            // are not clean (errors, or a server that did not settle).
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}
