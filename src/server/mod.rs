//! The event loop: one thread, one `mio::Poll`, listeners and a
//! token-indexed connection table, deadlines in a heap, signals through
//! signal-hook's mio source.

mod certs;
mod conn;
mod delivery;
mod listener;
mod table;
mod timers;
mod tls_context;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::{Config, Timeouts};
use crate::default_cert;
use crate::hostlist::HostList;
use crate::privileges;
use crate::smtp::SmtpConfig;
use crate::store::{self, Store};
use conn::{Close, Conn};
use listener::{Kind, Listener};
use table::Table;
use timers::{TimerKey, Timers};
use tls_context::TlsContext;

const SIGNALS: Token = Token(0);
const FIRST_LISTENER: usize = 1;
/// Connection tokens start here; listener tokens lie below.
const FIRST_CONN: usize = 1 << 16;
/// After EMFILE/ENFILE, how long to leave pending connections in the
/// backlog before trying accept again (instead of spinning on the error).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);
/// Longest a complete message waits for its group commit while the loop
/// still finds ready work whose messages could join the group.
const COMMIT_WAIT_MAX: Duration = Duration::from_millis(1);
/// A group this large is committed without waiting for more.
const COMMIT_GROUP_MAX: usize = 256;

/// What every connection handler may use besides its own state.
pub struct Shared {
    pub smtp_config: Rc<SmtpConfig>,
    pub pipe_connect_hosts: HostList,
    pub tls: TlsContext,
    pub store: Store,
    pub timeouts: Timeouts,
    pub timers: Timers,
    /// The loop's clock for this iteration, read once per wakeup.
    pub now: Instant,
    pub shutting_down: bool,
    /// Socket reads land here; one buffer for all connections.
    pub read_buf: Vec<u8>,
    /// Decrypted TLS input, likewise shared.
    pub plain: Vec<u8>,
    /// Complete messages awaiting their group commit (see `commit_due`).
    pub commits: Vec<delivery::Queued>,
}

pub struct Server {
    poll: Poll,
    listeners: Vec<Listener>,
    signals: Signals,
    conns: Table<Conn>,
    shared: Shared,
    max_connections: usize,
    max_per_ip: usize,
    /// Open connections per client address, for --max-per-ip.
    per_ip: HashMap<IpAddr, usize>,
    next_serial: u64,
    accept_paused_until: Option<Instant>,
    /// When the oldest message in `shared.commits` was queued.
    commits_since: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    /// Ticket key rotation and session cache purging.
    housekeeping_at: Instant,
}

