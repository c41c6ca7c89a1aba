//! Session-ticket master keys, held only in memory.
//!
//! GnuTLS takes one 64-byte master per session and derives the key that
//! actually encrypts tickets from it and the time. Replacing the master
//! would strand every ticket it issued, so the ring keeps retired masters,
//! for decryption only, until every ticket they issued has expired; a
//! session is handed the master whose tickets its client presents, found
//! by the ticket's key name (its first 16 bytes), which the ring learns
//! from the tickets this server sends. A stolen master therefore exposes at
//! most one rotation period of tickets, and rotation never costs a
//! returning client its resumption.
//!
//! Times are Unix seconds passed in by the caller, so tests drive the clock.

use std::fmt;
use std::os::raw::c_void;

use super::client_hello::KEY_NAME_LEN;
use super::{TlsError, free_datum};
use crate::ffi;

pub const MASTER_LEN: usize = 64;
pub type KeyName = [u8; KEY_NAME_LEN];

/// One master key. Wiped with `gnutls_memset` (which the compiler may not
/// elide) when dropped; its Debug output shows only the fingerprint.
pub struct MasterKey {
    bytes: Box<[u8; MASTER_LEN]>,
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
        let mut key = MasterKey::zeroed();
        if datum.data.is_null() || datum.size as usize != MASTER_LEN {
            free_datum(datum, true);
            return Err(TlsError::new(
                ffi::GNUTLS_E_INTERNAL_ERROR,
                "unexpected ticket key size",
            ));
        }
        // SAFETY: datum holds exactly MASTER_LEN bytes (checked above).
        let src = unsafe { std::slice::from_raw_parts(datum.data, MASTER_LEN) };
        key.bytes.copy_from_slice(src);
        free_datum(datum, true);
        Ok(key)
    }

    fn zeroed() -> MasterKey {
        MasterKey {
            bytes: Box::new([0; MASTER_LEN]),
        }
    }

    #[cfg(test)]
    pub fn from_bytes(bytes: [u8; MASTER_LEN]) -> MasterKey {
        MasterKey {
            bytes: Box::new(bytes),
        }
    }

    /// A master read from a ticket key file or the control channel: exactly
    /// `MASTER_LEN` bytes, else None. The caller wipes its copy.
    pub fn from_slice(bytes: &[u8]) -> Option<MasterKey> {
        if bytes.len() != MASTER_LEN {
            return None;
        }
        let mut key = MasterKey::zeroed();
        key.bytes.copy_from_slice(bytes);
        Some(key)
    }

    /// The key itself, to write into a ticket key file or hand to another
    /// process. Never log it.
    pub fn expose(&self) -> &[u8; MASTER_LEN] {
        &self.bytes
    }

    /// A datum GnuTLS copies from; valid while `self` lives.
    pub(super) fn datum(&self) -> ffi::gnutls_datum_t {
        ffi::gnutls_datum_t {
            data: self.bytes.as_ptr() as *mut u8,
            size: MASTER_LEN as u32,
        }
    }

    /// 12 hex digits of SHA-256 over a label and the key: enough to tell
    /// keys apart in the log, and nothing about the key itself.
    pub fn fingerprint(&self) -> String {
        let mut input = Vec::with_capacity(MASTER_LEN + 32);
        input.extend_from_slice(b"gsmtpd ticket key fingerprint\0");
        input.extend_from_slice(&self.bytes[..]);
        let mut digest = [0u8; 32];
        // SAFETY: input and digest are valid for the lengths given; SHA-256
        // writes 32 bytes.
        let rc = unsafe {
            ffi::gnutls_hash_fast(
                ffi::GNUTLS_DIG_SHA256,
                input.as_ptr() as *const c_void,
                input.len(),
                digest.as_mut_ptr() as *mut c_void,
            )
        };
        wipe(&mut input);
        if rc < 0 {
            return "unavailable".into();
        }
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        wipe(&mut self.bytes[..]);
    }
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

struct Held {
    id: u64,
    key: MasterKey,
    fingerprint: String,
    created: u64,
    /// When it stopped encrypting new tickets; None for the current key.
    retired: Option<u64>,
}

/// What `TicketKeys::choose` hands a new session.
pub struct Choice<'a> {
    pub key: &'a MasterKey,
    pub id: u64,
    /// False for a retired master: the session may decrypt its client's
    /// ticket but must not issue new tickets under it.
    pub current: bool,
}

