use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::test_support::TempDir;

use super::unique;
use super::{Delivery, STALE_TMP_AGE, Store, clean_stale_tmp};

/// A fresh directory for one test.
fn temp_dir() -> TempDir {
    TempDir::new("store-test")
}

fn mb(domain: &str, local: &str) -> (String, String) {
    (domain.to_string(), local.to_string())
}

/// File names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn store(tmp: &TempDir) -> (Store, PathBuf) {
    let root = tmp.path().join("Maildir");
    (Store::open(&root, "mx.example.org").unwrap(), root)
}

/// A store that writes messages under names in tmp/ (the fallback where
/// O_TMPFILE is not available) if `named`.
fn store_in_mode(tmp: &TempDir, named: bool) -> (Store, PathBuf) {
    let (mut store, root) = store(tmp);
    if named {
        store.force_named_tmp();
    }
    (store, root)
}

/// The contents of every file this process has open in some tmp/ under
/// `root` without a name there: an O_TMPFILE inode, or a tmp/ name already
/// removed. /proc/self/fd/N reads `.../tmp/#INODE (deleted)` for the first.
fn unnamed_tmp_files(root: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc/self/fd").unwrap() {
        let fd = entry.unwrap().path();
        // Other tests' descriptors may close meanwhile; ours stay open.
        let Ok(target) = fs::read_link(&fd) else {
            continue;
        };
        let Some(target) = target.to_str().and_then(|t| t.strip_suffix(" (deleted)")) else {
            continue;
        };
        let target = Path::new(target);
        if target.starts_with(root)
            && target.parent().and_then(Path::file_name) == Some("tmp".as_ref())
        {
            out.push(fs::read(&fd).unwrap());
        }
    }
    out
}

const HEADER: &[u8] = b"Return-Path: <a@b.example>\nReceived: from x by y; date\n";

/// Delivers `chunks` (wire format) to `mailboxes` and returns the paths.
fn deliver(store: &mut Store, mailboxes: &[(String, String)], chunks: &[&[u8]]) -> Vec<PathBuf> {
    let mut d = store.begin(store.next_id(), mailboxes, HEADER).unwrap();
    for chunk in chunks {
        d.write(chunk).unwrap();
    }
    d.commit().unwrap()
}

#[test]
fn stores_exact_bytes_with_crlf_split_across_writes() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let chunks: &[&[u8]] = &[
        b"Subject: hi\r",
        b"\n\r\nline one\r\n",
        b"bare\rcr\r",
        b"",
        b"\nlast\r\r",
        b"\n",
        b"ends in lone cr\r",
    ];
    let paths = deliver(&mut store, &[mb("example.com", "alice")], chunks);
    let expected: Vec<u8> = [
        HEADER,
        b"Subject: hi\n\nline one\nbare\rcr\nlast\r\nends in lone cr\r",
    ]
    .concat();
    assert_eq!(paths.len(), 1);
    assert_eq!(fs::read(&paths[0]).unwrap(), expected);
    assert_eq!(
        paths[0].parent().unwrap(),
        root.join("example.com/alice/new")
    );
    let name = paths[0].file_name().unwrap().to_str().unwrap();
    assert!(
        name.ends_with(&format!(".mx.example.org,S={}", expected.len())),
        "{name}"
    );
    assert!(names(&root.join("example.com/alice/tmp")).is_empty());
    assert!(names(&root.join("example.com/alice/cur")).is_empty());
}

#[test]
fn crlf_conversion_is_independent_of_chunking() {
    let tmp = temp_dir();
    let (mut store, _root) = store(&tmp);
    let body: &[u8] = b"a\r\nb\r\r\n\rc\n\r\r\r\nd\r";
    let expected: Vec<u8> = [HEADER, b"a\nb\r\n\rc\n\r\r\nd\r"].concat();
    let boxes = [mb("example.com", "split")];
    for cut1 in 0..=body.len() {
        for cut2 in cut1..=body.len() {
            let paths = deliver(
                &mut store,
                &boxes,
                &[&body[..cut1], &body[cut1..cut2], &body[cut2..]],
            );
            assert_eq!(fs::read(&paths[0]).unwrap(), expected, "cuts {cut1} {cut2}");
            fs::remove_file(&paths[0]).unwrap();
        }
    }
    let one_at_a_time: Vec<&[u8]> = body.chunks(1).collect();
    let paths = deliver(&mut store, &boxes, &one_at_a_time);
    assert_eq!(fs::read(&paths[0]).unwrap(), expected);
}

#[test]
fn large_message_round_trips() {
    let tmp = temp_dir();
    let (mut store, _root) = store(&tmp);
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    let wire: Vec<u8> = line.repeat(10_000);
    let mut d = store
        .begin(store.next_id(), &[mb("example.com", "big")], HEADER)
        .unwrap();
    // Odd-sized chunks so CRLFs fall across chunk and buffer boundaries.
    for chunk in wire.chunks(1021) {
        d.write(chunk).unwrap();
    }
    let expected: Vec<u8> = [HEADER, &wire.replace_crlf()].concat();
    assert_eq!(d.size(), expected.len() as u64);
    let paths = d.commit().unwrap();
    assert_eq!(fs::read(&paths[0]).unwrap(), expected);
}

