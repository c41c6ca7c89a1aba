//! The floor any GnuTLS server pays: server and client sessions, both
//! GnuTLS through gsmtpd's own wrappers, paired in one process over memory
//! (no sockets, no event loop, no SMTP). Reports the server-side time per
//! handshake for TLS 1.3 full/resumed and TLS 1.2 full/ticket/session-ID,
//! with the ECDSA P-256 and RSA-2048 certificates of scripts/make-test-pki.
//! TLS 1.2 sessions are cached in memory, as a worker holds the one the
//! supervisor found before the handshake begins (the SQLite cache is the
//! supervisor's work, off the handshake's path).
//! Single-threaded, so on an otherwise idle core the time is CPU time. On a
//! shared machine a handshake now and then loses the core for a while: the
//! figure is therefore the median of the handshakes' server times (the mean
//! is in the JSON too).
//!
//! cargo bench --bench limit -- --pki DIR [--count N] [--json FILE]
//!
//! The other half of the floor is the connection itself: with `--tcp-sink
//! ADDR` (a loopback address), this binary is instead a bare TCP server
//! that runs until it is killed: one thread, blocking, that accepts a
//! connection, reads until EOF, closes it and accepts the next. Driven by
//! `loadgen --mode tcp --server-pid` like the real servers, its CPU per
//! connection is what the kernel and a server that does nothing else spend
//! on a loopback connection that ends the way the benchmark's TLS
//! connections do (the client half-closes, the server closes).
//!
//! cargo bench --bench limit -- --tcp-sink 127.0.0.1:PORT

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::{Duration, Instant};

use gsmtpd::tls::client_hello::{self, Parse};
use gsmtpd::tls::session_db::{CacheOp, SessionDb};
use gsmtpd::tls::ticket_keys::MasterKey;
use gsmtpd::tls::{
    ClientSession, ClientSetup, Credentials, Priority, ServerSession, SessionSetup, pair,
};

struct Mode {
    name: &'static str,
    priority: &'static str,
    resume: bool,
}

const MODES: [Mode; 5] = [
    Mode {
        name: "tls1.3 full",
        priority: "NORMAL:-VERS-ALL:+VERS-TLS1.3",
        resume: false,
    },
    Mode {
        name: "tls1.3 resumed",
        priority: "NORMAL:-VERS-ALL:+VERS-TLS1.3",
        resume: true,
    },
    Mode {
        name: "tls1.2 full",
        priority: "NORMAL:-VERS-ALL:+VERS-TLS1.2",
        resume: false,
    },
    Mode {
        name: "tls1.2 ticket",
        priority: "NORMAL:-VERS-ALL:+VERS-TLS1.2",
        resume: true,
    },
    Mode {
        name: "tls1.2 session-id",
        priority: "NORMAL:-VERS-ALL:+VERS-TLS1.2:%NO_TICKETS",
        resume: true,
    },
];

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(addr) = arg("--tcp-sink") {
        let e = tcp_sink(&addr);
        eprintln!("limit: --tcp-sink {addr}: {e}");
        std::process::exit(1);
    }
    let Some(pki) = arg("--pki") else {
        println!(
            "limit: give --pki DIR (made by scripts/make-test-pki) or --tcp-sink ADDR to run; \
             nothing to do"
        );
        return;
    };
    let count: u32 = arg("--count").and_then(|c| c.parse().ok()).unwrap_or(400);
    if let Err(e) = run(&pki, count, arg("--json")) {
        eprintln!("limit: {e}");
        std::process::exit(1);
    }
}

