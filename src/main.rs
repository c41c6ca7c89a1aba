//! gsmtpd: an SMTP server with STARTTLS and implicit TLS over GnuTLS.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use gsmtpd::config::{self, Command};
use gsmtpd::{server, tls};

/// The oldest GnuTLS gsmtpd runs with; the build refuses older headers,
/// this catches an older library at run time.
const MIN_RUNTIME_GNUTLS: (u32, u32, u32) = (3, 6, 3);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match config::parse(&args) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!(
                "gsmtpd {} (GnuTLS {} at run time, built against {})",
                env!("CARGO_PKG_VERSION"),
                tls::runtime_version(),
                env!("GSMTPD_GNUTLS_BUILD_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gsmtpd: {e}");
            eprintln!("Try 'gsmtpd --help' for the list of flags.");
            return ExitCode::from(2);
        }
    };
    init_logging();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// env_logger on stderr, level from RUST_LOG (default info). Not on a
/// terminal, lines are formatted plainly, exactly as env_logger's default
/// format would print them without colours: its default format styles every
/// line and then, because stderr is not a terminal, anstream scans every byte
/// again to strip the styles out, which was a third of the logging cost (of
/// three lines per connection), plus an ioctl per line.
fn init_logging() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    let styles_wanted = std::env::var_os("RUST_LOG_STYLE").is_some();
    if !styles_wanted && !std::io::stderr().is_terminal() {
        // As a pipe target, with styles "always" passed through: for the
        // stderr target anstream would ask the kernel whether stderr is a
        // terminal (an ioctl) for every line.
        builder
            .write_style(env_logger::WriteStyle::Always)
            .target(env_logger::Target::Pipe(Box::new(io::stderr())))
            .format(plain_line);
    }
    builder.init();
}

/// `[2024-01-01T00:00:00Z INFO  target] message`, continuation lines of a
/// multi-line message indented by 4, as env_logger's default format.
fn plain_line(buf: &mut env_logger::fmt::Formatter, record: &log::Record<'_>) -> io::Result<()> {
    let ts = buf.timestamp_seconds();
    match record.target() {
        "" => write!(buf, "[{ts} {:<5}] ", record.level())?,
        target => write!(buf, "[{ts} {:<5} {target}] ", record.level())?,
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

fn run(config: &config::Config) -> Result<(), String> {
    let version = tls::init().map_err(|e| e.to_string())?;
    if tls::version_tuple(version) < MIN_RUNTIME_GNUTLS {
        return Err(format!(
            "GnuTLS {version} is too old: gsmtpd needs 3.6.3 or newer"
        ));
    }
    let mut server = server::Server::bind(config)?;
    let addrs: Vec<String> = server
        .local_addrs()
        .iter()
        .map(|(addr, implicit)| {
            if *implicit {
                format!("{addr} (TLS)")
            } else {
                addr.to_string()
            }
        })
        .collect();
    log::info!(
        "gsmtpd {} (GnuTLS {version}) as {}: listening on {}",
        env!("CARGO_PKG_VERSION"),
        config.hostname,
        addrs.join(", ")
    );
    server.run().map_err(|e| format!("event loop: {e}"))
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
