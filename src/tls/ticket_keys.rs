//! Session-ticket master keys, held only in memory, and the ring of them
//! that a worker hands its sessions.
//!
//! GnuTLS takes one 64-byte master per session and derives the key that
//! encrypts tickets from it and the time: SHA3-512 over the big-endian
//! period number `floor(now / (3 × lifetime))` and the master (its
//! `lib/stek.c`); the first 16 bytes of that are the key name each ticket
//! begins with. A fresh session accepts its own period's key and the one
//! before. So the name on a ticket a client offers tells which master
//! issued it — any process that holds the master can compute it, whichever
//! worker or host issued the ticket — and the ring hands the session that
//! master, so a retired master still decrypts its tickets until they
//! expire.
//!
//! Times are Unix seconds passed in by the caller, so tests drive the clock.

use std::fmt;
use std::os::raw::c_void;

use super::client_hello::KEY_NAME_LEN;
use super::{TlsError, free_datum};
use crate::ffi;
use crate::os::LockedPage;

pub const MASTER_LEN: usize = 64;
pub type KeyName = [u8; KEY_NAME_LEN];

/// GnuTLS's STEK_ROTATION_PERIOD_PRODUCT: a derived ticket key serves
/// three times the session lifetime.
const PERIOD_PER_LIFETIME: u64 = 3;

/// One master key, on a locked page of its own (never swapped, never in a
/// core dump, zeroed in a forked child), wiped when dropped. Its Debug
/// output shows only the fingerprint.
pub struct MasterKey {
    page: LockedPage,
}

impl MasterKey {
    /// A fresh random master from `gnutls_session_ticket_key_generate`.
    pub fn generate() -> Result<MasterKey, TlsError> {
        let mut datum = ffi::gnutls_datum_t {
            data: std::ptr::null_mut(),
            size: 0,
        };
        // SAFETY: datum is a valid out-parameter; GnuTLS fills it with a
        // gnutls_malloc'd buffer.
        let rc = unsafe { ffi::gnutls_session_ticket_key_generate(&mut datum) };
        TlsError::check(rc, "generating a session ticket key")?;
        if datum.data.is_null() || datum.size as usize != MASTER_LEN {
            free_datum(datum, true);
            return Err(TlsError::new(
                ffi::GNUTLS_E_INTERNAL_ERROR,
                "unexpected ticket key size",
            ));
        }
        // SAFETY: datum holds exactly MASTER_LEN bytes (checked above).
        let src = unsafe { std::slice::from_raw_parts(datum.data, MASTER_LEN) };
        let key = MasterKey::from_slice(src);
        free_datum(datum, true);
        key.ok_or_else(|| {
            TlsError::new(
                ffi::GNUTLS_E_MEMORY_ERROR,
                "no memory for a session ticket key",
            )
        })
    }

    #[cfg(test)]
    pub fn from_bytes(bytes: [u8; MASTER_LEN]) -> MasterKey {
        MasterKey::from_slice(&bytes).expect("a page for a test key")
    }

    /// A master read from a ticket key file or the control channel: exactly
    /// `MASTER_LEN` bytes, else None (also when no page can be had). The
    /// caller wipes its copy.
    pub fn from_slice(bytes: &[u8]) -> Option<MasterKey> {
        if bytes.len() != MASTER_LEN {
            return None;
        }
        let mut page = LockedPage::new().ok()?;
        page.bytes_mut()
            .get_mut(..MASTER_LEN)?
            .copy_from_slice(bytes);
        Some(MasterKey { page })
    }

    /// The key itself, to write into a ticket key file or hand to another
    /// process. Never log it.
    pub fn expose(&self) -> &[u8; MASTER_LEN] {
        self.page
            .bytes()
            .first_chunk()
            .expect("a page holds a master")
    }

    /// A datum GnuTLS copies from; valid while `self` lives.
    pub(super) fn datum(&self) -> ffi::gnutls_datum_t {
        ffi::gnutls_datum_t {
            data: self.expose().as_ptr() as *mut u8,
            size: MASTER_LEN as u32,
        }
    }

