//! Generates the raw GnuTLS bindings (`src/ffi`) from `vendor-headers/` with
//! bindgen, against the GnuTLS that pkg-config finds. The allow-list keeps the
//! generated surface to what gsmtpd calls, so a reader of `src/ffi` sees the
//! whole contract with the C library.

use std::env;
use std::path::PathBuf;
use std::process::exit;

const MIN_GNUTLS: &str = "3.6.3";
const HEADER: &str = "vendor-headers/gsmtpd-gnutls.h";

/// Every GnuTLS function gsmtpd calls.
const FUNCTIONS: &[&str] = &[
    // library
    "gnutls_global_init",
    "gnutls_global_deinit",
    "gnutls_check_version",
    "gnutls_strerror",
    "gnutls_strerror_name",
    "gnutls_error_is_fatal",
    "gnutls_rnd",
    // credentials and priorities
    "gnutls_certificate_allocate_credentials",
    "gnutls_certificate_free_credentials",
    "gnutls_certificate_set_flags",
    "gnutls_certificate_set_x509_key_mem2",
    "gnutls_priority_init2",
    "gnutls_priority_deinit",
    "gnutls_priority_protocol_list",
    // server sessions
    "gnutls_init",
    "gnutls_deinit",
    "gnutls_priority_set",
    "gnutls_credentials_set",
    "gnutls_certificate_server_set_request",
    "gnutls_transport_set_ptr",
    "gnutls_transport_set_push_function",
    "gnutls_transport_set_pull_function",
    "gnutls_transport_set_errno",
    "gnutls_transport_set_pull_timeout_function",
    "gnutls_handshake_set_timeout",
    "gnutls_handshake",
    "gnutls_record_recv",
    "gnutls_record_send",
    "gnutls_record_check_pending",
    "gnutls_bye",
    "gnutls_alert_get",
    "gnutls_alert_send",
    "gnutls_alert_send_appropriate",
    "gnutls_alert_get_name",
    // what was negotiated, for the log and the Received header
    "gnutls_protocol_get_version",
    "gnutls_protocol_get_name",
    "gnutls_cipher_get",
    "gnutls_cipher_get_name",
    "gnutls_cipher_get_key_size",
    "gnutls_kx_get",
    "gnutls_mac_get",
    "gnutls_cipher_suite_get_name",
    "gnutls_ciphersuite_get",
    "gnutls_session_is_resumed",
    "gnutls_session_resumption_requested",
    // resumption: tickets, the session-ID cache, and the hook that sees
    // outgoing NewSessionTicket messages
    "gnutls_session_ticket_key_generate",
    "gnutls_session_ticket_enable_server",
    "gnutls_handshake_set_hook_function",
    "gnutls_session_set_ptr",
    "gnutls_session_get_ptr",
    "gnutls_db_set_cache_expiration",
    "gnutls_db_set_store_function",
    "gnutls_db_set_retrieve_function",
    "gnutls_db_set_remove_function",
    "gnutls_db_set_ptr",
    "gnutls_memset",
    "gnutls_hash_fast",
    // OCSP stapling and telling which certificate a session was served
    "gnutls_certificate_set_ocsp_status_request_file2",
    "gnutls_certificate_set_ocsp_status_request_mem",
    "gnutls_certificate_get_ours",
    "gnutls_server_name_get",
    // the client side: sending onward (and the in-process benchmark)
    "gnutls_server_name_set",
    "gnutls_session_get_data2",
    "gnutls_session_set_data",
    "gnutls_session_get_flags",
    "gnutls_session_set_verify_cert",
    "gnutls_session_get_verify_cert_status",
    "gnutls_certificate_verify_peers2",
    "gnutls_certificate_verification_status_print",
    "gnutls_certificate_set_x509_system_trust",
    "gnutls_certificate_set_x509_trust_file",
    "gnutls_ocsp_status_request_enable_client",
    "gnutls_ocsp_status_request_is_checked",
    "gnutls_ocsp_status_request_get",
    "gnutls_ocsp_resp_init",
    "gnutls_ocsp_resp_deinit",
    "gnutls_ocsp_resp_import",
    "gnutls_ocsp_resp_get_status",
    "gnutls_ocsp_resp_get_produced",
    "gnutls_ocsp_resp_get_single",
    // X.509, for the self-signed default certificate and certificate names
    "gnutls_x509_crt_get_dn_by_oid",
    "gnutls_x509_privkey_init",
    "gnutls_x509_privkey_deinit",
    "gnutls_x509_privkey_generate",
    "gnutls_x509_privkey_export2",
    "gnutls_x509_crt_init",
    "gnutls_x509_crt_deinit",
    "gnutls_x509_crt_import",
    "gnutls_x509_crt_export2",
    "gnutls_x509_crt_set_version",
    "gnutls_x509_crt_set_serial",
    "gnutls_x509_crt_set_activation_time",
    "gnutls_x509_crt_set_expiration_time",
    "gnutls_x509_crt_get_expiration_time",
    "gnutls_x509_crt_set_dn_by_oid",
    "gnutls_x509_crt_set_subject_alt_name",
    "gnutls_x509_crt_set_key",
    "gnutls_x509_crt_set_basic_constraints",
    "gnutls_x509_crt_set_key_usage",
    "gnutls_x509_crt_set_key_purpose_oid",
    "gnutls_x509_crt_get_key_id",
    "gnutls_x509_crt_set_subject_key_id",
    "gnutls_x509_crt_sign2",
    "gnutls_x509_crt_check_hostname",
];

