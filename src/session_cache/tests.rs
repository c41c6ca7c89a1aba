use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use rusqlite::Connection;

use crate::test_support::TempDir;

use super::db::{SCHEMA_VERSION, sidecar};
use super::{CacheConfig, MAX_KEY_LEN, MAX_VALUE_LEN, REOPEN_INTERVAL_SECS, SessionCache};

/// A fresh directory for one test.
fn temp_dir() -> TempDir {
    TempDir::new("session-cache-test")
}

fn db(tmp: &TempDir) -> PathBuf {
    tmp.path().join("sessions.db")
}

/// Records log lines per thread, since tests run on parallel threads.
struct Capture;

thread_local! {
    static LINES: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        LINES.with(|lines| {
            lines
                .borrow_mut()
                .push((record.level(), record.args().to_string()))
        });
    }

    fn flush(&self) {}
}

/// Starts capturing this thread's log lines. False when some other logger
/// was installed first, in which case only the counters can be checked.
fn capture_logs() -> bool {
    static CAPTURE: Capture = Capture;
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| {
        let ok = log::set_logger(&CAPTURE).is_ok();
        if ok {
            log::set_max_level(log::LevelFilter::Trace);
        }
        ok
    });
    LINES.with(|lines| lines.borrow_mut().clear());
    installed
}

fn captured(level: log::Level) -> Vec<String> {
    LINES.with(|lines| {
        lines
            .borrow()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, m)| m.clone())
            .collect()
    })
}

fn all_captured() -> Vec<String> {
    LINES.with(|lines| lines.borrow().iter().map(|(_, m)| m.clone()).collect())
}

const CONFIG: CacheConfig = CacheConfig {
    lifetime_secs: 3600,
    max_rows: 1000,
};

const T0: u64 = 1_700_000_000;

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn key(n: u32) -> Vec<u8> {
    let mut k = b"session-id-".to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn garbage() -> Vec<u8> {
    b"this is not a database\n"
        .iter()
        .copied()
        .cycle()
        .take(8192)
        .collect()
}

fn assert_all_misses(cache: &mut SessionCache, now: u64) {
    assert!(!cache.store(b"k", b"v", now));
    assert_eq!(cache.retrieve(b"k", now), None);
    assert!(!cache.remove(b"k", now));
    assert_eq!(cache.purge(now), 0);
    assert_eq!(cache.len(), 0);
}

#[test]
fn store_and_retrieve_round_trip() {
    let tmp = temp_dir();
    let mut cache = SessionCache::open(&db(&tmp), CONFIG);
    assert!(cache.is_enabled());
    assert_eq!(cache.len(), 0);
    assert!(cache.store(b"id-1", b"secret one", T0));
    assert!(cache.store(b"id-2", b"secret two", T0));
    assert_eq!(
        cache.retrieve(b"id-1", T0 + 1).as_deref(),
        Some(&b"secret one"[..])
    );
    assert_eq!(
        cache.retrieve(b"id-2", T0 + 1).as_deref(),
        Some(&b"secret two"[..])
    );
    assert_eq!(cache.retrieve(b"id-3", T0 + 1), None);
    // Storing again replaces the value and restarts the lifetime.
    assert!(cache.store(b"id-1", b"secret three", T0 + 10));
    assert_eq!(
        cache.retrieve(b"id-1", T0 + 3605).as_deref(),
        Some(&b"secret three"[..])
    );
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.warnings, 0);
}

#[test]
fn remove_deletes_only_the_key() {
    let tmp = temp_dir();
    let mut cache = SessionCache::open(&db(&tmp), CONFIG);
    assert!(cache.store(b"a", b"1", T0));
    assert!(cache.store(b"b", b"2", T0));
    assert!(cache.remove(b"a", T0));
    assert!(!cache.remove(b"a", T0));
    assert!(!cache.remove(b"never stored", T0));
    assert_eq!(cache.retrieve(b"a", T0), None);
    assert_eq!(cache.retrieve(b"b", T0).as_deref(), Some(&b"2"[..]));
    assert_eq!(cache.len(), 1);
}

