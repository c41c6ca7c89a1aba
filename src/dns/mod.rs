//! Non-blocking DNS for the delivery process: the MX, A and AAAA lookups
//! that turn a recipient domain or a next hop into addresses to connect
//! to, through c-ares, driven by the caller's own `mio` loop. No thread:
//! c-ares opens its sockets, tells us which to watch through its
//! socket-state callback, and does its work inside our calls.
//!
//! ```text
//! resolver.lookup(id, Query::Mx(domain));          // any number at once
//! loop {
//!     for change in resolver.interest() {          // after EVERY call into resolver
//!         change.apply(registry, token_for(change.fd()))?;
//!     }
//!     for (id, result) in resolver.take_results() { ... }
//!     poll.poll(&mut events, min(other_timeouts, resolver.next_timeout()))?;
//!     for event of a resolver token:
//!         resolver.ready(fd, event.is_readable() || event.is_read_closed() || event.is_error(),
//!                        event.is_writable());
//!     if resolver.next_timeout() has elapsed: resolver.on_timeout();
//! }
//! ```
//!
//! What a lookup returns (RFC 5321 section 5, RFC 7505):
//!
//! - `Query::Mx(domain)`: the exchangers in preference order, equal
//!   preferences shuffled, each with its addresses; no MX record (NODATA,
//!   also at the end of a CNAME chain) makes the domain its own exchanger at
//!   preference 0; a null MX (a lone `MX 0 .`) is `NullMx`; NXDOMAIN is
//!   `NoSuchDomain`. At most `MAX_EXCHANGERS` exchangers are resolved.
//! - `Query::Host(name)`: the addresses of one host (`[host]` routes): from
//!   the hosts file when it names the host (c-ares reads `/etc/hosts`, as
//!   the C library would), otherwise from the DNS. An IP address given as
//!   the name is answered at once, with no query, as is an address literal
//!   (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) given to either kind of query.
//! - Each target's addresses: IPv6 first, then IPv4, each family in the
//!   order the DNS gave. RFC 6724's default policy prefers IPv6 as well, and
//!   a host without an IPv6 route fails such a connect at once
//!   (ENETUNREACH), so trying IPv6 first costs no timeout there.
//! - A host whose lookup fails temporarily while others succeed is left
//!   out and the lookup succeeds; one family failing temporarily while the
//!   other gives addresses keeps the host with those. Only when no host has
//!   an address and some failure was temporary is the result `TempFail`.
//!
//! Queries go out with `ares_query` (one question, no search list, no
//! `/etc/hosts`); the hosts file is read by `ares_getaddrinfo` on a second
//! channel whose only lookup is the file, which answers within the call; c-ares follows CNAME chains in the answers, retries over
//! TCP when an answer is truncated, and caches answers for their TTL (at
//! most an hour, its default).
//!
//! c-ares is built from the source the `c-ares` crate ships (1.34), with
//! cmake, and linked statically (Cargo.toml: features `vendored` and
//! `build-cmake`; cmake is in `scripts/deps build`). Debian 12's
//! libc-ares-dev is 1.18, which reads a TCP answer in pieces, one `recv`
//! per readiness report: under mio's edge-triggered epoll the rest of an
//! answer would wait for the retry timer. 1.34 reads every socket until it
//! would block, and gives each new UDP socket a fresh random source port
//! (see `UDP_MAX_QUERIES`). Without the explicit features the crate would
//! pick whichever c-ares happens to be installed. c-ares is compiled with
//! thread support (the crate's cmake build always turns it on), which only
//! makes it take a mutex: it starts threads only for an event thread or
//! `ares_reinit`, and neither is used here.

#![forbid(unsafe_code)]

mod lookup;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use c_ares::{AddrInfoFlags, AddrInfoHints, Channel, Options};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

pub use lookup::MAX_EXCHANGERS;
use lookup::{Answer, Failure, Lookup, Question, Step};

/// A UDP socket serves this many queries, then c-ares opens another, on a
/// new random source port: a spoofed answer must guess the port as well
/// as the 16-bit query ID.
const UDP_MAX_QUERIES: u32 = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Where mail for this domain goes: its MX hosts, or itself.
    Mx(String),
    /// The addresses of this host name, or this IP address.
    Host(String),
}

