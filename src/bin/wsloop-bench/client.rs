//! One client connection: its socket, buffers, decoder and lifecycle.
//!
//! ```text
//!  Connecting --TCP up, request queued--> Handshaking --valid 101--> Open
//!      |                                      |                       |
//!      | refused, timeout                     | bad response,         | our close frame
//!      v                                      v timeout, EOF          v
//!   dropped <------------------------------------------------- Closing { acked }
//!                close reply and EOF, close timeout,         (acked: the server's
//!                or any error on the way                      close reply arrived)
//! ```
//!
//! An `Open` connection also ends when the server closes it (`unexpected_close`) or
//! the TCP stream ends (`disconnected`). "Dropped" is the connection leaving the
//! worker's slab; there is no `Closed` value to forget to remove.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use crate::deflate::{self, Compressor, Inflater};
use mio::net::TcpStream;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use wsloop::proto::frame::header_len;
use wsloop::proto::handshake::{self, ClientHandshakeError, ParseStatus};
use wsloop::proto::{encode_close, encode_frame, CloseCode, Decoder, DecoderConfig, Event, OpCode, ProtocolError};

/// Where a connection is in its life (see the module diagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    /// The upgrade request is written or queued; `key` is what we sent.
    Handshaking {
        key: [u8; 24],
    },
    Open,
    Closing {
        acked: bool,
    },
}

/// What a connection does once open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Echo,
    Idle,
    Publisher,
    Subscriber,
}

/// Bytes waiting to be written, in front of the socket.
#[derive(Default)]
pub struct Outbox {
    buf: Vec<u8>,
    pos: usize,
    /// permessage-deflate was negotiated: data frames go out compressed.
    pub compressor: Option<Box<Compressor>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("pending", &self.pending()).field("deflate", &self.compressor.is_some()).finish()
    }
}

