//! soak: holds many idle TLS connections to gsmtpd while a steady stream of
//! deliveries runs beside them, then checks that every message acknowledged
//! is in the Maildir (and nothing else is), and reports the server's memory.
//!
//! Phases, in order:
//! 1. the server's VmRSS (`/proc/PID/status`, summed over the process and
//!    its descendants: gsmtpd's workers hold the connections) as the
//!    baseline;
//! 2. `--idle` connections to the implicit-TLS listener, opened by a few
//!    threads with rustls (TLS 1.3 full handshakes), the 220 banner read,
//!    then held open and silent; VmRSS once all are open gives the RSS per
//!    idle TLS connection;
//! 3. with the idle connections still open, `--senders` threads deliver for
//!    `--duration` seconds over STARTTLS (EHLO, STARTTLS, TLS 1.3, EHLO,
//!    then 5 messages of 4 KiB per connection to ~50 mailboxes, QUIT),
//!    recording the id of every `250` to end of data; VmRSS is sampled every
//!    second from the start of phase 1 to the end;
//! 4. NOOP on every idle connection (a reply other than 250, or none, counts
//!    it dead), then QUIT and close on all of them;
//! 5. the Maildir (`--maildir DIR`, files in `DIR/DOMAIN/*/new/`) is read:
//!    the id in each file's Received header, with its mailbox, must form
//!    exactly the set of (mailbox, id) acknowledged.
//!
//! Prints one result line (and `--json FILE`); exits 1 if the Maildir does
//! not hold exactly the messages acknowledged or if an idle connection was
//! not alive at the end, 2 on a bad flag.
//!
//! Only loopback targets are accepted: an IP literal in 127.0.0.0/8 or ::1,
//! or `localhost` (taken as 127.0.0.1 without any name lookup). Every socket
//! has 10 s timeouts and each phase a deadline, so a run ends by itself.
//!
//! Run `soak --help` for the flags; `scripts/soak` starts gsmtpd and runs it.
mod common;

use common::{ProcTree, json_str, load_roots, loopback_target, num, percentile_ms};

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use getopts::Options;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, Stream};

/// Connect, read and write timeout of every socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A reply longer than this is a protocol error.
const MAX_REPLY: usize = 64 * 1024;
/// Threads opening (and at the end checking) the idle connections.
const OPEN_THREADS: usize = 4;
/// Messages per delivery connection.
const MESSAGES_PER_CONN: u64 = 5;
/// Recipients are spread over this many mailboxes: soak0 .. soak49.
const MAILBOXES: u64 = 50;
/// Size of each message as sent (headers and body, before the final dot).
const MESSAGE_SIZE: usize = 4096;
/// After a failed delivery connection, a pause before the next, so a dead
/// server does not make the senders spin.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often the server's VmRSS is sampled, and progress is printed.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// Phase 4 bounds: the NOOP checks may take CHECK_BASE plus CHECK_PER_CONN
/// per connection (those left unchecked then count as dead), the QUITs as
/// long again; a QUIT waits at most QUIT_TIMEOUT for its reply.
const CHECK_BASE: Duration = Duration::from_secs(60);
const CHECK_PER_CONN: Duration = Duration::from_millis(10);
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Descriptors the client needs besides its idle connections.
const SPARE_FDS: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Connect = 0,
    Tls = 1,
    Smtp4xx = 2,
    Smtp5xx = 3,
    Timeout = 4,
    Io = 5,
    /// A malformed reply, or an unexpected code that is not 4xx/5xx.
    Protocol = 6,
    /// An idle connection that did not answer NOOP with 250 at the end.
    IdleDead = 7,
}

const KINDS: usize = 8;
const KIND_NAMES: [&str; KINDS] = [
    "connect",
    "tls",
    "smtp-4xx",
    "smtp-5xx",
    "timeout",
    "io",
    "protocol",
    "idle-dead",
];

struct Failure {
    kind: Kind,
    msg: String,
}

fn fail(kind: Kind, msg: impl Into<String>) -> Failure {
    Failure {
        kind,
        msg: msg.into(),
    }
}

/// Socket timeouts are `timeout`, errors rustls wrapped (alerts, bad
/// certificates, decode errors) are `tls`, anything else is `default`.
fn io_fail(e: io::Error, default: Kind, what: &str) -> Failure {
    let kind = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Kind::Timeout,
        _ if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => Kind::Tls,
        _ => default,
    };
    match kind {
        Kind::Timeout => fail(
            kind,
            format!("{what}: nothing for {}s ({e})", IO_TIMEOUT.as_secs()),
        ),
        _ => fail(kind, format!("{what}: {e}")),
    }
}

fn tls_fail(e: rustls::Error) -> Failure {
    fail(Kind::Tls, e.to_string())
}

struct Opts {
    tls_addr: SocketAddr,
    plain_addr: SocketAddr,
    ca: String,
    server_name: String,
    server_pid: u32,
    maildir: PathBuf,
    domain: String,
    idle: usize,
    duration: Duration,
    senders: usize,
    json: Option<String>,
}

/// (flag, value hint, help); every flag takes a value.
const FLAGS: [(&str, &str, &str); 11] = [
    (
        "tls-addr",
        "HOST:PORT",
        "implicit-TLS listener, loopback only",
    ),
    (
        "plain-addr",
        "HOST:PORT",
        "STARTTLS listener, loopback only",
    ),
    ("ca", "FILE", "PEM CA certificate(s) to verify the server"),
    ("server-name", "NAME", "name to verify (default localhost)"),
    (
        "server-pid",
        "PID",
        "the server process, for its VmRSS (with its descendants')",
    ),
    ("maildir", "DIR", "the server's Maildir root (--maildir)"),
    ("domain", "NAME", "recipient domain (default example.org)"),
    ("idle", "N", "idle TLS connections to hold (default 5000)"),
    (
        "duration",
        "SECONDS",
        "length of the delivery stream (default 300)",
    ),
    ("senders", "N", "delivering threads (default 2)"),
    ("json", "FILE", "also write the results as JSON here"),
];

