//! The SQLite side of the cache: the schema and the statements (the file
//! and the connection are set up by `crate::sqlite_file`). Everything here reports errors;
//! deciding what an error means for the server is `mod.rs`'s job.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, TransactionBehavior, params};

#[cfg(test)]
pub(super) use crate::sqlite_file::sidecar;
use crate::sqlite_file::{self, io_step, sql_step};
pub(super) use crate::sqlite_file::{OpenError, remove_sidecars};

use super::MAX_VALUE_LEN;

/// Stored in `PRAGMA user_version`. A distinctive value rather than 1 so a
/// database some other program versioned is not mistaken for ours.
pub(super) const SCHEMA_VERSION: i32 = 0x4753_4301;

const SQL_INSERT: &str = "INSERT INTO sessions (key, value, expires) VALUES (?1, ?2, ?3) \
     ON CONFLICT (key) DO NOTHING";
const SQL_UPDATE: &str = "UPDATE sessions SET value = ?2, expires = ?3 WHERE key = ?1";
const SQL_RETRIEVE: &str = "SELECT value FROM sessions WHERE key = ?1 AND expires > ?2";
const SQL_REMOVE: &str = "DELETE FROM sessions WHERE key = ?1";
const SQL_PURGE: &str = "DELETE FROM sessions WHERE expires <= ?1";
const SQL_EVICT: &str = "DELETE FROM sessions WHERE rowid IN \
     (SELECT rowid FROM sessions ORDER BY expires, rowid LIMIT ?1)";
const SQL_COUNT: &str = "SELECT count(*) FROM sessions";

const ALL_STATEMENTS: [&str; 7] = [
    SQL_INSERT,
    SQL_UPDATE,
    SQL_RETRIEVE,
    SQL_REMOVE,
    SQL_PURGE,
    SQL_EVICT,
    SQL_COUNT,
];

/// Errors after which the same connection is expected to work again soon, so
/// it is kept; anything else means the file or connection is unusable.
pub(super) fn is_transient(err: &rusqlite::Error) -> bool {
    match err {
        rusqlite::Error::SqliteFailure(..) => matches!(
            err.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull)
        ),
        // Conversion and parameter errors concern one row or call, not the file.
        _ => true,
    }
}

/// Which inode the path names, to notice the file being deleted or replaced
/// under an open connection (which would otherwise keep using the old inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

pub(super) fn file_id(path: &Path) -> io::Result<FileId> {
    let meta = fs::metadata(path)?;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// What opening found in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Schema {
    Current,
    Created,
    /// An unknown schema was dropped and recreated.
    Reset {
        found_version: i32,
    },
}

#[derive(Debug)]
pub(super) struct Db {
    conn: Connection,
    pub(super) id: FileId,
    /// Row count as far as this connection knows: exact for its own writes,
    /// resynchronised on open and purge in case something else wrote.
    pub(super) rows: u64,
}

impl Db {
    pub(super) fn open(path: &Path) -> Result<(Db, Schema), OpenError> {
        let mut conn = sqlite_file::open(path, "session cache")?;
        let schema = ensure_schema(&mut conn).map_err(sql_step("checking the schema"))?;
        for sql in ALL_STATEMENTS {
            // Preparing now proves the table has the expected columns, so a
            // damaged schema disables the cache at open instead of per call.
            conn.prepare_cached(sql)
                .map_err(sql_step("preparing statements"))?;
        }
        let rows = count(&conn).map_err(sql_step("counting rows"))?;
        sqlite_file::restrict_sidecars(path)?;
        let id = file_id(path).map_err(io_step("reading the file's identity"))?;
        Ok((Db { conn, id, rows }, schema))
    }

