//! A real power loss under gsmtpd, simulated below ext4.
//!
//! The disk is one file served by a FUSE file system inside this test
//! process. Every block written to it goes into an in-memory overlay, the
//! drive's volatile write cache; only a flush (`FUSE_FSYNC`) writes the
//! overlay through to the base file, which stands for the platter. A loop
//! device on that file carries a real ext4 (journal, data=ordered), and
//! gsmtpd's state directory and Maildir live on it. The loop driver turns
//! every flush the file system asks for (jbd2's REQ_PREFLUSH and FUA,
//! `fsync`, `syncfs`) into an `fsync` of its backing file, which arrives
//! here as `FUSE_FSYNC`. The FUSE file is opened with `direct_io` and the
//! session has no writeback cache, so the FUSE inode's page cache holds
//! nothing: every write reaches the overlay at once, and the test checks
//! that flushes do arrive (a `sync` must produce one).
//!
//! While the clients deliver, a thread starts writeback of the first block
//! of some new Maildir files, as the kernel's flusher may at any time, so
//! that the journal commits sizes of files only partly on the disk: after
//! the loss, unsynced files come back missing, empty, short or whole.
//!
//! The power loss ("cut") throws the overlay away as of that instant:
//! from then on nothing reaches the base, whatever is written or flushed.
//! Then every gsmtpd process is killed, ext4 unmounted, the loop device
//! detached and the page cache dropped; the disk comes back as the base
//! alone, ext4 replays its journal on mount, and gsmtpd starts again.
//!
//! The cut comes first and the kill a moment later, and gsmtpd may go on
//! in between: nothing it writes or syncs then survives, so a 250 counts
//! as acknowledged only if its client read it before the cut (the clients
//! and the cut share a lock); one read later may or may not survive, like
//! one never answered, and must then be whole and there once.
//!
//! What it models: a drive with a volatile write cache that honours
//! flushes, losing whatever it had not been told to flush. What it does
//! not: torn or partly written sectors, a cache that writes blocks back on
//! its own (so in some other order) before the loss, a drive that lies
//! about flushes, or errors on read or write. Writes made after the cut
//! are kept in the overlay only so that the dying kernel reads back a
//! consistent disk until it is unmounted; none of them survives. ext4 is
//! mounted with `commit=1` rather than its default 5 s, to get several
//! journal commits into a short run.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, SessionACL, WriteFlags,
};

use common::*;

/// Room for ext4, its journal and a few hundred small messages.
const DISK_BYTES: u64 = 256 << 20;
/// The overlay's unit: ext4's block, and the page the loop driver writes.
const BLOCK: usize = 4096;
const DISK_INO: INodeNo = INodeNo(2);
const DISK_NAME: &str = "disk";
const TTL: Duration = Duration::from_secs(1);
/// How long the clients deliver before the power goes. Longer than ext4's
/// commit interval (mounted with commit=1), so that the journal has
/// committed some Maildir names whose data never reached the disk (files
/// that come back empty) as well as names it never committed (files that
/// come back missing).
const CUT_AFTER: Duration = Duration::from_millis(2500);
const CLIENTS: usize = 4;

/// What the simulated drive holds, and what it has seen.
struct Drive {
    /// The platter: what survives a power loss.
    base: File,
    /// Blocks written since the last flush: the volatile write cache.
    cache: BTreeMap<u64, Vec<u8>>,
    /// The power is off: nothing written or flushed reaches `base`.
    cut: bool,
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    writes: u64,
    /// Every `FUSE_FSYNC`, before the cut or after.
    fsyncs: u64,
    /// Blocks written through to the base by those flushes.
    blocks_flushed: u64,
    /// Blocks thrown away by the cut.
    blocks_lost: u64,
}

impl Drive {
    /// `len` bytes from `offset`: the cache's block where it has one, the
    /// base's otherwise.
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let end = (offset + len as u64).min(DISK_BYTES);
        let mut out = vec![0; end.saturating_sub(offset) as usize];
        let mut pos = offset;
        while pos < end {
            let (n, within) = (pos / BLOCK as u64, (pos % BLOCK as u64) as usize);
            let take = (BLOCK - within).min((end - pos) as usize);
            let at = (pos - offset) as usize;
            match self.cache.get(&n) {
                Some(block) => out[at..at + take].copy_from_slice(&block[within..within + take]),
                None => self.base.read_exact_at(&mut out[at..at + take], pos)?,
            }
            pos += take as u64;
        }
        Ok(out)
    }

    /// Into the cache, block by block (a partial block is filled in from
    /// what the disk holds now).
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let (n, within) = (pos / BLOCK as u64, (pos % BLOCK as u64) as usize);
            let take = (BLOCK - within).min(rest.len());
            let mut block = match self.cache.remove(&n) {
                Some(block) => block,
                None if take == BLOCK => vec![0; BLOCK],
                None => self.read(n * BLOCK as u64, BLOCK)?,
            };
            block[within..within + take].copy_from_slice(&rest[..take]);
            self.cache.insert(n, block);
            pos += take as u64;
            rest = &rest[take..];
        }
        self.stats.writes += 1;
        Ok(())
    }

    /// A flush: the cache onto the platter, and the platter's own file
    /// synced, so that "on the base" means durable here too.
    fn flush(&mut self) -> std::io::Result<()> {
        self.stats.fsyncs += 1;
        if self.cut {
            return Ok(());
        }
        for (n, block) in std::mem::take(&mut self.cache) {
            self.base.write_all_at(&block, n * BLOCK as u64)?;
            self.stats.blocks_flushed += 1;
        }
        self.base.sync_data()
    }
}

