//! Early pipelining (PIPECONNECT) and SMTP synchronisation on the wire:
//! raw sockets for cleartext, rustls for commands sent right behind the TLS
//! handshake (after STARTTLS and on the implicit-TLS listener).
//!
//! To send "before the banner" deterministically the tests stop the server
//! (SIGSTOP), connect and write while the kernel holds the connection in the
//! backlog, then let the server go on (SIGCONT).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use rustls::ClientConnection;
use rustls::pki_types::ServerName;

const EARLY: &str =
    "EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<ivy@example.org>\r\nDATA\r\n";

/// Connects and writes `early` while the server is stopped.
fn early_talker(server: &Server, addr: SocketAddr, early: &[u8]) -> TcpStream {
    server.signal_all("STOP");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(early).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    server.signal_all("CONT");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn read_once(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn codes(replies: &str) -> Vec<&str> {
    replies
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect()
}

fn finish_message(s: &mut TcpStream) {
    s.write_all(b"Subject: early\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        .unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(
        rest.starts_with("250 2.0.0 OK id=") && rest.contains("221 "),
        "{rest}"
    );
}

fn arrival_line(server: &Server) -> String {
    let log = server.wait_log("<= ");
    log.lines().find(|l| l.contains("<= ")).unwrap().to_string()
}

#[test]
fn early_talker_gets_banner_and_replies_in_one_write_and_is_logged_l_star() {
    let server = Server::start();
    let mut s = early_talker(&server, server.plain[0], EARLY.as_bytes());
    let replies = read_once(&mut s);
    assert!(
        replies.starts_with("220 mx.test ESMTP gsmtpd\r\n"),
        "{replies}"
    );
    assert!(replies.contains("250-PIPECONNECT\r\n"), "{replies}");
    assert_eq!(
        codes(&replies),
        ["220", "250", "250", "250", "354"],
        "one read: {replies}"
    );
    finish_message(&mut s);
    assert_eq!(server.mailbox("ivy").len(), 1);
    assert!(
        arrival_line(&server).contains(" L* for ivy@example.org"),
        "{}",
        server.log()
    );
}

#[test]
fn advertised_but_unused_is_logged_l_dot_and_not_advertised_has_no_l() {
    let server = Server::start();
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    assert!(
        c.command("EHLO client.test", "250")
            .contains("250-PIPECONNECT\r\n")
    );
    c.start_data("jay@example.org");
    c.send("Subject: x\r\n\r\nx\r\n.\r\n");
    c.expect("250");
    assert!(
        arrival_line(&server).contains(" L. for jay@example.org"),
        "{}",
        server.log()
    );

    let server = Server::with_args(&["--pipe-connect-hosts", "192.0.2.0/24"]);
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    assert!(!c.command("EHLO client.test", "250").contains("PIPECONNECT"));
    c.start_data("jay@example.org");
    c.send("Subject: x\r\n\r\nx\r\n.\r\n");
    c.expect("250");
    let line = arrival_line(&server);
    assert!(!line.contains(" L*") && !line.contains(" L."), "{line}");
}

#[test]
fn early_talker_not_permitted_gets_554_and_is_closed() {
    let server = Server::with_args(&["--pipe-connect-hosts", ""]);
    let mut s = early_talker(&server, server.plain[0], EARLY.as_bytes());
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(all, "554 5.5.0 SMTP synchronization error\r\n");
    server.wait_log("before the banner");
    assert!(server.mailbox("ivy").is_empty());
}

#[test]
fn pipelining_past_ehlo_without_pipeconnect_is_a_synchronisation_error() {
    let server = Server::with_args(&["--pipe-connect-hosts", ""]);
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    c.send("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n");
    c.expect("554 5.5.0");
    assert!(c.closed());
    // HELO: no PIPELINING, so every command is a synchronisation point.
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    c.command("HELO client.test", "250");
    c.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<ivy@example.org>\r\n");
    c.expect("554 5.5.0");
    assert!(c.closed());
}

/// Runs the TLS handshake with `early` queued as application data, so
/// rustls sends it in the same flight as its Finished, before it has seen
/// any reply. Returns the plaintext of the first TLS read that has any.
fn tls_early(mut sock: TcpStream, early: &str) -> (ClientConnection, TcpStream, String) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(rustls_tls13(), name).unwrap();
    tls.writer().write_all(early.as_bytes()).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut sock).unwrap();
    }
    while tls.wants_write() {
        tls.write_tls(&mut sock).unwrap();
    }
    let text = tls_read(&mut tls, &mut sock);
    (tls, sock, text)
}

/// One socket read, decrypted (after tickets, which carry no plaintext).
fn tls_read(tls: &mut ClientConnection, sock: &mut TcpStream) -> String {
    let mut text = String::new();
    loop {
        // Plaintext may already be waiting from an earlier complete_io.
        let _ = tls.reader().read_to_string(&mut text);
        if !text.is_empty() {
            return text;
        }
        tls.read_tls(sock).unwrap();
        tls.process_new_packets().unwrap();
    }
}

