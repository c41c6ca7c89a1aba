/*
 * The GnuTLS surface gsmtpd binds to. build.rs runs bindgen on this file
 * with an allow-list, so only what src/ffi needs is generated.
 */
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <gnutls/crypto.h>

#if GNUTLS_VERSION_NUMBER < 0x030603
#error "gsmtpd needs GnuTLS 3.6.3 or newer (Debian: apt-get install libgnutls28-dev)"
#endif

#include <gnutls/ocsp.h>
