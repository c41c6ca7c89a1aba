//! Whole messages over real TLS clients: STARTTLS and implicit TLS, TLS 1.2
//! and 1.3, stored byte for byte in the Maildir.

mod common;

use std::time::Duration;

use common::*;

const TLS13: &str = "--priority=NORMAL:-VERS-ALL:+VERS-TLS1.3";
const TLS12: &str = "--priority=NORMAL:-VERS-ALL:+VERS-TLS1.2";

/// Dot-stuffed on the wire by us (the "..": a client must double a leading
/// dot); the store keeps one, with LF line ends.
const WIRE_BODY: &str = "From: a@client.test\nTo: bob@example.org\nSubject: hello\n\nfirst line\n..leading dot\n\
                         8bit: \u{e9}t\u{e9}\n\nlast line\n";
const STORED_BODY: &str = "From: a@client.test\nTo: bob@example.org\nSubject: hello\n\nfirst line\n.leading dot\n\
                           8bit: \u{e9}t\u{e9}\n\nlast line\n";

fn deliver_and_check(server: &Server, mut client: TlsClient, version: &str) {
    let reply = send_message(
        &mut client,
        "a@client.test",
        &["bob@example.org"],
        WIRE_BODY,
    );
    assert!(reply.starts_with("250 2.0.0 OK id="), "{reply}");
    let id = queue_id(&reply);
    client.command("QUIT", "221");
    client.finish();

    let files = server.mailbox("bob");
    assert_eq!(files.len(), 1);
    let (header, body) = stored_body(&files[0]);
    assert_eq!(body, STORED_BODY, "stored body differs");
    assert!(
        header.starts_with(
            "Return-Path: <a@client.test>\nReceived: from client.test ([127.0.0.1])\n"
        ),
        "{header}"
    );
    assert!(
        header.contains(&format!("(using {version} with cipher ")),
        "{header}"
    );
    assert!(header.contains(&format!("\tid {id}\n")), "{header}");
    let line = server.arrival_line(&id);
    assert!(
        line.contains("<= a@client.test H=(client.test) [127.0.0.1]:"),
        "{line}"
    );
    assert!(line.contains(" P=esmtps X="), "{line}");
    assert!(line.contains(&format!("X={version}:")), "{line}");
    assert!(!line.contains("* S="), "not resumed: {line}");
    assert!(
        line.contains(&format!(
            " S={} ",
            WIRE_BODY.len() - 1 + WIRE_BODY.lines().count()
        )),
        "{line}"
    );
}

fn starttls(server: &Server, priority: &str) -> TlsClient {
    starttls_client(server, &[priority])
}

fn implicit(server: &Server, priority: &str) -> TlsClient {
    let port = server.tls_port().to_string();
    let mut c = TlsClient::gnutls(&["--port", &port, priority, "localhost"]);
    c.wait_line("- Handshake was completed");
    c.expect_reply("220");
    c
}

#[test]
fn starttls_tls13_message_stored_byte_for_byte() {
    let server = Server::start();
    let c = starttls(&server, TLS13);
    deliver_and_check(&server, c, "TLS1.3");
}

#[test]
fn starttls_tls12_message_stored_byte_for_byte() {
    let server = Server::start();
    let c = starttls(&server, TLS12);
    deliver_and_check(&server, c, "TLS1.2");
}

#[test]
fn implicit_tls13_message_stored_byte_for_byte() {
    let server = Server::start();
    let c = implicit(&server, TLS13);
    deliver_and_check(&server, c, "TLS1.3");
}

#[test]
fn implicit_tls12_message_stored_byte_for_byte() {
    let server = Server::start();
    let c = implicit(&server, TLS12);
    deliver_and_check(&server, c, "TLS1.2");
}

