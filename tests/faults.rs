//! Faults that must lose nothing: a full or read-only mail store, the
//! process killed in the middle of DATA, the session cache destroyed while
//! the server runs, certificate files disappearing.
//!
//! The file-system faults mount a small tmpfs (the tests run as root, as CI
//! does).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;

/// A tmpfs of `size` at a fresh directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = scratch_dir("tmpfs");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "mounting a tmpfs needs root (scripts/test runs as root)"
        );
        Tmpfs(dir)
    }

    fn remount(&self, opts: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn message_of(size: usize) -> String {
    let line = "x".repeat(76) + "\r\n";
    format!(
        "Subject: {size}\r\n\r\n{}",
        line.repeat(size / line.len() + 1)
    )
}

/// Sends one message on a fresh plain connection; returns the final reply.
fn deliver(server: &Server, to: &str, body: &str) -> String {
    let mut c = Plain::greeted(server.plain[0]);
    c.start_data(to);
    c.send(body);
    c.send(".\r\n");
    let reply = c.reply();
    c.command("QUIT", "221");
    reply
}

fn files_in(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn full_file_system_is_452_and_nothing_is_stored_then_a_retry_succeeds() {
    let fs_ = Tmpfs::mount("512k");
    let maildir = fs_.0.join("mail");
    let server = Server::with_args(&["--maildir", maildir.to_str().unwrap()]);
    let big = message_of(700 * 1024);
    assert!(deliver(&server, "max@example.org", &big).starts_with("452 4.3.1"));
    let new = maildir.join(DOMAIN).join("max").join("new");
    assert_eq!(files_in(&new), 0, "nothing in new/");
    assert_eq!(
        files_in(&maildir.join(DOMAIN).join("max").join("tmp")),
        0,
        "no partial file left"
    );
    server.wait_log("No space left on device");
    // Space returns (a small message fits): the client's retry succeeds.
    assert!(deliver(&server, "max@example.org", &message_of(10 * 1024)).starts_with("250 2.0.0"));
    assert_eq!(files_in(&new), 1);
}

#[test]
fn full_queue_file_system_is_452_and_nothing_is_queued_then_a_retry_succeeds() {
    let fs_ = Tmpfs::mount("1m");
    let server = Server::with(Options {
        state: Some(fs_.0.join("state")),
        // No DNS server there: the queued message stays deferred.
        extra: ["--relay-from", "127.0.0.0/8", "--dns-server", "127.0.0.1:9"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    });
    let queue = server.state.join("queue");
    let big = message_of(1200 * 1024);
    assert!(deliver(&server, "max@remote.example", &big).starts_with("452 4.3.1"));
    assert_eq!(files_in(&queue.join("new")), 0, "nothing queued");
    assert_eq!(files_in(&queue.join("tmp")), 0, "no partial file left");
    server.wait_log("No space left on device");
    assert!(
        deliver(&server, "max@remote.example", &message_of(10 * 1024)).starts_with("250 2.0.0")
    );
    queue_settled(&server.state);
    assert_eq!(files_in(&queue.join("new")), 1);
}

#[test]
fn read_only_mail_store_is_452_and_service_continues() {
    let fs_ = Tmpfs::mount("4m");
    let maildir = fs_.0.join("mail");
    let server = Server::with_args(&["--maildir", maildir.to_str().unwrap()]);
    assert!(deliver(&server, "ro@example.org", &message_of(1024)).starts_with("250"));
    fs_.remount("ro");
    assert!(deliver(&server, "ro@example.org", &message_of(1024)).starts_with("452 4.3.1"));
    fs_.remount("rw");
    assert!(deliver(&server, "ro@example.org", &message_of(1024)).starts_with("250"));
    assert_eq!(files_in(&maildir.join(DOMAIN).join("ro").join("new")), 2);
}

#[test]
fn sigkill_in_the_middle_of_data_leaves_nothing_in_new_and_stale_tmp_is_cleaned() {
    let state = scratch_dir("kill");
    let opts = || Options {
        state: Some(state.clone()),
        ..Options::default()
    };
    let mut server = Server::with(opts());
    // One acknowledged message first.
    assert!(deliver(&server, "kit@example.org", &message_of(1024)).starts_with("250"));
    let mut c = Plain::greeted(server.plain[0]);
    c.start_data("kit@example.org");
    c.send(&message_of(64 * 1024));
    std::thread::sleep(Duration::from_millis(200));
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(5));

    let mailbox = state.join("mail").join(DOMAIN).join("kit");
    assert_eq!(
        files_in(&mailbox.join("new")),
        1,
        "only the acknowledged message"
    );
    // The killed message was written into an anonymous O_TMPFILE inode:
    // nothing of it is left in tmp/ either.
    assert_eq!(files_in(&mailbox.join("tmp")), 0, "a name left in tmp/");
    // An old leftover in tmp/ (older than Maildir's 36 hours, as the named
    // fallback or an older version leaves) is removed at start.
    let stale = mailbox.join("tmp").join("1.M1P1Q1.old");
    fs::write(&stale, b"partial").unwrap();
    let old = SystemTime::now() - Duration::from_secs(37 * 3600);
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let server = Server::with(opts());
    server.wait_log("stale files");
    assert!(!stale.exists());
    assert_eq!(server.mailbox("kit").len(), 1);
    let (_, body) = stored_body(&server.mailbox("kit")[0]);
    assert_eq!(
        body,
        message_of(1024).replace("\r\n", "\n"),
        "the acknowledged message, byte for byte"
    );
}

fn tls12_session_id_handshake(server: &Server) -> String {
    let ca = pki_file("ca.pem");
    let port = server.port().to_string();
    let out = Command::new("gnutls-cli")
        .args([
            "--resume",
            "--x509cafile",
            &ca,
            "--port",
            &port,
            "--starttls-proto=smtp",
        ])
        .arg("--priority=NORMAL:-VERS-TLS1.3:%NO_TICKETS")
        .arg("localhost")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn session_cache_deleted_or_corrupted_while_running_costs_no_handshake() {
    let server = Server::start();
    let cache = server.state.join("sessions.sqlite");
    assert!(tls12_session_id_handshake(&server).contains("This is a resumed session"));
    fs::remove_file(&cache).unwrap();
    let out = tls12_session_id_handshake(&server);
    assert!(out.contains("- Handshake was completed"), "{out}");
    fs::write(&cache, "garbage, not a database\n".repeat(500)).unwrap();
    for _ in 0..3 {
        let out = tls12_session_id_handshake(&server);
        assert!(out.contains("- Handshake was completed"), "{out}");
    }
    server.wait_log("session cache");
}

#[test]
fn session_cache_locked_by_another_process_costs_no_handshake() {
    let server = Server::start();
    let cache = server.state.join("sessions.sqlite");
    assert!(tls12_session_id_handshake(&server).contains("This is a resumed session"));
    // Another process holds an exclusive transaction for a few seconds.
    let script = format!(
        "import sqlite3, sys, time\n\
         c = sqlite3.connect({:?}, isolation_level=None)\n\
         c.execute('BEGIN EXCLUSIVE')\n\
         print('locked', flush=True)\n\
         time.sleep(4)\n",
        cache.display().to_string()
    );
    let mut locker = Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(locker.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let start = std::time::Instant::now();
    for _ in 0..3 {
        let out = tls12_session_id_handshake(&server);
        assert!(out.contains("- Handshake was completed"), "{out}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "handshakes waited for the lock"
    );
    locker.wait().unwrap();
}

#[test]
fn certificate_files_vanishing_keep_the_loaded_credentials() {
    let dir = scratch_dir("vanish");
    for f in ["rsa.pem", "rsa-key.pem", "rsa.ocsp.der"] {
        fs::copy(pki().join(f), dir.join(f)).unwrap();
    }
    let arg = |f: &str| dir.join(f).display().to_string();
    let server = Server::with(Options {
        certs: false,
        extra: vec![
            "--cert".into(),
            arg("rsa.pem"),
            "--key".into(),
            arg("rsa-key.pem"),
            "--ocsp".into(),
            arg("rsa.ocsp.der"),
        ],
        ..Options::default()
    });
    fs::remove_file(dir.join("rsa-key.pem")).unwrap();
    fs::remove_file(dir.join("rsa.ocsp.der")).unwrap();
    let mut c = starttls_client(&server, &[]);
    c.command("EHLO client.test", "250");
    c.command("QUIT", "221");
    c.finish();
    server.wait_log("failed, keeping the previous certificates");
}
