//! The TLS material shared by every new session: credentials built from the
//! configured (or generated) certificates, the compiled priorities, the
//! ticket key ring and the TLS 1.2 session cache.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::certs::Certs;
use crate::clock::unix_secs as unix_now;
use crate::config::Config;
use crate::default_cert;
use crate::session_cache::{CacheConfig, SessionCache};
use crate::tls::client_hello::Hello;
use crate::tls::ticket_keys::{MasterKey, TicketKeys};
use crate::tls::{self, Negotiated, Priority, ServerSession, SessionSetup, TlsError};

/// GnuTLS 3.6.4 to 3.6.13 encrypted tickets with an all-zero key until the
/// first rotation (CVE-2020-13777).
const TICKETS_SAFE_FROM: (u32, u32, u32) = (3, 6, 14);
/// Bound on the session cache; the oldest rows go first.
const CACHE_MAX_ROWS: u64 = 100_000;
/// How long a new session-cache row may wait to be committed together with
/// the rows of other handshakes (a lookup commits it at once).
const CACHE_COMMIT_DELAY: Duration = Duration::from_millis(100);

pub struct TlsContext {
    certs: Certs,
    priority: Rc<Priority>,
    tickets: Option<TicketKeys>,
    cache: Option<Rc<RefCell<SessionCache>>>,
    /// When the rows the cache holds back are to be committed.
    cache_commit_at: Option<Instant>,
    lifetime: u32,
}

/// A session together with the ticket master it was given, so that the
/// tickets it issues can be attributed once the handshake is done.
pub struct NewSession {
    pub session: ServerSession,
    master: Option<u64>,
}

impl TlsContext {
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
            priority: Rc::new(priority),
            tickets: ticket_keys(r.tickets, r.ticket_rotation, r.ticket_lifetime)?,
            cache: None,
            cache_commit_at: None,
            lifetime: u32::try_from(r.ticket_lifetime).unwrap_or(u32::MAX),
        })
    }

    /// Opens the TLS 1.2 session cache; done after any change of user, so
    /// the database belongs to the user that writes it.
    pub fn open_cache(&mut self, config: &Config) {
        let r = &config.resumption;
        self.cache = r.session_cache.as_ref().map(|path| {
            let cache_config = CacheConfig {
                lifetime_secs: r.ticket_lifetime,
                max_rows: CACHE_MAX_ROWS,
            };
            let mut cache = SessionCache::open(path, cache_config);
            cache.defer_writes();
            Rc::new(RefCell::new(cache))
        });
    }

    /// Called after every batch of events: commits the session-cache rows
    /// once they have waited `CACHE_COMMIT_DELAY`, so that one transaction
    /// carries the rows of many handshakes.
    pub fn commit_cache(&mut self, now: Instant) {
        let Some(cache) = &self.cache else {
            return;
        };
        let Ok(mut c) = cache.try_borrow_mut() else {
            return;
        };
        if c.pending() == 0 {
            self.cache_commit_at = None;
            return;
        }
        let at = *self.cache_commit_at.get_or_insert(now + CACHE_COMMIT_DELAY);
        if at <= now {
            c.flush(unix_now());
            self.cache_commit_at = None;
        }
    }

    /// When `commit_cache` next has work to do.
    pub fn cache_commit_at(&self) -> Option<Instant> {
        self.cache_commit_at
    }

    /// A session for a client whose ClientHello is `hello` (None when it
    /// could not be read): handed the ticket master that issued the ticket
    /// the client offers, if we still hold it.
    pub fn session(&mut self, hello: Option<&Hello>) -> Result<NewSession, TlsError> {
        let now = unix_now();
        if let Some(ring) = self.tickets.as_mut() {
            ring.tick(now);
        }
        let offered = hello.and_then(|h| h.ticket_key_name.as_ref());
        let choice = self.tickets.as_ref().map(|ring| ring.choose(offered));
        // A TLS 1.2 ticket resumes by itself or not at all: GnuTLS never
        // caches a session it issued a ticket for, so the session ID such
        // a client sends cannot find a row, and looking costs a SQLite
        // read per resumption. A failed ticket still gets a full
        // handshake, and a new ticket rather than a row.
        let cache_useless = choice.is_some() && hello.is_some_and(|h| h.offers_tls12_ticket);
        let setup = SessionSetup {
            credentials: self.certs.current(now as i64),
            priority: &self.priority,
            ticket_key: choice.as_ref().map(|c| c.key),
            no_new_tickets: choice.as_ref().is_some_and(|c| !c.current),
            cache: self.cache.as_ref().filter(|_| !cache_useless),
            lifetime: self.lifetime,
        };
        Ok(NewSession {
            session: ServerSession::new(&setup)?,
            master: choice.map(|c| c.id),
        })
    }

    /// After a handshake: remember which master issued the tickets sent,
    /// so that a client presenting one later gets that master back.
    pub fn learn(&mut self, session: &NewSession) {
        if let (Some(ring), Some(id)) = (self.tickets.as_mut(), session.master) {
            for name in session.session.tickets_sent() {
                ring.learn(*name, id);
            }
        }
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
        self.tickets.is_some() || self.cache.as_ref().is_some_and(|c| c.borrow().is_enabled())
    }

    /// Periodic upkeep: rotate and drop ticket keys, purge expired cache
    /// rows. Returns the Unix time it next has work to do.
    pub fn housekeeping(&mut self) -> u64 {
        let now = unix_now();
        let mut next = now + 60;
        if let Some(ring) = self.tickets.as_mut() {
            ring.tick(now);
            next = next.min(ring.next_due());
        }
        if let Some(cache) = &self.cache
            && let Ok(mut c) = cache.try_borrow_mut()
        {
            c.purge(now);
        }
        next.max(now + 1)
    }
}

