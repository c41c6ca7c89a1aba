//! TLS session resumption on the wire: gnutls-cli --resume and openssl
//! s_client -sess_out/-sess_in against the real binary, over STARTTLS and
//! implicit TLS, TLS 1.2 and 1.3, tickets and the SQLite session cache,
//! ticket key rotation, restarts and a broken cache.

mod common;

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

const TLS13: &str = "NORMAL:-VERS-ALL:+VERS-TLS1.3";
const TLS12: &str = "NORMAL:-VERS-ALL:+VERS-TLS1.2";
const TLS12_NO_TICKETS: &str = "NORMAL:-VERS-TLS1.3:%NO_TICKETS";

#[derive(Clone, Copy, PartialEq)]
enum Listener {
    Starttls,
    Implicit,
}

/// Runs `gnutls-cli --resume`; returns its whole output.
fn gnutls_resume(server: &Server, listener: Listener, priority: &str) -> String {
    let ca = pki_file("ca.pem");
    let port = match listener {
        Listener::Starttls => server.port(),
        Listener::Implicit => server.tls_port(),
    }
    .to_string();
    let mut args = vec!["--resume", "--x509cafile", &ca, "--port", &port];
    let prio = format!("--priority={priority}");
    args.push(&prio);
    if listener == Listener::Starttls {
        args.push("--starttls-proto=smtp");
    }
    args.push("localhost");
    let out = Command::new("gnutls-cli")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_resumed(out: &str) {
    assert!(
        out.contains("*** This is a resumed session"),
        "not resumed:\n{out}"
    );
}

/// TLS-established log lines, in order.
fn tls_lines(server: &Server) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains("TLS established with"))
        .map(String::from)
        .collect()
}

fn wait_tls_lines(server: &Server, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let lines = tls_lines(server);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            start.elapsed() < WAIT,
            "expected {n} TLS sessions in the log:\n{}",
            server.log()
        );
        sleep(Duration::from_millis(20));
    }
}

fn check_gnutls_resume(extra: &[&str], listener: Listener, priority: &str, version: &str) {
    let server = Server::with_args(extra);
    assert_resumed(&gnutls_resume(&server, listener, priority));
    // Two workers may log the two sessions in either order.
    let lines = wait_tls_lines(&server, 2);
    let full = lines.iter().find(|l| !l.contains("* cert="));
    let resumed = lines.iter().find(|l| l.contains("* cert="));
    let (Some(full), Some(resumed)) = (full, resumed) else {
        panic!("one full and one resumed session: {lines:#?}");
    };
    assert!(full.contains(&format!("X={version}:")), "{full}");
    assert!(
        resumed.contains("client-offered-session") && resumed.contains(",resumed)"),
        "{resumed}"
    );
}

#[test]
fn starttls_tls13_ticket_resumes() {
    check_gnutls_resume(&[], Listener::Starttls, TLS13, "TLS1.3");
}

#[test]
fn starttls_tls12_ticket_resumes() {
    check_gnutls_resume(&[], Listener::Starttls, TLS12, "TLS1.2");
}

#[test]
fn starttls_tls12_session_id_resumes_through_the_cache() {
    check_gnutls_resume(&[], Listener::Starttls, TLS12_NO_TICKETS, "TLS1.2");
}

#[test]
fn implicit_tls13_ticket_resumes() {
    check_gnutls_resume(&[], Listener::Implicit, TLS13, "TLS1.3");
}

#[test]
fn implicit_tls12_ticket_resumes() {
    check_gnutls_resume(&[], Listener::Implicit, TLS12, "TLS1.2");
}

#[test]
fn implicit_tls12_session_id_resumes_through_the_cache() {
    check_gnutls_resume(&[], Listener::Implicit, TLS12_NO_TICKETS, "TLS1.2");
}

#[test]
fn no_tickets_server_resumes_tls12_by_session_id_and_issues_no_ticket() {
    let server = Server::with_args(&["--no-tickets"]);
    assert_resumed(&gnutls_resume(&server, Listener::Starttls, TLS12));
    let lines = wait_tls_lines(&server, 2);
    assert!(
        lines.iter().all(|l| !l.contains("server-issued-ticket")),
        "{lines:?}"
    );
    assert!(Path::new(&server.state.join("sessions.sqlite")).exists());
}

#[test]
fn first_session_logs_the_ticket_it_was_issued() {
    let server = Server::start();
    gnutls_resume(&server, Listener::Implicit, TLS13);
    let lines = wait_tls_lines(&server, 2);
    assert!(
        lines.iter().any(|l| l
            .contains("resumption=0x0b(supported,client-requested-ticket,server-issued-ticket)")),
        "{lines:#?}"
    );
}

/// openssl s_client over STARTTLS, saving or loading its session; returns
/// its output.
fn s_client(server: &Server, version_flag: &str, sess: (&str, &Path)) -> String {
    let addr = format!("127.0.0.1:{}", server.port());
    let ca = pki_file("ca.pem");
    let sess_path = sess.1.display().to_string();
    let mut c = TlsClient::spawn(
        "openssl",
        &[
            "s_client",
            "-starttls",
            "smtp",
            "-nocommands",
            "-connect",
            &addr,
            "-CAfile",
            &ca,
            version_flag,
            sess.0,
            &sess_path,
        ],
    );
    c.wait_line("250 ");
    // Reading the EHLO reply after the handshake also reads the TLS 1.3
    // NewSessionTicket, so -sess_out has a ticket to save.
    c.command("EHLO client.test", "250");
    c.command("QUIT", "221");
    c.finish()
}

