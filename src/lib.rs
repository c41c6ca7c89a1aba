//! gsmtpd: an SMTP server with STARTTLS and implicit TLS over GnuTLS.
//!
//! The binary (`src/main.rs`) parses the command line and runs the
//! supervisor (`supervisor`), which forks the workers (`server`); the
//! library exposes the layers so that fuzz targets and benchmarks can drive
//! them directly. `unsafe` lives in `ffi`, `tls` and `os` only.

pub mod client_cache;
pub mod clock;
pub mod config;
pub mod conn_limits;
pub mod control;
pub mod default_cert;
pub mod dns;
pub mod dsn;
pub mod ffi;
pub mod fuzz_support;
pub mod hostlist;
pub mod logging;
pub mod os;
pub mod outbound;
pub mod pid_file;
pub mod privileges;
pub mod queue;
pub mod received;
pub mod routing;
pub mod sd_notify;
pub mod server;
pub mod session_cache;
pub mod signals;
pub mod smtp;
pub mod smtp_client;
pub mod sqlite_file;
pub mod store;
pub mod supervisor;
pub mod ticket_key_file;
pub mod tls;
pub mod wal;

#[cfg(test)]
mod test_support;