impl Server {
    /// Binds every listener and loads everything a connection needs, so
    /// that a configuration error stops the start, not the first client.
    pub fn bind(config: &Config) -> Result<Server, String> {
        default_cert::create_private_dir(&config.state_dir).map_err(|e| {
            format!(
                "creating state directory {}: {e}",
                config.state_dir.display()
            )
        })?;
        let mut tls = TlsContext::load(config)?;
        let poll = Poll::new().map_err(|e| format!("creating the poller: {e}"))?;
        let mut listeners = Vec::new();
        let wanted = config
            .listen
            .iter()
            .map(|a| (*a, Kind::Starttls))
            .chain(config.listen_tls.iter().map(|a| (*a, Kind::Implicit)));
        for (addr, kind) in wanted {
            let mut l =
                listener::bind(addr, kind).map_err(|e| format!("listening on {addr}: {e}"))?;
            let token = Token(FIRST_LISTENER + listeners.len());
            poll.registry()
                .register(&mut l.socket, token, Interest::READABLE)
                .map_err(|e| format!("registering {addr}: {e}"))?;
            listeners.push(l);
        }
        let mut signals =
            Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| format!("signal handlers: {e}"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| format!("registering signals: {e}"))?;
        // Root was needed for the ports and the keys; the rest runs as
        // --user, which must own what it writes from here on.
        match &config.user {
            Some(account) => {
                privileges::give(&config.state_dir, account)?;
                for file in default_cert::files(&config.state_dir) {
                    if file.exists() {
                        privileges::give(&file, account)?;
                    }
                }
                privileges::drop_to(account)?;
            }
            None if privileges::running_as_root() => {
                privileges::check_store_safe_for_root(&config.maildir)?
            }
            None => {}
        }
        store::check_kernel();
        let store = Store::open(&config.maildir, &config.hostname)
            .map_err(|e| format!("mail store {}: {e}", config.maildir.display()))?;
        match store::clean_stale_tmp(&config.maildir, store::STALE_TMP_AGE) {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} stale files from the mail store's tmp/ directories"),
            Err(e) => log::warn!("cleaning stale tmp/ files: {e}"),
        }
        tls.open_cache(config);
        let smtp_config = SmtpConfig {
            hostname: config.hostname.clone(),
            domains: config.domains.clone(),
            max_message_size: config.max_message_size,
            max_recipients: config.max_recipients,
        };
        Ok(Server {
            poll,
            listeners,
            signals,
            conns: Table::new(),
            shared: Shared {
                smtp_config: Rc::new(smtp_config),
                pipe_connect_hosts: config.pipe_connect_hosts.clone(),
                tls,
                store,
                timeouts: config.timeouts.clone(),
                timers: Timers::default(),
                now: Instant::now(),
                shutting_down: false,
                read_buf: vec![0; 16 * 1024],
                plain: Vec::with_capacity(32 * 1024),
                commits: Vec::new(),
            },
            max_connections: config.max_connections,
            max_per_ip: config.max_per_ip,
            per_ip: HashMap::new(),
            next_serial: 0,
            accept_paused_until: None,
            commits_since: None,
            shutdown_deadline: None,
            housekeeping_at: Instant::now(),
        })
    }

    pub fn local_addrs(&self) -> Vec<(SocketAddr, bool)> {
        self.listeners
            .iter()
            .map(|l| (l.addr, l.kind == Kind::Implicit))
            .collect()
    }

    /// Runs until SIGTERM/SIGINT and the end of the transactions then in
    /// progress (or the shutdown timeout).
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            // With messages awaiting a commit the loop only looks for work
            // that is already there, so that it joins their group.
            let timeout = if self.shared.commits.is_empty() {
                self.poll_timeout()
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.shared.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signal(),
                    Token(t) if t >= FIRST_CONN => self.on_conn_event(t - FIRST_CONN, event),
                    Token(t) => self.accept(t - FIRST_LISTENER),
                }
            }
            self.run_timers();
            self.maybe_commit(events.is_empty());
            if self.shutting_down_done() {
                return Ok(());
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let next = [
            self.shared.timers.next_due(),
            self.accept_paused_until,
            self.shutdown_deadline,
            self.shared.tls.cache_commit_at(),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    fn accept(&mut self, index: usize) {
        if self.accept_paused_until.is_some() || self.shared.shutting_down {
            return;
        }
        let Some(listener) = self.listeners.get(index) else {
            return;
        };
        let kind = listener.kind;
        loop {
            let accepted = match self.listeners.get(index) {
                Some(l) => l.socket.accept(),
                None => return,
            };
            match accepted {
                Ok((socket, peer)) => self.admit(socket, peer, kind),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if retry_accept(&e) => continue,
                Err(e) if out_of_resources(&e) => {
                    log::warn!(
                        "accept: {e}; pausing accepts for {} ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.accept_paused_until = Some(self.shared.now + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => {
                    log::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr, kind: Kind) {
        let from_peer = self.per_ip.get(&peer.ip()).copied().unwrap_or(0);
        let refusal = if self.conns.len() >= self.max_connections {
            Some(("4.3.2", "Too many connections", self.max_connections))
        } else if from_peer >= self.max_per_ip {
            Some((
                "4.7.0",
                "Too many connections from your address",
                self.max_per_ip,
            ))
        } else {
            None
        };
        if let Some((code, text, limit)) = refusal {
            log::warn!(
                "refused connection from [{}]:{}: {text} (limit {limit})",
                peer.ip(),
                peer.port()
            );
            let host = &self.shared.smtp_config.hostname;
            let reply = format!("421 {code} {host} {text}, try again later\r\n");
            // Best effort: the socket buffer of a new connection is empty.
            let _ = io::Write::write(&mut socket, reply.as_bytes());
            return;
        }
        if !listener::NODELAY_INHERITED {
            let _ = socket.set_nodelay(true);
        }
        let slot = self.conns.vacant_slot();
        self.next_serial += 1;
        let key = TimerKey {
            slot,
            serial: self.next_serial,
        };
        let mut conn = Conn::new(socket, peer, kind, key, &mut self.shared);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut conn.socket, Token(FIRST_CONN + slot), interest)
        {
            log::error!(
                "registering connection from [{}]:{}: {e}",
                peer.ip(),
                peer.port()
            );
            return;
        }
        let tls = if kind == Kind::Implicit {
            " (implicit TLS)"
        } else {
            ""
        };
        log::info!(
            "SMTP connection from [{}]:{}{tls} (TCP/IP connection count = {})",
            peer.ip(),
            peer.port(),
            self.conns.len() + 1
        );
        *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
        let slot = self.conns.insert(conn);
        if let Some(close) = self
            .conns
            .get_mut(slot)
            .and_then(|c| c.start(&mut self.shared))
        {
            self.remove(slot, close);
        }
    }

    fn on_conn_event(&mut self, slot: usize, event: &mio::event::Event) {
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let peer_closed = event.is_read_closed() || event.is_error();
        if let Some(close) =
            conn.on_ready(readable, peer_closed, event.is_writable(), &mut self.shared)
        {
            self.remove(slot, close);
        }
    }

    /// Commits the queued messages if `commit_due` says so; `idle`: the
    /// poll found nothing ready.
    fn maybe_commit(&mut self, idle: bool) {
        let queued = self.shared.commits.len();
        if queued == 0 {
            self.commits_since = None;
            return;
        }
        let now = self.shared.now;
        let since = *self.commits_since.get_or_insert(now);
        let idle = idle || self.shared.shutting_down;
        if commit_due(queued, idle, now - since) {
            self.run_commits();
            self.commits_since = None;
        }
    }

    /// Group commit: the queued messages become durable together, and only
    /// then are their clients answered. Answering can complete further
    /// messages (input held behind a commit), which queue for the next
    /// group.
    fn run_commits(&mut self) {
        let queue = std::mem::take(&mut self.shared.commits);
        log::debug!("group commit of {} message(s)", queue.len());
        for (key, outcome) in delivery::commit_queued(queue) {
            let Some(conn) = self.conns.get_mut(key.slot) else {
                continue;
            };
            if conn.key() != key {
                continue;
            }
            if let Some(close) = conn.on_committed(outcome, &mut self.shared) {
                self.remove(key.slot, close);
            }
        }
    }

    fn run_timers(&mut self) {
        let now = self.shared.now;
        while let Some((at, key)) = self.shared.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(key.slot) else {
                continue;
            };
            if conn.key() != key || !self.shared.timers.expired(&mut conn.deadline, at, key, now) {
                continue;
            }
            if let Some(close) = conn.on_timeout(&mut self.shared) {
                self.remove(key.slot, close);
            }
        }
        if self.shared.timers.len() > 2 * self.conns.len() + 4096 {
            self.shared.timers.compact(self.conns.iter_mut().map(|c| {
                let key = c.key();
                (&mut c.deadline, key)
            }));
        }
        self.shared.tls.commit_cache(now);
        if self.housekeeping_at <= now {
            let due = self.shared.tls.housekeeping();
            let wait = due.saturating_sub(crate::clock::unix_secs()).max(1);
            self.housekeeping_at = now + Duration::from_secs(wait);
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            // Edge-triggered listeners raise no new event for connections
            // already waiting in the backlog.
            for i in 0..self.listeners.len() {
                self.accept(i);
            }
        }
    }

    fn remove(&mut self, slot: usize, close: Close) {
        // No deregister: dropping the connection closes its socket, the
        // only descriptor of it, which takes it out of the epoll set.
        let Some(conn) = self.conns.remove(slot) else {
            return;
        };
        if let Some(n) = self.per_ip.get_mut(&conn.peer.ip()) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&conn.peer.ip());
            }
        }
        let during = if conn.in_transaction() {
            " during a transaction"
        } else {
            ""
        };
        log::info!(
            "SMTP connection from [{}]:{} {close}{during}",
            conn.peer.ip(),
            conn.peer.port()
        );
    }

    fn on_signal(&mut self) {
        let received: Vec<i32> = self.signals.pending().collect();
        if received.contains(&SIGHUP) {
            log::info!("SIGHUP received: reloading certificates, keys and OCSP responses");
            self.shared.tls.reload();
        }
        let Some(stop) = received.iter().find(|&&s| s != SIGHUP) else {
            return;
        };
        if self.shared.shutting_down {
            return;
        }
        log::info!(
            "signal {stop} received: no new connections; waiting up to {} s for {} connection(s)",
            self.shared.timeouts.shutdown.as_secs(),
            self.conns.len()
        );
        self.shared.shutting_down = true;
        self.shutdown_deadline = Some(self.shared.now + self.shared.timeouts.shutdown);
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        // Dropping the listeners closes them: new clients are refused by
        // the kernel rather than left waiting in a backlog nobody reads.
        self.listeners.clear();
        for slot in self.conns.slots() {
            if let Some(close) = self
                .conns
                .get_mut(slot)
                .and_then(|c| c.on_shutdown(&mut self.shared))
            {
                self.remove(slot, close);
            }
        }
    }

    fn shutting_down_done(&mut self) -> bool {
        if !self.shared.shutting_down {
            return false;
        }
        if self.conns.is_empty() {
            log::info!("all connections closed; exiting");
            return true;
        }
        if self.shutdown_deadline.is_some_and(|t| t <= self.shared.now) {
            // Messages already on their way to the disk are answered first.
            while !self.shared.commits.is_empty() {
                self.run_commits();
            }
            log::warn!(
                "shutdown timeout: closing {} connection(s) still open",
                self.conns.len()
            );
            for slot in self.conns.slots() {
                self.remove(slot, Close::Shutdown);
            }
            return true;
        }
        false
    }
}

/// Whether the `queued` messages, the oldest queued `waited` ago, are
/// committed now. The loop commits once it has no ready work left (`idle`)
/// whose messages could share the sync, so that under load one `syncfs`
/// serves many clients; waiting for more is bounded in time and size.
fn commit_due(queued: usize, idle: bool, waited: Duration) -> bool {
    queued > 0 && (idle || queued >= COMMIT_GROUP_MAX || waited >= COMMIT_WAIT_MAX)
}

fn retry_accept(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_commit_waits_only_while_work_is_ready() {
        let now = Duration::ZERO;
        let almost = COMMIT_WAIT_MAX - Duration::from_micros(1);
        assert!(!commit_due(0, true, now), "nothing to commit");
        assert!(commit_due(1, true, now), "no ready work: commit at once");
        assert!(!commit_due(1, false, now), "ready work may join the group");
        assert!(!commit_due(COMMIT_GROUP_MAX - 1, false, almost));
        assert!(commit_due(1, false, COMMIT_WAIT_MAX), "waited long enough");
        assert!(
            commit_due(COMMIT_GROUP_MAX, false, now),
            "the group is full"
        );
    }
}
