//! A real MTA as the client: Debian's Exim (GnuTLS build, with PIPECONNECT
//! and TLS_resume) delivers two messages to gsmtpd on separate connections.
//! The second must use early pipelining and resume its TLS session, as both
//! gsmtpd's log and Exim's log show.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn exim_config(dir: &Path, port: u16) -> String {
    format!(
        "primary_hostname = exim-client.test\n\
         spool_directory = {dir}/spool\n\
         log_file_path = {dir}/log/%slog\n\
         log_selector = +pipelining +tls_resumption +tls_cipher +received_recipients\n\
         keep_environment =\n\
         host_lookup =\n\
         rfc1413_hosts =\n\
         begin routers\n\
         to_gsmtpd:\n  driver = manualroute\n  route_list = * 127.0.0.1::{port} byname\n  self = send\n  transport = smtp_out\n\
         begin transports\n\
         smtp_out:\n  driver = smtp\n  hosts_require_tls = *\n  tls_verify_certificates = {ca}\n\
         \x20 tls_verify_cert_hostnames =\n  hosts_pipe_connect = *\n  tls_resumption_hosts = *\n  allow_localhost\n\
         begin retry\n* * F,1m,1m\n",
        dir = dir.display(),
        ca = pki().join("ca.pem").display(),
    )
}

fn exim_deliver(config: &Path, n: u32) {
    let mut child = Command::new("exim")
        .args([
            "-C",
            config.to_str().unwrap(),
            "-odi",
            "-f",
            "sender@exim-client.test",
            "kim@example.org",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("exim is installed by scripts/deps test (exim4-daemon-light)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("Subject: exim {n}\n\nhello {n}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn exim_uses_early_pipelining_and_resumption_on_its_second_delivery() {
    let server = Server::start();
    let dir = scratch_dir("exim");
    for sub in ["spool", "log"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    // Exim gives up root for -C configurations; its spool must be its own.
    let owned = Command::new("chown")
        .args(["-R", "Debian-exim:Debian-exim"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(owned.success());
    let config = dir.join("exim.conf");
    fs::write(&config, exim_config(&dir, server.port())).unwrap();

    exim_deliver(&config, 1);
    exim_deliver(&config, 2);

    assert_eq!(server.mailbox("kim").len(), 2);
    let start = std::time::Instant::now();
    let arrivals = loop {
        let lines: Vec<String> = server
            .log()
            .lines()
            .filter(|l| l.contains("<= sender@"))
            .map(String::from)
            .collect();
        if lines.len() >= 2 || start.elapsed() > WAIT {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(arrivals.len(), 2, "{}", server.log());
    assert!(
        arrivals[0].contains(" L. ") && !arrivals[0].contains(":256* "),
        "{}",
        arrivals[0]
    );
    assert!(
        arrivals[1].contains(" L* ") && arrivals[1].contains(":256* "),
        "{}",
        arrivals[1]
    );

    let exim_log = fs::read_to_string(dir.join("log/mainlog")).unwrap();
    let deliveries: Vec<&str> = exim_log
        .lines()
        .filter(|l| l.contains("=> kim@example.org"))
        .collect();
    assert_eq!(deliveries.len(), 2, "{exim_log}");
    assert!(
        deliveries[1].contains(" L* ") && deliveries[1].contains(":256* "),
        "{exim_log}"
    );
}