fn run(pki: &str, count: u32, json: Option<String>) -> Result<(), String> {
    gsmtpd::tls::init().map_err(|e| e.to_string())?;
    let key = MasterKey::generate().map_err(|e| e.to_string())?;
    let client_creds = Rc::new(Credentials::new().map_err(|e| e.to_string())?);

    println!(
        "GnuTLS {} in-process limit: server time per handshake (median of {count})",
        gsmtpd::tls::runtime_version()
    );
    println!(
        "{:<8} {:<18} {:>12} {:>10}",
        "cert", "mode", "server µs", "resumed"
    );
    let mut rows = Vec::new();
    for cert in ["ecdsa", "rsa"] {
        let read = |f: String| std::fs::read(&f).map_err(|e| format!("{f}: {e}"));
        let mut creds = Credentials::new().map_err(|e| e.to_string())?;
        creds
            .add_pem(
                &read(format!("{pki}/{cert}.pem"))?,
                &read(format!("{pki}/{cert}-key.pem"))?,
            )
            .map_err(|e| e.to_string())?;
        let server_creds = Rc::new(creds);
        for mode in &MODES {
            let prio = Rc::new(Priority::new(mode.priority).map_err(|e| e.to_string())?);
            let server = Server {
                credentials: &server_creds,
                priority: &prio,
                key: &key,
                cache: RefCell::default(),
                ops: Rc::default(),
            };
            let m = measure(&server, &client_creds, &prio, mode.resume, count)?;
            let (us, mean_us) = (m.median.as_secs_f64() * 1e6, m.mean.as_secs_f64() * 1e6);
            println!(
                "{cert:<8} {:<18} {us:>12.0} {:>9.1}%",
                mode.name, m.resumed_pct
            );
            rows.push(format!(
                "{{\"cert\":\"{cert}\",\"mode\":\"{}\",\"server_us\":{us:.1},\
                 \"server_us_mean\":{mean_us:.1},\"handshakes\":{},\"resumed_pct\":{:.1}}}",
                mode.name, m.count, m.resumed_pct
            ));
        }
    }
    if let Some(path) = json {
        std::fs::write(&path, format!("[{}]\n", rows.join(",")))
            .map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

struct Measured {
    /// Median and mean server time per handshake.
    median: Duration,
    mean: Duration,
    count: usize,
    /// Share of the handshakes the server reports as resumed.
    resumed_pct: f64,
}

/// What each server session is made from, and the TLS 1.2 session cache.
struct Server<'a> {
    credentials: &'a Rc<Credentials>,
    priority: &'a Rc<Priority>,
    key: &'a MasterKey,
    cache: RefCell<HashMap<Vec<u8>, Vec<u8>>>,
    ops: Rc<RefCell<Vec<CacheOp>>>,
}

impl Server<'_> {
    /// A session for the client whose ClientHello is queued in `client`,
    /// handed the cached session it names, as a worker's would be.
    fn session(&self, client: &mut ClientSession) -> Result<ServerSession, String> {
        client.handshake().map_err(|e| e.to_string())?;
        let found = match client_hello::parse(client.pending_output()) {
            Parse::Complete(hello) => self
                .cache
                .borrow()
                .get(&hello.session_id)
                .map(|data| (hello.session_id.clone(), data.clone())),
            _ => None,
        };
        ServerSession::new(SessionSetup {
            credentials: self.credentials,
            priority: self.priority,
            ticket_key: Some(self.key),
            no_new_tickets: false,
            cache: Some(SessionDb {
                found,
                ops: Rc::clone(&self.ops),
            }),
            lifetime: 3600,
        })
        .map_err(|e| e.to_string())
    }

    /// What the session stored, into the cache (the supervisor's part).
    fn apply_ops(&self) {
        for op in self.ops.borrow_mut().drain(..) {
            match op {
                CacheOp::Store { id, data } => self.cache.borrow_mut().insert(id, data),
                CacheOp::Remove { id } => self.cache.borrow_mut().remove(&id),
            };
        }
    }
}

/// Server time per handshake, after a few warm-up ones.
fn measure(
    setup: &Server<'_>,
    client_creds: &Rc<Credentials>,
    prio: &Rc<Priority>,
    resume: bool,
    count: u32,
) -> Result<Measured, String> {
    let mut data: Option<Vec<u8>> = None;
    let mut times = Vec::with_capacity(count as usize);
    let mut resumed = 0u32;
    let warmup = 10;
    let started = Instant::now();
    for i in 0..count + warmup {
        let offer = if resume { data.as_deref() } else { None };
        let mut client = ClientSession::new(ClientSetup {
            credentials: client_creds,
            priority: prio,
            server_name: Some("localhost"),
            verify_name: None,
            ocsp: false,
            resume: offer,
            tickets: true,
        })
        .map_err(|e| e.to_string())?;
        let mut server = setup.session(&mut client)?;
        let t = pair::handshake(&mut client, &mut server).map_err(|e| e.to_string())?;
        setup.apply_ops();
        if resume && data.is_none() {
            data = Some(client.session_data().map_err(|e| e.to_string())?);
        }
        if i >= warmup {
            times.push(t);
            resumed += u32::from(server.negotiated().resumed);
        }
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    if times.is_empty() {
        return Err("no handshake finished within 60 s".into());
    }
    let n = times.len();
    let mean = times.iter().sum::<Duration>() / u32::try_from(n).unwrap_or(u32::MAX);
    times.sort_unstable();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2
    };
    Ok(Measured {
        median,
        mean,
        count: n,
        resumed_pct: f64::from(resumed) * 100.0 / n as f64,
    })
}

/// Serves bare TCP connections on `addr` one at a time, forever: accept,
/// read until EOF, close. Returns only the error that stops it.
fn tcp_sink(addr: &str) -> String {
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => return format!("not an IP:PORT ({e})"),
    };
    if !addr.ip().is_loopback() {
        return "not a loopback address".into();
    }
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => return e.to_string(),
    };
    println!("limit: TCP sink listening on {addr}");
    let mut buf = [0u8; 4096];
    loop {
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            // The client may have gone already, or the process is short of
            // descriptors for a moment: the next one is served anyway.
            Err(e) if e.kind() != ErrorKind::InvalidInput => continue,
            Err(e) => return e.to_string(),
        };
        // No timeout, which would cost a system call per connection: a
        // client that never half-closes holds the sink up, and the load
        // generator's own timeouts report it.
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}