#[test]
fn expiry_boundary_is_exclusive() {
    let tmp = temp_dir();
    let config = CacheConfig {
        lifetime_secs: 100,
        max_rows: 10,
    };
    let mut cache = SessionCache::open(&db(&tmp), config);
    assert!(cache.store(b"k", b"v", T0));
    assert_eq!(cache.retrieve(b"k", T0).as_deref(), Some(&b"v"[..]));
    assert_eq!(cache.retrieve(b"k", T0 + 99).as_deref(), Some(&b"v"[..]));
    // expires == now counts as expired.
    assert_eq!(cache.retrieve(b"k", T0 + 100), None);
    assert_eq!(cache.retrieve(b"k", T0 + 101), None);
    // Expired but not yet purged: still a row, still removable.
    assert_eq!(cache.len(), 1);
    assert!(cache.remove(b"k", T0 + 101));
}

#[test]
fn zero_lifetime_caches_nothing() {
    let tmp = temp_dir();
    let config = CacheConfig {
        lifetime_secs: 0,
        max_rows: 10,
    };
    let mut cache = SessionCache::open(&db(&tmp), config);
    assert!(cache.store(b"k", b"v", T0));
    assert_eq!(cache.retrieve(b"k", T0), None);
}

#[test]
fn huge_lifetime_saturates_instead_of_wrapping() {
    let tmp = temp_dir();
    let config = CacheConfig {
        lifetime_secs: u64::MAX,
        max_rows: 10,
    };
    let mut cache = SessionCache::open(&db(&tmp), config);
    assert!(cache.store(b"k", b"v", T0));
    // Times beyond SQLite's integers are clamped, so "forever" ends there.
    let last_second = i64::MAX.unsigned_abs() - 1;
    assert_eq!(
        cache.retrieve(b"k", last_second).as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn rejects_bad_sizes() {
    let tmp = temp_dir();
    let mut cache = SessionCache::open(&db(&tmp), CONFIG);
    let long_key = vec![7u8; MAX_KEY_LEN + 1];
    let max_key = vec![7u8; MAX_KEY_LEN];
    let big_value = vec![1u8; MAX_VALUE_LEN + 1];
    let max_value = vec![1u8; MAX_VALUE_LEN];
    assert!(!cache.store(&long_key, b"v", T0));
    assert!(!cache.store(b"", b"v", T0));
    assert!(!cache.store(b"k", &big_value, T0));
    assert!(!cache.store(b"k", b"", T0));
    assert_eq!(cache.len(), 0);
    assert_eq!(cache.retrieve(&long_key, T0), None);
    assert!(!cache.remove(&long_key, T0));
    assert!(cache.store(&max_key, &max_value, T0));
    assert_eq!(cache.retrieve(&max_key, T0), Some(max_value));
    assert_eq!(cache.warnings, 0);
}

#[test]
fn eviction_keeps_the_newest_max_rows() {
    let tmp = temp_dir();
    let config = CacheConfig {
        lifetime_secs: 3600,
        max_rows: 5,
    };
    let mut cache = SessionCache::open(&db(&tmp), config);
    for n in 0..8 {
        assert!(cache.store(&key(n), b"v", T0 + u64::from(n)));
    }
    assert_eq!(cache.len(), 5);
    for n in 0..3 {
        assert_eq!(cache.retrieve(&key(n), T0 + 10), None, "key {n}");
    }
    for n in 3..8 {
        assert!(cache.retrieve(&key(n), T0 + 10).is_some(), "key {n}");
    }
}

/// Room for three rows.
const THREE_ROWS: CacheConfig = CacheConfig {
    lifetime_secs: 3600,
    max_rows: 3,
};

/// Stores keys 0..5 at one instant into a cache with room for three and
/// returns those still found.
fn five_stored_at_once(cache: &mut SessionCache) -> Vec<u32> {
    for n in 0..5 {
        assert!(cache.store(&key(n), b"v", T0));
    }
    // Rows still waiting are answered from memory; eviction happens when
    // they are committed.
    cache.flush(T0);
    (0..5)
        .filter(|&n| cache.retrieve(&key(n), T0).is_some())
        .collect()
}

#[test]
fn eviction_breaks_ties_by_insertion_order() {
    let tmp = temp_dir();
    let mut cache = SessionCache::open(&db(&tmp), THREE_ROWS);
    assert_eq!(five_stored_at_once(&mut cache), vec![2, 3, 4]);
}

#[test]
fn replacing_a_key_does_not_evict_others() {
    let tmp = temp_dir();
    let mut cache = SessionCache::open(&db(&tmp), THREE_ROWS);
    assert!(cache.store(&key(0), b"v", T0));
    assert!(cache.store(&key(1), b"v", T0));
    for t in 0..20 {
        assert!(cache.store(&key(2), b"again", T0 + t));
    }
    assert_eq!(cache.len(), 3);
    assert!(cache.retrieve(&key(0), T0).is_some());
    assert!(cache.retrieve(&key(1), T0).is_some());
}

#[test]
fn zero_max_rows_stores_nothing() {
    let tmp = temp_dir();
    let config = CacheConfig {
        lifetime_secs: 3600,
        max_rows: 0,
    };
    let mut cache = SessionCache::open(&db(&tmp), config);
    assert!(!cache.store(b"k", b"v", T0));
    assert_eq!(cache.len(), 0);
}

#[test]
fn purge_counts_expired_rows() {
    let tmp = temp_dir();
    let config = CacheConfig {
        lifetime_secs: 10,
        max_rows: 100,
    };
    let mut cache = SessionCache::open(&db(&tmp), config);
    for n in 0..3 {
        assert!(cache.store(&key(n), b"v", T0));
    }
    for n in 3..5 {
        assert!(cache.store(&key(n), b"v", T0 + 5));
    }
    assert_eq!(cache.purge(T0 + 9), 0);
    assert_eq!(cache.purge(T0 + 10), 3);
    assert_eq!(cache.purge(T0 + 10), 0);
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.purge(T0 + 15), 2);
    assert_eq!(cache.len(), 0);
}

#[test]
fn count_resyncs_after_outside_writes() {
    let tmp = temp_dir();
    let mut cache = SessionCache::open(&db(&tmp), THREE_ROWS);
    for n in 0..3 {
        assert!(cache.store(&key(n), b"v", T0));
    }
    // Someone else empties the table; purge notices, so the next stores do
    // not evict rows on the strength of a stale count.
    Connection::open(db(&tmp))
        .unwrap()
        .execute("DELETE FROM sessions", [])
        .unwrap();
    assert_eq!(cache.purge(T0), 0);
    for n in 10..13 {
        assert!(cache.store(&key(n), b"v", T0));
    }
    assert_eq!(cache.len(), 3);
}

#[test]
fn creates_files_with_mode_0600() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(cache.store(b"k", b"v", T0));
    assert_eq!(mode(&path), 0o600);
    for suffix in ["-wal", "-shm"] {
        let side = sidecar(&path, suffix);
        assert!(side.exists(), "{suffix} missing");
        assert_eq!(mode(&side), 0o600, "{suffix}");
    }
}

