//! A GnuTLS client session over the same in-memory transport as the
//! server's. gsmtpd never acts as a client; this exists so the in-process
//! benchmark (benches/limit.rs) can pair GnuTLS with itself and measure the
//! least a GnuTLS server handshake costs.

use std::ffi::CString;
use std::ops::{Deref, DerefMut};
use std::os::raw::c_void;
use std::rc::Rc;

use super::credentials::Credentials;
use super::session::Endpoint;
use super::{Priority, TlsError, free_datum};
use crate::ffi;

pub struct ClientSession {
    ep: Endpoint,
    _credentials: Rc<Credentials>,
    _priority: Rc<Priority>,
}

impl ClientSession {
    /// A client for `server_name` that does not verify the server (the
    /// benchmark pairs it with a known server); `resume` is session data
    /// from an earlier connection's `session_data`.
    pub fn new(
        credentials: &Rc<Credentials>,
        priority: &Rc<Priority>,
        server_name: &str,
        resume: Option<&[u8]>,
    ) -> Result<ClientSession, TlsError> {
        let session = ClientSession {
            ep: Endpoint::new(ffi::GNUTLS_CLIENT, credentials, priority)?,
            _credentials: Rc::clone(credentials),
            _priority: Rc::clone(priority),
        };
        let name = CString::new(server_name).map_err(|_| {
            TlsError::new(ffi::GNUTLS_E_INVALID_REQUEST, "server name contains NUL")
        })?;
        // SAFETY: the session is live; GnuTLS copies the name.
        let rc = unsafe {
            ffi::gnutls_server_name_set(
                session.ep.raw,
                ffi::GNUTLS_NAME_DNS,
                name.as_ptr() as *const c_void,
                server_name.len(),
            )
        };
        TlsError::check(rc, "gnutls_server_name_set")?;
        if let Some(data) = resume {
            // SAFETY: data is readable for its length; GnuTLS copies it.
            let rc = unsafe {
                ffi::gnutls_session_set_data(
                    session.ep.raw,
                    data.as_ptr() as *const c_void,
                    data.len(),
                )
            };
            TlsError::check(rc, "gnutls_session_set_data")?;
        }
        Ok(session)
    }

    /// What a later connection needs to resume this one (ticket or ID).
    pub fn session_data(&self) -> Result<Vec<u8>, TlsError> {
        let mut d = ffi::gnutls_datum_t {
            data: std::ptr::null_mut(),
            size: 0,
        };
        // SAFETY: the session is live; d receives a gnutls_malloc'd buffer.
        let rc = unsafe { ffi::gnutls_session_get_data2(self.ep.raw, &mut d) };
        TlsError::check(rc, "gnutls_session_get_data2")?;
        let bytes = if d.data.is_null() {
            Vec::new()
        } else {
            // SAFETY: GnuTLS filled d.size bytes at d.data.
            unsafe { std::slice::from_raw_parts(d.data, d.size as usize) }.to_vec()
        };
        // Session data holds the master secret.
        free_datum(d, true);
        Ok(bytes)
    }
}

impl Deref for ClientSession {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.ep
    }
}

impl DerefMut for ClientSession {
    fn deref_mut(&mut self) -> &mut Endpoint {
        &mut self.ep
    }
}
