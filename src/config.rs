//! The command line, parsed and validated once into a plain `Config`.
//! Nothing downstream looks at flags again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use getopts::{Matches, Options};

use crate::hostlist::HostList;
use crate::privileges::Account;
use crate::routing::{Route, TlsPolicy};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:2525";
/// Server precedence: the server's order of suites (AEAD first) decides, not a
/// client that lists CBC first. With it the server's order of key-exchange
/// groups decides too, and GnuTLS asks a TLS 1.3 client for another key
/// share (a HelloRetryRequest, one more round trip) when the client sent
/// none for the server's first group: X25519 comes first, the share OpenSSL,
/// rustls, Go and NSS clients send (NORMAL starts with SECP256R1). TLS 1.0
/// and 1.1 are off; the rest of NORMAL stays, since for opportunistic TLS a
/// weaker suite beats plaintext.
pub const DEFAULT_PRIORITY: &str =
    "NORMAL:%SERVER_PRECEDENCE:-VERS-TLS1.0:-VERS-TLS1.1:-GROUP-ALL:+GROUP-X25519:+GROUP-ALL";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// DER OCSP response to staple with this certificate.
    pub ocsp: Option<PathBuf>,
}

/// RFC 5321 4.5.3.2 timeouts, plus the ones TLS and shutdown need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for a command (RFC 5321: 5 minutes).
    pub command: Duration,
    /// Waiting for the next block of message data (RFC 5321: 3 minutes).
    pub data: Duration,
    /// The whole of one message's data, however it trickles in.
    pub message: Duration,
    /// A whole TLS handshake; GnuTLS has no timeout of its own.
    pub handshake: Duration,
    /// How long SIGTERM waits for transactions in progress.
    pub shutdown: Duration,
}

/// TLS session resumption settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumption {
    /// Seconds one ticket master encrypts new tickets before a fresh one
    /// replaces it.
    pub ticket_rotation: u64,
    /// Seconds an issued ticket or cached session may be resumed.
    pub ticket_lifetime: u64,
    pub tickets: bool,
    /// Masters from this file (shared with other hosts) instead of the
    /// supervisor's own rotation.
    pub ticket_key_file: Option<PathBuf>,
    /// The TLS 1.2 session-ID cache; None with `--session-cache none`.
    pub session_cache: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    /// Empty: use the generated self-signed certificate.
    pub certs: Vec<CertPair>,
    pub state_dir: PathBuf,
    pub maildir: PathBuf,
    /// Lowercase; recipients in other domains are refused.
    pub domains: Vec<String>,
    pub hostname: String,
    pub tls_priority: String,
    pub resumption: Resumption,
    /// Clients to which PIPECONNECT (early pipelining) is advertised.
    pub pipe_connect_hosts: HostList,
    pub max_message_size: u64,
    pub max_connections: usize,
    /// Concurrent connections from one client address.
    pub max_per_ip: usize,
    pub max_recipients: usize,
    pub timeouts: Timeouts,
    /// Give up root for this account once the listeners are bound.
    pub user: Option<Account>,
    /// Worker processes serving connections.
    pub workers: usize,
    /// Clients that may send to any domain (mail for others is queued).
    pub relay_from: HostList,
    pub sending: Sending,
    pub durability: Durability,
    /// `--wal-dir`: the write-ahead logs (`worker-N`, `delivery`). Read at
    /// start under either `--durability`, so that what a log holds is
    /// recovered after a switch back to `sync`.
    pub wal_dir: PathBuf,
}

/// How a group commit makes its messages durable before their 250s
/// (README, "Durability": why `log` is the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// `sync`: every file and name synced (`syncfs` twice per group).
    Sync,
    /// `log`: files linked unsynced and their records made durable in a
    /// write-ahead log (one `fdatasync` per group), each process's own
    /// under `Config::wal_dir`; a checkpoint syncs the files every
    /// `checkpoint`.
    Log { checkpoint: Duration },
}

/// How mail for other domains is sent onward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sending {
    /// `--route`, in order: the first whose pattern matches decides.
    pub routes: Vec<Route>,
    /// `--tls-policy`, in order; `may` where none matches.
    pub tls_policies: Vec<TlsPolicy>,
    /// Trust anchors for `verify`; None: the system's store.
    pub ca_file: Option<PathBuf>,
    /// Resolvers for MX/A/AAAA; empty: those of /etc/resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    /// First wait after a deferral; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// After this, a message still undeliverable is bounced.
    pub queue_lifetime: Duration,
    /// Outbound TLS sessions; None with `--client-cache none`.
    pub client_cache: Option<PathBuf>,
    /// How long a next hop's EHLO response is trusted for early pipelining.
    pub ehlo_cache_expire: Duration,
}