impl Outbox {
    /// Queues one masked frame (a data frame compressed, RSV1 set, when
    /// permessage-deflate was negotiated).
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
        if let Some(mut c) = self.compressor.take().filter(|_| !opcode.is_control()) {
            let at = self.buf.len();
            self.plain_frame(opcode, c.compress(payload), mask);
            self.buf[at] |= 0x40;
            self.compressor = Some(c);
            return;
        }
        self.plain_frame(opcode, payload, mask)
    }

    fn plain_frame(&mut self, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
        let at = self.buf.len();
        self.buf.resize(at + header_len(payload.len() as u64, true) + payload.len(), 0);
        let n = encode_frame(&mut self.buf[at..], true, opcode, payload, Some(mask))
            .expect("sized with header_len for the payload");
        debug_assert_eq!(at + n, self.buf.len());
    }

    /// Queues a masked close frame.
    pub fn close(&mut self, code: CloseCode, mask: [u8; 4]) {
        let at = self.buf.len();
        self.buf.resize(at + 2 + 4 + 2, 0);
        let n = encode_close(&mut self.buf[at..], Some((code, "")), Some(mask)).expect("8 bytes fit a bare close");
        self.buf.truncate(at + n);
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Puts `bytes` in front of the final CRLF of the request queued since `at` (the
    /// blank line ending its head).
    fn insert_before_end(&mut self, at: usize, bytes: &[u8]) {
        let end = self.buf.len() - 2;
        debug_assert!(self.buf.len() >= at + 4 && &self.buf[end - 2..] == b"\r\n\r\n");
        self.buf.splice(end..end, bytes.iter().copied());
    }

    /// Bytes not yet handed on (to the socket or to TLS).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Writes until empty or `WouldBlock`, through `tls` when there is one.
    pub fn flush(&mut self, stream: &mut TcpStream, mut tls: Option<&mut rustls::ClientConnection>) -> io::Result<()> {
        while self.pos < self.buf.len() || tls.as_ref().is_some_and(|t| t.wants_write()) {
            let res = match tls.as_deref_mut() {
                Some(t) => crate::tls::write(t, stream, &self.buf[self.pos..]).and_then(|n| {
                    // Nothing taken: rustls is at its limit or its records wait for the socket.
                    if n == 0 {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(n)
                    }
                }),
                None => stream.write(&self.buf[self.pos..]),
            };
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(())
    }
}

/// Per-connection bookkeeping the event handlers update.
#[derive(Debug)]
pub struct Session {
    pub state: State,
    pub role: Role,
    /// When the TCP connect was started.
    pub started: Instant,
    /// Echo: (send time, payload seed) of each message in flight, oldest first.
    pub inflight: VecDeque<(Instant, u64)>,
    /// Subscriber: the sequence number expected next.
    pub next_seq: u64,
}

/// What became of a read attempt.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Bytes were appended to the read buffer; `short` when fewer than asked for (the
    /// socket's receive queue was empty at that moment).
    Data {
        short: bool,
        /// Bytes read.
        n: usize,
    },
    WouldBlock,
    Eof,
    Error(io::Error),
}

/// A connection: socket, read buffer, decoder, outbox and session.
pub struct Conn {
    pub stream: TcpStream,
    /// wss://: the client side of TLS.
    pub tls: Option<Box<rustls::ClientConnection>>,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    decoder: Decoder,
    pub out: Outbox,
    pub session: Session,
    /// Offer permessage-deflate (`--deflate`).
    offer_deflate: bool,
    /// permessage-deflate was negotiated: the receiving side.
    inflater: Option<Box<Inflater>>,
}

/// Starts a non-blocking connect from `source` (if given) to `target`.
pub fn start_connect(target: SocketAddr, source: Option<SocketAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(src) = source {
        if src.is_ipv4() && src.port() == 0 {
            // Let connect() pick the port: bind() would search the bound-port table,
            // which gets slow with thousands of connections per source address.
            crate::sys::set_bind_address_no_port(&socket)?;
        }
        socket.bind(&SockAddr::from(src))?;
    }
    match socket.connect(&SockAddr::from(target)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// The outcome of checking a connect in progress.
pub enum ConnectStatus {
    Connected,
    Pending,
    Failed(io::Error),
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        tls: Option<Box<rustls::ClientConnection>>,
        role: Role,
        rbuf_len: usize,
        now: Instant,
        offer_deflate: bool,
    ) -> Conn {
        Conn {
            stream,
            tls,
            rbuf: vec![0u8; rbuf_len].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            decoder: Decoder::new(),
            out: Outbox::default(),
            session: Session { state: State::Connecting, role, started: now, inflight: VecDeque::new(), next_seq: 0 },
            offer_deflate,
            inflater: None,
        }
    }

    /// Bytes queued or TLS records not yet written.
    pub fn pending(&self) -> usize {
        self.out.pending() + usize::from(self.tls.as_ref().is_some_and(|t| t.wants_write()))
    }

    /// Writes what is queued (see [`Outbox::flush`]).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush(&mut self.stream, self.tls.as_deref_mut())
    }

    /// Checks a connect in progress (after any readiness event, which may be spurious).
    pub fn check_connect(&mut self) -> ConnectStatus {
        match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => return ConnectStatus::Failed(e),
            Ok(None) => {}
        }
        match self.stream.peer_addr() {
            Ok(_) => ConnectStatus::Connected,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectStatus::Pending,
            Err(e) => ConnectStatus::Failed(e),
        }
    }

    /// Queues the upgrade request and moves to `Handshaking`.
    pub fn send_request(&mut self, host: &str, path: &str, nonce: [u8; 16]) {
        let mut req = [0u8; 1024];
        let at = self.out.pending();
        match handshake::write_client_request(&mut req, host, path, nonce) {
            Ok((n, key)) => {
                self.out.raw(&req[..n]);
                self.session.state = State::Handshaking { key };
            }
            Err(e) => {
                let mut big = vec![0u8; e.required];
                let (n, key) =
                    handshake::write_client_request(&mut big, host, path, nonce).expect("buffer of the required size");
                self.out.raw(&big[..n]);
                self.session.state = State::Handshaking { key };
            }
        }
        if self.offer_deflate {
            // The offer goes before the blank line that ends the request.
            self.out.insert_before_end(at, deflate::OFFER.as_bytes());
        }
    }

    /// The server accepted the permessage-deflate offer.
    pub fn deflate_negotiated(&self) -> bool {
        self.inflater.is_some()
    }

    /// Reads once into the free end of the read buffer.
    pub fn read_once(&mut self) -> ReadOutcome {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() {
            // The decoder wants unconsumed bytes presented again at the front.
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rend == self.rbuf.len() {
            // Cannot happen after a decode pass (frames over the buffer are streamed)
            // but can during the handshake: a response head larger than the buffer.
            return ReadOutcome::Error(io::Error::other("read buffer full"));
        }
        loop {
            let res = match self.tls.as_deref_mut() {
                Some(t) => crate::tls::read(t, &mut self.stream, &mut self.rbuf[self.rend..]),
                None => self.stream.read(&mut self.rbuf[self.rend..]),
            };
            match res {
                Ok(0) => return ReadOutcome::Eof,
                Ok(n) => {
                    // Through TLS a short read says nothing about the socket (rustls
                    // may hold more): read on to WouldBlock.
                    let short = self.tls.is_none() && self.rend + n < self.rbuf.len();
                    self.rend += n;
                    return ReadOutcome::Data { short, n };
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return ReadOutcome::Error(e),
            }
        }
    }

    /// Parses the handshake response from the read buffer: `Ok(true)` when the
    /// connection is now open (bytes after the head stay buffered as frames).
    pub fn parse_handshake(&mut self) -> Result<bool, ClientHandshakeError> {
        let State::Handshaking { key } = self.session.state else {
            return Ok(false);
        };
        match handshake::parse_response(&self.rbuf[self.rstart..self.rend], &key)? {
            ParseStatus::Partial => Ok(false),
            ParseStatus::Complete((), n) => {
                if self.offer_deflate {
                    if let Some((i, c)) = deflate::from_response(&self.rbuf[self.rstart..self.rstart + n]) {
                        self.inflater = Some(i);
                        self.out.compressor = Some(c);
                        self.decoder.set_deflate(true);
                    }
                }
                self.rstart += n;
                self.session.state = State::Open;
                Ok(true)
            }
        }
    }

    /// Decodes every complete event in the read buffer and hands each to `on_event`
    /// with the outbox (for replies) and the session. Stops early when `on_event`
    /// returns `false` (the connection is to be dropped).
    pub fn decode_events<F>(&mut self, cfg: &DecoderConfig, mut on_event: F) -> Result<bool, ProtocolError>
    where
        F: FnMut(Event<'_>, &mut Outbox, &mut Session) -> bool,
    {
        let Conn { rbuf, rstart, rend, decoder, out, session, inflater, .. } = self;
        loop {
            let (n, ev) = decoder.decode(&mut rbuf[*rstart..*rend], cfg)?;
            *rstart += n;
            let Some(ev) = ev else {
                if n == 0 {
                    return Ok(true);
                }
                continue;
            };
            // Compressed messages are inflated here (only with --deflate: the decoder
            // lets RSV1 in only after the server accepted the offer).
            let ev = match (ev, inflater.as_mut()) {
                (Event::Deflated { end: false, payload, .. }, Some(i)) => {
                    let first = !i.in_message;
                    i.inflate(payload, first, false).map_err(|_| ProtocolError::CorruptCompressed)?;
                    i.in_message = true;
                    continue;
                }
                (Event::Deflated { text, end: true, payload }, Some(i)) => {
                    let first = !i.in_message;
                    i.inflate(payload, first, true).map_err(|_| ProtocolError::CorruptCompressed)?;
                    i.in_message = false;
                    if text {
                        Event::Text(std::str::from_utf8(&i.msg).map_err(|_| ProtocolError::InvalidUtf8)?)
                    } else {
                        Event::Binary(&i.msg)
                    }
                }
                (ev, _) => ev,
            };
            if !on_event(ev, out, session) {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsloop::proto::frame::{FrameHeader, Parsed, Role as WireRole};
    use wsloop::proto::mask::apply_mask;

    #[test]
    fn outbox_frames_are_masked_client_frames() {
        let mut out = Outbox::default();
        out.frame(OpCode::Binary, b"hello", [1, 2, 3, 4]);
        out.close(CloseCode::NORMAL, [5, 6, 7, 8]);
        let wire = out.buf.clone();
        let Parsed::Complete(h, hl) = FrameHeader::parse(&wire, WireRole::Server, 0).unwrap() else { panic!() };
        assert_eq!((h.opcode, h.payload_len, h.mask), (OpCode::Binary, 5, Some([1, 2, 3, 4])));
        let mut body = wire[hl..hl + 5].to_vec();
        apply_mask(&mut body, [1, 2, 3, 4], 0);
        assert_eq!(body, b"hello");
        let rest = &wire[hl + 5..];
        let Parsed::Complete(c, cl) = FrameHeader::parse(rest, WireRole::Server, 0).unwrap() else { panic!() };
        assert_eq!((c.opcode, c.payload_len), (OpCode::Close, 2));
        let mut code = rest[cl..cl + 2].to_vec();
        apply_mask(&mut code, [5, 6, 7, 8], 0);
        assert_eq!(code, 1000u16.to_be_bytes());
        assert_eq!(out.pending(), wire.len());
    }
}
