//! The delivery process's SQLite cache (`--client-cache`) of outbound TLS
//! sessions, so that a later connection to the same next hop, in this run
//! or after a restart, resumes instead of paying a full handshake, and of
//! next hops' EHLO responses, for early pipelining toward them.
//!
//! - A row is found only under the [`SessionKey`] it was stored with:
//!   everything that must match for a resumption to be safe.
//! - TLS 1.3 tickets are used once (RFC 8446 C.4): taking one deletes it.
//!   A few per key are kept, so that parallel connections each have one.
//!   A TLS 1.2 session (ticket or session ID) may be offered again and
//!   again; a newer one replaces it.
//! - A row expires with its ticket's lifetime; expired rows are purged.
//! - Under `+ocsp` a resumed session has no staple of its own: the row
//!   keeps until when the staple of the full handshake that created it is
//!   valid (its nextUpdate), and is not offered past that.
//!
//! The cache only saves handshakes, so it never costs a delivery: an
//! unusable file is warned about once and the cache is off until the
//! process restarts; a file that is not a database of ours is moved aside
//! and replaced at open. Times are Unix seconds passed in by the caller.
//! Rows hold TLS master secrets: nothing here logs a value.

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::sqlite_file::{self, OpenError, sql_step};

/// Stored in `PRAGMA user_version`; the server's cache uses ...01.
const SCHEMA_VERSION: i32 = 0x4753_4302;
/// TLS 1.3 tickets kept per key: a few connections in parallel each find
/// one, and no peer can grow the table without bound.
pub const TICKETS_PER_KEY: i64 = 4;
/// RFC 8446 4.6.1: a ticket lifetime is at most seven days.
pub const MAX_LIFETIME: u64 = 7 * 24 * 3600;
/// A TLS 1.2 session without a lifetime hint (a session ID, or a ticket
/// with hint 0): GnuTLS's and Exim's servers keep theirs for hours; after
/// this we stop offering it.
pub const TLS12_DEFAULT_LIFETIME: u64 = 2 * 3600;
/// Largest EHLO response kept (the client's own limit on a reply is
/// larger, but no real server's EHLO comes near this).
const MAX_EHLO_LEN: usize = 8 * 1024;
/// Largest session data accepted: GnuTLS packs a session with the peer's
/// certificate chain, usually a few KiB.
const MAX_DATA_LEN: usize = 64 * 1024;

/// Everything that must be the same for a cached session to be offered.
/// A session created under weaker settings (no verification, another
/// trust store, another name) must never stand in for a stricter one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyParts<'a> {
    /// The next hop's host name (or address literal) as routed.
    pub host: &'a str,
    pub addr: SocketAddr,
    /// What SNI carries; None for an address literal.
    pub sni: Option<&'a str>,
    /// `smtps:` rather than STARTTLS.
    pub implicit_tls: bool,
    /// `--tls-policy`'s level and `+ocsp`, e.g. `verify+ocsp`.
    pub policy: &'a str,
    /// `--tls-priority`.
    pub priority: &'a str,
    /// The trust anchors: `system`, or the CA file and a digest of what
    /// it held when loaded.
    pub trust: &'a str,
}

/// The key of a cached session: the [`KeyParts`] in one readable string,
/// each field length-prefixed so that no two different parts make the
/// same key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey(String);

impl SessionKey {
    pub fn new(p: &KeyParts<'_>) -> SessionKey {
        let port = p.addr.port().to_string();
        let ip = p.addr.ip().to_string();
        let fields: [(&str, &str); 8] = [
            ("host", p.host),
            ("ip", &ip),
            ("port", &port),
            ("sni", p.sni.unwrap_or("-")),
            ("mode", if p.implicit_tls { "smtps" } else { "starttls" }),
            ("policy", p.policy),
            ("priority", p.priority),
            ("trust", p.trust),
        ];
        let mut key = String::new();
        for (name, value) in fields {
            let _ = write!(key, "{name}:{}:{value};", value.len());
        }
        SessionKey(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `trust` of [`KeyParts`]: the system store, or the CA file with the
/// SHA-256 of its contents (a replaced file changes every key).
pub fn trust_label(ca_file: Option<&Path>) -> String {
    let Some(path) = ca_file else {
        return "system".into();
    };
    let digest = std::fs::read(path)
        .ok()
        .and_then(|bytes| crate::tls::ticket_keys::sha256(&bytes));
    let mut label = format!("file:{}:", path.display());
    match digest {
        Some(d) => d.iter().for_each(|b| {
            let _ = write!(label, "{b:02x}");
        }),
        None => label.push_str("unreadable"),
    }
    label
}

/// A session found in the cache, for `gnutls_session_set_data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    pub data: Vec<u8>,
    /// Until when the OCSP staple verified on the full handshake that made
    /// the session holds; None when none was.
    pub ocsp_until: Option<i64>,
}

/// A session to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    pub data: Vec<u8>,
    pub expires: i64,
    pub ocsp_until: Option<i64>,
    /// A TLS 1.3 ticket: used once, kept beside the others of its key.
    pub once: bool,
}

pub struct ClientCache {
    path: Option<PathBuf>,
    conn: Option<Connection>,
}

impl ClientCache {
    /// `--client-cache none`.
    pub fn off() -> ClientCache {
        ClientCache {
            path: None,
            conn: None,
        }
    }