/// One host to try, with its addresses in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The exchanger's name (lowercase, no trailing dot): the name TLS
    /// verification checks and a session cache is keyed by.
    pub host: String,
    /// The MX preference; 0 for `Query::Host` and an implicit MX.
    pub preference: u16,
    /// IPv6 first, then IPv4; never empty.
    pub addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN (or a name that cannot exist): permanent.
    NoSuchDomain,
    /// RFC 7505 null MX: the domain accepts no mail. Permanent.
    NullMx,
    /// The names exist but none has an address: permanent. Says which.
    NoAddress(String),
    /// A timeout, SERVFAIL, REFUSED, no server reachable: try later. Says
    /// which lookup failed how.
    TempFail(String),
}

impl DnsError {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DnsError::TempFail(_))
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NoSuchDomain => f.write_str("no such domain"),
            DnsError::NullMx => f.write_str("the domain accepts no mail (null MX)"),
            DnsError::NoAddress(why) | DnsError::TempFail(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for DnsError {}

/// What to do in the caller's registry about one of c-ares' descriptors.
/// For each descriptor the changes come in an order that is always valid:
/// `Register` only for one not registered, `Reregister` only for one that
/// is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdChange {
    /// A new socket: register it.
    Register {
        fd: RawFd,
        readable: bool,
        writable: bool,
    },
    /// Another interest for a registered socket: reregister it.
    Reregister {
        fd: RawFd,
        readable: bool,
        writable: bool,
    },
    /// c-ares has closed the socket, and with the close epoll dropped it:
    /// forget its token. Do not deregister: the number may already belong
    /// to another descriptor (a `Register` for the same number may follow).
    Closed(RawFd),
}

impl FdChange {
    pub fn fd(&self) -> RawFd {
        match *self {
            FdChange::Register { fd, .. }
            | FdChange::Reregister { fd, .. }
            | FdChange::Closed(fd) => fd,
        }
    }

    /// The interest to (re)register with; `None` for `Closed`.
    pub fn interest(&self) -> Option<Interest> {
        match *self {
            FdChange::Register {
                readable, writable, ..
            }
            | FdChange::Reregister {
                readable, writable, ..
            } => match (readable, writable) {
                (_, false) => Some(Interest::READABLE),
                (false, true) => Some(Interest::WRITABLE),
                (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            },
            FdChange::Closed(_) => None,
        }
    }

    /// Applies the change to `registry`, under `token`.
    pub fn apply(&self, registry: &Registry, token: Token) -> io::Result<()> {
        match (*self, self.interest()) {
            (FdChange::Register { fd, .. }, Some(interest)) => {
                registry.register(&mut SourceFd(&fd), token, interest)
            }
            (FdChange::Reregister { fd, .. }, Some(interest)) => {
                registry.reregister(&mut SourceFd(&fd), token, interest)
            }
            _ => Ok(()),
        }
    }
}

/// What c-ares' callbacks leave for us. They run inside our calls into
/// c-ares, on this thread, but c-ares' Rust binding wants them `Send`: a
/// mutex nobody else ever takes.
#[derive(Default)]
struct Inbox {
    answers: Vec<(u64, Question, Answer)>,
    /// (fd, readable, writable) in the order c-ares reported them; neither
    /// means closed.
    sockets: Vec<(RawFd, bool, bool)>,
}

fn lock(inbox: &Mutex<Inbox>) -> MutexGuard<'_, Inbox> {
    inbox.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Orders MX hosts of equal preference. Keyed by the OS's randomness once;
/// a peer cannot predict it, and nothing needs more.
struct Shuffle {
    keys: RandomState,
    draws: u64,
}

impl Shuffle {
    fn below(&mut self, n: usize) -> usize {
        self.draws += 1;
        let n = n.max(1) as u64;
        (self.keys.hash_one(self.draws) % n) as usize
    }
}

pub struct Resolver {
    channel: Channel,
    /// Looks in the hosts file only (`Question::HostsFile`).
    hosts_file: Channel,
    inbox: Arc<Mutex<Inbox>>,
    /// The descriptors the caller was told to watch, with that interest.
    watched: HashMap<RawFd, (bool, bool)>,
    /// By serial: the caller's id and the lookup.
    lookups: HashMap<u64, (u64, Lookup)>,
    serial: u64,
    results: Vec<(u64, Result<Vec<Target>, DnsError>)>,
    shuffle: Shuffle,
}

impl Resolver {
    /// Asks `servers` (`--dns-server`), or when none are given those of
    /// `/etc/resolv.conf` (read by c-ares; its `options timeout:` and
    /// `attempts:` apply too).
    pub fn new(servers: &[SocketAddr]) -> Result<Resolver, String> {
        Resolver::build(servers, None)
    }

