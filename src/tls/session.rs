//! A GnuTLS server session over an in-memory transport: the event loop feeds
//! the bytes it read from the socket in, and takes the bytes GnuTLS wants to
//! send out, so the loop decides every read and write and GnuTLS never sees
//! a file descriptor.

use std::ops::{Deref, DerefMut};
use std::os::raw::{c_int, c_uint, c_void};
use std::ptr;
use std::rc::Rc;

use super::client_hello::KEY_NAME_LEN;
use super::credentials::Credentials;
use super::session_db::{self, SessionDb};
use super::ticket_keys::{KeyName, MasterKey};
use super::{Priority, TlsError, static_str};
use crate::ffi;

/// Bytes in flight between the socket and GnuTLS, and what the handshake
/// hook observed. Boxed so that the pointer GnuTLS holds stays valid
/// however the session value moves.
struct Transport {
    session: ffi::gnutls_session_t,
    incoming: Vec<u8>,
    read_pos: usize,
    outgoing: Vec<u8>,
    /// Key names of the tickets this session sent (GnuTLS never sets
    /// GNUTLS_SFLAGS_SESSION_TICKET on a server, so we watch the wire).
    tickets_sent: Vec<KeyName>,
    /// A client's: the lifetime (seconds, 0 when the server gave none) of
    /// the last NewSessionTicket received and not yet taken.
    ticket_received: Option<u32>,
    /// The lifetime of the ticket GnuTLS is taking in (seen before it
    /// parses the message, which consumes the body).
    ticket_arriving: Option<u32>,
}

impl Transport {
    fn unread(&self) -> &[u8] {
        &self.incoming[self.read_pos..]
    }
}

pub enum Handshake {
    Done,
    /// GnuTLS needs more input from the client.
    InProgress,
}

pub enum ReadStatus {
    Open,
    /// The client sent close_notify.
    Closed,
}

/// What the handshake settled on, for log lines and the Received header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: &'static str,
    pub cipher: String,
    pub bits: u32,
    pub resumed: bool,
    /// gnutls_session_resumption_requested: the client offered a session
    /// (noisy on TLS 1.2, where any session ID counts).
    pub resumption_requested: bool,
    pub ticket_sent: bool,
}

/// Everything a new server session is set up with.
pub struct SessionSetup<'a> {
    pub credentials: &'a Rc<Credentials>,
    pub priority: &'a Rc<Priority>,
    /// Enables tickets (TLS 1.2 and 1.3) with this master.
    pub ticket_key: Option<&'a MasterKey>,
    /// TLS 1.3: send no new tickets (the master is retired: it may decrypt
    /// the client's ticket but must not issue more).
    pub no_new_tickets: bool,
    /// The TLS 1.2 session-ID cache.
    pub cache: Option<SessionDb>,
    /// Seconds a ticket or cached session may be resumed.
    pub lifetime: u32,
}

/// One side of a TLS connection over the in-memory transport: what server
/// and client sessions share.
pub struct Endpoint {
    pub(super) raw: ffi::gnutls_session_t,
    io: Box<Transport>,
}

pub struct ServerSession {
    // Declared first so the GnuTLS session is freed before what it uses.
    ep: Endpoint,
    // Sessions keep their credentials, priorities and cache alive: a
    // reload may replace the server's copies while this session still
    // uses these.
    _credentials: Rc<Credentials>,
    _priority: Rc<Priority>,
    /// Boxed: GnuTLS's callbacks hold its address.
    _db: Option<Box<SessionDb>>,
}

impl Deref for ServerSession {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.ep
    }
}

impl DerefMut for ServerSession {
    fn deref_mut(&mut self) -> &mut Endpoint {
        &mut self.ep
    }
}

/// Largest TLS record plaintext: the room each gnutls_record_recv gets.
const RECORD_MAX: usize = 16 * 1024;

/// Bounds retries on GnuTLS's non-fatal returns so a misbehaving peer
/// cannot make one call spin.
const MAX_RETRIES: usize = 16;

