//! The delivery process: sends the queue onward. One single-threaded mio
//! loop, started and supervised by the supervisor like a worker:
//!
//! - it reads the queue at start; a worker tells it (through the
//!   supervisor) of each message it queued once the client has its `250`,
//!   so that the `<=` line always comes first; it reads the queue
//!   directory again every minute for anything it was not told of;
//! - due recipients (`schedule`) are grouped into jobs by destination
//!   (`destination`): the next hop their domain routes to, looked up
//!   without blocking (`crate::dns`), and the TLS their domain requires;
//! - each destination opens up to a few connections (`connection`), each
//!   taking its jobs one after the other (one transaction per message,
//!   several messages per connection);
//! - every outcome goes into the message's journal; a delivered or failed
//!   recipient's record is on stable storage before its `=>` or `**` line
//!   is logged (a failed one's bounce before that: `results`), so after a
//!   crash nothing logged delivered is sent again and no bounce is lost.

mod connection;
mod destination;
mod queue_log;
mod results;
mod resumption;
mod schedule;

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;

use crate::client_cache::{self, ClientCache};
use crate::clock::{unix_now, unix_secs};
use crate::config::Config;
use crate::control::{Channel, ToChild, ToSupervisor};
use crate::dns::Resolver;
use crate::queue::QueueDir;
use crate::signals::Signals;
use crate::smtp_client::{Early, Ehlo};
use crate::store::Store;
use crate::tls::{Credentials, Priority};
use connection::{ClientTls, Connection, Ctx, Event};
use destination::{Destination, Hop, Job, Key};
use queue_log::QueueLog;
use results::Results;
use schedule::{Rules, Schedule};

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(1);
/// Connection tokens start here.
const FIRST_CONN: usize = 1 << 16;
/// A resolver socket's token is this plus its descriptor.
const FIRST_DNS: usize = 1 << 28;
/// The queue directory is read again this often anyway (a notice lost
/// while the delivery process was being replaced, say).
const RESCAN: Duration = Duration::from_secs(60);

/// What the delivery process starts with, handed over after fork.
pub struct OutboundStart {
    pub config: Config,
    pub channel: Channel,
}

pub fn run(start: OutboundStart) -> Result<(), String> {
    let mut outbound = Outbound::new(start)?;
    outbound.run()
}

struct Outbound {
    config: Config,
    poll: Poll,
    signals: Signals,
    channel: Option<Channel>,
    queue: QueueDir,
    /// For bounces, which go into the queue like any message.
    store: Store,
    schedule: Schedule,
    resolver: Resolver,
    /// Destination of each lookup in flight.
    lookups: HashMap<u64, Key>,
    next_lookup: u64,
    destinations: HashMap<Key, Destination>,
    conns: Vec<Option<Connection>>,
    tls: ClientTls,
    cache: ClientCache,
    results: Results,
    /// How queue changes are made durable (`--durability`).
    log: QueueLog,
    started: bool,
    stopping: Option<Instant>,
    rescan_at: Instant,
}