const USAGE: &str = "Usage: soak --tls-addr HOST:PORT --plain-addr HOST:PORT --ca FILE \
                     --server-pid PID --maildir DIR [options]";

fn options() -> Options {
    let mut o = Options::new();
    for (name, hint, help) in FLAGS {
        o.optopt("", name, help, hint);
    }
    o.optflag("h", "help", "print this help");
    o
}

fn required(m: &getopts::Matches, flag: &str) -> Result<String, String> {
    m.opt_str(flag).ok_or(format!("--{flag} is required"))
}

fn parse_args(args: &[String]) -> Result<Option<Opts>, String> {
    let m = options().parse(args).map_err(|e| e.to_string())?;
    if m.opt_present("help") {
        return Ok(None);
    }
    if !m.free.is_empty() {
        return Err(format!("unexpected argument {:?}", m.free[0]));
    }
    let tls_addr = loopback_target("tls-addr", &required(&m, "tls-addr")?)?;
    let plain_addr = loopback_target("plain-addr", &required(&m, "plain-addr")?)?;
    let server_pid = num(&m, "server-pid", 0u32)?;
    if server_pid == 0 {
        return Err("--server-pid is required".into());
    }
    let idle: usize = num(&m, "idle", 5000)?;
    if idle > 1_000_000 {
        return Err("--idle: at most 1000000".into());
    }
    let secs: u64 = num(&m, "duration", 300)?;
    if !(1..=86_400).contains(&secs) {
        return Err("--duration: must be 1..86400 seconds".into());
    }
    let senders: usize = num(&m, "senders", 2)?;
    if !(1..=256).contains(&senders) {
        return Err("--senders: must be 1..256".into());
    }
    let domain = m.opt_str("domain").unwrap_or_else(|| "example.org".into());
    if domain.is_empty() || domain.contains(['/', '@', '>', ' ']) || domain.starts_with('.') {
        return Err(format!("--domain: bad value {domain:?}"));
    }
    Ok(Some(Opts {
        tls_addr,
        plain_addr,
        ca: required(&m, "ca")?,
        server_name: m
            .opt_str("server-name")
            .unwrap_or_else(|| "localhost".into()),
        server_pid,
        maildir: PathBuf::from(required(&m, "maildir")?),
        domain,
        idle,
        duration: Duration::from_secs(secs),
        senders,
        json: m.opt_str("json"),
    }))
}

/// TLS 1.3 only, no resumption: every handshake is a full one.
fn client_config(roots: &Arc<RootCertStore>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

// --- the server process --------------------------------------------------------

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), summed over the
/// process and all its descendants: a multi-process server (gsmtpd's
/// supervisor, given as --server-pid, and its workers) holds its
/// connections in its children. Pages the processes share (code, what
/// was there at fork) count once per process, the same in every reading,
/// so the difference between two readings is the memory taken meanwhile;
/// a sum of VmHWM is the sum of each process's own peak. None if the
/// process itself cannot be read.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let own = process_status_kib(pid, field)?;
    let descendants: u64 = ProcTree::read(pid).map_or(0, |t| {
        t.descendants
            .iter()
            .filter_map(|&(p, _)| process_status_kib(p, field))
            .sum()
    });
    Some(own + descendants)
}

/// A `kB` field of /proc/PID/status of one process.
fn process_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Microseconds in which some task waited on IO, machine-wide, since boot.
fn io_pressure_some_us() -> Option<u64> {
    let psi = fs::read_to_string("/proc/pressure/io").ok()?;
    let line = psi.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("total="))?
        .parse()
        .ok()
}

