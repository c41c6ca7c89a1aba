//! OCSP stapling, several certificates chosen by SNI and by what the client
//! supports, picking up replaced files, and SIGHUP.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A server with the RSA and ECDSA certificates for localhost and the RSA
/// one for other.test; `ocsp` is stapled with the first.
fn server_with_ocsp(ocsp: &Path) -> Server {
    let args = [
        "--cert",
        &pki_file("rsa.pem"),
        "--key",
        &pki_file("rsa-key.pem"),
        "--ocsp",
        ocsp.to_str().unwrap(),
        "--cert",
        &pki_file("ecdsa.pem"),
        "--key",
        &pki_file("ecdsa-key.pem"),
        "--ocsp",
        "none",
        "--cert",
        &pki_file("other.pem"),
        "--key",
        &pki_file("other-key.pem"),
    ]
    .map(String::from)
    .to_vec();
    Server::with(Options {
        certs: false,
        extra: args,
        ..Options::default()
    })
}

/// openssl s_client -status; returns its output after a clean SMTP QUIT.
fn status(server: &Server, starttls: bool, version: &str) -> String {
    let ca = pki_file("ca.pem");
    let port = if starttls {
        server.port()
    } else {
        server.tls_port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec![
        "s_client",
        "-connect",
        &addr,
        "-CAfile",
        &ca,
        "-status",
        version,
        "-nocommands",
    ];
    if starttls {
        args.extend(["-starttls", "smtp"]);
    }
    // RSA signatures, so that the RSA certificate (the stapled one) is served.
    args.extend(["-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"]);
    let mut c = TlsClient::spawn("openssl", &args);
    // With -starttls, s_client shows the last line of the EHLO reply it
    // read; without, the banner.
    c.expect_reply(if starttls { "250" } else { "220" });
    c.command("QUIT", "221");
    let out = c.finish();
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    out
}

fn this_update(out: &str) -> Option<String> {
    out.lines()
        .find(|l| l.trim_start().starts_with("This Update:"))
        .map(|l| l.trim().to_string())
}

#[test]
fn valid_response_is_stapled_on_both_listeners_and_both_versions() {
    let server = server_with_ocsp(&pki().join("rsa.ocsp.der"));
    for starttls in [true, false] {
        for version in ["-tls1_2", "-tls1_3"] {
            let out = status(&server, starttls, version);
            assert!(
                out.contains("OCSP Response Status: successful"),
                "{starttls} {version}:\n{out}"
            );
            assert!(out.contains("Cert Status: good"), "{out}");
        }
    }
    server.wait_log("OCSP response");
    assert!(
        server.log().contains("stapled: thisUpdate"),
        "{}",
        server.log()
    );
}

#[test]
fn unusable_responses_are_not_stapled_and_the_handshake_succeeds() {
    for (file, reason) in [
        ("rsa-expired.ocsp.der", "expired"),
        ("other.ocsp.der", "match"),
        ("garbage.ocsp.der", "not an OCSP response"),
        ("rsa-nonext.ocsp.der", "no nextUpdate"),
        ("does-not-exist.der", "No such file"),
    ] {
        let server = server_with_ocsp(&pki().join(file));
        for version in ["-tls1_2", "-tls1_3"] {
            let out = status(&server, true, version);
            assert!(
                out.contains("OCSP response: no response sent"),
                "{file} {version}:\n{out}"
            );
        }
        let log = server.wait_log("not stapled");
        let line = log.lines().find(|l| l.contains("not stapled")).unwrap();
        assert!(
            line.contains("WARN") && line.contains(file) && line.contains(reason),
            "{line}"
        );
    }
}

fn staple_file(tag: &str, from: &str) -> PathBuf {
    let path = scratch_dir(tag).join("staple.der");
    fs::copy(pki().join(from), &path).unwrap();
    path
}

/// Write a temporary file, then rename it over the old one.
fn replace_atomically(path: &Path, from: &str) {
    let tmp = path.with_extension("tmp");
    fs::copy(pki().join(from), &tmp).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_replaced_file_is_used_by_the_next_connection() {
    let path = staple_file("replace", "rsa-older.ocsp.der");
    let server = server_with_ocsp(&path);
    let before = this_update(&status(&server, false, "-tls1_3")).unwrap();
    replace_atomically(&path, "rsa.ocsp.der");
    let after = this_update(&status(&server, false, "-tls1_3")).unwrap();
    assert_ne!(before, after, "the new response was not picked up");
    // A broken replacement leaves the last valid response stapled.
    replace_atomically(&path, "garbage.ocsp.der");
    let kept = this_update(&status(&server, true, "-tls1_2")).expect("still stapled");
    assert_eq!(kept, after);
    server.wait_log("stapling the previous response");
}

fn served_key(server: &Server, priority: &str, sni: Option<&str>) -> String {
    let port = server.tls_port().to_string();
    let prio = format!("--priority={priority}");
    let mut args = vec!["--port", &port, &prio];
    let sni_args;
    if let Some(name) = sni {
        sni_args = [
            format!("--sni-hostname={name}"),
            format!("--verify-hostname={name}"),
        ];
        args.extend(sni_args.iter().map(String::as_str));
    }
    args.push("localhost");
    let mut c = TlsClient::gnutls(&args);
    let subject = c.wait_line(" - subject `");
    c.expect_reply("220");
    c.command("QUIT", "221");
    c.finish();
    subject
}

#[test]
fn sni_and_signature_algorithms_pick_the_certificate() {
    let server = server_with_ocsp(&pki().join("rsa.ocsp.der"));
    let other = served_key(&server, "NORMAL", Some("other.test"));
    assert!(other.contains("CN=other.test"), "{other}");
    let local = served_key(&server, "NORMAL", Some("localhost"));
    assert!(local.contains("CN=localhost"), "{local}");

    for (version, ecdsa, rsa) in [
        ("-VERS-TLS1.3", "-KX-ALL:+ECDHE-ECDSA", "-KX-ALL:+ECDHE-RSA"),
        (
            "-VERS-ALL:+VERS-TLS1.3",
            "-SIGN-ALL:+SIGN-ECDSA-SECP256R1-SHA256",
            "-SIGN-ALL:+SIGN-RSA-PSS-RSAE-SHA256",
        ),
    ] {
        let e = served_key(&server, &format!("NORMAL:{version}:{ecdsa}"), None);
        assert!(
            e.contains("CN=localhost") && e.contains("EC/ECDSA key"),
            "{version}: {e}"
        );
        let r = served_key(&server, &format!("NORMAL:{version}:{rsa}"), None);
        assert!(
            r.contains("CN=localhost") && r.contains("RSA key"),
            "{version}: {r}"
        );
    }
    let log = server.log();
    assert!(
        log.contains("cert=#2(CN=other.test) SNI=other.test"),
        "{log}"
    );
    assert!(
        log.contains("cert=#1(CN=localhost)") && log.contains("cert=#0(CN=localhost)"),
        "{log}"
    );
}

#[test]
fn sighup_with_a_broken_key_keeps_serving_with_the_old_credentials() {
    let dir = scratch_dir("hup");
    for f in ["rsa.pem", "rsa-key.pem"] {
        fs::copy(pki().join(f), dir.join(f)).unwrap();
    }
    let args = [
        "--cert",
        dir.join("rsa.pem").to_str().unwrap(),
        "--key",
        dir.join("rsa-key.pem").to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let server = Server::with(Options {
        certs: false,
        extra: args,
        ..Options::default()
    });
    let mut open = Plain::connect(server.plain[0]);
    open.expect("220");
    open.command("EHLO client.test", "250");

    fs::write(
        dir.join("rsa-key.pem"),
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    server.signal("HUP");
    server.wait_log("reload (SIGHUP) failed, keeping the previous certificates");
    assert!(status(&server, true, "-tls1_3").contains("221 "));
    assert!(status(&server, false, "-tls1_2").contains("221 "));
    // The connection that was open across the reload is still served.
    open.command("NOOP", "250");
}
