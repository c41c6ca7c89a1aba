//! Helpers shared by the load generator and the soak test (each bench
//! binary includes this module with `mod common;`).

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub fn num<T: std::str::FromStr>(
    m: &getopts::Matches,
    flag: &str,
    default: T,
) -> Result<T, String> {
    match m.opt_str(flag) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| format!("--{flag}: bad value {s:?}")),
    }
}

/// Accepts `IP:PORT` with a loopback IP, `[::1]:PORT`, or `localhost:PORT`.
/// Never resolves names, so no lookup can leave the machine.
pub fn loopback_target(flag: &str, s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match s.rsplit_once(':') {
            Some((h, p)) if h.eq_ignore_ascii_case("localhost") => {
                let port = p
                    .parse()
                    .map_err(|_| format!("--{flag}: bad port in {s:?}"))?;
                SocketAddr::from((Ipv4Addr::LOCALHOST, port))
            }
            _ => {
                return Err(format!(
                    "--{flag}: {s:?} is not a loopback IP:PORT or localhost:PORT"
                ));
            }
        },
    };
    if !addr.ip().is_loopback() {
        return Err(format!("--{flag}: refusing {addr}: not a loopback address"));
    }
    if addr.port() == 0 {
        return Err(format!("--{flag}: port 0"));
    }
    Ok(addr)
}

pub fn load_roots(path: &str) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("--ca {path}: {e}"))?;
    for cert in iter {
        let cert = cert.map_err(|e| format!("--ca {path}: {e}"))?;
        roots.add(cert).map_err(|e| format!("--ca {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca {path}: no certificate found"));
    }
    Ok(Arc::new(roots))
}

/// utime + stime of a process, in clock ticks, from /proc/PID/stat.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it start at
    // field 3, so utime (field 14) and stime (field 15) are at 11 and 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Nearest-rank percentile of sorted latencies, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1000.0
}

pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