    pub(super) fn store(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires: i64,
        max_rows: u64,
    ) -> rusqlite::Result<()> {
        // Insert-or-update in two steps rather than INSERT OR REPLACE so the
        // in-memory row count stays exact without counting the table.
        let inserted = self
            .conn
            .prepare_cached(SQL_INSERT)?
            .execute(params![key, value, expires])?;
        if inserted == 0 {
            self.conn
                .prepare_cached(SQL_UPDATE)?
                .execute(params![key, value, expires])?;
        } else {
            self.rows = self.rows.saturating_add(1);
        }
        if self.rows > max_rows {
            let excess = i64::try_from(self.rows - max_rows).unwrap_or(i64::MAX);
            let evicted = self.conn.prepare_cached(SQL_EVICT)?.execute([excess])?;
            self.rows = self.rows.saturating_sub(to_u64(evicted));
        }
        Ok(())
    }

    /// Stores every row, in order, in one transaction: all or none.
    pub(super) fn store_all(
        &mut self,
        rows: &[super::Pending],
        max_rows: u64,
    ) -> rusqlite::Result<()> {
        let before = self.rows;
        // Immediate: a database someone else is writing fails here, within
        // the busy timeout, rather than halfway.
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let stored = rows
            .iter()
            .try_for_each(|r| self.store(&r.key, &r.value, r.expires, max_rows))
            .and_then(|()| self.conn.execute_batch("COMMIT"));
        if stored.is_err() {
            // A failed COMMIT may have rolled back already.
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.rows = before;
        }
        stored
    }

    pub(super) fn retrieve(&self, key: &[u8], now: i64) -> rusqlite::Result<Option<Vec<u8>>> {
        let mut stmt = self.conn.prepare_cached(SQL_RETRIEVE)?;
        let mut rows = stmt.query(params![key, now])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        // Only what store() could have written counts; anything else was put
        // there by someone else and is not handed to GnuTLS.
        Ok(match row.get_ref(0)? {
            ValueRef::Blob(value) if !value.is_empty() && value.len() <= MAX_VALUE_LEN => {
                Some(value.to_vec())
            }
            _ => None,
        })
    }

    pub(super) fn remove(&mut self, key: &[u8]) -> rusqlite::Result<bool> {
        let removed = self.conn.prepare_cached(SQL_REMOVE)?.execute([key])?;
        self.rows = self.rows.saturating_sub(to_u64(removed));
        Ok(removed > 0)
    }

    pub(super) fn purge(&mut self, now: i64) -> rusqlite::Result<usize> {
        let purged = self.conn.prepare_cached(SQL_PURGE)?.execute([now])?;
        self.rows = self.rows.saturating_sub(to_u64(purged));
        Ok(purged)
    }

    pub(super) fn count(&mut self) -> rusqlite::Result<u64> {
        self.rows = count(&self.conn)?;
        Ok(self.rows)
    }
}

fn count(conn: &Connection) -> rusqlite::Result<u64> {
    let rows: i64 = conn
        .prepare_cached(SQL_COUNT)?
        .query_row([], |row| row.get(0))?;
    Ok(u64::try_from(rows).unwrap_or(0))
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn ensure_schema(conn: &mut Connection) -> rusqlite::Result<Schema> {
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let has_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sessions')",
        [],
        |row| row.get(0),
    )?;
    if version == SCHEMA_VERSION && has_table {
        return Ok(Schema::Current);
    }
    let empty: bool = conn.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM sqlite_master)",
        [],
        |row| row.get(0),
    )?;
    let schema = if version == 0 && empty {
        Schema::Created
    } else {
        Schema::Reset {
            found_version: version,
        }
    };
    // Immediate: take the write lock before reading anything, so a
    // concurrent writer makes this fail fast instead of deadlocking.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Only our own table is dropped: should the path point at some other
    // program's database by mistake, the rest of it survives.
    tx.execute_batch(&format!(
        "DROP TABLE IF EXISTS sessions;
         DROP INDEX IF EXISTS sessions_expires;
         CREATE TABLE sessions (
             key BLOB PRIMARY KEY,
             value BLOB NOT NULL,
             expires INTEGER NOT NULL
         );
         CREATE INDEX sessions_expires ON sessions (expires);
         PRAGMA user_version = {SCHEMA_VERSION};"
    ))?;
    tx.commit()?;
    Ok(schema)
}