impl ServerSession {
    pub fn new(setup: SessionSetup<'_>) -> Result<ServerSession, TlsError> {
        // No GNUTLS_ENABLE_EARLY_DATA: 0-RTT data is never accepted.
        let mut flags = ffi::GNUTLS_SERVER;
        if setup.ticket_key.is_none() {
            flags |= ffi::GNUTLS_NO_TICKETS;
        }
        if setup.no_new_tickets {
            flags |= ffi::GNUTLS_NO_AUTO_SEND_TICKET;
        }
        let mut session = ServerSession {
            ep: Endpoint::new(flags, setup.credentials, setup.priority)?,
            _credentials: Rc::clone(setup.credentials),
            _priority: Rc::clone(setup.priority),
            _db: None,
        };
        // SAFETY: the session is live; clients are not asked for certificates.
        unsafe {
            ffi::gnutls_certificate_server_set_request(session.ep.raw, ffi::GNUTLS_CERT_IGNORE)
        };
        session.configure_resumption(&setup)?;
        if let Some(db) = setup.cache {
            let db = session._db.insert(Box::new(db));
            session_db::attach(session.ep.raw, db);
        }
        Ok(session)
    }

    fn configure_resumption(&mut self, setup: &SessionSetup<'_>) -> Result<(), TlsError> {
        let lifetime = i32::try_from(setup.lifetime).unwrap_or(i32::MAX);
        // SAFETY: raw is a live session.
        unsafe { ffi::gnutls_db_set_cache_expiration(self.ep.raw, lifetime) };
        if let Some(key) = setup.ticket_key {
            let datum = key.datum();
            // SAFETY: datum points at the 64-byte master, which GnuTLS copies.
            let rc = unsafe { ffi::gnutls_session_ticket_enable_server(self.ep.raw, &datum) };
            TlsError::check(rc, "gnutls_session_ticket_enable_server")?;
        }
        Ok(())
    }

    /// The DER of the certificate this session presented.
    /// None for a resumed session, which presents no certificate (GnuTLS
    /// may still return one from the resumed session's data).
    pub fn served_certificate(&self) -> Option<&[u8]> {
        // SAFETY: raw is a live session; the datum it returns (if any) is
        // owned by the credentials, which this session keeps alive.
        unsafe {
            if ffi::gnutls_session_is_resumed(self.ep.raw) != 0 {
                return None;
            }
            let d = ffi::gnutls_certificate_get_ours(self.ep.raw);
            if d.is_null() || (*d).data.is_null() {
                return None;
            }
            Some(std::slice::from_raw_parts((*d).data, (*d).size as usize))
        }
    }

    /// The host name the client asked for with SNI.
    pub fn server_name(&self) -> Option<String> {
        let mut buf = [0u8; 256];
        let mut len = buf.len();
        let mut kind: c_uint = 0;
        // SAFETY: buf is writable for len bytes; GnuTLS updates len.
        let rc = unsafe {
            ffi::gnutls_server_name_get(
                self.ep.raw,
                buf.as_mut_ptr() as *mut c_void,
                &mut len,
                &mut kind,
                0,
            )
        };
        if rc < 0 || kind != ffi::GNUTLS_NAME_DNS {
            return None;
        }
        let name = buf.get(..len)?;
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        Some(String::from_utf8_lossy(name).into_owned())
    }

    /// Key names of the tickets sent to the client during the handshake.
    pub fn tickets_sent(&self) -> &[KeyName] {
        &self.ep.io.tickets_sent
    }
}

impl Endpoint {
    /// gnutls_init with `role_flags` (GNUTLS_SERVER or GNUTLS_CLIENT plus
    /// any others), then priorities, credentials and the transport.
    pub(super) fn new(
        role_flags: u32,
        credentials: &Credentials,
        priority: &Priority,
    ) -> Result<Endpoint, TlsError> {
        let mut raw: ffi::gnutls_session_t = ptr::null_mut();
        let flags = role_flags | ffi::GNUTLS_NONBLOCK | ffi::GNUTLS_NO_SIGNAL;
        // SAFETY: raw is a valid out-pointer.
        let rc = unsafe { ffi::gnutls_init(&mut raw, flags) };
        TlsError::check(rc, "gnutls_init")?;
        let mut ep = Endpoint {
            raw,
            io: Box::new(Transport {
                session: raw,
                incoming: Vec::new(),
                read_pos: 0,
                outgoing: Vec::new(),
                tickets_sent: Vec::new(),
                ticket_received: None,
                ticket_arriving: None,
            }),
        };
        ep.configure(credentials, priority)?;
        Ok(ep)
    }