/// The drive, shared by the FUSE thread and the test.
#[derive(Clone)]
struct Disk(Arc<Mutex<Drive>>);

impl Disk {
    fn new(base: &Path) -> Disk {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(base)
            .unwrap();
        file.set_len(DISK_BYTES).unwrap();
        Disk(Arc::new(Mutex::new(Drive {
            base: file,
            cache: BTreeMap::new(),
            cut: false,
            stats: Stats::default(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Drive> {
        // A panic elsewhere must not stop the clean-up from unmounting.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// The power goes: what the cache holds now is lost. Returns the
    /// counts as of that instant.
    fn cut(&self) -> Stats {
        let mut drive = self.lock();
        drive.cut = true;
        drive.stats.blocks_lost = drive.cache.len() as u64;
        drive.stats
    }

    /// The power comes back: an empty cache on the platter as it was left.
    fn power_on(&self) {
        let mut drive = self.lock();
        drive.cache.clear();
        drive.cut = false;
    }
}

/// The FUSE file system: a root directory holding the one file `disk`.
struct DiskFs(Disk);

fn attr(ino: INodeNo) -> Option<FileAttr> {
    let (kind, perm, size, nlink) = match ino {
        INodeNo::ROOT => (FileType::Directory, 0o755, 0, 2),
        DISK_INO => (FileType::RegularFile, 0o600, DISK_BYTES, 1),
        _ => return None,
    };
    Some(FileAttr {
        ino,
        size,
        blocks: size / 512,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK as u32,
        flags: 0,
    })
}

impl Filesystem for DiskFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match attr(DISK_INO) {
            Some(a) if parent == INodeNo::ROOT && name == DISK_NAME => {
                reply.entry(&TTL, &a, Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// The disk's size is fixed; anything else (times, mode) is accepted
    /// and forgotten.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match attr(ino) {
            Some(_) if size.is_some_and(|s| s != DISK_BYTES) => reply.error(Errno::EPERM),
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// direct_io: no page cache on the FUSE side, so no write can sit in
    /// the kernel where the simulated cut could not reach it.
    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == DISK_INO {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.0.lock().read(offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if offset + data.len() as u64 > DISK_BYTES {
            return reply.error(Errno::ENOSPC);
        }
        match self.0.lock().write(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    /// close(2): no promise of durability, so nothing to do. (Answering
    /// ENOSYS would be as good, but says less.)
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// The one durability point. It must be implemented: to ENOSYS the
    /// kernel would answer by turning every later fsync into a silent
    /// no-op, and the simulated drive would lose what it was told to keep.
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.0.lock().flush() {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, DISK_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    /// The directory never changes: there is nothing to make durable.
    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}

/// Runs a command that must succeed; returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn quietly(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (mounting FUSE and ext4, loop devices)".into());
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse: {e}"));
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control (no loop devices)".into());
    }
    for tool in ["losetup", "mkfs.ext4", "mount", "umount"] {
        if !quietly("sh", &["-c", &format!("command -v {tool}")]) {
            return Some(format!("no {tool} on PATH"));
        }
    }
    None
}

/// The simulated disk, its loop device and its ext4, torn down in the
/// right order when dropped, whatever happened.
struct Rig {
    /// The scratch directory: platter, mount points.
    dir: PathBuf,
    disk: Disk,
    fuse_dir: PathBuf,
    session: Option<BackgroundSession>,
    loop_dev: Option<String>,
    ext4_dir: PathBuf,
    mounted: bool,
    /// ext4's journal commit interval, in seconds.
    commit: u32,
}

impl Rig {
    /// The FUSE disk mounted, or why not.
    fn new(tag: &str) -> Result<Rig, String> {
        if let Some(why) = unsupported() {
            return Err(why);
        }
        let dir = scratch_dir(tag);
        let (fuse_dir, ext4_dir) = (dir.join("fuse"), dir.join("ext4"));
        fs::create_dir(&fuse_dir).unwrap();
        fs::create_dir(&ext4_dir).unwrap();
        let disk = Disk::new(&dir.join("platter"));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("gsmtpd-power-loss".into())];
        // The loop driver's I/O runs in kernel threads: let anyone in.
        config.acl = SessionACL::All;
        let session = fuser::Session::new(DiskFs(disk.clone()), &fuse_dir, &config)
            .and_then(fuser::Session::spawn)
            .map_err(|e| format!("mounting the FUSE disk: {e}"))?;
        Ok(Rig {
            dir,
            disk,
            fuse_dir,
            session: Some(session),
            loop_dev: None,
            ext4_dir,
            mounted: false,
            commit: 1,
        })
    }

    /// A fresh ext4 on the simulated disk with an empty gsmtpd state
    /// directory on it; None (the test skipped) if this machine cannot.
    fn with_state_dir(tag: &str) -> Option<(Rig, PathBuf)> {
        let mut rig = match Rig::new(tag) {
            Ok(rig) => rig,
            Err(why) => {
                eprintln!("SKIPPED: power-loss simulation unavailable: {why}");
                return None;
            }
        };
        rig.attach();
        rig.mkfs();
        rig.mount();
        let state = rig.ext4_dir.join("state");
        fs::create_dir(&state).unwrap();
        // The simulation's honesty: a sync of the file system must come
        // through as at least one flush of the drive.
        let before = rig.disk.stats();
        run("sync", &["-f", &state.display().to_string()]);
        let after = rig.disk.stats();
        assert!(
            after.fsyncs > before.fsyncs && after.blocks_flushed > before.blocks_flushed,
            "a sync reached the drive as no flush: {before:?} then {after:?}"
        );
        Some((rig, state))
    }

    fn image(&self) -> String {
        self.fuse_dir.join(DISK_NAME).display().to_string()
    }

    fn attach(&mut self) {
        // direct-io off: the loop driver goes through the FUSE file's
        // (empty, direct_io) page cache and turns flushes into fsync.
        let dev = run(
            "losetup",
            &["--find", "--show", "--direct-io=off", &self.image()],
        );
        self.loop_dev = Some(dev.trim().to_string());
    }

    fn mkfs(&self) {
        // nodiscard: the FUSE file has no fallocate to punch holes with.
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "nodiscard",
                self.loop_dev.as_ref().unwrap(),
            ],
        );
    }

    fn mount(&mut self) {
        // commit=1 (the default here): the journal commits each second,
        // so a few seconds of load leave both committed and uncommitted
        // Maildir names behind. noinit_itable: no background zeroing of
        // inode tables adding writes of its own.
        let options = format!("commit={},noinit_itable", self.commit);
        run(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                &options,
                self.loop_dev.as_ref().unwrap(),
                &self.ext4_dir.display().to_string(),
            ],
        );
        self.mounted = true;
    }

    fn unmount(&mut self) {
        let dir = self.ext4_dir.display().to_string();
        if !quietly("umount", &[&dir]) {
            run("umount", &["-l", &dir]);
        }
        self.mounted = false;
    }

    fn detach(&mut self) {
        if let Some(dev) = self.loop_dev.take() {
            run("losetup", &["-d", &dev]);
            assert!(detached(&dev), "{dev} still bound to the disk");
        }
    }

    /// Unmounted, detached, every cache of the old disk dropped, and the
    /// drive powered on again with what its platter kept.
    fn after_power_loss(&mut self) {
        self.unmount();
        self.detach();
        fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        self.disk.power_on();
        self.attach();
        self.mount();
    }
}

/// Waits until the loop device `dev` has let go of its backing file.
/// `losetup -d` only marks a device still open for clearing at its last
/// close, which can come a little after the unmount; until then the old
/// file system could still write to the disk, and the FUSE file stays busy.
fn detached(dev: &str) -> bool {
    let name = dev.trim_start_matches("/dev/");
    let bound = PathBuf::from(format!("/sys/block/{name}/loop"));
    let start = Instant::now();
    while bound.exists() {
        if start.elapsed() > WAIT {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.mounted {
            let dir = self.ext4_dir.display().to_string();
            if !quietly("umount", &[&dir]) {
                quietly("umount", &["-l", &dir]);
            }
        }
        if let Some(dev) = self.loop_dev.take()
            && quietly("losetup", &["-d", &dev])
            && !detached(&dev)
        {
            eprintln!("{dev} is still bound to {}", self.image());
        }
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            // Still busy (a lazily unmounted ext4 keeping the loop device):
            // detach it from the tree at least.
            eprintln!("unmounting the FUSE disk: {e}");
            quietly("umount", &["-l", &self.fuse_dir.display().to_string()]);
            return;
        }
        // The platter holds some 100 MiB after a run: kept only for a
        // failure to be looked into.
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// One message a client sent.
#[derive(Clone)]
struct Sent {
    body: String,
    id: String,
}

/// What the clients saw, and when the power went relative to it.
#[derive(Default)]
struct Ledger {
    /// The power is off: a 250 read now may be for a commit the cut lost.
    cut: bool,
    /// 250 read before the cut: these must survive.
    acked: Vec<Sent>,
    /// Every body that went out, answered or not.
    attempted: Vec<String>,
    /// 250 read after the cut: may or may not survive, once at most.
    acked_after_cut: Vec<Sent>,
}

impl Ledger {
    /// The ledger, once every client that wrote to it has ended.
    fn take(shared: Arc<Mutex<Ledger>>) -> Ledger {
        Arc::try_unwrap(shared)
            .unwrap_or_else(|_| panic!("a client still holds the ledger"))
            .into_inner()
            .unwrap()
    }
}

/// Distinct per message (the token), of various sizes, some over a block.
fn body(client: usize, m: usize) -> String {
    format!(
        "Subject: power loss {client}/{m}\n\ntoken-{client}-{m}\n{}\n",
        "abcdefghijklmnopqrstuvwxyz0123456789 ".repeat((m * 37 + client * 11) % 150)
    )
}

/// One SMTP reply's last line, or None when the connection failed.
fn reply(reader: &mut BufReader<TcpStream>) -> Option<String> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Some(line);
        }
    }
}

/// Delivers messages one after another until `stop` or a failure.
fn keep_delivering(
    addr: SocketAddr,
    client: usize,
    rcpt: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(stream) = TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(WAIT));
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    if !reply(&mut reader).is_some_and(|r| r.starts_with("220")) {
        return;
    }
    let mut step = |send: &str, code: &str| -> Option<String> {
        writer.write_all(send.as_bytes()).ok()?;
        reply(&mut reader).filter(|r| r.starts_with(code))
    };
    if step("EHLO client.test\r\n", "250").is_none() {
        return;
    }
    for m in 0.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let body = body(client, m);
        let to = format!("RCPT TO:<{rcpt}>\r\n");
        let ok = step("MAIL FROM:<a@client.test>\r\n", "250").is_some()
            && step(&to, "250").is_some()
            && step("DATA\r\n", "354").is_some();
        if !ok {
            return;
        }
        ledger.lock().unwrap().attempted.push(body.clone());
        let Some(answer) = step(&format!("{}.\r\n", crlf(&body)), "250") else {
            return;
        };
        // Under the ledger's lock, which the cut takes too: a 250 counted
        // as acknowledged was read before the power went, so the log's
        // fdatasync behind it reached the platter.
        let sent = Sent {
            body,
            id: queue_id(answer.trim_end()),
        };
        let mut ledger = ledger.lock().unwrap();
        if ledger.cut {
            ledger.acked_after_cut.push(sent);
        } else {
            ledger.acked.push(sent);
        }
    }
}

/// The kernel's background writeback, made to happen within the seconds
/// the test runs: the first block of every other file that shows up in
/// `new/` is written to the drive (no flush). With delayed allocation that
/// allocates its blocks and moves the size ext4 commits in its journal
/// (each second) to the end of that block, so a larger file can come back
/// short after the power loss, and a smaller one whole though never
/// synced. Returns how many files it wrote back so.
fn early_writeback(new: &Path, stop: &AtomicBool) -> usize {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let mut seen = HashSet::new();
    let mut written = 0;
    while !stop.load(Ordering::SeqCst) {
        for entry in fs::read_dir(new).into_iter().flatten().flatten() {
            if !seen.insert(entry.file_name()) || seen.len() % 2 == 0 {
                continue;
            }
            // DONTNEED starts writeback of the range's dirty pages and
            // waits for none of it: what the flusher thread would do.
            let advised = File::open(entry.path()).map(|file| {
                posix_fadvise(
                    &file,
                    0,
                    BLOCK as i64,
                    PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                )
            });
            if matches!(advised, Ok(Ok(()))) {
                written += 1;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    written
}

/// The body of a stored message file, if it is a whole one: the part
/// after gsmtpd's own Return-Path and Received lines.
fn whole_body(file: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(file).ok()?;
    if !text.starts_with("Return-Path: <") {
        return None;
    }
    let mut lines = text.split_inclusive('\n');
    lines.next()?;
    lines.next()?.starts_with("Received: ").then_some(())?;
    let rest: Vec<&str> = lines.skip_while(|l| l.starts_with('\t')).collect();
    Some(rest.concat())
}

/// Every file in the mailbox's `new/` and `cur/`.
fn mailbox_files(maildir: &Path) -> Vec<PathBuf> {
    let mailbox = maildir.join(DOMAIN).join("load");
    let mut files: Vec<PathBuf> = ["new", "cur"]
        .iter()
        .flat_map(|sub| fs::read_dir(mailbox.join(sub)).into_iter().flatten())
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// What the mailbox holds: whole bodies, and the files that are not
/// whole messages (empty or cut short).
fn inventory(maildir: &Path) -> (Vec<String>, Vec<(PathBuf, usize)>) {
    let (mut whole, mut broken) = (Vec::new(), Vec::new());
    for path in mailbox_files(maildir) {
        let bytes = fs::read(&path).unwrap();
        match whole_body(&bytes) {
            Some(body) => whole.push(body),
            None => broken.push((path, bytes.len())),
        }
    }
    (whole, broken)
}

/// What one run saw.
struct Run {
    rig: Rig,
    state: PathBuf,
    ledger: Ledger,
    /// Whole copies of acknowledged messages after the remount, before
    /// gsmtpd ran again.
    whole_before: usize,
    /// Files in the mailbox then: in all, empty, and cut short (or
    /// otherwise not a message sent).
    files_before: usize,
    empty_before: usize,
    short_before: usize,
    /// Maildir files whose first block was written back early.
    written_back: usize,
}

/// One test's serialization: the runs share the machine's two cores, the
/// page cache they drop and the loop devices.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Loads gsmtpd in `durability` mode on the simulated disk, cuts the
/// power, and brings the disk back; None if this machine cannot.
fn power_loss_under_load(tag: &str, durability: &str, checkpoint: &str) -> Option<Run> {
    let (mut rig, state) = Rig::with_state_dir(tag)?;
    let mut gsmtpd = durable_server(&state, durability, checkpoint);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = gsmtpd.plain[0];
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
            let rcpt = format!("load@{DOMAIN}");
            thread::spawn(move || keep_delivering(addr, c, rcpt, ledger, stop))
        })
        .collect();
    let writeback = {
        let (new, stop) = (
            state.join("mail").join(DOMAIN).join("load/new"),
            Arc::clone(&stop),
        );
        thread::spawn(move || early_writeback(&new, &stop))
    };
    let start = Instant::now();
    while ledger.lock().unwrap().acked.is_empty() {
        assert!(start.elapsed() < WAIT, "no message acknowledged");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(CUT_AFTER);
    {
        let mut ledger = ledger.lock().unwrap();
        rig.disk.cut();
        ledger.cut = true;
    }
    kill_everything(&mut gsmtpd);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let written_back = writeback.join().unwrap();
    drop(gsmtpd);
    rig.after_power_loss();

    let ledger = Ledger::take(ledger);
    let (whole, broken) = inventory(&state.join("mail"));
    let files_before = whole.len() + broken.len();
    let empty_before = broken.iter().filter(|(_, len)| *len == 0).count();
    let whole: HashSet<String> = whole.into_iter().collect();
    let attempted: HashSet<&String> = ledger.attempted.iter().collect();
    let short_before =
        broken.len() - empty_before + whole.iter().filter(|b| !attempted.contains(b)).count();
    let whole_before = ledger
        .acked
        .iter()
        .filter(|sent| whole.contains(&sent.body))
        .count();
    Some(Run {
        rig,
        state,
        ledger,
        whole_before,
        files_before,
        empty_before,
        short_before,
        written_back,
    })
}

/// Every acknowledged message once and whole, anything else at most once
/// and whole, no partial file in the mailbox.
fn assert_mailbox_is_right(maildir: &Path, ledger: &Ledger) {
    let (whole, broken) = inventory(maildir);
    assert!(
        broken.is_empty(),
        "files that are not whole messages: {broken:?}"
    );
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for body in &whole {
        *copies.entry(body).or_default() += 1;
    }
    for sent in &ledger.acked {
        let n = copies.get(sent.body.as_str()).copied().unwrap_or(0);
        assert_eq!(
            n,
            1,
            "acknowledged message id={} ({}): {n} copies",
            sent.id,
            sent.body.lines().nth(2).unwrap_or_default()
        );
    }
    let attempted: HashSet<&str> = ledger.attempted.iter().map(String::as_str).collect();
    for (body, n) in copies {
        // A body cut short would not be one of those sent.
        assert!(
            attempted.contains(body),
            "a stored message that is not one sent whole: {body:?}"
        );
        assert_eq!(n, 1, "stored {n} times: {body:?}");
    }
}

fn report(tag: &str, run: &Run) {
    let stats = run.rig.disk.stats();
    eprintln!(
        "{tag}: {} acknowledged ({} more after the cut, {} sent in all); \
         {} file(s) written back early in part; \
         after the power loss {} file(s) in the mailbox: {} of the acknowledged whole, \
         {} empty, {} short; \
         drive: {} writes, {} fsyncs, {} blocks flushed, {} blocks lost at the cut",
        run.ledger.acked.len(),
        run.ledger.acked_after_cut.len(),
        run.ledger.attempted.len(),
        run.written_back,
        run.files_before,
        run.whole_before,
        run.empty_before,
        run.short_before,
        stats.writes,
        stats.fsyncs,
        stats.blocks_flushed,
        stats.blocks_lost,
    );
}

/// The simulator itself: a flushed write survives, a write that reached
/// the drive but no flush does not, and neither does one still in the
/// page cache.
#[test]
fn the_simulated_disk_keeps_what_was_flushed_and_loses_the_rest() {
    use std::os::unix::fs::OpenOptionsExt;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let mut rig = match Rig::new("power-loss-disk") {
        Ok(rig) => rig,
        Err(why) => {
            eprintln!("SKIPPED: power-loss simulation unavailable: {why}");
            return;
        }
    };
    // No journal commit of its own during the test: it would flush the
    // drive's cache (the overwrite below changes the inode's times).
    rig.commit = 60;
    rig.attach();
    rig.mkfs();
    rig.mount();
    let (kept, overwritten, unflushed) = (
        rig.ext4_dir.join("kept"),
        rig.ext4_dir.join("overwritten"),
        rig.ext4_dir.join("unflushed"),
    );
    let old = vec![b'o'; 2 * BLOCK];
    for path in [&kept, &overwritten] {
        let mut file = File::create(path).unwrap();
        file.write_all(&old).unwrap();
        file.sync_all().unwrap();
    }
    // In place and with O_DIRECT: no page cache, no metadata to commit,
    // so the new bytes go to the drive's cache and no flush follows.
    let mut buf = vec![0u8; 3 * BLOCK];
    let at = buf.as_ptr().align_offset(BLOCK);
    let new = &mut buf[at..at + 2 * BLOCK];
    new.fill(b'n');
    let before = rig.disk.stats();
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&overwritten)
        .unwrap()
        .write_all_at(new, 0)
        .unwrap();
    let after = rig.disk.stats();
    assert!(
        after.writes > before.writes && after.fsyncs == before.fsyncs,
        "an O_DIRECT write: {before:?} then {after:?}"
    );
    // Only in the page cache.
    fs::write(&unflushed, &old).unwrap();
    let at_cut = rig.disk.cut();
    assert!(
        at_cut.fsyncs == before.fsyncs && at_cut.blocks_lost >= 2,
        "no flush since the overwrite, which the drive's cache holds: {at_cut:?}"
    );
    rig.after_power_loss();
    assert_eq!(fs::read(&kept).unwrap(), old, "a flushed file");
    assert_eq!(
        fs::read(&overwritten).unwrap(),
        old,
        "an overwrite the drive had but never flushed"
    );
    assert!(
        fs::read(&unflushed).map_or(true, |bytes| bytes != old),
        "a file never synced came back whole"
    );
}

/// Cuts the power under `--durability log`, then checks what recovery
/// makes of it; `must_lose`: the cut must have cost acknowledged messages
/// their Maildir files (else the run proves nothing about recovery).
fn log_mode(tag: &str, checkpoint: &str, must_lose: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let Some(mut run) = power_loss_under_load(tag, "log", checkpoint) else {
        return;
    };
    report(tag, &run);
    assert!(
        run.ledger.acked.len() >= 10,
        "the load ran: {} acknowledged",
        run.ledger.acked.len()
    );
    if must_lose {
        assert!(
            run.whole_before < run.ledger.acked.len(),
            "every acknowledged message survived without the log's help: \
             the drive lost nothing that mattered"
        );
    }

    let mut gsmtpd = durable_server(&run.state, "log", checkpoint);
    // A worker replays its log before it serves anyone: once this is
    // answered, recovery is over.
    let mut c = Plain::greeted(gsmtpd.plain[0]);
    c.start_data(&format!("after@{DOMAIN}"));
    c.send(".\r\n");
    c.expect("250");
    let log = gsmtpd.log();
    let summary = log.lines().find(|l| l.contains("recovery from"));
    eprintln!("{tag}: {}", summary.unwrap_or("no recovery"));
    if must_lose {
        assert!(summary.is_some(), "no recovery:\n{log}");
    }
    assert_mailbox_is_right(&gsmtpd.maildir, &run.ledger);

    // Recovery ends with a checkpoint, after which the log no longer has
    // these messages: what it rewrote must have been durable by then. A
    // second power loss, gsmtpd idle, and the disk alone must hold them.
    run.rig.disk.cut();
    kill_everything(&mut gsmtpd);
    drop(gsmtpd);
    run.rig.after_power_loss();
    assert_mailbox_is_right(&run.state.join("mail"), &run.ledger);
    eprintln!("{tag}: {:.1?} in all", started.elapsed());
}

/// No checkpoint before the cut: every acknowledged message's Maildir file
/// is unsynced, and only the log has it.
#[test]
fn the_write_ahead_log_brings_back_every_acknowledged_message_after_a_power_loss() {
    log_mode("power-loss-log", "60", true);
}

/// Checkpoints each second under the load: the messages before the last
/// one must have been made durable by its syncfs (the log no longer
/// holds them), those after it come back from the log.
#[test]
fn checkpoints_under_load_lose_nothing_at_a_power_loss() {
    log_mode("power-loss-checkpoints", "1", false);
}

#[test]
fn sync_durability_keeps_every_acknowledged_message_through_a_power_loss() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let Some(run) = power_loss_under_load("power-loss-sync", "sync", "60") else {
        return;
    };
    report("sync", &run);
    assert!(
        !run.ledger.acked.is_empty(),
        "the load ran: nothing acknowledged"
    );
    // No recovery to run: what the disk kept must already be right.
    assert_mailbox_is_right(&run.state.join("mail"), &run.ledger);
    let gsmtpd = durable_server(&run.state, "sync", "60");
    assert_mailbox_is_right(&gsmtpd.maildir, &run.ledger);
    eprintln!("sync: {:.1?} in all", started.elapsed());
}

/// Mail for this domain cannot go on before the power loss (its route
/// leads to a closed port), and goes to the next hop after it: what is
/// queued at the cut is never only what happens to be in flight.
const LATER: &str = "later.example";

/// A gsmtpd relaying `remote.example` to the next hop on `port`, and
/// `LATER` to `later`, its state (queue, logs) in `state`.
fn relay(state: &Path, durability: &str, port: u16, later: u16) -> Server {
    let mut args = route(&format!("[127.0.0.1]:{port}"));
    args.extend(["--route".into(), format!("{LATER}=[127.0.0.1]:{later}")]);
    args.extend(
        [
            "--durability",
            durability,
            "--checkpoint-interval",
            "60",
            "--workers",
            "1",
            "--retry-min",
            "1",
            "--retry-max",
            "2",
        ]
        .map(String::from),
    );
    sender_with(Some(state.to_path_buf()), &args)
}

/// A message as the next hop stored it: the sending gsmtpd's queue id
/// (from its Received header, below the next hop's own) and the body the
/// client sent; None if it is not whole.
fn relayed(file: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(file).ok()?;
    if !text.starts_with("Return-Path: <") {
        return None;
    }
    let mut lines = text.split_inclusive('\n').skip(1).peekable();
    let mut ids = Vec::new();
    while let Some(line) = lines.next_if(|l| l.starts_with("Received: ") || l.starts_with('\t')) {
        if let Some(id) = line.strip_prefix("\tid ") {
            ids.push(id.trim_end().trim_end_matches(';').to_string());
        }
    }
    let [_, sender] = ids.as_slice() else {
        return None;
    };
    Some((sender.clone(), lines.collect()))
}

/// The queue ids of the messages the sender logged `=>` for in `log`.
fn sent_on(log: &str) -> HashSet<String> {
    log.lines()
        .filter_map(|l| l.split_once(" => "))
        .filter_map(|(before, _)| before.split_whitespace().last())
        .map(String::from)
        .collect()
}

/// What is still queued, in `new/` or held by a worker.
fn queued(state: &Path) -> Vec<PathBuf> {
    let Ok(dirs) = fs::read_dir(state.join("queue")) else {
        return Vec::new();
    };
    dirs.flatten()
        .filter(|d| {
            let name = d.file_name();
            let name = name.to_string_lossy();
            name == "new" || name.starts_with("held-")
        })
        .flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect()
}

/// Waits until `sender` has sent on everything queued, without waiting
/// for the retry of what was deferred.
fn drain(sender: &Server) {
    let (status, _, err) = gsmtpd(&["queue", "flush"], &sender.state);
    assert_eq!(status, Some(0), "{err}");
    let start = Instant::now();
    loop {
        let left = queued(&sender.state);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "still queued after the restart: {left:?}\n{}",
            sender.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The summaries of a recovery in `log`, and how many files or journals
/// it put back.
fn recovered(log: &str) -> (Vec<&str>, usize) {
    let put_back =
        |l: &&str| l.contains("recovery: ") && l.contains(" rewritten from the write-ahead log");
    let summaries = log
        .lines()
        .filter(|l| l.contains("recovery") && !put_back(l))
        .map(|l| l.split_once("] [").map_or(l, |(_, rest)| rest))
        .collect();
    (summaries, log.lines().filter(put_back).count())
}

/// What the next hop has: each body sent on, with the sender's queue id
/// of each copy; and the files that are not whole messages, with their
/// sizes.
#[allow(clippy::type_complexity)]
fn arrivals(next_hop: &Server) -> (HashMap<String, Vec<String>>, Vec<(PathBuf, usize)>) {
    let mut copies: HashMap<String, Vec<String>> = HashMap::new();
    let mut broken = Vec::new();
    for c in 0..=CLIENTS {
        let domain = if c < CLIENTS { "remote.example" } else { LATER };
        let dir = next_hop.maildir.join(format!("{domain}/rcpt{c}/new"));
        for entry in fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            match relayed(&bytes) {
                Some((id, body)) => copies.entry(body).or_default().push(id),
                None => broken.push((path, bytes.len())),
            }
        }
    }
    (copies, broken)
}

/// Relaying under load when the power goes: the sender's queue and logs on
/// the simulated disk, the next hop (a gsmtpd on the ordinary file system)
/// untouched by the loss. After the restart, at the next hop: every
/// message acknowledged before the cut at least once, whole; every message
/// the sender logged `=>` for before the cut exactly once (its delivered
/// record was durable before that line); any other at most twice (a 250
/// from the next hop whose record the loss took is the RFC 1047 window on
/// the sending side: the message goes again); nothing partial.
fn relay_through_a_power_loss(tag: &str, durability: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let Some((mut rig, state)) = Rig::with_state_dir(tag) else {
        return;
    };
    let next_hop = receiver(&["--domain", LATER]);
    let mut sender = relay(&state, durability, next_hop.port(), free_port());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = sender.plain[0];
    // One more client, for the domain whose mail stays queued.
    let clients: Vec<_> = (0..=CLIENTS)
        .map(|c| {
            let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
            let domain = if c < CLIENTS { "remote.example" } else { LATER };
            let rcpt = format!("rcpt{c}@{domain}");
            thread::spawn(move || keep_delivering(addr, c, rcpt, ledger, stop))
        })
        .collect();
    let start = Instant::now();
    while ledger.lock().unwrap().acked.is_empty() {
        assert!(start.elapsed() < WAIT, "no message acknowledged");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(CUT_AFTER);
    // What the sender had logged by the cut: a line read here was written
    // before it (one still in the pipe only makes the set smaller).
    let log_at_cut = {
        let mut ledger = ledger.lock().unwrap();
        let log = sender.log();
        rig.disk.cut();
        ledger.cut = true;
        log
    };
    kill_everything(&mut sender);
    // Logged => between the cut and the kill: the delivered record went
    // to a disk no longer there, and the message may go again.
    let sent_after = &sent_on(&sender.log()) - &sent_on(&log_at_cut);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    drop(sender);
    rig.after_power_loss();
    let ledger = Ledger::take(ledger);

    let sent_before = sent_on(&log_at_cut);
    let acked: HashSet<&str> = ledger.acked.iter().map(|s| s.id.as_str()).collect();
    let delivered_before = acked.iter().filter(|id| sent_before.contains(**id)).count();
    let queued_at_cut = acked.len() - delivered_before;
    let deferred = format!("\ntoken-{CLIENTS}-");
    let deferred_at_cut = ledger
        .acked
        .iter()
        .filter(|s| s.body.contains(&deferred))
        .count();
    let on_disk = queued(&state).len();

    let mut sender = relay(&state, durability, next_hop.port(), next_hop.port());
    drain(&sender);
    // A second power loss as soon as the queue is empty (checked below,
    // once this restart's work is): what the sender sent on since the
    // restart was logged =>, its removal not synced, and its log must keep
    // it from going again.
    rig.disk.cut();
    kill_everything(&mut sender);
    let log = sender.log();
    drop(sender);
    let (recovery, rewritten) = recovered(&log);
    let (copies, broken) = arrivals(&next_hop);
    let twice: Vec<&str> = copies
        .values()
        .filter(|ids| ids.len() > 1)
        .map(|ids| ids[0].as_str())
        .collect();
    let twice_logged = twice.iter().filter(|id| sent_after.contains(**id)).count();
    eprintln!(
        "{tag}: {} acknowledged ({} more after the cut, {} sent in all); \
         at the cut {} sent on (logged =>) and {} still queued \
         ({deferred_at_cut} of them for {LATER}), {} queue file(s) \
         on the disk after it; after the restart {} message(s) at the next hop, \
         {} twice ({twice_logged} of them logged => after the cut, before the kill); \
         recovery: {rewritten} file(s) or journal(s) rewritten, {recovery:#?}",
        ledger.acked.len(),
        ledger.acked_after_cut.len(),
        ledger.attempted.len(),
        delivered_before,
        queued_at_cut,
        on_disk,
        copies.len(),
        twice.len(),
    );

    assert!(
        broken.is_empty(),
        "partial messages at the next hop: {broken:?}"
    );
    let attempted: HashSet<&str> = ledger.attempted.iter().map(String::as_str).collect();
    for (body, ids) in &copies {
        assert!(
            attempted.contains(body.as_str()),
            "a message at the next hop that is not one sent whole: {body:?}"
        );
        assert!(ids.len() <= 2, "sent on {} times: {ids:?}", ids.len());
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "from two messages: {ids:?}"
        );
        assert!(
            ids.len() == 1 || !sent_before.contains(&ids[0]),
            "{}: logged => before the power loss, yet sent again:\n{log}",
            ids[0]
        );
    }
    for sent in &ledger.acked {
        let ids = copies
            .get(&sent.body)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            !ids.is_empty(),
            "{}: acknowledged before the power loss, never sent on:\n{log}",
            sent.id
        );
        assert_eq!(ids[0], sent.id, "{}: sent on under another id", sent.id);
    }
    let arrived: HashSet<&str> = copies.values().map(|ids| ids[0].as_str()).collect();
    let again = sent_on(&log);
    for id in &sent_before {
        assert!(
            arrived.contains(id.as_str()),
            "{id}: logged =>, not at the next hop"
        );
        assert!(
            !again.contains(id),
            "{id}: logged => before the cut and after:\n{log}"
        );
    }
    // Not vacuous: the cut found messages sent on and messages in the queue.
    assert!(delivered_before > 0, "nothing sent on before the cut");
    // (What was in flight at the cut, for remote.example, may be none.)
    assert!(deferred_at_cut > 0, "nothing left in the queue at the cut");

    rig.after_power_loss();
    let back = queued(&state).len();
    let sender = relay(&state, durability, next_hop.port(), next_hop.port());
    drain(&sender);
    let log = sender.log();
    let (recovery, rewritten) = recovered(&log);
    eprintln!(
        "{tag}: after a second power loss, {back} queue file(s) back; \
         recovery: {rewritten} file(s) or journal(s) rewritten, {recovery:#?}"
    );
    let resent = sent_on(&log);
    assert!(
        resent.is_empty(),
        "sent on again after the second power loss: {resent:?}\n{log}"
    );
    let (after, broken) = arrivals(&next_hop);
    assert!(
        broken.is_empty(),
        "partial messages at the next hop: {broken:?}"
    );
    assert!(after == copies, "the next hop's mail changed");
    eprintln!("{tag}: {:.1?} in all", started.elapsed());
}

#[test]
fn a_relayed_message_logged_as_sent_goes_once_through_a_power_loss() {
    relay_through_a_power_loss("power-loss-relay", "log");
}

#[test]
fn a_relayed_message_goes_once_through_a_power_loss_under_sync_durability() {
    relay_through_a_power_loss("power-loss-relay-sync", "sync");
}