pub type Generator = Box<dyn FnMut() -> Result<MasterKey, TlsError>>;

pub struct TicketKeys {
    rotation: u64,
    lifetime: u64,
    /// Oldest first; the last one is current.
    held: Vec<Held>,
    /// Key names seen in tickets we issued, with the master that issued them.
    names: Vec<(KeyName, u64)>,
    next_id: u64,
    generate: Generator,
}

impl TicketKeys {
    /// `rotation`: seconds one master encrypts new tickets; `lifetime`:
    /// seconds a ticket may be used.
    pub fn new(
        rotation: u64,
        lifetime: u64,
        now: u64,
        generate: Generator,
    ) -> Result<TicketKeys, TlsError> {
        let mut keys = TicketKeys {
            rotation: rotation.max(1),
            lifetime,
            held: Vec::new(),
            names: Vec::new(),
            next_id: 0,
            generate,
        };
        keys.add_current(now)?;
        Ok(keys)
    }

    fn add_current(&mut self, now: u64) -> Result<(), TlsError> {
        let key = (self.generate)()?;
        self.next_id += 1;
        let fingerprint = key.fingerprint();
        self.held.push(Held {
            id: self.next_id,
            key,
            fingerprint,
            created: now,
            retired: None,
        });
        Ok(())
    }

    /// Rotates the current master when its period is over and drops retired
    /// masters whose tickets have all expired. Cheap when nothing is due.
    pub fn tick(&mut self, now: u64) {
        if self
            .current()
            .is_some_and(|c| now >= c.created + self.rotation)
        {
            self.rotate(now);
        }
        let lifetime = self.lifetime;
        let before = self.held.len();
        self.held.retain(|h| match h.retired {
            Some(at) if now >= at + lifetime => {
                log::info!(
                    "ticket key {} dropped: every ticket it issued has expired",
                    h.fingerprint
                );
                false
            }
            _ => true,
        });
        if self.held.len() != before {
            let alive: Vec<u64> = self.held.iter().map(|h| h.id).collect();
            self.names.retain(|(_, id)| alive.contains(id));
        }
    }

    fn rotate(&mut self, now: u64) {
        let old = self.held.len();
        if let Err(e) = self.add_current(now) {
            // Keep the old key rather than stop issuing tickets.
            log::error!("ticket key rotation failed, keeping the current key: {e}");
            return;
        }
        if let Some(previous) = self.held.get_mut(old.wrapping_sub(1)) {
            previous.retired = Some(now);
        }
        let retired = self
            .held
            .get(old.wrapping_sub(1))
            .map(|h| h.fingerprint.as_str())
            .unwrap_or("none");
        log::info!(
            "ticket key rotated: {} now issues tickets, {retired} kept for decryption only; {} key(s) held",
            self.held
                .last()
                .map(|h| h.fingerprint.as_str())
                .unwrap_or("?"),
            self.held.len()
        );
    }

    fn current(&self) -> Option<&Held> {
        self.held.last()
    }

