//! The server's certificates, keys and OCSP responses, and picking up
//! their replacements.
//!
//! Operators replace files atomically (write, then rename). When a session
//! is about to start and inotify reports activity in the files' directories
//! (see `file_watch`), or at least once per second in any case, every file is
//! `stat`ed — microseconds, no reading or parsing — and only when one changed
//! are the credentials rebuilt. A change is thus used by the next connection
//! on a local filesystem, and within about a second where inotify sees
//! nothing (NFS, a change made on another host). GnuTLS
//! credentials are read-only while sessions use them, so a rebuild makes a
//! new set for new sessions; sessions in progress keep theirs (Rc). A
//! rebuild that fails keeps the previous set. SIGHUP forces a rebuild.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;

use crate::config::CertPair;
use crate::received::rfc5322_date;
use crate::tls::ocsp::{self, OcspTimes};
use crate::tls::{Credentials, x509};

mod file_watch;

use file_watch::FileWatch;

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn file_id(path: &Path) -> Option<FileId> {
    let m = fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// A leaf certificate's DER and the name the log gives it.
type CertName = (Vec<u8>, String);

pub struct Certs {
    pairs: Vec<CertPair>,
    /// Identity of every file (cert, key, OCSP of each pair) at the last build.
    seen: Vec<Option<FileId>>,
    /// Per pair, the last OCSP response that was stapled: an unusable
    /// replacement leaves it in place until it expires.
    last_ocsp: Vec<Option<Vec<u8>>>,
    /// Leaf certificate DER and the name it is logged as.
    names: Vec<CertName>,
    current: Rc<Credentials>,
    /// Made in the process that serves (a worker), which owns its inotify
    /// descriptor; without it the files are `stat`ed once a second.
    watch: Option<FileWatch>,
    /// Unix second of the last `stat` pass.
    checked_at: i64,
}

impl Certs {
    /// Loads every pair; a certificate or key that does not load stops the
    /// start. OCSP problems only cost the staple.
    pub fn load(pairs: Vec<CertPair>, now: i64) -> Result<Certs, String> {
        let mut certs = Certs {
            seen: Vec::new(),
            last_ocsp: vec![None; pairs.len()],
            names: Vec::new(),
            current: Rc::new(Credentials::new().map_err(|e| e.to_string())?),
            pairs,
            watch: None,
            checked_at: now,
        };
        certs.seen = certs.file_ids();
        let (credentials, names) = certs.build(now)?;
        certs.current = Rc::new(credentials);
        certs.names = names;
        Ok(certs)
    }

    /// A copy for a forked worker: the same credentials, not yet watching.
    pub fn for_worker(&self) -> Certs {
        Certs {
            pairs: self.pairs.clone(),
            seen: self.seen.clone(),
            last_ocsp: self.last_ocsp.clone(),
            names: self.names.clone(),
            current: Rc::clone(&self.current),
            watch: None,
            checked_at: self.checked_at,
        }
    }

    /// Starts watching the files' directories; the next session then
    /// `stat`s the files once, which catches changes made since they were
    /// loaded (a worker started long after the supervisor loaded them).
    pub fn watch_files(&mut self) {
        self.watch = Some(FileWatch::new(self.pairs.iter().flat_map(|p| {
            [
                Some(p.cert.as_path()),
                Some(p.key.as_path()),
                p.ocsp.as_deref(),
            ]
            .into_iter()
            .flatten()
        })));
        self.checked_at = i64::MIN;
    }

    /// The inotify descriptor of the watch, for the event loop: on an event
    /// it calls `refresh`, so every process picks up each replacement when
    /// it happens (a later one may already have replaced it with a broken
    /// file by the time a session starts).
    pub fn watch_fd(&self) -> Option<std::os::fd::RawFd> {
        self.watch.as_ref().and_then(FileWatch::raw_fd)
    }

    /// Rebuilds the credentials now if a file changed.
    pub fn refresh(&mut self, now: i64) {
        self.current(now);
    }

    /// The credentials for a new session, rebuilt first if any file changed.
    pub fn current(&mut self, now: i64) -> &Rc<Credentials> {
        // Always ask inotify, so its queue is drained even when the clock
        // alone calls for a look.
        let maybe_changed = self.watch.as_mut().is_some_and(FileWatch::changed);
        if !maybe_changed && now == self.checked_at {
            return &self.current;
        }
        self.checked_at = now;
        let ids = self.file_ids();
        if ids != self.seen {
            // Remember the new state even if the rebuild fails, so a broken
            // file is reported once, not on every connection.
            self.seen = ids;
            self.rebuild("a certificate, key or OCSP file changed", now);
        }
        &self.current
    }

    /// SIGHUP: re-read everything.
    pub fn reload(&mut self, now: i64) {
        self.seen = self.file_ids();
        self.rebuild("SIGHUP", now);
    }

    /// How the log names the certificate a session was served.
    pub fn name_of(&self, der: &[u8]) -> Option<&str> {
        self.names
            .iter()
            .find(|(d, _)| d == der)
            .map(|(_, name)| name.as_str())
    }

    fn rebuild(&mut self, why: &str, now: i64) {
        match self.build(now) {
            Ok((credentials, names)) => {
                self.current = Rc::new(credentials);
                self.names = names;
                log::info!("certificates reloaded ({why}); new connections use them");
            }
            Err(e) => log::error!(
                "certificate reload ({why}) failed, keeping the previous certificates: {e}"
            ),
        }
    }

    fn file_ids(&self) -> Vec<Option<FileId>> {
        self.pairs
            .iter()
            .flat_map(|p| [Some(&p.cert), Some(&p.key), p.ocsp.as_ref()])
            .map(|path| path.and_then(|p| file_id(p)))
            .collect()
    }

    fn build(&mut self, now: i64) -> Result<(Credentials, Vec<CertName>), String> {
        let mut credentials = Credentials::new().map_err(|e| e.to_string())?;
        let mut names = Vec::new();
        for (i, pair) in self.pairs.iter().enumerate() {
            let read = |path: &Path| {
                fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
            };
            let chain = read(&pair.cert)?;
            let key = read(&pair.key)?;
            let index = credentials
                .add_pem(&chain, &key)
                .map_err(|e| format!("{} with {}: {e}", pair.cert.display(), pair.key.display()))?;
            let (der, cn) =
                x509::leaf(&chain).map_err(|e| format!("{}: {e}", pair.cert.display()))?;
            log::info!(
                "certificate #{index} {} (CN={cn}) loaded",
                pair.cert.display()
            );
            if let Some(path) = &pair.ocsp {
                staple(&mut credentials, index, path, &mut self.last_ocsp[i], now);
            }
            names.push((der, format!("#{index}(CN={cn})")));
        }
        Ok((credentials, names))
    }
}

/// Staples the response in `path` for certificate `index`, or, when it is
/// unusable, the last one that was (until that expires).
fn staple(
    credentials: &mut Credentials,
    index: u32,
    path: &Path,
    last: &mut Option<Vec<u8>>,
    now: i64,
) {
    let fresh = fs::read(path).map_err(|e| e.to_string()).and_then(|der| {
        let times = usable(&der, now)?;
        // GnuTLS checks the response against the certificate and its time.
        credentials
            .set_ocsp_file(index, path)
            .map_err(|e| e.text().to_string())?;
        Ok((der, times))
    });
    match fresh {
        Ok((der, times)) => {
            log_times(path, &times, now);
            *last = Some(der);
        }
        Err(reason) => {
            log::warn!("OCSP response {} not stapled: {reason}", path.display());
            let kept = last.take().and_then(|der| {
                let times = usable(&der, now).ok()?;
                credentials.set_ocsp_der(index, &der).ok()?;
                Some((der, times))
            });
            if let Some((der, times)) = kept {
                log::warn!(
                    "OCSP: stapling the previous response for certificate #{index} until its nextUpdate {}",
                    times.next_update.map(date).unwrap_or_default()
                );
                *last = Some(der);
            }
        }
    }
}

/// Parses a response and refuses one with no nextUpdate or past it.
fn usable(der: &[u8], now: i64) -> Result<OcspTimes, String> {
    let times = ocsp::inspect(der).map_err(|e| e.to_string())?;
    match times.next_update {
        None => Err("it has no nextUpdate, so no end of validity".into()),
        Some(next) if next <= now => Err(format!("it expired at its nextUpdate {}", date(next))),
        Some(_) => Ok(times),
    }
}

fn log_times(path: &Path, t: &OcspTimes, now: i64) {
    let next = t.next_update.unwrap_or(now);
    log::info!(
        "OCSP response {} stapled: thisUpdate {}, nextUpdate {}",
        path.display(),
        date(t.this_update),
        date(next)
    );
    // Renewal is overdue once less than a quarter of the validity is left.
    if (next - now) * 4 < next - t.this_update {
        log::warn!(
            "OCSP response {} expires soon ({}): renew it",
            path.display(),
            date(next)
        );
    }
}

fn date(secs: i64) -> String {
    rfc5322_date(u64::try_from(secs).unwrap_or(0))
}