/// Most worker processes; far beyond the cores of any MX host.
pub const MAX_WORKERS: usize = 256;

pub enum Command {
    Run(Box<Config>),
    /// `gsmtpd queue list|show ID|flush|remove ID`, on `state_dir`.
    Queue {
        action: QueueAction,
        state_dir: PathBuf,
    },
    /// `gsmtpd ticket-key rotate FILE`.
    RotateTicketKeys {
        file: PathBuf,
        rotation: u64,
        lifetime: u64,
    },
    Help(String),
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueAction {
    List,
    Show(String),
    Flush,
    Remove(String),
}

/// A bad flag or value: one line naming the flag; the caller exits 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn options() -> Options {
    let mut o = Options::new();
    o.optmulti(
        "",
        "listen",
        "plain SMTP listener offering STARTTLS (default 127.0.0.1:2525)",
        "ADDR:PORT",
    );
    o.optmulti(
        "",
        "listen-tls",
        "implicit-TLS listener (RFC 8314)",
        "ADDR:PORT",
    );
    o.optmulti(
        "",
        "cert",
        "PEM certificate chain (paired in order with --key)",
        "FILE",
    );
    o.optmulti(
        "",
        "key",
        "PEM private key for the --cert at the same position",
        "FILE",
    );
    o.optmulti(
        "",
        "ocsp",
        "DER OCSP response to staple for the --cert at the same position (none: skip)",
        "FILE",
    );
    o.optopt(
        "",
        "state-dir",
        "state directory (default ./gsmtpd-state)",
        "DIR",
    );
    o.optopt(
        "",
        "maildir",
        "root of the Maildir store (default STATE_DIR/mail)",
        "DIR",
    );
    o.optmulti(
        "",
        "domain",
        "accepted recipient domain (default localhost and the host name)",
        "NAME",
    );
    o.optopt(
        "",
        "hostname",
        "name in banner, EHLO and Received (default: system host name)",
        "NAME",
    );
    o.optopt(
        "",
        "tls-priority",
        "GnuTLS priority string (default NORMAL:%SERVER_PRECEDENCE:-VERS-TLS1.0:-VERS-TLS1.1:\
         -GROUP-ALL:+GROUP-X25519:+GROUP-ALL)",
        "STRING",
    );
    o.optopt(
        "",
        "pipe-connect-hosts",
        "clients offered PIPECONNECT: addresses/CIDRs, * or empty (default *)",
        "LIST",
    );
    o.optopt(
        "",
        "ticket-rotation",
        "seconds one ticket key issues tickets (default 21600)",
        "SECONDS",
    );
    o.optopt(
        "",
        "ticket-lifetime",
        "seconds a ticket or cached session may resume (default 7200)",
        "SECONDS",
    );
    o.optflag(
        "",
        "no-tickets",
        "issue no session tickets (TLS 1.2 session IDs still resume)",
    );
    o.optopt(
        "",
        "ticket-key-file",
        "ticket masters shared with other hosts, rotated by 'gsmtpd ticket-key rotate FILE'",
        "FILE",
    );
    o.optopt(
        "",
        "relay-from",
        "clients (addresses/CIDRs, comma list) that may send to any domain (default: none)",
        "LIST",
    );
    o.optmulti(
        "",
        "route",
        "where mail for matching domains goes: PATTERN=[HOST]:PORT, HOST (MX), smtps:... (default: MX)",
        "PATTERN=NEXTHOP",
    );
    o.optmulti(
        "",
        "tls-policy",
        "TLS toward matching next hops: PATTERN=none|may|encrypt|verify[+ocsp] (default *=may)",
        "PATTERN=LEVEL",
    );
    o.optopt(
        "",
        "ca-file",
        "trust anchors for --tls-policy verify (default: the system store)",
        "FILE",
    );
    o.optmulti(
        "",
        "dns-server",
        "resolver for MX/A/AAAA lookups (default: /etc/resolv.conf's)",
        "ADDR[:PORT]",
    );
    o.optopt(
        "",
        "retry-min",
        "first wait after a deferred delivery, doubling (default 300)",
        "SECONDS",
    );
    o.optopt(
        "",
        "retry-max",
        "longest wait between delivery attempts (default 4000)",
        "SECONDS",
    );
    o.optopt(
        "",
        "queue-lifetime",
        "after this a message still undeliverable is bounced (default 432000)",
        "SECONDS",
    );
    o.optopt(
        "",
        "client-cache",
        "SQLite cache of outbound TLS sessions and EHLO responses, or none (default STATE_DIR/client-cache.sqlite)",
        "FILE",
    );
    o.optopt(
        "",
        "ehlo-cache-expire",
        "how long a next hop's EHLO response is trusted for early pipelining (default 604800)",
        "SECONDS",
    );
    o.optopt(
        "",
        "durability",
        "how a message is durable before its 250: log (a write-ahead log) or sync (every file synced) (default log)",
        "sync|log",
    );
    o.optopt(
        "",
        "wal-dir",
        "where --durability log keeps its logs (default STATE_DIR/wal)",
        "DIR",
    );
    o.optopt(
        "",
        "checkpoint-interval",
        "with --durability log, how often the logged files are synced and the log freed (default 2)",
        "SECONDS",
    );
    o.optopt(
        "",
        "workers",
        "worker processes (default: the CPUs gsmtpd may run on)",
        "N",
    );
    o.optopt(
        "",
        "session-cache",
        "SQLite TLS 1.2 session cache, or none (default STATE_DIR/sessions.sqlite)",
        "FILE",
    );
    o.optopt(
        "",
        "max-message-size",
        "advertised in SIZE and enforced (default 52428800)",
        "BYTES",
    );
    o.optopt(
        "",
        "max-connections",
        "concurrent connections; beyond it 421 (default 1000)",
        "N",
    );
    o.optopt(
        "",
        "max-per-ip",
        "concurrent connections from one address; beyond it 421 (default 20)",
        "N",
    );
    o.optopt(
        "",
        "message-timeout",
        "seconds for the whole data of one message (default 1800)",
        "SECONDS",
    );
    o.optopt(
        "",
        "max-recipients",
        "recipients per message; beyond it 452 (default 100)",
        "N",
    );
    o.optopt(
        "",
        "command-timeout",
        "seconds to wait for a command (default 300)",
        "SECONDS",
    );
    o.optopt(
        "",
        "data-timeout",
        "seconds to wait for each data block (default 180)",
        "SECONDS",
    );
    o.optopt(
        "",
        "handshake-timeout",
        "seconds for a whole TLS handshake (default 60)",
        "SECONDS",
    );
    o.optopt(
        "",
        "shutdown-timeout",
        "seconds SIGTERM waits for transactions (default 30)",
        "SECONDS",
    );
    o.optopt(
        "",
        "user",
        "drop root for this user after binding the listeners and loading keys",
        "NAME",
    );
    o.optflag("h", "help", "print this help");
    o.optflag(
        "V",
        "version",
        "print the version and the GnuTLS version in use",
    );
    o
}

