//! A worker's event loop: one thread, one `mio::Poll`, the listeners of its
//! slot and a token-indexed connection table, deadlines in a heap, signals
//! through a signalfd, and the control channel to the supervisor, which
//! fills the ticket key ring and keeps the TLS 1.2 session cache.

mod certs;
mod conn;
mod delivery;
mod listener;
mod lookups;
mod table;
mod timers;
mod tls_context;
mod worker_log;

pub use worker_log::recover_all as recover_worker_logs;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;

use crate::config::{Config, Durability, Timeouts};
use crate::conn_limits::ConnCounts;
use crate::control::{Channel, ToChild, ToSupervisor};
use crate::hostlist::HostList;
use crate::queue::QueueDir;
use crate::signals::Signals;
use crate::smtp::SmtpConfig;
use crate::store::Store;
use crate::tls::session_db::CacheOp;
use conn::{Close, Conn};
pub use listener::{Kind, Listener, bind_sets, listen_all};
use lookups::Lookups;
use table::Table;
use timers::{TimerKey, Timers};
pub use tls_context::TlsContext;

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(1);
const CERT_WATCH: Token = Token(2);
const FIRST_LISTENER: usize = 3;
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

/// What a worker starts with, handed over by the supervisor after fork.
pub struct WorkerStart {
    pub config: Config,
    /// Which worker this is (its share of the connection counts).
    pub slot: usize,
    pub listeners: Vec<Listener>,
    pub channel: Channel,
    pub tls: TlsContext,
    pub counts: Rc<ConnCounts>,
}

/// What every connection handler may use besides its own state.
pub struct Shared {
    pub smtp_config: Rc<SmtpConfig>,
    pub pipe_connect_hosts: HostList,
    /// Clients that may send to any domain.
    pub relay_from: HostList,
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
    /// To the supervisor; None once it is gone.
    pub control: Option<Channel>,
    /// Session-cache lookups waiting for the supervisor's answer.
    pub lookups: Lookups,
    /// The write-ahead log, under `--durability log`.
    pub log: Option<worker_log::WorkerLog>,
}

impl Shared {
    /// Asks the supervisor for the cached TLS 1.2 session `id`; the answer
    /// comes back to connection `conn` (`Conn::on_session`). False when
    /// there is no one to ask.
    pub fn look_up_session(&mut self, conn: TimerKey, id: Vec<u8>) -> bool {
        let Some(control) = self.control.as_mut() else {
            return false;
        };
        let request = self.lookups.begin(conn, self.now);
        let sent = control.send(ToSupervisor::Lookup { request, id }.encode());
        if sent.is_err() {
            self.lookups.answered(request);
        }
        sent.is_ok()
    }

    /// Passes the session-cache changes of the handshakes just done on to
    /// the supervisor. Called before their last flight goes out, so that a
    /// client resuming at once, on any worker, finds its session.
    /// Tells the supervisor, for the delivery process, which messages
    /// were queued. A lost notice only delays them until the delivery
    /// process next reads the queue directory.
    fn announce_queued(&mut self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        if let Some(control) = self.control.as_mut() {
            let _ = control.send(ToSupervisor::Queued { ids }.encode());
        }
    }

    pub fn send_cache_ops(&mut self) {
        let ops = self.tls.take_cache_ops();
        let Some(control) = self.control.as_mut() else {
            return;
        };
        for op in ops {
            let msg = match op {
                CacheOp::Store { id, data } => ToSupervisor::Store {
                    id,
                    data: crate::control::Secret(data),
                },
                CacheOp::Remove { id } => ToSupervisor::Remove { id },
            };
            if control.send(msg.encode()).is_err() {
                return;
            }
        }
    }
}

pub struct Server {
    poll: Poll,
    /// Registered once the supervisor says the worker may serve.
    listeners: Vec<(TcpListener, Kind)>,
    serving: bool,
    signals: Signals,
    conns: Table<Conn>,
    shared: Shared,
    max_connections: usize,
    max_per_ip: usize,
    counts: Rc<ConnCounts>,
    slot: usize,
    next_serial: u64,
    accept_paused_until: Option<Instant>,
    /// When the oldest message in `shared.commits` was queued.
    commits_since: Option<Instant>,
    shutdown_deadline: Option<Instant>,
}

