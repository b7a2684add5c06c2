//! Per-connection state: the lifecycle, the outgoing queue and the timestamps the
//! timer wheel checks.
//!
//! ```text
//!                 101 sent                we send close
//!  +-------------+ -------> +------+ ----------------------> +---------+
//!  | Handshaking |          | Open |                         | Closing |
//!  +-------------+          +------+ --+                     +---------+
//!        |                     |       | peer's close:            |  peer's close,
//!        | HTTP error          | reset | we answer it             |  or close_timeout
//!        v                     v       v                          v
//!  +--------------------------------------------------------------------+
//!  | Closed: flush what is queued, shut down our side, drop on the      |
//!  | peer's EOF or after close_timeout                                  |
//!  +--------------------------------------------------------------------+
//! ```
//! A protocol violation sends its close frame and goes straight to Closed (RFC 6455
//! 7.1.7, "fail the connection"). A reset or EOF drops the connection from any state.

use crate::buf::{BufPool, Ring};
use crate::proto::frame::{server_header, OpCode};
use crate::proto::{CloseCode, Decoder};
use crate::server::timer::TimerId;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::IpAddr;

/// Where a connection is in its life. Each transition happens in one place in
/// `worker.rs` (`open`, `start_close`, `finish`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the HTTP upgrade request.
    Handshaking,
    /// Exchanging messages.
    Open,
    /// We sent a close frame and wait for the peer's; data frames are ignored.
    Closing,
    /// Done: remaining output is flushed, then the socket is dropped.
    Closed,
}

/// Outgoing bytes: a pooled ring, and chunks beyond it for messages that do not fit.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    ring: Option<Ring>,
    overflow: Option<Box<Overflow>>,
    len: usize,
}

#[derive(Debug, Default)]
struct Overflow {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already written.
    front_off: usize,
}

/// New overflow chunks are at least this large, so many small messages queued behind a
/// full ring share an allocation.
const OVERFLOW_CHUNK: usize = 64 << 10;

/// Result of a flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Everything is written; the ring went back to the pool.
    Empty,
    /// The socket would block with bytes still queued.
    Pending,
}

impl Outbox {
    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a frame with `payload`. When nothing is queued and the frame is larger than
    /// a ring, it is first written straight to the socket, so a large message is copied
    /// at most once (its unsent rest).
    #[inline(always)]
    pub fn queue_frame<W: Write>(
        &mut self,
        pool: &mut BufPool,
        sock: &mut W,
        opcode: OpCode,
        payload: &[u8],
        direct: bool,
    ) -> io::Result<usize> {
        let (hbuf, hl) = server_header(opcode, payload.len());
        let total = hl + payload.len();
        if self.overflow.is_none() && hbuf.len() + payload.len() <= pool.ring_size() {
            // Common case: header and payload go into the ring's tail together.
            let ring = self.ring.get_or_insert_with(|| pool.take());
            if ring.push_frame(&hbuf, hl, payload) {
                self.len += total;
                return Ok(total);
            }
        }
        self.queue_frame_slow(pool, sock, &hbuf[..hl], payload, direct)
    }

    #[inline(never)]
    fn queue_frame_slow<W: Write>(
        &mut self,
        pool: &mut BufPool,
        sock: &mut W,
        header: &[u8],
        payload: &[u8],
        direct: bool,
    ) -> io::Result<usize> {
        let hl = header.len();
        let mut written = 0;
        if direct && self.len == 0 && hl + payload.len() > pool.ring_size() {
            written = write_all_nonblocking(sock, &[header, payload])?;
        }
        if written < hl {
            self.push(pool, &header[written..]);
            self.push(pool, payload);
        } else {
            self.push(pool, &payload[written - hl..]);
        }
        Ok(hl + payload.len())
    }

