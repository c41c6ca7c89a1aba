//! GnuTLS's session database callbacks for the TLS 1.2 session-ID cache.
//! GnuTLS consults them only for TLS 1.2 and below.
//!
//! No callback waits for anything: the cache lives in another process
//! (the supervisor, which every worker shares), so the session a client
//! asks to resume is looked up before its session is made and handed in
//! as `SessionDb::found`; what GnuTLS stores or removes is queued in
//! `SessionDb::ops`, which the event loop sends on. A miss costs a full
//! handshake, never a failed one.

use std::cell::RefCell;
use std::os::raw::{c_int, c_void};
use std::rc::Rc;

use super::ticket_keys::wipe;
use crate::ffi;

/// A change to the cache, for the event loop to pass on.
#[derive(Debug, PartialEq, Eq)]
pub enum CacheOp {
    Store { id: Vec<u8>, data: Vec<u8> },
    Remove { id: Vec<u8> },
}

/// What one session's callbacks work with.
pub struct SessionDb {
    /// The session (ID, packed data) looked up for the ID the client
    /// offers, if the cache had it.
    pub found: Option<(Vec<u8>, Vec<u8>)>,
    /// Shared by every session of the process.
    pub ops: Rc<RefCell<Vec<CacheOp>>>,
}

impl Drop for SessionDb {
    fn drop(&mut self) {
        // Packed sessions hold their master secret.
        if let Some((_, data)) = &mut self.found {
            wipe(data);
        }
    }
}

/// Registers the callbacks on `raw`. `db` must stay at this address for
/// as long as the session lives (ServerSession boxes it).
pub(super) fn attach(raw: ffi::gnutls_session_t, db: &mut SessionDb) {
    let ptr = db as *mut SessionDb as *mut c_void;
    // SAFETY: raw is a live session; ptr stays valid while the session
    // holds the box, and the callbacks only run inside gnutls_handshake.
    unsafe {
        ffi::gnutls_db_set_ptr(raw, ptr);
        ffi::gnutls_db_set_store_function(raw, Some(store));
        ffi::gnutls_db_set_retrieve_function(raw, Some(retrieve));
        ffi::gnutls_db_set_remove_function(raw, Some(remove));
    }
}

/// The db behind a callback pointer, and a datum's bytes.
///
/// # Safety
/// `ptr` must come from `attach` and `d` must describe readable memory.
unsafe fn parts<'a>(
    ptr: *mut c_void,
    d: &ffi::gnutls_datum_t,
) -> Option<(&'a mut SessionDb, &'a [u8])> {
    if ptr.is_null() || (d.data.is_null() && d.size > 0) {
        return None;
    }
    // SAFETY: per this function's contract; GnuTLS runs one callback at a
    // time, so this is the only reference to the db meanwhile.
    unsafe {
        let bytes = if d.size == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(d.data, d.size as usize)
        };
        Some((&mut *(ptr as *mut SessionDb), bytes))
    }
}

unsafe extern "C" fn store(
    ptr: *mut c_void,
    key: ffi::gnutls_datum_t,
    data: ffi::gnutls_datum_t,
) -> c_int {
    // SAFETY: GnuTLS passes the pointer given to gnutls_db_set_ptr and
    // datums valid for the call.
    let (Some((db, key)), Some((_, value))) =
        (unsafe { parts(ptr, &key) }, unsafe { parts(ptr, &data) })
    else {
        return -1;
    };
    let Ok(mut ops) = db.ops.try_borrow_mut() else {
        return -1;
    };
    ops.push(CacheOp::Store {
        id: key.to_vec(),
        data: value.to_vec(),
    });
    0
}

unsafe extern "C" fn retrieve(ptr: *mut c_void, key: ffi::gnutls_datum_t) -> ffi::gnutls_datum_t {
    let miss = ffi::gnutls_datum_t {
        data: std::ptr::null_mut(),
        size: 0,
    };
    // SAFETY: as in store.
    let Some((db, key)) = (unsafe { parts(ptr, &key) }) else {
        return miss;
    };
    let Some((_, value)) = db.found.as_ref().filter(|(id, _)| id.as_slice() == key) else {
        return miss;
    };
    // GnuTLS frees what we return with gnutls_free, so it must come from
    // gnutls_malloc (an exported function pointer, not a function).
    // SAFETY: gnutls_malloc is set by the library at load time.
    let Some(malloc) = (unsafe { ffi::gnutls_malloc }) else {
        return miss;
    };
    // SAFETY: allocating value.len() bytes (at least 1) with GnuTLS's allocator.
    let data = unsafe { malloc(value.len().max(1)) } as *mut u8;
    if data.is_null() {
        return miss;
    }
    // SAFETY: data is writable for value.len() bytes and does not overlap value.
    unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), data, value.len()) };
    ffi::gnutls_datum_t {
        data,
        size: value.len() as u32,
    }
}

unsafe extern "C" fn remove(ptr: *mut c_void, key: ffi::gnutls_datum_t) -> c_int {
    // SAFETY: as in store.
    let Some((db, key)) = (unsafe { parts(ptr, &key) }) else {
        return -1;
    };
    if let Some((id, data)) = &mut db.found
        && id.as_slice() == key
    {
        wipe(data);
        db.found = None;
    }
    let Ok(mut ops) = db.ops.try_borrow_mut() else {
        return -1;
    };
    ops.push(CacheOp::Remove { id: key.to_vec() });
    0
}
