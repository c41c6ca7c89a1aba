//! A GnuTLS client session over the same in-memory transport as the
//! server's: the delivery process's TLS toward next hops (STARTTLS or
//! implicit TLS), and the other half of the in-process benchmark.

use std::ffi::CString;
use std::ops::{Deref, DerefMut};
use std::os::raw::c_void;
use std::rc::Rc;

use super::credentials::Credentials;
use super::session::Endpoint;
use super::{Priority, TlsError, free_datum};
use crate::ffi;

/// Everything a client session is set up with.
pub struct ClientSetup<'a> {
    pub credentials: &'a Rc<Credentials>,
    pub priority: &'a Rc<Priority>,
    /// Sent as SNI: the name of the host we connect to (none for an
    /// address literal).
    pub server_name: Option<&'a str>,
    /// Verify the server's chain against the credentials' trust anchors
    /// and its certificate against this host name, failing the handshake
    /// otherwise. None: opportunistic TLS, nothing verified.
    pub verify_name: Option<&'a str>,
    /// Ask for a stapled OCSP response.
    pub ocsp: bool,
    /// Session data of an earlier connection to resume (its ticket or ID).
    pub resume: Option<&'a [u8]>,
    /// Ask for tickets (there is somewhere to keep them).
    pub tickets: bool,
}

pub struct ClientSession {
    ep: Endpoint,
    _credentials: Rc<Credentials>,
    _priority: Rc<Priority>,
    /// GnuTLS keeps a pointer to the name it verifies against, not a copy.
    _verify_name: Option<CString>,
}

impl ClientSession {
    pub fn new(setup: ClientSetup<'_>) -> Result<ClientSession, TlsError> {
        let verify_name = setup
            .verify_name
            .map(|name| c_string(name, "host name"))
            .transpose()?;
        let mut flags = ffi::GNUTLS_CLIENT;
        if !setup.tickets {
            flags |= ffi::GNUTLS_NO_TICKETS;
        }
        let session = ClientSession {
            ep: Endpoint::new(flags, setup.credentials, setup.priority)?,
            _credentials: Rc::clone(setup.credentials),
            _priority: Rc::clone(setup.priority),
            _verify_name: verify_name,
        };
        if let Some(name) = setup.server_name {
            let c_name = c_string(name, "server name")?;
            // SAFETY: the session is live; GnuTLS copies the name.
            let rc = unsafe {
                ffi::gnutls_server_name_set(
                    session.ep.raw,
                    ffi::GNUTLS_NAME_DNS,
                    c_name.as_ptr() as *const c_void,
                    name.len(),
                )
            };
            TlsError::check(rc, "gnutls_server_name_set")?;
        }
        if let Some(name) = &session._verify_name {
            // SAFETY: the session is live; the name lives in the session
            // value, as long as GnuTLS may read it.
            unsafe { ffi::gnutls_session_set_verify_cert(session.ep.raw, name.as_ptr(), 0) };
        }
        if setup.ocsp {
            // SAFETY: the session is live; no responder IDs or extensions.
            let rc = unsafe {
                ffi::gnutls_ocsp_status_request_enable_client(
                    session.ep.raw,
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null_mut(),
                )
            };
            TlsError::check(rc, "gnutls_ocsp_status_request_enable_client")?;
        }
        if let Some(data) = setup.resume {
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

    /// The server stapled an OCSP response that GnuTLS checked and found
    /// valid for its certificate (after a handshake with `ocsp`). GnuTLS
    /// checks a staple while it verifies the peer, which a session without
    /// `verify_name` has not done: it is done here then (as Exim's
    /// hosts_require_ocsp does without verification), the staple checked
    /// against the trust anchors or the issuer the server sent, and the
    /// chain's own verdict ignored.
    pub fn ocsp_checked(&self) -> bool {
        if self._verify_name.is_none() {
            let mut status: u32 = 0;
            // SAFETY: the session is live and its handshake done; status
            // is a valid out-pointer.
            unsafe { ffi::gnutls_certificate_verify_peers2(self.ep.raw, &mut status) };
        }
        // SAFETY: the session is live.
        unsafe { ffi::gnutls_ocsp_status_request_is_checked(self.ep.raw, 0) != 0 }
    }

    /// The DER of the OCSP response the server stapled, unchecked.
    fn staple(&self) -> Option<&[u8]> {
        let mut d = ffi::gnutls_datum_t {
            data: std::ptr::null_mut(),
            size: 0,
        };
        // SAFETY: the session is live; d receives a pointer into the
        // session's own copy of the response, valid while it lives.
        let rc = unsafe { ffi::gnutls_ocsp_status_request_get(self.ep.raw, &mut d) };
        if rc < 0 || d.data.is_null() {
            return None;
        }
        // SAFETY: GnuTLS filled d.size bytes at d.data, owned by the
        // session, which outlives the borrow of self.
        Some(unsafe { std::slice::from_raw_parts(d.data, d.size as usize) })
    }

    /// The server stapled a response (valid or not).
    pub fn stapled(&self) -> bool {
        self.staple().is_some()
    }

    /// The nextUpdate of the staple the server sent, unchecked: ask
    /// [`ClientSession::ocsp_checked`] first. None without a staple, or
    /// one without nextUpdate.
    pub fn staple_next_update(&self) -> Option<i64> {
        super::ocsp::inspect(self.staple()?).ok()?.next_update
    }

    /// Why verification failed, in GnuTLS's words, after a handshake
    /// that failed with GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR.
    pub fn verify_failure(&self) -> Option<String> {
        // SAFETY: the session is live.
        let status = unsafe { ffi::gnutls_session_get_verify_cert_status(self.ep.raw) };
        // All bits set: no verification took place.
        if status == 0 || status == u32::MAX {
            return None;
        }
        let mut out = ffi::gnutls_datum_t {
            data: std::ptr::null_mut(),
            size: 0,
        };
        // SAFETY: out receives a gnutls_malloc'd string.
        let rc = unsafe {
            ffi::gnutls_certificate_verification_status_print(
                status,
                ffi::GNUTLS_CRT_X509,
                &mut out,
                0,
            )
        };
        if rc < 0 || out.data.is_null() {
            return Some(format!("verification status {status:#x}"));
        }
        // SAFETY: GnuTLS filled out.size bytes at out.data.
        let text = unsafe { std::slice::from_raw_parts(out.data, out.size as usize) };
        let text = String::from_utf8_lossy(text)
            .trim_end_matches(['\0', ' '])
            .to_string();
        free_datum(out, false);
        Some(text)
    }
}

fn c_string(text: &str, what: &str) -> Result<CString, TlsError> {
    CString::new(text).map_err(|_| {
        TlsError::new(
            ffi::GNUTLS_E_INVALID_REQUEST,
            format!("{what} contains NUL"),
        )
    })
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