pub fn usage() -> String {
    options().usage(
        "Usage: gsmtpd [OPTIONS]\n       gsmtpd queue list|show ID|flush|remove ID [--state-dir DIR]\n       \
         gsmtpd ticket-key rotate FILE [--ticket-rotation S] [--ticket-lifetime S]\n\n\
         SMTP server with STARTTLS and implicit TLS over GnuTLS.",
    )
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    let m = options()
        .parse(args)
        .map_err(|e| UsageError(e.to_string()))?;
    if m.opt_present("help") {
        return Ok(Command::Help(usage()));
    }
    if m.opt_present("version") {
        return Ok(Command::Version);
    }
    match m.free.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => build(&m).map(|c| Command::Run(Box::new(c))),
        ["ticket-key", "rotate", file] => Ok(Command::RotateTicketKeys {
            file: PathBuf::from(file),
            rotation: number(&m, "ticket-rotation", DEFAULT_ROTATION, 1)?,
            lifetime: number(&m, "ticket-lifetime", DEFAULT_LIFETIME, 1)?,
        }),
        ["ticket-key", ..] => Err(UsageError(
            "ticket-key: the command is 'gsmtpd ticket-key rotate FILE'".into(),
        )),
        ["queue", ref rest @ ..] => {
            let action = match rest {
                ["list"] => QueueAction::List,
                ["show", id] => QueueAction::Show(id.to_string()),
                ["flush"] => QueueAction::Flush,
                ["remove", id] => QueueAction::Remove(id.to_string()),
                _ => {
                    return Err(UsageError(
                        "queue: the commands are 'queue list', 'queue show ID', \
                         'queue flush' and 'queue remove ID'"
                            .into(),
                    ));
                }
            };
            Ok(Command::Queue {
                action,
                state_dir: state_dir_flag(&m),
            })
        }
        [extra, ..] => Err(UsageError(format!("unexpected argument '{extra}'"))),
    }
}