#[test]
fn narrows_the_mode_of_existing_files() {
    let tmp = temp_dir();
    let path = db(&tmp);
    drop(SessionCache::open(&path, CONFIG));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    // Leave WAL files behind with wide modes, as a crashed older run might.
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
    holder
        .execute("INSERT INTO sessions VALUES (x'01', x'02', 1)", [])
        .unwrap();
    for suffix in ["-wal", "-shm"] {
        fs::set_permissions(sidecar(&path, suffix), fs::Permissions::from_mode(0o666)).unwrap();
    }
    let cache = SessionCache::open(&path, CONFIG);
    assert!(cache.is_enabled());
    assert_eq!(mode(&path), 0o600);
    for suffix in ["-wal", "-shm"] {
        assert_eq!(mode(&sidecar(&path, suffix)), 0o600, "{suffix}");
    }
}

#[test]
fn reopening_keeps_rows() {
    let tmp = temp_dir();
    let path = db(&tmp);
    {
        let mut cache = SessionCache::open(&path, CONFIG);
        for n in 0..4 {
            assert!(cache.store(&key(n), b"kept", T0));
        }
    }
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(cache.is_enabled());
    assert_eq!(cache.len(), 4);
    assert_eq!(
        cache.retrieve(&key(2), T0 + 1).as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(cache.warnings, 0);
}

#[test]
fn unknown_schema_is_reset() {
    let tmp = temp_dir();
    let path = db(&tmp);
    {
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch(
                "CREATE TABLE sessions (id INTEGER, data TEXT);
                 INSERT INTO sessions VALUES (1, 'old');
                 CREATE TABLE unrelated (x);
                 PRAGMA user_version = 7;",
            )
            .unwrap();
    }
    let logging = capture_logs();
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("user_version 7"), "{warnings:?}");
    }
    assert_eq!(cache.len(), 0);
    assert!(cache.store(b"k", b"v", T0));
    assert_eq!(cache.retrieve(b"k", T0).as_deref(), Some(&b"v"[..]));
    drop(cache);
    let check = Connection::open(&path).unwrap();
    let version: i32 = check
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    // Only our table is recreated; whatever else is in the file stays.
    let unrelated: i64 = check
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'unrelated'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unrelated, 1);
}