/// The soft "Max open files" limit of a process (`self` or a pid).
fn max_open_files(who: &str) -> Option<u64> {
    let limits = fs::read_to_string(format!("/proc/{who}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line.split_whitespace().nth(3)? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// One reading: seconds since the start, the server's VmRSS, how many
/// messages had been acknowledged by then, and, to tell a slow server from
/// a slow disk or a busy machine, the CPU time so far of the server and
/// its descendants and the machine's IO stall time so far (PSI, where the
/// kernel has it).
#[derive(Clone, Copy)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    acked: u64,
    server_cpu_ticks: Option<u64>,
    io_some_us: Option<u64>,
}

const SAMPLE_FIELDS: &str =
    r#"["secs", "rss_kib", "acked", "server_cpu_ticks", "io_pressure_some_us"]"#;

/// What every thread reports to, and the server's VmRSS samples, taken
/// every second by a sampler thread and at each phase boundary.
struct Monitor {
    pid: u32,
    start: Instant,
    samples: Mutex<Vec<Sample>>,
    /// Set when /proc/PID/status could not be read: the server is gone.
    lost: AtomicBool,
    opened: AtomicU64,
    acked: AtomicU64,
    failed_conns: AtomicU64,
}

impl Monitor {
    fn new(pid: u32) -> Monitor {
        Monitor {
            pid,
            start: Instant::now(),
            samples: Mutex::new(Vec::new()),
            lost: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failed_conns: AtomicU64::new(0),
        }
    }

    /// Reads VmRSS now and keeps it as a sample.
    fn read(&self) -> Option<u64> {
        let kib = status_kib(self.pid, "VmRSS");
        match kib {
            Some(rss_kib) => self
                .samples
                .lock()
                .expect("no panics while held")
                .push(Sample {
                    secs: self.start.elapsed().as_secs_f64(),
                    rss_kib,
                    acked: self.acked.load(Ordering::Relaxed),
                    server_cpu_ticks: ProcTree::read(self.pid).map(|t| t.ticks),
                    io_some_us: io_pressure_some_us(),
                }),
            None => self.lost.store(true, Ordering::Relaxed),
        }
        kib
    }

    fn peak(&self) -> u64 {
        let samples = self.samples.lock().expect("no panics while held");
        samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)
    }

    fn sample_until(&self, stop: &AtomicBool) {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                self.read();
                next += SAMPLE_EVERY;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

// --- SMTP over a blocking stream -----------------------------------------------

struct Reply {
    code: u16,
    /// The last line of the reply, without CRLF.
    last: String,
}

/// Reads one (possibly multi-line) SMTP reply; bytes after it stay in `buf`.
fn read_reply<R: Read>(r: &mut R, buf: &mut Vec<u8>, what: &str) -> Result<Reply, Failure> {
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
            let text = String::from_utf8_lossy(line).into_owned();
            let Some(code) = code else {
                return Err(fail(Kind::Protocol, format!("{what}: malformed {text:?}")));
            };
            match line.get(3) {
                None | Some(b' ') => {
                    buf.drain(..start);
                    return Ok(Reply { code, last: text });
                }
                Some(b'-') => {}
                Some(_) => {
                    return Err(fail(Kind::Protocol, format!("{what}: malformed {text:?}")));
                }
            }
        }
        if buf.len() > MAX_REPLY {
            return Err(fail(Kind::Protocol, format!("{what}: reply too long")));
        }
        let n = r.read(&mut chunk).map_err(|e| io_fail(e, Kind::Io, what))?;
        if n == 0 {
            return Err(fail(
                Kind::Io,
                format!("{what}: connection closed before a reply"),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn expect<R: Read>(r: &mut R, buf: &mut Vec<u8>, want: u16, what: &str) -> Result<Reply, Failure> {
    let reply = read_reply(r, buf, what)?;
    if reply.code == want {
        return Ok(reply);
    }
    let kind = match reply.code {
        400..=499 => Kind::Smtp4xx,
        500..=599 => Kind::Smtp5xx,
        _ => Kind::Protocol,
    };
    Err(fail(
        kind,
        format!("{what}: got {:?}, want {want}", reply.last),
    ))
}

fn send<W: Write>(w: &mut W, data: &[u8], what: &str) -> Result<(), Failure> {
    w.write_all(data)
        .and_then(|()| w.flush())
        .map_err(|e| io_fail(e, Kind::Io, what))
}

fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| fail(Kind::Connect, format!("connect to {addr}: {e}")))?;
    sock.set_nodelay(true)
        .and_then(|()| sock.set_read_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| sock.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| fail(Kind::Connect, format!("socket options: {e}")))?;
    Ok(sock)
}

/// A full handshake; a failure of any sort while it runs is `tls` (or
/// `timeout`).
fn handshake(
    cfg: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    sock: &mut TcpStream,
) -> Result<ClientConnection, Failure> {
    let mut tls = ClientConnection::new(Arc::clone(cfg), name.clone()).map_err(tls_fail)?;
    while tls.is_handshaking() {
        tls.complete_io(sock)
            .map_err(|e| io_fail(e, Kind::Tls, "TLS handshake"))?;
    }
    while tls.wants_write() {
        tls.write_tls(sock)
            .map_err(|e| io_fail(e, Kind::Tls, "TLS handshake"))?;
    }
    Ok(tls)
}

/// close_notify, then reads until the server closes, so nothing is left
/// unread in the socket (which would make close() send a reset). Best
/// effort: the connection's result is already known.
fn close_tls(tls: &mut ClientConnection, sock: &mut TcpStream) {
    tls.send_close_notify();
    while tls.wants_write() {
        if tls.write_tls(sock).is_err() {
            return;
        }
    }
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    loop {
        match tls.read_tls(sock) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok(state) = tls.process_new_packets() else {
            return;
        };
        let mut sink = [0u8; 4096];
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            match tls.reader().read(&mut sink) {
                Ok(n) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
        if state.peer_has_closed() {
            return;
        }
    }
}

// --- results per thread ----------------------------------------------------------

#[derive(Default)]
struct Tally {
    errors: [u64; KINDS],
    first: [Option<String>; KINDS],
    /// (mailbox number, id from the 250 reply) of every message acknowledged.
    acked: Vec<(u64, String)>,
    /// Messages whose final dot may have reached the server but whose reply
    /// did not arrive: the server may or may not have stored them.
    in_doubt: u64,
    /// Delivery connections begun.
    conns: u64,
    /// Microseconds from the last byte of each message to its 250.
    eod_us: Vec<u32>,
}

impl Tally {
    fn record(&mut self, phase: &str, f: Failure) {
        let k = f.kind as usize;
        self.errors[k] += 1;
        self.first[k].get_or_insert_with(|| format!("{phase}: {}", f.msg));
    }

    fn merge(&mut self, other: Tally) {
        for (k, first) in other.first.into_iter().enumerate() {
            self.errors[k] += other.errors[k];
            if self.first[k].is_none() {
                self.first[k] = first;
            }
        }
        self.acked.extend(other.acked);
        self.in_doubt += other.in_doubt;
        self.conns += other.conns;
        self.eod_us.extend(other.eod_us);
    }

    fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

// --- idle connections ------------------------------------------------------------

struct IdleConn {
    tls: ClientConnection,
    sock: TcpStream,
}

fn open_idle(
    o: &Opts,
    cfg: &Arc<ClientConfig>,
    name: &ServerName<'static>,
) -> Result<IdleConn, Failure> {
    let mut sock = connect(o.tls_addr)?;
    let mut tls = handshake(cfg, name, &mut sock)?;
    let mut buf = Vec::new();
    expect(
        &mut Stream::new(&mut tls, &mut sock),
        &mut buf,
        220,
        "banner",
    )?;
    if !buf.is_empty() {
        return Err(fail(Kind::Protocol, "banner: data after the 220"));
    }
    Ok(IdleConn { tls, sock })
}

/// Opens `count` idle connections before `deadline`; returns those opened.
fn open_share(
    o: &Opts,
    cfg: &Arc<ClientConfig>,
    count: usize,
    deadline: Instant,
    mon: &Monitor,
) -> (Vec<IdleConn>, Tally) {
    let name = ServerName::try_from(o.server_name.clone()).expect("checked in run");
    let mut conns = Vec::with_capacity(count);
    let mut tally = Tally::default();
    let mut attempts = 0;
    // Up to twice as many attempts as connections wanted, so a few refused
    // connections are made up for but a refusing server does not loop.
    while conns.len() < count && attempts < 2 * count && Instant::now() < deadline {
        attempts += 1;
        match open_idle(o, cfg, &name) {
            Ok(c) => {
                conns.push(c);
                let n = mon.opened.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(1000) {
                    eprintln!("soak: {n}/{} idle TLS connections open", o.idle);
                }
            }
            Err(f) => tally.record("opening idle", f),
        }
    }
    (conns, tally)
}

fn check_idle(c: &mut IdleConn) -> Result<(), Failure> {
    let mut buf = Vec::new();
    let mut s = Stream::new(&mut c.tls, &mut c.sock);
    send(&mut s, b"NOOP\r\n", "NOOP")?;
    expect(&mut s, &mut buf, 250, "NOOP")?;
    Ok(())
}

/// QUIT, close_notify and close; past `deadline` (or for a connection
/// that failed its check) only the close.
fn quit_idle(mut c: IdleConn, alive: bool, deadline: Instant) {
    if !alive || Instant::now() >= deadline {
        return;
    }
    let _ = c.sock.set_read_timeout(Some(QUIT_TIMEOUT));
    let mut buf = Vec::new();
    let mut s = Stream::new(&mut c.tls, &mut c.sock);
    if send(&mut s, b"QUIT\r\n", "QUIT").is_ok() {
        let _ = read_reply(&mut s, &mut buf, "QUIT");
    }
    close_tls(&mut c.tls, &mut c.sock);
}

// --- deliveries -------------------------------------------------------------------

/// A message of exactly MESSAGE_SIZE bytes with CRLF line ends, ending in
/// CRLF, followed by the end-of-data line. No line starts with a dot.
fn message(seq: u64, sender: usize, rcpt: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <soak-sender{sender}@client.test>\r\nTo: <{rcpt}>\r\n\
         Subject: soak message {seq}\r\nMessage-ID: <soak.{seq}@client.test>\r\n\
         X-Soak: sender {sender} seq {seq}\r\n\r\n"
    )
    .into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor";
    loop {
        let room = MESSAGE_SIZE.saturating_sub(m.len());
        if room == 0 {
            break;
        }
        // A full line only if at least a short one still fits after it;
        // else the last line takes the room left, CRLF included.
        let take = if room >= line.len() + 2 + 3 {
            line.len()
        } else {
            room.saturating_sub(2)
        };
        m.extend((0..take).map(|i| line[i % line.len()]));
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// `250 2.0.0 OK id=ID` -> ID
fn reply_id(text: &str) -> Option<String> {
    let id = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))?;
    (!id.is_empty()).then(|| id.to_string())
}

struct Sender<'a> {
    o: &'a Opts,
    cfg: &'a Arc<ClientConfig>,
    name: ServerName<'static>,
    sender: usize,
    seq: &'a AtomicU64,
    mon: &'a Monitor,
}

impl Sender<'_> {
    /// One delivery connection: up to MESSAGES_PER_CONN messages, none
    /// begun after `deadline`.
    fn connection(&self, deadline: Instant, t: &mut Tally) -> Result<(), Failure> {
        t.conns += 1;
        let mut sock = connect(self.o.plain_addr)?;
        let mut buf = Vec::with_capacity(4096);
        expect(&mut sock, &mut buf, 220, "banner")?;
        send(&mut sock, b"EHLO soak.test\r\n", "EHLO")?;
        expect(&mut sock, &mut buf, 250, "EHLO")?;
        send(&mut sock, b"STARTTLS\r\n", "STARTTLS")?;
        expect(&mut sock, &mut buf, 220, "STARTTLS")?;
        if !buf.is_empty() {
            return Err(fail(Kind::Protocol, "STARTTLS: data after the 220"));
        }
        let mut tls = handshake(self.cfg, &self.name, &mut sock)?;
        let mut s = Stream::new(&mut tls, &mut sock);
        send(&mut s, b"EHLO soak.test\r\n", "EHLO in TLS")?;
        expect(&mut s, &mut buf, 250, "EHLO in TLS")?;
        for _ in 0..MESSAGES_PER_CONN {
            if Instant::now() >= deadline {
                break;
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let mailbox = seq % MAILBOXES;
            let rcpt = format!("soak{mailbox}@{}", self.o.domain);
            let mail = format!("MAIL FROM:<soak-sender{}@client.test>\r\n", self.sender);
            send(&mut s, mail.as_bytes(), "MAIL")?;
            expect(&mut s, &mut buf, 250, "MAIL")?;
            send(&mut s, format!("RCPT TO:<{rcpt}>\r\n").as_bytes(), "RCPT")?;
            expect(&mut s, &mut buf, 250, "RCPT")?;
            send(&mut s, b"DATA\r\n", "DATA")?;
            expect(&mut s, &mut buf, 354, "DATA")?;
            // From here until a reply arrives the server may have stored it.
            let sent = send(&mut s, &message(seq, self.sender, &rcpt), "message data");
            let t_eod = Instant::now();
            let reply = sent.and_then(|()| expect(&mut s, &mut buf, 250, "end of data"));
            match reply {
                Ok(r) => {
                    let id = reply_id(&r.last).ok_or_else(|| {
                        fail(
                            Kind::Protocol,
                            format!("end of data: no id in {:?}", r.last),
                        )
                    })?;
                    t.acked.push((mailbox, id));
                    t.eod_us
                        .push(u32::try_from(t_eod.elapsed().as_micros()).unwrap_or(u32::MAX));
                    self.mon.acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(f) => {
                    if !matches!(f.kind, Kind::Smtp4xx | Kind::Smtp5xx) {
                        t.in_doubt += 1;
                    }
                    return Err(f);
                }
            }
        }
        send(&mut s, b"QUIT\r\n", "QUIT")?;
        expect(&mut s, &mut buf, 221, "QUIT")?;
        close_tls(&mut tls, &mut sock);
        Ok(())
    }

    fn run(&self, deadline: Instant) -> Tally {
        let mut t = Tally::default();
        while Instant::now() < deadline {
            if let Err(f) = self.connection(deadline, &mut t) {
                t.record("delivering", f);
                self.mon.failed_conns.fetch_add(1, Ordering::Relaxed);
                thread::sleep(RETRY_PAUSE);
            }
        }
        t
    }
}

// --- the Maildir ------------------------------------------------------------------

/// Message files in DIR/DOMAIN/*/new/, and the number in tmp/ and cur/.
fn maildir_files(root: &Path, domain: &str) -> io::Result<(Vec<(String, PathBuf)>, u64)> {
    let mut files = Vec::new();
    let mut stray = 0;
    let dom = root.join(domain);
    let entries = match fs::read_dir(&dom) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((files, 0)),
        Err(e) => return Err(e),
    };
    for mbox in entries {
        let mbox = mbox?;
        if !mbox.file_type()?.is_dir() {
            continue;
        }
        let name = mbox.file_name().to_string_lossy().into_owned();
        for sub in ["new", "tmp", "cur"] {
            let dir = mbox.path().join(sub);
            let Ok(list) = fs::read_dir(&dir) else {
                continue;
            };
            for f in list {
                let f = f?;
                if sub == "new" {
                    files.push((name.clone(), f.path()));
                } else {
                    stray += 1;
                }
            }
        }
    }
    Ok((files, stray))
}

/// The id in the first Received header: `... id ID ...;`.
fn received_id(text: &str) -> Option<String> {
    let mut header = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if inside {
            if line.starts_with([' ', '\t']) {
                header.push(' ');
                header.push_str(line);
                continue;
            }
            break;
        }
        if let Some(rest) = line.strip_prefix("Received:") {
            inside = true;
            header.push_str(rest);
        }
    }
    let mut words = header.split_whitespace();
    words.find(|w| *w == "id")?;
    let id = words.next()?.trim_end_matches(';');
    (!id.is_empty()).then(|| id.to_string())
}

struct MaildirCheck {
    found: u64,
    stray: u64,
    unreadable: u64,
    missing: u64,
    unexpected: u64,
    duplicates: u64,
    sample_problem: Option<String>,
}

fn check_maildir(
    o: &Opts,
    before: &HashSet<PathBuf>,
    acked: &[(u64, String)],
) -> Result<MaildirCheck, String> {
    let (files, stray) = maildir_files(&o.maildir, &o.domain)
        .map_err(|e| format!("reading {}: {e}", o.maildir.display()))?;
    let mut found = BTreeSet::new();
    let mut c = MaildirCheck {
        found: 0,
        stray,
        unreadable: 0,
        missing: 0,
        unexpected: 0,
        duplicates: 0,
        sample_problem: None,
    };
    for (mbox, path) in files {
        if before.contains(&path) {
            continue;
        }
        c.found += 1;
        let id = fs::read(&path)
            .ok()
            .and_then(|b| received_id(&String::from_utf8_lossy(&b)));
        let Some(id) = id else {
            c.unreadable += 1;
            c.sample_problem
                .get_or_insert(format!("no Received id in {}", path.display()));
            continue;
        };
        if !found.insert((mbox.clone(), id.clone())) {
            c.duplicates += 1;
            c.sample_problem
                .get_or_insert(format!("id {id} twice in mailbox {mbox}"));
        }
    }
    let acked: BTreeSet<(String, String)> = acked
        .iter()
        .map(|(m, id)| (format!("soak{m}"), id.clone()))
        .collect();
    for (mbox, id) in acked.difference(&found) {
        c.missing += 1;
        c.sample_problem
            .get_or_insert(format!("acknowledged id {id} not in mailbox {mbox}"));
    }
    for (mbox, id) in found.difference(&acked) {
        c.unexpected += 1;
        c.sample_problem
            .get_or_insert(format!("id {id} in mailbox {mbox} was never acknowledged"));
    }
    Ok(c)
}

// --- reporting --------------------------------------------------------------------

fn opt_num(v: Option<u64>) -> String {
    v.map_or("null".into(), |n| n.to_string())
}

struct Report {
    idle_opened: u64,
    alive: u64,
    open_secs: f64,
    delivery_secs: f64,
    acked: u64,
    maildir: MaildirCheck,
    matched: bool,
    baseline: u64,
    with_idle: Option<u64>,
    after_deliveries: Option<u64>,
    after_close: Option<u64>,
    peak: u64,
    hwm: Option<u64>,
    per_idle: Option<f64>,
    rate: f64,
    server_alive: bool,
    tally: Tally,
}

fn errors_field(t: &Tally) -> String {
    let nonzero: Vec<String> = KIND_NAMES
        .iter()
        .zip(t.errors)
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}:{n}"))
        .collect();
    format!("{{{}}}", nonzero.join(","))
}

fn text_line(o: &Opts, r: &Report) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let kib = |v: Option<u64>| opt_num(v);
    format!(
        "idle={} alive_at_end={} duration={}s delivered_acked={} found_in_maildir={} match={} \
         peak_rss_kib={} baseline_rss_kib={} rss_per_idle_tls_conn_kib={} deliveries_per_s={:.1} \
         errors={} idle_opened={} in_doubt={} rss_with_idle_kib={} rss_after_deliveries_kib={} \
         rss_after_close_kib={} hwm_rss_kib={} server_alive={}",
        o.idle,
        r.alive,
        o.duration.as_secs(),
        r.acked,
        r.maildir.found,
        yes(r.matched),
        r.peak,
        r.baseline,
        r.per_idle.map_or("-".into(), |v| format!("{v:.1}")),
        r.rate,
        errors_field(&r.tally),
        r.idle_opened,
        r.tally.in_doubt,
        kib(r.with_idle),
        kib(r.after_deliveries),
        kib(r.after_close),
        kib(r.hwm),
        yes(r.server_alive),
    )
}

fn json_doc(o: &Opts, r: &Report, samples: &[Sample]) -> String {
    let by_kind: Vec<String> = KIND_NAMES
        .iter()
        .zip(r.tally.errors)
        .map(|(k, n)| format!("\"{k}\": {n}"))
        .collect();
    let first: Vec<String> = KIND_NAMES
        .iter()
        .zip(&r.tally.first)
        .filter_map(|(k, f)| f.as_ref().map(|m| format!("\"{k}\": {}", json_str(m))))
        .collect();
    let series: Vec<String> = samples
        .iter()
        .map(|s| {
            format!(
                "[{:.1}, {}, {}, {}, {}]",
                s.secs,
                s.rss_kib,
                s.acked,
                opt_num(s.server_cpu_ticks),
                opt_num(s.io_some_us)
            )
        })
        .collect();
    let mut eod = r.tally.eod_us.clone();
    eod.sort_unstable();
    let eod_ms = format!(
        "{{\"p50\": {:.3}, \"p90\": {:.3}, \"p99\": {:.3}, \"p99.9\": {:.3}, \"max\": {:.3}}}",
        percentile_ms(&eod, 50.0),
        percentile_ms(&eod, 90.0),
        percentile_ms(&eod, 99.0),
        percentile_ms(&eod, 99.9),
        percentile_ms(&eod, 100.0),
    );
    let m = &r.maildir;
    let fields = [
        ("tls_addr", json_str(&o.tls_addr.to_string())),
        ("plain_addr", json_str(&o.plain_addr.to_string())),
        ("idle", o.idle.to_string()),
        ("idle_opened", r.idle_opened.to_string()),
        ("idle_open_secs", format!("{:.3}", r.open_secs)),
        ("alive_at_end", r.alive.to_string()),
        ("duration_s", o.duration.as_secs().to_string()),
        ("delivery_secs", format!("{:.3}", r.delivery_secs)),
        ("senders", o.senders.to_string()),
        ("messages_per_conn", MESSAGES_PER_CONN.to_string()),
        ("message_bytes", MESSAGE_SIZE.to_string()),
        ("mailboxes", MAILBOXES.to_string()),
        ("delivery_conns", r.tally.conns.to_string()),
        ("delivered_acked", r.acked.to_string()),
        ("found_in_maildir", m.found.to_string()),
        ("missing_from_maildir", m.missing.to_string()),
        ("unexpected_in_maildir", m.unexpected.to_string()),
        ("duplicate_ids", m.duplicates.to_string()),
        ("files_without_id", m.unreadable.to_string()),
        ("files_in_tmp_or_cur", m.stray.to_string()),
        ("in_doubt", r.tally.in_doubt.to_string()),
        ("match", r.matched.to_string()),
        ("deliveries_per_s", format!("{:.2}", r.rate)),
        ("end_of_data_reply_ms", eod_ms),
        ("baseline_rss_kib", r.baseline.to_string()),
        ("rss_with_idle_kib", opt_num(r.with_idle)),
        (
            "rss_per_idle_tls_conn_kib",
            r.per_idle.map_or("null".into(), |v| format!("{v:.2}")),
        ),
        ("rss_after_deliveries_kib", opt_num(r.after_deliveries)),
        ("rss_after_close_kib", opt_num(r.after_close)),
        ("peak_rss_kib", r.peak.to_string()),
        ("hwm_rss_kib", opt_num(r.hwm)),
        ("server_alive_at_end", r.server_alive.to_string()),
        ("errors", r.tally.error_total().to_string()),
        ("errors_by_kind", format!("{{{}}}", by_kind.join(", "))),
        ("first_error_by_kind", format!("{{{}}}", first.join(", "))),
        ("sample_fields", SAMPLE_FIELDS.to_string()),
        ("samples", format!("[{}]", series.join(", "))),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  \"{k}\": {v}"))
        .collect();
    format!("{{\n{}\n}}\n", body.join(",\n"))
}