trait ReplaceCrlf {
    fn replace_crlf(&self) -> Vec<u8>;
}

impl ReplaceCrlf for Vec<u8> {
    fn replace_crlf(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        let mut i = 0;
        while i < self.len() {
            if self[i] == b'\r' && self.get(i + 1) == Some(&b'\n') {
                i += 1;
                continue;
            }
            out.push(self[i]);
            i += 1;
        }
        out
    }
}

#[test]
fn header_only_message() {
    let tmp = temp_dir();
    let (mut store, _root) = store(&tmp);
    let paths = deliver(&mut store, &[mb("example.com", "empty")], &[]);
    assert_eq!(fs::read(&paths[0]).unwrap(), HEADER);
}

#[test]
fn one_message_to_three_mailboxes_is_hard_linked() {
    three_mailboxes_hard_linked(false);
}

#[test]
fn one_message_to_three_mailboxes_is_hard_linked_from_a_named_tmp_file() {
    three_mailboxes_hard_linked(true);
}

fn three_mailboxes_hard_linked(named: bool) {
    let tmp = temp_dir();
    let (mut store, root) = store_in_mode(&tmp, named);
    let boxes = [
        mb("example.com", "alice"),
        mb("example.com", "bob"),
        mb("example.net", "carol"),
    ];
    let paths = deliver(&mut store, &boxes, &[b"Subject: x\r\n\r\nbody\r\n"]);
    assert_eq!(paths.len(), 3);
    let expected: Vec<u8> = [HEADER, b"Subject: x\n\nbody\n"].concat();
    let first = fs::metadata(&paths[0]).unwrap();
    assert_eq!(first.nlink(), 3);
    for (path, (domain, local)) in paths.iter().zip(&boxes) {
        let mailbox = root.join(domain).join(local);
        assert_eq!(path.parent().unwrap(), mailbox.join("new"));
        assert_eq!(fs::read(path).unwrap(), expected);
        let meta = fs::metadata(path).unwrap();
        assert_eq!((meta.dev(), meta.ino()), (first.dev(), first.ino()));
        assert_eq!(names(&mailbox.join("new")).len(), 1);
        assert!(names(&mailbox.join("tmp")).is_empty());
        assert!(names(&mailbox.join("cur")).is_empty());
    }
    // Same name in every mailbox.
    let file_names: HashSet<_> = paths.iter().map(|p| p.file_name().unwrap()).collect();
    assert_eq!(file_names.len(), 1);
}

#[test]
fn mailbox_on_another_file_system_gets_a_copy() {
    mailbox_on_another_file_system(false);
}

#[test]
fn mailbox_on_another_file_system_gets_a_copy_from_a_named_tmp_file() {
    mailbox_on_another_file_system(true);
}

/// A mailbox linked to a directory on /dev/shm (a tmpfs, if it is not on
/// the file system of the temp dir; skipped otherwise) cannot get a hard
/// link, only a copy of its own.
fn mailbox_on_another_file_system(named: bool) {
    let shm = Path::new("/dev/shm");
    let tmp = temp_dir();
    let device = |path: &Path| fs::metadata(path).map(|m| m.dev());
    if !shm.is_dir() || device(shm).ok() == device(tmp.path()).ok() {
        eprintln!("skipped: /dev/shm is not another file system here");
        return;
    }
    let far = TempDir::new_in(shm, "store-test-far");
    let (mut store, root) = store_in_mode(&tmp, named);
    fs::create_dir_all(root.join("example.net")).unwrap();
    std::os::unix::fs::symlink(far.path(), root.join("example.net/far")).unwrap();
    let boxes = [mb("example.com", "near"), mb("example.net", "far")];
    let paths = deliver(&mut store, &boxes, &[b"Subject: far\r\n\r\nbody\r\n"]);
    let expected = [HEADER, b"Subject: far\n\nbody\n"].concat();
    assert_eq!(paths.len(), 2);
    for path in &paths {
        assert_eq!(fs::read(path).unwrap(), expected);
        assert_eq!(fs::metadata(path).unwrap().nlink(), 1);
    }
    assert_eq!(device(&paths[1]).unwrap(), device(far.path()).unwrap());
    assert_ne!(device(&paths[0]).unwrap(), device(&paths[1]).unwrap());
    assert_eq!(paths[0].file_name(), paths[1].file_name());
    assert!(names(&far.path().join("tmp")).is_empty());
    assert!(names(&root.join("example.com/near/tmp")).is_empty());
}