#[test]
fn directory_in_place_of_the_file_disables() {
    let tmp = temp_dir();
    let path = db(&tmp);
    fs::create_dir(&path).unwrap();
    let logging = capture_logs();
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(!cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(&path.display().to_string()));
        assert!(warnings[0].contains("not a regular file"), "{warnings:?}");
    }
    assert_all_misses(&mut cache, T0);
    assert_eq!(cache.warnings, 1);
}

#[test]
fn missing_directory_disables() {
    let tmp = temp_dir();
    let path = tmp.path().join("no-such-dir").join("sessions.db");
    let logging = capture_logs();
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(!cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert!(warnings[0].contains("creating the file"), "{warnings:?}");
    }
    assert_all_misses(&mut cache, T0);
}

#[test]
fn corrupt_file_disables_and_is_left_alone() {
    let tmp = temp_dir();
    let path = db(&tmp);
    fs::write(&path, garbage()).unwrap();
    let logging = capture_logs();
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(!cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(&path.display().to_string()));
        assert!(warnings[0].contains("not a database"), "{warnings:?}");
    }
    assert_all_misses(&mut cache, T0);
    assert_eq!(fs::read(&path).unwrap(), garbage());
}

#[test]
fn database_locked_at_open_disables_quickly_then_recovers() {
    let tmp = temp_dir();
    let path = db(&tmp);
    {
        let mut cache = SessionCache::open(&path, CONFIG);
        assert!(cache.store(b"old", b"v", T0));
    }
    // Out of WAL mode, an exclusive lock keeps readers out as well, so even
    // opening has to wait for it.
    let locker = Connection::open(&path).unwrap();
    locker
        .execute_batch("PRAGMA journal_mode = DELETE; BEGIN EXCLUSIVE;")
        .unwrap();
    let logging = capture_logs();
    let started = Instant::now();
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(!cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("locked"), "{warnings:?}");
    }
    assert!(!cache.store(b"k", b"v", T0));
    assert_eq!(cache.retrieve(b"k", T0), None);
    assert!(
        started.elapsed().as_millis() < 500,
        "waited {:?} on a locked database",
        started.elapsed()
    );
    locker.execute_batch("COMMIT;").unwrap();
    // Not before a minute of the caller's clock has passed...
    assert!(!cache.store(b"k", b"v", T0 + REOPEN_INTERVAL_SECS - 1));
    assert!(!cache.is_enabled());
    // ...and then the now free database is picked up again.
    assert!(cache.store(b"k", b"v", T0 + REOPEN_INTERVAL_SECS));
    assert!(cache.is_enabled());
    assert_eq!(cache.reopen_attempts, 1);
    assert_eq!(cache.warnings, 1);
    assert_eq!(
        cache.retrieve(b"old", T0 + REOPEN_INTERVAL_SECS).as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn database_locked_while_running_is_a_miss_not_a_failure() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(cache.store(b"before", b"v", T0));
    let locker = Connection::open(&path).unwrap();
    locker
        .execute_batch("BEGIN EXCLUSIVE; INSERT INTO sessions VALUES (x'00', x'00', 0);")
        .unwrap();
    let logging = capture_logs();
    let started = Instant::now();
    for t in 0..30 {
        assert!(!cache.store(&key(t), b"v", T0 + u64::from(t)));
    }
    assert!(
        started.elapsed().as_millis() < 2000,
        "waited {:?} on a locked database",
        started.elapsed()
    );
    // WAL readers are not blocked by a writer.
    assert_eq!(
        cache.retrieve(b"before", T0 + 30).as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(cache.warnings, 1);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("treated as a miss"), "{warnings:?}");
    }
    assert!(cache.is_enabled());
    locker.execute_batch("ROLLBACK;").unwrap();
    assert!(cache.store(b"after", b"v", T0 + 31));
    assert_eq!(
        cache.retrieve(b"after", T0 + 31).as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(cache.reopen_attempts, 0);
    // Still locked a minute later would warn once more.
    locker.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    locker
        .execute("INSERT INTO sessions VALUES (x'01', x'00', 0)", [])
        .unwrap();
    assert!(!cache.store(b"late", b"v", T0 + 61));
    assert_eq!(cache.warnings, 2);
}

