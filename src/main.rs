//! gsmtpd: an SMTP server with STARTTLS and implicit TLS over GnuTLS.

use std::process::ExitCode;

use gsmtpd::config::{self, Command};
use gsmtpd::{clock, logging, queue, supervisor, ticket_key_file, tls};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match config::parse(&args) {
        Ok(Command::Run(config)) => {
            logging::init();
            match supervisor::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(Command::Queue { action, state_dir }) => {
            logging::init();
            let done = queue::cli::run(&action, &state_dir, clock::unix_secs());
            let text = done.output;
            if done.status == 0 {
                print!("{text}");
            } else {
                eprint!("gsmtpd: {text}");
            }
            ExitCode::from(done.status)
        }
        Ok(Command::RotateTicketKeys {
            file,
            rotation,
            lifetime,
        }) => {
            let rotated = tls::init().map_err(|e| e.to_string()).and_then(|_| {
                ticket_key_file::rotate(&file, rotation, lifetime, clock::unix_secs())
            });
            match rotated {
                Ok(report) => {
                    println!("{}: {report}", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gsmtpd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(Command::Help(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!(
                "gsmtpd {} (GnuTLS {} at run time, built against {})",
                env!("CARGO_PKG_VERSION"),
                tls::runtime_version(),
                env!("GSMTPD_GNUTLS_BUILD_VERSION")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gsmtpd: {e}");
            eprintln!("Try 'gsmtpd --help' for the list of flags.");
            ExitCode::from(2)
        }
    }
}
