//! The supervisor and its workers on the wire: every worker serves, a
//! ticket or cached session from any worker resumes on any other, a worker
//! that dies is replaced without touching the others or losing a message
//! (or the connections waiting in its backlog), the server stops cleanly
//! and never outlives its supervisor, and workers forked from one process
//! still draw independent randomness.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

fn with_workers(n: usize, extra: &[&str]) -> Server {
    let mut args = vec!["--workers".to_string(), n.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::with(Options {
        extra: args,
        ..Options::default()
    })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "never: {what}");
        sleep(Duration::from_millis(20));
    }
}

/// The pids named by the log lines that contain `needle`.
fn pids_of(server: &Server, needle: &str) -> HashSet<u32> {
    server
        .log()
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(line_pid)
        .collect()
}

#[test]
fn every_worker_is_a_child_that_holds_only_its_own_descriptors() {
    let server = with_workers(3, &[]);
    let workers = server.wait_workers(3);
    let supervisor = server.child.id();
    // Lines name the process that wrote them.
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("listening on") && line_pid(l) == Some(supervisor)),
        "{log}"
    );
    for &pid in &workers {
        server.wait_log(&format!("] [{supervisor}] worker "));
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        // The supervisor writes the session cache; no worker has it open,
        // so none can wait on it.
        assert!(
            !fds.iter().any(|f| f.contains("sessions.sqlite")),
            "worker {pid}: {fds:?}"
        );
        // Its two listeners and its channel; not the other slots' sockets.
        let sockets = fds.iter().filter(|f| f.starts_with("socket:")).count();
        assert_eq!(sockets, 3, "worker {pid}: {fds:?}");
        // The ticket master's page: locked and out of core dumps.
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        assert!(
            smaps
                .lines()
                .filter(|l| l.starts_with("VmFlags:"))
                .any(|l| l.contains(" lo") && l.contains(" dd")),
            "worker {pid} has no locked, undumpable page"
        );
    }
}

fn s_client(server: &Server, version: &str, sess: (&str, &str)) -> bool {
    s_client_resumed(server.tls_port(), version, sess.0, Path::new(sess.1))
}

#[test]
fn one_ticket_resumes_on_every_worker() {
    let server = with_workers(4, &[]);
    server.wait_workers(4);
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = scratch_dir("ticket").join("s.pem");
        let sess = sess.to_str().unwrap();
        assert!(!s_client(&server, version, ("-sess_out", sess)));
        for i in 0..24 {
            assert!(
                s_client(&server, version, ("-sess_in", sess)),
                "{version}: resumption {i} did not resume:\n{}",
                server.log()
            );
        }
    }
    // 48 resumed handshakes, spread by the kernel over the workers.
    let served = pids_of(&server, "resumption=0x17(");
    let served12 = pids_of(&server, "X=TLS1.2:");
    assert!(served.len() >= 2, "TLS 1.3 resumed on {served:?} only");
    assert!(served12.len() >= 2, "TLS 1.2 served by {served12:?} only");
}

