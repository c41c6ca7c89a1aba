//! Log lines on stderr through `log` and `env_logger`, level from
//! `RUST_LOG` (default info). Every line names the process that wrote it,
//! `[4711]`, since the supervisor and its children share one stderr; each
//! line goes out in one `write`, so lines of several processes never mix
//! within a line.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU32, Ordering};

/// This process's pid for log lines, read once rather than by a getpid
/// syscall per line (glibc no longer caches it). Set by `init` and, in a
/// forked child, by `os::fork`; 0 means ask the kernel.
static PID: AtomicU32 = AtomicU32::new(0);

/// The pid changed (a fork): log lines name this process from now on.
pub fn set_pid() {
    PID.store(std::process::id(), Ordering::Relaxed);
}

fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => std::process::id(),
        pid => pid,
    }
}

pub fn init() {
    set_pid();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        // As a pipe target, with styles "always" passed through: the default
        // format styles every line and then, when stderr is not a terminal,
        // anstream scans every byte again to strip the styles (a third of
        // the logging cost), and for the stderr target asks the kernel
        // whether stderr is a terminal (an ioctl) for every line.
        .write_style(env_logger::WriteStyle::Always)
        .target(env_logger::Target::Pipe(Box::new(io::stderr())))
        .format(line)
        .init();
}

/// `[2024-01-01T00:00:00Z INFO  target] [4711] message`, continuation
/// lines of a multi-line message indented by 4, as env_logger's default
/// format.
fn line(buf: &mut env_logger::fmt::Formatter, record: &log::Record<'_>) -> io::Result<()> {
    let ts = buf.timestamp_seconds();
    let pid = pid();
    match record.target() {
        "" => write!(buf, "[{ts} {:<5}] [{pid}] ", record.level())?,
        target => write!(buf, "[{ts} {:<5} {target}] [{pid}] ", record.level())?,
    }
    Indent(buf).write_fmt(*record.args())?;
    buf.write_all(b"\n")
}

struct Indent<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Indent<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut lines = bytes.split(|&b| b == b'\n');
        if let Some(first) = lines.next() {
            self.0.write_all(first)?;
        }
        for line in lines {
            self.0.write_all(b"\n    ")?;
            self.0.write_all(line)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The five bits of Exim's `$tls_in_resumption` and `$tls_out_resumption`
/// (resumption supported, client requested a ticket, client offered a
/// session, server issued a ticket, session resumed) as `0x1d(words,...)`.
pub fn resumption_bits(bits: [bool; 5]) -> String {
    const WORDS: [&str; 5] = [
        "supported",
        "client-requested-ticket",
        "client-offered-session",
        "server-issued-ticket",
        "resumed",
    ];
    let value: u32 = bits
        .iter()
        .enumerate()
        .map(|(i, on)| u32::from(*on) << i)
        .sum();
    let words: Vec<&str> = WORDS
        .iter()
        .zip(bits)
        .filter(|(_, on)| *on)
        .map(|(w, _)| *w)
        .collect();
    let words = if words.is_empty() {
        "none".to_string()
    } else {
        words.join(",")
    };
    format!("0x{value:02x}({words})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_lines_are_indented_like_env_logger() {
        let mut out = Vec::new();
        let arg = String::from("three\nfour");
        write!(Indent(&mut out), "one\ntwo\n{arg}").unwrap();
        assert_eq!(out, b"one\n    two\n    three\n    four");
    }
}
