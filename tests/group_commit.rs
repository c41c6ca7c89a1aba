//! Group commit on the wire: messages that end in the same turn of the
//! event loop are made durable together, and no client hears 250 before
//! its message's data and its name in new/ are on stable storage (checked
//! against the system calls the running server makes, traced by strace).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::{Options, Plain, Server, queue_id, scratch_dir};

const CLIENTS: usize = 8;

/// With `--durability sync`: every file and name synced before the 250.
fn plain_server() -> Server {
    Server::with(Options {
        implicit: false,
        extra: ["--durability", "sync"].map(String::from).to_vec(),
        ..Options::default()
    })
}

/// With `--durability log`, checkpoints far apart: only the log's
/// fdatasync can make a message durable in time for its 250.
fn log_server() -> Server {
    Server::with(Options {
        implicit: false,
        extra: ["--durability", "log", "--checkpoint-interval", "3600"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
}

/// CLIENTS clients each deliver MESSAGES messages, one after the other.
fn deliver_all(server: &Server, user: &str, messages: usize) {
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut c = at_data(server, user);
            let rcpt = format!("{user}@example.org");
            thread::spawn(move || {
                for m in 0..messages {
                    if m > 0 {
                        c.start_data(&rcpt);
                    }
                    c.send(&format!("{}.\r\n", body(i, m)));
                    c.expect("250 2.0.0 OK");
                }
                c.command("QUIT", "221");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// A connection that has been answered 354 and may send content.
fn at_data(server: &Server, user: &str) -> Plain {
    let mut c = Plain::greeted(server.plain[0]);
    c.start_data(&format!("{user}@example.org"));
    c
}

fn body(client: usize, message: usize) -> String {
    format!("Subject: {client}/{message}\r\n\r\nfrom client {client}, message {message}\r\n")
}

#[test]
fn messages_ending_in_one_turn_share_one_group_commit() {
    let server = plain_server();
    let mut clients: Vec<Plain> = (0..CLIENTS).map(|_| at_data(&server, "group")).collect();
    // With the server stopped, every message's end reaches its socket
    // before the server can see any of them: one turn of the loop.
    server.signal_all("STOP");
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&format!("{}.\r\n", body(i, 0)));
    }
    thread::sleep(Duration::from_millis(300));
    server.signal_all("CONT");
    let ids: Vec<String> = clients
        .iter_mut()
        .map(|c| queue_id(&c.expect("250 2.0.0 OK")))
        .collect();
    // Each worker committed the messages it had in one group: one group
    // commit line per worker that served any, adding up to all of them.
    let groups = || -> Vec<(String, usize)> {
        server
            .log()
            .lines()
            .filter_map(|l| {
                let (head, count) = l.split_once("group commit of ")?;
                let pid = head
                    .rsplit_once("] [")?
                    .1
                    .trim_end_matches("] ")
                    .to_string();
                Some((pid, count.split(' ').next()?.parse().ok()?))
            })
            .collect()
    };
    let start = std::time::Instant::now();
    while groups().iter().map(|(_, n)| n).sum::<usize>() < CLIENTS {
        assert!(start.elapsed() < common::WAIT, "{}", server.log());
        thread::sleep(Duration::from_millis(20));
    }
    let groups = groups();
    let pids: HashSet<&String> = groups.iter().map(|(pid, _)| pid).collect();
    assert_eq!(pids.len(), groups.len(), "one group per worker: {groups:?}");
    for id in &ids {
        assert!(server.arrival_line(id).contains("<= a@client.test"));
    }
    let stored = server.mailbox("group");
    assert_eq!(stored.len(), CLIENTS);
    for i in 0..CLIENTS {
        let text = body(i, 0).replace("\r\n", "\n");
        let found = stored
            .iter()
            .filter(|m| String::from_utf8_lossy(m).ends_with(&text))
            .count();
        assert_eq!(found, 1, "message of client {i} stored {found} times");
    }
}

#[test]
fn a_pipelined_message_waits_for_the_commit_of_the_one_before() {
    let server = plain_server();
    let mut c = at_data(&server, "pipe");
    // The end of one message, a whole second one and QUIT in one write:
    // the second is only read once the first is durable and answered.
    c.send(&format!(
        "{}.\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<pipe@example.org>\r\n\
         BDAT 5 LAST\r\nhelloQUIT\r\n",
        body(0, 0)
    ));
    let first = queue_id(&c.expect("250 2.0.0 OK"));
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    let second = queue_id(&c.expect("250 2.0.0 OK"));
    c.expect("221");
    assert_ne!(first, second);
    assert_eq!(server.mailbox("pipe").len(), 2);
}

/// One traced system call: (name, arguments, result).
struct Call {
    name: String,
    args: String,
    result: String,
}

/// Parses the `name(args) = result` lines of one process's trace
/// (`strace -ff -o`).
fn parse_trace(text: &str) -> Vec<Call> {
    text.lines()
        .filter_map(|line| {
            let open = line.find('(')?;
            // strace pads short calls: "syncfs(12)      = 0".
            let equals = line.rfind(" = ")?;
            let close = line[..equals].rfind(')')?;
            Some(Call {
                name: line[..open].to_string(),
                args: line[open + 1..close].to_string(),
                result: line[equals + 3..].to_string(),
            })
        })
        .collect()
}

fn first_arg(call: &Call) -> &str {
    call.args.split(',').next().unwrap_or("")
}

/// The first quoted argument: an openat's path, a link's source.
fn first_path(call: &Call) -> &str {
    call.args.split('"').nth(1).unwrap_or("")
}

/// The second quoted argument: a link's target.
fn second_path(call: &Call) -> &str {
    call.args.split('"').nth(3).unwrap_or("")
}

/// The name under which a successful openat's message file is linked:
/// `/proc/self/fd/N` for an anonymous O_TMPFILE file (opened on the tmp/
/// directory), the path of a file created in tmp/ (the fallback).
fn message_file(call: &Call) -> Option<String> {
    if call.result.starts_with('-') {
        return None;
    }
    if call.args.contains("O_TMPFILE") {
        Some(format!("/proc/self/fd/{}", call.result))
    } else if call.args.contains("/tmp/") && call.args.contains("O_CREAT") {
        Some(first_path(call).to_string())
    } else {
        None
    }
}

/// Runs `strace` attached to every worker of the server while `work`
/// runs; returns each worker's pid and calls, in its own order.
fn traced(server: &Server, trace: &Path, work: impl FnOnce()) -> Vec<(u32, Vec<Call>)> {
    let workers = server.workers();
    let mut strace = Command::new("strace")
        // Strings long enough for whole paths, so that named tmp files are
        // told apart.
        // One file per process (TRACE.PID): no call split across lines
        // by another process's.
        .args(["-ff", "-s", "512", "-o"])
        .arg(trace)
        .args([
            "-e",
            "trace=openat,close,write,pwrite64,sendto,link,linkat,syncfs,fsync,fdatasync",
        ])
        .args(
            workers
                .iter()
                .flat_map(|pid| ["-p".to_string(), pid.to_string()]),
        )
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace is needed: scripts/deps test installs it");
    let mut stderr = BufReader::new(strace.stderr.take().unwrap());
    for _ in &workers {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("attached"), "strace did not attach: {line}");
    }
    work();
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    strace.wait().unwrap();
    workers
        .iter()
        .filter_map(|&pid| {
            let text = std::fs::read_to_string(format!("{}.{pid}", trace.display())).ok()?;
            Some((pid, parse_trace(&text)))
        })
        .collect()
}

#[test]
fn no_250_is_sent_before_its_message_is_synced() {
    const MESSAGES: usize = 3;
    let server = plain_server();
    let trace = scratch_dir("strace").join("trace");
    let traces = traced(&server, &trace, || deliver_all(&server, "traced", MESSAGES));
    assert_eq!(server.mailbox("traced").len(), CLIENTS * MESSAGES);
    // Each worker on its own: the syncs that count are its own.
    let (mut oks, mut links, mut syncs, mut served) = (0, 0, 0, 0);
    for (_, calls) in &traces {
        let (o, l, s) = check_worker(calls);
        (oks, links, syncs) = (oks + o, links + l, syncs + s);
        served += usize::from(o > 0);
    }
    assert_eq!(oks, CLIENTS * MESSAGES, "every 250 was seen in the trace");
    assert_eq!(links, CLIENTS * MESSAGES);
    eprintln!("{oks} messages, {syncs} syncfs calls, {served} worker(s) served");
}

/// Checks one process's calls: every message's data synced before its
/// link into new/, every link synced before its 250, no per-message
/// fsync. Returns (250s, links, syncfs calls).
fn check_worker(calls: &[Call]) -> (usize, usize, usize) {
    let synced_between = |from: usize, to: usize| {
        calls[from..to]
            .iter()
            .any(|c| c.name == "syncfs" && c.result == "0")
    };
    // The message file each descriptor is writing (by the name it is
    // linked from), and each one's last write.
    let mut open_files: HashMap<String, String> = HashMap::new();
    let mut last_write: HashMap<String, usize> = HashMap::new();
    // Names in new/ already checked: a link from one of them is a link of
    // data known to be synced.
    let mut published: HashSet<String> = HashSet::new();
    let (mut links, mut oks, mut syncs) = (0, 0, 0);
    for (i, call) in calls.iter().enumerate() {
        match call.name.as_str() {
            "openat" => {
                if let Some(file) = message_file(call) {
                    // A descriptor number (and so a /proc/self/fd name) is
                    // reused: writes to an earlier file must not count.
                    last_write.remove(&file);
                    open_files.insert(call.result.clone(), file);
                }
            }
            "close" => {
                open_files.remove(first_arg(call));
            }
            "write" => {
                if let Some(file) = open_files.get(first_arg(call)) {
                    last_write.insert(file.clone(), i);
                }
            }
            "link" | "linkat" if call.result == "0" => {
                let source = first_path(call);
                if !published.contains(source) {
                    let written = *last_write
                        .get(source)
                        .unwrap_or_else(|| panic!("linked {source}, which was never written"));
                    assert!(
                        synced_between(written, i),
                        "{source} was linked into new/ before its data was synced"
                    );
                }
                published.insert(second_path(call).to_string());
                links += 1;
            }
            "sendto" => {
                let replies = call.args.matches("250 2.0.0 OK id=").count();
                if replies == 0 {
                    continue;
                }
                oks += replies;
                let last_link = calls[..i]
                    .iter()
                    .rposition(|c| c.name.starts_with("link") && c.result == "0")
                    .expect("a 250 before any message was linked");
                assert!(links >= oks, "{oks} messages acknowledged, {links} linked");
                assert!(
                    synced_between(last_link, i),
                    "250 sent before the name in new/ was synced: {}",
                    call.args
                );
            }
            "syncfs" => syncs += 1,
            "fsync" | "fdatasync" if open_files.contains_key(first_arg(call)) => {
                panic!("a per-message fsync: {}", call.args)
            }
            _ => {}
        }
    }
    (oks, links, syncs)
}

#[test]
fn with_the_log_no_250_is_sent_before_the_fdatasync_that_covers_it() {
    const MESSAGES: usize = 3;
    let server = log_server();
    let trace = scratch_dir("strace-log").join("trace");
    // The workers opened their logs when they started, before the trace.
    let log_fds = |pid: u32| -> HashSet<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                target
                    .to_string_lossy()
                    .contains("/wal/")
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect()
    };
    let fds: HashMap<u32, HashSet<String>> = server
        .workers()
        .into_iter()
        .map(|pid| (pid, log_fds(pid)))
        .collect();
    assert!(
        fds.values().all(|f| !f.is_empty()),
        "every worker holds its log: {fds:?}"
    );
    let traces = traced(&server, &trace, || deliver_all(&server, "logged", MESSAGES));
    assert_eq!(server.mailbox("logged").len(), CLIENTS * MESSAGES);
    let (mut oks, mut syncs) = (0, 0);
    for (pid, calls) in &traces {
        let (o, s) = check_logged_worker(calls, fds[pid].clone());
        oks += o;
        syncs += s;
    }
    assert_eq!(oks, CLIENTS * MESSAGES, "every 250 was seen in the trace");
    eprintln!("{oks} messages, {syncs} fdatasync calls of the log");
}

/// Checks one process's calls under `--durability log`: every 250 comes
/// after its record was written into the log and the log fdatasync'd, and
/// only then its message linked (a name must never reach the disk before
/// its record); no syncfs or per-message fsync is needed for it.
/// Returns (250s, fdatasync calls of the log).
fn check_logged_worker(calls: &[Call], mut log_fds: HashSet<String>) -> (usize, usize) {
    let (mut oks, mut syncs) = (0, 0);
    let is_log = |c: &Call, name: &str, fds: &HashSet<String>| {
        c.name == name && fds.contains(first_arg(c)) && !c.result.starts_with('-')
    };
    for (i, call) in calls.iter().enumerate() {
        match call.name.as_str() {
            "openat" if first_path(call).contains("/wal/") && !call.result.starts_with('-') => {
                log_fds.insert(call.result.clone());
            }
            "fdatasync" if is_log(call, "fdatasync", &log_fds) => syncs += 1,
            "sendto" => {
                let replies = call.args.matches("250 2.0.0 OK id=").count();
                if replies == 0 {
                    continue;
                }
                oks += replies;
                let before = &calls[..i];
                let link = before
                    .iter()
                    .rposition(|c| c.name.starts_with("link") && c.result == "0")
                    .expect("a 250 before any message was linked");
                let synced = before[..link]
                    .iter()
                    .rposition(|c| is_log(c, "fdatasync", &log_fds))
                    .unwrap_or_else(|| panic!("linked before the log's fdatasync: {}", call.args));
                let logged = before[..synced]
                    .iter()
                    .rposition(|c| is_log(c, "pwrite64", &log_fds))
                    .unwrap_or_else(|| panic!("synced before its record: {}", call.args));
                assert!(
                    !before[logged..synced]
                        .iter()
                        .any(|c| c.name.starts_with("link")),
                    "a message of the group linked before its record was durable: {}",
                    call.args
                );
            }
            _ => {}
        }
    }
    (oks, syncs)
}