fn state_dir_flag(m: &Matches) -> PathBuf {
    PathBuf::from(
        m.opt_str("state-dir")
            .unwrap_or_else(|| "./gsmtpd-state".into()),
    )
}

const DEFAULT_ROTATION: u64 = 21_600;
const DEFAULT_LIFETIME: u64 = 7_200;

/// The CPUs this process may run on (its affinity mask), as a worker
/// count: on a host shared with other services the operator pins gsmtpd
/// with taskset or systemd's CPUAffinity=, and gsmtpd follows.
fn cpus_allowed() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .unwrap_or(1)
        .clamp(1, MAX_WORKERS)
}

fn build(m: &Matches) -> Result<Config, UsageError> {
    let mut listen = addresses(m, "listen")?;
    let listen_tls = addresses(m, "listen-tls")?;
    if listen.is_empty() && listen_tls.is_empty() {
        listen.push(SocketAddr::from_str(DEFAULT_LISTEN).map_err(|e| UsageError(e.to_string()))?);
    }
    let state_dir = absolute("state-dir", state_dir_flag(m))?;
    let maildir = match m.opt_str("maildir") {
        Some(dir) => absolute("maildir", dir.into())?,
        None => state_dir.join("mail"),
    };
    let hostname = match m.opt_str("hostname") {
        Some(h) => checked_name("hostname", &h)?,
        None => system_hostname(),
    };
    let domains = match m.opt_strs("domain") {
        d if d.is_empty() => default_domains(&hostname),
        d => d
            .iter()
            .map(|n| checked_name("domain", n))
            .collect::<Result<_, _>>()?,
    };
    let tls_priority = m
        .opt_str("tls-priority")
        .unwrap_or_else(|| DEFAULT_PRIORITY.into());
    if tls_priority.is_empty() || tls_priority.contains('\0') {
        return Err(UsageError(
            "--tls-priority: must be a non-empty GnuTLS priority string".into(),
        ));
    }
    let session_cache = file_or_none(m, "session-cache", state_dir.join("sessions.sqlite"))?;
    let resumption = Resumption {
        ticket_rotation: number(m, "ticket-rotation", DEFAULT_ROTATION, 1)?,
        ticket_lifetime: number(m, "ticket-lifetime", DEFAULT_LIFETIME, 1)?,
        tickets: !m.opt_present("no-tickets"),
        ticket_key_file: m.opt_str("ticket-key-file").map(PathBuf::from),
        session_cache,
    };
    if !resumption.tickets && resumption.ticket_key_file.is_some() {
        return Err(UsageError(
            "--ticket-key-file: tickets are off (--no-tickets), so no ticket key file is read"
                .into(),
        ));
    }
    let workers = match m.opt_str("workers") {
        None => cpus_allowed(),
        Some(_) => number(m, "workers", 1, 1)?,
    };
    if workers > MAX_WORKERS {
        return Err(UsageError(format!(
            "--workers: at most {MAX_WORKERS} worker processes"
        )));
    }
    let relay_from = HostList::parse(&m.opt_str("relay-from").unwrap_or_default())
        .map_err(|e| UsageError(format!("--relay-from: {e}")))?;
    let sending = Sending {
        routes: each(m, "route", Route::parse)?,
        tls_policies: each(m, "tls-policy", TlsPolicy::parse)?,
        ca_file: m.opt_str("ca-file").map(PathBuf::from),
        dns_servers: each(m, "dns-server", crate::dns::parse_server)?,
        retry_min: seconds(m, "retry-min", 300)?,
        retry_max: seconds(m, "retry-max", 4000)?,
        queue_lifetime: seconds(m, "queue-lifetime", 432_000)?,
        client_cache: file_or_none(m, "client-cache", state_dir.join("client-cache.sqlite"))?,
        ehlo_cache_expire: seconds(m, "ehlo-cache-expire", 604_800)?,
    };
    if sending.retry_max < sending.retry_min {
        return Err(UsageError(
            "--retry-max: must not be shorter than --retry-min".into(),
        ));
    }
    let pipe_connect_hosts = HostList::parse(
        &m.opt_str("pipe-connect-hosts")
            .unwrap_or_else(|| "*".into()),
    )
    .map_err(|e| UsageError(format!("--pipe-connect-hosts: {e}")))?;
    let user = match m.opt_str("user") {
        Some(name) => Some(Account::lookup(&name).map_err(|e| UsageError(format!("--user: {e}")))?),
        None => None,
    };
    let durability = durability(m)?;
    let wal_dir = match m.opt_str("wal-dir") {
        Some(dir) => absolute("wal-dir", dir.into())?,
        None => state_dir.join("wal"),
    };
    Ok(Config {
        listen,
        listen_tls,
        certs: cert_pairs(m)?,
        state_dir,
        maildir,
        domains,
        hostname,
        tls_priority,
        resumption,
        pipe_connect_hosts,
        max_message_size: number(m, "max-message-size", 52_428_800, 1)?,
        max_connections: number(m, "max-connections", 1000, 1)?,
        max_per_ip: number(m, "max-per-ip", 20, 1)?,
        max_recipients: number(m, "max-recipients", 100, 1)?,
        timeouts: Timeouts {
            command: seconds(m, "command-timeout", 300)?,
            data: seconds(m, "data-timeout", 180)?,
            message: seconds(m, "message-timeout", 1800)?,
            handshake: seconds(m, "handshake-timeout", 60)?,
            shutdown: seconds(m, "shutdown-timeout", 30)?,
        },
        user,
        workers,
        relay_from,
        sending,
        durability,
        wal_dir,
    })
}

