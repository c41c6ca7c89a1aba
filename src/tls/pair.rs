//! Two endpoints wired back to back in memory: a client and a server
//! session exchange their bytes directly. Used by the tests and by the
//! in-process benchmark to measure what a GnuTLS server handshake costs
//! with no network and no event loop.

use std::time::{Duration, Instant};

use super::TlsError;
use super::session::{Endpoint, Handshake};

/// Runs a handshake to completion and lets the client take in whatever the
/// server sent after it (TLS 1.3 tickets). Returns the time spent inside
/// the server's calls.
pub fn handshake(client: &mut Endpoint, server: &mut Endpoint) -> Result<Duration, TlsError> {
    let mut server_time = Duration::ZERO;
    let (mut client_done, mut server_done) = (false, false);
    for _ in 0..32 {
        if !client_done {
            client_done = matches!(client.handshake()?, Handshake::Done);
        }
        pass(client, server);
        if !server_done {
            let start = Instant::now();
            server_done = matches!(server.handshake()?, Handshake::Done);
            server_time += start.elapsed();
        }
        pass(server, client);
        if client_done && server_done {
            let mut plain = Vec::new();
            client.read(&mut plain)?;
            return Ok(server_time);
        }
    }
    Err(TlsError::new(
        crate::ffi::GNUTLS_E_INTERNAL_ERROR,
        "handshake did not finish",
    ))
}

