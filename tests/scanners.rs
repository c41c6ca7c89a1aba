//! What TLS scanners and administrators testing by hand do to a server:
//! connect and leave right after the handshake, type commands through
//! `openssl s_client -crlf`, offer CBC suites first; and what they read off
//! it afterwards (message ids).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// `openssl s_client -tls1_3 -sess_out F </dev/null` on the implicit-TLS
/// listener or through STARTTLS: the client leaves as soon as its handshake
/// is done. Returns whether F holds a ticket.
fn immediate_close_gets_ticket(server: &Server, starttls: bool, sess: &Path) -> bool {
    let _ = std::fs::remove_file(sess);
    let port = if starttls {
        server.port()
    } else {
        server.tls_port()
    };
    let addr = format!("127.0.0.1:{port}");
    let sess_path = sess.display().to_string();
    let mut args = vec![
        "s_client",
        "-tls1_3",
        "-connect",
        &addr,
        "-sess_out",
        &sess_path,
    ];
    if starttls {
        args.extend(["-starttls", "smtp"]);
    }
    let status = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running openssl s_client");
    assert!(status.success(), "s_client failed");
    let text = Command::new("openssl")
        .args(["sess_id", "-noout", "-text", "-in", &sess_path])
        .output()
        .expect("running openssl sess_id");
    String::from_utf8_lossy(&text.stdout).contains("TLS session ticket:")
}

#[test]
fn clients_that_leave_right_after_the_handshake_still_get_a_ticket() {
    let server = Server::start();
    let sess = scratch_dir("scan").join("s.pem");
    for starttls in [false, true] {
        let got = (0..10)
            .filter(|_| immediate_close_gets_ticket(&server, starttls, &sess))
            .count();
        assert_eq!(got, 10, "starttls={starttls}: {got} of 10 got a ticket");
    }
}

#[test]
fn openssl_crlf_lines_with_a_trailing_cr_are_commands() {
    let server = Server::start();
    // -crlf turns each LF into CRLF, so "EHLO x\r\n" arrives as
    // "EHLO x\r\r\n", as when an administrator pipes printf into it.
    let mut c = openssl_starttls(&server, &["-crlf"]);
    c.send("EHLO x\r\n");
    let hello = c.wait_line("250-");
    assert!(hello.contains(" Hello x [127.0.0.1]"), "{hello}");
    c.expect_reply("250");
    c.send("QUIT\r\n");
    c.expect_reply("221");
}

/// gnutls-cli offering CBC suites before AEAD ones, TLS 1.2 only (TLS 1.3
/// has AEAD suites alone); returns the negotiated description line.
fn cbc_first_client(server: &Server) -> String {
    let port = server.tls_port().to_string();
    let priority = "--priority=NORMAL:-VERS-TLS1.3:-CIPHER-ALL:+AES-128-CBC:+AES-256-CBC:\
                    +AES-256-GCM:+AES-128-GCM:+CHACHA20-POLY1305";
    let mut c = TlsClient::gnutls(&[priority, "--port", &port, "localhost"]);
    let line = c.wait_line("- Description:");
    c.expect_reply("220");
    line
}

#[test]
fn the_server_order_of_suites_wins_over_a_cbc_first_client() {
    let server = Server::start();
    let chosen = cbc_first_client(&server);
    assert!(
        chosen.contains("(TLS1.2") && (chosen.contains("GCM") || chosen.contains("CHACHA20")),
        "default priority: {chosen}"
    );
    // Without %SERVER_PRECEDENCE the client's order decides: the test can
    // tell the two apart.
    let old = Server::with_args(&["--tls-priority", "NORMAL:-VERS-TLS1.0:-VERS-TLS1.1"]);
    let chosen = cbc_first_client(&old);
    assert!(chosen.contains("CBC"), "client precedence: {chosen}");
}

/// The last part of an id such as `1tFz3c-0009Ld-0a`, in base62.
fn counter(id: &str) -> u64 {
    const DIGITS: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    id.rsplit('-')
        .next()
        .unwrap()
        .chars()
        .fold(0, |n, c| n * 62 + DIGITS.find(c).unwrap() as u64)
}

#[test]
fn message_ids_and_maildir_names_count_up_by_one() {
    let server = Server::start();
    let mut c = Plain::greeted(server.plain[0]);
    let mut ids = Vec::new();
    for i in 0..3 {
        c.start_data(&format!("ids@{DOMAIN}"));
        c.send(&format!("Subject: {i}\r\n\r\nbody\r\n.\r\n"));
        ids.push(queue_id(&c.expect("250")));
    }
    c.command("QUIT", "221");
    let counts: Vec<u64> = ids.iter().map(|id| counter(id)).collect();
    assert_eq!(counts[1], counts[0] + 1, "{ids:?}");
    assert_eq!(counts[2], counts[1] + 1, "{ids:?}");
    // Each file is named with its message's own count (`Q<n>`).
    let dir = server.maildir.join(DOMAIN).join("ids").join("new");
    let mut qs: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let q = name.split('Q').nth(1).unwrap().split('.').next().unwrap();
            q.parse().unwrap()
        })
        .collect();
    qs.sort();
    assert_eq!(qs, counts, "{ids:?}");
}

/// With the server's order of groups deciding, a TLS 1.3 client that sent
/// a key share for X25519 only (OpenSSL's default) must not be asked for
/// another one (a HelloRetryRequest costs a round trip).
#[test]
fn an_openssl_client_gets_no_hello_retry_request() {
    let server = Server::start();
    let addr = format!("127.0.0.1:{}", server.tls_port());
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-tls1_3", "-msg", "-connect", &addr])
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let hellos = text
        .lines()
        .filter(|l| l.ends_with(", ClientHello"))
        .count();
    assert_eq!(
        hellos, 1,
        "a second ClientHello (HelloRetryRequest):\n{text}"
    );
    assert!(text.contains("Server Temp Key: X25519"), "{text}");
}