    /// As `new`, with `timeout` for each server's first try and `tries`
    /// tries per server (c-ares doubles the wait on each round).
    pub fn with_timeout(
        servers: &[SocketAddr],
        timeout: Duration,
        tries: u32,
    ) -> Result<Resolver, String> {
        Resolver::build(servers, Some((timeout, tries.max(1))))
    }

    fn build(servers: &[SocketAddr], timing: Option<(Duration, u32)>) -> Result<Resolver, String> {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let mut options = Options::new();
        let sockets = Arc::clone(&inbox);
        options
            .set_socket_state_callback(move |fd, readable, writable| {
                lock(&sockets).sockets.push((fd, readable, writable));
            })
            .set_udp_max_queries(Some(UDP_MAX_QUERIES));
        if let Some((timeout, tries)) = timing {
            options.set_timeout(timeout).set_tries(tries);
        }
        let mut channel =
            Channel::with_options(options).map_err(|e| format!("cannot start c-ares: {e}"))?;
        if !servers.is_empty() {
            let list: Vec<String> = servers.iter().map(SocketAddr::to_string).collect();
            channel
                .set_servers(&list)
                .map_err(|e| format!("c-ares refused the DNS servers {}: {e}", list.join(",")))?;
        }
        let mut file_only = Options::new();
        file_only
            .set_lookups("f")
            .map_err(|e| format!("cannot start c-ares: {e}"))?;
        let hosts_file =
            Channel::with_options(file_only).map_err(|e| format!("cannot start c-ares: {e}"))?;
        Ok(Resolver {
            channel,
            hosts_file,
            inbox,
            watched: HashMap::new(),
            lookups: HashMap::new(),
            serial: 0,
            results: Vec::new(),
            shuffle: Shuffle {
                keys: RandomState::new(),
                draws: 0,
            },
        })
    }

    /// Starts a lookup; its answer comes back from `take_results` with
    /// `id` (the caller's: not checked for uniqueness). An IP address, a
    /// cached answer or a bad name can be answered before this returns.
    pub fn lookup(&mut self, id: u64, query: Query) {
        let (lookup, step) = Lookup::start(query);
        self.serial += 1;
        let serial = self.serial;
        self.lookups.insert(serial, (id, lookup));
        self.follow(serial, step);
        self.pump();
    }

    /// The changes to the descriptors to watch since the last call. Call
    /// it after every `new`, `lookup`, `ready` and `on_timeout`, before
    /// opening descriptors of your own: a `Closed` number may otherwise
    /// already be yours.
    pub fn interest(&mut self) -> Vec<FdChange> {
        let reports = std::mem::take(&mut lock(&self.inbox).sockets);
        // Per descriptor, in order of first report: was it closed on the
        // way (then the registration the caller holds died with it), and
        // what is wanted at the end.
        let mut order: Vec<RawFd> = Vec::new();
        let mut net: HashMap<RawFd, (bool, (bool, bool))> = HashMap::new();
        for (fd, readable, writable) in reports {
            let entry = net.entry(fd).or_insert_with(|| {
                order.push(fd);
                (false, (false, false))
            });
            entry.0 |= !readable && !writable;
            entry.1 = (readable, writable);
        }
        let mut changes = Vec::new();
        for fd in order {
            let (closed, (readable, writable)) = net[&fd];
            let open = readable || writable;
            if closed && self.watched.remove(&fd).is_some() {
                changes.push(FdChange::Closed(fd));
            }
            if !open {
                continue;
            }
            match self.watched.insert(fd, (readable, writable)) {
                None => changes.push(FdChange::Register {
                    fd,
                    readable,
                    writable,
                }),
                Some(before) if before != (readable, writable) => {
                    changes.push(FdChange::Reregister {
                        fd,
                        readable,
                        writable,
                    })
                }
                Some(_) => {}
            }
        }
        changes
    }

    /// After the loop reported `fd` ready. Pass an error or hang-up as
    /// readable: c-ares learns of it by reading.
    pub fn ready(&mut self, fd: RawFd, readable: bool, writable: bool) {
        if !readable && !writable {
            return;
        }
        self.channel
            .process_fd(readable.then_some(fd), writable.then_some(fd));
        self.pump();
    }

    /// How long the loop may sleep before calling `on_timeout` (a query's
    /// timeout or retry); `None` when nothing is in flight, zero when
    /// results are waiting in `take_results`.
    pub fn next_timeout(&self) -> Option<Duration> {
        if !self.results.is_empty() {
            return Some(Duration::ZERO);
        }
        if self.lookups.is_empty() {
            return None;
        }
        self.channel.timeout(None)
    }

