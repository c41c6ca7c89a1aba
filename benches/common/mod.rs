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

/// CPU time of a process in clock ticks, from /proc/PID/stat: its own
/// utime + stime plus cutime + cstime, the time of the children it has
/// waited for. A server that forks a child per connection (Exim) is thus
/// measured whole once those children are reaped (see `child_count`); for a
/// server without children the last two are 0.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it start at
    // field 3, so utime, stime, cutime, cstime (fields 14 to 17) are at
    // 11 to 14.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let mut sum = 0u64;
    for i in 11..=14 {
        // cutime and cstime are signed in the kernel's format.
        sum += u64::try_from(f.get(i)?.parse::<i64>().ok()?).unwrap_or(0);
    }
    Some(sum)
}

/// Processes whose parent is `pid`, zombies included (a zombie's CPU time
/// reaches the parent's cutime/cstime only once the parent reaps it).
/// None if /proc cannot be read.
#[allow(dead_code)] // loadgen's; soak includes this module too
pub fn child_count(pid: u32) -> Option<usize> {
    let mut n = 0;
    for entry in fs::read_dir("/proc").ok()? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process may exit between the listing and the read.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        // Field 4, the parent's pid, is the second after the name.
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if ppid.and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            n += 1;
        }
    }
    Some(n)
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