#[test]
fn duplicate_recipients_get_one_copy() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let boxes = [
        mb("example.com", "alice"),
        mb("example.com", "bob"),
        mb("example.com", "alice"),
        mb("example.com", "bob"),
    ];
    let paths = deliver(&mut store, &boxes, &[b"x\r\n"]);
    assert_eq!(paths.len(), 2);
    assert_eq!(names(&root.join("example.com/alice/new")).len(), 1);
    assert_eq!(names(&root.join("example.com/bob/new")).len(), 1);
    assert_eq!(fs::metadata(&paths[0]).unwrap().nlink(), 2);
}

#[test]
fn modes_of_directories_and_files() {
    let tmp = temp_dir();
    // A root two levels below an existing directory: both get created.
    let root = tmp.path().join("var/Maildir");
    let mut store = Store::open(&root, "mx").unwrap();
    assert_eq!(store.root(), root);
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&tmp.path().join("var")), 0o700);
    let paths = deliver(&mut store, &[mb("example.com", "alice")], &[b"x\r\n"]);
    assert_eq!(mode(&paths[0]), 0o600);
    for dir in [
        "example.com",
        "example.com/alice",
        "example.com/alice/tmp",
        "example.com/alice/new",
        "example.com/alice/cur",
    ] {
        assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
    }
    // Opening an existing root is fine; a root that is a file is not.
    Store::open(&root, "mx").unwrap();
    let file = tmp.path().join("plain-file");
    fs::write(&file, b"").unwrap();
    let err = Store::open(&file, "mx").err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
}

#[test]
fn utf8_local_part() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let paths = deliver(&mut store, &[mb("example.com", "jöhn.dœ+tag")], &[b"x\r\n"]);
    assert_eq!(
        paths[0].parent().unwrap(),
        root.join("example.com/jöhn.dœ+tag/new")
    );
}

#[test]
fn dropped_delivery_leaves_nothing() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let boxes = [mb("example.com", "alice"), mb("example.org", "bob")];
    let mut d = store.begin(store.next_id(), &boxes, HEADER).unwrap();
    d.write(b"Subject: aborted\r\n\r\n").unwrap();
    d.write(&vec![b'x'; 200_000]).unwrap();
    // Being written, but without a name anywhere.
    assert!(all_message_files(&root).is_empty());
    let open = unnamed_tmp_files(&root);
    assert_eq!(open.len(), 1);
    assert!(open[0].starts_with(HEADER) && open[0].ends_with(b"xxx"));
    drop(d);
    assert!(all_message_files(&root).is_empty());
    assert!(unnamed_tmp_files(&root).is_empty(), "still open after drop");
}

#[test]
fn abandoned_delivery_leaves_nothing_in_tmp() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let mut d = store
        .begin(store.next_id(), &[mb("example.com", "alice")], HEADER)
        .unwrap();
    d.write(&vec![b'x'; 200_000]).unwrap();
    // As in a crash no clean-up code runs (the descriptor leaks until the
    // test process exits, as a crashed server's would until it died).
    std::mem::forget(d);
    assert_eq!(unnamed_tmp_files(&root).len(), 1);
    assert!(all_message_files(&root).is_empty());
}

#[test]
fn named_tmp_fallback_delivers_and_cleans_tmp() {
    let tmp = temp_dir();
    let (mut store, root) = store_in_mode(&tmp, true);
    let boxes = [mb("example.com", "alice"), mb("example.org", "bob")];
    let alice_tmp = root.join("example.com/alice/tmp");
    let mut d = store.begin(store.next_id(), &boxes, HEADER).unwrap();
    d.write(b"Subject: named\r\n\r\nbody\r\n").unwrap();
    let tmp_names = names(&alice_tmp);
    assert_eq!(tmp_names.len(), 1);
    assert!(unnamed_tmp_files(&root).is_empty());
    let paths = d.commit().unwrap();
    assert_eq!(paths.len(), 2);
    let expected = [HEADER, b"Subject: named\n\nbody\n"].concat();
    for path in &paths {
        assert_eq!(fs::read(path).unwrap(), expected);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, format!("{},S={}", tmp_names[0], expected.len()));
    }
    assert!(names(&alice_tmp).is_empty());
    assert!(names(&root.join("example.org/bob/tmp")).is_empty());

    // Dropped, it removes its tmp name.
    let d = store.begin(store.next_id(), &boxes, HEADER).unwrap();
    assert_eq!(names(&alice_tmp).len(), 1);
    drop(d);
    assert!(names(&alice_tmp).is_empty());
    assert_eq!(all_message_files(&root).len(), 2, "only the delivered one");
}

/// All message files anywhere under `root`.
fn all_message_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for domain in fs::read_dir(root).unwrap() {
        for mailbox in fs::read_dir(domain.unwrap().path()).unwrap() {
            for sub in ["tmp", "new", "cur"] {
                let dir = mailbox.as_ref().unwrap().path().join(sub);
                if let Ok(entries) = fs::read_dir(&dir) {
                    out.extend(entries.map(|e| e.unwrap().path()));
                }
            }
        }
    }
    out
}

