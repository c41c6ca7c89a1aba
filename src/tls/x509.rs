//! X.509 with GnuTLS's own API: the self-signed certificate gsmtpd makes for
//! itself when the operator gives none, and the checks that decide whether a
//! previously made one can be reused.

use std::os::raw::{c_char, c_void};
use std::ptr;

use super::credentials::datum;
use super::{TlsError, free_datum};
use crate::ffi;

/// A PEM certificate and its PEM private key.
pub struct PemPair {
    pub certificate: Vec<u8>,
    pub key: Vec<u8>,
}

const RSA_BITS: u32 = 2048;

/// Makes a self-signed RSA-2048 server certificate for `hostname`, valid
/// from an hour before `now` (Unix seconds, to absorb clock skew) for `days`.
pub fn self_signed(hostname: &str, now: i64, days: u32) -> Result<PemPair, TlsError> {
    let key = PrivateKey::generate()?;
    let crt = Certificate::new()?;
    crt.fill_self_signed(hostname, now, days, &key)?;
    // SAFETY: crt and key are live; signing with its own key makes it self-signed.
    let rc =
        unsafe { ffi::gnutls_x509_crt_sign2(crt.raw, crt.raw, key.raw, ffi::GNUTLS_DIG_SHA256, 0) };
    TlsError::check(rc, "signing the certificate")?;
    Ok(PemPair {
        certificate: crt.export_pem()?,
        key: key.export_pem()?,
    })
}

/// True when the first certificate in `pem` is valid for at least
/// `margin_secs` more and names `hostname`.
pub fn still_fits(
    pem: &[u8],
    hostname: &str,
    now: i64,
    margin_secs: i64,
) -> Result<bool, TlsError> {
    let crt = Certificate::new()?;
    let data = datum(pem)?;
    // SAFETY: crt is live; data borrows pem for the call.
    let rc = unsafe { ffi::gnutls_x509_crt_import(crt.raw, &data, ffi::GNUTLS_X509_FMT_PEM) };
    TlsError::check(rc, "reading the certificate")?;
    // SAFETY: crt holds an imported certificate.
    let expires = unsafe { ffi::gnutls_x509_crt_get_expiration_time(crt.raw) };
    let name = c_string(hostname)?;
    // SAFETY: name is NUL-terminated and outlives the call.
    let matches = unsafe { ffi::gnutls_x509_crt_check_hostname(crt.raw, name.as_ptr()) } != 0;
    Ok(matches && expires - now > margin_secs)
}

/// The DER and the subject CN of the first (leaf) certificate in `pem`.
pub fn leaf(pem: &[u8]) -> Result<(Vec<u8>, String), TlsError> {
    let crt = Certificate::new()?;
    let data = datum(pem)?;
    // SAFETY: crt is live; data borrows pem for the call.
    let rc = unsafe { ffi::gnutls_x509_crt_import(crt.raw, &data, ffi::GNUTLS_X509_FMT_PEM) };
    TlsError::check(rc, "reading the certificate")?;
    let mut out = empty_datum();
    // SAFETY: crt holds a certificate; out receives a gnutls_malloc'd buffer.
    let rc = unsafe { ffi::gnutls_x509_crt_export2(crt.raw, ffi::GNUTLS_X509_FMT_DER, &mut out) };
    TlsError::check(rc, "exporting the certificate")?;
    let der = take_datum(out, false);
    let mut cn = [0u8; 256];
    let mut len = cn.len();
    let oid = ffi::GNUTLS_OID_X520_COMMON_NAME.as_ptr() as *const c_char;
    // SAFETY: cn is writable for len bytes; GnuTLS updates len.
    let rc = unsafe {
        ffi::gnutls_x509_crt_get_dn_by_oid(
            crt.raw,
            oid,
            0,
            0,
            cn.as_mut_ptr() as *mut c_void,
            &mut len,
        )
    };
    let name = if rc < 0 {
        String::new()
    } else {
        String::from_utf8_lossy(cn.get(..len).unwrap_or(&[])).into_owned()
    };
    Ok((der, name.trim_end_matches('\0').to_string()))
}

fn c_string(s: &str) -> Result<std::ffi::CString, TlsError> {
    std::ffi::CString::new(s)
        .map_err(|_| TlsError::new(ffi::GNUTLS_E_INVALID_REQUEST, "name contains NUL"))
}

struct PrivateKey {
    raw: ffi::gnutls_x509_privkey_t,
}

impl PrivateKey {
    fn generate() -> Result<PrivateKey, TlsError> {
        let mut raw = ptr::null_mut();
        // SAFETY: raw is a valid out-pointer.
        let rc = unsafe { ffi::gnutls_x509_privkey_init(&mut raw) };
        TlsError::check(rc, "gnutls_x509_privkey_init")?;
        let key = PrivateKey { raw };
        // SAFETY: key.raw is an initialised, empty key.
        let rc =
            unsafe { ffi::gnutls_x509_privkey_generate(key.raw, ffi::GNUTLS_PK_RSA, RSA_BITS, 0) };
        TlsError::check(rc, "generating the private key")?;
        Ok(key)
    }

