//! The worker's record of one connection: its socket, its sans-IO session, and the
//! worker's own bookkeeping (which lists it is on, its timer, its topics).

use super::recovery::Cursor;
use super::timer::TimerId;
use crate::session::Session;
use std::net::IpAddr;

/// One connection. Kept small: an idle open connection is this struct, a slab slot and
/// one timer entry; its buffers are back in the pool.
#[derive(Debug)]
pub(crate) struct Conn<S> {
    pub session: Session<S>,
    pub meta: Meta,
}

/// What the worker keeps about a connection beside its session.
#[derive(Debug)]
pub(crate) struct Meta {
    pub stream: mio::net::TcpStream,
    pub generation: u32,
    /// The one wheel entry, armed from `Session::poll_timeout`.
    pub timer: Option<TimerId>,
    /// The peer's address, IPv4 as mapped IPv6 (16 bytes, where `IpAddr` takes 17 and
    /// pads to 20).
    ip: [u8; 16],
    /// Topics this connection subscribed to (for cleanup), and where it stands in each
    /// room's history. Boxed: 8 bytes per connection without topics.
    pub topics: Option<Box<Topics>>,
    /// On the worker's end-of-turn flush list.
    pub dirty: bool,
    /// On the worker's broadcast flush list.
    pub deferred: bool,
    /// Registered for WRITABLE (a write would have blocked).
    pub write_interest: bool,
    /// Reading stopped while paused with the socket possibly holding more.
    pub maybe_readable: bool,
}

/// A connection's topics, in order of subscription.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    pub names: Vec<Box<str>>,
    /// Beside each name: the connection's position in the room's history
    /// (`Cursor::Bare` for a client that did not ask for offsets).
    pub cursors: Vec<Cursor>,
    /// On the worker's list of connections served from history.
    pub replay_listed: bool,
}

impl Topics {
    /// The cursor of `topic`, if subscribed.
    pub fn cursor(&mut self, topic: &str) -> Option<&mut Cursor> {
        let i = self.names.iter().position(|t| &**t == topic)?;
        self.cursors.get_mut(i)
    }
}

impl Meta {
    pub fn new(stream: mio::net::TcpStream, ip: IpAddr, generation: u32) -> Self {
        let ip = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        Meta {
            stream,
            generation,
            timer: None,
            ip,
            topics: None,
            dirty: false,
            deferred: false,
            write_interest: false,
            maybe_readable: false,
        }
    }

    /// The peer's IP address.
    pub fn ip(&self) -> IpAddr {
        std::net::Ipv6Addr::from(self.ip).to_canonical()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conn_stays_small() {
        // An idle connection's footprint is this struct plus its slab slot and timer.
        // Debug builds of mio add a selector id to every socket.
        let size = std::mem::size_of::<super::Conn<()>>();
        let limit = if cfg!(debug_assertions) { 208 } else { 192 };
        assert!(size <= limit, "Conn is {size} bytes");
    }

    #[test]
    fn zero_sized_state_costs_no_bytes() {
        // Each byte of state adds exactly its size, so `()` adds none.
        assert_eq!(std::mem::size_of::<super::Conn<u64>>(), std::mem::size_of::<super::Conn<()>>() + 8);
    }
}
