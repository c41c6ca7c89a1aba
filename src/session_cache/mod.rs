//! SQLite-backed TLS 1.2 session-ID cache, called from GnuTLS's
//! `gnutls_db_set_store/retrieve/remove_function` callbacks.
//!
//! The cache only saves full handshakes, so it must never cost one: every
//! failure (missing, corrupt, locked, read-only or vanished database) turns
//! into a miss, is logged once rather than per call, and the file is retried
//! at most once per [`REOPEN_INTERVAL_SECS`] of the caller's clock.
//!
//! Times are Unix seconds supplied by the caller, so nothing here reads a
//! clock. An entry stored at `t` is returned for `t <= now < t + lifetime`:
//! at `now == expires` it is already expired, so a lifetime of 0 caches
//! nothing.
//!
//! Values are TLS master secrets: nothing here logs keys or values, only
//! their lengths.

mod db;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use db::{Db, Schema};

/// Longest key accepted. TLS session IDs are at most 32 bytes; the slack
/// leaves room for a prefix the glue might add.
pub const MAX_KEY_LEN: usize = 64;
/// Longest value accepted. GnuTLS's packed sessions are usually a few KiB;
/// a bound keeps one odd peer certificate chain from bloating the file.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// Minimum spacing of warnings while something keeps going wrong.
const WARN_INTERVAL_SECS: u64 = 60;
/// Minimum spacing of attempts to reopen a database that failed.
pub const REOPEN_INTERVAL_SECS: u64 = 60;
/// While the cache stays disabled, failed reopens are only logged at debug
/// level; this often an operator is reminded at warning level.
const REMIND_INTERVAL_SECS: u64 = 3600;
/// With deferred writes, at most this many rows wait for their commit.
pub const MAX_PENDING: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Entries older than this are never returned.
    pub lifetime_secs: u64,
    /// The table is kept to this many rows by evicting the soonest to expire.
    pub max_rows: u64,
}

/// When something last happened, on the caller's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    Never,
    /// It happened in `open`, which has no clock.
    Unclocked,
    At(u64),
}

impl Stamp {
    fn due(&mut self, now: u64, interval: u64) -> bool {
        match *self {
            Stamp::Never => true,
            Stamp::At(then) if now >= then => now - then >= interval,
            // With no time for the event, or a caller's clock that went back,
            // count from now: a jump must neither stall retries forever nor
            // let a burst of them through.
            Stamp::Unclocked | Stamp::At(_) => {
                *self = Stamp::At(now);
                false
            }
        }
    }
}

#[derive(Debug)]
pub struct SessionCache {
    path: PathBuf,
    config: CacheConfig,
    /// `None` while disabled.
    db: Option<Db>,
    last_warning: Stamp,
    last_reopen: Stamp,
    /// The file's identity is checked at most once per caller second, which
    /// bounds the extra `stat` calls under load.
    last_id_check: Option<u64>,
    /// Deferred writes (see [`SessionCache::defer_writes`]).
    defer: bool,
    /// Rows stored but not committed yet, oldest first.
    pending: Vec<Pending>,
    /// The caller's clock at the last call, for the commit on drop.
    last_now: u64,
    #[cfg(test)]
    warnings: u32,
    #[cfg(test)]
    reopen_attempts: u32,
}

impl SessionCache {
    /// Opens or creates the database at `path`. Never fails: a database that
    /// cannot be used yields a disabled cache (one warning) that retries later.
    pub fn open(path: &Path, config: CacheConfig) -> SessionCache {
        let mut cache = SessionCache {
            path: path.to_path_buf(),
            config,
            db: None,
            last_warning: Stamp::Never,
            last_reopen: Stamp::Never,
            last_id_check: None,
            defer: false,
            pending: Vec::new(),
            last_now: 0,
            #[cfg(test)]
            warnings: 0,
            #[cfg(test)]
            reopen_attempts: 0,
        };
        match Db::open(path) {
            Ok((db, schema)) => {
                cache.note_schema(None, schema);
                log::debug!(
                    "session cache {}: opened with {} entries",
                    path.display(),
                    db.rows
                );
                cache.db = Some(db);
            }
            Err(err) => {
                cache.warn(
                    None,
                    0,
                    format_args!("cannot open ({err}); session resumption by ID is disabled"),
                );
                cache.last_reopen = Stamp::Unclocked;
            }
        }
        cache
    }

    pub fn is_enabled(&self) -> bool {
        self.db.is_some()
    }

