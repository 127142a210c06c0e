//! The daemon's own connection to a bus on a Unix socket: what it reads is buffered.
//!
//! zbus reads each incoming message with two `recvmsg` calls (its 16-byte fixed header, then
//! the rest), so every D-Bus call costs the daemon two system calls before it is even parsed.
//! Here the read half takes whatever the socket holds, up to [`READ_BUFFER`] bytes, and hands
//! zbus its pieces from that: under load a single `read` brings in the calls of many callers
//! at once (a 16-client soak: 0.8 reads per call instead of 2.1 `recvmsg`, counting the ones
//! that find the socket empty; `recvmsg` was a tenth of the runtime workers' CPU). A body at
//! least as large as the buffer is read straight into zbus's. Writes are zbus's own.
//!
//! The connection does not offer file-descriptor passing: nothing in our API takes one.

use super::super::config::BusChoice;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::net::SocketAddr;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use zbus::address::transport::{Transport, UnixSocket};
use zbus::connection::socket::{ReadHalf, Socket, Split};
use zbus::Address;

/// Most bytes one read takes from the socket: a few hundred small calls.
const READ_BUFFER: usize = 64 * 1024;

/// Where the daemon's connection goes: checked when the daemon starts, connected only when it
/// is about to say hello (a connection that has not authenticated is one the bus may drop).
pub enum DaemonBus {
    /// A Unix socket: the daemon connects itself and reads buffered.
    Socket(SocketAddr),
    /// Anything else (TCP, an address with a `guid=` to check, …): zbus connects.
    Other(BusChoice),
}

impl DaemonBus {
    /// Parses `bus`'s address.
    pub fn new(bus: &BusChoice) -> zbus::Result<DaemonBus> {
        let address = match bus {
            BusChoice::System => Address::system()?,
            BusChoice::Session => Address::session()?,
            BusChoice::Address(address) => address.as_str().try_into()?,
        };
        // zbus checks a guid in the address against the bus's; a socket of ours would not.
        if address.guid().is_some() {
            return Ok(DaemonBus::Other(bus.clone()));
        }
        Ok(match unix_socket_address(&address)? {
            Some(socket) => DaemonBus::Socket(socket),
            None => DaemonBus::Other(bus.clone()),
        })
    }

    /// Connects (in the blocking pool: a bus whose listen queue is full makes `connect` wait)
    /// and returns the builder, not yet authenticated.
    pub async fn connect(self) -> zbus::Result<zbus::connection::Builder<'static>> {
        let socket = match self {
            DaemonBus::Socket(socket) => socket,
            DaemonBus::Other(bus) => return crate::daemon::bus_builder(&bus),
        };
        let stream = tokio::task::spawn_blocking(move || {
            let stream = std::os::unix::net::UnixStream::connect_addr(&socket)?;
            stream.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(stream)
        })
        .await
        .map_err(std::io::Error::other)??;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        Ok(zbus::connection::Builder::socket(BufferedStream(stream)))
    }
}

/// Where `address` is, when it is a Unix socket the daemon can connect to itself.
fn unix_socket_address(address: &Address) -> std::io::Result<Option<SocketAddr>> {
    let Transport::Unix(unix) = address.transport() else {
        return Ok(None);
    };
    match unix.path() {
        UnixSocket::File(path) => SocketAddr::from_pathname(path).map(Some),
        UnixSocket::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).map(Some)
        }
        // Addresses to listen on, not to connect to: zbus says why it cannot use them.
        _ => Ok(None),
    }
}

/// A Unix stream whose read half is buffered.
#[derive(Debug)]
struct BufferedStream(tokio::net::UnixStream);

impl Socket for BufferedStream {
    type ReadHalf = BufferedRead;
    type WriteHalf = OwnedWriteHalf;

    fn split(self) -> Split<BufferedRead, OwnedWriteHalf> {
        let (read, write) = self.0.into_split();
        Split::new(
            BufferedRead {
                socket: read,
                buffer: vec![0; READ_BUFFER].into_boxed_slice(),
                start: 0,
                end: 0,
            },
            write,
        )
    }
}

/// The read half: bytes read from the socket and not yet handed to zbus are
/// `buffer[start..end]`.
#[derive(Debug)]
struct BufferedRead {
    socket: OwnedReadHalf,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
}

#[zbus::export::async_trait::async_trait]
impl ReadHalf for BufferedRead {
    async fn recvmsg(&mut self, wanted: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
        if wanted.is_empty() {
            return Ok((0, Vec::new()));
        }
        if self.start == self.end && wanted.len() >= self.buffer.len() {
            // A large message's body: straight to where it goes.
            return read_ready(&self.socket, wanted)
                .await
                .map(|n| (n, Vec::new()));
        }
        if self.start == self.end {
            let read = read_ready(&self.socket, &mut self.buffer).await?;
            (self.start, self.end) = (0, read);
            if read == 0 {
                return Ok((0, Vec::new()));
            }
        }
        let n = wanted.len().min(self.end - self.start);
        wanted[..n].copy_from_slice(&self.buffer[self.start..self.start + n]);
        self.start += n;
        Ok((n, Vec::new()))
    }

    async fn peer_credentials(&mut self) -> std::io::Result<zbus::fdo::ConnectionCredentials> {
        ReadHalf::peer_credentials(&mut self.socket).await
    }
}

/// Reads what the socket holds into `buffer` (0 at its end), waiting until it holds something.
/// Readiness is given up only when the socket says it is empty (tokio's `read` gives it up
/// after any short read, which costs a trip through epoll per read).
async fn read_ready(socket: &OwnedReadHalf, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match socket.try_read(buffer) {
            Err(err) if err.kind() == ErrorKind::WouldBlock => socket.readable().await?,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            read => return read,
        }
    }
}