// --- the run ------------------------------------------------------------------------

fn check_fd_limits(o: &Opts) -> Result<(), String> {
    let need = o.idle as u64 + 2 * o.senders as u64 + SPARE_FDS;
    match max_open_files("self") {
        Some(n) if n < need => {
            return Err(format!(
                "open-file limit {n} is below the {need} this run needs: raise `ulimit -n`"
            ));
        }
        Some(_) => {}
        None => eprintln!("soak: cannot read /proc/self/limits; not checking the fd limit"),
    }
    let pid = o.server_pid;
    match max_open_files(&pid.to_string()) {
        Some(n) if n < need => Err(format!(
            "the server's open-file limit is {n}, below the {need} this run needs: \
             start it with a higher `ulimit -n`"
        )),
        Some(_) => Ok(()),
        None => {
            eprintln!("soak: cannot read /proc/{pid}/limits; not checking its fd limit");
            Ok(())
        }
    }
}

/// Phase 2: opens `o.idle` connections with OPEN_THREADS threads.
fn open_all(o: &Opts, cfg: &Arc<ClientConfig>, mon: &Monitor) -> (Vec<IdleConn>, Tally) {
    eprintln!(
        "soak: opening {} idle TLS connections to {}",
        o.idle, o.tls_addr
    );
    // A bound on the whole phase; each connection has its own timeouts too.
    let per_conn = Duration::from_millis(20);
    let deadline = Instant::now() + Duration::from_secs(120) + per_conn * o.idle as u32;
    let mut idle = Vec::with_capacity(o.idle);
    let mut tally = Tally::default();
    thread::scope(|s| {
        let openers: Vec<_> = (0..OPEN_THREADS)
            .map(|i| {
                let share = o.idle / OPEN_THREADS + usize::from(i < o.idle % OPEN_THREADS);
                s.spawn(move || open_share(o, cfg, share, deadline, mon))
            })
            .collect();
        for h in openers {
            let (conns, t) = h.join().expect("opener panicked");
            idle.extend(conns);
            tally.merge(t);
        }
    });
    (idle, tally)
}