    /// 12 hex digits of SHA-256 over a label and the key: enough to tell
    /// keys apart in the log, and nothing about the key itself.
    pub fn fingerprint(&self) -> String {
        let mut input = Vec::with_capacity(MASTER_LEN + 32);
        input.extend_from_slice(b"gsmtpd ticket key fingerprint\0");
        input.extend_from_slice(self.expose());
        let mut digest = [0u8; 32];
        let ok = hash(ffi::GNUTLS_DIG_SHA256, &input, &mut digest);
        wipe(&mut input);
        if !ok {
            return "unavailable".into();
        }
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The name GnuTLS puts on tickets this master encrypts during
    /// `period` (see the module comment).
    pub fn key_name(&self, period: u64) -> KeyName {
        let mut input = Vec::with_capacity(8 + MASTER_LEN);
        input.extend_from_slice(&period.to_be_bytes());
        input.extend_from_slice(self.expose());
        // Bytes 16.. are the derived encryption and MAC keys: wiped below.
        let mut derived = [0u8; 64];
        let ok = hash(ffi::GNUTLS_DIG_SHA3_512, &input, &mut derived);
        wipe(&mut input);
        let mut name = [0u8; KEY_NAME_LEN];
        if ok {
            name.copy_from_slice(&derived[..KEY_NAME_LEN]);
        }
        wipe(&mut derived);
        name
    }
}

/// The SHA-256 of `input` (None only if GnuTLS lacks the digest).
pub fn sha256(input: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hash(ffi::GNUTLS_DIG_SHA256, input, &mut out).then_some(out)
}

/// `gnutls_hash_fast` into `out`, which must be the digest's size.
fn hash(algorithm: ffi::gnutls_digest_algorithm_t, input: &[u8], out: &mut [u8]) -> bool {
    // SAFETY: input is readable for its length; out has room for the
    // digest (SHA-256: 32 bytes, SHA3-512: 64, as the callers pass).
    let rc = unsafe {
        ffi::gnutls_hash_fast(
            algorithm,
            input.as_ptr() as *const c_void,
            input.len(),
            out.as_mut_ptr() as *mut c_void,
        )
    };
    rc >= 0
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint())
    }
}

/// Zeroes memory that held key material, in a way the optimiser keeps.
pub fn wipe(bytes: &mut [u8]) {
    // SAFETY: bytes is valid for writes of its length; gnutls_memset is a
    // memset the optimiser cannot remove.
    unsafe { ffi::gnutls_memset(bytes.as_mut_ptr() as *mut c_void, 0, bytes.len()) }
}

/// The period GnuTLS's ticket-key derivation is in at `now`.
pub fn period(now: u64, lifetime: u64) -> u64 {
    now / (PERIOD_PER_LIFETIME * lifetime.max(1))
}

struct Held {
    id: u64,
    key: MasterKey,
    fingerprint: String,
    created: u64,
    /// When it stopped encrypting new tickets; None while it issues them.
    retired: Option<u64>,
    /// Its key names for a period and the period before, computed once
    /// per period.
    names: Option<(u64, KeyName, KeyName)>,
}

impl Held {
    fn issued(&mut self, name: &KeyName, period: u64) -> bool {
        if self.names.is_none_or(|(p, _, _)| p != period) {
            let before = self.key.key_name(period.saturating_sub(1));
            self.names = Some((period, self.key.key_name(period), before));
        }
        self.names
            .as_ref()
            .is_some_and(|(_, now, before)| now == name || before == name)
    }
}

/// What `KeyRing::choose` hands a new session.
pub struct Choice<'a> {
    pub key: &'a MasterKey,
    pub id: u64,
    /// False for a retired master: the session may decrypt its client's
    /// ticket but must not issue new tickets under it.
    pub current: bool,
}

/// The masters a process holds, as the supervisor tells it (or, in the
/// supervisor, as its rotation or key file makes them).
pub struct KeyRing {
    lifetime: u64,
    /// Oldest first.
    held: Vec<Held>,
}

impl KeyRing {
    /// `lifetime`: seconds a ticket may be used (`--ticket-lifetime`, which
    /// is also each session's GnuTLS cache expiration).
    pub fn new(lifetime: u64) -> KeyRing {
        KeyRing {
            lifetime,
            held: Vec::new(),
        }
    }

    /// Adds master `id` (replacing one of the same id). Without `retired`
    /// it issues new tickets from now on.
    pub fn insert(&mut self, id: u64, key: MasterKey, created: u64, retired: Option<u64>) {
        self.held.retain(|h| h.id != id);
        let fingerprint = key.fingerprint();
        self.held.push(Held {
            id,
            key,
            fingerprint,
            created,
            retired,
            names: None,
        });
    }

    /// Master `id` stops issuing tickets. False if it is not held.
    pub fn retire(&mut self, id: u64, at: u64) -> bool {
        match self.held.iter_mut().find(|h| h.id == id) {
            Some(h) => {
                h.retired = Some(at);
                true
            }
            None => false,
        }
    }

