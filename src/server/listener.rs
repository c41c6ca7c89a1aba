//! Listening sockets, bound by the supervisor: one socket per configured
//! address for each worker slot, joined in a `SO_REUSEPORT` group, so the
//! kernel spreads new connections across the workers by their addresses
//! and ports. The supervisor keeps every socket open: connections waiting
//! in the backlog of a worker that dies are still there for its
//! replacement, instead of being reset with the socket.
//!
//! Built with socket2 so IPv6 listeners are IPv6-only (a `[::]` and a
//! `0.0.0.0` listener on one port can then coexist, as in every MTA's
//! configuration), the backlog is ours to choose, and TCP Fast Open is on.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::os;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Plain SMTP that offers STARTTLS.
    Starttls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

pub struct Listener {
    pub socket: std::net::TcpListener,
    pub kind: Kind,
    pub addr: SocketAddr,
}

impl Listener {
    /// A descriptor of its own for a worker (the supervisor keeps its own).
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(Listener {
            socket: self.socket.try_clone()?,
            kind: self.kind,
            addr: self.addr,
        })
    }
}

const BACKLOG: i32 = 1024;
/// Pending TCP Fast Open requests (SYNs with data) per listener.
const FASTOPEN_QUEUE: i32 = 256;

/// Whether accepted sockets inherit TCP_NODELAY from the listener (Linux
/// copies the listener's TCP options into each new socket); elsewhere it is
/// set on every accepted socket.
pub const NODELAY_INHERITED: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Binds every address once per slot; slot `s` gets `sets[s]`, in the
/// order of `wanted`. A port of 0 is chosen by the kernel for the first
/// slot and used for the others. The sockets take no connection until
/// [`listen_all`]: binding needs root (port 25), and the start has
/// recovery to finish, as the mail user, before any client may connect.
pub fn bind_sets(
    wanted: &[(SocketAddr, Kind)],
    slots: usize,
) -> Result<Vec<Vec<Listener>>, String> {
    let mut sets: Vec<Vec<Listener>> = (0..slots).map(|_| Vec::new()).collect();
    for &(addr, kind) in wanted {
        let mut addr = addr;
        for set in &mut sets {
            let l = bind(addr, kind).map_err(|e| format!("listening on {addr}: {e}"))?;
            addr = l.addr;
            set.push(l);
        }
    }
    Ok(sets)
}

/// Opens every bound socket to connections.
pub fn listen_all(sets: &[Vec<Listener>]) -> Result<(), String> {
    for l in sets.iter().flatten() {
        socket2::SockRef::from(&l.socket)
            .listen(BACKLOG)
            .map_err(|e| format!("listening on {}: {e}", l.addr))?;
    }
    Ok(())
}

fn bind(addr: SocketAddr, kind: Kind) -> io::Result<Listener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    // One socket per worker slot on the same address (the kernel admits
    // only sockets of the same user into the group).
    socket.set_reuse_port(true)?;
    // Replies go out whole; Nagle would only hold back the next one.
    // Accepted sockets inherit this on Linux, which saves a setsockopt per
    // connection (see `NODELAY_INHERITED`).
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    // A client's first commands may ride in its SYN (net.ipv4.tcp_fastopen
    // must have the server bit, 2, set for the kernel to accept them).
    if let Err(e) = os::set_tcp_fastopen(socket.as_fd(), FASTOPEN_QUEUE) {
        log::warn!("TCP Fast Open not available on {addr}: {e}");
    }
    socket.bind(&addr.into())?;
    let std_listener: std::net::TcpListener = socket.into();
    let addr = std_listener.local_addr()?;
    Ok(Listener {
        socket: std_listener,
        kind,
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(l: &std::net::TcpListener) -> std::net::TcpStream {
        loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    #[test]
    fn a_bound_socket_refuses_connections_until_it_listens() {
        let sets = bind_sets(&[("127.0.0.1:0".parse().unwrap(), Kind::Starttls)], 2).unwrap();
        let addr = sets[0][0].addr;
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        listen_all(&sets).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
    }

    #[test]
    fn accepted_sockets_have_nodelay() {
        let sets = bind_sets(&[("127.0.0.1:0".parse().unwrap(), Kind::Implicit)], 1).unwrap();
        listen_all(&sets).unwrap();
        let l = &sets[0][0];
        let _client = std::net::TcpStream::connect(l.addr).unwrap();
        let accepted = accept(&l.socket);
        if NODELAY_INHERITED {
            assert!(accepted.nodelay().unwrap());
        }
    }

    #[test]
    fn every_slot_listens_on_the_same_ports() {
        let wanted = [
            ("127.0.0.1:0".parse().unwrap(), Kind::Starttls),
            ("127.0.0.1:0".parse().unwrap(), Kind::Implicit),
        ];
        let sets = bind_sets(&wanted, 3).unwrap();
        listen_all(&sets).unwrap();
        assert_eq!(sets.len(), 3);
        for set in &sets {
            assert_eq!(set[0].addr, sets[0][0].addr);
            assert_eq!(set[1].addr, sets[0][1].addr);
            assert_eq!(set[1].kind, Kind::Implicit);
        }
        assert_ne!(sets[0][0].addr, sets[0][1].addr);
        // The kernel spreads connections over the group; every one is
        // accepted by some slot.
        let clients: Vec<_> = (0..12)
            .map(|_| std::net::TcpStream::connect(sets[0][0].addr).unwrap())
            .collect();
        let mut accepted = 0;
        for set in &sets {
            while set[0].socket.accept().is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, clients.len());
    }
}
