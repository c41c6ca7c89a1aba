//! `--durability log`: group commit through a write-ahead log, recovery
//! at start and checkpoints, on the real binary. A power loss cannot be
//! made here (no device-mapper in this kernel), so its effect on an
//! unsynced Maildir file is made by hand: the file emptied, or gone.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn log_server(state: &Path, checkpoint: &str) -> Server {
    durable_server(state, "log", checkpoint)
}

/// Delivers one message to `user`; returns its id.
fn deliver(server: &Server, user: &str, body: &str) -> String {
    let mut c = Plain::greeted(server.plain[0]);
    c.command("MAIL FROM:<a@client.test>", "250");
    c.command(&format!("RCPT TO:<{user}@{DOMAIN}>"), "250");
    c.command("DATA", "354");
    c.send(&crlf(body));
    c.send(".\r\n");
    let id = queue_id(&c.expect("250"));
    c.command("QUIT", "221");
    id
}

fn files(server: &Server, user: &str) -> Vec<PathBuf> {
    let dir = server.maildir.join(DOMAIN).join(user).join("new");
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn files_a_power_loss_emptied_or_took_come_back_from_the_log() {
    let state = scratch_dir("wal");
    let mut server = log_server(&state, "3600");
    deliver(&server, "alice", "Subject: one\n\nfirst\n");
    deliver(&server, "alice", "Subject: two\n\nsecond\n");
    let paths = files(&server, "alice");
    assert_eq!(paths.len(), 2);
    let originals: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(state.join("wal/worker-0").is_dir());
    // No checkpoint for an hour: both messages are only in the log and in
    // unsynced files when everything dies.
    kill_everything(&mut server);
    fs::write(&paths[0], b"").unwrap();
    fs::remove_file(&paths[1]).unwrap();
    let mut again = log_server(&state, "3600");
    let log = again.wait_log("recovery from");
    assert!(
        log.contains("2 message(s) after the last checkpoint, 2 file(s) rewritten"),
        "{log}"
    );
    for (path, original) in paths.iter().zip(&originals) {
        assert_eq!(&fs::read(path).unwrap(), original, "{}", path.display());
    }
    assert_eq!(files(&again, "alice").len(), 2, "nothing twice");
    // Recovery ended with a checkpoint: a later start has nothing to do.
    again.signal("TERM");
    again.wait_exit(WAIT);
    let third = log_server(&state, "3600");
    deliver(&third, "bob", "Subject: three\n\nthird\n");
    assert!(!third.log().contains("recovery from"), "{}", third.log());
    assert_eq!(files(&third, "alice").len(), 2);
}

/// The README's first command names the state directory relative to
/// where gsmtpd starts; a recovery started from elsewhere (systemd's
/// working directory is /) must still rewrite the same files.
#[test]
fn a_relative_state_dir_recovers_from_another_working_directory() {
    let home = scratch_dir("wal-relative");
    let state = home.join("gsmtpd-state");
    let start_in = |cwd: &Path| {
        Server::with(Options {
            implicit: false,
            state: Some(state.clone()),
            cwd: Some(cwd.to_path_buf()),
            extra: ["--checkpoint-interval", "3600", "--workers", "1"]
                .map(String::from)
                .to_vec(),
            ..Options::default()
        })
    };
    let mut server = start_in(&home);
    deliver(&server, "dave", "Subject: here\n\nfrom home\n");
    let paths = files(&server, "dave");
    assert_eq!(paths.len(), 1);
    let original = fs::read(&paths[0]).unwrap();
    kill_everything(&mut server);
    fs::write(&paths[0], b"").unwrap();
    let elsewhere = scratch_dir("wal-elsewhere");
    let again = start_in(&elsewhere);
    let log = again.wait_log("recovery from");
    assert!(log.contains("1 file(s) rewritten"), "{log}");
    assert_eq!(fs::read(&paths[0]).unwrap(), original);
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "recovery wrote under the new working directory"
    );
}

#[test]
fn a_checkpoint_frees_the_log_and_a_clean_stop_leaves_nothing_to_replay() {
    let state = scratch_dir("wal-checkpoint");
    let mut server = log_server(&state, "1");
    for n in 0..5 {
        deliver(&server, "carol", &format!("Subject: {n}\n\nx\n"));
    }
    std::thread::sleep(Duration::from_millis(1500));
    server.signal("TERM");
    server.wait_exit(WAIT);
    let again = log_server(&state, "1");
    deliver(&again, "carol", "Subject: after\n\nx\n");
    assert!(!again.log().contains("recovery from"), "{}", again.log());
    assert_eq!(files(&again, "carol").len(), 6);
}

