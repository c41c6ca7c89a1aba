//! The client cache's side of one outbound TLS session: the key, the
//! cached session offered, what the handshake settled (OCSP included),
//! each session or ticket stored as it comes, and the log line's words.

use crate::client_cache::{self, Cached, ClientCache, KeyParts, NewSession, SessionKey};
use crate::clock::unix_now;
use crate::tls::ClientSession;

pub(super) struct Resumption {
    key: SessionKey,
    /// A cached session was offered; with the nextUpdate of its staple.
    offered: Option<Option<i64>>,
    /// Tickets were asked for (the cache is on).
    requested: bool,
    /// The server issued a ticket (or, under TLS 1.2, a session to cache).
    issued: bool,
    /// Until when this session counts as stapled, for the tickets it gets.
    ocsp_until: Option<i64>,
    /// For the log: `verified`, `cached` (resumed), `invalid` (a staple
    /// that did not verify) or `none`.
    ocsp: &'static str,
}

impl Resumption {
    /// Before the handshake: the session's key, and the cached session to
    /// offer (under `+ocsp`, only one whose staple still holds).
    pub fn begin(
        cache: &mut ClientCache,
        parts: &KeyParts<'_>,
        need_ocsp: bool,
    ) -> (Resumption, Option<Cached>) {
        let key = SessionKey::new(parts);
        let cached = cache.take(&key, unix_now(), need_ocsp);
        let resumption = Resumption {
            key,
            offered: cached.as_ref().map(|c| c.ocsp_until),
            requested: cache.is_on(),
            issued: false,
            ocsp_until: None,
            ocsp: "none",
        };
        (resumption, cached)
    }

    /// After the handshake: the OCSP verdict (a resumed session's from the
    /// full handshake that made it), stale cached sessions dropped, and a
    /// TLS 1.2 session cached. True when a valid staple stands behind it.
    pub fn settle(&mut self, session: &mut ClientSession, cache: &mut ClientCache) -> bool {
        let n = session.negotiated();
        let stapled = if n.resumed {
            self.ocsp_until = self.offered.flatten();
            self.ocsp_until.is_some_and(|until| until > unix_now())
        } else {
            if self.offered.is_some() {
                // Not resumed: the server's keys changed, or it forgot.
                cache.forget(&self.key);
            }
            // No staple, nothing to check: the chain is only verified
            // (without `verify`) to judge a staple that came.
            let checked = session.stapled() && session.ocsp_checked();
            self.ocsp_until = if checked {
                session.staple_next_update()
            } else {
                None
            };
            checked
        };
        self.ocsp = match (stapled, n.resumed) {
            (true, false) => "verified",
            (true, true) => "cached",
            (false, false) if session.stapled() => "invalid",
            (false, _) => "none",
        };
        // Under TLS 1.2 the session is complete now, whether or not a
        // ticket came with it; TLS 1.3 tickets arrive later (after_read).
        let ticket = session.take_ticket_received();
        self.issued |= ticket.is_some();
        if n.version != "TLS1.3" && (ticket.is_some() || !n.resumed) {
            self.store(session, cache, ticket.unwrap_or(0), false);
        }
        stapled
    }

    /// After each read inside TLS: a TLS 1.3 ticket that came is cached.
    pub fn after_read(&mut self, session: &mut ClientSession, cache: &mut ClientCache) {
        if let Some(lifetime) = session.take_ticket_received() {
            self.issued = true;
            self.store(session, cache, lifetime, true);
        }
    }

    /// `OCSP=... resumption 0x..(...)`: the staple's verdict and the five
    /// bits of Exim's `$tls_out_resumption`.
    pub fn describe(&self, resumed: bool) -> String {
        let bits = crate::logging::resumption_bits([
            self.requested,
            self.requested,
            self.offered.is_some(),
            self.issued,
            resumed,
        ]);
        format!("OCSP={} resumption {bits}", self.ocsp)
    }

    /// Caches what resumes `session` later: a TLS 1.3 ticket (used once),
    /// or a TLS 1.2 session. `lifetime` is the ticket's (0: none given).
    fn store(&self, session: &ClientSession, cache: &mut ClientCache, lifetime: u32, once: bool) {
        if !cache.is_on() {
            return;
        }
        let lifetime = match u64::from(lifetime) {
            // RFC 8446 4.6.1: a TLS 1.3 ticket with lifetime 0 is not to
            // be cached.
            0 if once => return,
            0 => client_cache::TLS12_DEFAULT_LIFETIME,
            l => l.min(client_cache::MAX_LIFETIME),
        };
        match session.session_data() {
            Ok(data) => cache.store(
                &self.key,
                &NewSession {
                    data,
                    expires: unix_now().saturating_add(lifetime as i64),
                    ocsp_until: self.ocsp_until,
                    once,
                },
            ),
            Err(e) => log::debug!("no session data to cache: {e}"),
        }
    }
}