#[test]
fn commit_failure_leaves_nothing_and_recovers() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let boxes = [
        mb("example.com", "alice"),
        mb("example.com", "broken"),
        mb("example.net", "carol"),
    ];
    let mut d = store.begin(store.next_id(), &boxes, HEADER).unwrap();
    d.write(b"Subject: doomed\r\n\r\nbody\r\n").unwrap();
    // Break the middle mailbox after begin() has created (and cached) it,
    // so alice's link succeeds first and must be undone.
    let broken_new = root.join("example.com/broken/new");
    fs::remove_dir(&broken_new).unwrap();
    fs::write(&broken_new, b"not a directory").unwrap();
    assert!(d.commit().is_err());
    assert!(
        all_message_files(&root).is_empty(),
        "{:?}",
        all_message_files(&root)
    );
    assert_eq!(fs::read(&broken_new).unwrap(), b"not a directory");

    // Once repaired, the mailbox must be checked again, not trusted from
    // the cache: new/ is missing now and has to be recreated.
    fs::remove_file(&broken_new).unwrap();
    let paths = deliver(&mut store, &boxes, &[b"again\r\n"]);
    assert_eq!(paths.len(), 3);
    assert_eq!(mode(&broken_new), 0o700);
    for path in &paths {
        assert_eq!(fs::read(path).unwrap(), [HEADER, b"again\n"].concat());
    }
}

#[test]
fn begin_fails_when_a_mailbox_cannot_be_created() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    fs::create_dir_all(root.join("example.com/bob")).unwrap();
    fs::write(root.join("example.com/bob/new"), b"").unwrap();
    let boxes = [mb("example.com", "alice"), mb("example.com", "bob")];
    let err = store.begin(store.next_id(), &boxes, HEADER).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
    assert!(names(&root.join("example.com/alice/tmp")).is_empty());
    assert!(names(&root.join("example.com/alice/new")).is_empty());

    // A domain that is a file fails too.
    fs::write(root.join("example.org"), b"").unwrap();
    assert!(
        store
            .begin(store.next_id(), &[mb("example.org", "x")], HEADER)
            .is_err()
    );
}

#[test]
fn rejects_dangerous_names() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let bad = [
        mb("example.com", ""),
        mb("example.com", "."),
        mb("example.com", ".."),
        mb("example.com", ".hidden"),
        mb("example.com", "a/b"),
        mb("example.com", "a\0b"),
        mb("example.com", "a\nb"),
        mb("..", "x"),
        mb("", "x"),
        mb("a/b", "x"),
    ];
    for pair in bad {
        let err = store
            .begin(store.next_id(), std::slice::from_ref(&pair), HEADER)
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{pair:?}");
    }
    let err = store.begin(store.next_id(), &[], HEADER).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(names(&root).is_empty());
}

#[test]
fn names_are_unique_across_many_deliveries() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let boxes = [mb("example.com", "many")];
    let mut seen = HashSet::new();
    for i in 0..300 {
        let paths = deliver(&mut store, &boxes, &[format!("n {i}\r\n").as_bytes()]);
        assert!(seen.insert(paths[0].clone()));
    }
    assert_eq!(names(&root.join("example.com/many/new")).len(), 300);
    assert!(names(&root.join("example.com/many/tmp")).is_empty());

    // Two stores in one process share the counter, so interleaved
    // deliveries to the same mailbox within one microsecond cannot clash.
    let mut other = Store::open(&root, "mx.example.org").unwrap();
    for i in 0..50 {
        let a = deliver(&mut store, &boxes, &[format!("a {i}\r\n").as_bytes()]);
        let b = deliver(&mut other, &boxes, &[format!("b {i}\r\n").as_bytes()]);
        assert!(seen.insert(a[0].clone()));
        assert!(seen.insert(b[0].clone()));
    }
    assert_eq!(names(&root.join("example.com/many/new")).len(), 400);

    let mut ids = HashSet::new();
    for _ in 0..10_000 {
        assert!(ids.insert(store.next_id()));
    }
}

#[test]
fn hostname_is_escaped_in_file_names() {
    let tmp = temp_dir();
    let root = tmp.path().join("Maildir");
    let mut store = Store::open(&root, "host/x:y").unwrap();
    let paths = deliver(&mut store, &[mb("example.com", "a")], &[b"x\r\n"]);
    let name = paths[0].file_name().unwrap().to_str().unwrap();
    assert!(name.contains(".host\\057x\\072y,S="), "{name}");
}

#[test]
fn maildir_name_and_log_id_format() {
    let now = Duration::new(1_700_000_000, 123_456_789);
    assert_eq!(
        unique::maildir_name(now, 4242, 7, "mx.example"),
        "1700000000.M123456P4242Q7.mx.example"
    );
    assert_eq!(unique::base62(0, 2), "00");
    assert_eq!(unique::base62(61, 1), "Z");
    assert_eq!(unique::base62(62, 1), "10");
    assert_eq!(unique::base62(62 * 62, 2), "100");
    let id = unique::log_id(now, 4242, 7);
    let parts: Vec<&str> = id.split('-').collect();
    assert_eq!(parts.len(), 3, "{id}");
    assert_eq!(parts[0].len(), 6);
    assert_eq!(parts[1], "00016q");
    assert_eq!(parts[2], "07");
    assert!(id.chars().all(|c| c == '-' || c.is_ascii_alphanumeric()));
}

