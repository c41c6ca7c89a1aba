//! Listening sockets. Built with socket2 so IPv6 listeners are IPv6-only
//! (a `[::]` and a `0.0.0.0` listener on one port can then coexist, as in
//! every MTA's configuration) and the backlog is ours to choose.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Plain SMTP that offers STARTTLS.
    Starttls,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

pub struct Listener {
    pub socket: TcpListener,
    pub kind: Kind,
    pub addr: SocketAddr,
}

const BACKLOG: i32 = 1024;

/// Whether accepted sockets inherit TCP_NODELAY from the listener (Linux
/// copies the listener's TCP options into each new socket); elsewhere it is
/// set on every accepted socket.
pub const NODELAY_INHERITED: bool = cfg!(any(target_os = "linux", target_os = "android"));

pub fn bind(addr: SocketAddr, kind: Kind) -> io::Result<Listener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    // Replies go out whole; Nagle would only hold back the next one.
    // Accepted sockets inherit this on Linux, which saves a setsockopt per
    // connection (see `NODELAY_INHERITED`).
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    let std_listener: std::net::TcpListener = socket.into();
    let addr = std_listener.local_addr()?;
    Ok(Listener {
        socket: TcpListener::from_std(std_listener),
        kind,
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_have_nodelay() {
        let l = bind("127.0.0.1:0".parse().unwrap(), Kind::Implicit).unwrap();
        let _client = std::net::TcpStream::connect(l.addr).unwrap();
        let accepted = loop {
            match l.socket.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        if NODELAY_INHERITED {
            assert!(accepted.nodelay().unwrap());
        }
    }
}
