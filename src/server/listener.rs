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

pub fn bind(addr: SocketAddr, kind: Kind) -> io::Result<Listener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
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