#[test]
fn each_message_is_counted_once_for_its_id_and_its_file_name() {
    let tmp = temp_dir();
    let (mut store, _root) = store(&tmp);
    let counter = |path: &Path| -> u64 {
        let name = path.file_name().unwrap().to_str().unwrap();
        let q = name.split('Q').nth(1).unwrap();
        q.split('.').next().unwrap().parse().unwrap()
    };
    for _ in 0..3 {
        let id = store.next_id();
        let mut d = store
            .begin(id, &[mb("example.com", "ids")], HEADER)
            .unwrap();
        d.write(b"x\r\n").unwrap();
        let n = counter(&d.commit().unwrap()[0]);
        let log_id = id.to_string();
        // Counted once: the file carries the id's own count (other test
        // threads share the counter, so consecutive ids are checked on the
        // wire, in tests/scanners.rs).
        assert_eq!(
            log_id.rsplit('-').next().unwrap(),
            unique::base62(n, 2),
            "{log_id} names the file's Q{n}"
        );
    }
}

#[test]
fn cleaner_removes_only_old_tmp_files() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    deliver(&mut store, &[mb("example.com", "alice")], &[b"x\r\n"]);
    deliver(&mut store, &[mb("example.net", "bob")], &[b"x\r\n"]);
    let old = SystemTime::now() - Duration::from_secs(40 * 60 * 60);
    let make = |path: PathBuf, mtime: Option<SystemTime>| {
        let f = File::create(&path).unwrap();
        if let Some(t) = mtime {
            f.set_modified(t).unwrap();
        }
        path
    };
    let stale1 = make(root.join("example.com/alice/tmp/stale1"), Some(old));
    let stale2 = make(root.join("example.net/bob/tmp/stale2"), Some(old));
    let fresh = make(root.join("example.com/alice/tmp/fresh"), None);
    // Old files outside tmp/ are messages, not leftovers.
    let old_new = make(root.join("example.com/alice/new/oldmsg"), Some(old));
    let old_cur = make(root.join("example.com/alice/cur/oldmsg:2,S"), Some(old));
    // Directories in tmp/ are not ours to remove.
    fs::create_dir(root.join("example.com/alice/tmp/somedir")).unwrap();

    assert_eq!(clean_stale_tmp(&root, STALE_TMP_AGE).unwrap(), 2);
    assert!(!stale1.exists());
    assert!(!stale2.exists());
    assert!(fresh.exists());
    assert!(old_new.exists());
    assert!(old_cur.exists());
    assert!(root.join("example.com/alice/tmp/somedir").is_dir());
    assert_eq!(clean_stale_tmp(&root, STALE_TMP_AGE).unwrap(), 0);

    // A stray file at domain level and a missing root are not errors.
    fs::write(root.join("README"), b"").unwrap();
    assert_eq!(clean_stale_tmp(&root, STALE_TMP_AGE).unwrap(), 0);
    assert_eq!(
        clean_stale_tmp(&tmp.path().join("missing"), STALE_TMP_AGE).unwrap(),
        0
    );
}

// ------------------------------------------------------------ group commit

/// What the message files looked like at one sync.
struct Snapshot {
    /// Names in some tmp/.
    tmp_names: Vec<PathBuf>,
    /// The contents of every message file being written: those open
    /// without a name in tmp/ (O_TMPFILE, or a tmp/ name already removed)
    /// and those under a tmp/ name.
    written: Vec<Vec<u8>>,
    /// Names in some new/.
    new: Vec<PathBuf>,
}

/// What the file system looked like at each sync, and which sync fails.
struct Recorder {
    root: PathBuf,
    seen: Vec<Snapshot>,
    fail_at: Option<usize>,
}

