//! The TLS material shared by every new session of a worker: credentials
//! built from the configured (or generated) certificates, the compiled
//! priorities, the ticket key ring the supervisor keeps filled, and the
//! queue through which sessions pass their TLS 1.2 session-cache changes
//! on to the supervisor, which keeps the cache for every worker.

use std::cell::RefCell;
use std::rc::Rc;

use super::certs::Certs;
use crate::clock::unix_secs as unix_now;
use crate::config::Config;
use crate::default_cert;
use crate::tls::client_hello::Hello;
use crate::tls::session_db::{CacheOp, SessionDb};
use crate::tls::ticket_keys::KeyRing;
use crate::tls::{self, Negotiated, Priority, ServerSession, SessionSetup, TlsError};

/// GnuTLS 3.6.4 to 3.6.13 encrypted tickets with an all-zero key until the
/// first rotation (CVE-2020-13777).
const TICKETS_SAFE_FROM: (u32, u32, u32) = (3, 6, 14);

pub struct TlsContext {
    certs: Certs,
    priority: Rc<Priority>,
    /// TLS 1.3 is enabled: clients offering it never resume by session ID.
    tls13: bool,
    /// The masters the supervisor sent; None when tickets are off.
    tickets: Option<KeyRing>,
    /// Where sessions queue their session-cache changes; None without a
    /// session cache.
    cache_ops: Option<Rc<RefCell<Vec<CacheOp>>>>,
    lifetime: u64,
}

impl TlsContext {
    /// Loads certificates and priorities, in the supervisor before any
    /// worker starts, so that a bad file stops the start.
    pub fn load(config: &Config) -> Result<TlsContext, String> {
        let priority =
            Priority::new(&config.tls_priority).map_err(|e| format!("--tls-priority: {e}"))?;
        let pairs = if config.certs.is_empty() {
            vec![default_cert::ensure(&config.state_dir, &config.hostname)?]
        } else {
            config.certs.clone()
        };
        let r = &config.resumption;
        Ok(TlsContext {
            certs: Certs::load(pairs, unix_now() as i64)?,
            tls13: priority.allows_tls13(),
            priority: Rc::new(priority),
            tickets: tickets_on(config).then(|| KeyRing::new(r.ticket_lifetime)),
            cache_ops: r.session_cache.is_some().then(Rc::default),
            lifetime: r.ticket_lifetime,
        })
    }

    /// The context a forked worker starts from: the same credentials and
    /// priorities, an empty key ring (the supervisor sends the masters),
    /// its own cache queue, and its own watch on the certificate files.
    pub fn for_worker(&self) -> TlsContext {
        TlsContext {
            certs: self.certs.for_worker(),
            priority: Rc::clone(&self.priority),
            tls13: self.tls13,
            tickets: self.tickets.as_ref().map(|_| KeyRing::new(self.lifetime)),
            cache_ops: self.cache_ops.as_ref().map(|_| Rc::default()),
            lifetime: self.lifetime,
        }
    }

    pub fn tickets_on(&self) -> bool {
        self.tickets.is_some()
    }

    /// The ring the supervisor's messages fill; None when tickets are off.
    pub fn ring(&mut self) -> Option<&mut KeyRing> {
        self.tickets.as_mut()
    }

    /// The session ID to look up in the cache before the session for this
    /// ClientHello is made, if the handshake could resume by it: a TLS 1.2
    /// handshake (the client offers no TLS 1.3, or we allow none) whose
    /// client names a session and presents no ticket. A TLS 1.2 ticket
    /// resumes by itself or not at all: GnuTLS never caches a session it
    /// issued a ticket for, so the session ID such a client sends cannot
    /// find a row.
    pub fn lookup_for(&self, hello: &Hello) -> Option<Vec<u8>> {
        let tls13 = hello.offers_tls13 && self.tls13;
        let ticket = hello.offers_tls12_ticket && self.tickets.is_some();
        let wanted = self.cache_ops.is_some() && !hello.session_id.is_empty() && !tls13 && !ticket;
        wanted.then(|| hello.session_id.clone())
    }