/// One client's messages until the connection fails: the numbers of those
/// answered 250.
fn keep_delivering(addr: std::net::SocketAddr, client: usize) -> Vec<usize> {
    use std::io::{BufRead, BufReader, Write};
    let mut acked = Vec::new();
    let Ok(stream) = std::net::TcpStream::connect(addr) else {
        return acked;
    };
    let _ = stream.set_read_timeout(Some(WAIT));
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let reply = |reader: &mut BufReader<std::net::TcpStream>| -> Option<String> {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.as_bytes().get(3) == Some(&b' ') {
                return Some(line);
            }
        }
    };
    if reply(&mut reader).is_none() || writer.write_all(b"EHLO client.test\r\n").is_err() {
        return acked;
    }
    if !reply(&mut reader).is_some_and(|r| r.starts_with("250")) {
        return acked;
    }
    for m in 0.. {
        let body = kill_body(client, m);
        let commands = format!("MAIL FROM:<a@client.test>\r\nRCPT TO:<load@{DOMAIN}>\r\nDATA\r\n");
        let content = format!("{}.\r\n", crlf(&body));
        for (send, expected) in [
            (commands, &["250", "250", "354"][..]),
            (content, &["250"][..]),
        ] {
            if writer.write_all(send.as_bytes()).is_err() {
                return acked;
            }
            for code in expected {
                match reply(&mut reader) {
                    Some(r) if r.starts_with(code) => {}
                    _ => return acked,
                }
            }
        }
        acked.push(m);
    }
    acked
}

fn kill_body(client: usize, m: usize) -> String {
    format!(
        "Subject: {client}/{m}\n\nclient {client} message {m}\n{}\n",
        "x".repeat(64 * (m % 7))
    )
}

#[test]
fn a_worker_killed_under_load_leaves_every_acknowledged_message_once_and_nothing_partial() {
    let state = scratch_dir("wal-kill");
    let server = log_server(&state, "3600");
    let addr = server.plain[0];
    let clients: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || keep_delivering(addr, i)))
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let victims = server.workers();
    for &pid in &victims {
        signal(pid, "KILL");
    }
    let acked: Vec<Vec<usize>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 10, "the load ran: {total} messages acknowledged");
    // The replacement worker replays the log before it serves anyone.
    let start = std::time::Instant::now();
    while server.workers().iter().all(|p| victims.contains(p)) {
        assert!(start.elapsed() < WAIT, "no replacement worker");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.wait_log("recovery from");
    let stored: Vec<String> = files(&server, "load")
        .iter()
        .map(|p| stored_body(&fs::read(p).unwrap()).1)
        .collect();
    for (client, messages) in acked.iter().enumerate() {
        for &m in messages {
            let body = kill_body(client, m);
            let copies = stored.iter().filter(|s| s.ends_with(&body)).count();
            assert_eq!(copies, 1, "message {client}/{m}: {copies} copies");
        }
    }
    // Nothing else but at most the message each client had in flight,
    // and that only whole.
    for s in &stored {
        let whole = (0..4).any(|c| (0..=acked[c].len()).any(|m| s.ends_with(&kill_body(c, m))));
        assert!(whole, "a stored message that is not one sent whole: {s:?}");
    }
    assert!(
        stored.len() <= total + 4,
        "{} stored, {total} acknowledged",
        stored.len()
    );
}

/// A relaying gsmtpd under the log whose next hop for remote.example is
/// 127.0.0.1:`port`; no checkpoint for an hour but the one that hands a
/// queue file to the delivery process, no retry but a flush.
fn log_relay(state: &Path, port: u16) -> Server {
    let mut args = route(&format!("[127.0.0.1]:{port}"));
    args.extend(
        [
            "--durability",
            "log",
            "--checkpoint-interval",
            "3600",
            "--workers",
            "1",
            "--retry-min",
            "3600",
            "--retry-max",
            "3600",
        ]
        .map(String::from),
    );
    sender_with(Some(state.to_path_buf()), &args)
}

#[test]
fn a_relayed_message_goes_once_even_when_a_power_loss_takes_its_removal() {
    let port = free_port();
    let state = scratch_dir("wal-relay");
    let mut sender = log_relay(&state, port);
    let id = submit(
        &sender,
        "a@client.test",
        "carol@remote.example",
        "Subject: relayed\n\nx\n",
    );
    // Tried (and deferred: the hop is down) well before the hour: the
    // worker's checkpoint moved it from held-0/ into the queue at once.
    sender.wait_log(&format!("{id} == carol@remote.example"));
    let queue = state.join("queue");
    let file = fs::read(queue.join("new").join(&id)).unwrap();
    assert!(fs::read_dir(queue.join("held-0")).unwrap().next().is_none());
    let journal = fs::read(queue.join("log").join(&id)).unwrap();
    assert!(state.join("wal/delivery").is_dir());

    let next_hop = receiver(&["--listen", &format!("127.0.0.1:{port}")]);
    let (status, _, err) = gsmtpd(&["queue", "flush"], &sender.state);
    assert_eq!(status, Some(0), "{err}");
    let inbox = next_hop.maildir.join("remote.example/carol/new");
    wait_mail(&inbox, 1);
    sender.wait_log(&format!("{id} Completed"));
    // A power loss before the delivery process's next checkpoint: the
    // removal never reached the disk, nor the journal's delivered line.
    kill_everything(&mut sender);
    fs::write(queue.join("new").join(&id), &file).unwrap();
    fs::write(queue.join("log").join(&id), &journal).unwrap();

    let again = log_relay(&state, port);
    let log = again.wait_log(&format!("{id} Completed"));
    assert!(
        log.contains(&format!("recovery: the journal of {id} rewritten")),
        "{log}"
    );
    assert!(!log.contains(&format!("{id} =>")), "sent again: {log}");
    assert!(!queue.join("new").join(&id).exists());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(wait_mail(&inbox, 1).len(), 1, "one copy at the next hop");
}