impl super::commit::Durability for Recorder {
    fn sync_fs(&mut self, _file: &File) -> io::Result<()> {
        let files = all_message_files(&self.root);
        let in_dir = |sub: &str| {
            files
                .iter()
                .filter(|p| p.parent().and_then(Path::file_name) == Some(sub.as_ref()))
                .cloned()
                .collect::<Vec<_>>()
        };
        let tmp_names = in_dir("tmp");
        let mut written = unnamed_tmp_files(&self.root);
        written.extend(tmp_names.iter().map(|p| fs::read(p).unwrap()));
        self.seen.push(Snapshot {
            tmp_names,
            written,
            new: in_dir("new"),
        });
        if self.fail_at == Some(self.seen.len() - 1) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}

/// Three messages to three mailboxes, written but not committed.
/// Three messages of one delivery each.
fn three_deliveries(store: &mut Store) -> Vec<Vec<super::Delivery>> {
    ["alice", "bob", "carol"]
        .iter()
        .map(|who| {
            let mut d = store
                .begin(store.next_id(), &[mb("example.com", who)], HEADER)
                .unwrap();
            // Still in the BufWriter: the group commit must write it out.
            d.write(format!("Subject: for {who}\r\n\r\nbody\r").as_bytes())
                .unwrap();
            vec![d]
        })
        .collect()
}

fn group_commit(fail_at: Option<usize>, named: bool) -> (Recorder, Vec<io::Result<Vec<PathBuf>>>) {
    let tmp = temp_dir();
    let (mut store, root) = store_in_mode(&tmp, named);
    let batch = three_deliveries(&mut store);
    let mut recorder = Recorder {
        root,
        seen: Vec::new(),
        fail_at,
    };
    let results = super::commit::commit_with(batch, &mut recorder);
    // The recorder saw the tree; it goes with the TempDir, so check now.
    let left = all_message_files(&recorder.root);
    if fail_at.is_some() {
        assert!(left.is_empty(), "a failed group left {left:?}");
    }
    assert!(
        unnamed_tmp_files(&recorder.root).is_empty(),
        "a file of the group is still open"
    );
    (recorder, results)
}

#[test]
fn group_commit_syncs_data_before_names_and_names_before_returning() {
    check_group_commit(false);
}

#[test]
fn group_commit_with_named_tmp_files() {
    check_group_commit(true);
}

fn check_group_commit(named: bool) {
    let (recorder, results) = group_commit(None, named);
    // One file system: one sync for the data, one for the names.
    assert_eq!(recorder.seen.len(), 2);
    let at_data_sync = &recorder.seen[0];
    assert!(
        at_data_sync.new.is_empty(),
        "a name in new/ before its data was synced: {:?}",
        at_data_sync.new
    );
    let tmp_names = if named { 3 } else { 0 };
    assert_eq!(at_data_sync.tmp_names.len(), tmp_names);
    assert_eq!(at_data_sync.written.len(), 3);
    for content in &at_data_sync.written {
        assert!(
            content.starts_with(HEADER) && content.ends_with(b"\n\nbody\r"),
            "data not fully written before the data sync: {content:?}"
        );
    }
    let at_name_sync = &recorder.seen[1];
    assert!(at_name_sync.tmp_names.is_empty());
    assert_eq!(at_name_sync.new.len(), 3);
    let paths: Vec<PathBuf> = results.into_iter().flat_map(Result::unwrap).collect();
    let mut expected = at_name_sync.new.clone();
    expected.sort();
    let mut got = paths;
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn failed_data_sync_fails_the_group_and_leaves_nothing() {
    let (recorder, results) = group_commit(Some(0), false);
    assert_eq!(
        recorder.seen.len(),
        1,
        "names were created after a failed sync"
    );
    assert!(results.iter().all(Result::is_err));
}

#[test]
fn failed_name_sync_rolls_the_group_back() {
    let (recorder, results) = group_commit(Some(1), false);
    assert_eq!(recorder.seen.len(), 2);
    assert!(results.iter().all(Result::is_err));
}

#[test]
fn one_failed_message_does_not_fail_its_group() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let mut batch = three_deliveries(&mut store);
    // bob's new/ becomes a file, so linking his message fails.
    let broken = root.join("example.com/bob/new");
    fs::remove_dir(&broken).unwrap();
    fs::write(&broken, b"x").unwrap();
    batch.rotate_left(1);
    let results = super::commit_all(batch);
    assert!(results[0].is_err(), "bob's message was reported stored");
    assert!(results[1].is_ok() && results[2].is_ok());
    assert_eq!(names(&root.join("example.com/alice/new")).len(), 1);
    assert_eq!(names(&root.join("example.com/carol/new")).len(), 1);
    assert!(names(&root.join("example.com/bob/tmp")).is_empty());
}

// ---- the outbound queue ---------------------------------------------------------------

/// A store with a queue beside its Maildir; returns the queue root too.
fn store_with_queue(tmp: &TempDir, named: bool) -> (Store, PathBuf, PathBuf) {
    let (store, root) = store_in_mode(tmp, named);
    let queue = tmp.path().join("queue");
    crate::queue::QueueDir::new(tmp.path()).create().unwrap();
    (store.with_queue(&queue), root, queue)
}

#[test]
fn a_queue_file_keeps_the_wire_form_under_the_message_id() {
    for named in [false, true] {
        let tmp = temp_dir();
        let (mut store, _root, queue) = store_with_queue(&tmp, named);
        let id = store.next_id();
        let mut d = store
            .begin_queued(id, b"envelope\n\nReceived: x\r\n")
            .unwrap();
        d.write(b"Subject: s\r\n\r\nline\r").unwrap();
        d.write(b"\nbare\rcr\r\n").unwrap();
        let paths = d.commit().unwrap();
        assert_eq!(paths, vec![queue.join("new").join(id.to_string())]);
        assert_eq!(
            fs::read(&paths[0]).unwrap(),
            b"envelope\n\nReceived: x\r\nSubject: s\r\n\r\nline\r\nbare\rcr\r\n"
        );
        assert!(names(&queue.join("tmp")).is_empty(), "named={named}");
    }
}

/// A message for our users and for others is durable in both places or in
/// neither: the client's 4xx and retry must not deliver it twice.
#[test]
fn a_message_lands_in_the_maildir_and_the_queue_together_or_not_at_all() {
    let tmp = temp_dir();
    let (mut store, root, queue) = store_with_queue(&tmp, false);
    let unit = |store: &mut Store| {
        let id = store.next_id();
        let mut local = store
            .begin(id, &[mb("example.com", "both")], HEADER)
            .unwrap();
        let mut queued = store.begin_queued(id, b"envelope\n\n").unwrap();
        for d in [&mut local, &mut queued] {
            d.write(b"Subject: s\r\n\r\nbody\r\n").unwrap();
        }
        vec![local, queued]
    };
    let ok = super::commit_all(vec![unit(&mut store)]);
    assert_eq!(ok[0].as_ref().unwrap().len(), 2);
    assert_eq!(names(&root.join("example.com/both/new")).len(), 1);
    assert_eq!(names(&queue.join("new")).len(), 1);

    // The queue's new/ breaks: the Maildir copy is undone too.
    fs::rename(queue.join("new"), queue.join("new.away")).unwrap();
    fs::write(queue.join("new"), b"x").unwrap();
    let failed = super::commit_all(vec![unit(&mut store)]);
    assert!(failed[0].is_err());
    assert_eq!(
        names(&root.join("example.com/both/new")).len(),
        1,
        "no second copy"
    );
}

// ---------------------------------------------------------------- write-ahead log

#[test]
fn log_commit_links_the_group_and_logs_each_file_with_its_bytes() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let (mut log, _) = crate::wal::Log::open(&tmp.path().join("wal"), 64 * 1024).unwrap();
    let batch = three_deliveries(&mut store);
    let results = super::commit_logged(batch, &mut log, None);
    let mut paths = Vec::new();
    for result in results {
        let p = result.unwrap();
        assert_eq!(p.len(), 1);
        paths.extend(p);
    }
    drop(log);
    let (_, records) = crate::wal::Log::open(&tmp.path().join("wal"), 64 * 1024).unwrap();
    let restore = crate::wal::to_restore(&records).unwrap();
    assert_eq!(restore.len(), 3, "a record per message");
    for ((_, message), path) in restore.iter().zip(&paths) {
        assert_eq!(message.paths, std::slice::from_ref(path));
        assert_eq!(message.content, fs::read(path).unwrap());
        assert!(path.starts_with(&root) && path.parent().unwrap().ends_with("new"));
    }
    assert!(unnamed_tmp_files(&root).is_empty());
}

