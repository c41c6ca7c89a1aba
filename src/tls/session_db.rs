//! GnuTLS's session database callbacks, backed by the SQLite session-ID
//! cache (TLS 1.2 clients that resume by session ID). GnuTLS consults it
//! only for TLS 1.2 and below; a cache failure is a miss, never a failed
//! handshake.

use std::cell::RefCell;
use std::os::raw::{c_int, c_void};
use std::rc::Rc;

use crate::clock::unix_secs as now;
use crate::ffi;
use crate::session_cache::SessionCache;

/// Registers the callbacks on `raw`. The session must hold a clone of
/// `cache` for as long as it lives (ServerSession does).
pub(super) fn attach(raw: ffi::gnutls_session_t, cache: &Rc<RefCell<SessionCache>>) {
    let ptr = Rc::as_ptr(cache) as *mut c_void;
    // SAFETY: raw is a live session; ptr stays valid while the session holds
    // its Rc, and the callbacks only run inside gnutls_handshake.
    unsafe {
        ffi::gnutls_db_set_ptr(raw, ptr);
        ffi::gnutls_db_set_store_function(raw, Some(store));
        ffi::gnutls_db_set_retrieve_function(raw, Some(retrieve));
        ffi::gnutls_db_set_remove_function(raw, Some(remove));
    }
}

/// The cache behind a callback pointer, and a datum's bytes.
///
/// # Safety
/// `ptr` must come from `attach` and `d` must describe readable memory.
unsafe fn parts<'a>(
    ptr: *mut c_void,
    d: &ffi::gnutls_datum_t,
) -> Option<(&'a RefCell<SessionCache>, &'a [u8])> {
    if ptr.is_null() || (d.data.is_null() && d.size > 0) {
        return None;
    }
    // SAFETY: per this function's contract.
    unsafe {
        let bytes = if d.size == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(d.data, d.size as usize)
        };
        Some((&*(ptr as *const RefCell<SessionCache>), bytes))
    }
}

unsafe extern "C" fn store(
    ptr: *mut c_void,
    key: ffi::gnutls_datum_t,
    data: ffi::gnutls_datum_t,
) -> c_int {
    // SAFETY: GnuTLS passes the pointer given to gnutls_db_set_ptr and
    // datums valid for the call.
    let (Some((cache, key)), Some((_, value))) =
        (unsafe { parts(ptr, &key) }, unsafe { parts(ptr, &data) })
    else {
        return -1;
    };
    let stored = cache
        .try_borrow_mut()
        .is_ok_and(|mut c| c.store(key, value, now()));
    if stored { 0 } else { -1 }
}

unsafe extern "C" fn retrieve(ptr: *mut c_void, key: ffi::gnutls_datum_t) -> ffi::gnutls_datum_t {
    let miss = ffi::gnutls_datum_t {
        data: std::ptr::null_mut(),
        size: 0,
    };
    // SAFETY: as in store.
    let Some((cache, key)) = (unsafe { parts(ptr, &key) }) else {
        return miss;
    };
    let Some(value) = cache
        .try_borrow_mut()
        .ok()
        .and_then(|mut c| c.retrieve(key, now()))
    else {
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
    let Some((cache, key)) = (unsafe { parts(ptr, &key) }) else {
        return -1;
    };
    let removed = cache
        .try_borrow_mut()
        .is_ok_and(|mut c| c.remove(key, now()));
    if removed { 0 } else { -1 }
}
