//! The operator's ticket key file (`--ticket-key-file`, `gsmtpd ticket-key
//! rotate FILE`), so that several hosts behind one name can resume each
//! other's tickets: nginx's `ssl_session_ticket_key` and HAProxy's
//! `tls-ticket-keys` convention.
//!
//! One master per line, `CREATED BASE64`: Unix seconds, one space, the
//! standard padded base64 of GnuTLS's 64-byte master; newest first. The
//! first line's master encrypts new tickets, the others only decrypt. Blank
//! lines and lines starting with `#` are ignored. Anything else rejects the
//! whole file: half a key file would silently strand tickets on some hosts.
//!
//! The file holds every key that can decrypt live tickets, so every buffer
//! that held its text or a decoded key is wiped once used, and errors name
//! the file and line but never quote a line (it may be a key).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::tls::ticket_keys::{MASTER_LEN, MasterKey, wipe};

/// The file is only ever a few lines; a bound keeps a wrong path (a log, a
/// disk image) from being read into memory.
const MAX_FILE_LEN: u64 = 1 << 20;

/// The only mode rotate writes, and the bits read() refuses: anyone but the
/// owner who can read the file can decrypt every live ticket.
const FILE_MODE: u32 = 0o600;
const FOREIGN_BITS: u32 = 0o077;

/// Length of the padded base64 of one master.
const ENCODED_LEN: usize = MASTER_LEN.div_ceil(3) * 4;

/// One master from the file.
#[derive(Debug)]
pub struct FileKey {
    /// Unix seconds when `rotate` made it; drives when it is dropped.
    pub created: u64,
    pub key: MasterKey,
}

/// Reads and validates FILE. Refuses a file that is not a regular file or
/// whose mode gives group or others access (the error names the mode and says
/// to chmod 600), since such a file has already leaked the keys it holds or
/// could be replaced by someone else. Returns the keys in file order: the
/// first one encrypts new tickets.
pub fn read(path: &Path) -> Result<Vec<FileKey>, String> {
    let Loaded { keys, mode, .. } =
        load(path)?.ok_or_else(|| format!("{}: no such file", path.display()))?;
    if mode & FOREIGN_BITS != 0 {
        return Err(format!(
            "{}: mode {mode:04o} gives group or others access to the ticket keys; run chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(keys)
}

/// What `rotate` did, for the command to print: fingerprints only.
#[derive(Debug)]
pub struct Rotated {
    /// Fingerprint of the new master, now on the first line.
    pub added: String,
    /// Masters of the old file still in the new one (the new one not counted).
    pub kept: usize,
    /// Masters of the old file left out because their tickets have expired.
    pub dropped: usize,
    /// The old file's mode when it gave group or others access.
    pub fixed_mode: Option<u32>,
}

impl fmt::Display for Rotated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "added ticket key {}; {} key(s) kept, {} dropped",
            self.added, self.kept, self.dropped
        )?;
        if let Some(mode) = self.fixed_mode {
            write!(f, "; mode was {mode:04o}, now {FILE_MODE:04o}")?;
        }
        Ok(())
    }
}