    /// A session for a client whose ClientHello is `hello` (None when it
    /// could not be read): handed the ticket master that issued the ticket
    /// the client offers, if we still hold it, and the cached session
    /// `found` for the ID it offers.
    pub fn session(
        &mut self,
        hello: Option<&Hello>,
        found: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<ServerSession, TlsError> {
        let now = unix_now();
        let offered = hello.and_then(|h| h.ticket_key_name.as_ref());
        let choice = self
            .tickets
            .as_mut()
            .and_then(|ring| ring.choose(offered, now));
        let cache = self.cache_ops.as_ref().map(|ops| SessionDb {
            found,
            ops: Rc::clone(ops),
        });
        ServerSession::new(SessionSetup {
            credentials: self.certs.current(now as i64),
            priority: &self.priority,
            ticket_key: choice.as_ref().map(|c| c.key),
            no_new_tickets: choice.as_ref().is_some_and(|c| !c.current),
            cache,
            lifetime: u32::try_from(self.lifetime).unwrap_or(u32::MAX),
        })
    }

    /// The cache changes sessions made since the last call, to send to the
    /// supervisor.
    pub fn take_cache_ops(&self) -> Vec<CacheOp> {
        self.cache_ops
            .as_ref()
            .and_then(|ops| {
                ops.try_borrow_mut()
                    .ok()
                    .map(|mut o| std::mem::take(&mut *o))
            })
            .unwrap_or_default()
    }

    /// Starts watching the certificate files (in the process that owns the
    /// inotify descriptor: each worker, and the supervisor, whose copy a
    /// new worker starts from), catching up on changes since they were
    /// loaded. Returns the descriptor for the event loop.
    pub fn watch_files(&mut self) -> Option<std::os::fd::RawFd> {
        self.certs.watch_files();
        self.certs.watch_fd()
    }

    /// The watch saw activity (or a second passed): rebuild the
    /// credentials now if a file changed.
    pub fn refresh_files(&mut self) {
        self.certs.refresh(unix_now() as i64);
    }

    /// SIGHUP: re-read every certificate, key and OCSP file.
    pub fn reload(&mut self) {
        self.certs.reload(unix_now() as i64);
    }

    /// The certificate a session was served, and the name the client asked
    /// for, as the log shows them.
    pub fn served(&self, session: &ServerSession) -> String {
        let cert = match session.served_certificate() {
            Some(der) => self.certs.name_of(der).unwrap_or("?"),
            None => "-",
        };
        match session.server_name() {
            Some(sni) => format!("{cert} SNI={sni}"),
            None => cert.to_string(),
        }
    }

    pub fn resumption_supported(&self) -> bool {
        self.tickets.is_some() || self.cache_ops.is_some()
    }
}

/// Whether tickets are issued: asked for, and safe with the GnuTLS linked
/// at run time.
fn tickets_on(config: &Config) -> bool {
    if !config.resumption.tickets {
        log::info!("session tickets disabled (--no-tickets); TLS 1.2 session IDs still resume");
        return false;
    }
    let version = tls::runtime_version();
    if tls::version_tuple(version) < TICKETS_SAFE_FROM {
        log::warn!(
            "GnuTLS {version} has CVE-2020-13777 (tickets encrypted with a zero key): session tickets disabled, \
             resumption through the session-ID cache only"
        );
        return false;
    }
    true
}

/// The five bits of Exim's `$tls_in_resumption`, decoded into words.
pub fn resumption_words(supported: bool, hello: Option<&Hello>, n: &Negotiated) -> String {
    let requested = hello.is_some_and(|h| h.requests_ticket);
    let offered = hello.is_some_and(|h| h.offers_ticket) || n.resumption_requested;
    crate::logging::resumption_bits([supported, requested, offered, n.ticket_sent, n.resumed])
}
