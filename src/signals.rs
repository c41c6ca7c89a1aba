//! Signals as readable events for a mio loop, through `signalfd`: the
//! signals are blocked and read from a descriptor, so no handler runs in
//! the middle of the loop and nothing global is left behind in a forked
//! child (a child inherits the blocked mask and opens its own descriptor).

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks `signals` for this (single-threaded) process and opens a
    /// descriptor that reports them.
    pub fn new(signals: &[Signal]) -> io::Result<Signals> {
        let mut mask = SigSet::empty();
        for &s in signals {
            mask.add(s);
        }
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// For registration with mio (`SourceFd`).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    /// Every signal delivered since the last call (several of one kind
    /// may arrive as one).
    pub fn pending(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(signal) = Signal::try_from(info.ssi_signo as i32)
                && !out.contains(&signal)
            {
                out.push(signal);
            }
        }
        out
    }
}