    /// Queues raw bytes (a pre-encoded frame, an HTTP response).
    pub fn push(&mut self, pool: &mut BufPool, mut data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if self.overflow.is_none() {
            let ring = self.ring.get_or_insert_with(|| pool.take());
            let n = ring.push(data);
            data = &data[n..];
            if data.is_empty() {
                return;
            }
        }
        let of = self.overflow.get_or_insert_with(Default::default);
        if let Some(back) = of.chunks.back_mut() {
            if back.capacity() - back.len() >= data.len() {
                back.extend_from_slice(data);
                return;
            }
        }
        let mut chunk = Vec::with_capacity(data.len().max(OVERFLOW_CHUNK));
        chunk.extend_from_slice(data);
        of.chunks.push_back(chunk);
    }

    /// Puts bytes in front of everything queued (the 101 response written after
    /// `on_open` already queued messages).
    pub fn push_front(&mut self, pool: &mut BufPool, data: &[u8]) {
        let ring = self.ring.get_or_insert_with(|| pool.take());
        if ring.push_front(data) {
            self.len += data.len();
            return;
        }
        // Rare (on_open queued more than a ring's free space): re-queue everything
        // behind `data`, at the cost of one temporary copy.
        let mut rest = Vec::with_capacity(self.len);
        if let Some(r) = &self.ring {
            let (a, b) = r.as_slices();
            rest.extend_from_slice(a);
            rest.extend_from_slice(b);
        }
        if let Some(of) = &self.overflow {
            for (i, c) in of.chunks.iter().enumerate() {
                rest.extend_from_slice(if i == 0 { &c[of.front_off..] } else { c });
            }
        }
        self.discard(pool);
        self.push(pool, data);
        self.push(pool, &rest);
    }

    /// Sends `data` ahead of everything queued: straight to the socket when nothing is
    /// queued (so no ring is taken for a handshake response), else in front of the queue.
    pub fn send_first<W: Write>(&mut self, pool: &mut BufPool, sock: &mut W, data: &[u8]) {
        if self.len == 0 {
            // An error here resurfaces on the next flush or read, which drops the socket.
            let n = write_all_nonblocking(sock, &[data]).unwrap_or(0);
            self.push(pool, &data[n..]);
        } else {
            self.push_front(pool, data);
        }
    }

