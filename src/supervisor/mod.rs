//! The process the operator starts. It binds every listener (one socket
//! per address and worker slot), loads the credentials, builds the ticket
//! key ring and the shared connection counts, gives up root, and forks
//! `--workers` workers, each running the SMTP event loop of
//! `crate::server` on its slot's sockets. It serves no connection itself.
//! Its own single-threaded mio loop:
//!
//! - starts the delivery process (`crate::outbound`), which sends the
//!   queue onward, and passes it `gsmtpd queue flush` (SIGUSR1);
//! - replaces a worker or the delivery process that dies (logged with its
//!   pid and how it ended), at once, or after a growing pause when it keeps
//!   dying (`slots`);
//! - rotates the ticket masters or follows the key file, and tells every
//!   worker (`keys`); a new worker gets the whole ring before it serves;
//! - keeps the TLS 1.2 session cache for all workers. It alone writes the
//!   SQLite file; a worker asks it for a session before making the
//!   handshake's GnuTLS session, so no handshake waits on a write;
//! - passes SIGHUP on, and on SIGTERM/SIGINT stops the workers gracefully
//!   and exits 0. Workers die with it (`PR_SET_PDEATHSIG`) and stop when
//!   its end of their channel closes.

mod keys;
mod slots;

use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::clock::unix_secs;
use crate::config::Config;
use crate::conn_limits::ConnCounts;
use crate::control::{Channel, Secret, ToChild, ToSupervisor};
use crate::os::{self, Forked};
use crate::outbound::{self, OutboundStart};
use crate::pid_file::PidFile;
use crate::queue::QueueDir;
use crate::server::{Kind, Listener, Server, TlsContext, WorkerStart, bind_sets, listen_all};
use crate::session_cache::{CacheConfig, SessionCache};
use crate::signals::Signals;
use crate::store::{self, Store};
use crate::tls::ticket_keys::MasterKey;
use crate::{default_cert, privileges, sd_notify, tls};
use keys::Keys;
use slots::Slot;

/// The oldest GnuTLS gsmtpd runs with; the build refuses older headers,
/// this catches an older library at run time.
const MIN_RUNTIME_GNUTLS: (u32, u32, u32) = (3, 6, 3);
const SIGNALS: Token = Token(0);
const CERT_WATCH: Token = Token(1);
/// Worker slot `i`'s channel has token `FIRST_SLOT + i`.
const FIRST_SLOT: usize = 2;
/// Bound on the session cache; the oldest rows go first.
const CACHE_MAX_ROWS: u64 = 100_000;
/// How long a new session-cache row may wait to be committed together with
/// the rows of other handshakes (lookups find it meanwhile).
const CACHE_COMMIT_DELAY: Duration = Duration::from_millis(100);
/// How often expired session-cache rows are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Past the workers' own shutdown timeout, how long before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// The loop wakes at least this often (the key file is checked then).
const TICK: Duration = Duration::from_secs(1);
/// A worker that panicked exits with this status.
const EXIT_PANIC: i32 = 70;

/// Starts gsmtpd and runs it until SIGTERM/SIGINT.
pub fn run(config: &Config) -> Result<(), String> {
    let version = tls::init().map_err(|e| e.to_string())?;
    if tls::version_tuple(version) < MIN_RUNTIME_GNUTLS {
        return Err(format!(
            "GnuTLS {version} is too old: gsmtpd needs 3.6.3 or newer"
        ));
    }
    let mut supervisor = Supervisor::start(config)?;
    supervisor.run(version)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not every worker has said it listens yet.
    Starting,
    Running,
    /// Workers were told to stop; SIGKILL for any left at `kill_at`.
    Stopping {
        kill_at: Instant,
    },
}