    /// Opens the cache and drops what expired while gsmtpd was not
    /// running. Never fails: a file that cannot be used is warned about
    /// and the cache stays off.
    pub fn open(path: &Path, now: i64) -> ClientCache {
        let conn = match open_db(path) {
            Ok(conn) => Some(conn),
            Err(OpenError::Sql(step, e)) => {
                // Not a database (or not ours and unreadable): it only
                // ever held sessions, so it is replaced rather than
                // leaving resumption off for good.
                let aside = sqlite_file::sidecar(path, ".broken");
                log::warn!(
                    "client cache {}: {step}: {e}; moved aside to {} and started afresh",
                    path.display(),
                    aside.display()
                );
                let reopened = std::fs::rename(path, &aside)
                    .map_err(|e| OpenError::Io("moving the file aside", e))
                    .and_then(|()| {
                        sqlite_file::remove_sidecars(path);
                        open_db(path)
                    });
                reopened.map_err(|e| warn_off(path, &e)).ok()
            }
            Err(e) => {
                warn_off(path, &e);
                None
            }
        };
        let mut cache = ClientCache {
            path: Some(path.to_path_buf()),
            conn,
        };
        cache.purge(now);
        cache
    }

    pub fn is_on(&self) -> bool {
        self.conn.is_some()
    }

