//! The sending side's cache (`--client-cache`) of TLS sessions and EHLO
//! responses, with real receivers on loopback: a second gsmtpd and Exim
//! 4.96. Sessions survive a restart of the sender, a stale one costs a
//! full handshake and is replaced, `none` caches nothing, a resumed
//! session still satisfies `+ocsp` through the staple its full handshake
//! verified, and early pipelining (`L*`) follows a kept EHLO response
//! until the receiver answers otherwise.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

/// The sender's `=>` line for `id`.
fn delivered_line(sender: &Server, id: &str) -> String {
    let log = sender.wait_log(&format!("{id} => "));
    sender.wait_log(&format!("{id} Completed"));
    log.lines()
        .find(|l| l.contains(&format!("{id} => ")))
        .unwrap()
        .to_string()
}

/// The `X=` field of a log line, e.g. `TLS1.3:TLS_AES_256_GCM_SHA384:256*`.
fn x_field(line: &str) -> &str {
    line.split(' ')
        .find_map(|f| f.strip_prefix("X="))
        .unwrap_or_else(|| panic!("no X= in {line}"))
}

/// The receiver's `<=` line for the message with `subject`, found through
/// the id of the mailbox file (the receiver logs its own id).
fn received_line(receiver: &Server, from: &str, n: usize) -> String {
    let start = Instant::now();
    loop {
        let log = receiver.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("<= {from} ")))
            .collect();
        if lines.len() > n {
            return lines[n].to_string();
        }
        assert!(start.elapsed() < WAIT, "no {n}th <= line: {log}");
        sleep(Duration::from_millis(50));
    }
}

/// The sender's TLS session lines (`TLS session with ...`, logged as each
/// connection ends), in order, once there are `n`.
fn tls_lines(sender: &Server, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let lines: Vec<String> = sender
            .log()
            .lines()
            .filter(|l| l.contains("TLS session with "))
            .map(String::from)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            start.elapsed() < WAIT,
            "{} TLS session lines, not {n}",
            lines.len()
        );
        sleep(Duration::from_millis(50));
    }
}

