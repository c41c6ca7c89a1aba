//! Sending onward, with real next hops on loopback: a second gsmtpd (over
//! STARTTLS), a hop that is down and comes back (`queue flush`), a 5xx and
//! its bounce, a kill with a message queued, verified TLS, MX lookups
//! answered by dnsmasq.

mod common;

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

fn queue_is_empty(server: &Server) -> bool {
    fs::read_dir(server.state.join("queue/new"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn a_message_goes_onward_over_starttls_byte_for_byte() {
    let next_hop = receiver(&[]);
    let hop = format!("[127.0.0.1]:{}", next_hop.port());
    let sender = sender_with(None, &route(&hop));
    let body = "Subject: onward\n\n..dot line\nline two\n";
    let id = submit(&sender, "a@client.test", "bob@remote.example", body);
    let got = wait_mail(&next_hop.maildir.join("remote.example/bob/new"), 1);
    let (_, rest) = stored_body(&got[0]);
    // The sender's Received line, then the message as submitted (dots
    // unstuffed).
    assert!(
        rest.starts_with("Received: from client.test ([127.0.0.1])\n"),
        "{rest}"
    );
    assert!(
        rest.contains(&format!("by mx.test (gsmtpd) with ESMTP\n\tid {id}")),
        "{rest}"
    );
    assert!(
        rest.ends_with("Subject: onward\n\n.dot line\nline two\n"),
        "{rest}"
    );
    // Over TLS, logged in Exim's words.
    let line = sender.wait_log(&format!("{id} => bob@remote.example"));
    let line = line
        .lines()
        .find(|l| l.contains(&format!("{id} =>")))
        .unwrap();
    assert!(
        line.contains(&format!("H=127.0.0.1 [127.0.0.1]:{}", next_hop.port())),
        "{line}"
    );
    assert!(line.contains(" X=TLS1.3:"), "{line}");
    assert!(line.contains(" C=\"250 2.0.0 OK id="), "{line}");
    sender.wait_log(&format!("{id} Completed"));
    assert!(queue_is_empty(&sender));
}

#[test]
fn a_hop_that_is_down_defers_and_queue_flush_delivers_once_it_is_back() {
    let port = free_port();
    let sender = sender_with(None, &{
        let mut a = route(&format!("[127.0.0.1]:{port}"));
        // Long waits: only the flush may bring it back.
        a.extend([
            "--retry-min".into(),
            "3600".into(),
            "--retry-max".into(),
            "3600".into(),
        ]);
        a
    });
    let id = submit(
        &sender,
        "a@client.test",
        "carol@remote.example",
        "Subject: later\n\nx\n",
    );
    let log = sender.wait_log(&format!("{id} == carol@remote.example"));
    // The arrival is logged before any attempt to send the message on.
    let arrival = log.find(&format!("id={id}")).unwrap();
    assert!(arrival < log.find(&format!("{id} ==")).unwrap(), "{log}");
    let (status, list, _) = gsmtpd(&["queue", "list"], &sender.state);
    assert_eq!(status, Some(0));
    assert!(
        list.contains(&id) && list.contains("carol@remote.example"),
        "{list}"
    );
    assert!(list.contains("next attempt in"), "{list}");
    let (status, show, _) = gsmtpd(&["queue", "show", &id], &sender.state);
    assert_eq!(status, Some(0));
    assert!(
        show.contains("sender: <a@client.test>") && show.contains("Subject: later"),
        "{show}"
    );

    // Known to be down: the next message waits without a try of its own.
    let second = submit(
        &sender,
        "a@client.test",
        "carol@remote.example",
        "Subject: later too\n\nx\n",
    );
    let log = sender.wait_log(&format!("{second} == carol@remote.example"));
    let line = log
        .lines()
        .find(|l| l.contains(&format!("{second} ==")))
        .unwrap();
    assert!(line.contains("delivery temporarily suspended: "), "{line}");
    let attempts = log
        .lines()
        .filter(|l| l.contains("gsmtpd::outbound]") && l.contains("connect: "))
        .count();
    assert_eq!(attempts, 1, "one connection attempt: {log}");

    let next_hop = receiver(&["--listen", &format!("127.0.0.1:{port}")]);
    let (status, out, err) = gsmtpd(&["queue", "flush"], &sender.state);
    assert_eq!(status, Some(0), "{out}{err}");
    wait_mail(&next_hop.maildir.join("remote.example/carol/new"), 2);
    sender.wait_log(&format!("{id} Completed"));
    sender.wait_log(&format!("{second} Completed"));
    let (_, list, _) = gsmtpd(&["queue", "list"], &sender.state);
    assert!(list.contains("0 message(s) in the queue"), "{list}");
}

#[test]
fn a_refused_recipient_bounces_to_its_sender_and_a_bounce_never_does() {
    // The next hop takes mail for remote.example only: nosuch@ is refused.
    let next_hop = receiver(&[]);
    let hop = format!("[127.0.0.1]:{}", next_hop.port());
    let sender = sender_with(None, &["--route".into(), format!("*={hop}")]);
    let id = submit(
        &sender,
        &format!("alice@{DOMAIN}"),
        "x@nosuch.example",
        "Subject: lost\n\nbody\n",
    );
    sender.wait_log(&format!("{id} ** x@nosuch.example"));
    let bounces = wait_mail(&sender.maildir.join(DOMAIN).join("alice/new"), 1);
    let dsn = String::from_utf8_lossy(&bounces[0]);
    assert!(dsn.starts_with("Return-Path: <>\n"), "{dsn}");
    assert!(
        dsn.contains("multipart/report") && dsn.contains("report-type=delivery-status"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; x@nosuch.example"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.7.1"), "{dsn}");
    assert!(dsn.contains("Subject: lost"), "the original headers: {dsn}");
    sender.wait_log(&format!("{id} Completed"));

    // From the null sender: failed, and no bounce of a bounce.
    let id = submit(
        &sender,
        "",
        "y@nosuch.example",
        "Subject: a bounce\n\nbody\n",
    );
    sender.wait_log(&format!("{id} ** y@nosuch.example"));
    sender.wait_log(&format!("{id} Completed"));
    assert_eq!(sender.mailbox("alice").len(), 1);
    assert!(queue_is_empty(&sender));
}

#[test]
fn a_message_queued_when_everything_is_killed_is_delivered_exactly_once() {
    let port = free_port();
    let state = scratch_dir("killed");
    let args = route(&format!("[127.0.0.1]:{port}"));
    let mut sender = sender_with(Some(state.clone()), &args);
    let id = submit(
        &sender,
        "a@client.test",
        "dave@remote.example",
        "Subject: once\n\nx\n",
    );
    sender.wait_log(&format!("{id} == dave@remote.example"));
    for pid in children(sender.child.id()) {
        signal(pid, "KILL");
    }
    sender.signal("KILL");
    sender.wait_exit(WAIT);
    let next_hop = receiver(&["--listen", &format!("127.0.0.1:{port}")]);
    let again = sender_with(Some(state), &args);
    wait_mail(&next_hop.maildir.join("remote.example/dave/new"), 1);
    again.wait_log(&format!("{id} Completed"));
    sleep(Duration::from_secs(3));
    assert_eq!(next_hop.mailbox_of("remote.example", "dave").len(), 1);
}

#[test]
fn verify_defers_an_untrusted_chain_and_delivers_with_the_right_ca() {
    let next_hop = receiver(&[]);
    // The test certificate is for localhost: verification needs that name.
    let hop = format!("[localhost]:{}", next_hop.port());
    let policy = [
        "--tls-policy".to_string(),
        "remote.example=verify".to_string(),
    ];
    let state = scratch_dir("verify");
    let mut untrusting = sender_with(
        Some(state.clone()),
        &[
            route(&hop),
            policy.to_vec(),
            // Trusting one unrelated certificate only: the hop's chain
            // leads to no anchor.
            vec!["--ca-file".into(), pki_file("ecdsa-leaf.pem")],
        ]
        .concat(),
    );
    let id = submit(
        &untrusting,
        "a@client.test",
        "erin@remote.example",
        "Subject: v\n\nx\n",
    );
    let log = untrusting.wait_log(&format!("{id} == erin@remote.example"));
    assert!(log.contains("certificate verification failed"), "{log}");
    assert!(next_hop.mailbox_of("remote.example", "erin").is_empty());
    untrusting.signal("TERM");
    untrusting.wait_exit(WAIT);
    let trusting = sender_with(
        Some(state),
        &[
            route(&hop),
            policy.to_vec(),
            vec!["--ca-file".into(), pki_file("ca.pem")],
        ]
        .concat(),
    );
    wait_mail(&next_hop.maildir.join("remote.example/erin/new"), 1);
    trusting.wait_log(&format!("{id} Completed"));
}

#[test]
fn mx_records_from_dnsmasq_decide_where_mail_goes() {
    // The MX host listens on port 25 of an address of its own.
    let mx_ip = "127.0.0.77";
    let next_hop = receiver(&[
        "--domain",
        "mx-test.example",
        "--listen",
        &format!("{mx_ip}:25"),
    ]);
    let dns = Dnsmasq::start(&[
        "--mx-host=mx-test.example,mx.mx-test.example,10".into(),
        format!("--host-record=mx.mx-test.example,{mx_ip}"),
        "--mx-host=nullmx.example,.,0".into(),
    ]);
    let sender = sender_with(
        None,
        &["--dns-server".into(), format!("127.0.0.1:{}", dns.port())],
    );
    let id = submit(
        &sender,
        "a@client.test",
        "fay@mx-test.example",
        "Subject: mx\n\nx\n",
    );
    let log = sender.wait_log(&format!("{id} => fay@mx-test.example"));
    let line = log
        .lines()
        .find(|l| l.contains(&format!("{id} =>")))
        .unwrap();
    assert!(
        line.contains(&format!("H=mx.mx-test.example [{mx_ip}]:25")),
        "{line}"
    );
    wait_mail(&next_hop.maildir.join("mx-test.example/fay/new"), 1);
    let id = submit(
        &sender,
        "a@client.test",
        "gil@nullmx.example",
        "Subject: null\n\nx\n",
    );
    let log = sender.wait_log(&format!("{id} ** gil@nullmx.example"));
    assert!(log.contains("null MX"), "{log}");
}

#[test]
fn exim_as_the_next_hop_takes_the_message_over_tls_with_chunking() {
    let exim = EximHop::start("");
    let sender = sender_with(None, &route(&format!("[127.0.0.1]:{}", exim.port)));
    let body = "Subject: to exim\n\n..dots\nsecond line\n";
    let id = submit(&sender, "a@client.test", "hal@remote.example", body);
    let got = exim.mail(1);
    let text = String::from_utf8_lossy(&got[0]);
    assert!(text.contains("Return-path: <a@client.test>"), "{text}");
    assert!(
        text.contains(&format!("\tid {id}")),
        "our Received line: {text}"
    );
    assert!(
        text.ends_with("Subject: to exim\n\n.dots\nsecond line\n"),
        "{text}"
    );
    let line = sender.wait_log(&format!("{id} => hal@remote.example"));
    let line = line
        .lines()
        .find(|l| l.contains(&format!("{id} =>")))
        .unwrap();
    assert!(line.contains(" X=TLS1.3:"), "{line}");
    sender.wait_log(&format!("{id} Completed"));
    // Exim saw TLS, and the message came in BDAT chunks (its K flag).
    let start = Instant::now();
    let received = loop {
        let log = exim.mainlog();
        if let Some(l) = log.lines().find(|l| l.contains("<= a@client.test")) {
            break l.to_string();
        }
        assert!(start.elapsed() < WAIT, "{log}");
        sleep(Duration::from_millis(50));
    };
    assert!(received.contains(" P=esmtps "), "{received}");
    assert!(received.contains(" X=TLS1.3:"), "{received}");
    assert!(received.contains(" K "), "BDAT: {received}");
}

#[test]
fn a_message_over_the_next_hops_size_bounces_unsent_with_the_reason() {
    let next_hop = receiver(&["--max-message-size", "400"]);
    let sender = sender_with(None, &route(&format!("[127.0.0.1]:{}", next_hop.port())));
    let big = format!("Subject: big\n\n{}\n", "x".repeat(600));
    let id = submit(
        &sender,
        &format!("alice@{DOMAIN}"),
        "ivy@remote.example",
        &big,
    );
    let log = sender.wait_log(&format!("{id} ** ivy@remote.example"));
    assert!(log.contains("exceeds the size limit 400"), "{log}");
    let bounces = wait_mail(&sender.maildir.join(DOMAIN).join("alice/new"), 1);
    let dsn = String::from_utf8_lossy(&bounces[0]);
    assert!(dsn.contains("Status: 5.3.4"), "{dsn}");
    // Refused before MAIL: the next hop never saw a transaction.
    assert!(next_hop.mailbox_of("remote.example", "ivy").is_empty());
    assert!(!next_hop.log().contains("<= alice@"), "{}", next_hop.log());
}

#[test]
fn a_message_still_deferred_after_the_queue_lifetime_bounces_as_expired() {
    let port = free_port();
    let sender = sender_with(None, &{
        let mut a = route(&format!("[127.0.0.1]:{port}"));
        a.extend(
            [
                "--queue-lifetime",
                "2",
                "--retry-min",
                "1",
                "--retry-max",
                "1",
            ]
            .map(String::from),
        );
        a
    });
    let id = submit(
        &sender,
        &format!("alice@{DOMAIN}"),
        "jo@remote.example",
        "Subject: too late\n\nx\n",
    );
    sender.wait_log(&format!("{id} == jo@remote.example"));
    let log = sender.wait_log(&format!("{id} ** jo@remote.example"));
    assert!(log.contains("retry timeout exceeded"), "{log}");
    let bounces = wait_mail(&sender.maildir.join(DOMAIN).join("alice/new"), 1);
    let dsn = String::from_utf8_lossy(&bounces[0]);
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains("Status: 4.4.7"), "{dsn}");
    assert!(dsn.contains("Subject: too late"), "{dsn}");
    sender.wait_log(&format!("{id} Completed"));
    assert!(queue_is_empty(&sender));
}

#[test]
fn a_destination_gets_at_most_five_connections_each_carrying_several_messages() {
    let port = free_port();
    let sender = sender_with(None, &{
        let mut a = route(&format!("[127.0.0.1]:{port}"));
        a.extend(["--retry-min", "3600", "--retry-max", "3600"].map(String::from));
        a
    });
    let ids: Vec<String> = (0..12)
        .map(|i| {
            submit(
                &sender,
                "a@client.test",
                "kay@remote.example",
                &format!("Subject: {i}\n\nx\n"),
            )
        })
        .collect();
    for id in &ids {
        sender.wait_log(&format!("{id} == kay@remote.example"));
    }
    let next_hop = receiver(&["--listen", &format!("127.0.0.1:{port}")]);
    let (status, _, err) = gsmtpd(&["queue", "flush"], &sender.state);
    assert_eq!(status, Some(0), "{err}");
    wait_mail(&next_hop.maildir.join("remote.example/kay/new"), 12);
    for id in &ids {
        sender.wait_log(&format!("{id} Completed"));
    }
    let connections = next_hop.log().matches("TCP/IP connection count").count();
    // All 12 due at once: the destination's limit of connections, which
    // then carry the rest one after the other.
    assert_eq!(connections, 5, "connections for 12 messages");
}

#[test]
fn a_message_removed_from_the_queue_is_never_sent() {
    let port = free_port();
    let sender = sender_with(None, &{
        let mut a = route(&format!("[127.0.0.1]:{port}"));
        a.extend(["--retry-min", "3600", "--retry-max", "3600"].map(String::from));
        a
    });
    let keep = submit(
        &sender,
        "a@client.test",
        "lu@remote.example",
        "Subject: keep\n\nx\n",
    );
    let drop = submit(
        &sender,
        "a@client.test",
        "lu@remote.example",
        "Subject: drop\n\nx\n",
    );
    sender.wait_log(&format!("{keep} == lu@remote.example"));
    sender.wait_log(&format!("{drop} == lu@remote.example"));
    let (status, out, _) = gsmtpd(&["queue", "remove", &drop], &sender.state);
    assert_eq!(status, Some(0), "{out}");
    let (status, _, _) = gsmtpd(&["queue", "remove", &drop], &sender.state);
    assert_eq!(status, Some(1), "already gone");

    let next_hop = receiver(&["--listen", &format!("127.0.0.1:{port}")]);
    gsmtpd(&["queue", "flush"], &sender.state);
    let got = wait_mail(&next_hop.maildir.join("remote.example/lu/new"), 1);
    sender.wait_log(&format!("{keep} Completed"));
    sender.wait_log(&format!("{drop}: no longer in the queue"));
    sleep(Duration::from_millis(500));
    assert_eq!(next_hop.mailbox_of("remote.example", "lu").len(), 1);
    assert!(String::from_utf8_lossy(&got[0]).contains("Subject: keep"));
    assert!(queue_is_empty(&sender));
    assert!(!sender.state.join("queue/log").join(&drop).exists());
}

#[test]
fn ocsp_policy_needs_a_valid_staple_with_or_without_verify() {
    let good = receiver(&["--ocsp", &pki_file("rsa.ocsp.der")]);
    let expired = receiver(&["--ocsp", &pki_file("rsa-expired.ocsp.der")]);
    let bare = receiver(&[]);
    for level in ["verify+ocsp", "encrypt+ocsp"] {
        for (hop, delivers) in [(&good, true), (&expired, false), (&bare, false)] {
            let args = [
                route(&format!("[localhost]:{}", hop.port())),
                ["--tls-policy", &format!("remote.example={level}")]
                    .map(String::from)
                    .to_vec(),
                vec!["--ca-file".into(), pki_file("ca.pem")],
            ]
            .concat();
            let sender = sender_with(None, &args);
            let to = format!("{}@remote.example", level.replace('+', "-"));
            let id = submit(&sender, "a@client.test", &to, "Subject: o\n\nx\n");
            if delivers {
                sender.wait_log(&format!("{id} => {to}"));
                sender.wait_log(&format!("{id} Completed"));
            } else {
                let log = sender.wait_log(&format!("{id} == {to}"));
                assert!(
                    log.contains("no valid stapled OCSP response"),
                    "{level}: {log}"
                );
            }
            // Each TLS session's line says what came of the staple (an
            // expired response is never stapled by gsmtpd).
            let word = if delivers { "verified" } else { "none" };
            let log = sender.wait_log(&format!(" OCSP={word} resumption"));
            assert!(!log.contains(" OCSP=invalid "), "{log}");
        }
    }
    // Only the good staple's hop got mail, once per level.
    assert_eq!(good.log().matches("<= a@client.test").count(), 2);
    assert_eq!(expired.log().matches("<= a@client.test").count(), 0);
    assert_eq!(bare.log().matches("<= a@client.test").count(), 0);
}

#[test]
fn a_next_hop_that_takes_two_connections_gets_two_and_all_the_mail() {
    let port = free_port();
    let sender = sender_with(None, &{
        let mut a = route(&format!("[127.0.0.1]:{port}"));
        a.extend(["--retry-min", "3600", "--retry-max", "3600"].map(String::from));
        a
    });
    let ids: Vec<String> = (0..12)
        .map(|i| {
            let body = format!("Subject: {i}\n\nx\n");
            submit(&sender, "a@client.test", "ned@remote.example", &body)
        })
        .collect();
    sender.wait_log(&format!("{} == ned@remote.example", ids[11]));
    // A third connection at once gets 421.
    let next_hop = receiver(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--max-connections",
        "2",
    ]);
    gsmtpd(&["queue", "flush"], &sender.state);
    wait_mail(&next_hop.maildir.join("remote.example/ned/new"), 12);
    for id in &ids {
        sender.wait_log(&format!("{id} Completed"));
    }
    assert!(
        sender.log().contains("at most 2 connection(s) from now on"),
        "{}",
        sender.log()
    );
}
