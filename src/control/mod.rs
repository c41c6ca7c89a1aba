//! The private channel between the supervisor and one child: a
//! `SOCK_SEQPACKET` socketpair, so that messages keep their boundaries,
//! arrive in order, and each end learns when the other is gone. Both ends
//! are non-blocking and driven by their process's mio loop; what the
//! socket cannot take yet waits in an outbox.

pub mod message;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};

pub use message::{Malformed, Secret, ToChild, ToSupervisor};

use crate::signals::Signals;
use crate::tls::ticket_keys::wipe;

/// Larger than any message (a cached TLS session is at most 64 KiB).
const MAX_PACKET: usize = 256 * 1024;

pub struct Channel {
    fd: OwnedFd,
    outbox: VecDeque<Vec<u8>>,
    inbuf: Vec<u8>,
}

impl Channel {
    /// Two connected ends, close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel::new(a), Channel::new(b)))
    }

    fn new(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            outbox: VecDeque::new(),
            inbuf: Vec::new(),
        }
    }

    /// For registration with mio (`SourceFd`) and for the list of
    /// descriptors a child keeps.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Queues one packet and writes what the socket takes. An error means
    /// the other end is gone.
    pub fn send(&mut self, packet: Vec<u8>) -> io::Result<()> {
        self.outbox.push_back(packet);
        self.flush()
    }

    /// Writes queued packets until done or the socket is full.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(packet) = self.outbox.front_mut() {
            match socket::send(self.fd.as_raw_fd(), packet, MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => {
                    // Packets may hold keys or session secrets.
                    wipe(packet);
                    self.outbox.pop_front();
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Packets waiting for room in the socket.
    pub fn backlog(&self) -> usize {
        self.outbox.len()
    }

    /// The next message, decoded by `decode`; Ok(None) when none is
    /// waiting; an `UnexpectedEof` error once the other end is gone.
    pub fn recv<M>(
        &mut self,
        decode: fn(&[u8]) -> Result<M, Malformed>,
    ) -> io::Result<Option<Result<M, Malformed>>> {
        if self.inbuf.len() < MAX_PACKET {
            self.inbuf.resize(MAX_PACKET, 0);
        }
        loop {
            match socket::recv(self.fd.as_raw_fd(), &mut self.inbuf, MsgFlags::empty()) {
                // We never send empty packets: zero is the end.
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    let msg = decode(&self.inbuf[..n]);
                    wipe(&mut self.inbuf[..n]);
                    return Ok(Some(msg));
                }
                Err(Errno::EAGAIN) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        for packet in &mut self.outbox {
            wipe(packet);
        }
    }
}

/// How every child of the supervisor (a worker, the delivery process)
/// begins its loop: a poller with SIGTERM, SIGINT and SIGHUP (through a
/// signalfd) under `signals` and its channel under `control`.
pub fn child_poll(
    channel: &Channel,
    signals: Token,
    control: Token,
) -> Result<(Poll, Signals), String> {
    let poll = Poll::new().map_err(|e| format!("creating the poller: {e}"))?;
    let caught = Signals::new(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP])
        .map_err(|e| format!("signals: {e}"))?;
    let registry = poll.registry();
    registry
        .register(&mut SourceFd(&caught.raw_fd()), signals, Interest::READABLE)
        .map_err(|e| format!("registering signals: {e}"))?;
    registry
        .register(
            &mut SourceFd(&channel.raw_fd()),
            control,
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(|e| format!("registering the control channel: {e}"))?;
    Ok((poll, caught))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_keep_their_boundaries_and_the_end_is_seen() {
        let (mut a, mut b) = Channel::pair().unwrap();
        a.send(ToSupervisor::Ready.encode()).unwrap();
        a.send(
            ToSupervisor::Lookup {
                request: 1,
                id: vec![7; 32],
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(
            b.recv(ToSupervisor::decode).unwrap(),
            Some(Ok(ToSupervisor::Ready))
        );
        assert_eq!(
            b.recv(ToSupervisor::decode).unwrap(),
            Some(Ok(ToSupervisor::Lookup {
                request: 1,
                id: vec![7; 32]
            }))
        );
        assert_eq!(b.recv(ToSupervisor::decode).unwrap(), None);
        drop(a);
        let err = b.recv(ToSupervisor::decode).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_full_socket_queues_instead_of_failing() {
        let (mut a, mut b) = Channel::pair().unwrap();
        let big = ToSupervisor::Store {
            id: vec![1; 32],
            data: Secret(vec![2; 60_000]),
        };
        for _ in 0..64 {
            a.send(big.encode()).unwrap();
        }
        assert!(a.backlog() > 0, "the socket buffer should have filled");
        let mut got = 0;
        while got < 64 {
            while let Some(msg) = b.recv(ToSupervisor::decode).unwrap() {
                assert_eq!(msg.unwrap(), big);
                got += 1;
            }
            a.flush().unwrap();
        }
        assert_eq!(a.backlog(), 0);
    }
}