fn args(hop: &str, extra: &[&str]) -> Vec<String> {
    let mut a = route(hop);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn restart(sender: &mut Server) {
    sender.signal("TERM");
    sender.wait_exit(WAIT);
}

#[test]
fn a_restarted_sender_resumes_its_session_with_the_next_hop() {
    for (version, priority) in [("TLS1.3", None), ("TLS1.2", Some("NORMAL:-VERS-TLS1.3"))] {
        let next_hop = receiver(&[]);
        let hop = format!("[127.0.0.1]:{}", next_hop.port());
        let mut extra = Vec::new();
        if let Some(p) = priority {
            extra.extend(["--tls-priority", p]);
        }
        let state = scratch_dir("resume-out");
        let mut sender = sender_with(Some(state.clone()), &args(&hop, &extra));
        let first = submit(
            &sender,
            "a@client.test",
            "bob@remote.example",
            "Subject: 1\n\nx\n",
        );
        let line = delivered_line(&sender, &first);
        assert!(x_field(&line).starts_with(version), "{line}");
        assert!(
            !x_field(&line).ends_with('*'),
            "a first delivery is a full handshake: {line}"
        );
        restart(&mut sender);

        // The cache is a file of secrets.
        let cache = state.join("client-cache.sqlite");
        let mode = fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let sender = sender_with(Some(state.clone()), &args(&hop, &extra));
        let second = submit(
            &sender,
            "a@client.test",
            "bob@remote.example",
            "Subject: 2\n\nx\n",
        );
        let line = delivered_line(&sender, &second);
        assert!(x_field(&line).starts_with(version), "{line}");
        assert!(
            x_field(&line).ends_with('*'),
            "{version}: resumed after a restart: {line}"
        );
        assert!(line.contains(" L* "), "{version}: early pipelining: {line}");
        let received = received_line(&next_hop, "a@client.test", 1);
        assert!(
            x_field(&received).ends_with('*'),
            "the receiver saw it: {received}"
        );
        assert!(received.contains(" L*"), "{received}");
        let tls = tls_lines(&sender, 1);
        let last = &tls[0];
        assert!(
            last.contains("client-offered-session") && last.contains(",resumed)"),
            "{last}"
        );
        // TLS 1.2 sessions may be offered again: a third delivery resumes
        // too, as does a TLS 1.3 one with the ticket the second brought.
        let third = submit(
            &sender,
            "a@client.test",
            "bob@remote.example",
            "Subject: 3\n\nx\n",
        );
        let line = delivered_line(&sender, &third);
        assert!(x_field(&line).ends_with('*'), "{version}: {line}");
    }
}

#[test]
fn client_cache_none_never_offers_a_session() {
    let next_hop = receiver(&[]);
    let hop = format!("[127.0.0.1]:{}", next_hop.port());
    let state = scratch_dir("no-cache");
    let sender = sender_with(
        Some(state.clone()),
        &args(&hop, &["--client-cache", "none"]),
    );
    for n in 0..2 {
        let id = submit(
            &sender,
            "a@client.test",
            "bob@remote.example",
            "Subject: n\n\nx\n",
        );
        let line = delivered_line(&sender, &id);
        assert!(!x_field(&line).ends_with('*'), "{n}: {line}");
    }
    let tls = tls_lines(&sender, 2);
    assert_eq!(tls.len(), 2, "{tls:?}");
    for line in tls {
        // Neither supported nor requested, offered or resumed (a TLS 1.3
        // server may still send a ticket, which is dropped).
        assert!(
            line.contains("resumption 0x00(none)")
                || line.contains("resumption 0x08(server-issued-ticket)"),
            "{line}"
        );
    }
    assert!(!state.join("client-cache.sqlite").exists());
    assert!(
        !next_hop.log().contains("client-offered-session"),
        "{}",
        next_hop.log()
    );
}

#[test]
fn a_next_hop_with_new_keys_gets_a_full_handshake_and_the_stale_session_is_replaced() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let hop = format!("[127.0.0.1]:{port}");
    let mut next_hop = receiver(&["--listen", &listen]);
    let sender = sender_with(None, &args(&hop, &[]));
    let id = submit(
        &sender,
        "a@client.test",
        "bob@remote.example",
        "Subject: 1\n\nx\n",
    );
    delivered_line(&sender, &id);
    // A restarted gsmtpd has fresh ticket keys (memory only): the cached
    // ticket no longer decrypts.
    let next_hop = restart_receiver(&mut next_hop, &listen, &[]);
    let id = submit(
        &sender,
        "a@client.test",
        "bob@remote.example",
        "Subject: 2\n\nx\n",
    );
    let line = delivered_line(&sender, &id);
    assert!(
        !x_field(&line).ends_with('*'),
        "stale: a full handshake: {line}"
    );
    let tls = tls_lines(&sender, 2);
    assert!(tls[1].contains("client-offered-session"), "{tls:?}");
    // ... whose ticket replaced the stale one.
    let id = submit(
        &sender,
        "a@client.test",
        "bob@remote.example",
        "Subject: 3\n\nx\n",
    );
    let line = delivered_line(&sender, &id);
    assert!(x_field(&line).ends_with('*'), "{line}");
    assert_eq!(next_hop.mailbox_of("remote.example", "bob").len(), 2);
}

