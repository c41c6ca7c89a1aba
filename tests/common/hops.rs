//! Next hops and senders for the tests of sending onward: a gsmtpd
//! receiver for `remote.example`, a relaying gsmtpd, Exim 4.96 as a next
//! hop, and the helpers to submit and wait for mail.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::*;

/// A gsmtpd that takes mail for `remote.example` (the next hop).
pub fn receiver(extra: &[&str]) -> Server {
    let mut args = vec!["--domain", "remote.example", "--workers", "1"];
    args.extend_from_slice(extra);
    Server::with(Options {
        implicit: false,
        extra: args.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    })
}

/// A gsmtpd that relays for loopback clients, with `extra` flags, retrying
/// every second or two unless `extra` says otherwise.
pub fn sender_with(state: Option<std::path::PathBuf>, extra: &[String]) -> Server {
    let mut args: Vec<String> = vec!["--relay-from".into(), "127.0.0.0/8".into()];
    if !extra.iter().any(|a| a == "--retry-min") {
        args.extend(["--retry-min", "1", "--retry-max", "2"].map(String::from));
    }
    args.extend_from_slice(extra);
    Server::with(Options {
        implicit: false,
        extra: args,
        state,
        ..Options::default()
    })
}

pub fn route(to: &str) -> Vec<String> {
    vec!["--route".into(), format!("remote.example={to}")]
}

/// Submits one message to `server` for `rcpt`; returns its queue id.
pub fn submit(server: &Server, from: &str, rcpt: &str, body: &str) -> String {
    let mut c = Plain::greeted(server.plain[0]);
    c.command(&format!("MAIL FROM:<{from}>"), "250");
    c.command(&format!("RCPT TO:<{rcpt}>"), "250");
    c.command("DATA", "354");
    c.send(&crlf(body));
    c.send(".\r\n");
    let id = queue_id(&c.expect("250"));
    c.command("QUIT", "221");
    id
}

/// The messages in `dir` (a Maildir new/), waiting until there are `n`.
pub fn wait_mail(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    let start = Instant::now();
    loop {
        let mut files: Vec<_> = fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        if files.len() >= n {
            files.sort();
            return files.iter().map(|p| fs::read(p).unwrap()).collect();
        }
        assert!(
            start.elapsed() < WAIT,
            "{} message(s) in {}, not {n}",
            files.len(),
            dir.display()
        );
        sleep(Duration::from_millis(50));
    }
}

/// Exim 4.96 as the next hop: a daemon with its own configuration, taking
/// mail for remote.example into a Maildir, TLS offered. Killed on drop.
pub struct EximHop {
    child: std::process::Child,
    pub dir: std::path::PathBuf,
    pub port: u16,
}

impl EximHop {
    /// `extra` goes into the main section of its configuration.
    pub fn start(extra: &str) -> EximHop {
        let dir = scratch_dir("exim-hop");
        for sub in ["spool", "log", "mail"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // Exim gives up root for a -C configuration: what it reads and
        // writes must be its user's.
        fs::copy(pki_file("rsa.pem"), dir.join("cert.pem")).unwrap();
        fs::copy(pki_file("rsa-key.pem"), dir.join("key.pem")).unwrap();
        let port = free_port();
        let config = format!(
            "primary_hostname = exim-hop.test\n\
             spool_directory = {dir}/spool\n\
             log_file_path = {dir}/log/%slog\n\
             log_selector = +tls_cipher +tls_resumption +received_recipients +smtp_connection +pipelining\n\
             {extra}\n\
             daemon_smtp_ports = {port}\n\
             local_interfaces = 127.0.0.1\n\
             tls_advertise_hosts = *\n\
             tls_certificate = {dir}/cert.pem\n\
             tls_privatekey = {dir}/key.pem\n\
             keep_environment =\n\
             host_lookup =\n\
             rfc1413_hosts =\n\
             domainlist local_domains = remote.example\n\
             acl_smtp_rcpt = check_rcpt\n\
             begin acl\n\
             check_rcpt:\n  accept domains = +local_domains\n  deny message = relay not permitted\n\
             begin routers\n\
             local:\n  driver = accept\n  domains = +local_domains\n  transport = to_maildir\n\
             begin transports\n\
             to_maildir:\n  driver = appendfile\n  directory = {dir}/mail\n\
             \x20 maildir_format\n  user = Debian-exim\n  delivery_date_add\n  envelope_to_add\n  return_path_add\n",
            dir = dir.display(),
            extra = extra,
        );
        let owned = Command::new("chown")
            .args(["-R", "Debian-exim:Debian-exim"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(owned.success());
        // The configuration itself must be root's.
        let conf = dir.join("exim.conf");
        fs::write(&conf, config).unwrap();
        let child = Command::new("exim")
            .arg("-C")
            .arg(&conf)
            .args(["-bdf", "-odi"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("exim is installed by scripts/deps test (exim4-daemon-light)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < WAIT, "Exim did not start listening");
            sleep(Duration::from_millis(50));
        }
        EximHop { child, dir, port }
    }

    pub fn mainlog(&self) -> String {
        fs::read_to_string(self.dir.join("log/mainlog")).unwrap_or_default()
    }

    /// The messages Exim stored (one Maildir for every recipient),
    /// waiting until there are `n`.
    pub fn mail(&self, n: usize) -> Vec<Vec<u8>> {
        wait_mail(&self.dir.join("mail/new"), n)
    }
}

impl Drop for EximHop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Exim's mainlog:\n{}", self.mainlog());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `gsmtpd ARGS --state-dir STATE` (the queue commands): exit
/// status, stdout, stderr.
pub fn gsmtpd(args: &[&str], state: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gsmtpd"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