    fn export_pem(&self) -> Result<Vec<u8>, TlsError> {
        let mut out = empty_datum();
        // SAFETY: raw is a generated key; out receives a gnutls_malloc'd buffer.
        let rc = unsafe {
            ffi::gnutls_x509_privkey_export2(self.raw, ffi::GNUTLS_X509_FMT_PEM, &mut out)
        };
        TlsError::check(rc, "exporting the private key")?;
        Ok(take_datum(out, true))
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        // SAFETY: raw came from gnutls_x509_privkey_init; deinit also wipes it.
        unsafe { ffi::gnutls_x509_privkey_deinit(self.raw) }
    }
}

struct Certificate {
    raw: ffi::gnutls_x509_crt_t,
}

impl Certificate {
    fn new() -> Result<Certificate, TlsError> {
        let mut raw = ptr::null_mut();
        // SAFETY: raw is a valid out-pointer.
        let rc = unsafe { ffi::gnutls_x509_crt_init(&mut raw) };
        TlsError::check(rc, "gnutls_x509_crt_init")?;
        Ok(Certificate { raw })
    }

    fn fill_self_signed(
        &self,
        hostname: &str,
        now: i64,
        days: u32,
        key: &PrivateKey,
    ) -> Result<(), TlsError> {
        let mut serial = [0u8; 16];
        // SAFETY: serial is writable for its length.
        let rc = unsafe {
            ffi::gnutls_rnd(
                ffi::GNUTLS_RND_NONCE,
                serial.as_mut_ptr() as *mut c_void,
                serial.len(),
            )
        };
        TlsError::check(rc, "gnutls_rnd")?;
        serial[0] &= 0x7f; // DER integers are signed; keep the serial positive.
        let name = hostname.as_bytes();
        let name_len = name.len() as u32;
        let cn = ffi::GNUTLS_OID_X520_COMMON_NAME.as_ptr() as *const c_char;
        let server_auth = ffi::GNUTLS_KP_TLS_WWW_SERVER.as_ptr() as *const c_void;
        // SAFETY: self.raw and key.raw are live; every buffer outlives its call
        // and the OID constants are NUL-terminated.
        let results = unsafe {
            [
                ffi::gnutls_x509_crt_set_version(self.raw, 3),
                ffi::gnutls_x509_crt_set_serial(
                    self.raw,
                    serial.as_ptr() as *const c_void,
                    serial.len(),
                ),
                ffi::gnutls_x509_crt_set_activation_time(self.raw, now - 3600),
                ffi::gnutls_x509_crt_set_expiration_time(self.raw, now + i64::from(days) * 86_400),
                ffi::gnutls_x509_crt_set_dn_by_oid(
                    self.raw,
                    cn,
                    0,
                    name.as_ptr() as *const c_void,
                    name_len,
                ),
                ffi::gnutls_x509_crt_set_subject_alt_name(
                    self.raw,
                    ffi::GNUTLS_SAN_DNSNAME,
                    name.as_ptr() as *const c_void,
                    name_len,
                    ffi::GNUTLS_FSAN_SET,
                ),
                ffi::gnutls_x509_crt_set_key(self.raw, key.raw),
                ffi::gnutls_x509_crt_set_basic_constraints(self.raw, 0, -1),
                ffi::gnutls_x509_crt_set_key_usage(
                    self.raw,
                    ffi::GNUTLS_KEY_DIGITAL_SIGNATURE | ffi::GNUTLS_KEY_KEY_ENCIPHERMENT,
                ),
                ffi::gnutls_x509_crt_set_key_purpose_oid(self.raw, server_auth, 0),
            ]
        };
        for rc in results {
            TlsError::check(rc, "building the certificate")?;
        }
        self.set_subject_key_id()
    }

    fn set_subject_key_id(&self) -> Result<(), TlsError> {
        let mut id = [0u8; 64];
        let mut len = id.len();
        // SAFETY: id is writable for len bytes; len is updated to the size used.
        let rc = unsafe { ffi::gnutls_x509_crt_get_key_id(self.raw, 0, id.as_mut_ptr(), &mut len) };
        TlsError::check(rc, "computing the key id")?;
        // SAFETY: id holds len valid bytes.
        let rc = unsafe {
            ffi::gnutls_x509_crt_set_subject_key_id(self.raw, id.as_ptr() as *const c_void, len)
        };
        TlsError::check(rc, "setting the key id").map(|_| ())
    }

    fn export_pem(&self) -> Result<Vec<u8>, TlsError> {
        let mut out = empty_datum();
        // SAFETY: raw is a signed certificate; out receives a gnutls_malloc'd buffer.
        let rc =
            unsafe { ffi::gnutls_x509_crt_export2(self.raw, ffi::GNUTLS_X509_FMT_PEM, &mut out) };
        TlsError::check(rc, "exporting the certificate")?;
        Ok(take_datum(out, false))
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        // SAFETY: raw came from gnutls_x509_crt_init.
        unsafe { ffi::gnutls_x509_crt_deinit(self.raw) }
    }
}

fn empty_datum() -> ffi::gnutls_datum_t {
    ffi::gnutls_datum_t {
        data: ptr::null_mut(),
        size: 0,
    }
}

/// Copies a GnuTLS-allocated datum into a Vec and frees the original
/// (wiped first when it holds a `secret`).
fn take_datum(d: ffi::gnutls_datum_t, secret: bool) -> Vec<u8> {
    if d.data.is_null() {
        return Vec::new();
    }
    // SAFETY: GnuTLS filled data with size bytes.
    let bytes = unsafe { std::slice::from_raw_parts(d.data, d.size as usize) }.to_vec();
    free_datum(d, secret);
    bytes
}