impl Server {
    /// Sets up the worker's loop. Listening starts once the supervisor's
    /// `Start` arrives, after the ticket key ring it sends first.
    pub fn new(start: WorkerStart) -> Result<Server, String> {
        let WorkerStart {
            config,
            slot,
            listeners,
            channel,
            mut tls,
            counts,
        } = start;
        let (poll, signals) = crate::control::child_poll(&channel, SIGNALS, CONTROL)?;
        let store = Store::open(&config.maildir, &config.hostname)
            .map_err(|e| format!("mail store {}: {e}", config.maildir.display()))?
            .with_queue(QueueDir::new(&config.state_dir).root());
        if let Some(fd) = tls.watch_files() {
            poll.registry()
                .register(&mut SourceFd(&fd), CERT_WATCH, Interest::READABLE)
                .map_err(|e| format!("registering the certificate watch: {e}"))?;
        }
        let log = match &config.durability {
            Durability::Sync => None,
            Durability::Log { checkpoint } => Some(worker_log::WorkerLog::open(
                &config.wal_dir,
                slot,
                &config.maildir,
                &QueueDir::new(&config.state_dir),
                *checkpoint,
            )?),
        };
        let smtp_config = SmtpConfig {
            hostname: config.hostname.clone(),
            domains: config.domains.clone(),
            max_message_size: config.max_message_size,
            max_recipients: config.max_recipients,
        };
        Ok(Server {
            poll,
            listeners: listeners
                .into_iter()
                .map(|l| (TcpListener::from_std(l.socket), l.kind))
                .collect(),
            serving: false,
            signals,
            conns: Table::new(),
            shared: Shared {
                smtp_config: Rc::new(smtp_config),
                pipe_connect_hosts: config.pipe_connect_hosts.clone(),
                relay_from: config.relay_from.clone(),
                tls,
                store,
                timeouts: config.timeouts.clone(),
                timers: Timers::default(),
                now: Instant::now(),
                shutting_down: false,
                read_buf: vec![0; 16 * 1024],
                plain: Vec::with_capacity(32 * 1024),
                commits: Vec::new(),
                control: Some(channel),
                lookups: Lookups::default(),
                log,
            },
            max_connections: config.max_connections,
            max_per_ip: config.max_per_ip,
            counts,
            slot,
            next_serial: 0,
            accept_paused_until: None,
            commits_since: None,
            shutdown_deadline: None,
        })
    }