#[test]
fn removed_file_is_recreated() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(cache.store(b"k", b"v", T0));
    fs::remove_file(&path).unwrap();
    let logging = capture_logs();
    // Noticed on the next caller second.
    assert_eq!(cache.retrieve(b"k", T0 + 1), None);
    assert!(cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("removed"), "{warnings:?}");
    }
    assert!(path.exists());
    assert_eq!(mode(&path), 0o600);
    assert!(cache.store(b"k2", b"v2", T0 + 1));
    assert_eq!(cache.retrieve(b"k2", T0 + 2).as_deref(), Some(&b"v2"[..]));
    assert_eq!(cache.len(), 1);
}

#[test]
fn file_replaced_by_garbage_disables_then_recovers_when_fixed() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(cache.store(b"k", b"v", T0));
    fs::remove_file(&path).unwrap();
    fs::write(&path, garbage()).unwrap();
    let logging = capture_logs();
    assert_eq!(cache.retrieve(b"k", T0 + 1), None);
    assert!(!cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("replaced"), "{warnings:?}");
        assert!(warnings[0].contains("not a database"), "{warnings:?}");
    }
    // Hammering the disabled cache neither warns nor retries per call.
    for t in 2..REOPEN_INTERVAL_SECS + 1 {
        assert_eq!(cache.retrieve(b"k", T0 + t), None);
        assert!(!cache.store(b"k", b"v", T0 + t));
    }
    assert_eq!(cache.warnings, 1);
    assert_eq!(cache.reopen_attempts, 1);
    assert_eq!(fs::read(&path).unwrap(), garbage());
    // An operator removes the bad file; the next retry recreates it.
    fs::remove_file(&path).unwrap();
    assert!(cache.store(b"k", b"v", T0 + 1 + REOPEN_INTERVAL_SECS));
    assert!(cache.is_enabled());
    assert_eq!(cache.reopen_attempts, 2);
    assert_eq!(cache.retrieve(b"k", T0 + 100).as_deref(), Some(&b"v"[..]));
}

#[test]
fn corruption_found_by_an_operation_disables() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let config = CacheConfig {
        lifetime_secs: 3600,
        max_rows: 10_000,
    };
    {
        let mut cache = SessionCache::open(&path, config);
        for n in 0..500 {
            assert!(cache.store(&key(n), &[9u8; 4000], T0));
        }
    }
    let mut cache = SessionCache::open(&path, config);
    assert!(cache.is_enabled());
    // Same inode, trashed pages past the schema: only operations can tell.
    {
        use std::io::{Seek, SeekFrom, Write};
        let len = fs::metadata(&path).unwrap().len();
        let mut file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(8192)).unwrap();
        let trash: Vec<u8> = garbage()
            .into_iter()
            .cycle()
            .take(len as usize - 8192)
            .collect();
        file.write_all(&trash).unwrap();
    }
    let logging = capture_logs();
    for t in 1..=30 {
        assert_eq!(cache.retrieve(&key(t as u32), T0 + t), None);
        assert!(!cache.store(&key(1000 + t as u32), b"v", T0 + t));
    }
    assert!(!cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    assert_eq!(cache.reopen_attempts, 0);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("cache disabled"), "{warnings:?}");
    }
}

