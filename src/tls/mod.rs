//! Safe wrappers around GnuTLS: library init, credentials, priorities, and
//! server sessions driven over buffers that the event loop owns. Besides
//! `crate::ffi` and the OS calls of `crate::os`, gsmtpd's `unsafe` lives
//! in this module only.

pub mod client;
pub mod client_hello;
mod credentials;
mod error;
pub mod ocsp;
pub mod pair;
mod priority;
mod session;
pub mod session_db;
pub mod ticket_keys;
pub mod x509;

use std::ffi::CStr;

use crate::ffi;

pub use client::{ClientSession, ClientSetup};
pub use credentials::Credentials;
pub use error::TlsError;
pub use priority::Priority;
pub use session::{Endpoint, Handshake, Negotiated, ReadStatus, ServerSession, SessionSetup};

/// Initialises GnuTLS once for the process and returns the version linked
/// at run time (which can differ from the headers we were built against).
pub fn init() -> Result<&'static str, TlsError> {
    // SAFETY: gnutls_global_init is reference-counted and thread-safe.
    let rc = unsafe { ffi::gnutls_global_init() };
    TlsError::check(rc, "gnutls_global_init")?;
    Ok(runtime_version())
}

/// The GnuTLS version linked at run time, e.g. "3.7.9".
pub fn runtime_version() -> &'static str {
    // SAFETY: with a null argument gnutls_check_version returns a pointer to
    // a static string inside the library.
    let ptr = unsafe { ffi::gnutls_check_version(std::ptr::null()) };
    if ptr.is_null() {
        return "unknown";
    }
    // SAFETY: non-null, NUL-terminated and static (see above).
    unsafe { CStr::from_ptr(ptr) }.to_str().unwrap_or("unknown")
}

/// "3.7.9" as (3, 7, 9), for version comparisons.
pub fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// Gives a buffer GnuTLS allocated (an exported datum) back to GnuTLS's
/// allocator, wiping it first when it held a secret.
fn free_datum(d: ffi::gnutls_datum_t, wipe: bool) {
    if d.data.is_null() {
        return;
    }
    // SAFETY: GnuTLS allocated d.size bytes at d.data and handed them to us;
    // gnutls_free is set by the library at load time and never changed.
    unsafe {
        if wipe {
            ffi::gnutls_memset(d.data as *mut std::os::raw::c_void, 0, d.size as usize);
        }
        if let Some(free) = ffi::gnutls_free {
            free(d.data as *mut std::os::raw::c_void);
        }
    }
}

/// Converts a static C string from GnuTLS into `&'static str`.
fn static_str(ptr: *const std::os::raw::c_char) -> Option<&'static str> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: every caller passes a name that GnuTLS keeps in static tables.
    unsafe { CStr::from_ptr(ptr) }.to_str().ok()
}