/// Exported variables (GnuTLS's allocator is a function-pointer variable).
const VARIABLES: &[&str] = &["gnutls_free", "gnutls_malloc"];

/// Enums passed as plain integers, so bindgen would not pull them in.
const TYPES: &[&str] = &[
    "gnutls_certificate_flags",
    "gnutls_init_flags_t",
    "gnutls_handshake_description_t",
    "gnutls_ocsp_resp_status_t",
    "gnutls_server_name_type_t",
    "gnutls_session_flags_t",
];

/// Constants, by prefix: error codes, init flags, enums used above.
const CONSTANTS: &str = "GNUTLS_(E_|\
CRD_|CERT_|X509_FMT_|PK_|DIG_|SAN_|FSAN_|SHUT_|RND_|KEY_|KEYID_|CERTIFICATE_API_V2|VERSION_NUMBER|\
TLS1|SSL3|DTLS|A_|SEC_PARAM_|HOOK_|OCSP_|NAME_DNS|SFLAGS_).*";
const OIDS: &str = "GNUTLS_(OID_X520_COMMON_NAME|KP_TLS_WWW_SERVER)";

fn main() {
    println!("cargo:rerun-if-changed={HEADER}");
    println!("cargo:rerun-if-changed=build.rs");

    let gnutls = pkg_config::Config::new()
        .atleast_version(MIN_GNUTLS)
        .probe("gnutls")
        .unwrap_or_else(|e| {
            fail(&format!(
                "GnuTLS {MIN_GNUTLS} or newer was not found through pkg-config ({e}).\n\
                 On Debian: apt-get install libgnutls28-dev pkg-config"
            ))
        });
    check_libclang();

    let mut builder = bindgen::Builder::default()
        .header(HEADER)
        .allowlist_var(CONSTANTS)
        .allowlist_var(OIDS)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    for v in VARIABLES {
        builder = builder.allowlist_var(v);
    }
    for path in &gnutls.include_paths {
        builder = builder.clang_arg(format!("-I{}", path.display()));
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen could not process {HEADER}: {e}")));

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("gnutls_bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("writing the bindings: {e}")));

    println!(
        "cargo:rustc-env=GSMTPD_GNUTLS_BUILD_VERSION={}",
        gnutls.version
    );

    // gnutls_ciphersuite_get (3.7.4) gives the IANA suite name; older
    // releases fall back to composing it from its parts.
    println!("cargo:rustc-check-cfg=cfg(gnutls_ciphersuite_get)");
    if version_at_least(&gnutls.version, (3, 7, 4)) {
        println!("cargo:rustc-cfg=gnutls_ciphersuite_get");
    }
}

/// bindgen loads libclang at run time and panics without it; say what to
/// install instead of showing that panic.
fn check_libclang() {
    let found = std::panic::catch_unwind(|| {
        let _ = bindgen::clang_version();
    });
    if found.is_err() {
        fail("libclang was not found; bindgen needs it. On Debian: apt-get install libclang-dev");
    }
}

fn version_at_least(version: &str, want: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    have >= want
}

fn fail(message: &str) -> ! {
    eprintln!("error: gsmtpd build: {message}");
    println!("cargo:warning=gsmtpd build: {}", message.replace('\n', " "));
    exit(1);
}