/// `gsmtpd ticket-key rotate FILE`: prepends a fresh random master created
/// at `now` (the caller has called `crate::tls::init()`), drops the masters
/// created at or before `now - (rotation + lifetime)` (they encrypted for
/// `rotation` seconds and their last tickets expired `lifetime` seconds
/// later), and replaces FILE atomically with mode 0600, so that a reader (a
/// server re-reading it, or a copy to another host) never sees half a file.
/// Creates FILE if it is missing. An invalid FILE is an error and is left
/// untouched: the operator must see what was wrong with it. A too-open mode
/// is not: the rewrite fixes it, and the report says so.
pub fn rotate(path: &Path, rotation: u64, lifetime: u64, now: u64) -> Result<Rotated, String> {
    // rename() would replace a link, not the file it points to: the link's
    // readers would keep the old keys without any error.
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.file_type().is_symlink()
    {
        return Err(format!(
            "{}: is a symbolic link; rotate the file it points to",
            path.display()
        ));
    }
    let (old, mode, owner) = match load(path)? {
        Some(l) => (l.keys, l.mode, Some(l.owner)),
        None => (Vec::new(), FILE_MODE, None),
    };
    let fresh = MasterKey::generate()
        .map_err(|e| format!("{}: generating a ticket key: {e}", path.display()))?;
    let added = fresh.fingerprint();

    // A master is dropped once it is older than rotation + lifetime (it
    // encrypted for one rotation, its last tickets then lived one
    // lifetime) and every ticket it issued has expired: it stopped
    // encrypting when the key above it was made (the one it is now, for
    // the first line), at least a lifetime ago. On schedule the two are
    // the same; a rotation that runs late drops no key whose tickets are
    // still out there.
    let before = old.len();
    let mut retired = now;
    let mut keys = vec![FileKey {
        created: now,
        key: fresh,
    }];
    for k in old {
        let too_old = k.created.saturating_add(rotation).saturating_add(lifetime) <= now;
        let expired = retired.saturating_add(lifetime) <= now;
        retired = k.created;
        if !(too_old && expired) {
            keys.push(k);
        }
    }
    let kept = keys.len() - 1;

    let mut text = serialize(&keys);
    let written = write_atomically(path, &text, owner);
    wipe(&mut text);
    written?;
    Ok(Rotated {
        added,
        kept,
        dropped: before - kept,
        fixed_mode: (mode & FOREIGN_BITS != 0).then_some(mode & 0o7777),
    })
}

/// What `load` found in an existing file.
struct Loaded {
    keys: Vec<FileKey>,
    /// Permission bits: the caller's to judge (read() refuses what
    /// rotate() repairs).
    mode: u32,
    /// (uid, gid).
    owner: (u32, u32),
}

/// The keys, permission bits and owner of FILE, or None when it does not
/// exist.
fn load(path: &Path) -> Result<Option<Loaded>, String> {
    let named = |what: &str, e: io::Error| format!("{}: {what}: {e}", path.display());
    // O_NONBLOCK: opening a FIFO for reading would wait for a writer before
    // we could see that it is not a regular file.
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(named("opening", e)),
    };
    // Judge the file we opened, not whatever the name points to by now.
    let meta = file.metadata().map_err(|e| named("reading metadata", e))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(format!(
            "{}: {} bytes is too large for a ticket key file",
            path.display(),
            meta.len()
        ));
    }
    let mut text = read_all(&mut file, meta.len()).map_err(|e| named("reading", e))?;
    let keys = parse(path, &text);
    wipe(&mut text);
    Ok(Some(Loaded {
        keys: keys?,
        mode: meta.mode() & 0o7777,
        owner: (meta.uid(), meta.gid()),
    }))
}

/// Reads the file into a buffer allocated once, so that no reallocation
/// leaves an unwiped copy of key text behind in freed memory.
fn read_all(file: &mut File, len: u64) -> io::Result<Vec<u8>> {
    // One spare byte tells a file that grew since fstat from one that did not.
    let mut buf = vec![0u8; len as usize + 1];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            wipe(&mut buf);
            return Err(io::Error::other("the file grew while being read"));
        }
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                wipe(&mut buf);
                return Err(e);
            }
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Parses the whole text; the first error rejects it all.
fn parse(path: &Path, text: &[u8]) -> Result<Vec<FileKey>, String> {
    let at = |line: usize, what: &str| format!("{}: line {line}: {what}", path.display());
    let mut keys: Vec<(FileKey, usize)> = Vec::new();
    let mut lines = 0;
    // A final newline ends the last line; it does not start another.
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let split = (!text.is_empty()).then(|| body.split(|&b| b == b'\n'));
    for (index, raw) in split.into_iter().flatten().enumerate() {
        let number = index + 1;
        lines = number;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(|b| matches!(b, b' ' | b'\t')) || line.starts_with(b"#") {
            continue;
        }
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let [created, encoded] = fields[..] else {
            return Err(at(
                number,
                &format!(
                    "expected `CREATED BASE64` (two fields, one space between), found {} field(s)",
                    fields.len()
                ),
            ));
        };
        let created = parse_seconds(created)
            .ok_or_else(|| at(number, "CREATED is not a Unix time in seconds"))?;
        let key = decode_master(encoded).map_err(|what| at(number, &what))?;
        if let Some((_, first)) = keys.iter().find(|(k, _)| k.key.expose() == key.expose()) {
            return Err(at(number, &format!("the same key as line {first}")));
        }
        keys.push((FileKey { created, key }, number));
    }
    if keys.is_empty() {
        return Err(format!(
            "{}: no ticket key in {lines} line(s); expected lines of `CREATED BASE64`",
            path.display()
        ));
    }
    Ok(keys.into_iter().map(|(k, _)| k).collect())
}