#[test]
fn a_resumed_session_satisfies_ocsp_through_the_staple_of_its_full_handshake() {
    let good = receiver(&["--ocsp", &pki_file("rsa.ocsp.der")]);
    let hop = format!("[localhost]:{}", good.port());
    let sender = sender_with(
        None,
        &args(
            &hop,
            &[
                "--tls-policy",
                "remote.example=verify+ocsp",
                "--ca-file",
                &pki_file("ca.pem"),
            ],
        ),
    );
    let first = submit(
        &sender,
        "a@client.test",
        "olga@remote.example",
        "Subject: 1\n\nx\n",
    );
    let line = delivered_line(&sender, &first);
    assert!(!x_field(&line).ends_with('*'), "{line}");
    let second = submit(
        &sender,
        "a@client.test",
        "olga@remote.example",
        "Subject: 2\n\nx\n",
    );
    let line = delivered_line(&sender, &second);
    assert!(
        x_field(&line).ends_with('*'),
        "resumed, not deferred: {line}"
    );
    let tls = tls_lines(&sender, 2);
    assert!(tls[0].contains(" OCSP=verified "), "{tls:?}");
    assert!(tls[1].contains(" OCSP=cached "), "{tls:?}");
    assert_eq!(good.mailbox_of("remote.example", "olga").len(), 2);
}

#[test]
fn exim_as_the_next_hop_resumes_and_takes_early_pipelining() {
    // Exim's main tls_resumption_hosts: the hosts it issues tickets to;
    // pipelining_connect_advertise_hosts: those offered PIPECONNECT.
    let exim = EximHop::start("tls_resumption_hosts = *\npipelining_connect_advertise_hosts = *");
    let hop = format!("[127.0.0.1]:{}", exim.port);
    let state: PathBuf = scratch_dir("exim-resume");
    let mut sender = sender_with(Some(state.clone()), &args(&hop, &[]));
    let first = submit(
        &sender,
        "a@client.test",
        "hal@remote.example",
        "Subject: 1\n\nx\n",
    );
    delivered_line(&sender, &first);
    restart(&mut sender);
    let sender = sender_with(Some(state), &args(&hop, &[]));
    let second = submit(
        &sender,
        "a@client.test",
        "hal@remote.example",
        "Subject: 2\n\nx\n",
    );
    let line = delivered_line(&sender, &second);
    assert!(x_field(&line).ends_with('*'), "{line}");
    assert!(line.contains(" L* "), "{line}");
    exim.mail(2);
    let log = exim.mainlog();
    let received: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("<= a@client.test"))
        .collect();
    assert_eq!(received.len(), 2, "{log}");
    assert!(!x_field(received[0]).ends_with('*'), "{log}");
    assert!(
        x_field(received[1]).ends_with('*'),
        "Exim resumed it: {log}"
    );
}

/// Delivers one message and returns the sender's `=>` line.
fn deliver_one(sender: &Server, n: usize) -> String {
    let id = submit(
        sender,
        "a@client.test",
        "bob@remote.example",
        &format!("Subject: {n}\n\nx\n"),
    );
    delivered_line(sender, &id)
}

fn restart_receiver(receiver: &mut Server, listen: &str, extra: &[&str]) -> Server {
    receiver.signal("TERM");
    receiver.wait_exit(WAIT);
    let mut args = vec!["--listen", listen];
    args.extend_from_slice(extra);
    common::receiver(&args)
}

#[test]
fn a_changed_ehlo_response_is_kept_anew_and_a_withdrawn_pipeconnect_costs_one_retry() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut next_hop = receiver(&["--listen", &listen]);
    let sender = sender_with(None, &args(&format!("[127.0.0.1]:{port}"), &[]));
    assert!(!deliver_one(&sender, 1).contains(" L*"));
    assert!(deliver_one(&sender, 2).contains(" L* "), "kept: early");
    // The receiver now offers another SIZE: the EHLO response changed.
    let mut next_hop2 =
        restart_receiver(&mut next_hop, &listen, &["--max-message-size", "1000000"]);
    // The server still took the message pipelined early: delivered as it
    // was, the change noticed.
    assert!(deliver_one(&sender, 3).contains(" L* "));
    sender.wait_log("early pipelining: the EHLO response changed");
    // ... and the new response is kept, so the next one pipelines early.
    assert!(deliver_one(&sender, 4).contains(" L* "));
    // The receiver stops offering PIPECONNECT.
    let next_hop3 = restart_receiver(
        &mut next_hop2,
        &listen,
        &["--max-message-size", "1000000", "--pipe-connect-hosts", ""],
    );
    let line = deliver_one(&sender, 5);
    assert!(!line.contains(" L*"), "{line}");
    assert!(!deliver_one(&sender, 6).contains(" L*"), "no longer kept");
    // Every message arrived once: two at each of the three receivers.
    for hop in [&next_hop, &next_hop2, &next_hop3] {
        assert_eq!(hop.mailbox_of("remote.example", "bob").len(), 2);
    }
    assert_eq!(
        sender.log().matches(" => bob@remote.example").count(),
        6,
        "{}",
        sender.log()
    );
}