/// A queue file under way, its envelope block written.
fn queued_message(store: &mut Store) -> Delivery {
    store
        .begin_queued(store.next_id(), b"Header: x\r\n")
        .unwrap()
}

#[test]
fn queue_files_are_logged_and_held_out_of_new_until_a_checkpoint() {
    let tmp = temp_dir();
    let root = tmp.path().join("Maildir");
    let queue = tmp.path().join("queue");
    for sub in ["tmp", "new", "held-0"] {
        fs::create_dir_all(queue.join(sub)).unwrap();
    }
    let mut store = Store::open(&root, "mx.example.org")
        .unwrap()
        .with_queue(&queue);
    let (mut log, _) = crate::wal::Log::open(&tmp.path().join("wal"), 64 * 1024).unwrap();
    let mut queued = queued_message(&mut store);
    queued.write(b"Subject: away\r\n\r\nx\r\n").unwrap();
    let mut local = store
        .begin(store.next_id(), &[mb("example.com", "dave")], HEADER)
        .unwrap();
    local.write(b"Subject: here\r\n\r\nx\r\n").unwrap();
    let results = super::commit_logged(vec![vec![queued], vec![local]], &mut log, Some("held-0"));
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let held = &results[0].as_ref().unwrap()[0];
    assert_eq!(held.parent().unwrap(), queue.join("held-0"));
    assert!(names(&queue.join("new")).is_empty(), "nothing in new/ yet");
    drop(log);
    let (_, records) = crate::wal::Log::open(&tmp.path().join("wal"), 64 * 1024).unwrap();
    let restore = crate::wal::to_restore(&records).unwrap();
    assert_eq!(restore.len(), 2, "both are logged");
    assert_eq!(&restore[0].1.paths[0], held);
    assert_eq!(restore[0].1.content, fs::read(held).unwrap());
    assert!(
        restore[0]
            .1
            .content
            .starts_with(b"Header: x\r\nSubject: away\r\n")
    );
    assert!(restore[1].1.paths[0].starts_with(&root));
}

