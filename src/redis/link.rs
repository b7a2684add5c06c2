//! One connection of the bridge to one Redis node: the socket (plain or TLS), its
//! buffers, and where it is in its life.
//!
//! ```text
//!          retry time passed             connected (AUTH, SUBSCRIBE queued)
//!   Down ---------------------> Connecting ----------------------------> Ready
//!    ^  <------------------------'   timeout / refused                   |
//!    '-------------------------------------------------------------------'
//!          error, EOF, bad reply: wait the backoff (doubling, capped), retry
//! ```
//!
//! With TLS the handshake runs once the link is `Ready`: rustls holds AUTH and what
//! follows until it completes, and a failed handshake is a read error like any other.

use super::command::Outgoing;
use super::{Endpoint, RedisConfig, TlsClient};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

/// Reads per link per turn, and the input buffered before it is parsed.
const MAX_READS_PER_TURN: usize = 64;
pub(crate) const READ_CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Down,
    Connecting,
    Ready,
}

/// A reply the publishing link waits for, in the order the commands were sent.
pub(crate) enum Awaited {
    /// A publish, kept so that it can be sent again where `MOVED` or `ASK` points.
    Publish(Outgoing),
    /// `ASKING`, sent before a publish redirected by `ASK`.
    Asking,
}

/// Outcome of reading a link.
pub(crate) enum Read_ {
    /// Bytes were appended to the link's input (maybe none).
    Data,
    /// The peer closed the connection.
    Eof,
}

pub(crate) struct Link {
    pub token: Token,
    pub name: &'static str,
    pub at: Endpoint,
    pub phase: Phase,
    stream: Option<TcpStream>,
    #[cfg(feature = "tls")]
    tls: Option<Box<rustls::ClientConnection>>,
    /// Down: when to retry. Connecting: when to give up.
    pub deadline: Instant,
    pub backoff: Duration,
    pub inbuf: Vec<u8>,
    pub out: Vec<u8>,
    written: usize,
    /// The first reply on this connection answers AUTH.
    pub auth_pending: bool,
    /// Commands sent or queued on the publishing link and not yet answered.
    pub awaiting: VecDeque<Awaited>,
    /// Read stopped at the per-turn cap: read again without waiting for an event.
    pub read_more: bool,
    /// Has been Ready once: later connections are reconnects.
    pub ever_up: bool,
    /// Got a good reply on this connection: the next failure starts the backoff over.
    pub healthy: bool,
    /// When the link went down after having been up, for the recovery log.
    pub down_since: Option<Instant>,
    pub last_warn: Option<Instant>,
}

impl Link {
    pub fn new(token: Token, name: &'static str, at: Endpoint, backoff: Duration, now: Instant) -> Link {
        Link {
            token,
            name,
            at,
            phase: Phase::Down,
            stream: None,
            #[cfg(feature = "tls")]
            tls: None,
            deadline: now,
            backoff,
            inbuf: Vec::new(),
            out: Vec::new(),
            written: 0,
            auth_pending: false,
            awaiting: VecDeque::new(),
            read_more: false,
            ever_up: false,
            healthy: false,
            down_since: None,
            last_warn: None,
        }
    }

    /// Ready, and past the TLS handshake if there is one: what the `connected` gauge
    /// reports.
    pub fn is_up(&self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            return false;
        }
        self.phase == Phase::Ready
    }

    pub fn pending_output(&self) -> usize {
        self.out.len() - self.written
    }

    /// Opens the socket (and the TLS session); the link is `Connecting` until the
    /// socket says it is connected.
    pub fn connect(
        &mut self,
        registry: &Registry,
        cfg: &RedisConfig,
        tls: Option<&TlsClient>,
        now: Instant,
    ) -> Result<(), String> {
        let addr = match (self.at.host.as_str(), self.at.port).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => a,
            Ok(None) => return Err("the host name has no address".into()),
            Err(e) => return Err(format!("resolving {}: {e}", self.at.host)),
        };
        #[cfg(feature = "tls")]
        {
            self.tls = match tls {
                Some(c) => Some(Box::new(super::tls::session(c, &self.at.host)?)),
                None => None,
            };
        }
        #[cfg(not(feature = "tls"))]
        if let Some(never) = tls {
            match *never {}
        }
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        // Publishes are small and pipelined: no Nagle delay. Keepalive notices a Redis
        // host that vanished without a reset.
        let _ = stream.set_nodelay(true);
        let ka = socket2::TcpKeepalive::new().with_time(Duration::from_secs(15)).with_interval(Duration::from_secs(5));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
        registry
            .register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("register: {e}"))?;
        self.stream = Some(stream);
        self.phase = Phase::Connecting;
        self.deadline = now + cfg.connect_timeout;
        Ok(())
    }

    /// Whether a connection in progress has completed (mio: on a writable event, a
    /// pending error or a peer address tells).
    pub fn check_connected(&self) -> io::Result<bool> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(false);
        };
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// Closes the socket and empties the buffers; returns what was awaiting a reply.
    pub fn close(&mut self, registry: &Registry) -> VecDeque<Awaited> {
        if let Some(mut s) = self.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        #[cfg(feature = "tls")]
        {
            self.tls = None;
        }
        self.phase = Phase::Down;
        self.inbuf = Vec::new();
        self.out = Vec::new();
        self.written = 0;
        self.read_more = false;
        self.auth_pending = false;
        std::mem::take(&mut self.awaiting)
    }

    /// Writes queued output until done or the socket is full.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            // rustls takes plaintext up to its buffer limit (and holds it through the
            // handshake); the rest waits in `out`.
            while self.written < self.out.len() {
                match tls.writer().write(&self.out[self.written..]) {
                    Ok(0) => break,
                    Ok(n) => self.written += n,
                    Err(e) => return Err(e),
                }
            }
            while tls.wants_write() {
                match tls.write_tls(stream) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.compact();
            return Ok(());
        }
        while self.written < self.out.len() {
            match stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.compact();
        Ok(())
    }

    fn compact(&mut self) {
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written > self.out.len() / 2 {
            self.out.drain(..self.written);
            self.written = 0;
        }
    }

    /// Reads what the link has (up to the per-turn cap) into its input buffer.
    pub fn read(&mut self, scratch: &mut [u8]) -> io::Result<Read_> {
        self.read_more = false;
        let Some(stream) = self.stream.as_mut() else {
            return Ok(Read_::Data);
        };
        for _ in 0..MAX_READS_PER_TURN {
            #[cfg(feature = "tls")]
            if let Some(tls) = self.tls.as_mut() {
                let eof = match tls.read_tls(stream) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read_::Data),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                tls.process_new_packets().map_err(|e| io::Error::other(format!("TLS: {e}")))?;
                loop {
                    match tls.reader().read(scratch) {
                        Ok(0) => return Ok(Read_::Eof),
                        Ok(n) => self.inbuf.extend_from_slice(&scratch[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Read_::Eof),
                        Err(e) => return Err(e),
                    }
                }
                if eof {
                    return Ok(Read_::Eof);
                }
                if self.inbuf.len() >= READ_CHUNK {
                    self.read_more = true;
                    return Ok(Read_::Data);
                }
                continue;
            }
            match stream.read(scratch) {
                Ok(0) => return Ok(Read_::Eof),
                Ok(n) => {
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    if self.inbuf.len() >= READ_CHUNK {
                        // Parse before reading more: the buffer holds at most one
                        // partial reply beyond this.
                        self.read_more = true;
                        return Ok(Read_::Data);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read_::Data),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.read_more = true;
        Ok(Read_::Data)
    }
}