#[test]
fn starttls_offered_only_before_tls_and_never_on_implicit_listener() {
    let server = Server::start();
    let mut plain = Plain::connect(server.plain[0]);
    plain.expect("220 mx.test ESMTP gsmtpd");
    let ehlo = plain.command("EHLO client.test", "250");
    for ext in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "SMTPUTF8",
        "STARTTLS",
    ] {
        assert!(
            ehlo.contains(&format!("250-{ext}\r\n")) || ehlo.contains(&format!("250 {ext}\r\n")),
            "{ext}: {ehlo}"
        );
    }
    plain.command("STARTTLS now", "501");

    let mut c = starttls(&server, TLS13);
    let ehlo = c.command("EHLO client.test", "250");
    assert!(!c.transcript().contains("250-STARTTLS\n250 HELP"), "{ehlo}");
    c.command("STARTTLS", "503");
    c.command("QUIT", "221");
    let transcript = c.finish();
    let after_tls = transcript
        .split("- Handshake was completed")
        .nth(1)
        .unwrap();
    assert!(!after_tls.contains("STARTTLS"), "{after_tls}");

    let mut c = implicit(&server, TLS13);
    c.command("EHLO client.test", "250");
    c.command("STARTTLS", "503");
    let transcript = c.finish();
    assert!(!transcript.contains("250-STARTTLS"), "{transcript}");
}

/// gnutls-cli --starttls stays in clear text until SIGALRM, so the test can
/// pipeline a command behind STARTTLS in one write, as an attacker in the
/// middle would (the STARTTLS command-injection class, CVE-2011-0411).
#[test]
fn bytes_pipelined_after_starttls_are_discarded() {
    let server = Server::start();
    let port = server.port().to_string();
    let mut c = TlsClient::gnutls(&["--starttls", "--port", &port, TLS13, "localhost"]);
    c.expect_reply("220");
    c.command("EHLO client.test", "250");
    c.send("STARTTLS\r\nRSET\r\nMAIL FROM:<evil@attacker.test>\r\n");
    c.expect_reply("220");
    assert!(
        std::process::Command::new("kill")
            .args(["-ALRM", &c.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    c.wait_line("- Options:");
    // Nothing may answer the injected RSET/MAIL inside TLS.
    assert_eq!(
        c.next_reply(Duration::from_millis(700)),
        None,
        "{}",
        c.transcript()
    );
    // And the session starts from scratch: MAIL needs a new EHLO.
    c.command("MAIL FROM:<a@client.test>", "503");
    c.command("EHLO client.test", "250");
    c.command("MAIL FROM:<a@client.test>", "250");
    c.command("QUIT", "221");
    c.finish();
    server.wait_log("discarded");
}

#[test]
fn openssl_s_client_starttls_delivers() {
    let server = Server::start();
    let mut c = openssl_starttls(&server, &["-verify_return_error"]);
    c.wait_line("verify return:1");
    send_message(&mut c, "", &["carol@example.org"], "Subject: s\n\nx\n");
    c.command("QUIT", "221");
    c.finish();
    assert_eq!(server.mailbox("carol").len(), 1);
    let (header, _) = stored_body(&server.mailbox("carol")[0]);
    assert!(header.starts_with("Return-Path: <>\n"), "{header}");
}

/// A broken ClientHello gets a fatal TLS alert (decode_error) before the
/// close, not a silent reset.
#[test]
fn a_malformed_client_hello_gets_a_fatal_alert() {
    use std::io::{Read, Write};
    let server = Server::start();
    let mut s = std::net::TcpStream::connect(server.tls[0]).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
        .unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"\x15\x03\x03\x00\x02\x02\x32",
        "alert record: fatal decode_error"
    );
    server.wait_log("closed: TLS handshake");
}

#[test]
fn a_client_ending_tls_without_quit_is_logged_as_such() {
    let server = Server::start();
    let mut c = implicit(&server, TLS13);
    c.command("EHLO client.test", "250");
    // gnutls-cli answers the end of its input with close_notify.
    c.finish();
    server.wait_log("closed by the client's TLS close_notify");
}