    /// The newest unexpired session stored under `key`, deleted if it is
    /// a TLS 1.3 ticket. With `need_ocsp`, only one whose staple still
    /// holds at `now`.
    pub fn take(&mut self, key: &SessionKey, now: i64, need_ocsp: bool) -> Option<Cached> {
        let result = self.with_conn("reading a session", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row = tx
                .prepare_cached(
                    "SELECT id, data, ocsp_until, once FROM tls_sessions \
                     WHERE key = ?1 AND expires > ?2 AND (?3 = 0 OR ocsp_until > ?2) \
                     ORDER BY id DESC LIMIT 1",
                )?
                .query_row(params![key.as_str(), now, need_ocsp], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, Option<i64>>(2)?,
                        row.get::<_, bool>(3)?,
                    ))
                })
                .optional()?;
            let Some((id, data, ocsp_until, once)) = row else {
                return Ok(None);
            };
            if once {
                tx.prepare_cached("DELETE FROM tls_sessions WHERE id = ?1")?
                    .execute([id])?;
            }
            tx.commit()?;
            Ok((!data.is_empty() && data.len() <= MAX_DATA_LEN)
                .then_some(Cached { data, ocsp_until }))
        });
        result.flatten()
    }

    /// Stores a session under `key`. A TLS 1.2 one replaces every other
    /// of its key; a TLS 1.3 ticket joins the newest few.
    pub fn store(&mut self, key: &SessionKey, session: &NewSession) {
        if session.data.is_empty() || session.data.len() > MAX_DATA_LEN {
            return;
        }
        self.with_conn("storing a session", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !session.once {
                tx.prepare_cached("DELETE FROM tls_sessions WHERE key = ?1")?
                    .execute([key.as_str()])?;
            }
            tx.prepare_cached(
                "INSERT INTO tls_sessions (key, data, expires, ocsp_until, once) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                key.as_str(),
                session.data,
                session.expires,
                session.ocsp_until,
                session.once
            ])?;
            tx.prepare_cached(
                "DELETE FROM tls_sessions WHERE key = ?1 AND id NOT IN \
                 (SELECT id FROM tls_sessions WHERE key = ?1 ORDER BY id DESC LIMIT ?2)",
            )?
            .execute(params![key.as_str(), TICKETS_PER_KEY])?;
            tx.commit()
        });
    }

    /// Drops every session of `key`: one of them was offered and the
    /// server did not resume it, so the others (from the same server
    /// keys) would fail too.
    pub fn forget(&mut self, key: &SessionKey) {
        self.with_conn("dropping stale sessions", |conn| {
            conn.prepare_cached("DELETE FROM tls_sessions WHERE key = ?1")?
                .execute([key.as_str()])
                .map(drop)
        });
    }

    /// The EHLO response `addr` gave last (inside TLS or not), while it
    /// has not expired: what early pipelining toward it relies on.
    pub fn ehlo(&mut self, addr: SocketAddr, tls: bool, now: i64) -> Option<Vec<u8>> {
        let found = self.with_conn("reading an EHLO response", |conn| {
            conn.prepare_cached(
                "SELECT raw FROM ehlo_responses \
                 WHERE ip = ?1 AND port = ?2 AND tls = ?3 AND expires > ?4",
            )?
            .query_row(
                params![addr.ip().to_string(), addr.port(), tls, now],
                |row| row.get::<_, Vec<u8>>(0),
            )
            .optional()
        });
        found.flatten().filter(|raw| raw.len() <= MAX_EHLO_LEN)
    }

    /// Remembers an EHLO response of `addr` until `expires`.
    pub fn store_ehlo(&mut self, addr: SocketAddr, tls: bool, raw: &[u8], expires: i64) {
        if raw.len() > MAX_EHLO_LEN {
            return;
        }
        self.with_conn("storing an EHLO response", |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO ehlo_responses (ip, port, tls, raw, expires) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                addr.ip().to_string(),
                addr.port(),
                tls,
                raw,
                expires
            ])
            .map(drop)
        });
    }

    /// Forgets what `addr` said to EHLO, inside TLS and out: it surprised
    /// us, so nothing is sent to it before its banner until it has been
    /// asked again.
    pub fn forget_ehlo(&mut self, addr: SocketAddr) {
        self.with_conn("dropping EHLO responses", |conn| {
            conn.prepare_cached("DELETE FROM ehlo_responses WHERE ip = ?1 AND port = ?2")?
                .execute(params![addr.ip().to_string(), addr.port()])
                .map(drop)
        });
    }

    /// Deletes the rows expired at `now`.
    pub fn purge(&mut self, now: i64) {
        self.with_conn("purging expired rows", |conn| {
            conn.prepare_cached("DELETE FROM tls_sessions WHERE expires <= ?1")?
                .execute([now])?;
            conn.prepare_cached("DELETE FROM ehlo_responses WHERE expires <= ?1")?
                .execute([now])
                .map(drop)
        });
    }

    /// Runs `f` on the open database. An error turns the cache off with a
    /// warning, except a lock held by someone else (within the busy
    /// timeout), which only costs this call.
    fn with_conn<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Option<T> {
        let conn = self.conn.as_mut()?;
        match f(conn) {
            Ok(value) => Some(value),
            Err(e) if is_busy(&e) => {
                log::debug!("client cache: {what}: {e}");
                None
            }
            Err(e) => {
                let path = self.path.as_deref().unwrap_or(Path::new("?"));
                log::warn!(
                    "client cache {}: {what}: {e}; TLS sessions are no longer cached until restart",
                    path.display()
                );
                self.conn = None;
                None
            }
        }
    }

    /// Every row's key (tests and diagnostics).
    pub fn keys(&self) -> Vec<String> {
        let Some(conn) = &self.conn else {
            return Vec::new();
        };
        let rows = conn
            .prepare("SELECT key FROM tls_sessions ORDER BY id")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            });
        rows.unwrap_or_default()
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn warn_off(path: &Path, e: &OpenError) {
    log::warn!(
        "client cache {}: {e}; outbound TLS sessions are not cached",
        path.display()
    );
}

fn open_db(path: &Path) -> Result<Connection, OpenError> {
    let mut conn = sqlite_file::open(path, "client cache")?;
    ensure_schema(&mut conn).map_err(sql_step("checking the schema"))?;
    sqlite_file::restrict_sidecars(path)?;
    Ok(conn)
}

fn ensure_schema(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version == SCHEMA_VERSION {
        // Proves the table has the columns we use.
        conn.prepare("SELECT id, key, data, expires, ocsp_until, once FROM tls_sessions")?;
        conn.prepare("SELECT ip, port, tls, raw, expires FROM ehlo_responses")?;
        return Ok(());
    }
    if version != 0 {
        log::info!("client cache: schema version {version:#x} replaced");
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Only our own tables are dropped.
    tx.execute_batch(&format!(
        "DROP TABLE IF EXISTS tls_sessions;
         DROP TABLE IF EXISTS ehlo_responses;
         CREATE TABLE ehlo_responses (
             ip TEXT NOT NULL,
             port INTEGER NOT NULL,
             tls INTEGER NOT NULL,
             raw BLOB NOT NULL,
             expires INTEGER NOT NULL,
             PRIMARY KEY (ip, port, tls)
         );
         CREATE TABLE tls_sessions (
             id INTEGER PRIMARY KEY,
             key TEXT NOT NULL,
             data BLOB NOT NULL,
             expires INTEGER NOT NULL,
             ocsp_until INTEGER,
             once INTEGER NOT NULL
         );
         CREATE INDEX tls_sessions_key ON tls_sessions (key, id);
         CREATE INDEX tls_sessions_expires ON tls_sessions (expires);
         PRAGMA user_version = {SCHEMA_VERSION};"
    ))?;
    tx.commit()
}
