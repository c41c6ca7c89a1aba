//! `gsmtpd queue list|show ID|flush|remove ID`: what an administrator asks
//! of the queue, read from its files (list, show, remove) or from the
//! running server (flush).

use std::fmt::Write as _;
use std::path::Path;

use nix::sys::signal::{Signal, kill};

use super::journal::Outcome;
use super::{Loaded, QueueDir, QueueError};
use crate::config::QueueAction;
use crate::pid_file;
use crate::received::rfc5322_date;

/// What the command printed, and its exit status: 0, or 1 when the
/// message does not exist (or, for flush, no server runs).
pub struct Done {
    pub output: String,
    pub status: u8,
}

pub fn run(action: &QueueAction, state_dir: &Path, now: u64) -> Done {
    let queue = QueueDir::new(state_dir);
    match action {
        QueueAction::List => list(&queue, now),
        QueueAction::Show(id) => show(&queue, id, now),
        QueueAction::Remove(id) => remove(&queue, id),
        QueueAction::Flush => flush(state_dir),
    }
}

fn ok(output: String) -> Done {
    Done { output, status: 0 }
}

fn missing(what: String) -> Done {
    Done {
        output: what,
        status: 1,
    }
}

/// One entry per message, like `mailq`: age, size, id, sender, then each
/// recipient still to be delivered with its last error.
fn list(queue: &QueueDir, now: u64) -> Done {
    let ids = match queue.ids() {
        Ok(ids) => ids,
        Err(e) => return missing(format!("{}: {e}\n", queue.root().display())),
    };
    let mut out = String::new();
    for id in &ids {
        let loaded = match queue.load(id) {
            Ok(l) => l,
            // Removed meanwhile, or damaged: say so and go on.
            Err(e) => {
                let _ = writeln!(out, "{id}: {e}");
                continue;
            }
        };
        let env = &loaded.envelope;
        let _ = writeln!(
            out,
            "{:>4} {:>5} {id} <{}>",
            age(now.saturating_sub(env.arrival)),
            size(loaded.size),
            env.sender
        );
        for (rcpt, last) in env.recipients.iter().zip(&loaded.outcomes) {
            match last.as_ref().map(|r| &r.outcome) {
                Some(Outcome::Delivered { .. } | Outcome::Failed { .. }) => {}
                Some(Outcome::Deferred { next, reason }) => {
                    let _ = writeln!(
                        out,
                        "          {rcpt}\n            {reason} (next attempt in {})",
                        age(next.saturating_sub(now))
                    );
                }
                None => {
                    let _ = writeln!(out, "          {rcpt}");
                }
            }
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{} message(s) in the queue", ids.len());
    // Accepted, durable in a worker's write-ahead log, and not the
    // delivery process's yet: its next checkpoint hands them over.
    match queue.held() {
        Ok(held) if !held.is_empty() => {
            let _ = writeln!(
                out,
                "{} more held for a worker's checkpoint: {}",
                held.len(),
                held.join(" ")
            );
        }
        Ok(_) => {}
        Err(e) => {
            let _ = writeln!(out, "held queue files: {e}");
        }
    }
    ok(out)
}

/// The envelope, every recipient's state and the message's headers.
fn show(queue: &QueueDir, id: &str, now: u64) -> Done {
    let loaded = match queue.load(id) {
        Ok(l) => l,
        Err(e) => return missing(not_found(id, e)),
    };
    let mut out = describe(&loaded, now);
    match queue.headers(id) {
        Ok(head) => {
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(&head).replace("\r\n", "\n"));
        }
        Err(e) => {
            let _ = writeln!(out, "\n(headers unreadable: {e})");
        }
    }
    ok(out)
}

fn describe(loaded: &Loaded, now: u64) -> String {
    let env = &loaded.envelope;
    let mut out = String::new();
    let _ = writeln!(out, "id: {}", env.id);
    let _ = writeln!(
        out,
        "arrival: {} ({} ago)",
        rfc5322_date(env.arrival),
        age(now.saturating_sub(env.arrival))
    );
    let _ = writeln!(out, "sender: <{}>", env.sender);
    let _ = writeln!(out, "from: {}", env.received_from);
    let _ = writeln!(out, "size: {} bytes", loaded.size);
    let body = if env.eight_bit { "8BITMIME" } else { "7BIT" };
    let utf8 = if env.smtputf8 { ", SMTPUTF8" } else { "" };
    let _ = writeln!(out, "body: {body}{utf8}");
    for (rcpt, last) in env.recipients.iter().zip(&loaded.outcomes) {
        let state = match last.as_ref().map(|r| (&r.outcome, r.at)) {
            None => "not tried yet".to_string(),
            Some((Outcome::Delivered { host, reply }, at)) => {
                format!("delivered to {host} at {}: {reply}", rfc5322_date(at))
            }
            Some((Outcome::Failed { bounce, reason }, at)) => format!(
                "failed at {}: {reason}{}",
                rfc5322_date(at),
                bounce
                    .as_ref()
                    .map(|b| format!(" (bounced as {b})"))
                    .unwrap_or_default()
            ),
            Some((Outcome::Deferred { next, reason }, at)) => format!(
                "deferred at {}: {reason}; next attempt in {}",
                rfc5322_date(at),
                age(next.saturating_sub(now))
            ),
        };
        let _ = writeln!(out, "rcpt: {rcpt}: {state}");
    }
    out
}

fn remove(queue: &QueueDir, id: &str) -> Done {
    if let Err(e) = queue.load(id) {
        return missing(not_found(id, e));
    }
    match queue.remove(id) {
        Ok(true) => {
            log::info!(
                "{id} removed from the queue by uid {}",
                nix::unistd::getuid()
            );
            ok(format!("{id} removed\n"))
        }
        Ok(false) => missing(format!("{id}: not in the queue\n")),
        Err(e) => missing(format!("{id}: {e}\n")),
    }
}

/// Asks the running server to try every queued message now (SIGUSR1 to
/// the supervisor, found through its pid file).
fn flush(state_dir: &Path) -> Done {
    let Some(pid) = pid_file::running(state_dir) else {
        return missing(format!(
            "no gsmtpd runs on the state directory {}\n",
            state_dir.display()
        ));
    };
    match kill(pid, Signal::SIGUSR1) {
        Ok(()) => ok(format!(
            "asked gsmtpd (pid {pid}) to try every queued message now\n"
        )),
        Err(e) => missing(format!("signalling gsmtpd (pid {pid}): {e}\n")),
    }
}

fn not_found(id: &str, e: QueueError) -> String {
    match e {
        QueueError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("{id}: not in the queue\n")
        }
        e => format!("{id}: {e}\n"),
    }
}