    /// The caller keeps `credentials` and `priority` alive as long as the
    /// session.
    fn configure(
        &mut self,
        credentials: &Credentials,
        priority: &Priority,
    ) -> Result<(), TlsError> {
        let raw = self.raw;
        // SAFETY: raw is a live session; the priority outlives it.
        let rc = unsafe { ffi::gnutls_priority_set(raw, priority.raw()) };
        TlsError::check(rc, "gnutls_priority_set")?;
        // SAFETY: raw is a live session; the hook only reads the message and
        // writes into the Transport registered as the session pointer below.
        unsafe {
            ffi::gnutls_handshake_set_hook_function(
                raw,
                ffi::GNUTLS_HANDSHAKE_NEW_SESSION_TICKET,
                ffi::GNUTLS_HOOK_BOTH as c_int,
                Some(handshake_hook),
            )
        };
        // SAFETY: as above, for the credentials.
        let rc = unsafe {
            ffi::gnutls_credentials_set(
                raw,
                ffi::GNUTLS_CRD_CERTIFICATE,
                credentials.raw() as *mut c_void,
            )
        };
        TlsError::check(rc, "gnutls_credentials_set")?;
        let io: *mut Transport = &mut *self.io;
        // SAFETY: raw is live; io points into a Box that lives as long as the
        // session and is only touched by the callbacks while GnuTLS runs.
        unsafe {
            // The event loop enforces the handshake deadline.
            ffi::gnutls_handshake_set_timeout(raw, 0);
            ffi::gnutls_transport_set_ptr(raw, io as *mut c_void);
            ffi::gnutls_session_set_ptr(raw, io as *mut c_void);
            ffi::gnutls_transport_set_push_function(raw, Some(push));
            ffi::gnutls_transport_set_pull_function(raw, Some(pull));
            ffi::gnutls_transport_set_pull_timeout_function(raw, Some(pull_timeout));
        }
        Ok(())
    }