/// Phase 3: `o.senders` threads deliver until `o.duration` has passed.
fn deliver_all(o: &Opts, cfg: &Arc<ClientConfig>, mon: &Monitor) -> Tally {
    eprintln!(
        "soak: delivering for {}s with {} senders to {}",
        o.duration.as_secs(),
        o.senders,
        o.plain_addr
    );
    let seq = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + o.duration;
    let mut tally = Tally::default();
    thread::scope(|s| {
        let senders: Vec<_> = (0..o.senders)
            .map(|sender| {
                let st = Sender {
                    o,
                    cfg,
                    name: ServerName::try_from(o.server_name.clone()).expect("checked in run"),
                    sender,
                    seq: &seq,
                    mon,
                };
                s.spawn(move || st.run(deadline))
            })
            .collect();
        let mut next_progress = start + PROGRESS_EVERY;
        while senders.iter().any(|h| !h.is_finished()) {
            thread::sleep(Duration::from_millis(100));
            let now = Instant::now();
            if now >= next_progress && now < deadline {
                next_progress += PROGRESS_EVERY;
                eprintln!(
                    "soak: {:.0}s acked={} failed_conns={} rss_kib={}",
                    (now - start).as_secs_f64(),
                    mon.acked.load(Ordering::Relaxed),
                    mon.failed_conns.load(Ordering::Relaxed),
                    opt_num(status_kib(o.server_pid, "VmRSS")),
                );
            }
        }
        for h in senders {
            tally.merge(h.join().expect("sender panicked"));
        }
    });
    tally
}

