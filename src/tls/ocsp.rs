//! Reading a DER OCSP response, to log its validity and to refuse what
//! GnuTLS would accept but a client should not get (no nextUpdate).

use std::ptr;

use super::TlsError;
use super::credentials::datum;
use crate::ffi;

/// The times of a response's (first) SingleResponse, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcspTimes {
    pub produced_at: i64,
    pub this_update: i64,
    /// None when the responder gave no nextUpdate: such a response has no
    /// defined end and is never stapled.
    pub next_update: Option<i64>,
}

/// Parses `der` and returns its times; an error when it is not a
/// successful OCSP response.
pub fn inspect(der: &[u8]) -> Result<OcspTimes, TlsError> {
    let resp = Response::new()?;
    let data = datum(der)?;
    // SAFETY: resp is initialised; data borrows der for the call.
    let rc = unsafe { ffi::gnutls_ocsp_resp_import(resp.raw, &data) };
    TlsError::check(rc, "not an OCSP response")?;
    // SAFETY: resp holds an imported response.
    let status = unsafe { ffi::gnutls_ocsp_resp_get_status(resp.raw) };
    if status != ffi::GNUTLS_OCSP_RESP_SUCCESSFUL as i32 {
        return Err(TlsError::new(
            ffi::GNUTLS_E_OCSP_RESPONSE_ERROR,
            "OCSP response status is not successful",
        ));
    }
    let (mut this_update, mut next_update) = (0, 0);
    // SAFETY: resp holds an imported response; the outputs we do not want
    // are null, which GnuTLS allows.
    let rc = unsafe {
        ffi::gnutls_ocsp_resp_get_single(
            resp.raw,
            0,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            &mut this_update,
            &mut next_update,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    TlsError::check(rc, "OCSP response has no single response")?;
    // SAFETY: as above.
    let produced_at = unsafe { ffi::gnutls_ocsp_resp_get_produced(resp.raw) };
    Ok(OcspTimes {
        produced_at,
        this_update,
        next_update: (next_update != -1).then_some(next_update),
    })
}

struct Response {
    raw: ffi::gnutls_ocsp_resp_t,
}

impl Response {
    fn new() -> Result<Response, TlsError> {
        let mut raw = ptr::null_mut();
        // SAFETY: raw is a valid out-pointer.
        let rc = unsafe { ffi::gnutls_ocsp_resp_init(&mut raw) };
        TlsError::check(rc, "gnutls_ocsp_resp_init")?;
        Ok(Response { raw })
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        // SAFETY: raw came from gnutls_ocsp_resp_init.
        unsafe { ffi::gnutls_ocsp_resp_deinit(self.raw) }
    }
}