/// `45s`, `12m`, `3h`, `2d`, as mailq shows ages.
fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `812`, `4.1K`, `2.0M`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1000 => b.to_string(),
        b if b < 1_000_000 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{:.1}M", b as f64 / (1024.0 * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_what_a_worker_still_holds() {
        let tmp = crate::test_support::TempDir::new("queue-cli");
        let queue = QueueDir::new(tmp.path());
        queue.create().unwrap();
        let empty = list(&queue, 0);
        assert_eq!(empty.output, "0 message(s) in the queue\n");
        std::fs::create_dir(queue.root().join("held-1")).unwrap();
        std::fs::write(queue.root().join("held-1/1tFz3c-0009Ld-0a"), b"x").unwrap();
        let held = list(&queue, 0);
        assert!(
            held.output.ends_with(
                "0 message(s) in the queue\n1 more held for a worker's checkpoint: 1tFz3c-0009Ld-0a\n"
            ),
            "{}",
            held.output
        );
    }

    #[test]
    fn ages_and_sizes_read_like_mailq() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(125), "2m");
        assert_eq!(age(7300), "2h");
        assert_eq!(age(200_000), "2d");
        assert_eq!(size(812), "812");
        assert_eq!(size(4200), "4.1K");
        assert_eq!(size(2_100_000), "2.0M");
    }
}