fn durability(m: &Matches) -> Result<Durability, UsageError> {
    let checkpoint = seconds(m, "checkpoint-interval", 2)?;
    match m.opt_str("durability").as_deref() {
        Some("sync") => Ok(Durability::Sync),
        None | Some("log") => Ok(Durability::Log { checkpoint }),
        Some(other) => Err(UsageError(format!(
            "--durability: {other:?} is not sync or log"
        ))),
    }
}

/// Every value of a repeatable flag, parsed; an error names the flag.
fn each<T>(
    m: &Matches,
    flag: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, UsageError> {
    m.opt_strs(flag)
        .iter()
        .map(|s| parse(s).map_err(|e| UsageError(format!("--{flag}: {e}"))))
        .collect()
}

fn addresses(m: &Matches, flag: &str) -> Result<Vec<SocketAddr>, UsageError> {
    m.opt_strs(flag)
        .iter()
        .map(|s| {
            SocketAddr::from_str(s).map_err(|_| {
                UsageError(format!(
                    "--{flag}: '{s}' is not ADDR:PORT (for example 127.0.0.1:2525 or [::1]:2525)"
                ))
            })
        })
        .collect()
}

fn cert_pairs(m: &Matches) -> Result<Vec<CertPair>, UsageError> {
    let certs = m.opt_strs("cert");
    let keys = m.opt_strs("key");
    let mut ocsp = m.opt_strs("ocsp").into_iter();
    if ocsp.len() > certs.len() {
        return Err(UsageError(format!(
            "--ocsp: each --ocsp pairs with the --cert in the same position ({} --ocsp, {} --cert)",
            ocsp.len(),
            certs.len()
        )));
    }
    if certs.len() != keys.len() {
        let flag = if certs.len() > keys.len() {
            "--cert"
        } else {
            "--key"
        };
        return Err(UsageError(format!(
            "{flag}: every --cert needs a --key in the same position ({} --cert, {} --key)",
            certs.len(),
            keys.len()
        )));
    }
    Ok(certs
        .into_iter()
        .zip(keys)
        .map(|(c, k)| CertPair {
            cert: c.into(),
            key: k.into(),
            // "none" (or empty) keeps a later --ocsp paired with a later --cert.
            ocsp: ocsp
                .next()
                .filter(|o| !o.is_empty() && o != "none")
                .map(PathBuf::from),
        })
        .collect())
}

fn number<T: FromStr + PartialOrd + Copy + std::fmt::Display>(
    m: &Matches,
    flag: &str,
    default: T,
    min: T,
) -> Result<T, UsageError> {
    let Some(text) = m.opt_str(flag) else {
        return Ok(default);
    };
    match text.parse::<T>() {
        Ok(v) if v >= min => Ok(v),
        _ => Err(UsageError(format!(
            "--{flag}: '{text}' is not a whole number of at least {min}"
        ))),
    }
}

/// A directory whose files' names outlive this process: the write-ahead
/// log records them, and a recovery started from another working
/// directory must find the same files.
fn absolute(flag: &str, dir: PathBuf) -> Result<PathBuf, UsageError> {
    std::path::absolute(&dir).map_err(|e| UsageError(format!("--{flag}: {e}")))
}

/// A file flag that also takes `none`.
fn file_or_none(m: &Matches, flag: &str, default: PathBuf) -> Result<Option<PathBuf>, UsageError> {
    match m.opt_str(flag).as_deref() {
        Some("none") => Ok(None),
        Some("") => Err(UsageError(format!("--{flag}: give a file name or none"))),
        Some(path) => Ok(Some(PathBuf::from(path))),
        None => Ok(Some(default)),
    }
}

fn seconds(m: &Matches, flag: &str, default: u64) -> Result<Duration, UsageError> {
    number(m, flag, default, 1).map(Duration::from_secs)
}

/// A DNS name (hostname or mail domain) as it may appear in replies and
/// directory names: letters, digits, '-', '.', no leading dot.
fn checked_name(flag: &str, name: &str) -> Result<String, UsageError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(UsageError(format!(
            "--{flag}: '{name}' is not a valid domain name"
        )))
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| checked_name("hostname", h.trim()).ok())
        .unwrap_or_else(|| "localhost".into())
}