/// Phase 4: NOOP on every idle connection, then QUIT on all; returns how
/// many answered the NOOP with 250.
fn check_and_close(idle: Vec<IdleConn>) -> (u64, Tally) {
    eprintln!("soak: checking {} idle connections (NOOP)", idle.len());
    let bound = CHECK_BASE + CHECK_PER_CONN * u32::try_from(idle.len()).unwrap_or(u32::MAX);
    let check_deadline = Instant::now() + bound;
    let chunk = idle.len().div_ceil(OPEN_THREADS).max(1);
    let mut parts: Vec<Vec<(IdleConn, bool)>> = Vec::new();
    let mut rest: Vec<(IdleConn, bool)> = idle.into_iter().map(|c| (c, false)).collect();
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().saturating_sub(chunk));
        parts.push(tail);
    }
    let mut alive = 0;
    let mut tally = Tally::default();
    thread::scope(|s| {
        let checkers: Vec<_> = parts
            .iter_mut()
            .map(|part| {
                s.spawn(move || {
                    let mut t = Tally::default();
                    let mut alive = 0;
                    for (c, ok) in part.iter_mut() {
                        let checked = if Instant::now() < check_deadline {
                            check_idle(c)
                        } else {
                            Err(fail(Kind::Timeout, "not checked: phase deadline passed"))
                        };
                        match checked {
                            Ok(()) => {
                                alive += 1;
                                *ok = true;
                            }
                            Err(f) => {
                                let msg = format!("{} ({})", f.msg, KIND_NAMES[f.kind as usize]);
                                t.record("idle check", fail(Kind::IdleDead, msg));
                            }
                        }
                    }
                    (alive, t)
                })
            })
            .collect();
        for h in checkers {
            let (a, t) = h.join().expect("checker panicked");
            alive += a;
            tally.merge(t);
        }
    });
    // Closed only once all are checked, so the count is of one moment.
    let close_deadline = Instant::now() + bound;
    thread::scope(|s| {
        for part in parts {
            s.spawn(move || {
                for (c, ok) in part {
                    quit_idle(c, ok, close_deadline);
                }
            });
        }
    });
    (alive, tally)
}