    /// Forgets master `id` (its key is wiped). False if it is not held.
    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.held.len();
        self.held.retain(|h| h.id != id);
        self.held.len() != before
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The fingerprint of master `id`, for log lines.
    pub fn fingerprint(&self, id: u64) -> &str {
        self.held
            .iter()
            .find(|h| h.id == id)
            .map_or("?", |h| h.fingerprint.as_str())
    }

    /// Every master, oldest first: (id, created, retired, key).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, Option<u64>, &MasterKey)> {
        self.held
            .iter()
            .map(|h| (h.id, h.created, h.retired, &h.key))
    }

    /// The id of the master that issues tickets: the newest not retired.
    pub fn current_id(&self) -> Option<u64> {
        self.held
            .iter()
            .rev()
            .find(|h| h.retired.is_none())
            .map(|h| h.id)
    }

    /// The master for a session whose client offers a ticket with this key
    /// name (or none): the master that issued it while we hold it, the
    /// current one otherwise. None when the ring is empty.
    pub fn choose(&mut self, offered: Option<&KeyName>, now: u64) -> Option<Choice<'_>> {
        let period = period(now, self.lifetime);
        let current = self.current_id();
        let mut issuer = None;
        if let Some(name) = offered {
            for h in &mut self.held {
                if h.issued(name, period) {
                    issuer = Some(h.id);
                    break;
                }
            }
        }
        let id = issuer.or(current)?;
        let held = self.held.iter().find(|h| h.id == id)?;
        Some(Choice {
            key: &held.key,
            id,
            current: Some(id) == current,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; MASTER_LEN])
    }

    #[test]
    fn a_ticket_finds_the_master_that_issued_it_for_two_periods() {
        crate::tls::init().unwrap();
        let lifetime = 100; // periods of 300 s
        let mut ring = KeyRing::new(lifetime);
        ring.insert(1, key(1), 0, None);
        let issued_at = 1_000;
        let name = key(1).key_name(period(issued_at, lifetime));
        ring.insert(2, key(2), 1_100, None);
        ring.retire(1, 1_100);
        let c = ring.choose(Some(&name), 1_100).unwrap();
        assert_eq!((c.id, c.current), (1, false), "retired: decrypt only");
        // Still found in the next period (GnuTLS accepts the previous
        // period's key), no longer in the one after.
        assert_eq!(ring.choose(Some(&name), 1_200).unwrap().id, 1);
        let c = ring.choose(Some(&name), 1_500).unwrap();
        assert_eq!((c.id, c.current), (2, true), "too old: the current key");
        assert_eq!(ring.choose(None, 1_500).unwrap().id, 2);
        assert_eq!(ring.choose(Some(&[7; 16]), 1_500).unwrap().id, 2);
    }

    #[test]
    fn retiring_removing_and_the_current_key() {
        let mut ring = KeyRing::new(10);
        assert!(
            ring.choose(None, 0).is_none(),
            "an empty ring issues nothing"
        );
        ring.insert(1, key(1), 0, None);
        ring.insert(2, key(2), 5, None);
        assert_eq!(ring.current_id(), Some(2), "the newest issues");
        assert!(ring.retire(2, 6));
        assert_eq!(ring.current_id(), Some(1));
        assert!(ring.remove(1));
        assert!(!ring.remove(1));
        assert_eq!(ring.current_id(), None);
        let c = ring.choose(None, 7);
        assert!(c.is_none(), "only a retired key: no new tickets");
        assert_eq!(ring.len(), 1);
        assert!(!ring.retire(9, 0));
    }

    #[test]
    fn keys_are_on_their_own_page_and_never_shown() {
        crate::tls::init().unwrap();
        let key = MasterKey::generate().unwrap();
        assert_ne!(*key.expose(), [0; MASTER_LEN]);
        let debug = format!("{key:?}");
        assert!(
            debug.starts_with("MasterKey(") && debug.len() == "MasterKey()".len() + 12,
            "{debug}"
        );
        assert_eq!(key.fingerprint(), key.fingerprint());
        assert_ne!(
            key.fingerprint(),
            MasterKey::generate().unwrap().fingerprint()
        );
        assert!(MasterKey::from_slice(&[1; 63]).is_none());

        let mut bytes = [0x5a; MASTER_LEN];
        wipe(&mut bytes);
        assert_eq!(bytes, [0; MASTER_LEN]);
    }
}