    /// When `next_timeout` has passed: timed-out queries are retried or
    /// fail.
    pub fn on_timeout(&mut self) {
        self.channel.process_fd(None, None);
        self.pump();
    }

    /// Finished lookups, as (id, result).
    pub fn take_results(&mut self) -> Vec<(u64, Result<Vec<Target>, DnsError>)> {
        std::mem::take(&mut self.results)
    }

    /// Lookups started and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.lookups.len()
    }

    fn follow(&mut self, serial: u64, step: Step) {
        match step {
            Step::Wait => {}
            Step::Done(result) => {
                if let Some((id, _)) = self.lookups.remove(&serial) {
                    self.results.push((id, result));
                }
            }
            Step::Ask(questions) => {
                for (name, question) in questions {
                    self.ask(serial, &name, question);
                }
            }
        }
    }

    fn ask(&mut self, serial: u64, name: &str, question: Question) {
        let inbox = Arc::clone(&self.inbox);
        let deliver = move |answer: Answer| lock(&inbox).answers.push((serial, question, answer));
        match question {
            Question::Mx => self.channel.query_mx(name, move |result| {
                deliver(Answer::Mx(
                    result
                        .map(|mx| {
                            mx.iter()
                                .map(|r| (r.priority(), r.host().to_owned()))
                                .collect()
                        })
                        .map_err(failure),
                ));
            }),
            Question::A(_) => self.channel.query_a(name, move |result| {
                deliver(Answer::A(
                    result
                        .map(|a| a.iter().map(|r| r.ipv4()).collect())
                        .map_err(failure),
                ));
            }),
            Question::Aaaa(_) => self.channel.query_aaaa(name, move |result| {
                deliver(Answer::Aaaa(
                    result
                        .map(|a| a.iter().map(|r| r.ipv6()).collect())
                        .map_err(failure),
                ));
            }),
            Question::HostsFile => {
                // NOSORT: no RFC 6724 sorting, which would connect a UDP
                // socket to each address to find its source.
                let hints = AddrInfoHints {
                    flags: AddrInfoFlags::NOSORT,
                    ..AddrInfoHints::default()
                };
                self.hosts_file
                    .get_addrinfo(name, None, &hints, move |result| {
                        let found = match result {
                            Ok(info) => info.nodes().filter_map(|n| n.ip_addr()).collect(),
                            Err(_) => Vec::new(),
                        };
                        deliver(Answer::HostsFile(found));
                    });
            }
        }
    }

    /// Feeds the answers c-ares delivered to their lookups, asking the
    /// questions that follow; those can be answered at once (from c-ares'
    /// cache, or a bad name), so until nothing is left.
    fn pump(&mut self) {
        loop {
            let answers = std::mem::take(&mut lock(&self.inbox).answers);
            if answers.is_empty() {
                return;
            }
            for (serial, question, answer) in answers {
                let shuffle = &mut self.shuffle;
                let Some((_, lookup)) = self.lookups.get_mut(&serial) else {
                    continue;
                };
                let step = lookup.answer(question, answer, &mut |n| shuffle.below(n));
                self.follow(serial, step);
            }
        }
    }
}

/// How a c-ares status counts for a lookup.
fn failure(error: c_ares::Error) -> Failure {
    use c_ares::Error as E;
    match error {
        E::ENOTFOUND => Failure::NoSuchName,
        E::ENODATA => Failure::NoData,
        E::EBADNAME => Failure::BadName,
        E::ETIMEOUT => Failure::Temporary("timed out".into()),
        E::ESERVFAIL => Failure::Temporary("server failure (SERVFAIL)".into()),
        E::EREFUSED => Failure::Temporary("refused by the DNS server (REFUSED)".into()),
        E::ECONNREFUSED => {
            Failure::Temporary("could not reach the DNS server (connection refused)".into())
        }
        other => Failure::Temporary(other.to_string()),
    }
}

/// One `--dns-server ADDR[:PORT]`: `192.0.2.53`, `192.0.2.53:5353`,
/// `2001:db8::53`, `[2001:db8::53]` or `[2001:db8::53]:5353`; port 53
/// unless given.
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let addr = text.parse::<SocketAddr>().ok().or_else(|| {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        bare.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    });
    match addr {
        Some(addr) if addr.port() != 0 => Ok(addr),
        _ => Err(format!(
            "'{text}' is not ADDR or ADDR:PORT (an IPv6 address with a port goes in brackets)"
        )),
    }
}

/// The c-ares version linked in, for `--version`.
pub fn c_ares_version() -> &'static str {
    c_ares::version().0
}
