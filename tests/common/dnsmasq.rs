//! dnsmasq on a loopback port, answering with the records a test gives
//! and nothing else (no upstream, no /etc/hosts); killed when dropped.
//! Shared by the resolver's unit tests (`src/dns/tests.rs`, through
//! `#[path]`) and the integration tests (`tests/common`).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// dnsmasq for one test, killed when dropped.
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn start(records: &[String]) -> Dnsmasq {
        let program = if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq"
        } else {
            "dnsmasq"
        };
        let mut last_error = String::new();
        // Another process may take the free port before dnsmasq binds it.
        for _ in 0..5 {
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut child = Command::new(program)
                .args([
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--pid-file=",
                    "--cache-size=0",
                ])
                .arg(format!("--port={port}"))
                .args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run {program} ({e}): scripts/deps test installs dnsmasq-base")
                });
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                // dnsmasq binds its TCP socket with the UDP one.
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Dnsmasq { child, addr };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    last_error.clear();
                    if let Some(mut stderr) = child.stderr.take() {
                        let _ = stderr.read_to_string(&mut last_error);
                    }
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("dnsmasq did not listen on {addr}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if !last_error.contains("in use") {
                break;
            }
        }
        panic!("dnsmasq did not start: {last_error}");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for UDP and TCP on 127.0.0.1 just now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