#[test]
fn a_session_cached_by_one_worker_resumes_on_the_others() {
    let server = with_workers(4, &[]);
    server.wait_workers(4);
    let port = server.tls_port().to_string();
    for i in 0..12 {
        // A full handshake, then a resumption by session ID (no tickets).
        let out = Command::new("gnutls-cli")
            .args([
                "--x509cafile",
                &pki_file("ca.pem"),
                "--priority",
                "NORMAL:-VERS-TLS1.3:%NO_TICKETS",
                "--resume",
                "--port",
                &port,
                "localhost",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("*** This is a resumed session"),
            "attempt {i} did not resume:\n{text}\n{}",
            server.log()
        );
    }
    // Somewhere a session was resumed by another worker than the one that
    // cached it: the resumed lines' pids are not all the full lines' own.
    let full = pids_of(&server, "resumption=0x01(supported)");
    let resumed = pids_of(&server, "resumption=0x15(");
    assert!(full.len() + resumed.len() > 2, "{full:?} {resumed:?}");
}

#[test]
fn a_killed_worker_is_replaced_and_the_others_go_on() {
    let server = with_workers(2, &[]);
    let workers = server.wait_workers(2);
    // Idle connections on both workers, and one acknowledged message. The
    // kernel picks a slot's socket by a hash of the client's port, so a
    // fixed number of connections can all land on one (1 in 128 for 8):
    // connect until both hold some.
    let victim = workers[0];
    let survivor = workers[1];
    let mut conns: Vec<(u32, Plain)> = Vec::new();
    while !workers.iter().all(|w| conns.iter().any(|(c, _)| c == w)) {
        assert!(conns.len() < 64, "64 connections all on one worker");
        let c = Plain::greeted(server.plain[0]);
        let port = c.stream.local_addr().unwrap().port();
        conns.push((server.worker_of(port), c));
    }
    let (_, sender) = conns.iter_mut().find(|(w, _)| *w == survivor).unwrap();
    sender.start_data(&format!("kept@{DOMAIN}"));
    sender.send("Subject: before\r\n\r\nacknowledged\r\n.\r\n");
    sender.expect("250 2.0.0");

    signal(victim, "KILL");
    let killed = Instant::now();
    server.wait_log(&format!(
        "(pid {victim}) was killed by SIGKILL; replacing it"
    ));
    let after = server.wait_workers(2);
    assert!(!after.contains(&victim) && after.contains(&survivor));
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "replaced too late"
    );
    let replacement = after.iter().find(|&&p| p != survivor).unwrap();
    server.wait_log(&format!("started (pid {replacement})"));

    for (worker, c) in &mut conns {
        if *worker == survivor {
            c.command("NOOP", "250");
        } else {
            assert!(
                c.closed(),
                "a connection of the killed worker is still open"
            );
        }
    }
    let mut fresh = Plain::greeted(server.plain[0]);
    fresh.start_data(&format!("kept@{DOMAIN}"));
    fresh.send("Subject: after\r\n\r\nnew\r\n.\r\n");
    fresh.expect("250 2.0.0");
    assert_eq!(server.mailbox("kept").len(), 2);
}

/// Clients waiting in a dead worker's backlog are served by its
/// replacement: the supervisor holds the slot's socket meanwhile.
#[test]
fn the_backlog_of_a_killed_worker_waits_for_its_replacement() {
    let server = with_workers(2, &["--max-per-ip", "100"]);
    let workers = server.wait_workers(2);
    for &w in &workers {
        signal(w, "STOP");
    }
    // The kernel spreads these over both slots' sockets, where they wait
    // (by a hash: 32 leave one slot empty once in 2^31 runs).
    let mut waiting: Vec<Plain> = (0..32).map(|_| Plain::connect(server.plain[0])).collect();
    // SIGKILL ends a stopped process too.
    signal(workers[0], "KILL");
    signal(workers[1], "CONT");
    for c in &mut waiting {
        c.expect("220");
        c.command("EHLO client.test", "250");
    }
    let served: HashSet<u32> = waiting
        .iter()
        .map(|c| server.worker_of(c.stream.local_addr().unwrap().port()))
        .collect();
    assert!(
        !served.contains(&workers[0]),
        "the killed worker served someone"
    );
    assert_eq!(
        served.len(),
        2,
        "the replacement took its backlog: {served:?}"
    );
}

#[test]
fn a_crash_loop_backs_off() {
    // A maildir that exists at start and is then replaced by a file: every
    // new worker fails to open it and exits at once.
    let state = scratch_dir("crash");
    let server = Server::with(Options {
        state: Some(state.clone()),
        extra: vec!["--workers".into(), "1".into()],
        ..Options::default()
    });
    let first = server.wait_workers(1)[0];
    let maildir = state.join("mail");
    std::fs::remove_dir_all(&maildir).unwrap();
    std::fs::write(&maildir, "not a directory").unwrap();
    signal(first, "KILL");
    wait_until("three restarts", || {
        server.log().matches("keeps dying: replacing it in").count() >= 3
    });
    let log = server.log();
    let pauses: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            l.split("replacing it in ")
                .nth(1)?
                .strip_suffix(" ms")?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(&pauses[..3], [250, 500, 1000], "{log}");
}