/// Moves what `from` has to send into `to`.
pub fn pass(from: &mut Endpoint, to: &mut Endpoint) {
    let n = from.pending_output().len();
    if n > 0 {
        to.feed(from.pending_output());
        from.consume_output(n);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::session_cache::{CacheConfig, SessionCache};
    use crate::test_support::TempDir;
    use crate::tls::client_hello::{self, Parse};
    use crate::tls::session_db::{CacheOp, SessionDb};
    use crate::tls::ticket_keys::{self, MasterKey};
    use crate::tls::{
        ClientSession, ClientSetup, Credentials, Priority, ReadStatus, ServerSession, SessionSetup,
        x509,
    };

    struct Side {
        server_creds: Rc<Credentials>,
        client_creds: Rc<Credentials>,
        key: MasterKey,
        cache: Rc<RefCell<SessionCache>>,
        _dir: TempDir,
    }

    fn side() -> Side {
        crate::tls::init().unwrap();
        let pem = x509::self_signed("localhost", crate::clock::unix_secs() as i64, 2).unwrap();
        let mut server_creds = Credentials::new().unwrap();
        server_creds.add_pem(&pem.certificate, &pem.key).unwrap();
        let dir = TempDir::new("pair");
        let config = CacheConfig {
            lifetime_secs: 600,
            max_rows: 100,
        };
        Side {
            server_creds: Rc::new(server_creds),
            client_creds: Rc::new(Credentials::new().unwrap()),
            key: MasterKey::generate().unwrap(),
            cache: Rc::new(RefCell::new(SessionCache::open(
                &dir.path().join("s.db"),
                config,
            ))),
            _dir: dir,
        }
    }

    /// Connects twice with `priority`; returns (first resumed, second resumed).
    /// The session cache is consulted as a worker does: the session ID the
    /// client offers is looked up before the server session is made, and
    /// what the session stores is applied to the cache afterwards.
    fn twice(s: &Side, priority: &str, tickets: bool) -> (bool, bool) {
        let prio = Rc::new(Priority::new(priority).unwrap());
        let ops = Rc::new(RefCell::new(Vec::new()));
        let now = crate::clock::unix_secs();
        let mut resume = None;
        let mut resumed = Vec::new();
        for _ in 0..2 {
            let mut client = ClientSession::new(ClientSetup {
                credentials: &s.client_creds,
                priority: &prio,
                server_name: Some("localhost"),
                verify_name: None,
                ocsp: false,
                resume: resume.as_deref(),
                tickets: true,
            })
            .unwrap();
            client.handshake().unwrap();
            let Parse::Complete(hello) = client_hello::parse(client.pending_output()) else {
                panic!("no ClientHello");
            };
            let found = s
                .cache
                .borrow_mut()
                .retrieve(&hello.session_id, now)
                .map(|data| (hello.session_id.clone(), data));
            let setup = SessionSetup {
                credentials: &s.server_creds,
                priority: &prio,
                ticket_key: tickets.then_some(&s.key),
                no_new_tickets: false,
                cache: Some(SessionDb {
                    found,
                    ops: Rc::clone(&ops),
                }),
                lifetime: 600,
            };
            let mut server = ServerSession::new(setup).unwrap();
            handshake(&mut client, &mut server).unwrap();
            for op in ops.borrow_mut().drain(..) {
                match op {
                    CacheOp::Store { id, data } => s.cache.borrow_mut().store(&id, &data, now),
                    CacheOp::Remove { id } => s.cache.borrow_mut().remove(&id, now),
                };
            }
            resumed.push(server.negotiated().resumed);
            resume = Some(client.session_data().unwrap());
        }
        (resumed[0], resumed[1])
    }

    /// The ring finds a ticket's master by the name GnuTLS puts on it,
    /// computed the way GnuTLS derives it (lib/stek.c): this pins that
    /// derivation against the GnuTLS linked at run time.
    #[test]
    fn computed_key_names_are_the_names_on_real_tickets() {
        let s = side();
        for priority in [
            "NORMAL:-VERS-ALL:+VERS-TLS1.3",
            "NORMAL:-VERS-ALL:+VERS-TLS1.2",
        ] {
            let prio = Rc::new(Priority::new(priority).unwrap());
            let setup = SessionSetup {
                credentials: &s.server_creds,
                priority: &prio,
                ticket_key: Some(&s.key),
                no_new_tickets: false,
                cache: None,
                lifetime: 600,
            };
            let mut server = ServerSession::new(setup).unwrap();
            let mut client = ClientSession::new(ClientSetup {
                credentials: &s.client_creds,
                priority: &prio,
                server_name: Some("localhost"),
                verify_name: None,
                ocsp: false,
                resume: None,
                tickets: true,
            })
            .unwrap();
            handshake(&mut client, &mut server).unwrap();
            let now = crate::clock::unix_secs();
            let expected = s.key.key_name(ticket_keys::period(now, 600));
            let sent = server.tickets_sent();
            assert!(!sent.is_empty(), "{priority}: no ticket");
            assert!(sent.iter().all(|n| *n == expected), "{priority}");
        }
    }

    #[test]
    fn tls13_and_tls12_resume_by_ticket_and_tls12_by_session_id() {
        let s = side();
        assert_eq!(
            twice(&s, "NORMAL:-VERS-ALL:+VERS-TLS1.3", true),
            (false, true)
        );
        assert_eq!(
            twice(&s, "NORMAL:-VERS-ALL:+VERS-TLS1.2", true),
            (false, true)
        );
        assert_eq!(
            twice(&s, "NORMAL:-VERS-ALL:+VERS-TLS1.2:%NO_TICKETS", true),
            (false, true)
        );
        assert_eq!(
            twice(&s, "NORMAL:-VERS-ALL:+VERS-TLS1.2", false),
            (false, true),
            "cache without tickets"
        );
        assert_eq!(
            twice(&s, "NORMAL:-VERS-ALL:+VERS-TLS1.3", false),
            (false, false),
            "1.3 needs tickets"
        );
    }

    /// The server skips the cache lookup for a client presenting a TLS 1.2
    /// ticket (TlsContext::session), which is sound only while GnuTLS keeps
    /// no row for a session it issued a ticket for.
    #[test]
    fn tls12_sessions_with_a_ticket_are_never_cached() {
        let s = side();
        assert_eq!(
            twice(&s, "NORMAL:-VERS-ALL:+VERS-TLS1.2", true),
            (false, true)
        );
        assert_eq!(
            s.cache.borrow_mut().len(),
            0,
            "a ticketed session was cached"
        );
        assert_eq!(
            twice(&s, "NORMAL:-VERS-ALL:+VERS-TLS1.2:%NO_TICKETS", true),
            (false, true)
        );
        assert_eq!(s.cache.borrow_mut().len(), 1, "the session-ID path caches");
    }

    /// A client verifying a self-signed server against that certificate as
    /// its trust anchor: the right name passes, another name or no anchor
    /// fails the handshake, and the failure says why.
    #[test]
    fn a_client_verifies_the_chain_and_the_name() {
        crate::tls::init().unwrap();
        let dir = TempDir::new("verify");
        let pem = x509::self_signed("mx.example", crate::clock::unix_secs() as i64, 2).unwrap();
        let mut server_creds = Credentials::new().unwrap();
        server_creds.add_pem(&pem.certificate, &pem.key).unwrap();
        let server_creds = Rc::new(server_creds);
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &pem.certificate).unwrap();
        let mut trusting = Credentials::new().unwrap();
        assert_eq!(trusting.trust(Some(&ca)).unwrap(), 1);
        let trusting = Rc::new(trusting);
        let prio = Rc::new(Priority::new("NORMAL").unwrap());
        let attempt = |client_creds: &Rc<Credentials>, name: &str| {
            let setup = SessionSetup {
                credentials: &server_creds,
                priority: &prio,
                ticket_key: None,
                no_new_tickets: false,
                cache: None,
                lifetime: 600,
            };
            let mut server = ServerSession::new(setup).unwrap();
            let mut client = ClientSession::new(ClientSetup {
                credentials: client_creds,
                priority: &prio,
                server_name: Some(name),
                verify_name: Some(name),
                ocsp: true,
                resume: None,
                tickets: true,
            })
            .unwrap();
            let result = handshake(&mut client, &mut server);
            (
                result.is_ok(),
                client.verify_failure(),
                client.ocsp_checked(),
            )
        };
        assert_eq!(attempt(&trusting, "mx.example"), (true, None, false));
        let (ok, why, _) = attempt(&trusting, "other.example");
        assert!(!ok);
        let why = why.unwrap();
        assert!(why.contains("name in the certificate"), "{why}");
        let (ok, why, _) = attempt(&Rc::new(Credentials::new().unwrap()), "mx.example");
        assert!(!ok && why.is_some(), "no anchor: not trusted");
        let err = Credentials::new()
            .unwrap()
            .trust(Some(&dir.path().join("missing.pem")))
            .unwrap_err();
        assert!(err.code < 0);
    }

    /// A fresh client and server, handshake done, no session cache.
    fn connected(
        s: &Side,
        priority: &str,
        ticket_key: Option<&MasterKey>,
    ) -> (ClientSession, ServerSession) {
        connect_with(s, priority, ticket_key, None, true)
    }

    fn connect_with(
        s: &Side,
        priority: &str,
        ticket_key: Option<&MasterKey>,
        resume: Option<&[u8]>,
        tickets: bool,
    ) -> (ClientSession, ServerSession) {
        let prio = Rc::new(Priority::new(priority).unwrap());
        let setup = SessionSetup {
            credentials: &s.server_creds,
            priority: &prio,
            ticket_key,
            no_new_tickets: false,
            cache: None,
            lifetime: 600,
        };
        let mut server = ServerSession::new(setup).unwrap();
        let mut client = ClientSession::new(ClientSetup {
            credentials: &s.client_creds,
            priority: &prio,
            server_name: Some("localhost"),
            verify_name: None,
            ocsp: false,
            resume,
            tickets,
        })
        .unwrap();
        handshake(&mut client, &mut server).unwrap();
        (client, server)
    }

    /// The server's first reply, read by the client with what came before
    /// it (TLS 1.3 tickets).
    fn first_reply(client: &mut ClientSession, server: &mut ServerSession) {
        server.write(b"220 hi\r\n").unwrap();
        pass(server, client);
        let mut got = Vec::new();
        client.read(&mut got).unwrap();
        assert_eq!(got, b"220 hi\r\n");
    }

    /// The delivery process caches a session once the hook saw a ticket
    /// arrive: under TLS 1.3 after the handshake, with the first read;
    /// under TLS 1.2 during it. Taking the data then must not wait, and
    /// must resume.
    #[test]
    fn a_client_sees_each_ticket_arrive_and_its_data_resumes() {
        let s = side();
        for prio in [
            "NORMAL:-VERS-ALL:+VERS-TLS1.3",
            "NORMAL:-VERS-ALL:+VERS-TLS1.2",
        ] {
            let (mut client, mut server) = connected(&s, prio, Some(&s.key));
            // (`handshake` has read what came behind the server's flight.)
            let ticket = client.take_ticket_received();
            first_reply(&mut client, &mut server);
            let ticket = ticket.or_else(|| client.take_ticket_received());
            assert_eq!(ticket, Some(600), "{prio}: the ticket's lifetime");
            assert_eq!(client.take_ticket_received(), None, "{prio}: taken once");
            let data = client.session_data().unwrap();
            let (again, _) = connect_with(&s, prio, Some(&s.key), Some(&data), true);
            assert!(again.negotiated().resumed, "{prio}: resumed");
        }
    }

    /// Without a cache a TLS 1.2 client sends no session_ticket extension,
    /// so it gets no ticket. (A TLS 1.3 GnuTLS client still sends
    /// psk_key_exchange_modes, as GnuTLS counts TLS 1.3 as PSK-capable, and
    /// servers send tickets it drops.)
    #[test]
    fn a_tls12_client_without_a_cache_asks_for_no_ticket() {
        let s = side();
        let prio = "NORMAL:-VERS-ALL:+VERS-TLS1.2";
        let (mut client, mut server) = connect_with(&s, prio, Some(&s.key), None, false);
        first_reply(&mut client, &mut server);
        assert!(!server.negotiated().ticket_sent);
        assert_eq!(client.take_ticket_received(), None);
    }

    #[test]
    fn application_data_flows_both_ways() {
        let s = side();
        let (mut client, mut server) = connected(&s, "NORMAL", None);
        client.write(b"EHLO x\r\n").unwrap();
        pass(&mut client, &mut server);
        let mut got = Vec::new();
        server.read(&mut got).unwrap();
        assert_eq!(got, b"EHLO x\r\n");
        server.write(b"250 ok\r\n").unwrap();
        pass(&mut server, &mut client);
        got.clear();
        client.read(&mut got).unwrap();
        assert_eq!(got, b"250 ok\r\n");
    }

    /// A TLS 1.3 server sends its tickets right behind its Finished; the
    /// client's handshake ends before reading them, and they reach its
    /// first read together with the server's first reply (a STARTTLS
    /// client's EHLO answer), which must not wait for more input.
    #[test]
    fn a_reply_behind_tls13_tickets_is_read_at_once() {
        let s = side();
        let prio = Rc::new(Priority::new("NORMAL:-VERS-ALL:+VERS-TLS1.3").unwrap());
        let mut server = ServerSession::new(SessionSetup {
            credentials: &s.server_creds,
            priority: &prio,
            ticket_key: Some(&s.key),
            no_new_tickets: false,
            cache: None,
            lifetime: 600,
        })
        .unwrap();
        let mut client = ClientSession::new(ClientSetup {
            credentials: &s.client_creds,
            priority: &prio,
            server_name: Some("localhost"),
            verify_name: None,
            ocsp: false,
            resume: None,
            tickets: true,
        })
        .unwrap();
        let (mut client_done, mut server_done) = (false, false);
        for _ in 0..8 {
            if !client_done {
                client_done = matches!(client.handshake().unwrap(), Handshake::Done);
            }
            pass(&mut client, &mut server);
            if !server_done {
                server_done = matches!(server.handshake().unwrap(), Handshake::Done);
            }
            if client_done && server_done {
                break;
            }
            pass(&mut server, &mut client);
        }
        assert!(client_done && server_done);
        server.write(b"250 ok\r\n").unwrap();
        pass(&mut server, &mut client);
        let mut got = Vec::new();
        assert!(matches!(client.read(&mut got).unwrap(), ReadStatus::Open));
        assert_eq!(got, b"250 ok\r\n");
    }
}