    /// Runs until SIGTERM/SIGINT (or the supervisor's end) and the end of
    /// the transactions then in progress (or the shutdown timeout).
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
                    CONTROL => self.on_control(),
                    CERT_WATCH => self.shared.tls.refresh_files(),
                    Token(t) if t >= FIRST_CONN => self.on_conn_event(t - FIRST_CONN, event),
                    Token(t) => self.accept(t - FIRST_LISTENER),
                }
            }
            self.run_timers();
            self.maybe_commit(events.is_empty());
            let ending = self.shutting_down_done();
            if let Some(log) = self.shared.log.as_mut() {
                log.checkpoint_if_due(self.shared.now, ending);
                let released = log.take_released();
                self.shared.announce_queued(released);
            }
            if ending {
                return Ok(());
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let next = [
            self.shared.timers.next_due(),
            self.shared.lookups.next_due(),
            self.accept_paused_until,
            self.shutdown_deadline,
            self.shared.log.as_ref().and_then(|l| l.next_due()),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    /// Messages from the supervisor, and room to send it more.
    fn on_control(&mut self) {
        loop {
            let Some(control) = self.shared.control.as_mut() else {
                return;
            };
            if control.flush().is_err() {
                return self.supervisor_gone();
            }
            match control.recv(ToChild::decode) {
                Ok(None) => return,
                Ok(Some(Ok(msg))) => self.on_message(msg),
                Ok(Some(Err(e))) => log::error!("from the supervisor: {e}"),
                Err(_) => return self.supervisor_gone(),
            }
        }
    }

    fn on_message(&mut self, msg: ToChild) {
        match msg {
            ToChild::Key {
                id,
                created,
                retired,
                key,
            } => {
                if let Some(ring) = self.shared.tls.ring() {
                    ring.insert(id, key, created, retired);
                    log::debug!("ticket key {} received", ring.fingerprint(id));
                }
            }
            ToChild::Retire { id, at } => {
                if let Some(ring) = self.shared.tls.ring() {
                    ring.retire(id, at);
                }
            }
            ToChild::Drop { id } => {
                if let Some(ring) = self.shared.tls.ring() {
                    ring.remove(id);
                }
            }
            ToChild::Start => self.start_serving(),
            // For the delivery process.
            ToChild::Flush | ToChild::Queued { .. } => {}
            ToChild::Session { request, data } => {
                if let Some(key) = self.shared.lookups.answered(request) {
                    let data = data.map(|mut secret| std::mem::take(&mut secret.0));
                    self.on_session(key, data);
                }
            }
        }
    }

    /// The supervisor has sent the whole starting state: listen.
    fn start_serving(&mut self) {
        if self.serving || self.shared.shutting_down {
            return;
        }
        for (i, (l, _)) in self.listeners.iter_mut().enumerate() {
            if let Err(e) =
                self.poll
                    .registry()
                    .register(l, Token(FIRST_LISTENER + i), Interest::READABLE)
            {
                log::error!("registering a listener: {e}");
            }
        }
        self.serving = true;
        if let Some(control) = self.shared.control.as_mut() {
            let _ = control.send(ToSupervisor::Ready.encode());
        }
        // Edge-triggered: connections that queued before we listened raise
        // no event of their own.
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
    }

    /// The channel closed: the supervisor died (or closed it), so this
    /// worker stops as on SIGTERM rather than serve on unsupervised.
    fn supervisor_gone(&mut self) {
        if self.shared.control.take().is_none() {
            return;
        }
        log::error!("the supervisor is gone: stopping");
        for key in self.shared.lookups.abandon() {
            self.on_session(key, None);
        }
        self.begin_shutdown("supervisor gone");
    }

    /// A lookup was answered (or given up): the connection's handshake
    /// goes on.
    fn on_session(&mut self, key: TimerKey, data: Option<Vec<u8>>) {
        let Some(conn) = self.conns.get_mut(key.slot) else {
            return;
        };
        if conn.key() != key {
            return;
        }
        if let Some(close) = conn.on_session(data, &mut self.shared) {
            self.remove(key.slot, close);
        }
    }

    fn accept(&mut self, index: usize) {
        if self.accept_paused_until.is_some() || self.shared.shutting_down || !self.serving {
            return;
        }
        let Some((_, kind)) = self.listeners.get(index) else {
            return;
        };
        let kind = *kind;
        loop {
            let accepted = match self.listeners.get(index) {
                Some((l, _)) => l.accept(),
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
        let total = self.counts.total() as usize;
        // Our own relay clients (Postfix's $mynetworks) are not limited
        // per address: they are few and send much.
        let limited = !self.shared.relay_from.matches(peer.ip());
        let refusal = if total >= self.max_connections {
            Some(("4.3.2", "Too many connections", self.max_connections))
        } else if limited && self.counts.from_ip(peer.ip()) as usize >= self.max_per_ip {
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
            total + 1
        );
        self.counts.add(self.slot, peer.ip());
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
        let commit = match self.shared.log.as_mut() {
            None => delivery::GroupCommit::Sync,
            Some(log) => match log.for_commit() {
                Some((log, held)) => delivery::GroupCommit::Log(log, held),
                None => delivery::GroupCommit::Refused,
            },
        };
        let (outcomes, mut queued) = delivery::commit_queued(queue, commit);
        if let Some(log) = self.shared.log.as_mut() {
            // Held until the checkpoint, which announces them.
            log.committed(self.shared.now, !queued.is_empty());
            queued.clear();
        }
        for (key, outcome) in outcomes {
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
        // Only now, with their `<=` lines logged and their clients
        // answered, may the delivery process take them.
        self.shared.announce_queued(queued);
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
        for key in self.shared.lookups.expired(now) {
            log::warn!("the supervisor did not answer a session-cache lookup in time");
            self.on_session(key, None);
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
        self.counts.remove(self.slot, conn.peer.ip());
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
        let received = self.signals.pending();
        if received.contains(&Signal::SIGHUP) {
            log::info!("SIGHUP received: reloading certificates, keys and OCSP responses");
            self.shared.tls.reload();
        }
        if let Some(stop) = received.iter().find(|&&s| s != Signal::SIGHUP) {
            self.begin_shutdown(&format!("{stop} received"));
        }
    }

    /// Stops accepting; connections between transactions end now, those
    /// in one may finish it (up to the shutdown timeout).
    fn begin_shutdown(&mut self, why: &str) {
        if self.shared.shutting_down {
            return;
        }
        log::info!(
            "{why}: no new connections; waiting up to {} s for {} connection(s)",
            self.shared.timeouts.shutdown.as_secs(),
            self.conns.len()
        );
        self.shared.shutting_down = true;
        self.shutdown_deadline = Some(self.shared.now + self.shared.timeouts.shutdown);
        for (l, _) in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
        }
        // Dropping the listeners closes this worker's descriptors of them;
        // the supervisor, stopping too, closes its own.
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

impl Drop for Server {
    fn drop(&mut self) {
        // Nothing is left waiting in the outbox at exit if it can help it.
        if let Some(control) = self.shared.control.as_mut() {
            let _ = control.flush();
        }
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