struct Supervisor {
    config: Config,
    pid: Pid,
    poll: Poll,
    signals: Signals,
    /// Per slot, its sockets; kept open for the slot's next worker.
    listeners: Vec<Vec<Listener>>,
    tls: TlsContext,
    counts: Rc<ConnCounts>,
    keys: Option<Keys>,
    /// The Unix second `keys` next has work to do.
    keys_due: u64,
    sessions: Option<SessionCache>,
    cache_commit_at: Option<Instant>,
    purge_at: Instant,
    /// The workers' slots, then the delivery process's (`delivery`).
    slots: Vec<Slot>,
    delivery: usize,
    phase: Phase,
    /// Why the start failed, once a worker died before listening.
    failed: Option<String>,
    /// Held (locked) for as long as this server runs on its state
    /// directory.
    _pid_file: PidFile,
}

impl Supervisor {
    /// Everything that can fail at start fails here, before any worker.
    fn start(config: &Config) -> Result<Supervisor, String> {
        default_cert::create_private_dir(&config.state_dir).map_err(|e| {
            format!(
                "creating state directory {}: {e}",
                config.state_dir.display()
            )
        })?;
        // First: a second server on this state directory stops here, not
        // at its listeners.
        let pid_file = PidFile::acquire(&config.state_dir)?;
        let mut tls = TlsContext::load(config)?;
        let wanted: Vec<(std::net::SocketAddr, Kind)> = config
            .listen
            .iter()
            .map(|a| (*a, Kind::Starttls))
            .chain(config.listen_tls.iter().map(|a| (*a, Kind::Implicit)))
            .collect();
        let listeners = bind_sets(&wanted, config.workers)?;
        // Blocked from here on, and in every worker forked later (which
        // opens its own descriptor for the ones it handles).
        let signals = Signals::new(&[
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
            Signal::SIGUSR1,
        ])
        .map_err(|e| format!("signals: {e}"))?;
        give_up_root(config)?;
        store::check_kernel();
        Store::open(&config.maildir, &config.hostname)
            .map_err(|e| format!("mail store {}: {e}", config.maildir.display()))?;
        let queue = QueueDir::new(&config.state_dir);
        queue
            .create()
            .map_err(|e| format!("queue {}: {e}", queue.root().display()))?;
        match store::clean_stale_tmp(&config.maildir, store::STALE_TMP_AGE) {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} stale files from the mail store's tmp/ directories"),
            Err(e) => log::warn!("cleaning stale tmp/ files: {e}"),
        }
        // Before any worker takes mail, and under either --durability: a
        // log written before a switch back to sync is recovered too.
        let interval = match config.durability {
            crate::config::Durability::Log { checkpoint } => checkpoint,
            crate::config::Durability::Sync => Duration::from_secs(2),
        };
        crate::server::recover_worker_logs(&config.wal_dir, &config.maildir, &queue, interval)?;
        // Only now may clients connect (they wait in the backlog until a
        // worker runs).
        listen_all(&listeners)?;
        let keys = ticket_keys(config, &tls)?;
        let counts = ConnCounts::new(config.workers, config.max_connections)
            .map_err(|e| format!("shared connection counts: {e}"))?;
        let poll = Poll::new().map_err(|e| format!("creating the poller: {e}"))?;
        poll.registry()
            .register(
                &mut SourceFd(&signals.raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
            .map_err(|e| format!("registering signals: {e}"))?;
        // The supervisor keeps its credentials current too: a worker it
        // forks later starts from them.
        if let Some(fd) = tls.watch_files() {
            poll.registry()
                .register(&mut SourceFd(&fd), CERT_WATCH, Interest::READABLE)
                .map_err(|e| format!("registering the certificate watch: {e}"))?;
        }
        let now = unix_secs();
        let mut supervisor = Supervisor {
            config: config.clone(),
            pid: nix::unistd::getpid(),
            poll,
            signals,
            listeners,
            tls,
            counts: Rc::new(counts),
            keys_due: keys.as_ref().map_or(u64::MAX, |k| k.next_due(now)),
            keys,
            sessions: open_session_cache(config),
            cache_commit_at: None,
            purge_at: Instant::now() + PURGE_EVERY,
            slots: (0..=config.workers).map(|_| Slot::default()).collect(),
            delivery: config.workers,
            phase: Phase::Starting,
            failed: None,
            _pid_file: pid_file,
        };
        for slot in 0..=config.workers {
            supervisor.spawn(slot)?;
        }
        Ok(supervisor)
    }

    fn run(&mut self, gnutls: &str) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("supervisor loop: {e}"));
            }
            let mut channels = false;
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    CERT_WATCH => self.tls.refresh_files(),
                    _ => channels = true,
                }
            }
            if channels {
                self.serve_channels(gnutls);
            }
            self.run_timers();
            if let Phase::Stopping { .. } = self.phase
                && self.slots.iter().all(|s| s.pid.is_none())
            {
                // Commits the rows still waiting.
                self.sessions.take();
                log::info!("all workers stopped; exiting");
                return match self.failed.take() {
                    Some(why) => Err(why),
                    None => Ok(()),
                };
            }
        }
    }

    fn poll_timeout(&self) -> Duration {
        let now = Instant::now();
        let kill_at = match self.phase {
            Phase::Stopping { kill_at } => Some(kill_at),
            _ => None,
        };
        self.slots
            .iter()
            .filter_map(|s| s.restart_at)
            .chain(self.cache_commit_at)
            .chain(kill_at)
            .map(|at| at.saturating_duration_since(now))
            .fold(TICK, Duration::min)
    }

    /// How the log names the process of `slot`.
    fn label(&self, slot: usize) -> String {
        if slot == self.delivery {
            "the delivery process".into()
        } else {
            format!("worker {slot}")
        }
    }

    /// Forks the process of `slot`. A worker's channel already holds the
    /// ticket key ring and `Start`, so it has them before it serves.
    fn spawn(&mut self, slot: usize) -> Result<(), String> {
        let label = self.label(slot);
        let (mut ours, theirs) =
            Channel::pair().map_err(|e| format!("a channel for {label}: {e}"))?;
        let mut first = Vec::new();
        if slot != self.delivery {
            first = self.keys.as_ref().map(Keys::snapshot).unwrap_or_default();
        }
        first.push(ToChild::Start.encode());
        for packet in first {
            ours.send(packet)
                .map_err(|e| format!("starting {label}: {e}"))?;
        }
        match os::fork().map_err(|e| format!("fork: {e}"))? {
            Forked::Child => {
                drop(ours);
                let status = if slot == self.delivery {
                    self.become_delivery(theirs)
                } else {
                    self.become_worker(slot, theirs)
                };
                // No unwinding into the supervisor's frames: its values,
                // whose descriptors this process closed, are never dropped.
                std::process::exit(status)
            }
            Forked::Parent(pid) => {
                drop(theirs);
                self.poll
                    .registry()
                    .register(
                        &mut SourceFd(&ours.raw_fd()),
                        Token(FIRST_SLOT + slot),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| format!("registering {label}'s channel: {e}"))?;
                log::info!("{label} started (pid {pid})");
                self.slots[slot].started(pid, ours, Instant::now());
                Ok(())
            }
        }
    }

    /// In the forked child: what every child does first. It dies with the
    /// supervisor, and keeps no descriptor of the supervisor's but `keep`.
    fn become_child(&self, keep: &[RawFd]) -> Result<bool, String> {
        // SIGKILL of the supervisor runs none of its code: the kernel
        // tells the child instead.
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
            .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        if nix::unistd::getppid() != self.pid {
            return Ok(false);
        }
        os::close_fds_except(keep).map_err(|e| format!("closing descriptors: {e}"))?;
        Ok(true)
    }

    /// In the forked child: runs the delivery process. Returns the exit
    /// status.
    fn become_delivery(&self, channel: Channel) -> i32 {
        let run = || -> Result<(), String> {
            if !self.become_child(&[channel.raw_fd()])? {
                return Ok(());
            }
            outbound::run(OutboundStart {
                config: self.config.clone(),
                channel,
            })
        };
        exit_status("the delivery process", run)
    }

    /// In the forked child: drops everything of the supervisor's but the
    /// slot's sockets and its channel, and runs the worker's loop. Returns
    /// the exit status.
    fn become_worker(&self, slot: usize, channel: Channel) -> i32 {
        let run = || -> Result<(), String> {
            let listeners = self.listeners[slot]
                .iter()
                .map(Listener::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| format!("worker sockets: {e}"))?;
            let mut keep: Vec<RawFd> = listeners.iter().map(|l| l.socket.as_raw_fd()).collect();
            keep.push(channel.raw_fd());
            if !self.become_child(&keep)? {
                return Ok(());
            }
            let mut server = Server::new(WorkerStart {
                config: self.config.clone(),
                slot,
                listeners,
                channel,
                tls: self.tls.for_worker(),
                counts: Rc::clone(&self.counts),
            })?;
            server.run().map_err(|e| format!("event loop: {e}"))
        };
        exit_status(&format!("worker {slot}"), run)
    }

    fn on_signals(&mut self) {
        for signal in self.signals.pending() {
            match signal {
                Signal::SIGCHLD => self.reap(),
                Signal::SIGUSR1 => {
                    log::info!("queue flush requested: passing it to the delivery process");
                    if let Some(channel) = self.slots[self.delivery].channel.as_mut() {
                        let _ = channel.send(ToChild::Flush.encode());
                    }
                }
                Signal::SIGHUP => {
                    log::info!("SIGHUP received: passing it to every worker");
                    self.signal_workers(Signal::SIGHUP);
                    self.tls.reload();
                    if let Some(keys) = self.keys.as_mut() {
                        let packets = keys.reload(unix_secs());
                        self.broadcast(packets);
                    }
                }
                stop => self.stop(&format!("{stop} received")),
            }
        }
    }

    /// Signals every child: the workers and the delivery process.
    fn signal_workers(&self, signal: Signal) {
        for pid in self.slots.iter().filter_map(|s| s.pid) {
            let _ = kill(pid, signal);
        }
    }

    /// Collects every worker that ended.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, status)) => {
                    self.worker_ended(pid, &format!("exited with status {status}"));
                }
                Ok(WaitStatus::Signaled(pid, signal, core)) => {
                    let core = if core { " (core dumped)" } else { "" };
                    self.worker_ended(pid, &format!("was killed by {signal}{core}"));
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    return;
                }
            }
        }
    }

    fn worker_ended(&mut self, pid: Pid, how: &str) {
        let Some(slot) = self.slots.iter().position(|s| s.pid == Some(pid)) else {
            return;
        };
        if slot != self.delivery {
            // Its connections are gone with it.
            self.counts.clear(slot);
        }
        let label = self.label(slot);
        let now = Instant::now();
        match self.phase {
            Phase::Stopping { .. } => {
                log::info!("{label} (pid {pid}) {how}");
                self.slots[slot].died(now);
            }
            Phase::Starting => {
                log::error!("{label} (pid {pid}) {how} before it was ready");
                self.slots[slot].died(now);
                self.failed = Some(format!(
                    "{label} {how} during start-up (its log lines say why)"
                ));
                self.stop("start-up failed");
            }
            Phase::Running => {
                let pause = self.slots[slot].died(now);
                let next = if pause.is_zero() {
                    "replacing it".to_string()
                } else {
                    format!("it keeps dying: replacing it in {} ms", pause.as_millis())
                };
                log::error!("{label} (pid {pid}) {how}; {next}");
            }
        }
    }

    /// Reads every worker's messages before answering any lookup: a
    /// session one worker stored must be in the cache before another
    /// worker's lookup for it is answered, and the store was sent before
    /// the client could even come back.
    fn serve_channels(&mut self, gnutls: &str) {
        let now = unix_secs();
        let mut lookups = Vec::new();
        let mut ready = Vec::new();
        let mut queued = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(channel) = slot.channel.as_mut() else {
                continue;
            };
            // A failure means the worker is gone: SIGCHLD will say so.
            let _ = channel.flush();
            while let Ok(Some(msg)) = channel.recv(ToSupervisor::decode) {
                match msg {
                    Ok(ToSupervisor::Ready) => ready.push(i),
                    Ok(ToSupervisor::Store { id, data }) => {
                        if let Some(cache) = self.sessions.as_mut() {
                            cache.store(&id, &data.0, now);
                        }
                    }
                    Ok(ToSupervisor::Remove { id }) => {
                        if let Some(cache) = self.sessions.as_mut() {
                            cache.remove(&id, now);
                        }
                    }
                    Ok(ToSupervisor::Lookup { request, id }) => lookups.push((i, request, id)),
                    Ok(ToSupervisor::Queued { ids }) => queued.extend(ids),
                    Err(e) => log::warn!("worker {i}: {e}"),
                }
            }
        }
        if !queued.is_empty()
            && let Some(channel) = self.slots[self.delivery].channel.as_mut()
        {
            // The delivery process reads the whole queue when it starts,
            // so one that is being replaced misses nothing.
            let _ = channel.send(ToChild::Queued { ids: queued }.encode());
        }
        for (i, request, id) in lookups {
            let data = self
                .sessions
                .as_mut()
                .and_then(|c| c.retrieve(&id, now))
                .map(Secret);
            if let Some(channel) = self.slots[i].channel.as_mut() {
                let _ = channel.send(ToChild::Session { request, data }.encode());
            }
        }
        if self.sessions.as_ref().is_some_and(|c| c.pending() > 0) {
            self.cache_commit_at
                .get_or_insert(Instant::now() + CACHE_COMMIT_DELAY);
        }
        for i in ready {
            self.on_ready(i, gnutls);
        }
    }

    fn on_ready(&mut self, slot: usize, gnutls: &str) {
        self.slots[slot].ready = true;
        if self.phase != Phase::Starting {
            if let Some(pid) = self.slots[slot].pid {
                log::info!("{} (pid {pid}) ready", self.label(slot));
            }
            return;
        }
        if !self.slots.iter().all(|s| s.ready) {
            return;
        }
        self.phase = Phase::Running;
        let addrs: Vec<String> = self.listeners[0]
            .iter()
            .map(|l| match l.kind {
                Kind::Implicit => format!("{} (TLS)", l.addr),
                Kind::Starttls => l.addr.to_string(),
            })
            .collect();
        log::info!(
            "gsmtpd {} (GnuTLS {gnutls}) as {}, {} worker(s): listening on {}",
            env!("CARGO_PKG_VERSION"),
            self.config.hostname,
            self.delivery,
            addrs.join(", ")
        );
        sd_notify::notify("READY=1");
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        if self.phase == Phase::Running {
            for slot in 0..self.slots.len() {
                let due = self.slots[slot].restart_at.is_some_and(|at| at <= now);
                if due && let Err(e) = self.spawn(slot) {
                    log::error!("restarting worker {slot}: {e}; trying again in 1 s");
                    self.slots[slot].restart_at = Some(now + TICK);
                }
            }
        }
        // Changes inotify cannot see (NFS, another host): a stat a second.
        self.tls.refresh_files();
        let unix = unix_secs();
        if unix >= self.keys_due
            && let Some(keys) = self.keys.as_mut()
        {
            let packets = keys.tick(unix);
            self.keys_due = keys.next_due(unix);
            self.broadcast(packets);
        }
        if self.cache_commit_at.is_some_and(|at| at <= now) {
            self.cache_commit_at = None;
            if let Some(cache) = self.sessions.as_mut() {
                cache.flush(unix);
            }
        }
        if self.purge_at <= now {
            self.purge_at = now + PURGE_EVERY;
            if let Some(cache) = self.sessions.as_mut() {
                cache.purge(unix);
            }
        }
        if let Phase::Stopping { kill_at } = self.phase
            && kill_at <= now
        {
            log::warn!("workers still running after the shutdown timeout: killing them");
            self.signal_workers(Signal::SIGKILL);
            self.phase = Phase::Stopping {
                kill_at: now + Duration::from_secs(3600),
            };
        }
    }

    /// Sends every packet to every worker, then wipes them (they hold keys).
    fn broadcast(&mut self, mut packets: Vec<Vec<u8>>) {
        for slot in &mut self.slots[..self.delivery] {
            if let Some(channel) = slot.channel.as_mut() {
                for packet in &packets {
                    let _ = channel.send(packet.clone());
                }
            }
        }
        for packet in &mut packets {
            tls::ticket_keys::wipe(packet);
        }
    }

    /// SIGTERM/SIGINT (or a failed start): every worker stops as it would
    /// alone — no new connections, transactions in progress may finish —
    /// and the supervisor exits once they all have.
    fn stop(&mut self, why: &str) {
        if let Phase::Stopping { .. } = self.phase {
            return;
        }
        let running = self.slots.iter().filter(|s| s.pid.is_some()).count();
        log::info!("{why}: stopping {running} worker(s)");
        sd_notify::notify("STOPPING=1");
        self.phase = Phase::Stopping {
            kill_at: Instant::now() + self.config.timeouts.shutdown + KILL_GRACE,
        };
        // Our copies of the sockets go now; once the workers close theirs,
        // the kernel refuses new clients rather than queue them.
        self.listeners.clear();
        self.signal_workers(Signal::SIGTERM);
    }
}