    /// Group commit: `store` only queues the row, and the queue is committed
    /// in one transaction by [`SessionCache::flush`], when
    /// [`MAX_PENDING`] rows wait, and before anything reads or deletes rows
    /// (`retrieve`, `remove`, `purge`, `len`) — so a row is always in the
    /// database before a lookup could need it — and on drop. A single-row
    /// commit costs more than a full TLS 1.2 handshake's share of the
    /// server's CPU should (WAL frames, locks, a random B-tree page); the
    /// caller decides how long rows may wait for `flush`.
    pub fn defer_writes(&mut self) {
        self.defer = true;
    }

    /// Rows waiting for their commit.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Commits the rows `store` queued, in one transaction. Rows that
    /// cannot be committed are dropped, as a failed `store` would have been.
    pub fn flush(&mut self, now: u64) {
        if self.pending.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.pending);
        let max_rows = self.config.max_rows;
        let Some(db) = self.ready(now) else {
            return;
        };
        if let Err(err) = db.store_all(&rows, max_rows) {
            self.failed(now, "store", err);
        }
    }

    /// Stores `value` under `key` until `now + lifetime_secs`, replacing any
    /// earlier entry. False if it was not stored, for whatever reason.
    pub fn store(&mut self, key: &[u8], value: &[u8], now: u64) -> bool {
        if !valid_key(key) || value.is_empty() || value.len() > MAX_VALUE_LEN {
            log::debug!(
                "session cache: not storing a {}-byte key with a {}-byte value",
                key.len(),
                value.len()
            );
            return false;
        }
        if self.config.max_rows == 0 {
            return false;
        }
        let expires = db_time(now.saturating_add(self.config.lifetime_secs));
        let max_rows = self.config.max_rows;
        self.last_now = now;
        if self.defer {
            if self.ready(now).is_none() {
                return false;
            }
            self.pending.push(Pending {
                key: key.to_vec(),
                value: value.to_vec(),
                expires,
            });
            if self.pending.len() >= MAX_PENDING {
                self.flush(now);
            }
            return true;
        }
        let Some(db) = self.ready(now) else {
            return false;
        };
        match db.store(key, value, expires, max_rows) {
            Ok(()) => true,
            Err(err) => {
                self.failed(now, "store", err);
                false
            }
        }
    }

    /// The unexpired value stored under `key`, if any. A row still waiting
    /// for its commit is answered from memory (a client that resumes right
    /// away costs no commit); otherwise the waiting rows are committed
    /// first and the database is asked.
    pub fn retrieve(&mut self, key: &[u8], now: u64) -> Option<Vec<u8>> {
        if !valid_key(key) {
            return None;
        }
        if let Some(row) = self.pending.iter().rev().find(|p| p.key == key) {
            return (row.expires > db_time(now)).then(|| row.value.clone());
        }
        self.flush(now);
        let db = self.ready(now)?;
        match db.retrieve(key, db_time(now)) {
            Ok(value) => value,
            Err(err) => {
                self.failed(now, "retrieve", err);
                None
            }
        }
    }

    /// Deletes the entry under `key`, expired or not. True if there was one.
    pub fn remove(&mut self, key: &[u8], now: u64) -> bool {
        if !valid_key(key) {
            return false;
        }
        self.flush(now);
        let Some(db) = self.ready(now) else {
            return false;
        };
        match db.remove(key) {
            Ok(removed) => removed,
            Err(err) => {
                self.failed(now, "remove", err);
                false
            }
        }
    }

    /// Deletes expired entries and returns how many there were.
    pub fn purge(&mut self, now: u64) -> usize {
        self.flush(now);
        let Some(db) = self.ready(now) else {
            return 0;
        };
        match db.purge(db_time(now)) {
            Ok(purged) => {
                // Purge runs from a timer, so this is where a full count (which
                // also corrects the in-memory estimate) is affordable.
                let left = self.len();
                log::debug!(
                    "session cache {}: purged {purged} expired entries, {left} left",
                    self.path.display()
                );
                purged
            }
            Err(err) => {
                self.failed(now, "purge", err);
                0
            }
        }
    }

    /// Number of rows, expired ones included; 0 while disabled. Counts the
    /// table, so meant for timers, tests and logs, not per handshake.
    #[allow(
        clippy::len_without_is_empty,
        reason = "the server has no use for is_empty, which would be dead code there"
    )]
    pub fn len(&mut self) -> u64 {
        let now = self.last_now;
        self.flush(now);
        let Some(db) = self.db.as_mut() else {
            return 0;
        };
        // No clock here to rate-limit a warning with; the next timed call
        // meets the same error and reports it.
        db.count().unwrap_or_else(|err| {
            log::debug!("session cache: counting rows failed: {err}");
            0
        })
    }

    /// The open database, after noticing a replaced file and retrying a
    /// failed one when it is time to; `None` means "treat as a miss".
    fn ready(&mut self, now: u64) -> Option<&mut Db> {
        // Intervals that began in `open` count from the first time we learn
        // the caller's clock.
        for stamp in [&mut self.last_warning, &mut self.last_reopen] {
            if *stamp == Stamp::Unclocked {
                *stamp = Stamp::At(now);
            }
        }
        if let Some(db) = &self.db
            && self.last_id_check != Some(now)
        {
            self.last_id_check = Some(now);
            let change = match db::file_id(&self.path) {
                Ok(id) if id == db.id => None,
                Ok(_) => Some("the database file was replaced"),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    Some("the database file was removed")
                }
                Err(err) => {
                    // The open descriptor may well still work: let the
                    // operation itself decide.
                    log::debug!(
                        "session cache {}: cannot check the file ({err})",
                        self.path.display()
                    );
                    None
                }
            };
            if let Some(change) = change {
                self.db = None;
                // With its inode unlinked, SQLite neither checkpoints nor
                // deletes the WAL on close; left in place it would be replayed
                // into whatever file now has the name.
                db::remove_sidecars(&self.path);
                self.reopen(now, Some(change));
            }
        } else if self.db.is_none() {
            self.reopen(now, None);
        }
        self.db.as_mut()
    }

    /// `change` says why a working connection was given up; `None` means the
    /// cache was already disabled.
    fn reopen(&mut self, now: u64, change: Option<&str>) {
        if !self.last_reopen.due(now, REOPEN_INTERVAL_SECS) {
            return;
        }
        self.last_reopen = Stamp::At(now);
        #[cfg(test)]
        {
            self.reopen_attempts += 1;
        }
        match Db::open(&self.path) {
            Ok((db, schema)) => {
                let rows = db.rows;
                self.db = Some(db);
                self.note_schema(Some(now), schema);
                match change {
                    Some(change) => self.warn(
                        Some(now),
                        WARN_INTERVAL_SECS,
                        format_args!("{change}; reopened it with {rows} entries"),
                    ),
                    None => log::info!(
                        "session cache {}: reopened with {rows} entries, caching again",
                        self.path.display()
                    ),
                }
            }
            Err(err) => match change {
                Some(change) => self.warn(
                    Some(now),
                    WARN_INTERVAL_SECS,
                    format_args!("{change} and cannot be opened ({err}); cache disabled"),
                ),
                None => self.warn(
                    Some(now),
                    REMIND_INTERVAL_SECS,
                    format_args!("still cannot open ({err}); cache disabled"),
                ),
            },
        }
    }

    fn failed(&mut self, now: u64, op: &str, err: rusqlite::Error) {
        if db::is_transient(&err) {
            self.warn(
                Some(now),
                WARN_INTERVAL_SECS,
                format_args!("{op} failed ({err}); treated as a miss"),
            );
        } else {
            self.db = None;
            self.last_reopen = Stamp::At(now);
            self.warn(
                Some(now),
                WARN_INTERVAL_SECS,
                format_args!(
                    "{op} failed ({err}); cache disabled, retrying every \
                     {REOPEN_INTERVAL_SECS} s"
                ),
            );
        }
    }

    fn note_schema(&mut self, now: Option<u64>, schema: Schema) {
        if let Schema::Reset { found_version } = schema {
            self.warn(
                now,
                WARN_INTERVAL_SECS,
                format_args!(
                    "unknown schema (user_version {found_version}), recreated the sessions table"
                ),
            );
        }
    }

    /// Logs a warning unless one was logged less than `interval` seconds ago;
    /// `now` is `None` only in `open`, which always logs.
    fn warn(&mut self, now: Option<u64>, interval: u64, message: fmt::Arguments<'_>) {
        let due = match now {
            Some(now) => self.last_warning.due(now, interval),
            None => true,
        };
        if !due {
            log::debug!("session cache {}: {message}", self.path.display());
            return;
        }
        log::warn!("session cache {}: {message}", self.path.display());
        self.last_warning = now.map_or(Stamp::Unclocked, Stamp::At);
        #[cfg(test)]
        {
            self.warnings += 1;
        }
    }
}

impl Drop for SessionCache {
    fn drop(&mut self) {
        let now = self.last_now;
        self.flush(now);
    }
}

/// A row queued by `store` in deferred mode.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
    pub(crate) expires: i64,
}

fn valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN
}

/// SQLite integers are signed; times past `i64::MAX` only arise from a
/// lifetime meaning "forever", so saturating keeps that meaning.
fn db_time(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}