#[test]
fn sigterm_stops_every_worker_then_the_supervisor_exits_0() {
    let mut server = with_workers(3, &[]);
    let workers = server.wait_workers(3);
    server.signal("TERM");
    assert_eq!(server.wait_exit(WAIT), Some(0));
    for pid in workers {
        assert!(is_zombie(pid) || !std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    assert_eq!(pids_of(&server, "all connections closed; exiting").len(), 3);
}

#[test]
fn no_worker_outlives_a_killed_supervisor() {
    let mut server = with_workers(2, &[]);
    let workers = server.wait_workers(2);
    let _idle = Plain::greeted(server.plain[0]);
    server.signal("KILL");
    assert!(server.wait_exit(WAIT).is_none(), "killed, no exit status");
    let start = Instant::now();
    for pid in workers {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "worker {pid} outlived its supervisor"
            );
            sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn sighup_reaches_every_worker() {
    let server = with_workers(3, &[]);
    let workers = server.wait_workers(3);
    server.signal("HUP");
    wait_until("every worker reloads", || {
        pids_of(&server, "SIGHUP received: reloading certificates").len() == 3
    });
    let reloaded = pids_of(&server, "SIGHUP received: reloading certificates");
    assert_eq!(reloaded, workers.into_iter().collect());
}

#[test]
fn systemd_is_told_when_every_worker_listens_and_when_stopping() {
    let dir = scratch_dir("notify");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut server = Server::with(Options {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        extra: vec!["--workers".into(), "2".into()],
        ..Options::default()
    });
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        server.log().contains("listening on"),
        "READY before listening"
    );
    server.signal("TERM");
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(server.wait_exit(WAIT), Some(0));
}

/// Sends a ClientHello and returns the ServerHello's random and the
/// client's port.
fn server_random(addr: SocketAddr, config: &Arc<ClientConfig>) -> ([u8; 32], u16) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(Arc::clone(config), name).unwrap();
    tls.write_tls(&mut sock).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Record header (5), handshake header (4), version (2), then random.
    while got.len() < 43 {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the ServerHello");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!((got[0], got[5]), (22, 2), "not a ServerHello");
    let port = sock.local_addr().unwrap().port();
    let _ = sock.write_all(&[21, 3, 3, 0, 2, 2, 0]); // a fatal alert, then gone
    (got[11..43].try_into().unwrap(), port)
}

/// Workers forked from one process start with copies of one GnuTLS random
/// state; GnuTLS must notice the fork and reseed each, or two workers
/// would send the same server randoms (and key shares).
#[test]
fn workers_draw_independent_randomness() {
    let server = with_workers(4, &[]);
    server.wait_workers(4);
    let config = rustls_tls13();
    let mut by_worker: HashMap<u32, Vec<[u8; 32]>> = HashMap::new();
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let (random, port) = server_random(server.tls[0], &config);
        assert!(
            seen.insert(random),
            "a server random repeated: {random:02x?}"
        );
        by_worker
            .entry(server.worker_of(port))
            .or_default()
            .push(random);
    }
    assert!(by_worker.len() >= 2, "one worker served all: {by_worker:?}");
}

#[test]
fn tcp_fast_open_data_in_the_syn_is_answered() {
    // The server bit (2) of net.ipv4.tcp_fastopen lets the kernel accept
    // data in a SYN; the client bit (1) lets us send it.
    let _fast_open = fast_open_on();

    let server = with_workers(2, &[]);
    let addr = server.plain[0];
    let passive = || tcp_ext("TCPFastOpenPassive");
    let fast_open = |data: &[u8]| -> String {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        // Connects and sends in the SYN when the kernel holds a cookie for
        // the server (else it sends the SYN alone and the data after).
        sock.send_to_with_flags(data, &addr.into(), libc::MSG_FASTOPEN)
            .unwrap();
        let mut stream: TcpStream = sock.into();
        let mut reply = String::new();
        let mut buf = [0u8; 4096];
        while !reply.contains("250 HELP") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed: {reply}");
            reply.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        reply
    };
    // The first connection fetches a cookie; later ones use it.
    let before = passive();
    for _ in 0..3 {
        let reply = fast_open(b"EHLO client.test\r\n");
        // Early pipelining: banner and EHLO reply, in that order.
        assert!(
            reply.starts_with("220 mx.test ESMTP gsmtpd\r\n250-mx.test"),
            "{reply}"
        );
    }
    assert!(
        passive() > before,
        "no connection's data came in its SYN (TcpExt TCPFastOpenPassive)"
    );
}