fn run(o: &Opts) -> Result<bool, String> {
    let roots = load_roots(&o.ca)?;
    ServerName::try_from(o.server_name.clone())
        .map_err(|e| format!("--server-name {:?}: {e}", o.server_name))?;
    let cfg = client_config(&roots)?;
    check_fd_limits(o)?;
    let (before, _) = maildir_files(&o.maildir, &o.domain)
        .map_err(|e| format!("reading {}: {e}", o.maildir.display()))?;
    let before: HashSet<PathBuf> = before.into_iter().map(|(_, p)| p).collect();
    if !before.is_empty() {
        eprintln!(
            "soak: {} message files already in the Maildir; they are left out of the count",
            before.len()
        );
    }
    let mon = Monitor::new(o.server_pid);
    // Phase 1: the baseline.
    let baseline = mon.read().ok_or(format!(
        "--server-pid {}: cannot read VmRSS from /proc/{0}/status",
        o.server_pid
    ))?;
    let stop = AtomicBool::new(false);
    let mut tally = Tally::default();
    let (idle_opened, alive, open_secs, delivery_secs, with_idle, after_deliveries, after_close) =
        thread::scope(|s| {
            s.spawn(|| mon.sample_until(&stop));
            let t_open = Instant::now();
            let (idle, t) = open_all(o, &cfg, &mon);
            tally.merge(t);
            let open_secs = t_open.elapsed().as_secs_f64();
            let idle_opened = idle.len() as u64;
            eprintln!("soak: {idle_opened} idle TLS connections open in {open_secs:.1}s");
            // Let the server finish with the last ones (tickets, timers).
            thread::sleep(Duration::from_secs(1));
            let with_idle = mon.read();

            let t_deliver = Instant::now();
            tally.merge(deliver_all(o, &cfg, &mon));
            let delivery_secs = t_deliver.elapsed().as_secs_f64();
            let after_deliveries = mon.read();

            let (alive, t) = check_and_close(idle);
            tally.merge(t);
            thread::sleep(Duration::from_secs(1));
            let after_close = mon.read();
            stop.store(true, Ordering::Relaxed);
            (
                idle_opened,
                alive,
                open_secs,
                delivery_secs,
                with_idle,
                after_deliveries,
                after_close,
            )
        });

    // Phase 5: the Maildir.
    let maildir = check_maildir(o, &before, &tally.acked)?;
    let acked = tally.acked.len() as u64;
    let matched = maildir.found == acked
        && maildir.missing == 0
        && maildir.unexpected == 0
        && maildir.duplicates == 0
        && maildir.unreadable == 0;
    let server_alive =
        !mon.lost.load(Ordering::Relaxed) && process_status_kib(o.server_pid, "VmRSS").is_some();
    let report = Report {
        idle_opened,
        alive,
        open_secs,
        delivery_secs,
        acked,
        matched,
        baseline,
        with_idle,
        after_deliveries,
        after_close,
        peak: mon.peak(),
        hwm: status_kib(o.server_pid, "VmHWM"),
        per_idle: with_idle
            .filter(|_| idle_opened > 0)
            .map(|w| (w as f64 - baseline as f64) / idle_opened as f64),
        rate: acked as f64 / delivery_secs.max(1e-9),
        server_alive,
        maildir,
        tally,
    };
    for (k, first) in report.tally.first.iter().enumerate() {
        if let Some(msg) = first {
            eprintln!(
                "soak: {} {} errors, first: {msg}",
                report.tally.errors[k], KIND_NAMES[k]
            );
        }
    }
    if let Some(p) = &report.maildir.sample_problem {
        eprintln!("soak: Maildir: {p}");
    }
    println!("{}", text_line(o, &report));
    if let Some(path) = &o.json {
        let samples = mon.samples.lock().expect("no panics while held");
        fs::write(path, json_doc(o, &report, &samples))
            .map_err(|e| format!("--json {path}: {e}"))?;
    }
    let mut ok = true;
    if !report.matched {
        eprintln!(
            "soak: FAIL: {} acknowledged, {} in the Maildir ({} missing, {} never acknowledged, \
             {} in doubt)",
            acked,
            report.maildir.found,
            report.maildir.missing,
            report.maildir.unexpected,
            report.tally.in_doubt
        );
        ok = false;
    }
    if report.alive != o.idle as u64 {
        eprintln!(
            "soak: FAIL: {} of {} idle connections alive at the end ({} opened)",
            report.alive, o.idle, report.idle_opened
        );
        ok = false;
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench` to harness = false targets; ignore it.
    let args: Vec<String> = args.into_iter().filter(|a| a != "--bench").collect();
    if args.is_empty() {
        // `cargo test --all-targets` and a bare `cargo bench` run this
        // target without arguments: there is nothing to measure then.
        println!(
            "soak: nothing to do without arguments; scripts/soak runs it ({USAGE}, see --help)"
        );
        return ExitCode::SUCCESS;
    }
    match parse_args(&args) {
        Ok(None) => {
            print!("{}", options().usage(USAGE));
            ExitCode::SUCCESS
        }
        Ok(Some(o)) => match run(&o) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("soak: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}