/// Runs a child's job; its exit status: 0, 1 after an error (logged), or
/// EXIT_PANIC after a panic (the panic hook has logged it).
fn exit_status(label: &str, run: impl FnOnce() -> Result<(), String>) -> i32 {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            log::error!("{label}: {e}");
            1
        }
        Err(_) => EXIT_PANIC,
    }
}

/// Root was needed for the ports and the keys; the rest runs as --user,
/// which must own what it writes from here on.
fn give_up_root(config: &Config) -> Result<(), String> {
    match &config.user {
        Some(account) => {
            privileges::give(&config.state_dir, account)?;
            // The write-ahead logs may live elsewhere (--wal-dir): made
            // here, while we may, for the account to write into.
            default_cert::create_private_dir(&config.wal_dir)
                .map_err(|e| format!("creating {}: {e}", config.wal_dir.display()))?;
            privileges::give(&config.wal_dir, account)?;
            for file in default_cert::files(&config.state_dir) {
                if file.exists() {
                    privileges::give(&file, account)?;
                }
            }
            privileges::drop_to(account)
        }
        None if privileges::running_as_root() => {
            privileges::check_store_safe_for_root(&config.maildir)
        }
        None => Ok(()),
    }
}

/// The ticket key ring's source, when tickets are on.
fn ticket_keys(config: &Config, tls: &TlsContext) -> Result<Option<Keys>, String> {
    if !tls.tickets_on() {
        return Ok(None);
    }
    let r = &config.resumption;
    let now = unix_secs();
    let keys = match &r.ticket_key_file {
        Some(path) => Keys::from_file(path.clone(), r.ticket_rotation, r.ticket_lifetime, now)?,
        None => Keys::rotating(
            r.ticket_rotation,
            r.ticket_lifetime,
            now,
            Box::new(MasterKey::generate),
        )?,
    };
    Ok(Some(keys))
}

/// The TLS 1.2 session cache, opened as the user that writes it.
fn open_session_cache(config: &Config) -> Option<SessionCache> {
    let r = &config.resumption;
    r.session_cache.as_ref().map(|path| {
        let mut cache = SessionCache::open(
            path,
            CacheConfig {
                lifetime_secs: r.ticket_lifetime,
                max_rows: CACHE_MAX_ROWS,
            },
        );
        cache.defer_writes();
        cache
    })
}
