//! The few OS calls that need `unsafe`, each wrapped once: `fork`, memory
//! for keys (locked in RAM, left out of core dumps, wiped in children),
//! memory shared with children, closing inherited descriptors, and
//! `TCP_FASTOPEN`. Everything else goes through `nix`'s safe wrappers.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::sys::mman::{self, MapFlags, MmapAdvise, ProtFlags};
use nix::unistd::{ForkResult, Pid};

pub enum Forked {
    Child,
    Parent(Pid),
}

/// `fork(2)`. gsmtpd has one thread per process, so the child starts with
/// memory no other thread was changing, and may go on running Rust code.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the process is single-threaded (the design has no threads),
    // so no lock or allocator state is held by a thread that the child
    // would lack.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            crate::logging::set_pid();
            Ok(Forked::Child)
        }
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
    }
}

/// Closes every descriptor above stderr except `keep`: a child forked
/// from the supervisor holds only what its own job needs, never the
/// supervisor's poller, signal descriptor, database or other children's
/// channels. The Rust values that owned the closed descriptors are never
/// used or dropped afterwards (the child exits without unwinding into
/// them).
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first: RawFd = 3;
    for fd in keep.into_iter().chain(std::iter::once(RawFd::MAX)) {
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd.saturating_add(1);
    }
    Ok(())
}

fn close_range(first: RawFd, last: RawFd) -> io::Result<()> {
    // SAFETY: closing descriptors frees no memory; see close_fds_except for
    // why no live Rust value uses them afterwards.
    let rc = unsafe { libc::close_range(first as libc::c_uint, last as libc::c_uint, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lets a listener take data in the SYN (TCP Fast Open) from clients that
/// hold a cookie; `queue` bounds pending Fast Open requests.
pub fn set_tcp_fastopen(socket: BorrowedFd<'_>, queue: i32) -> io::Result<()> {
    // SAFETY: the option value is a c_int that lives across the call, and
    // its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&queue as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(4096)
}

/// One page of its own for a secret (a ticket master): locked in RAM so it
/// is never swapped out (`mlock`), left out of core dumps (`MADV_DONTDUMP`)
/// and zero-filled in any child forked later (`MADV_WIPEONFORK`), so that a
/// worker holds only the keys it was sent. Wiped and unmapped on drop.
pub struct LockedPage {
    ptr: NonNull<u8>,
    len: usize,
}

/// Warned once per process: the key stays usable without the protection.
static LOCK_WARNED: AtomicBool = AtomicBool::new(false);

impl LockedPage {
    pub fn new() -> io::Result<LockedPage> {
        let len = page_size();
        let size = NonZeroUsize::new(len).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let ptr = unsafe {
            mman::mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }?;
        let page = LockedPage {
            ptr: ptr.cast(),
            len,
        };
        // SAFETY: ptr..ptr+len is the mapping made above.
        let locked = unsafe { mman::mlock(ptr, len) };
        // SAFETY: as above.
        let undumped = unsafe { mman::madvise(ptr, len, MmapAdvise::MADV_DONTDUMP) };
        if let Err(e) = locked.and(undumped)
            && !LOCK_WARNED.swap(true, Ordering::Relaxed)
        {
            log::warn!(
                "ticket keys are not fully protected ({e}): they may reach swap or a core dump; \
                 raise RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=)"
            );
        }
        // Linux 4.14 and newer; older kernels only lose the wipe.
        // SAFETY: as above.
        let _ = unsafe { mman::madvise(ptr, len, MmapAdvise::MADV_WIPEONFORK) };
        Ok(page)
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable for len bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for LockedPage {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and writable; explicit_bzero is a
        // memset the optimiser may not remove, and nothing refers to the
        // page after munmap.
        unsafe {
            libc::explicit_bzero(self.ptr.as_ptr().cast(), self.len);
            let _ = mman::munlock(self.ptr.cast(), self.len);
            let _ = mman::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Zeroed memory shared with every child forked after it is made (a
/// `MAP_SHARED` anonymous mapping), seen as atomic words: the connection
/// counts all workers read and each updates for itself.
pub struct SharedWords {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

impl SharedWords {
    pub fn new(words: usize) -> io::Result<SharedWords> {
        let bytes = words
            .max(1)
            .checked_mul(std::mem::size_of::<AtomicU64>())
            .and_then(NonZeroUsize::new)
            .ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh shared anonymous mapping; the kernel zero-fills
        // it, and zero is a valid AtomicU64.
        let ptr = unsafe {
            mman::mmap_anonymous(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }?;
        Ok(SharedWords {
            ptr: ptr.cast(),
            len: words.max(1),
        })
    }

    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping holds len page-aligned, zero-initialised
        // words; other processes change them only through atomics.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no reference into it outlives self.
        let _ =
            unsafe { mman::munmap(self.ptr.cast(), self.len * std::mem::size_of::<AtomicU64>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn locked_pages_are_private_and_zeroed() {
        let mut page = LockedPage::new().unwrap();
        assert!(page.bytes().iter().all(|&b| b == 0));
        page.bytes_mut()[..4].copy_from_slice(b"key!");
        assert_eq!(&page.bytes()[..4], b"key!");
    }

    #[test]
    fn shared_words_start_at_zero() {
        let shared = SharedWords::new(3).unwrap();
        assert_eq!(shared.words().len(), 3);
        shared.words()[2].fetch_add(5, Ordering::Relaxed);
        assert_eq!(shared.words()[2].load(Ordering::Relaxed), 5);
    }

    #[test]
    fn fastopen_can_be_set_on_a_tcp_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_tcp_fastopen(listener.as_fd(), 16).unwrap();
    }
}
