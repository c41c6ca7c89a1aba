use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

use super::TlsError;
use crate::ffi;

/// Certificate credentials. A server's: one or more certificate chains with
/// their keys, among which GnuTLS picks by SNI and signature algorithms. A
/// client's: the trust anchors it verifies servers against. Read-only once
/// sessions use them, so a reload builds a new value.
pub struct Credentials {
    raw: ffi::gnutls_certificate_credentials_t,
}

impl Credentials {
    pub fn new() -> Result<Credentials, TlsError> {
        let mut raw: ffi::gnutls_certificate_credentials_t = ptr::null_mut();
        // SAFETY: raw is a valid out-pointer.
        let rc = unsafe { ffi::gnutls_certificate_allocate_credentials(&mut raw) };
        TlsError::check(rc, "gnutls_certificate_allocate_credentials")?;
        // API_V2 makes the key setters return the index of the certificate,
        // which OCSP responses are later paired with.
        // SAFETY: raw is a freshly allocated credentials structure.
        unsafe { ffi::gnutls_certificate_set_flags(raw, ffi::GNUTLS_CERTIFICATE_API_V2) };
        Ok(Credentials { raw })
    }

    /// Adds a PEM certificate chain and its PEM private key; returns the
    /// index GnuTLS gave the pair.
    pub fn add_pem(&mut self, chain: &[u8], key: &[u8]) -> Result<u32, TlsError> {
        let cert = datum(chain)?;
        let key = datum(key)?;
        // SAFETY: both datums point into slices that outlive the call; GnuTLS copies them.
        let rc = unsafe {
            ffi::gnutls_certificate_set_x509_key_mem2(
                self.raw,
                &cert,
                &key,
                ffi::GNUTLS_X509_FMT_PEM,
                ptr::null(),
                0,
            )
        };
        TlsError::check(rc, "loading certificate and key").map(|i| i as u32)
    }

    /// Staples the DER OCSP response in `path` for certificate `index`.
    /// GnuTLS checks that it matches the certificate and has not expired,
    /// and stops stapling it once it expires.
    pub fn set_ocsp_file(&mut self, index: u32, path: &Path) -> Result<(), TlsError> {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            TlsError::new(ffi::GNUTLS_E_INVALID_REQUEST, "OCSP file name contains NUL")
        })?;
        // SAFETY: c_path is NUL-terminated and outlives the call.
        let rc = unsafe {
            ffi::gnutls_certificate_set_ocsp_status_request_file2(
                self.raw,
                c_path.as_ptr(),
                index,
                ffi::GNUTLS_X509_FMT_DER,
            )
        };
        TlsError::check(rc, "loading the OCSP response").map(|_| ())
    }

    /// Staples a DER OCSP response held in memory (the last valid one, when
    /// its file was replaced by something unusable).
    pub fn set_ocsp_der(&mut self, index: u32, der: &[u8]) -> Result<(), TlsError> {
        let data = datum(der)?;
        // SAFETY: data borrows der for the call; GnuTLS copies it.
        let rc = unsafe {
            ffi::gnutls_certificate_set_ocsp_status_request_mem(
                self.raw,
                &data,
                index,
                ffi::GNUTLS_X509_FMT_DER,
            )
        };
        TlsError::check(rc, "loading the previous OCSP response").map(|_| ())
    }

    /// Trust anchors for verifying servers when sending: the CA
    /// certificates in the PEM `file`, or, without one, the system's trust
    /// store (Debian's ca-certificates). Returns how many were loaded; none
    /// at all is an error, since `verify` could then never succeed.
    pub fn trust(&mut self, file: Option<&Path>) -> Result<u32, TlsError> {
        let rc = match file {
            Some(path) => {
                let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                    TlsError::new(ffi::GNUTLS_E_INVALID_REQUEST, "CA file name contains NUL")
                })?;
                // SAFETY: c_path is NUL-terminated and outlives the call.
                unsafe {
                    ffi::gnutls_certificate_set_x509_trust_file(
                        self.raw,
                        c_path.as_ptr(),
                        ffi::GNUTLS_X509_FMT_PEM,
                    )
                }
            }
            // SAFETY: raw is a live credentials structure.
            None => unsafe { ffi::gnutls_certificate_set_x509_system_trust(self.raw) },
        };
        let loaded = TlsError::check(rc, "loading trust anchors")?;
        if loaded == 0 {
            return Err(TlsError::new(
                ffi::GNUTLS_E_NO_CERTIFICATE_FOUND,
                "no trust anchor found",
            ));
        }
        Ok(loaded as u32)
    }

    pub(super) fn raw(&self) -> ffi::gnutls_certificate_credentials_t {
        self.raw
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        // SAFETY: raw came from gnutls_certificate_allocate_credentials, and
        // every session using it holds an Rc to self, so none is alive now.
        unsafe { ffi::gnutls_certificate_free_credentials(self.raw) }
    }
}

/// Borrows a byte slice as a gnutls_datum_t for the duration of one call.
pub(super) fn datum(bytes: &[u8]) -> Result<ffi::gnutls_datum_t, TlsError> {
    let size = u32::try_from(bytes.len())
        .map_err(|_| TlsError::new(ffi::GNUTLS_E_INVALID_REQUEST, "input too large"))?;
    Ok(ffi::gnutls_datum_t {
        data: bytes.as_ptr() as *mut u8,
        size,
    })
}