    /// Writes until the socket would block or nothing is left. Returns the bytes written
    /// and whether anything remains.
    #[inline(always)]
    pub fn flush<W: Write>(&mut self, pool: &mut BufPool, sock: &mut W) -> io::Result<(usize, Flushed)> {
        if self.overflow.is_some() || self.len == 0 {
            return self.flush_general(pool, sock);
        }
        let Some(ring) = self.ring.as_mut() else {
            return self.flush_general(pool, sock);
        };
        // The common case: everything is in the ring, usually one slice.
        let mut total = 0;
        loop {
            let (a, b) = ring.as_slices();
            let res =
                if b.is_empty() { sock.write(a) } else { sock.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) };
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n;
                    self.len -= n;
                    if self.len == 0 {
                        break;
                    }
                    ring.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((total, Flushed::Pending)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(ring) = self.ring.take() {
            pool.give(ring);
        }
        Ok((total, Flushed::Empty))
    }

    /// `flush` with overflow chunks behind the ring (or nothing queued).
    #[inline(never)]
    fn flush_general<W: Write>(&mut self, pool: &mut BufPool, sock: &mut W) -> io::Result<(usize, Flushed)> {
        let mut total = 0;
        while self.len > 0 {
            let mut extra: [&[u8]; 4] = [&[]; 4];
            if let Some(of) = &self.overflow {
                for (i, c) in of.chunks.iter().take(4).enumerate() {
                    extra[i] = if i == 0 { &c[of.front_off..] } else { &c[..] };
                }
            }
            let ring_len = self.ring.as_ref().map_or(0, |r| r.len());
            let res = match self.ring.as_mut() {
                // Consumes the ring's share of what it wrote.
                Some(ring) => ring.write_to(sock, &extra),
                None => sock.write_vectored(&extra.map(IoSlice::new)),
            };
            let n = match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += n;
            self.len -= n;
            self.consume_overflow(n.saturating_sub(ring_len));
        }
        if self.len == 0 {
            if let Some(ring) = self.ring.take() {
                pool.give(ring);
            }
            if self.overflow.is_some() {
                self.overflow = None;
            }
            return Ok((total, Flushed::Empty));
        }
        Ok((total, Flushed::Pending))
    }

    fn consume_overflow(&mut self, mut n: usize) {
        let Some(of) = self.overflow.as_mut() else {
            return;
        };
        while n > 0 {
            let Some(front) = of.chunks.front() else {
                break;
            };
            let left = front.len() - of.front_off;
            if n >= left {
                n -= left;
                of.chunks.pop_front();
                of.front_off = 0;
            } else {
                of.front_off += n;
                n = 0;
            }
        }
        if of.chunks.is_empty() {
            self.overflow = None;
        }
    }

    /// Drops everything queued (the connection is gone).
    pub fn discard(&mut self, pool: &mut BufPool) {
        if let Some(ring) = self.ring.take() {
            pool.give(ring);
        }
        self.overflow = None;
        self.len = 0;
    }
}

/// Writes `parts` until done or the socket would block; returns bytes written.
fn write_all_nonblocking<W: Write>(sock: &mut W, parts: &[&[u8]]) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        let mut iov: [IoSlice<'_>; 2] = [IoSlice::new(&[]), IoSlice::new(&[])];
        let mut skip = done;
        let mut k = 0;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            iov[k] = IoSlice::new(&p[skip..]);
            skip = 0;
            k += 1;
        }
        match sock.write_vectored(&iov[..k]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Flags packed into one byte.
pub(crate) mod flag {
    /// In the worker's list of connections to flush this turn.
    pub const DIRTY: u16 = 1;
    /// Reading is paused by backpressure.
    pub const READ_PAUSED: u16 = 2;
    /// Registered for WRITABLE.
    pub const WRITE_INTEREST: u16 = 4;
    /// `on_open` accepted it: `on_close` is owed.
    pub const OPENED: u16 = 8;
    /// Over `max_backpressure` (counted once per episode).
    pub const OVER_CAP: u16 = 16;
    /// In the worker's deferred (broadcast) flush list.
    pub const DEFERRED: u16 = 32;
    /// The socket may hold unread bytes (a read filled the ring).
    pub const MAYBE_READABLE: u16 = 64;
    /// The peer's close frame arrived: nothing more will come from it.
    pub const PEER_CLOSED: u16 = 128;
    /// Our write side is shut down (lingering for the peer's EOF).
    pub const WRITE_SHUT: u16 = 256;
}

/// One connection. Kept small: an idle open connection is this struct, a slab slot and
/// one timer entry; its buffers are back in the pool. The read side is kept apart from
/// `core` so that a message borrowed from the read ring can be handed to the
/// application together with a handle that writes through `core`.
#[derive(Debug)]
pub(crate) struct Conn {
    pub rbuf: Option<Ring>,
    pub decoder: Decoder,
    pub core: Core,
}

/// Everything of a connection but its read side.
#[derive(Debug)]
pub(crate) struct Core {
    pub stream: mio::net::TcpStream,
    pub phase: Phase,
    pub flags: u16,
    pub generation: u32,
    pub out: Outbox,
    pub timer: Option<TimerId>,
    /// Tick of the last byte received.
    pub last_rx: u32,
    /// Tick of the last ping we sent.
    pub last_ping: u32,
    /// Tick the current phase began (handshake timeout, close timeout).
    pub phase_since: u32,
    /// Tick the outgoing buffer last made progress or became non-empty.
    pub tx_since: u32,
    /// Rate limit bucket: tokens left and the tick they were counted at.
    pub tokens: u32,
    pub tokens_tick: u32,
    /// The close code to report in `on_close`.
    pub close_code: u16,
    pub ip: IpAddr,
    /// Topics this connection subscribed to (for cleanup).
    #[allow(clippy::box_collection)] // 8 bytes per connection instead of 24
    pub topics: Option<Box<Vec<Box<str>>>>,
}

impl Conn {
    pub fn new(stream: mio::net::TcpStream, ip: IpAddr, generation: u32, now: u32) -> Self {
        Conn {
            rbuf: None,
            decoder: Decoder::new(),
            core: Core {
                stream,
                phase: Phase::Handshaking,
                flags: 0,
                generation,
                out: Outbox::default(),
                timer: None,
                last_rx: now,
                last_ping: now,
                phase_since: now,
                tx_since: now,
                tokens: 0,
                tokens_tick: now,
                close_code: CloseCode::ABNORMAL.0,
                ip,
                topics: None,
            },
        }
    }
}

impl Core {
    #[inline]
    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    #[inline]
    pub fn set(&mut self, f: u16, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::FrameHeader;

    /// A socket that accepts `budget` bytes and then would block.
    struct Sink {
        data: Vec<u8>,
        budget: usize,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.budget);
            self.budget -= n;
            self.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queued_bytes_come_out_in_order_through_ring_and_overflow() {
        let mut pool = BufPool::new(512, 4);
        let mut out = Outbox::default();
        let mut sink = Sink { data: Vec::new(), budget: 0 };
        let mut expect = Vec::new();
        for i in 0..200u32 {
            let msg = vec![i as u8; (i as usize * 37) % 300];
            expect.extend_from_slice(&[0x82]);
            out.queue_frame(&mut pool, &mut sink, OpCode::Binary, &msg, true).unwrap();
            let mut h = [0u8; 14];
            let hl =
                FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask: None, payload_len: msg.len() as u64 }
                    .encode(&mut h)
                    .unwrap();
            expect.truncate(expect.len() - 1);
            expect.extend_from_slice(&h[..hl]);
            expect.extend_from_slice(&msg);
            if i % 7 == 0 {
                sink.budget = 333;
                out.flush(&mut pool, &mut sink).unwrap();
            }
        }
        assert_eq!(out.len(), expect.len() - sink.data.len());
        sink.budget = usize::MAX;
        assert_eq!(out.flush(&mut pool, &mut sink).unwrap().1, Flushed::Empty);
        assert_eq!(sink.data, expect);
        assert_eq!(pool.lent(), 0, "ring returned when empty");
    }

    #[test]
    fn large_message_on_an_empty_queue_is_written_directly() {
        let mut pool = BufPool::new(512, 4);
        let mut out = Outbox::default();
        let mut sink = Sink { data: Vec::new(), budget: 1500 };
        let msg = vec![9u8; 4000];
        out.queue_frame(&mut pool, &mut sink, OpCode::Binary, &msg, true).unwrap();
        assert_eq!(sink.data.len(), 1500);
        assert_eq!(out.len(), 4004 - 1500);
        sink.budget = usize::MAX;
        out.flush(&mut pool, &mut sink).unwrap();
        assert_eq!(sink.data.len(), 4004);
        assert_eq!(&sink.data[4..], &msg[..]);
    }

    #[test]
    fn push_front_ahead_of_more_than_a_ring() {
        let mut pool = BufPool::new(512, 4);
        let mut out = Outbox::default();
        let body = vec![7u8; 2000];
        out.push(&mut pool, &body);
        out.push_front(&mut pool, b"HTTP/1.1 101\r\n\r\n");
        let mut sink = Sink { data: Vec::new(), budget: usize::MAX };
        out.flush(&mut pool, &mut sink).unwrap();
        let head = b"HTTP/1.1 101\r\n\r\n";
        assert_eq!(&sink.data[..head.len()], head);
        assert_eq!(&sink.data[head.len()..], &body[..]);
    }

    #[test]
    fn conn_stays_small() {
        // An idle connection's footprint is this struct plus its slab slot and timer.
        // Debug builds of mio add a selector id to every socket.
        let limit = if cfg!(debug_assertions) { 208 } else { 192 };
        assert!(std::mem::size_of::<Conn>() <= limit, "Conn is {} bytes", std::mem::size_of::<Conn>());
    }
}
