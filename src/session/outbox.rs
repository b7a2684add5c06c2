//! A connection's outgoing bytes: a ring lent from the worker's pool while bytes are in
//! flight, and heap chunks behind it for what does not fit. No socket: the driver takes
//! the bytes with [`Outbox::transmit`] and reports what it wrote with [`Outbox::consume`].

use crate::buf::{BufPool, Ring};
use crate::proto::frame::{server_header, OpCode};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Most slices [`Outbox::transmit`] hands out at once (the ring's two halves and the
/// front overflow chunks): one vectored write each.
pub const MAX_TRANSMIT_SLICES: usize = 6;

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

impl Outbox {
    /// Bytes queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a server frame (unmasked) with `payload`.
    #[inline(always)]
    pub fn queue_frame<const RSV1: bool>(&mut self, pool: &mut BufPool, opcode: OpCode, payload: &[u8]) {
        let (mut hbuf, hl) = server_header(opcode, payload.len());
        if RSV1 {
            hbuf[0] |= 0x40;
        }
        if self.overflow.is_none() && hbuf.len() + payload.len() <= pool.ring_size() {
            // Common case: header and payload go into the ring's tail together.
            let ring = self.ring.get_or_insert_with(|| pool.take());
            if ring.push_frame(&hbuf, hl, payload) {
                self.len += hl + payload.len();
                return;
            }
        }
        self.push(pool, &hbuf[..hl]);
        self.push(pool, payload);
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

    /// Puts bytes in front of everything queued (the 101 response, written after
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
        while self.len > 0 {
            let before = rest.len();
            let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
            let k = self.transmit(&mut iov);
            for s in &iov[..k] {
                rest.extend_from_slice(s);
            }
            self.consume(pool, rest.len() - before);
        }
        self.push(pool, data);
        self.push(pool, &rest);
    }

    /// All the queued bytes when they are one slice (the usual case: a ring that has
    /// not wrapped, no overflow); `None` otherwise, and then [`Outbox::transmit`].
    #[inline(always)]
    pub fn transmit_one(&self) -> Option<&[u8]> {
        if self.overflow.is_some() {
            return None;
        }
        let (a, b) = self.ring.as_ref()?.as_slices();
        b.is_empty().then_some(a)
    }

    /// The queued bytes in order, as up to [`MAX_TRANSMIT_SLICES`] slices written into
    /// `out`; returns how many. Zero when nothing is queued.
    #[inline(always)]
    pub fn transmit<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_TRANSMIT_SLICES]) -> usize {
        let mut k = 0;
        if let Some(r) = &self.ring {
            let (a, b) = r.as_slices();
            if !a.is_empty() {
                out[0] = IoSlice::new(a);
                k = 1;
            }
            if !b.is_empty() {
                out[k] = IoSlice::new(b);
                k += 1;
            }
        }
        if let Some(of) = &self.overflow {
            for (i, c) in of.chunks.iter().enumerate() {
                if k == MAX_TRANSMIT_SLICES {
                    break;
                }
                let s = if i == 0 { &c[of.front_off..] } else { &c[..] };
                if !s.is_empty() {
                    out[k] = IoSlice::new(s);
                    k += 1;
                }
            }
        }
        k
    }

    /// `n` bytes from the front were written. The ring goes back to the pool once
    /// everything is; returns whether it is.
    #[inline(always)]
    pub fn consume(&mut self, pool: &mut BufPool, n: usize) -> bool {
        debug_assert!(n <= self.len);
        let n = n.min(self.len);
        self.len -= n;
        if self.len == 0 {
            if let Some(ring) = self.ring.take() {
                pool.give(ring);
            }
            if self.overflow.is_some() {
                // Checked first: dropping the `None` is an out-of-line call per message.
                self.overflow = None;
            }
            return true;
        }
        let mut rest = n;
        if let Some(r) = self.ring.as_mut() {
            let k = rest.min(r.len());
            r.consume(k);
            rest -= k;
        }
        if rest > 0 {
            self.consume_overflow(rest);
        }
        false
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

    /// Drops everything queued (the connection is gone, or a refusal replaces it).
    pub fn discard(&mut self, pool: &mut BufPool) {
        if let Some(ring) = self.ring.take() {
            pool.give(ring);
        }
        self.overflow = None;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::FrameHeader;

    /// Takes up to `budget` bytes from the outbox, as a socket would.
    fn drain(out: &mut Outbox, pool: &mut BufPool, budget: usize, sink: &mut Vec<u8>) -> usize {
        let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
        let mut taken = 0;
        while taken < budget && !out.is_empty() {
            let mut n = 0;
            {
                let k = out.transmit(&mut iov);
                for s in &iov[..k] {
                    let m = s.len().min(budget - taken - n);
                    sink.extend_from_slice(&s[..m]);
                    n += m;
                }
            }
            iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
            out.consume(pool, n);
            taken += n;
        }
        taken
    }

    #[test]
    fn queued_bytes_come_out_in_order_through_ring_and_overflow() {
        let mut pool = BufPool::new(512, 4);
        let mut out = Outbox::default();
        let mut sink = Vec::new();
        let mut expect = Vec::new();
        for i in 0..200u32 {
            let msg = vec![i as u8; (i as usize * 37) % 300];
            out.queue_frame::<false>(&mut pool, OpCode::Binary, &msg);
            let mut h = [0u8; 14];
            let hl =
                FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask: None, payload_len: msg.len() as u64 }
                    .encode(&mut h)
                    .unwrap();
            expect.extend_from_slice(&h[..hl]);
            expect.extend_from_slice(&msg);
            if i % 7 == 0 {
                drain(&mut out, &mut pool, 333, &mut sink);
            }
        }
        assert_eq!(out.len(), expect.len() - sink.len());
        drain(&mut out, &mut pool, usize::MAX, &mut sink);
        assert!(out.is_empty());
        assert_eq!(sink, expect);
        assert_eq!(pool.lent(), 0, "ring returned when empty");
    }

    #[test]
    fn large_message_goes_to_overflow_and_out_intact() {
        let mut pool = BufPool::new(512, 4);
        let mut out = Outbox::default();
        let msg = vec![9u8; 4000];
        out.queue_frame::<false>(&mut pool, OpCode::Binary, &msg);
        assert_eq!(out.len(), 4004);
        let mut sink = Vec::new();
        drain(&mut out, &mut pool, 1500, &mut sink);
        assert_eq!(out.len(), 4004 - 1500);
        drain(&mut out, &mut pool, usize::MAX, &mut sink);
        assert_eq!(&sink[4..], &msg[..]);
        assert_eq!(pool.lent(), 0);
    }

    #[test]
    fn frame_fast_path_writes_what_the_general_path_writes() {
        // queue_frame's one fast path (header and payload into the ring's tail in one
        // step) against the general one (header, then payload, through push).
        for len in [0usize, 1, 125, 126, 300, 497, 498, 502, 503, 4000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut pool = BufPool::new(512, 4);
            let (mut fast, mut general) = (Outbox::default(), Outbox::default());
            fast.queue_frame::<false>(&mut pool, OpCode::Text, &payload);
            let (h, hl) = server_header(OpCode::Text, payload.len());
            general.push(&mut pool, &h[..hl]);
            general.push(&mut pool, &payload);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            drain(&mut fast, &mut pool, usize::MAX, &mut a);
            drain(&mut general, &mut pool, usize::MAX, &mut b);
            assert_eq!(a, b, "payload of {len} bytes");
        }
    }

    #[test]
    fn the_one_slice_fast_path_hands_out_what_the_general_path_does() {
        let mut pool = BufPool::new(512, 4);
        let mut out = Outbox::default();
        let mut checked = 0;
        for i in 0..300usize {
            out.queue_frame::<false>(&mut pool, OpCode::Binary, &vec![i as u8; i % 97]);
            if let Some(one) = out.transmit_one() {
                let mut iov = [IoSlice::new(&[]); MAX_TRANSMIT_SLICES];
                let k = out.transmit(&mut iov);
                let all: Vec<u8> = iov[..k].iter().flat_map(|s| s.to_vec()).collect();
                assert_eq!(one, &all[..]);
                checked += 1;
            }
            // Partial writes move the ring's head so it wraps now and then.
            let n = out.len().min(101);
            out.consume(&mut pool, n);
        }
        assert!(checked > 100, "{checked}");
    }

    #[test]
    fn push_front_ahead_of_more_than_a_ring() {
        let mut pool = BufPool::new(512, 4);
        let mut out = Outbox::default();
        let body = vec![7u8; 2000];
        out.push(&mut pool, &body);
        out.push_front(&mut pool, b"HTTP/1.1 101\r\n\r\n");
        let mut sink = Vec::new();
        drain(&mut out, &mut pool, usize::MAX, &mut sink);
        let head = b"HTTP/1.1 101\r\n\r\n";
        assert_eq!(&sink[..head.len()], head);
        assert_eq!(&sink[head.len()..], &body[..]);
    }
}