impl Outbound {
    fn new(start: OutboundStart) -> Result<Outbound, String> {
        let OutboundStart { config, channel } = start;
        let (poll, signals) = crate::control::child_poll(&channel, SIGNALS, CONTROL)?;
        let queue = QueueDir::new(&config.state_dir);
        // Before the queue is read: what a power loss took comes back.
        let log = QueueLog::open(&config.wal_dir, &config.durability, &config.maildir, &queue)?;
        let store = Store::open(&config.maildir, &config.hostname)
            .map_err(|e| format!("mail store {}: {e}", config.maildir.display()))?
            .with_queue(queue.root());
        let resolver = Resolver::new(&config.sending.dns_servers)?;
        let mut credentials = Credentials::new().map_err(|e| e.to_string())?;
        if let Err(e) = credentials.trust(config.sending.ca_file.as_deref()) {
            let from = match &config.sending.ca_file {
                Some(f) => f.display().to_string(),
                None => "the system trust store".into(),
            };
            // Fatal only for what needs it: `verify` then fails each time.
            log::warn!("no trust anchors from {from} ({e}): --tls-policy verify cannot succeed");
        }
        let tls = ClientTls {
            credentials: Rc::new(credentials),
            priority: Rc::new(
                Priority::new(&config.tls_priority).map_err(|e| format!("--tls-priority: {e}"))?,
            ),
            priority_text: config.tls_priority.clone(),
            trust: client_cache::trust_label(config.sending.ca_file.as_deref()),
        };
        let s = &config.sending;
        let cache = match &s.client_cache {
            Some(path) => ClientCache::open(path, unix_now()),
            None => ClientCache::off(),
        };
        Ok(Outbound {
            schedule: Schedule::new(Rules::new(s.retry_min, s.retry_max, s.queue_lifetime)),
            results: Results::new(config.hostname.clone(), config.domains.clone()),
            log,
            config,
            poll,
            signals,
            channel: Some(channel),
            queue,
            store,
            resolver,
            lookups: HashMap::new(),
            next_lookup: 0,
            destinations: HashMap::new(),
            conns: Vec::new(),
            tls,
            cache,
            started: false,
            stopping: None,
            rescan_at: Instant::now() + RESCAN,
        })
    }

    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("event loop: {e}"));
            }
            let now = Instant::now();
            for event in events.iter() {
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                match event.token() {
                    SIGNALS => self.on_signals(now),
                    CONTROL => self.on_control(),
                    Token(t) if t >= FIRST_DNS => {
                        self.resolver.ready(
                            (t - FIRST_DNS) as RawFd,
                            readable,
                            event.is_writable(),
                        );
                    }
                    Token(t) if t >= FIRST_CONN => {
                        self.on_conn_event(t - FIRST_CONN, readable, event.is_writable(), now)
                    }
                    Token(_) => {}
                }
            }
            self.turn(now);
            if self.stopping.is_some() && self.conns.iter().all(Option::is_none) {
                log::info!("delivery process: stopped");
                return Ok(());
            }
            if self.stopping.is_some_and(|deadline| deadline <= now) {
                log::warn!("delivery process: stopping with connections still open");
                return Ok(());
            }
        }
    }

    /// After every batch of events: timers, lookups, new jobs and
    /// connections, and the outcomes made durable and logged.
    fn turn(&mut self, now: Instant) {
        if self.resolver.next_timeout().is_some_and(|t| t.is_zero()) {
            self.resolver.on_timeout();
        }
        self.conn_timers(now);
        self.take_lookups();
        if self.rescan_at <= now {
            self.rescan_at = now + RESCAN;
            self.read_queue();
            self.cache.purge(unix_now());
        }
        for id in self.results.take_queued() {
            self.add_queued(&id);
        }
        if self.started && self.stopping.is_none() {
            self.schedule_due();
            self.open_connections(now);
        }
        // A destination with nothing to do is forgotten, its addresses
        // with it: the next message for it looks them up again (c-ares
        // answers from its cache within the records' TTL).
        self.destinations.retain(|_, d| d.in_use(now));
        self.apply_dns_interest();
        self.results.settle(
            &mut self.schedule,
            &self.queue,
            &mut self.store,
            &mut self.log,
        );
        let ending = self.stopping.is_some() && self.conns.iter().all(Option::is_none);
        self.log.checkpoint_if_due(now, ending);
    }

    fn poll_timeout(&self) -> Duration {
        let now_unix = unix_secs();
        let due = self
            .schedule
            .next_due()
            .filter(|_| self.started && self.stopping.is_none())
            .map(|at| Duration::from_secs(at.saturating_sub(now_unix)));
        let now = Instant::now();
        let conns = self
            .conns
            .iter()
            .flatten()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min();
        [
            due,
            conns,
            self.resolver.next_timeout(),
            Some(self.rescan_at.saturating_duration_since(now)),
            self.stopping.map(|d| d.saturating_duration_since(now)),
            self.log
                .next_due()
                .map(|d| d.saturating_duration_since(now)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(RESCAN)
    }

    fn on_signals(&mut self, now: Instant) {
        for signal in self.signals.pending() {
            match signal {
                // Nothing to reload here; the supervisor passes SIGHUP on
                // to every child.
                Signal::SIGHUP => {}
                _ => self.stop(now, &format!("{signal} received")),
            }
        }
    }

    /// SIGTERM, or the supervisor gone: no new connection or message;
    /// those under way may finish within the shutdown timeout.
    fn stop(&mut self, now: Instant, why: &str) {
        if self.stopping.is_some() {
            return;
        }
        log::info!("delivery process: {why}: finishing the messages under way");
        self.stopping = Some(now + self.config.timeouts.shutdown);
        for slot in 0..self.conns.len() {
            self.with_conn(slot, |conn, ctx| conn.stop(ctx, now));
        }
    }

    fn on_control(&mut self) {
        loop {
            let Some(channel) = self.channel.as_mut() else {
                return;
            };
            if channel.flush().is_err() {
                return self.supervisor_gone();
            }
            match channel.recv(ToChild::decode) {
                Ok(None) => return,
                Ok(Some(Ok(ToChild::Start))) => self.start(),
                Ok(Some(Ok(ToChild::Flush))) => {
                    log::info!("queue flush: every queued message is due now");
                    self.schedule.flush(unix_secs());
                    for dest in self.destinations.values_mut() {
                        dest.down = None;
                        dest.limit = destination::CONCURRENCY;
                    }
                }
                Ok(Some(Ok(ToChild::Queued { ids }))) => {
                    for id in ids {
                        self.add_queued(&id);
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => log::error!("from the supervisor: {e}"),
                Err(_) => return self.supervisor_gone(),
            }
        }
    }

    fn supervisor_gone(&mut self) {
        self.channel = None;
        log::error!("the supervisor is gone: stopping");
        self.stop(Instant::now(), "supervisor gone");
    }

    /// The queue as the supervisor starts us: every message on disk.
    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        self.read_queue();
        // Finished before a power loss brought their files back.
        results::remove_finished(&mut self.schedule, &self.queue);
        log::info!(
            "delivery process: {} message(s) in the queue",
            self.schedule.len()
        );
        if let Some(channel) = self.channel.as_mut() {
            let _ = channel.send(ToSupervisor::Ready.encode());
        }
    }

    /// Reads every message in `queue/new` not yet known.
    fn read_queue(&mut self) {
        if !self.started {
            return;
        }
        let ids = match self.queue.ids() {
            Ok(ids) => ids,
            Err(e) => {
                log::error!("reading the queue {}: {e}", self.queue.root().display());
                return;
            }
        };
        // What `gsmtpd queue remove` took away is forgotten, unless it is
        // being sent right now (a job of it that waits is dropped when its
        // connection finds no file).
        let gone: Vec<String> = self
            .schedule
            .idle_ids()
            .filter(|id| ids.binary_search(id).is_err())
            .cloned()
            .collect();
        for id in gone {
            self.schedule.remove(&id);
        }
        for id in ids {
            self.add_queued(&id);
        }
    }

    /// Takes message `id` from the queue directory, unless already known.
    fn add_queued(&mut self, id: &str) {
        if !self.started || self.schedule.contains(id) {
            return;
        }
        match self.queue.load(id) {
            Ok(loaded) => self.schedule.add(loaded, unix_secs()),
            // Removed meanwhile (`gsmtpd queue remove`), or damaged.
            Err(e) => log::warn!("queue {id}: {e}"),
        }
    }

    /// Due recipients become jobs of their destinations.
    fn schedule_due(&mut self) {
        let due = self.schedule.take_due(unix_secs());
        let s = &self.config.sending;
        for (id, rcpts) in due {
            let Some(message) = self.schedule.get(&id) else {
                continue;
            };
            let mut by_key: Vec<(Key, Vec<usize>)> = Vec::new();
            for rcpt in rcpts {
                let domain = message.envelope.recipients[rcpt]
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_ascii_lowercase())
                    .unwrap_or_default();
                let key = Key::for_domain(&s.routes, &s.tls_policies, &domain);
                match by_key.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, list)) => list.push(rcpt),
                    None => by_key.push((key, vec![rcpt])),
                }
            }
            for (key, rcpts) in by_key {
                self.destinations
                    .entry(key.clone())
                    .or_insert_with(|| Destination::new(key))
                    .jobs
                    .push_back(Job {
                        id: id.clone(),
                        rcpts,
                    });
            }
        }
    }

    /// Each destination with waiting jobs: its lookup, then connections.
    fn open_connections(&mut self, now: Instant) {
        let keys: Vec<Key> = self
            .destinations
            .values()
            .filter(|d| d.wants_connection())
            .map(|d| d.key.clone())
            .collect();
        for key in keys {
            let Some(dest) = self.destinations.get_mut(&key) else {
                continue;
            };
            if let Some(why) = dest.down_at(now) {
                let why = format!("delivery temporarily suspended: {why}");
                self.defer_destination(&key, &why, false);
                continue;
            }
            if dest.addresses.is_none() {
                if !dest.resolving {
                    dest.resolving = true;
                    self.next_lookup += 1;
                    self.lookups.insert(self.next_lookup, key.clone());
                    self.resolver.lookup(self.next_lookup, key.hop.query());
                }
                continue;
            }
            while self
                .destinations
                .get(&key)
                .is_some_and(Destination::wants_connection)
            {
                if !self.connect(&key, 0, false, now) {
                    break;
                }
            }
        }
    }

    /// Opens a connection to the destination's address `attempt` (or the
    /// next that accepts a socket). False when none is left: the
    /// destination's jobs were deferred.
    fn connect(&mut self, key: &Key, mut attempt: usize, plaintext: bool, now: Instant) -> bool {
        let Some(dest) = self.destinations.get_mut(key) else {
            return false;
        };
        let addresses = dest.addresses.clone().unwrap_or_default();
        while let Some(address) = addresses.get(attempt).cloned() {
            let early = self.kept_ehlo(address.addr);
            match Connection::connect(
                key.clone(),
                address.clone(),
                attempt,
                plaintext,
                &self.config.hostname,
                early,
                now,
            ) {
                Ok(conn) => {
                    self.add_conn(conn);
                    if let Some(dest) = self.destinations.get_mut(key) {
                        dest.connections += 1;
                    }
                    return true;
                }
                Err(e) => {
                    log::info!(
                        "{}: connect to {} [{}]:{}: {e}",
                        key.hop.describe(),
                        address.host,
                        address.addr.ip(),
                        address.addr.port()
                    );
                    attempt += 1;
                }
            }
        }
        let why = if addresses.is_empty() {
            format!("{}: no address to connect to", key.hop.describe())
        } else {
            format!("{}: no host would take the connection", key.hop.describe())
        };
        // With connections open, the jobs wait for those.
        if self
            .destinations
            .get(key)
            .is_some_and(|d| d.connections == 0)
        {
            self.destination_failed(key, &why, false, now);
        }
        false
    }

    fn add_conn(&mut self, mut conn: Connection) {
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let registered = self.poll.registry().register(
            &mut conn.socket,
            Token(FIRST_CONN + slot),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            log::error!("registering a connection: {e}");
            return;
        }
        self.conns[slot] = Some(conn);
    }

    fn on_conn_event(&mut self, slot: usize, readable: bool, writable: bool, now: Instant) {
        self.with_conn(slot, |conn, ctx| {
            conn.on_ready(readable, writable, ctx, now)
        });
    }

    fn conn_timers(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let due = self.conns[slot].as_ref().is_some_and(|c| c.deadline <= now);
            if due {
                self.with_conn(slot, |conn, ctx| conn.on_timeout(ctx, now));
            }
        }
    }

    /// Runs `f` on connection `slot` with what it needs, then handles what
    /// it reports.
    fn with_conn(&mut self, slot: usize, f: impl FnOnce(&mut Connection, &mut Ctx<'_>)) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let key = conn.key.clone();
        let mut no_jobs = std::collections::VecDeque::new();
        let jobs = match self.destinations.get_mut(&key) {
            Some(d) => &mut d.jobs,
            None => &mut no_jobs,
        };
        let mut gone = Vec::new();
        let mut ctx = Ctx {
            jobs,
            schedule: &self.schedule,
            queue: &self.queue,
            tls: &self.tls,
            cache: &mut self.cache,
            ehlo_expire: self.config.sending.ehlo_cache_expire.as_secs(),
            stopping: self.stopping.is_some(),
            gone: &mut gone,
        };
        f(conn, &mut ctx);
        for id in gone {
            self.schedule.remove(&id);
        }
        let events = conn.take_events();
        let closed = conn.is_closed();
        let (address, attempt, plaintext) = (conn.address.clone(), conn.attempt, conn.plaintext);
        if closed {
            // Dropping the connection closes its socket, which takes it
            // out of the epoll set.
            self.conns[slot] = None;
            if let Some(dest) = self.destinations.get_mut(&key) {
                dest.connections = dest.connections.saturating_sub(1);
            }
        }
        for event in events {
            match event {
                Event::Results {
                    job,
                    results,
                    tls,
                    early,
                } => {
                    self.results.delivered(
                        &mut self.schedule,
                        &job,
                        results,
                        &address,
                        tls.as_deref(),
                        early,
                    );
                }
                Event::Unsent(job) => {
                    if let Some(dest) = self.destinations.get_mut(&key) {
                        dest.jobs.push_front(job);
                    }
                }
                Event::Closed(closed) => {
                    self.on_closed(&key, &address, attempt, plaintext, closed, Instant::now())
                }
            }
        }
    }

    /// What `addr` said to EHLO on earlier connections, for early
    /// pipelining.
    fn kept_ehlo(&mut self, addr: std::net::SocketAddr) -> Early {
        let now = unix_now();
        let mut kept = |tls| {
            self.cache
                .ehlo(addr, tls, now)
                .and_then(|raw| Ehlo::from_raw(&raw))
        };
        Early {
            plain: kept(false),
            tls: kept(true),
        }
    }

    /// A connection ended. One that failed before its first message makes
    /// way for the next address (or, after a failed TLS handshake under
    /// `may`, for the same one without STARTTLS, as Postfix does); when
    /// every address failed, the destination's jobs are deferred (or
    /// bounced, if the last refusal was for good).
    fn on_closed(
        &mut self,
        key: &Key,
        address: &destination::Address,
        attempt: usize,
        plaintext: bool,
        closed: connection::Closed,
        now: Instant,
    ) {
        let Some(reason) = closed.reason else {
            return;
        };
        if closed.again && self.stopping.is_none() {
            log::info!("{}: {reason}", key.hop.describe());
            self.connect(key, attempt, plaintext, now);
            return;
        }
        let at = format!(
            "{} [{}]:{}",
            address.host,
            address.addr.ip(),
            address.addr.port()
        );
        log::info!("{}: {at}: {reason}", key.hop.describe());
        if !closed.before_any_message || self.stopping.is_some() {
            return;
        }
        let jobs_wait = self
            .destinations
            .get(key)
            .is_some_and(|d| !d.jobs.is_empty());
        if !jobs_wait {
            return;
        }
        if closed.tls_failed && !plaintext && key.tls.level == crate::routing::TlsLevel::May {
            self.connect(key, attempt, true, now);
            return;
        }
        let next = attempt + 1;
        let more = self
            .destinations
            .get(key)
            .and_then(|d| d.addresses.as_ref())
            .is_some_and(|a| next < a.len());
        if more {
            self.connect(key, next, false, now);
            return;
        }
        let why = format!("{at}: {reason}");
        if let Some(dest) = self.destinations.get_mut(key)
            && dest.connections > 0
            && !closed.permanent
        {
            // Others still deliver there and take the waiting jobs: the
            // server takes no more connections than those.
            dest.limit = dest.connections;
            log::info!(
                "{}: at most {} connection(s) from now on ({why})",
                key.hop.describe(),
                dest.limit
            );
            return;
        }
        self.destination_failed(key, &why, closed.permanent, now);
    }

    /// Nothing reached the destination: its jobs are deferred (or failed,
    /// when `permanent`) and, unless permanent, it counts as down for the
    /// first retry interval.
    fn destination_failed(&mut self, key: &Key, why: &str, permanent: bool, now: Instant) {
        if !permanent && let Some(dest) = self.destinations.get_mut(key) {
            dest.down = Some((now + self.config.sending.retry_min, why.to_string()));
        }
        self.defer_destination(key, why, permanent);
    }

    /// Every job waiting for the destination gets this outcome: deferred,
    /// or, when `permanent`, failed.
    fn defer_destination(&mut self, key: &Key, why: &str, permanent: bool) {
        let Some(dest) = self.destinations.get_mut(key) else {
            return;
        };
        // Looked up again next time: the failure may have been the lookup's.
        dest.addresses = None;
        let jobs: Vec<Job> = dest.jobs.drain(..).collect();
        for job in jobs {
            let outcome = if permanent {
                // RFC 3463 5.4.4: unable to route.
                results::Failed::Permanent(why.to_string(), crate::dsn::Status::new(5, 4, 4))
            } else {
                results::Failed::Temporary(why.to_string())
            };
            self.results
                .not_delivered(&mut self.schedule, &job, outcome);
        }
    }

    /// Answers of the resolver, to their destinations.
    fn take_lookups(&mut self) {
        for (id, result) in self.resolver.take_results() {
            let Some(key) = self.lookups.remove(&id) else {
                continue;
            };
            match result {
                Ok(targets) => {
                    if let Some(dest) = self.destinations.get_mut(&key) {
                        dest.resolved(&targets);
                    }
                }
                Err(e) => {
                    if let Some(dest) = self.destinations.get_mut(&key) {
                        dest.resolving = false;
                    }
                    let why = format!("{}: {e}", key.hop.describe());
                    // Only the recipient domain's own DNS can say for good
                    // that mail cannot go there; a --route host that does
                    // not resolve is the operator's to fix, and the mail
                    // waits for that (as behind Postfix's relayhost).
                    let permanent = e.is_permanent() && matches!(key.hop, Hop::Mx { .. });
                    self.destination_failed(&key, &why, permanent, Instant::now());
                }
            }
        }
    }

    /// Keeps the resolver's sockets registered as it asks.
    fn apply_dns_interest(&mut self) {
        for change in self.resolver.interest() {
            let token = Token(FIRST_DNS + change.fd() as usize);
            if let Err(e) = change.apply(self.poll.registry(), token) {
                log::warn!("resolver socket: {e}");
            }
        }
    }
}