    /// Hands GnuTLS bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        let io = &mut *self.io;
        if io.read_pos == io.incoming.len() {
            io.incoming.clear();
            io.read_pos = 0;
        }
        io.incoming.extend_from_slice(bytes);
    }

    /// Gives back the transport buffers' memory once they are drained:
    /// a handshake grows them to tens of KiB, and an idle connection
    /// should not keep that.
    pub fn release_idle_buffers(&mut self) {
        const KEEP: usize = 2048;
        let io = &mut *self.io;
        if io.read_pos == io.incoming.len() && io.incoming.capacity() > KEEP {
            io.incoming = Vec::new();
            io.read_pos = 0;
        }
        if io.outgoing.is_empty() && io.outgoing.capacity() > KEEP {
            io.outgoing = Vec::new();
        }
    }

    /// The lifetime (seconds; 0: none given) of a NewSessionTicket that
    /// arrived since the last call. A client's tickets come during a TLS
    /// 1.2 handshake and after a TLS 1.3 one, inside `read`.
    pub fn take_ticket_received(&mut self) -> Option<u32> {
        self.io.ticket_received.take()
    }

    /// Bytes GnuTLS wants sent to the client.
    pub fn pending_output(&self) -> &[u8] {
        &self.io.outgoing
    }

    /// The event loop wrote the first `n` bytes of `pending_output`.
    pub fn consume_output(&mut self, n: usize) {
        let out = &mut self.io.outgoing;
        out.drain(..n.min(out.len()));
    }

    pub fn handshake(&mut self) -> Result<Handshake, TlsError> {
        for _ in 0..MAX_RETRIES {
            // SAFETY: raw is a live, fully configured session.
            let rc = unsafe { ffi::gnutls_handshake(self.raw) };
            match rc {
                0 => return Ok(Handshake::Done),
                ffi::GNUTLS_E_AGAIN => return Ok(Handshake::InProgress),
                rc if self.is_fatal(rc) => return Err(self.fail(rc, "TLS handshake")),
                _ => continue,
            }
        }
        Err(TlsError::new(
            ffi::GNUTLS_E_INTERNAL_ERROR,
            "TLS handshake made no progress",
        ))
    }

    /// Decrypts everything GnuTLS can from the input fed so far and appends
    /// the plaintext to `out`.
    pub fn read(&mut self, out: &mut Vec<u8>) -> Result<ReadStatus, TlsError> {
        let mut retries = 0;
        let mut read_pos = self.io.read_pos;
        loop {
            // GnuTLS decrypts straight into the spare capacity: no bounce
            // buffer to zero (16 KiB per call) and copy from.
            out.reserve(RECORD_MAX);
            let spare = out.spare_capacity_mut();
            let room = spare.len();
            // SAFETY: spare is writable for room bytes; GnuTLS writes at most
            // that many and returns how many it wrote.
            let rc = unsafe {
                ffi::gnutls_record_recv(self.raw, spare.as_mut_ptr() as *mut c_void, room)
            };
            if rc > 0 {
                let n = (rc as usize).min(room);
                // SAFETY: GnuTLS initialised the first n bytes of the spare
                // capacity (n <= room, so within the allocation).
                unsafe { out.set_len(out.len() + n) };
                continue;
            }
            if rc == 0 {
                return Ok(ReadStatus::Closed);
            }
            let rc = rc as c_int;
            // GnuTLS also answers E_AGAIN after a post-handshake message
            // (a TLS 1.3 NewSessionTicket, a KeyUpdate) with more records
            // behind it, as a server sends its tickets and first reply
            // together: only an empty transport means "wait for input".
            if rc == ffi::GNUTLS_E_AGAIN && self.check_pending() == 0 {
                if self.io.unread().is_empty() {
                    return Ok(ReadStatus::Open);
                }
                if self.io.read_pos != read_pos {
                    read_pos = self.io.read_pos;
                    continue;
                }
            }
            if rc == ffi::GNUTLS_E_REHANDSHAKE {
                // A TLS 1.2 client asking to renegotiate: decline politely.
                // SAFETY: raw is a live session.
                unsafe {
                    ffi::gnutls_alert_send(
                        self.raw,
                        ffi::GNUTLS_AL_WARNING,
                        ffi::GNUTLS_A_NO_RENEGOTIATION,
                    )
                };
            } else if self.is_fatal(rc) {
                return Err(self.fail(rc, "TLS read"));
            }
            retries += 1;
            if retries > MAX_RETRIES {
                return Err(self.error(rc, "TLS read made no progress"));
            }
        }
    }

    /// Encrypts `data` into records queued in `pending_output`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), TlsError> {
        let mut sent = 0;
        let mut retries = 0;
        while sent < data.len() {
            let rest = &data[sent..];
            // SAFETY: rest is readable for rest.len() bytes.
            let rc = unsafe {
                ffi::gnutls_record_send(self.raw, rest.as_ptr() as *const c_void, rest.len())
            };
            if rc > 0 {
                sent += rc as usize;
                continue;
            }
            retries += 1;
            // Our push never blocks, so anything but progress is an error.
            if rc == 0 || self.is_fatal(rc as c_int) || retries > MAX_RETRIES {
                return Err(self.error(rc as c_int, "TLS write"));
            }
        }
        Ok(())
    }

    /// Queues close_notify. The client's answer is not awaited.
    pub fn bye(&mut self) {
        // SAFETY: raw is a live session; the push callback never blocks.
        let rc = unsafe { ffi::gnutls_bye(self.raw, ffi::GNUTLS_SHUT_WR) };
        if rc < 0 {
            log::debug!("gnutls_bye: {}", TlsError::new(rc, "close_notify"));
        }
    }

    pub fn negotiated(&self) -> Negotiated {
        // SAFETY: raw is a live session; all of these only read its state
        // and return values or static strings.
        unsafe {
            let version = ffi::gnutls_protocol_get_version(self.raw);
            let cipher = ffi::gnutls_cipher_get(self.raw);
            Negotiated {
                version: static_str(ffi::gnutls_protocol_get_name(version)).unwrap_or("unknown"),
                cipher: self.suite_name(),
                bits: (ffi::gnutls_cipher_get_key_size(cipher) * 8) as u32,
                resumed: ffi::gnutls_session_is_resumed(self.raw) != 0,
                resumption_requested: ffi::gnutls_session_resumption_requested(self.raw) != 0,
                ticket_sent: !self.io.tickets_sent.is_empty(),
            }
        }
    }

    #[cfg(gnutls_ciphersuite_get)]
    fn suite_name(&self) -> String {
        // SAFETY: raw is a live session; the result is static or null.
        let name = unsafe { ffi::gnutls_ciphersuite_get(self.raw) };
        static_str(name).unwrap_or("unknown").to_string()
    }

    #[cfg(not(gnutls_ciphersuite_get))]
    fn suite_name(&self) -> String {
        // SAFETY: raw is a live session; the results are static or null.
        unsafe {
            let cipher = ffi::gnutls_cipher_get(self.raw);
            let suite = ffi::gnutls_cipher_suite_get_name(
                ffi::gnutls_kx_get(self.raw),
                cipher,
                ffi::gnutls_mac_get(self.raw),
            );
            static_str(suite)
                .or_else(|| static_str(ffi::gnutls_cipher_get_name(cipher)))
                .unwrap_or("unknown")
                .to_string()
        }
    }

    fn check_pending(&self) -> usize {
        // SAFETY: raw is a live session.
        unsafe { ffi::gnutls_record_check_pending(self.raw) }
    }

    fn is_fatal(&self, rc: c_int) -> bool {
        // SAFETY: pure function of its argument.
        rc < 0 && unsafe { ffi::gnutls_error_is_fatal(rc) } != 0
    }

    /// A fatal error: tell the peer with the alert that fits (queued in the
    /// output, which the connection writes before closing), then report it.
    fn fail(&self, rc: c_int, context: &str) -> TlsError {
        if rc != ffi::GNUTLS_E_FATAL_ALERT_RECEIVED {
            // SAFETY: raw is a live session; the alert goes to our push callback.
            unsafe { ffi::gnutls_alert_send_appropriate(self.raw, rc) };
        }
        self.error(rc, context)
    }

    /// A TlsError that names the alert the client sent, when it sent one.
    fn error(&self, rc: c_int, context: &str) -> TlsError {
        if rc == ffi::GNUTLS_E_FATAL_ALERT_RECEIVED {
            // SAFETY: raw is a live session; the name is static or null.
            let alert =
                unsafe { static_str(ffi::gnutls_alert_get_name(ffi::gnutls_alert_get(self.raw))) };
            return TlsError::new(
                rc,
                format!("{context} (client alert: {})", alert.unwrap_or("?")),
            );
        }
        TlsError::new(rc, context)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // SAFETY: raw came from gnutls_init and is freed exactly once; the
        // transport box is dropped only after this.
        unsafe { ffi::gnutls_deinit(self.raw) }
    }
}

