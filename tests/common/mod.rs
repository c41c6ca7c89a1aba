//! Shared harness for the integration tests: a test PKI, the real gsmtpd
//! binary started on ephemeral loopback ports, a plain SMTP client, and
//! real TLS clients (gnutls-cli, openssl s_client) driven line by line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

mod dnsmasq;
mod hops;
#[allow(unused_imports)]
pub use dnsmasq::Dnsmasq;
#[allow(unused_imports)]
pub use hops::*;

pub const WAIT: Duration = Duration::from_secs(20);
pub const DOMAIN: &str = "example.org";

/// A gsmtpd with one worker on `state`, with `--durability` and
/// `--checkpoint-interval` as given.
pub fn durable_server(state: &Path, durability: &str, checkpoint: &str) -> Server {
    Server::with(Options {
        implicit: false,
        state: Some(state.to_path_buf()),
        extra: [
            "--durability",
            durability,
            "--checkpoint-interval",
            checkpoint,
            "--workers",
            "1",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    })
}

/// Waits until no queue file is held for a worker's checkpoint (under
/// `--durability log` a queue file waits in `queue/held-N/` for up to
/// 100 ms before it moves into `queue/new/`).
pub fn queue_settled(state: &Path) {
    let start = Instant::now();
    loop {
        let held = std::fs::read_dir(state.join("queue"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("held-"))
                    .any(|e| std::fs::read_dir(e.path()).is_ok_and(|mut f| f.next().is_some()))
            })
            .unwrap_or(false);
        if !held {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "queue files still held after {WAIT:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh directory under cargo's per-target test scratch space.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The test PKI made by scripts/make-test-pki, once per test binary.
pub fn pki() -> &'static Path {
    static PKI: OnceLock<PathBuf> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = scratch_dir("pki");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-test-pki");
        let out = Command::new(script)
            .arg(&dir)
            .output()
            .expect("running scripts/make-test-pki");
        assert!(
            out.status.success(),
            "make-test-pki: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

pub fn pki_file(name: &str) -> String {
    pki().join(name).display().to_string()
}

/// A running gsmtpd. Killed on drop.
pub struct Server {
    pub child: Child,
    pub plain: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub state: PathBuf,
    pub maildir: PathBuf,
    log: Arc<Mutex<String>>,
}

pub struct Options {
    pub plain: bool,
    pub implicit: bool,
    pub certs: bool,
    pub extra: Vec<String>,
    pub state: Option<PathBuf>,
    /// Environment variables for the server process.
    pub env: Vec<(String, String)>,
    /// Run the server from this directory, naming `--state-dir` relative
    /// to it (as the README's first command does).
    pub cwd: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plain: true,
            implicit: true,
            certs: true,
            extra: Vec::new(),
            state: None,
            env: Vec::new(),
            cwd: None,
        }
    }
}

impl Server {
    pub fn start() -> Server {
        Server::with(Options::default())
    }

    pub fn with_args(extra: &[&str]) -> Server {
        Server::with(Options {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..Options::default()
        })
    }

    pub fn with(opts: Options) -> Server {
        let state = opts.state.clone().unwrap_or_else(|| scratch_dir("state"));
        let cwd = opts.cwd.clone().unwrap_or_else(|| PathBuf::from("."));
        let state_arg = state.strip_prefix(&cwd).unwrap_or(&state);
        let mut args: Vec<String> = vec![
            "--state-dir".into(),
            state_arg.display().to_string(),
            "--hostname".into(),
            "mx.test".into(),
            "--domain".into(),
            DOMAIN.into(),
        ];
        if opts.plain {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if opts.implicit {
            args.extend(["--listen-tls".into(), "127.0.0.1:0".into()]);
        }
        if opts.certs {
            args.extend([
                "--cert".into(),
                pki_file("rsa.pem"),
                "--key".into(),
                pki_file("rsa-key.pem"),
            ]);
        }
        args.extend(opts.extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_gsmtpd"))
            .args(&args)
            .current_dir(&cwd)
            .env("RUST_LOG", "debug")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting gsmtpd");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Into the log first: a test that starts once the server
                // listens may look for this very line.
                {
                    let mut l = sink.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
                if line.contains("listening on") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("gsmtpd did not start:\n{}", log.lock().unwrap());
            }
        };
        let (plain, tls) = parse_listening(&line);
        Server {
            child,
            plain,
            tls,
            maildir: state.join("mail"),
            state,
            log,
        }
    }

    pub fn port(&self) -> u16 {
        self.plain[0].port()
    }

    pub fn tls_port(&self) -> u16 {
        self.tls[0].port()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (log lines are written
    /// asynchronously with respect to the client's view).
    pub fn wait_log(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                start.elapsed() < WAIT,
                "log never showed {needle:?}:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the supervisor (the process the operator started).
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Sends `sig` to every worker and to the supervisor: to freeze and
    /// thaw the whole server (STOP, CONT).
    pub fn signal_all(&self, sig: &str) {
        for pid in self.workers() {
            signal(pid, sig);
        }
        self.signal(sig);
    }

    /// The worker processes: the supervisor's children but the delivery
    /// process.
    pub fn workers(&self) -> Vec<u32> {
        let delivery = self.delivery_pids();
        children(self.child.id())
            .into_iter()
            .filter(|pid| !delivery.contains(pid))
            .collect()
    }

    /// Every delivery process started so far.
    pub fn delivery_pids(&self) -> Vec<u32> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("the delivery process started (pid "))
            .filter_map(|(_, rest)| rest.split(')').next()?.parse().ok())
            .collect()
    }

    /// Waits until the server has `n` live workers; returns their pids.
    pub fn wait_workers(&self, n: usize) -> Vec<u32> {
        let start = Instant::now();
        loop {
            let workers: Vec<u32> = self
                .workers()
                .into_iter()
                .filter(|&pid| !is_zombie(pid))
                .collect();
            if workers.len() == n {
                return workers;
            }
            assert!(
                start.elapsed() < WAIT,
                "{} workers, not {n}:\n{}",
                workers.len(),
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("gsmtpd did not exit within {within:?}:\n{}", self.log());
    }

    /// The worker that took the connection from the client port `port`,
    /// from its log line (waiting for it).
    pub fn worker_of(&self, port: u16) -> u32 {
        let needle = format!("SMTP connection from [127.0.0.1]:{port} ");
        let log = self.wait_log(&needle);
        let line = log.lines().find(|l| l.contains(&needle)).unwrap();
        line_pid(line).unwrap_or_else(|| panic!("no pid in {line}"))
    }

    /// The `<=` log line of the message with this queue id (waiting for it).
    pub fn arrival_line(&self, id: &str) -> String {
        let needle = format!("id={id}");
        let log = self.wait_log(&needle);
        log.lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_default()
            .to_string()
    }

    /// Every message file delivered to user@example.org.
    pub fn mailbox(&self, user: &str) -> Vec<Vec<u8>> {
        self.mailbox_of(DOMAIN, user)
    }

    /// Every message file delivered to user@domain.
    pub fn mailbox_of(&self, domain: &str, user: &str) -> Vec<Vec<u8>> {
        let dir = self.maildir.join(domain).join(user).join("new");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failing test shows what the server said.
        if thread::panicking() || std::env::var_os("GSMTPD_TEST_LOGS").is_some() {
            eprintln!(
                "--- log of the gsmtpd in {}:\n{}",
                self.state.display(),
                self.log()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// As a power loss would: no process gets to run another instruction.
/// The supervisor is stopped first (so it replaces nobody), its children
/// killed (before the supervisor's death could send them the SIGTERM of
/// PR_SET_PDEATHSIG, after which a worker stops cleanly, checkpoint
/// included), then the supervisor.
pub fn kill_everything(server: &mut Server) {
    server.signal("STOP");
    let children = children(server.child.id());
    for &pid in &children {
        signal(pid, "KILL");
    }
    for pid in &children {
        while Path::new(&format!("/proc/{pid}/status")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .contains("State:\tZ")
        {
            thread::sleep(Duration::from_millis(10));
        }
    }
    server.signal("KILL");
    server.wait_exit(WAIT);
}

/// A loopback TCP port nothing listens on now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The pid a log line names: `[ts LEVEL target] [PID] message`.
pub fn line_pid(line: &str) -> Option<u32> {
    line.split_once("] [")?.1.split(']').next()?.parse().ok()
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

/// The processes whose parent is `parent`, from /proc.
pub fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if stat_field(pid, 1).as_deref() == Some(&parent.to_string()) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// A field of /proc/PID/stat after the command name: 0 is the state, 1
/// the parent's pid.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(") ")?.1;
    after_name.split(' ').nth(n).map(str::to_string)
}

pub fn is_zombie(pid: u32) -> bool {
    stat_field(pid, 0).is_none_or(|s| s == "Z" || s == "X")
}

/// "... listening on 127.0.0.1:1234, 127.0.0.1:2345 (TLS)"
fn parse_listening(line: &str) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let list = line.split("listening on ").nth(1).unwrap();
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    for item in list.split(", ") {
        let item = item.trim();
        match item.strip_suffix(" (TLS)") {
            Some(a) => tls.push(a.parse().unwrap()),
            None => plain.push(item.parse().unwrap()),
        }
    }
    (plain, tls)
}

/// A plain-TCP SMTP client that reads whole replies.
pub struct Plain {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Plain {
    pub fn connect(addr: SocketAddr) -> Plain {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Plain { stream, reader }
    }

    /// Connected, greeted, and past `EHLO client.test`.
    pub fn greeted(addr: SocketAddr) -> Plain {
        let mut c = Plain::connect(addr);
        c.expect("220");
        c.command("EHLO client.test", "250");
        c
    }

    /// MAIL FROM:<a@client.test>, RCPT TO:<to> and DATA, each accepted:
    /// the message content may follow.
    pub fn start_data(&mut self, to: &str) {
        self.command("MAIL FROM:<a@client.test>", "250");
        self.command(&format!("RCPT TO:<{to}>"), "250");
        self.command("DATA", "354");
    }

    pub fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).unwrap();
    }

    /// One whole reply (all its lines), or "" at EOF.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    pub fn expect(&mut self, code: &str) -> String {
        let r = self.reply();
        assert!(r.starts_with(code), "expected {code}, got {r:?}");
        r
    }

    pub fn command(&mut self, line: &str, code: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.expect(code)
    }

    /// Whatever one read() returns: shows how the server batched its writes.
    pub fn read_once(&mut self) -> String {
        let data = self.reader.fill_buf().unwrap().to_vec();
        self.reader.consume(data.len());
        String::from_utf8_lossy(&data).into_owned()
    }

    /// True when the server closed the connection (EOF) within WAIT.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

/// A real TLS client process (gnutls-cli or openssl s_client) whose stdin
/// we write and whose stdout we read line by line.
pub struct TlsClient {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub transcript: Arc<Mutex<String>>,
}

impl TlsClient {
    pub fn gnutls(args: &[&str]) -> TlsClient {
        // No --crlf: gnutls-cli converts only the first LF of each read
        // and drops the rest, so the tests send CRLF themselves.
        let mut all = vec!["--x509cafile"];
        let ca = pki_file("ca.pem");
        all.push(&ca);
        all.extend_from_slice(args);
        TlsClient::spawn("gnutls-cli", &all)
    }

    pub fn spawn(program: &str, args: &[&str]) -> TlsClient {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let transcript = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            let t = Arc::clone(&transcript);
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    t.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        TlsClient {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            transcript,
        }
    }

    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for a line starting with `prefix`; returns it. Panics with
    /// the transcript after WAIT.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "no line starting {prefix:?}; transcript:\n{}",
                        self.transcript()
                    )
                }
            }
        }
    }

    /// Waits for the final line of an SMTP reply with this code.
    pub fn expect_reply(&mut self, code: &str) -> String {
        self.wait_line(&format!("{code} "))
    }

    pub fn command(&mut self, line: &str, code: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.expect_reply(code)
    }

    /// The next SMTP reply line of any code, or None if none comes within
    /// `within`.
    pub fn next_reply(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line)
                    if line.len() >= 4 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit) =>
                {
                    return Some(line);
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub fn transcript(&self) -> String {
        self.transcript.lock().unwrap().clone()
    }

    /// Closes stdin (the clients then send close_notify and exit) and
    /// waits for the process.
    pub fn finish(mut self) -> String {
        self.stdin.take();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(Duration::from_millis(50));
        self.transcript()
    }
}

impl Drop for TlsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_client -starttls smtp -quiet` on the server's plain
/// listener, verifying the test CA, with `extra` flags.
pub fn openssl_starttls(server: &Server, extra: &[&str]) -> TlsClient {
    let addr = format!("127.0.0.1:{}", server.port());
    let ca = pki_file("ca.pem");
    let mut args = vec![
        "s_client",
        "-starttls",
        "smtp",
        "-quiet",
        "-connect",
        &addr,
        "-CAfile",
        &ca,
    ];
    args.extend_from_slice(extra);
    TlsClient::spawn("openssl", &args)
}

/// `openssl s_client` on the implicit-TLS port `port`, with `version`
/// (-tls1_3, -tls1_2), saving (`-sess_out`) or loading (`-sess_in`) its
/// session in `file`, leaving at once. Returns whether it resumed.
pub fn s_client_resumed(port: u16, version: &str, sess: &str, file: &Path) -> bool {
    let addr = format!("127.0.0.1:{port}");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr, version, sess])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("Reused, "))
}

/// A rustls client offering TLS 1.3 only and trusting the test CA.
pub fn rustls_tls13() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki().join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// gnutls-cli through STARTTLS on the server's plain listener, verifying
/// the test CA, with the handshake done.
pub fn starttls_client(server: &Server, extra: &[&str]) -> TlsClient {
    let port = server.port().to_string();
    let mut args = vec!["--starttls-proto=smtp", "--port", &port];
    args.extend_from_slice(extra);
    args.push("localhost");
    let mut c = TlsClient::gnutls(&args);
    c.wait_line("- Handshake was completed");
    c
}

/// Sends one message through an established SMTP-over-TLS client and
/// returns the 250 reply.
pub fn send_message(c: &mut TlsClient, from: &str, to: &[&str], body: &str) -> String {
    c.command("EHLO client.test", "250");
    c.command(&format!("MAIL FROM:<{from}>"), "250");
    for r in to {
        c.command(&format!("RCPT TO:<{r}>"), "250");
    }
    c.command("DATA", "354");
    c.send(&crlf(body));
    c.send(".\r\n");
    c.expect_reply("250")
}

/// The queue id in a `250 2.0.0 OK id=ID` reply.
pub fn queue_id(reply: &str) -> String {
    assert!(reply.starts_with("250 2.0.0 OK id="), "{reply}");
    reply
        .trim_start_matches("250 2.0.0 OK id=")
        .trim()
        .to_string()
}

/// LF line ends to the CRLF of the wire.
pub fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

/// The body of a stored message file: everything after the trace headers
/// gsmtpd prepended (Return-Path and the folded Received header).
pub fn stored_body(file: &[u8]) -> (String, String) {
    let text = String::from_utf8(file.to_vec()).unwrap();
    assert!(text.starts_with("Return-Path: <"), "{text}");
    let mut lines = text.split_inclusive('\n');
    let mut header = String::new();
    header.push_str(lines.next().unwrap()); // Return-Path
    header.push_str(lines.next().unwrap()); // Received: first line
    let mut rest: Vec<&str> = lines.collect();
    while rest.first().is_some_and(|l| l.starts_with('\t')) {
        header.push_str(rest.remove(0));
    }
    (header, rest.concat())
}

/// Turns on the client (1) and server (2) bits of net.ipv4.tcp_fastopen
/// until the value returned is dropped, which puts the old value back.
pub fn fast_open_on() -> impl Drop {
    const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_fastopen";
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(SYSCTL, self.0.to_string());
        }
    }
    let old: u32 = std::fs::read_to_string(SYSCTL)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::write(SYSCTL, (old | 3).to_string()).unwrap();
    Restore(old)
}

/// A counter of the kernel's TcpExt statistics (/proc/net/netstat).
pub fn tcp_ext(name: &str) -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no TcpExt {name}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}