#[test]
fn a_kept_next_hop_that_is_down_defers_as_usual_and_loses_nothing() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut next_hop = receiver(&["--listen", &listen]);
    let sender = sender_with(
        None,
        &args(
            &format!("[127.0.0.1]:{port}"),
            &["--retry-min", "60", "--retry-max", "60"],
        ),
    );
    deliver_one(&sender, 1);
    assert!(deliver_one(&sender, 2).contains(" L* "));
    next_hop.signal("TERM");
    next_hop.wait_exit(WAIT);
    // Pipelined early toward nobody: deferred like any refused connection.
    let id = submit(
        &sender,
        "a@client.test",
        "bob@remote.example",
        "Subject: 3\n\nx\n",
    );
    let log = sender.wait_log(&format!("{id} == bob@remote.example"));
    assert!(!log.contains(&format!("{id} => ")), "{log}");
    let next_hop = receiver(&["--listen", &listen]);
    let (status, _, err) = gsmtpd(&["queue", "flush"], &sender.state);
    assert_eq!(status, Some(0), "{err}");
    sender.wait_log(&format!("{id} Completed"));
    assert_eq!(next_hop.mailbox_of("remote.example", "bob").len(), 1);
}

#[test]
fn a_message_pipelined_early_on_smtps_survives_a_failed_ocsp_check() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let stapled = |extra: &[&str]| {
        let mut a = vec!["--listen-tls", &listen];
        a.extend_from_slice(extra);
        receiver(&a)
    };
    let ocsp = pki_file("rsa.ocsp.der");
    let mut next_hop = stapled(&["--ocsp", &ocsp]);
    let ca = pki_file("ca.pem");
    let sender = sender_with(
        None,
        &args(
            &format!("smtps:[localhost]:{port}"),
            &[
                "--tls-policy",
                "remote.example=encrypt+ocsp",
                "--ca-file",
                &ca,
                "--retry-min",
                "60",
                "--retry-max",
                "60",
            ],
        ),
    );
    deliver_one(&sender, 1);
    assert!(deliver_one(&sender, 2).contains(" L* "));
    // The same host, now without a staple: the message that went with the
    // ClientHello's flight is deferred, not lost.
    next_hop.signal("TERM");
    next_hop.wait_exit(WAIT);
    let mut bare = stapled(&[]);
    let id = submit(
        &sender,
        "a@client.test",
        "bob@remote.example",
        "Subject: 3\n\nx\n",
    );
    let log = sender.wait_log(&format!("{id} == bob@remote.example"));
    assert!(log.contains("no valid stapled OCSP response"), "{log}");
    assert!(bare.mailbox_of("remote.example", "bob").is_empty());
    bare.signal("TERM");
    bare.wait_exit(WAIT);
    let next_hop = stapled(&["--ocsp", &ocsp]);
    let (status, _, err) = gsmtpd(&["queue", "flush"], &sender.state);
    assert_eq!(status, Some(0), "{err}");
    sender.wait_log(&format!("{id} Completed"));
    assert_eq!(next_hop.mailbox_of("remote.example", "bob").len(), 1);
}
