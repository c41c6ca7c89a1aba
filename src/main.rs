//! gsmtpd: an SMTP server with STARTTLS and implicit TLS over GnuTLS.

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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
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