/// The ticket key ring, or None when tickets are off or insecure with the
/// GnuTLS linked at run time.
fn ticket_keys(enabled: bool, rotation: u64, lifetime: u64) -> Result<Option<TicketKeys>, String> {
    if !enabled {
        log::info!("session tickets disabled (--no-tickets); TLS 1.2 session IDs still resume");
        return Ok(None);
    }
    let version = tls::runtime_version();
    if tls::version_tuple(version) < TICKETS_SAFE_FROM {
        log::warn!(
            "GnuTLS {version} has CVE-2020-13777 (tickets encrypted with a zero key): session tickets disabled, \
             resumption through the session-ID cache only"
        );
        return Ok(None);
    }
    let ring = TicketKeys::new(
        rotation,
        lifetime,
        unix_now(),
        Box::new(MasterKey::generate),
    )
    .map_err(|e| format!("session tickets: {e}"))?;
    log::info!(
        "session tickets on: key rotation every {rotation} s, ticket lifetime {lifetime} s, at most {} key(s) held",
        ring.max_held()
    );
    Ok(Some(ring))
}

/// The five bits of Exim's `$tls_in_resumption`, decoded into words.
pub fn resumption_words(supported: bool, hello: Option<&Hello>, n: &Negotiated) -> String {
    let requested = hello.is_some_and(|h| h.requests_ticket);
    let offered = hello.is_some_and(|h| h.offers_ticket) || n.resumption_requested;
    let bits = [
        (supported, "supported"),
        (requested, "client-requested-ticket"),
        (offered, "client-offered-session"),
        (n.ticket_sent, "server-issued-ticket"),
        (n.resumed, "resumed"),
    ];
    let value: u32 = bits
        .iter()
        .enumerate()
        .map(|(i, (on, _))| u32::from(*on) << i)
        .sum();
    let words: Vec<&str> = bits.iter().filter(|(on, _)| *on).map(|(_, w)| *w).collect();
    format!(
        "0x{value:02x}({})",
        if words.is_empty() {
            "none".to_string()
        } else {
            words.join(",")
        }
    )
}
