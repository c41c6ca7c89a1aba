//! Helpers shared by the load generator and the soak test (each bench
//! binary includes this module with `mod common;`).

use std::collections::{BTreeSet, HashMap};
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

/// A process as /proc names it: its pid and its start time (clock ticks
/// after boot), so that a pid the kernel hands out again is another
/// process.
pub type ProcId = (u32, u64);

/// What the CPU accounting needs from one line of /proc/PID/stat.
struct ProcStat {
    /// Exited, waiting for its parent to reap it (Z) or being reaped (X).
    zombie: bool,
    ppid: u32,
    start: u64,
    /// utime + stime: the process's own time, all its threads.
    own: u64,
    /// cutime + cstime: the time of the children it has waited for
    /// (theirs, and that of the children they had waited for).
    reaped: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields
    // after it start at field 3, so field N is at index N - 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are signed in the kernel's format.
    let tick = |i: usize| -> Option<u64> {
        Some(u64::try_from(f.get(i)?.parse::<i64>().ok()?).unwrap_or(0))
    };
    Some(ProcStat {
        zombie: matches!(*f.first()?, "Z" | "X"),
        ppid: f.get(1)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
        own: tick(11)? + tick(12)?,
        reaped: tick(13)? + tick(14)?,
    })
}

/// A process and every process descended from it, with their CPU time.
///
/// A process's CPU time is in exactly one place at any moment: in its own
/// utime + stime while it lives (a zombie's too), then, once its parent
/// has waited for it, in the parent's cutime + cstime (and from there in
/// the grandparent's when the parent is reaped in turn). The sum of utime,
/// stime, cutime and cstime over the root and its living descendants
/// therefore counts every process of the tree once, whether it lives or
/// was reaped: a child alive at one reading and reaped by the next moves
/// from the first term to the second, and the difference of two readings
/// is the CPU the tree spent between them. Lost are only descendants that
/// left the tree without being waited for by a member (reparented to init
/// when their parent died first, or reaped automatically under SIGCHLD
/// SIG_IGN); none of the benchmarked servers does that. The kernel gives
/// each process's own fields in whole clock ticks and its reaped children's
/// as exact sums, so a reading can be short by about a tick for each
/// descendant counted from its own fields (a few per reading here).
pub struct ProcTree {
    /// Clock ticks of the whole tree, as above.
    pub ticks: u64,
    /// The descendants (not the root) alive or zombie at the reading.
    pub descendants: BTreeSet<ProcId>,
    /// Those of them that have exited and wait to be reaped: their CPU
    /// time is final (the exit itself included) and counted from their own
    /// stat until it moves to their parent's cutime.
    pub zombies: BTreeSet<ProcId>,
    /// cutime + cstime summed over the tree: it changes, as the set does,
    /// whenever a member is reaped.
    reaped: u64,
}

impl ProcTree {
    /// Reads the tree of `pid`: None if that process does not exist or
    /// /proc cannot be read.
    ///
    /// /proc is read one file at a time, so a process reaped during a
    /// scan may be counted twice (read as a child, then in its parent's
    /// cutime) or not at all. Scans are repeated until two in a row agree
    /// on the set of descendants and the reaped time: then nothing in the
    /// tree was reaped or forked while the second one read it, and it is
    /// returned (the last one after 50 scans that kept changing).
    pub fn read(pid: u32) -> Option<ProcTree> {
        let mut last = Self::scan(pid)?;
        for _ in 0..50 {
            let next = Self::scan(pid)?;
            if next.descendants == last.descendants && next.reaped == last.reaped {
                return Some(next);
            }
            last = next;
        }
        Some(last)
    }

    fn scan(pid: u32) -> Option<ProcTree> {
        let root = proc_stat(pid)?;
        let mut children: HashMap<u32, Vec<(u32, ProcStat)>> = HashMap::new();
        for entry in fs::read_dir("/proc").ok()? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(Ok(p)) = name.to_str().map(str::parse::<u32>) else {
                continue;
            };
            if p == pid {
                continue;
            }
            // A process may exit between the listing and the read.
            if let Some(s) = proc_stat(p) {
                children.entry(s.ppid).or_default().push((p, s));
            }
        }
        let mut tree = ProcTree {
            ticks: root.own + root.reaped,
            descendants: BTreeSet::new(),
            zombies: BTreeSet::new(),
            reaped: root.reaped,
        };
        let mut todo = vec![pid];
        while let Some(parent) = todo.pop() {
            for (p, s) in children.remove(&parent).unwrap_or_default() {
                tree.ticks += s.own + s.reaped;
                tree.reaped += s.reaped;
                tree.descendants.insert((p, s.start));
                if s.zombie {
                    tree.zombies.insert((p, s.start));
                }
                todo.push(p);
            }
        }
        Some(tree)
    }
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
