//! Opening an SQLite file that holds TLS secrets, one way for both caches
//! (the server's TLS 1.2 session-ID cache and the client's session and
//! EHLO cache): created with mode 0600 by us, refused when it is not a
//! regular file or can only be read, in WAL mode, without an fsync per
//! commit (a lost row costs a full handshake, nothing more) and with
//! deleted rows zeroed.

use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, MAIN_DB, OpenFlags};

/// Long enough to ride out a checkpoint by another connection, short enough
/// that a database held by someone else costs the event loop nothing
/// noticeable: a locked database is a miss, not a wait.
const BUSY_TIMEOUT: Duration = Duration::from_millis(5);

const FILE_MODE: u32 = 0o600;

/// Why the database could not be opened. Never carries cached data.
#[derive(Debug)]
pub enum OpenError {
    Io(&'static str, io::Error),
    Sql(&'static str, rusqlite::Error),
    NotRegularFile,
    ReadOnly,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io(step, err) => write!(f, "{step}: {err}"),
            OpenError::Sql(step, err) => write!(f, "{step}: {err}"),
            OpenError::NotRegularFile => f.write_str("not a regular file"),
            OpenError::ReadOnly => f.write_str("the database can only be opened read-only"),
        }
    }
}

pub fn io_step(step: &'static str) -> impl FnOnce(io::Error) -> OpenError {
    move |err| OpenError::Io(step, err)
}

pub fn sql_step(step: &'static str) -> impl FnOnce(rusqlite::Error) -> OpenError {
    move |err| OpenError::Sql(step, err)
}

/// Opens (creating if need be) the database at `path`; `what` names it in
/// debug lines.
pub fn open(path: &Path, what: &str) -> Result<Connection, OpenError> {
    prepare_file(path)?;
    // No SQLITE_OPEN_CREATE: the file exists with the right mode by now, and
    // no SQLITE_OPEN_URI so a path starting with "file:" stays a path.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(sql_step("opening"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql_step("setting the busy timeout"))?;
    // SQLite silently falls back to read-only when it cannot write the
    // file; every store would then fail, so refuse it up front.
    if conn
        .is_readonly(MAIN_DB)
        .map_err(sql_step("checking access"))?
    {
        return Err(OpenError::ReadOnly);
    }
    // This is the first statement that reads the file, so a corrupt file
    // or one locked by another process fails here.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sql_step("setting WAL mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still usable, merely with readers and writers excluding each other.
        log::debug!("{what} {}: journal mode is {mode}, not WAL", path.display());
    }
    // A lost entry after a power failure only costs a full handshake, so
    // no fsync per commit. Deleted rows held master secrets: zero them
    // rather than leave them in free pages.
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA secure_delete = ON;")
        .map_err(sql_step("setting pragmas"))?;
    Ok(conn)
}

/// SQLite derives the sidecars' mode from the main file, but a umask or a
/// file left by an older run can still make them wider. Called once the
/// first write made them exist.
pub fn restrict_sidecars(path: &Path) -> Result<(), OpenError> {
    for suffix in ["-wal", "-shm"] {
        match restrict_mode(&sidecar(path, suffix)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(OpenError::Io("restricting the mode of the WAL files", err));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Creates the file with mode 0600 ourselves: SQLite would create it with
/// 0644 minus the umask, and it holds TLS master secrets.
fn prepare_file(path: &Path) -> Result<(), OpenError> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(OpenError::Io("creating the file", err)),
    }
    // Only path-based calls from here on: closing any descriptor of a file
    // drops every POSIX lock this process holds on it, including SQLite's.
    let meta = fs::metadata(path).map_err(io_step("reading the file's metadata"))?;
    if !meta.is_file() {
        return Err(OpenError::NotRegularFile);
    }
    restrict_mode(path).map_err(io_step("restricting the file's mode"))
}

fn restrict_mode(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode != FILE_MODE {
        fs::set_permissions(path, Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Deletes the WAL and shared-memory files of a database that is closed.
pub fn remove_sidecars(path: &Path) {
    for suffix in ["-wal", "-shm"] {
        let side = sidecar(path, suffix);
        if let Err(err) = fs::remove_file(&side)
            && err.kind() != io::ErrorKind::NotFound
        {
            log::debug!("cannot remove {}: {err}", side.display());
        }
    }
}