    /// The master for a session whose client offers a ticket with this key
    /// name (or none): the master that issued it while we hold it, the
    /// current one otherwise.
    pub fn choose(&self, name: Option<&KeyName>) -> Choice<'_> {
        let issuer = name
            .and_then(|n| self.names.iter().find(|(known, _)| known == n))
            .map(|(_, id)| *id);
        let current_id = self.current().map(|h| h.id);
        let held = issuer
            .and_then(|id| self.held.iter().find(|h| h.id == id))
            .or_else(|| self.current())
            .expect("the ring always holds a current key");
        Choice {
            key: &held.key,
            id: held.id,
            current: Some(held.id) == current_id,
        }
    }

    /// Records that master `id` issued a ticket with this key name.
    pub fn learn(&mut self, name: KeyName, id: u64) {
        if self.names.iter().any(|(n, _)| *n == name) || !self.held.iter().any(|h| h.id == id) {
            return;
        }
        self.names.push((name, id));
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The Unix time of the next rotation or drop, for the loop's timer.
    pub fn next_due(&self) -> u64 {
        let rotation = self
            .current()
            .map(|c| c.created + self.rotation)
            .unwrap_or(0);
        self.held
            .iter()
            .filter_map(|h| h.retired.map(|at| at + self.lifetime))
            .fold(rotation, u64::min)
    }

    /// The most masters the ring can hold at once with these settings.
    pub fn max_held(&self) -> usize {
        1 + self.lifetime.div_ceil(self.rotation) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn counting_generator() -> (Generator, Rc<Cell<u8>>) {
        let made = Rc::new(Cell::new(0u8));
        let counter = Rc::clone(&made);
        let generate: Generator = Box::new(move || {
            counter.set(counter.get() + 1);
            Ok(MasterKey::from_bytes([counter.get(); MASTER_LEN]))
        });
        (generate, made)
    }

    fn first_byte(c: &Choice<'_>) -> u8 {
        c.key.bytes[0]
    }

    #[test]
    fn rotates_on_time_and_keeps_retired_keys_exactly_for_the_ticket_lifetime() {
        let (generate, made) = counting_generator();
        let mut ring = TicketKeys::new(100, 250, 1_000, generate).unwrap();
        assert_eq!(ring.held(), 1);
        let name_a: KeyName = [0xaa; 16];
        ring.learn(name_a, ring.choose(None).id);

        ring.tick(1_099);
        assert_eq!(made.get(), 1, "not yet due");
        ring.tick(1_100);
        assert_eq!(made.get(), 2, "rotated at created + rotation");
        assert_eq!(
            first_byte(&ring.choose(None)),
            2,
            "new tickets use the new key"
        );
        let old = ring.choose(Some(&name_a));
        assert_eq!(
            first_byte(&old),
            1,
            "a ticket of the old key gets the old key"
        );
        assert!(!old.current, "and may not issue tickets with it");

        // Retired at 1100: kept until 1100 + 250.
        for t in [1_200, 1_300] {
            ring.tick(t);
        }
        assert_eq!(
            ring.held(),
            4,
            "1100 + 250 > 1300: the first key is still held"
        );
        assert_eq!(first_byte(&ring.choose(Some(&name_a))), 1);
        ring.tick(1_349);
        assert_eq!(
            first_byte(&ring.choose(Some(&name_a))),
            1,
            "still inside the lifetime"
        );
        ring.tick(1_350);
        assert_eq!(
            first_byte(&ring.choose(Some(&name_a))),
            4,
            "dropped: falls back to the current key"
        );
        assert!(ring.choose(Some(&name_a)).current);
    }

    #[test]
    fn never_holds_more_than_the_lifetime_requires() {
        let (generate, _) = counting_generator();
        let mut ring = TicketKeys::new(2, 5, 0, generate).unwrap();
        assert_eq!(ring.max_held(), 4);
        let mut most = 0;
        for t in 0..100 {
            ring.tick(t);
            most = most.max(ring.held());
        }
        assert_eq!(most, ring.max_held());
    }

    #[test]
    fn next_due_is_the_earliest_rotation_or_drop() {
        let (generate, _) = counting_generator();
        let mut ring = TicketKeys::new(100, 30, 0, generate).unwrap();
        assert_eq!(ring.next_due(), 100);
        ring.tick(100);
        assert_eq!(ring.next_due(), 130, "the retired key's drop comes first");
        ring.tick(130);
        assert_eq!(ring.held(), 1);
        assert_eq!(ring.next_due(), 200);
    }

    #[test]
    fn unknown_names_and_names_of_dropped_keys_get_the_current_key() {
        let (generate, _) = counting_generator();
        let mut ring = TicketKeys::new(10, 10, 0, generate).unwrap();
        let c = ring.choose(Some(&[7; 16]));
        assert!(c.current);
        ring.learn([9; 16], 12345); // no such key: ignored
        assert!(ring.names.is_empty());
        ring.learn([1; 16], ring.choose(None).id);
        ring.tick(10);
        ring.tick(20);
        assert!(ring.names.is_empty(), "names of dropped keys are forgotten");
    }

    #[test]
    fn keys_are_wiped_on_drop_and_never_shown() {
        crate::tls::init().unwrap();
        let key = MasterKey::generate().unwrap();
        assert_ne!(*key.bytes, [0; MASTER_LEN]);
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

        let mut bytes = [0x5a; MASTER_LEN];
        wipe(&mut bytes);
        assert_eq!(bytes, [0; MASTER_LEN]);
    }
}