#[test]
fn early_pipelining_right_behind_the_starttls_handshake() {
    let server = Server::start();
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    c.command("EHLO client.test", "250");
    c.command("STARTTLS", "220");
    let (mut tls, mut sock, replies) = tls_early(c.stream.try_clone().unwrap(), EARLY);
    assert_eq!(
        codes(&replies),
        ["250", "250", "250", "354"],
        "one read: {replies}"
    );
    assert!(!replies.contains("STARTTLS"), "{replies}");
    tls.writer()
        .write_all(b"Subject: tls\r\n\r\nhi\r\n.\r\n")
        .unwrap();
    tls.complete_io(&mut sock).unwrap();
    assert!(tls_read(&mut tls, &mut sock).starts_with("250 2.0.0 OK"));
    assert!(
        arrival_line(&server).contains(" P=esmtps X=TLS1.3:"),
        "{}",
        server.log()
    );
    assert!(
        arrival_line(&server).contains(" L* for ivy@example.org"),
        "{}",
        server.log()
    );
}

#[test]
fn early_pipelining_on_the_implicit_tls_listener() {
    let server = Server::start();
    let sock = TcpStream::connect(server.tls[0]).unwrap();
    let (_tls, _sock, replies) = tls_early(sock, EARLY);
    assert!(
        replies.starts_with("220 mx.test ESMTP gsmtpd\r\n"),
        "{replies}"
    );
    assert_eq!(
        codes(&replies),
        ["220", "250", "250", "250", "354"],
        "one read: {replies}"
    );

    let server = Server::with_args(&["--pipe-connect-hosts", ""]);
    let sock = TcpStream::connect(server.tls[0]).unwrap();
    let (_tls, _sock, replies) = tls_early(sock, EARLY);
    assert_eq!(replies, "554 5.5.0 SMTP synchronization error\r\n");
}

/// More injected bytes than one socket read takes: the state machine drops
/// the rest of its batch, and the connection drains the socket before the
/// 220 goes out, so none of it reaches the TLS handshake or SMTP.
#[test]
fn a_large_injection_after_starttls_is_drained_before_tls_starts() {
    let server = Server::start();
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    c.command("EHLO client.test", "250");
    let mut injected = b"STARTTLS\r\n".to_vec();
    injected.extend(b"NOOP\r\n".repeat(6000));
    server.signal_all("STOP");
    c.stream.write_all(&injected).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    server.signal_all("CONT");
    c.expect("220 2.0.0");
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(rustls_tls13(), name).unwrap();
    let mut sock = c.stream.try_clone().unwrap();
    tls.writer().write_all(b"EHLO client.test\r\n").unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut sock).unwrap();
    }
    tls.complete_io(&mut sock).unwrap();
    let reply = tls_read(&mut tls, &mut sock);
    assert!(
        reply.starts_with("250-mx.test Hello"),
        "no reply to any injected NOOP first: {reply}"
    );
    let log = server.log();
    let discarded: usize = log
        .lines()
        .filter_map(|l| {
            l.split("discarded ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(discarded, injected.len() - b"STARTTLS\r\n".len(), "{log}");
}

const BDAT_THEN_QUIT: &str = "MAIL FROM:<a@client.test>\r\nRCPT TO:<una@example.org>\r\n\
     BDAT 21 LAST\r\nSubject: end\r\n\r\nbye\r\nQUIT\r\n";

/// Exim ends a connection by pipelining its end of data and QUIT and then
/// closing its sending side (TLS close_notify; FIN in cleartext) before it
/// reads the replies: the message's 250 and the 221 must still come, and
/// the message be stored once.
#[test]
fn end_of_data_quit_and_close_in_one_flight_are_all_answered() {
    // TLS: the implicit-TLS listener, close_notify right behind QUIT.
    let server = Server::start();
    let sock = TcpStream::connect(server.tls[0]).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let (mut tls, mut sock, banner) = tls_early(sock, "EHLO client.test\r\n");
    assert!(banner.starts_with("220 "), "{banner}");
    let mut replies = banner;
    while !replies.contains("250 HELP") {
        replies += &tls_read(&mut tls, &mut sock);
    }
    tls.writer().write_all(BDAT_THEN_QUIT.as_bytes()).unwrap();
    tls.send_close_notify();
    let mut flight = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut flight).unwrap();
    }
    sock.write_all(&flight).unwrap();
    let mut replies = String::new();
    loop {
        let _ = tls.reader().read_to_string(&mut replies);
        if replies.contains("221 ") || tls.read_tls(&mut sock).unwrap() == 0 {
            break;
        }
        tls.process_new_packets().unwrap();
    }
    assert_eq!(codes(&replies), ["250", "250", "250", "221"], "{replies}");
    assert_eq!(server.mailbox("una").len(), 1);
    server.wait_log("closed by QUIT");

    // Cleartext: FIN right behind QUIT.
    let mut c = Plain::greeted(server.plain[0]);
    c.stream.write_all(BDAT_THEN_QUIT.as_bytes()).unwrap();
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut all = String::new();
    c.stream.read_to_string(&mut all).unwrap();
    assert_eq!(codes(&all), ["250", "250", "250", "221"], "{all}");
    assert_eq!(server.mailbox("una").len(), 2);
}
