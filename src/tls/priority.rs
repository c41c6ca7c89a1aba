use std::ffi::CString;
use std::ptr;

use super::TlsError;
use crate::ffi;

/// A compiled GnuTLS priority string (`--tls-priority`), shared read-only
/// by every session.
pub struct Priority {
    raw: ffi::gnutls_priority_t,
}

impl Priority {
    pub fn new(spec: &str) -> Result<Priority, TlsError> {
        let c_spec = CString::new(spec)
            .map_err(|_| TlsError::new(ffi::GNUTLS_E_INVALID_REQUEST, "priority string"))?;
        let mut raw: ffi::gnutls_priority_t = ptr::null_mut();
        let mut err_pos: *const std::os::raw::c_char = ptr::null();
        // SAFETY: c_spec outlives the call; raw and err_pos are valid out-pointers.
        let rc = unsafe { ffi::gnutls_priority_init2(&mut raw, c_spec.as_ptr(), &mut err_pos, 0) };
        if rc < 0 {
            let at = if err_pos.is_null() {
                0
            } else {
                // SAFETY: on a syntax error err_pos points into c_spec.
                unsafe { err_pos.offset_from(c_spec.as_ptr()) }.max(0) as usize
            };
            let context = format!("priority string, at \"{}\"", spec.get(at..).unwrap_or(""));
            return Err(TlsError::new(rc, context));
        }
        Ok(Priority { raw })
    }

    pub(super) fn raw(&self) -> ffi::gnutls_priority_t {
        self.raw
    }

    /// Whether TLS 1.3 is among the versions these priorities enable: if
    /// so, a client that offers it gets it, and never resumes by session
    /// ID (TLS 1.3 resumes through tickets alone).
    pub fn allows_tls13(&self) -> bool {
        let mut list: *const std::os::raw::c_uint = ptr::null();
        // SAFETY: raw is live; GnuTLS points list at an array inside the
        // priority cache and returns its length.
        let n = unsafe { ffi::gnutls_priority_protocol_list(self.raw, &mut list) };
        if n <= 0 || list.is_null() {
            return false;
        }
        // SAFETY: list holds n entries and lives as long as self.
        let versions = unsafe { std::slice::from_raw_parts(list, n as usize) };
        versions.contains(&ffi::GNUTLS_TLS1_3)
    }
}

impl Drop for Priority {
    fn drop(&mut self) {
        // SAFETY: raw came from gnutls_priority_init2; sessions that used it
        // hold an Rc to self, so none is alive now.
        unsafe { ffi::gnutls_priority_deinit(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_whether_tls13_is_enabled() {
        crate::tls::init().unwrap();
        assert!(
            Priority::new(crate::config::DEFAULT_PRIORITY)
                .unwrap()
                .allows_tls13()
        );
        assert!(!Priority::new("NORMAL:-VERS-TLS1.3").unwrap().allows_tls13());
    }
}