#[test]
fn table_dropped_under_us_is_recreated_on_retry() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let mut cache = SessionCache::open(&path, CONFIG);
    assert!(cache.store(b"k", b"v", T0));
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE sessions;")
        .unwrap();
    assert_eq!(cache.retrieve(b"k", T0), None);
    assert!(!cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    assert!(!cache.store(b"k", b"v", T0 + REOPEN_INTERVAL_SECS - 1));
    assert!(cache.store(b"k", b"v", T0 + REOPEN_INTERVAL_SECS));
    assert!(cache.is_enabled());
    assert_eq!(
        cache.retrieve(b"k", T0 + REOPEN_INTERVAL_SECS).as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn disabled_cache_warns_rarely_and_retries_once_a_minute() {
    let tmp = temp_dir();
    let path = db(&tmp);
    fs::write(&path, garbage()).unwrap();
    let mut cache = SessionCache::open(&path, CONFIG);
    assert_eq!(cache.warnings, 1);
    // Two hours of one call per second.
    for t in 0..=7200 {
        assert_eq!(cache.retrieve(b"k", T0 + t), None);
    }
    // The first call only anchors the clock, so attempts at +60, +120, ...
    assert_eq!(cache.reopen_attempts, 7200 / 60);
    // The open warning, then an hourly reminder.
    assert_eq!(cache.warnings, 3);
}

#[test]
fn clock_going_backwards_does_not_stall_or_burst() {
    let tmp = temp_dir();
    let path = db(&tmp);
    fs::write(&path, garbage()).unwrap();
    let mut cache = SessionCache::open(&path, CONFIG);
    assert_eq!(cache.retrieve(b"k", T0), None);
    assert_eq!(cache.retrieve(b"k", T0 + 60), None);
    assert_eq!(cache.reopen_attempts, 1);
    // The clock jumps back a day: no retry at once, but one a minute later.
    assert_eq!(cache.retrieve(b"k", T0 - 86_400), None);
    assert_eq!(cache.reopen_attempts, 1);
    fs::remove_file(&path).unwrap();
    assert!(!cache.store(b"k", b"v", T0 - 86_400 + 59));
    assert!(cache.store(b"k", b"v", T0 - 86_400 + 60));
    assert_eq!(cache.reopen_attempts, 2);
}

#[test]
fn logs_never_contain_keys_or_values() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let logging = capture_logs();
    let mut cache = SessionCache::open(&path, CONFIG);
    let secret_key = b"KEYKEYKEY-0123456789";
    let secret_value = b"MASTERSECRET-abcdef";
    assert!(cache.store(secret_key, secret_value, T0));
    assert!(!cache.store(secret_key, &vec![b'M'; MAX_VALUE_LEN + 1], T0));
    assert!(cache.retrieve(secret_key, T0).is_some());
    assert_eq!(cache.purge(T0 + 10_000), 1);
    fs::remove_file(&path).unwrap();
    assert_eq!(cache.retrieve(secret_key, T0 + 10_001), None);
    if logging {
        let lines = all_captured();
        assert!(!lines.is_empty());
        for line in lines {
            assert!(!line.contains("KEYKEY"), "{line}");
            assert!(!line.contains("MASTERSECRET"), "{line}");
            assert!(!line.contains("75, 69, 89"), "{line}"); // b"KEY" as a Debug list
        }
    }
}

// ---- deferred writes (group commit) ----------------------------------------------------

/// Rows in the file, as another connection sees them.
fn rows_on_disk(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM sessions", [], |row| row.get(0))
        .unwrap()
}

fn deferred(path: &Path, config: CacheConfig) -> SessionCache {
    let mut cache = SessionCache::open(path, config);
    cache.defer_writes();
    cache
}

#[test]
fn deferred_rows_are_found_before_their_commit_and_committed_before_other_lookups() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let mut cache = deferred(&path, CONFIG);
    assert!(cache.store(b"id-1", b"one", T0));
    assert!(cache.store(b"id-2", b"two", T0));
    assert_eq!(cache.pending(), 2);
    assert_eq!(rows_on_disk(&path), 0);
    // A waiting row is answered from memory, without a commit...
    assert_eq!(cache.retrieve(b"id-2", T0).as_deref(), Some(&b"two"[..]));
    assert_eq!(cache.pending(), 2);
    // ...but not once it has expired.
    let expired = T0 + CONFIG.lifetime_secs;
    assert_eq!(cache.retrieve(b"id-2", expired), None);
    // Any other lookup commits everything queued first.
    assert_eq!(cache.retrieve(b"id-0", T0), None);
    assert_eq!(cache.pending(), 0);
    assert_eq!(rows_on_disk(&path), 2);
    assert_eq!(cache.retrieve(b"id-2", T0).as_deref(), Some(&b"two"[..]));
    // A replacement queued after the first commit wins, as without deferral.
    assert!(cache.store(b"id-1", b"three", T0 + 1));
    assert_eq!(
        cache.retrieve(b"id-1", T0 + 1).as_deref(),
        Some(&b"three"[..])
    );
    assert_eq!(cache.len(), 2);
    // Removing a queued row removes it.
    assert!(cache.store(b"id-3", b"four", T0 + 2));
    assert!(cache.remove(b"id-3", T0 + 2));
    assert_eq!(cache.retrieve(b"id-3", T0 + 2), None);
    assert_eq!(cache.warnings, 0);
}