fn reused(out: &str) -> bool {
    out.lines().any(|l| l.starts_with("Reused, "))
}

#[test]
fn openssl_sess_out_sess_in_reuses_tls13_and_tls12() {
    let server = Server::start();
    for flag in ["-tls1_3", "-tls1_2"] {
        let sess = scratch_dir("sess").join("s.pem");
        let first = s_client(&server, flag, ("-sess_out", &sess));
        assert!(!reused(&first), "{first}");
        let second = s_client(&server, flag, ("-sess_in", &sess));
        assert!(reused(&second), "{flag} not reused:\n{second}");
    }
}

/// Rotation every 2 s, tickets valid 5 s.
#[test]
fn ticket_rotation_keeps_old_tickets_until_their_lifetime_ends() {
    let server = Server::with_args(&["--ticket-rotation", "2", "--ticket-lifetime", "5"]);
    for flag in ["-tls1_3", "-tls1_2"] {
        let dir = scratch_dir("rot");
        let sess = dir.join("s.pem");
        s_client(&server, flag, ("-sess_out", &sess));
        let taken = Instant::now();
        // Let the key that issued it be retired by at least one rotation.
        sleep(Duration::from_millis(2600));
        assert!(
            reused(&s_client(&server, flag, ("-sess_in", &sess))),
            "{flag}: lost at rotation"
        );
        // Past its lifetime it must not resume, and the handshake still works.
        sleep(Duration::from_secs(6).saturating_sub(taken.elapsed()));
        let late = s_client(&server, flag, ("-sess_in", &sess));
        assert!(
            !reused(&late),
            "{flag}: resumed after its lifetime:\n{late}"
        );
        assert!(late.contains("221 "), "{late}");
    }
    let log = server.log();
    let held: Vec<usize> = log
        .lines()
        .filter_map(|l| {
            l.strip_suffix(" ticket key(s) held")?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(held.len() >= 3, "rotations logged: {log}");
    assert!(
        held.iter().all(|&n| n <= 4),
        "more keys than a 5 s lifetime needs: {held:?}"
    );
    assert!(
        log.contains("dropped: every ticket it issued has expired"),
        "{log}"
    );
}

#[test]
fn tickets_do_not_survive_a_restart() {
    let state = scratch_dir("restart");
    let opts = || Options {
        state: Some(state.clone()),
        extra: vec!["--session-cache".into(), "none".into()],
        ..Options::default()
    };
    let sess = state.join("s.pem");
    let server = Server::with(opts());
    s_client(&server, "-tls1_3", ("-sess_out", &sess));
    drop(server);
    let server = Server::with(opts());
    let out = s_client(&server, "-tls1_3", ("-sess_in", &sess));
    assert!(!reused(&out), "{out}");
    assert!(out.contains("221 "), "{out}");
}

fn handshakes_work_and_one_warning(server: &Server) {
    server.wait_log("session cache");
    for _ in 0..3 {
        let out = gnutls_resume(server, Listener::Starttls, TLS12_NO_TICKETS);
        assert!(out.contains("- Handshake was completed"), "{out}");
    }
    let warnings = server
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("session cache"))
        .count();
    assert_eq!(warnings, 1, "{}", server.log());
}

#[test]
fn corrupt_session_cache_warns_once_and_every_handshake_succeeds() {
    let state = scratch_dir("corrupt");
    std::fs::write(
        state.join("sessions.sqlite"),
        "this is not a database\n".repeat(400),
    )
    .unwrap();
    let server = Server::with(Options {
        state: Some(state),
        ..Options::default()
    });
    handshakes_work_and_one_warning(&server);
}

#[test]
fn read_only_session_cache_warns_once_and_every_handshake_succeeds() {
    let dir = scratch_dir("ro");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir)
        .status();
    let cache = if mounted.is_ok_and(|s| s.success()) {
        // A cache file that exists, on a file system made read-only.
        std::fs::write(dir.join("sessions.sqlite"), b"").unwrap();
        let ro = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ro.success());
        dir.join("sessions.sqlite")
    } else {
        eprintln!("mount not permitted here: using a path on read-only /proc instead");
        Path::new("/proc/sys/gsmtpd-sessions.sqlite").to_path_buf()
    };
    let server = Server::with_args(&["--session-cache", cache.to_str().unwrap()]);
    handshakes_work_and_one_warning(&server);
    drop(server);
    let _ = Command::new("umount").arg(&dir).status();
}

#[test]
fn message_over_a_resumed_session_is_logged_with_a_star() {
    let server = Server::start();
    let port = server.tls_port().to_string();
    let prio = format!("--priority={TLS13}");
    let mut c = TlsClient::gnutls(&["--resume", "--port", &port, &prio, "localhost"]);
    c.wait_line("*** This is a resumed session");
    c.expect_reply("220");
    let reply = send_message(
        &mut c,
        "a@client.test",
        &["hal@example.org"],
        "Subject: again\n\nhi\n",
    );
    let id = queue_id(&reply);
    c.command("QUIT", "221");
    c.finish();
    let line = server.arrival_line(&id);
    assert!(
        line.contains(" X=TLS1.3:") && line.contains(":256* S="),
        "{line}"
    );
}