unsafe extern "C" fn push(
    ptr: ffi::gnutls_transport_ptr_t,
    data: *const c_void,
    len: usize,
) -> isize {
    // SAFETY: ptr is the Transport set in configure(), alive for the session;
    // GnuTLS gives a buffer readable for len bytes.
    let (io, data) = unsafe {
        (
            &mut *(ptr as *mut Transport),
            std::slice::from_raw_parts(data as *const u8, len),
        )
    };
    io.outgoing.extend_from_slice(data);
    len as isize
}

unsafe extern "C" fn pull(
    ptr: ffi::gnutls_transport_ptr_t,
    data: *mut c_void,
    len: usize,
) -> isize {
    // SAFETY: as in push; GnuTLS gives a buffer writable for len bytes.
    let io = unsafe { &mut *(ptr as *mut Transport) };
    let available = io.unread();
    if available.is_empty() {
        // SAFETY: io.session is the live session calling us.
        unsafe { ffi::gnutls_transport_set_errno(io.session, libc::EAGAIN) };
        return -1;
    }
    let n = available.len().min(len);
    // SAFETY: data is writable for len >= n bytes; the ranges cannot overlap.
    unsafe { ptr::copy_nonoverlapping(available.as_ptr(), data as *mut u8, n) };
    io.read_pos += n;
    n as isize
}