/// Digits only: `str::parse` would also take a sign.
fn parse_seconds(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Decodes into a buffer we own and wipe, whether or not it is a valid key.
fn decode_master(encoded: &[u8]) -> Result<MasterKey, String> {
    let mut bytes = vec![0u8; base64::decoded_len_estimate(encoded.len())];
    let result = match STANDARD.decode_slice(encoded, &mut bytes) {
        Err(_) => Err("BASE64 is not valid padded standard base64".to_string()),
        Ok(n) => MasterKey::from_slice(&bytes[..n])
            .ok_or_else(|| format!("the key is {n} bytes, not {MASTER_LEN}")),
    };
    wipe(&mut bytes);
    result
}

/// `CREATED BASE64\n` per key, into one buffer sized up front (so it never
/// reallocates and leaves key text behind) for the caller to wipe.
fn serialize(keys: &[FileKey]) -> Vec<u8> {
    const LINE_MAX: usize = 20 + 1 + ENCODED_LEN + 1;
    let mut out = Vec::with_capacity(keys.len() * LINE_MAX);
    for k in keys {
        out.extend_from_slice(k.created.to_string().as_bytes());
        out.push(b' ');
        let start = out.len();
        out.resize(start + ENCODED_LEN, 0);
        let n = STANDARD
            .encode_slice(k.key.expose(), &mut out[start..])
            .expect("the buffer fits one encoded master");
        debug_assert_eq!(n, ENCODED_LEN);
        out.push(b'\n');
    }
    out
}

/// Replaces `path` with `bytes` so that a reader, or a crash, sees the old
/// file or the whole new one: a fresh temporary file in the same directory
/// (O_EXCL, so never another writer's file or a planted link), written,
/// fsync'd, renamed over `path`, then the directory fsync'd so the rename
/// itself survives a crash.
/// `owner`: the (uid, gid) the replaced file had, kept so that a server
/// running as that user can still read it when root rotated it.
fn write_atomically(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> Result<(), String> {
    let named = |what: &str, e: io::Error| format!("{}: {what}: {e}", path.display());
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let (tmp, mut file) = create_temp(path).map_err(|e| named("creating a temporary file", e))?;
    let written = (|| {
        // The mode given at open passed through the umask; make it exact.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        if let Some((uid, gid)) = owner {
            // Only root may give a file away; anyone else writes it as the
            // owner it had anyway.
            match std::os::unix::fs::fchown(&file, Some(uid), Some(gid)) {
                Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
                _ => {}
            }
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(named(&format!("writing {}", tmp.display()), e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| named("replaced, but syncing its directory failed", e))
}

/// A new file next to `path`, named after it and this process.
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = path.file_name().unwrap_or_default().to_string_lossy();
    for attempt in 1.. {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_file_name(format!(".{base}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            // Left by an earlier process with our PID: try the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {}
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns by its 100th attempt")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    fn init() {
        crate::tls::init().unwrap();
    }

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    /// Writes `text` to `dir/name` with exactly `mode`.
    fn put(dir: &TempDir, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn dir_entries(dir: &TempDir) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn summary(keys: &[FileKey]) -> Vec<(u64, [u8; MASTER_LEN])> {
        keys.iter().map(|k| (k.created, *k.key.expose())).collect()
    }

    #[test]
    fn rotate_creates_a_missing_file_with_mode_0600_and_prepends_the_newest() {
        init();
        let dir = TempDir::new("tkf-roundtrip");
        let path = dir.path().join("ticket.keys");

        let first = rotate(&path, 100, 50, 1_000).unwrap();
        assert_eq!((first.kept, first.dropped, first.fixed_mode), (0, 0, None));
        assert_eq!(mode_of(&path), 0o600);
        let keys = read(&path).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].created, 1_000);
        assert_eq!(keys[0].key.fingerprint(), first.added);

        let second = rotate(&path, 100, 50, 1_100).unwrap();
        assert_eq!((second.kept, second.dropped), (1, 0));
        let keys = read(&path).unwrap();
        assert_eq!(summary(&keys).len(), 2);
        assert_eq!(keys[0].created, 1_100, "the newest key comes first");
        assert_eq!(keys[0].key.fingerprint(), second.added);
        assert_eq!(keys[1].created, 1_000);
        assert_eq!(keys[1].key.fingerprint(), first.added);
        assert_ne!(first.added, second.added);
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(dir_entries(&dir), ["ticket.keys"], "no temporary file left");
    }

    #[test]
    fn rotate_drops_keys_created_at_or_before_rotation_plus_lifetime_ago() {
        init();
        let dir = TempDir::new("tkf-drop");
        // rotation 100 + lifetime 50 at now 1100: the cutoff is 950.
        let text = format!(
            "1000 {}\n951 {}\n950 {}\n800 {}\n",
            b64(&[1; 64]),
            b64(&[2; 64]),
            b64(&[3; 64]),
            b64(&[4; 64])
        );
        let path = put(&dir, "keys", &text, 0o600);
        let report = rotate(&path, 100, 50, 1_100).unwrap();
        assert_eq!((report.kept, report.dropped), (2, 2));
        assert_eq!(
            report.to_string(),
            format!(
                "added ticket key {}; 2 key(s) kept, 2 dropped",
                report.added
            )
        );
        let keys = read(&path).unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].created, 1_100);
        assert_eq!(summary(&keys[1..]), [(1_000, [1; 64]), (951, [2; 64])]);

        // Earlier than rotation + lifetime after the epoch: nothing is that old.
        let path = put(&dir, "young", &format!("0 {}\n", b64(&[5; 64])), 0o600);
        let report = rotate(&path, 100, 50, 149).unwrap();
        assert_eq!((report.kept, report.dropped), (1, 0));
        // Old enough, but retired only at 149 (when the key above it was
        // made): its tickets live until 199.
        let report = rotate(&path, 100, 50, 150).unwrap();
        assert_eq!((report.kept, report.dropped), (2, 0));
        // The key made at 0 stopped encrypting at 149: at 199 its tickets
        // have expired.
        let report = rotate(&path, 100, 50, 199).unwrap();
        assert_eq!((report.kept, report.dropped), (2, 1));
        let report = rotate(&path, 100, 50, 200).unwrap();
        let keys = read(&path).unwrap();
        assert_eq!(
            keys.iter().map(|k| k.created).collect::<Vec<_>>(),
            [200, 199, 150, 149],
            "{report}"
        );
    }

    /// Root rotating the file of a server that runs as another user leaves
    /// it that user's, so the server can read it again.
    #[test]
    fn rotate_keeps_the_owner() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: only root can give a file away");
            return;
        }
        init();
        let dir = TempDir::new("tkf-owner");
        let path = put(&dir, "keys", &format!("0 {}\n", b64(&[8; 64])), 0o600);
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        rotate(&path, 100, 50, 10).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(meta.mode() & 0o7777, 0o600);
    }

    /// A rotation that runs late (a missed timer) keeps the key that was
    /// encrypting until now, however old: its tickets are still valid.
    #[test]
    fn a_late_rotation_keeps_the_key_that_encrypted_until_now() {
        init();
        let dir = TempDir::new("tkf-late");
        let path = put(&dir, "keys", &format!("0 {}\n", b64(&[6; 64])), 0o600);
        let report = rotate(&path, 100, 50, 1_000).unwrap();
        assert_eq!((report.kept, report.dropped), (1, 0));
        // Once a lifetime has passed since it stopped encrypting, it goes.
        let report = rotate(&path, 100, 50, 1_050).unwrap();
        assert_eq!((report.kept, report.dropped), (1, 1));
        let keys = read(&path).unwrap();
        assert_eq!(
            keys.iter().map(|k| k.created).collect::<Vec<_>>(),
            [1_050, 1_000]
        );
    }

    #[test]
    fn parse_errors_name_the_file_and_line_but_never_the_key() {
        init();
        let dir = TempDir::new("tkf-errors");
        let good = b64(&[9; 64]);
        let secret = b64(&[7; 64]);
        let mut corrupt = secret.clone();
        corrupt.replace_range(10..11, "*");
        let short = b64(&[7; 63]);
        let long = b64(&[7; 65]);
        let cases: Vec<(String, &str, &str, &str)> = vec![
            (
                format!("1 {good}\n2 {corrupt}\n"),
                &corrupt,
                "line 2",
                "base64",
            ),
            (
                format!("1 {good}\n# c\n2 {short}\n"),
                &short,
                "line 3",
                "63 bytes",
            ),
            (format!("2 {long}\n"), &long, "line 1", "65 bytes"),
            (format!("{secret}\n"), &secret, "line 1", "found 1 field"),
            (format!("{secret} 1000\n"), &secret, "line 1", "CREATED"),
            (format!("12a4 {secret}\n"), &secret, "line 1", "CREATED"),
            (format!("+5 {secret}\n"), &secret, "line 1", "CREATED"),
            (format!("-5 {secret}\n"), &secret, "line 1", "CREATED"),
            (
                format!("99999999999999999999 {secret}\n"),
                &secret,
                "line 1",
                "CREATED",
            ),
            (
                format!("1 {secret} x\n"),
                &secret,
                "line 1",
                "found 3 field",
            ),
            (format!("1 {secret} \n"), &secret, "line 1", "found 3 field"),
            (format!("1  {secret}\n"), &secret, "line 1", "found 3 field"),
            (format!("1\t{secret}\n"), &secret, "line 1", "found 1 field"),
            (format!(" 1 {secret}\n"), &secret, "line 1", "found 3 field"),
            (
                format!("3 {secret}\n2 {good}\n\n1 {secret}\n"),
                &secret,
                "line 4",
                "same key as line 1",
            ),
        ];
        for (i, (text, key, line, what)) in cases.iter().enumerate() {
            let path = put(&dir, &format!("case{i}"), text, 0o600);
            let err = read(&path).unwrap_err();
            let name = path.display().to_string();
            assert!(err.contains(&name), "case {i}: {err}");
            assert!(err.contains(&format!("{line}:")), "case {i}: {err}");
            assert!(err.contains(what), "case {i}: {err}");
            assert!(!err.contains(key), "case {i} leaks the key: {err}");
            assert!(!err.contains(&key[..16]), "case {i} leaks the key: {err}");
        }

        for (text, lines) in [("", "0 line(s)"), ("# a\n\n# b\n", "3 line(s)")] {
            let path = put(&dir, "nokey", text, 0o600);
            let err = read(&path).unwrap_err();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(
                err.contains("no ticket key") && err.contains(lines),
                "{err}"
            );
        }
    }

    #[test]
    fn comments_blank_lines_and_crlf_are_ignored() {
        init();
        let dir = TempDir::new("tkf-comments");
        let text = format!(
            "# rotated by cron\r\n\r\n2000 {}\r\n   \n\t\n#{}\n1000 {}",
            b64(&[1; 64]),
            b64(&[3; 64]),
            b64(&[2; 64])
        );
        let path = put(&dir, "keys", &text, 0o600);
        let keys = read(&path).unwrap();
        assert_eq!(summary(&keys), [(2_000, [1; 64]), (1_000, [2; 64])]);
    }

    #[test]
    fn a_file_others_can_read_is_refused_by_read_and_fixed_by_rotate() {
        init();
        let dir = TempDir::new("tkf-mode");
        let path = put(&dir, "keys", &format!("1000 {}\n", b64(&[1; 64])), 0o644);
        let err = read(&path).unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
        for mode in [0o640, 0o604, 0o601, 0o610] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert!(read(&path).is_err(), "{mode:o}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(
            read(&path).is_ok(),
            "owner-only modes other than 0600 are fine"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let report = rotate(&path, 100, 50, 1_050).unwrap();
        assert_eq!(report.fixed_mode, Some(0o644));
        assert_eq!((report.kept, report.dropped), (1, 0));
        assert!(
            report.to_string().ends_with("; mode was 0644, now 0600"),
            "{report}"
        );
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(read(&path).unwrap().len(), 2);
        assert_eq!(dir_entries(&dir), ["keys"]);
    }

    #[test]
    fn rotate_leaves_an_invalid_file_untouched() {
        init();
        let dir = TempDir::new("tkf-invalid");
        let text = format!("1000 {}\n1000 not-a-key\n", b64(&[1; 64]));
        let path = put(&dir, "keys", &text, 0o644);
        let err = rotate(&path, 100, 50, 1_050).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), text.as_bytes());
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(dir_entries(&dir), ["keys"], "no temporary file left");
    }

    #[test]
    fn the_written_file_is_only_created_base64_lines_of_the_keys() {
        init();
        let dir = TempDir::new("tkf-format");
        let path = dir.path().join("keys");
        for now in [1_000, 1_100, 1_200] {
            rotate(&path, 100, 1_000, now).unwrap();
        }
        let keys = read(&path).unwrap();
        let expected: String = keys
            .iter()
            .map(|k| format!("{} {}\n", k.created, b64(k.key.expose())))
            .collect();
        let written = fs::read_to_string(&path).unwrap();
        assert_eq!(written, expected);
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 3);
        for (line, (key, created)) in lines.iter().zip(keys.iter().zip(["1200", "1100", "1000"])) {
            let (c, encoded) = line.split_once(' ').unwrap();
            assert_eq!(c, created);
            assert_eq!(encoded.len(), ENCODED_LEN);
            assert_eq!(STANDARD.decode(encoded).unwrap(), key.key.expose());
        }
    }

    #[test]
    fn rotate_leaves_no_temporary_files() {
        init();
        let dir = TempDir::new("tkf-atomic");
        let path = dir.path().join("keys");
        for now in 0..5 {
            rotate(&path, 1, 1, now * 10).unwrap();
            assert_eq!(dir_entries(&dir), ["keys"]);
        }
        assert_eq!(
            read(&path).unwrap().len(),
            2,
            "older keys dropped but the one retired just now"
        );

        // A missing directory fails before anything is created.
        let err = rotate(&dir.path().join("no/such/keys"), 1, 1, 0).unwrap_err();
        assert!(err.contains("no/such/keys"), "{err}");
        assert_eq!(dir_entries(&dir), ["keys"]);
    }

    #[test]
    fn only_regular_files_are_read_and_links_are_not_rotated() {
        init();
        let dir = TempDir::new("tkf-kinds");
        let err = read(dir.path()).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(rotate(dir.path(), 1, 1, 0).is_err());

        // A FIFO must be refused, not waited on for a writer.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read(&fifo).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");

        let target = put(&dir, "target", &format!("1 {}\n", b64(&[1; 64])), 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read(&link).unwrap().len(), 1, "read follows a link");
        let err = rotate(&link, 1, 1, 0).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        let err = read(&dir.path().join("missing")).unwrap_err();
        assert!(
            err.contains("missing") && err.contains("no such file"),
            "{err}"
        );
    }
}