fn default_domains(hostname: &str) -> Vec<String> {
    let mut d = vec!["localhost".to_string()];
    if hostname != "localhost" {
        d.push(hostname.to_string());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, UsageError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args)? {
            Command::Run(c) => Ok(*c),
            _ => panic!("not a run command"),
        }
    }

    fn error(args: &[&str]) -> String {
        run(args).err().map(|e| e.0).unwrap_or_default()
    }

    /// Where relative directories are taken from.
    fn here() -> PathBuf {
        std::env::current_dir().unwrap()
    }

    #[test]
    fn defaults() {
        let c = run(&["--hostname", "mx.example.org"]).unwrap();
        assert_eq!(
            c.listen,
            vec![SocketAddr::from_str("127.0.0.1:2525").unwrap()]
        );
        assert!(c.listen_tls.is_empty());
        let state = here().join("gsmtpd-state");
        assert_eq!(c.state_dir, state);
        assert_eq!(c.maildir, state.join("mail"));
        assert_eq!(c.domains, vec!["localhost", "mx.example.org"]);
        assert_eq!(c.tls_priority, DEFAULT_PRIORITY);
        assert_eq!(c.max_message_size, 52_428_800);
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.timeouts.command, Duration::from_secs(300));
        assert_eq!(c.timeouts.data, Duration::from_secs(180));
        assert_eq!(
            c.resumption,
            Resumption {
                ticket_rotation: 21_600,
                ticket_lifetime: 7_200,
                tickets: true,
                ticket_key_file: None,
                session_cache: Some(state.join("sessions.sqlite")),
            }
        );
        assert_eq!(c.workers, cpus_allowed());
        assert!(c.workers >= 1);
    }

    #[test]
    fn workers_and_ticket_key_file() {
        let c = run(&["--workers", "3", "--ticket-key-file", "/run/gsmtpd/keys"]).unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(
            c.resumption.ticket_key_file,
            Some(PathBuf::from("/run/gsmtpd/keys"))
        );
        assert!(error(&["--workers", "0"]).starts_with("--workers:"));
        assert!(error(&["--workers", "257"]).starts_with("--workers:"));
        assert!(
            error(&["--no-tickets", "--ticket-key-file", "k"]).starts_with("--ticket-key-file:")
        );
    }

    #[test]
    fn sending_flags() {
        let c = run(&[]).unwrap();
        assert!(
            !c.relay_from.matches("127.0.0.1".parse().unwrap()),
            "no relaying by default"
        );
        assert_eq!(c.sending.retry_min, Duration::from_secs(300));
        assert_eq!(c.sending.retry_max, Duration::from_secs(4000));
        assert_eq!(c.sending.queue_lifetime, Duration::from_secs(432_000));
        assert!(c.sending.dns_servers.is_empty() && c.sending.ca_file.is_none());
        assert_eq!(
            c.sending.client_cache,
            Some(here().join("gsmtpd-state/client-cache.sqlite"))
        );
        assert_eq!(
            run(&["--client-cache", "none"])
                .unwrap()
                .sending
                .client_cache,
            None
        );
        assert!(error(&["--client-cache", ""]).starts_with("--client-cache:"));
        assert_eq!(c.sending.ehlo_cache_expire, Duration::from_secs(604_800));
        assert_eq!(
            run(&["--ehlo-cache-expire", "60"])
                .unwrap()
                .sending
                .ehlo_cache_expire,
            Duration::from_secs(60)
        );
        assert!(error(&["--ehlo-cache-expire", "0"]).starts_with("--ehlo-cache-expire:"));
        let c = run(&[
            "--relay-from",
            "127.0.0.0/8,::1",
            "--dns-server",
            "127.0.0.1:5353",
            "--dns-server",
            "::1",
            "--ca-file",
            "ca.pem",
            "--retry-min",
            "1",
            "--retry-max",
            "8",
        ])
        .unwrap();
        assert!(c.relay_from.matches("127.0.0.9".parse().unwrap()));
        assert_eq!(
            c.sending.dns_servers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(error(&["--dns-server", "ns.example"]).starts_with("--dns-server:"));
        let c = run(&[
            "--route",
            ".example=[127.0.0.1]:2525",
            "--route",
            "*=smtps:relay.example",
            "--tls-policy",
            ".example=verify+ocsp",
        ])
        .unwrap();
        assert_eq!(c.sending.routes.len(), 2);
        assert_eq!(c.sending.tls_policies.len(), 1);
        assert!(error(&["--route", "nonsense"]).starts_with("--route:"));
        assert!(error(&["--tls-policy", "*=maybe"]).starts_with("--tls-policy:"));
        assert!(error(&["--relay-from", "x"]).starts_with("--relay-from:"));
        assert!(error(&["--retry-min", "10", "--retry-max", "5"]).starts_with("--retry-max:"));
    }

    #[test]
    fn ticket_key_rotate_command() {
        let args: Vec<String> = ["ticket-key", "rotate", "/run/k", "--ticket-rotation", "60"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match parse(&args) {
            Ok(Command::RotateTicketKeys {
                file,
                rotation,
                lifetime,
            }) => {
                assert_eq!(file, PathBuf::from("/run/k"));
                assert_eq!((rotation, lifetime), (60, 7_200));
            }
            _ => panic!("not the rotate command"),
        }
        let bad: Vec<String> = vec!["ticket-key".into(), "spin".into()];
        assert!(parse(&bad).err().unwrap().0.starts_with("ticket-key:"));
    }

    #[test]
    fn queue_commands() {
        let parse_args = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            parse(&args)
        };
        match parse_args(&["queue", "show", "abc", "--state-dir", "/var/lib/g"]) {
            Ok(Command::Queue { action, state_dir }) => {
                assert_eq!(action, QueueAction::Show("abc".into()));
                assert_eq!(state_dir, PathBuf::from("/var/lib/g"));
            }
            _ => panic!("not a queue command"),
        }
        for (args, action) in [
            (&["queue", "list"][..], QueueAction::List),
            (&["queue", "flush"][..], QueueAction::Flush),
            (
                &["queue", "remove", "x"][..],
                QueueAction::Remove("x".into()),
            ),
        ] {
            match parse_args(args) {
                Ok(Command::Queue { action: a, .. }) => assert_eq!(a, action),
                _ => panic!("{args:?}"),
            }
        }
        for bad in [&["queue"][..], &["queue", "show"], &["queue", "list", "x"]] {
            assert!(
                parse_args(bad).err().unwrap().0.starts_with("queue:"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn help_names_the_default_priority() {
        assert!(usage().contains(DEFAULT_PRIORITY), "{}", usage());
    }

    #[test]
    fn durability_flags() {
        assert_eq!(
            run(&[]).unwrap().durability,
            Durability::Log {
                checkpoint: Duration::from_secs(2),
            }
        );
        assert_eq!(
            run(&["--durability", "sync"]).unwrap().durability,
            Durability::Sync
        );
        assert_eq!(run(&[]).unwrap().wal_dir, here().join("gsmtpd-state/wal"));
        // Relative directories are taken from where gsmtpd starts, once.
        let c = run(&["--wal-dir", "w", "--maildir", "./m"]).unwrap();
        assert_eq!((c.wal_dir, c.maildir), (here().join("w"), here().join("m")));
        assert!(error(&["--state-dir", ""]).starts_with("--state-dir:"));
        let c = run(&[
            "--durability",
            "log",
            "--wal-dir",
            "/var/lib/gsmtpd-wal",
            "--checkpoint-interval",
            "10",
        ])
        .unwrap();
        assert_eq!(
            c.durability,
            Durability::Log {
                checkpoint: Duration::from_secs(10),
            }
        );
        assert_eq!(c.wal_dir, PathBuf::from("/var/lib/gsmtpd-wal"));
        assert!(error(&["--durability", "fsync"]).starts_with("--durability:"));
        assert!(error(&["--checkpoint-interval", "0"]).starts_with("--checkpoint-interval:"));
    }

    #[test]
    fn resumption_flags() {
        let c = run(&[
            "--no-tickets",
            "--session-cache",
            "none",
            "--ticket-rotation",
            "2",
            "--ticket-lifetime",
            "5",
        ])
        .unwrap();
        assert!(!c.resumption.tickets);
        assert_eq!(c.resumption.session_cache, None);
        assert_eq!(
            (c.resumption.ticket_rotation, c.resumption.ticket_lifetime),
            (2, 5)
        );
        assert!(error(&["--ticket-lifetime", "0"]).starts_with("--ticket-lifetime:"));
        assert!(error(&["--session-cache", ""]).starts_with("--session-cache:"));
    }

    #[test]
    fn tls_listener_alone_replaces_default_listener() {
        let c = run(&["--listen-tls", "[::1]:4650"]).unwrap();
        assert!(c.listen.is_empty());
        assert_eq!(
            c.listen_tls,
            vec![SocketAddr::from_str("[::1]:4650").unwrap()]
        );
    }

    #[test]
    fn repeatable_flags_keep_order() {
        let c = run(&[
            "--cert",
            "a.pem",
            "--key",
            "a.key",
            "--cert",
            "b.pem",
            "--key",
            "b.key",
            "--domain",
            "Example.ORG",
            "--domain",
            "example.net",
            "--state-dir",
            "/var/lib/g",
        ])
        .unwrap();
        assert_eq!(
            c.certs[1],
            CertPair {
                cert: "b.pem".into(),
                key: "b.key".into(),
                ocsp: None,
            }
        );
        assert_eq!(c.domains, vec!["example.org", "example.net"]);
        assert_eq!(c.maildir, PathBuf::from("/var/lib/g/mail"));
    }

    #[test]
    fn pipe_connect_hosts() {
        let ip = |s: &str| s.parse().unwrap();
        assert!(
            run(&[])
                .unwrap()
                .pipe_connect_hosts
                .matches(ip("192.0.2.1")),
            "default *"
        );
        assert!(
            !run(&["--pipe-connect-hosts", ""])
                .unwrap()
                .pipe_connect_hosts
                .matches(ip("127.0.0.1"))
        );
        assert!(error(&["--pipe-connect-hosts", "nonsense"]).starts_with("--pipe-connect-hosts:"));
    }

    #[test]
    fn ocsp_pairs_with_cert_by_position() {
        let c = run(&[
            "--cert", "a.pem", "--key", "a.key", "--cert", "b.pem", "--key", "b.key", "--ocsp",
            "none", "--ocsp", "b.der",
        ])
        .unwrap();
        assert_eq!(c.certs[0].ocsp, None);
        assert_eq!(c.certs[1].ocsp, Some(PathBuf::from("b.der")));
        assert!(error(&["--ocsp", "x.der"]).starts_with("--ocsp:"));
    }

    /// Every flag the parser reads is defined (getopts panics otherwise).
    #[test]
    fn every_flag_parses() {
        run(&[
            "--listen",
            "127.0.0.1:1",
            "--listen-tls",
            "[::1]:2",
            "--cert",
            "c",
            "--key",
            "k",
            "--ocsp",
            "o",
            "--state-dir",
            "s",
            "--maildir",
            "m",
            "--domain",
            "d.example",
            "--hostname",
            "h.example",
            "--tls-priority",
            "NORMAL",
            "--ticket-rotation",
            "1",
            "--ticket-lifetime",
            "1",
            "--session-cache",
            "none",
            "--pipe-connect-hosts",
            "*",
            "--max-message-size",
            "1",
            "--max-connections",
            "1",
            "--max-per-ip",
            "1",
            "--max-recipients",
            "1",
            "--command-timeout",
            "1",
            "--data-timeout",
            "1",
            "--message-timeout",
            "1",
            "--handshake-timeout",
            "1",
            "--shutdown-timeout",
            "1",
            "--user",
            "root",
            "--workers",
            "2",
            "--ticket-key-file",
            "k",
            "--relay-from",
            "127.0.0.1",
            "--route",
            "*=[127.0.0.1]:25",
            "--tls-policy",
            "*=may",
            "--ca-file",
            "ca",
            "--dns-server",
            "127.0.0.1",
            "--retry-min",
            "1",
            "--retry-max",
            "1",
            "--queue-lifetime",
            "1",
        ])
        .unwrap();
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(error(&["--listen", "nonsense"]).starts_with("--listen:"));
        assert!(error(&["--max-connections", "0"]).starts_with("--max-connections:"));
        assert!(error(&["--max-message-size", "-5"]).starts_with("--max-message-size:"));
        assert!(error(&["--cert", "a.pem"]).starts_with("--cert:"));
        assert!(error(&["--key", "a.key"]).starts_with("--key:"));
        assert!(error(&["--domain", "../etc"]).starts_with("--domain:"));
        assert!(error(&["--hostname", "a b"]).starts_with("--hostname:"));
        assert!(error(&["--no-such-flag"]).contains("no-such-flag"));
        assert!(error(&["stray"]).contains("stray"));
    }
}
