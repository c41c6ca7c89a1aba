//! The binary as an operator meets it: flags, the zero-configuration start,
//! connection limits, graceful shutdown, and a failing mail store.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

fn gsmtpd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gsmtpd"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["--no-such-flag"][..], "no-such-flag"),
        (&["--listen", "localhost"][..], "--listen"),
        (&["--max-connections", "many"][..], "--max-connections"),
        (&["--cert", "a.pem"][..], "--cert"),
    ] {
        let out = gsmtpd(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().next().unwrap_or("").contains(flag),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn help_and_version() {
    let out = gsmtpd(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--listen-tls",
        "--cert",
        "--key",
        "--state-dir",
        "--maildir",
        "--domain",
        "--hostname",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = gsmtpd(&["-V"]);
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("gsmtpd ") && v.contains("GnuTLS 3."), "{v}");
}

#[test]
fn bad_tls_priority_stops_the_start_with_gnutls_reason() {
    let state = scratch_dir("prio");
    let out = gsmtpd(&[
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--tls-priority",
        "NORMAL:+NONSENSE",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-priority") && err.contains("NONSENSE"),
        "{err}"
    );
}

#[test]
fn zero_config_start_makes_and_reuses_a_self_signed_certificate() {
    let state = scratch_dir("zero");
    let opts = || Options {
        certs: false,
        state: Some(state.clone()),
        ..Options::default()
    };
    let server = Server::with(opts());
    let cert = std::fs::read(state.join("default-cert.pem")).unwrap();
    let key_mode = std::fs::metadata(state.join("default-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let port = server.port().to_string();
    let mut c = TlsClient::spawn(
        "gnutls-cli",
        &[
            "--insecure",
            "--starttls-proto=smtp",
            "--port",
            &port,
            "127.0.0.1",
        ],
    );
    c.wait_line("- Handshake was completed");
    c.command("EHLO client.test", "250");
    c.command("QUIT", "221");
    let transcript = c.finish();
    assert!(transcript.contains("CN=mx.test"), "{transcript}");
    drop(server);

    let _again = Server::with(opts());
    assert_eq!(
        std::fs::read(state.join("default-cert.pem")).unwrap(),
        cert,
        "certificate reused"
    );
}

#[test]
fn connections_beyond_the_limit_get_421() {
    let server = Server::with_args(&["--max-connections", "2"]);
    let mut a = Plain::connect(server.plain[0]);
    a.expect("220");
    let mut b = Plain::connect(server.plain[0]);
    b.expect("220");
    let mut c = Plain::connect(server.plain[0]);
    c.expect("421 4.3.2");
    assert!(c.closed());
    a.command("QUIT", "221");
    drop(a);
    server.wait_log("closed by QUIT");
    let mut d = Plain::connect(server.plain[0]);
    d.expect("220");
    server.wait_log("Too many connections (limit 2)");
}

#[test]
fn connections_beyond_the_per_address_limit_get_421() {
    let server = Server::with_args(&["--max-per-ip", "2"]);
    let mut a = Plain::connect(server.plain[0]);
    a.expect("220");
    let mut b = Plain::connect(server.plain[0]);
    b.expect("220");
    let mut c = Plain::connect(server.plain[0]);
    c.expect("421 4.7.0");
    assert!(c.closed());
    server.wait_log("Too many connections from your address (limit 2)");
    a.command("QUIT", "221");
    drop(a);
    server.wait_log("closed by QUIT");
    Plain::connect(server.plain[0]).expect("220");
}

#[test]
fn a_client_trickling_bytes_is_cut_off_at_the_total_deadline() {
    let server = Server::with_args(&["--command-timeout", "2", "--message-timeout", "3"]);
    // One byte every 400 ms keeps the idle timer from firing; the total
    // deadline for the command line must.
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    let start = std::time::Instant::now();
    for b in "EHLO slow.client.test and more and more".bytes() {
        if std::io::Write::write_all(&mut c.stream, &[b]).is_err()
            || start.elapsed() > Duration::from_secs(6)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    c.expect("421 4.4.2");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );

    // The same inside DATA: each line comes well within the data timeout,
    // the message as a whole does not.
    let mut c = Plain::greeted(server.plain[0]);
    c.start_data("lee@example.org");
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        if std::io::Write::write_all(&mut c.stream, b"x\r\n").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    c.expect("421 4.4.2");
    assert!(server.mailbox("lee").is_empty());
}

#[test]
fn sigterm_lets_a_transaction_finish_then_exits_0() {
    let mut server = Server::start();
    let mut idle = Plain::connect(server.plain[0]);
    idle.expect("220");
    idle.command("EHLO idle.test", "250");
    let mut busy = Plain::connect(server.plain[0]);
    busy.expect("220");
    busy.command("EHLO busy.test", "250");
    busy.start_data("dave@example.org");
    busy.send("Subject: in flight\r\n\r\npart one\r\n");

    let workers = server.workers().len();
    server.signal("TERM");
    idle.expect("421 4.3.2");
    assert!(idle.closed());
    // New connections are refused once every worker began its shutdown
    // (the supervisor closed its copies of the sockets first).
    let start = std::time::Instant::now();
    while server
        .log()
        .matches("SIGTERM received: no new connections")
        .count()
        < workers
    {
        assert!(start.elapsed() < WAIT, "{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::net::TcpStream::connect(server.plain[0]).is_err());

    busy.send("part two\r\n.\r\n");
    busy.expect("250 2.0.0");
    busy.expect("421 4.3.2");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(server.mailbox("dave").len(), 1);
}

#[test]
fn store_failure_is_452_and_leaves_nothing_then_service_continues() {
    let server = Server::start();
    // A file where the mailbox directory should be: every write fails.
    std::fs::create_dir_all(server.maildir.join(DOMAIN)).unwrap();
    std::fs::write(server.maildir.join(DOMAIN).join("broken"), b"not a mailbox").unwrap();

    let mut c = Plain::greeted(server.plain[0]);
    c.start_data("broken@example.org");
    c.send("Subject: x\r\n\r\nbody\r\n.\r\n");
    c.expect("452 4.3.1");
    c.start_data("erin@example.org");
    c.send("Subject: y\r\n\r\nbody\r\n.\r\n");
    c.expect("250 2.0.0");
    c.command("QUIT", "221");
    assert_eq!(server.mailbox("erin").len(), 1);
    assert!(server.mailbox("broken").is_empty());
}

#[test]
fn relaying_is_refused_and_bdat_delivers() {
    let server = Server::start();
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    c.command("EHLO client.test", "250");
    c.command("MAIL FROM:<a@client.test>", "250");
    c.command("RCPT TO:<victim@elsewhere.test>", "550 5.7.1");
    c.command("RCPT TO:<frank@example.org>", "250");
    c.send("BDAT 12\r\nSubject: b\r\n");
    c.expect("250 2.0.0");
    c.send("BDAT 6 LAST\r\n\r\nbd\r\n");
    c.expect("250 2.0.0 OK id=");
    let files = server.mailbox("frank");
    assert_eq!(files.len(), 1);
    assert_eq!(stored_body(&files[0]).1, "Subject: b\n\nbd\n");
}

#[test]
fn idle_client_gets_421_after_the_command_timeout() {
    let server = Server::with_args(&["--command-timeout", "1"]);
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    c.expect("421 4.4.2");
    assert!(c.closed());
    server.wait_log("closed: timeout");
}

#[test]
fn pipelined_commands_are_answered_in_order_in_one_write() {
    let server = Server::start();
    let mut c = Plain::connect(server.plain[0]);
    c.expect("220");
    c.command("EHLO client.test", "250");
    c.send(
        "MAIL FROM:<a@client.test>\r\nRCPT TO:<gina@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\n\
         NOOP\r\nRSET\r\n",
    );
    let replies = c.read_once();
    let codes: Vec<&str> = replies.lines().map(|l| &l[..9]).collect();
    assert_eq!(
        codes,
        [
            "250 2.1.0",
            "250 2.1.5",
            "550 5.7.1",
            "250 2.0.0",
            "250 2.0.0"
        ],
        "{replies}"
    );
}

#[test]
fn ipv6_listener() {
    let server = Server::with_args(&["--listen", "[::1]:0"]);
    let v6 = server
        .plain
        .iter()
        .find(|a| a.is_ipv6())
        .expect("an IPv6 listener");
    let mut c = Plain::connect(*v6);
    c.expect("220 mx.test");
    c.command("EHLO client.test", "250-mx.test Hello client.test [::1]");
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; after the ')' they are 12 and 13 (1-based from state).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_backs_off_without_spinning() {
    let server = Server::start();
    let mut first = Plain::connect(server.plain[0]);
    first.expect("220");
    first.command("EHLO client.test", "250");
    // Every worker may open two more descriptors than it has now.
    let workers = server.workers();
    for &pid in &workers {
        let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        prlimit(pid, open_fds + 2);
    }

    let mut waiting: Vec<Plain> = (0..12).map(|_| Plain::connect(server.plain[0])).collect();
    server.wait_log("pausing accepts");
    let ticks = || workers.iter().map(|&pid| cpu_ticks(pid)).sum::<u64>();
    let before = ticks();
    std::thread::sleep(Duration::from_millis(1500));
    let used = ticks() - before;
    assert!(used < 30, "a loop spun: {used} ticks in 1.5 s");
    // The connection that was already open keeps working.
    first.command("NOOP", "250");

    // Give descriptors back: the waiting clients are served.
    for &pid in &workers {
        prlimit(pid, 1024);
    }
    for c in &mut waiting {
        c.expect("220");
    }
}

fn prlimit(pid: u32, nofile: usize) {
    let status = Command::new("prlimit")
        .args([&format!("--pid={pid}"), &format!("--nofile={nofile}:")])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Two servers on one state directory would share its queue and session
/// cache: the second is refused, naming the first.
#[test]
fn a_second_server_on_the_same_state_directory_is_refused() {
    let server = Server::start();
    let out = Command::new(env!("CARGO_BIN_EXE_gsmtpd"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&server.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("another gsmtpd (pid {})", server.child.id())),
        "{err}"
    );
}