#[test]
fn deferred_rows_are_committed_when_many_wait_on_flush_and_on_drop() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let mut cache = deferred(&path, CONFIG);
    for n in 0..super::MAX_PENDING as u32 - 1 {
        assert!(cache.store(&key(n), b"v", T0));
    }
    assert_eq!(rows_on_disk(&path), 0);
    assert!(cache.store(&key(9999), b"v", T0));
    assert_eq!(cache.pending(), 0);
    assert_eq!(rows_on_disk(&path), super::MAX_PENDING as i64);
    assert!(cache.store(b"flushed", b"v", T0));
    cache.flush(T0);
    assert_eq!(rows_on_disk(&path), super::MAX_PENDING as i64 + 1);
    assert!(cache.store(b"dropped", b"v", T0));
    drop(cache);
    assert_eq!(rows_on_disk(&path), super::MAX_PENDING as i64 + 2);
}

#[test]
fn deferred_commit_evicts_like_single_stores() {
    let tmp = temp_dir();
    let mut cache = deferred(&db(&tmp), THREE_ROWS);
    assert_eq!(five_stored_at_once(&mut cache), vec![2, 3, 4]);
    assert_eq!(cache.len(), 3);
}

#[test]
fn deferred_commit_into_a_locked_database_is_a_miss_not_a_failure() {
    let tmp = temp_dir();
    let path = db(&tmp);
    let mut cache = deferred(&path, CONFIG);
    assert!(cache.store(b"before", b"v", T0));
    cache.flush(T0);
    let locker = Connection::open(&path).unwrap();
    locker
        .execute_batch("BEGIN EXCLUSIVE; INSERT INTO sessions VALUES (x'00', x'00', 0);")
        .unwrap();
    let logging = capture_logs();
    let started = Instant::now();
    assert!(cache.store(b"lost", b"v", T0 + 1));
    cache.flush(T0 + 1);
    assert!(started.elapsed().as_millis() < 2000);
    assert_eq!(
        cache.pending(),
        0,
        "rows that cannot be committed are dropped"
    );
    assert!(cache.is_enabled());
    assert_eq!(cache.warnings, 1);
    if logging {
        let warnings = captured(log::Level::Warn);
        assert!(warnings[0].contains("treated as a miss"), "{warnings:?}");
    }
    locker.execute_batch("ROLLBACK;").unwrap();
    assert_eq!(cache.retrieve(b"lost", T0 + 2), None);
    assert!(cache.retrieve(b"before", T0 + 2).is_some());
    assert!(cache.store(b"after", b"v", T0 + 3));
    assert_eq!(cache.retrieve(b"after", T0 + 3).as_deref(), Some(&b"v"[..]));
    assert_eq!(cache.len(), 2);
}