/// GnuTLS asks this before a read that has a timeout; answering from the
/// buffer keeps it from ever polling a file descriptor.
unsafe extern "C" fn pull_timeout(ptr: ffi::gnutls_transport_ptr_t, _ms: c_uint) -> c_int {
    // SAFETY: as in push.
    let io = unsafe { &*(ptr as *const Transport) };
    if io.unread().is_empty() {
        // SAFETY: io.session is the live session calling us.
        unsafe { ffi::gnutls_transport_set_errno(io.session, libc::EAGAIN) };
        -1
    } else {
        1
    }
}

/// Sees every NewSessionTicket. A server records the key name of each it
/// sends (its first 16 bytes, where GnuTLS puts the name of the key that
/// encrypted it): GnuTLS never sets GNUTLS_SFLAGS_SESSION_TICKET on a
/// server. A client notes the lifetime of each it receives (before GnuTLS
/// parses it: afterwards the body is consumed), and once it is stored,
/// that it is there: session data taken earlier would wait for one
/// (gnutls_session_get_data2).
///
/// On a TLS 1.3 full handshake GnuTLS queues a server's tickets right
/// behind its own Finished, and they go out with that flight, as from a
/// blocking server. Holding them back until the client's Finished arrived
/// (which saves GnuTLS computing the expected Finished once in vain) cost
/// every client that leaves right after its handshake, as TLS scanners do,
/// its ticket: 2 or 3 of 10 `openssl s_client -sess_out` runs got one,
/// against 10 of 10 now.
unsafe extern "C" fn handshake_hook(
    session: ffi::gnutls_session_t,
    htype: c_uint,
    when: c_uint,
    incoming: c_uint,
    msg: *const ffi::gnutls_datum_t,
) -> c_int {
    if htype != ffi::GNUTLS_HANDSHAKE_NEW_SESSION_TICKET || msg.is_null() {
        return 0;
    }
    // SAFETY: GnuTLS passes the live session and a datum describing the
    // message body for the duration of the call; the session pointer is the
    // Transport set in configure(), which nothing else touches meanwhile.
    let (io, body, tls13) = unsafe {
        let io = ffi::gnutls_session_get_ptr(session) as *mut Transport;
        let msg = &*msg;
        if io.is_null() || msg.data.is_null() {
            return 0;
        }
        (
            &mut *io,
            std::slice::from_raw_parts(msg.data, msg.size as usize),
            ffi::gnutls_protocol_get_version(session) == ffi::GNUTLS_TLS1_3,
        )
    };
    let post = when == ffi::GNUTLS_HOOK_POST;
    match (incoming != 0, post) {
        (true, false) => io.ticket_arriving = Some(ticket_lifetime(body)),
        (true, true) => io.ticket_received = io.ticket_arriving.take(),
        (false, true) => {
            if let Some(name) = ticket_key_name(body, tls13) {
                io.tickets_sent.push(name);
            }
        }
        (false, false) => {}
    }
    0
}

/// ticket_lifetime (RFC 8446 4.6.1) or ticket_lifetime_hint (RFC 5077
/// 3.3): the first four bytes of either body.
fn ticket_lifetime(body: &[u8]) -> u32 {
    body.get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// The key name inside a NewSessionTicket body: RFC 5077 3.3
/// (lifetime_hint, ticket) or RFC 8446 4.6.1 (lifetime, age_add, nonce,
/// ticket, extensions).
pub(super) fn ticket_key_name(body: &[u8], tls13: bool) -> Option<KeyName> {
    let mut at = 4; // ticket_lifetime(_hint)
    if tls13 {
        at += 4; // ticket_age_add
        let nonce_len = *body.get(at)? as usize;
        at += 1 + nonce_len;
    }
    let len = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]) as usize;
    let ticket = body.get(at + 2..at + 2 + len)?;
    ticket.get(..KEY_NAME_LEN)?.try_into().ok()
}