#[test]
fn without_a_held_directory_queue_files_go_straight_into_new() {
    let tmp = temp_dir();
    let root = tmp.path().join("Maildir");
    let queue = tmp.path().join("queue");
    for sub in ["tmp", "new"] {
        fs::create_dir_all(queue.join(sub)).unwrap();
    }
    let mut store = Store::open(&root, "mx.example.org")
        .unwrap()
        .with_queue(&queue);
    let (mut log, _) = crate::wal::Log::open(&tmp.path().join("wal"), 64 * 1024).unwrap();
    let mut bounce = queued_message(&mut store);
    bounce.write(b"Subject: bounce\r\n\r\nx\r\n").unwrap();
    let results = super::commit_logged(vec![vec![bounce]], &mut log, None);
    let path = &results[0].as_ref().unwrap()[0];
    assert_eq!(path.parent().unwrap(), queue.join("new"));
}

#[test]
fn the_log_holds_each_file_byte_for_byte_whether_it_left_the_buffer_or_not() {
    let tmp = temp_dir();
    let (mut store, _) = store(&tmp);
    let (mut log, _) = crate::wal::Log::open(&tmp.path().join("wal"), 1 << 20).unwrap();
    let mut units = Vec::new();
    // Small (still in the buffer), larger than the buffer, and ending in
    // a lone CR (written at the end).
    for (user, body) in [
        ("ida", b"Subject: s\r\n\r\nx\r\n".to_vec()),
        (
            "jon",
            [b"Subject: l\r\n\r\n".to_vec(), vec![b'y'; 200_000]].concat(),
        ),
        ("kim", b"Subject: c\r\n\r\nx\r".to_vec()),
    ] {
        let mut d = store
            .begin(store.next_id(), &[mb("example.com", user)], HEADER)
            .unwrap();
        d.write(&body).unwrap();
        units.push(vec![d]);
    }
    let results = super::commit_logged(units, &mut log, None);
    drop(log);
    let (_, records) = crate::wal::Log::open(&tmp.path().join("wal"), 1 << 20).unwrap();
    let restore = crate::wal::to_restore(&records).unwrap();
    assert_eq!(restore.len(), 3);
    for ((_, message), result) in restore.iter().zip(&results) {
        let path = &result.as_ref().unwrap()[0];
        assert_eq!(
            message.content,
            fs::read(path).unwrap(),
            "{}",
            path.display()
        );
    }
}

#[test]
fn a_file_that_cannot_be_linked_after_the_log_commit_fails_and_its_record_is_withdrawn() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let (mut log, _) = crate::wal::Log::open(&tmp.path().join("wal"), 64 * 1024).unwrap();
    let mut good = store
        .begin(store.next_id(), &[mb("example.com", "fay")], HEADER)
        .unwrap();
    good.write(b"Subject: fine\r\n\r\nx\r\n").unwrap();
    // Two mailboxes, one of which loses its new/ before the link.
    let mut broken = store
        .begin(
            store.next_id(),
            &[mb("example.com", "gus"), mb("example.com", "hal")],
            HEADER,
        )
        .unwrap();
    broken.write(b"Subject: lost\r\n\r\nx\r\n").unwrap();
    fs::remove_dir(root.join("example.com/hal/new")).unwrap();
    let results = super::commit_logged(vec![vec![good], vec![broken]], &mut log, None);
    assert!(results[0].is_ok());
    assert!(results[1].is_err());
    assert!(
        names(&root.join("example.com/gus/new")).is_empty(),
        "rolled back"
    );
    drop(log);
    let (_, records) = crate::wal::Log::open(&tmp.path().join("wal"), 64 * 1024).unwrap();
    let restore = crate::wal::to_restore(&records).unwrap();
    assert_eq!(restore.len(), 1, "only the message that was stored");
    assert!(restore[0].1.paths[0].starts_with(root.join("example.com/fay/new")));
}

#[test]
fn a_group_the_log_cannot_take_leaves_nothing_and_the_next_one_goes_in() {
    let tmp = temp_dir();
    let (mut store, root) = store(&tmp);
    let wal = tmp.path().join("wal");
    let away = tmp.path().join("wal-away");
    let (mut log, _) = crate::wal::Log::open(&wal, 4096).unwrap();
    // The group needs a second segment, which cannot be made while the
    // log's directory is elsewhere (as on a full file system).
    let mut big = store
        .begin(store.next_id(), &[mb("example.com", "erin")], HEADER)
        .unwrap();
    big.write(&vec![b'x'; 10_000]).unwrap();
    fs::rename(&wal, &away).unwrap();
    let results = super::commit_logged(vec![vec![big]], &mut log, None);
    assert!(results[0].is_err());
    assert!(all_message_files(&root).is_empty(), "nothing linked");
    fs::rename(&away, &wal).unwrap();
    let small = three_deliveries(&mut store);
    let results = super::commit_logged(small, &mut log, None);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    drop(log);
    let (_, records) = crate::wal::Log::open(&wal, 4096).unwrap();
    assert_eq!(crate::wal::to_restore(&records).unwrap().len(), 3);
}
