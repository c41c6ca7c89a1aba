//! Mail for other domains: accepted only from `--relay-from` clients,
//! durable in the queue before its 250, and sent onward.

mod common;

use std::fs;

use common::*;

/// A relay whose lookups go nowhere (nothing answers on port 9), so a
/// queued message stays in the queue to be looked at.
fn relay_server() -> Server {
    Server::with_args(&["--relay-from", "127.0.0.0/8", "--dns-server", "127.0.0.1:9"])
}

fn queued(server: &Server) -> Vec<String> {
    queue_settled(&server.state);
    let mut ids: Vec<String> = fs::read_dir(server.state.join("queue/new"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn a_client_outside_relay_from_cannot_send_to_other_domains() {
    let server = Server::with_args(&["--relay-from", "192.0.2.0/24"]);
    let mut c = Plain::greeted(server.plain[0]);
    c.command("MAIL FROM:<a@client.test>", "250");
    c.command("RCPT TO:<bob@remote.example>", "550 5.7.1");
    c.command(&format!("RCPT TO:<bob@{DOMAIN}>"), "250");
    assert!(queued(&server).is_empty());
}

#[test]
fn a_relay_client_s_message_is_queued_with_its_envelope_and_ours_delivered() {
    let server = relay_server();
    let mut c = Plain::greeted(server.plain[0]);
    c.command("MAIL FROM:<a@client.test> BODY=8BITMIME", "250");
    c.command("RCPT TO:<bob@remote.example>", "250");
    c.command(&format!("RCPT TO:<local@{DOMAIN}>"), "250");
    c.command("RCPT TO:<\"c d\"@other.example>", "250");
    c.command("DATA", "354");
    c.send("Subject: onward\r\n\r\n..dot\r\nbody\r\n.\r\n");
    let id = queue_id(&c.expect("250"));
    assert_eq!(queued(&server), vec![id.clone()]);
    let file = fs::read(server.state.join("queue/new").join(&id)).unwrap();
    let text = String::from_utf8_lossy(&file);
    let (envelope, message) = text.split_once("\n\n").unwrap();
    assert!(envelope.starts_with("gsmtpd-queue 1\n"), "{envelope}");
    assert!(envelope.contains(&format!("id {id}\n")));
    assert!(envelope.contains("sender a@client.test\n"));
    assert!(envelope.contains("body 8bitmime\n"));
    assert!(envelope.contains("rcpt bob@remote.example\nrcpt \"c d\"@other.example"));
    assert!(
        !envelope.contains("local@"),
        "our own recipient is not queued"
    );
    // The message as it goes on the wire: our Received line, CRLF, the
    // dot unstuffed.
    assert!(
        message.starts_with("Received: from client.test ([127.0.0.1])\r\n"),
        "{message}"
    );
    assert!(
        message.ends_with("\r\nSubject: onward\r\n\r\n.dot\r\nbody\r\n"),
        "{message}"
    );
    assert!(!message.contains("Return-Path"));
    // The local copy as always.
    assert_eq!(server.mailbox("local").len(), 1);
    let line = server.arrival_line(&id);
    assert!(
        line.contains("for bob@remote.example local@example.org"),
        "{line}"
    );
}

#[test]
fn relay_clients_are_not_limited_per_address() {
    let server = Server::with_args(&["--relay-from", "127.0.0.1", "--max-per-ip", "1"]);
    let _first = Plain::greeted(server.plain[0]);
    let _second = Plain::greeted(server.plain[0]);
    let limited = Server::with_args(&["--max-per-ip", "1"]);
    let _one = Plain::greeted(limited.plain[0]);
    let mut two = Plain::connect(limited.plain[0]);
    two.expect("421 4.7.0");
}
