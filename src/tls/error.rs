use std::fmt;

use crate::ffi;

/// A GnuTLS error code with the operation that returned it. Displays as
/// "operation: GnuTLS's own text".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub code: i32,
    pub context: String,
}

impl TlsError {
    pub fn new(code: i32, context: impl Into<String>) -> TlsError {
        TlsError {
            code,
            context: context.into(),
        }
    }

    /// Ok for GnuTLS's non-negative "success" returns, the error otherwise.
    pub fn check(rc: i32, context: &str) -> Result<i32, TlsError> {
        if rc < 0 {
            Err(TlsError::new(rc, context))
        } else {
            Ok(rc)
        }
    }

    /// GnuTLS's description of the code.
    pub fn text(&self) -> &'static str {
        // SAFETY: gnutls_strerror accepts any int and returns a static string.
        let ptr = unsafe { ffi::gnutls_strerror(self.code) };
        super::static_str(ptr).unwrap_or("unknown GnuTLS error")
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.text())
    }
}

impl std::error::Error for TlsError {}
