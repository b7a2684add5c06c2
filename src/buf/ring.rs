//! A fixed-capacity byte ring: the unit of buffering between a socket and the codec.
//!
//! INVARIANT: `head < cap` (or 0 when `cap == 0`) and `len <= cap`; the readable bytes
//! are `buf[head..head+len]` taken modulo `cap`.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};

/// A ring of bytes with a fixed capacity, lent out by a [`super::BufPool`].
#[derive(Debug)]
pub struct Ring {
    buf: Box<[u8]>,
    // u32: a connection holds two rings, and rings are far smaller than 4 GiB.
    head: u32,
    len: u32,
}

impl Ring {
    /// A ring over `storage` (its contents are ignored).
    pub fn from_storage(storage: Box<[u8]>) -> Self {
        Ring { buf: storage, head: 0, len: 0 }
    }

    /// Gives the storage back (for the pool).
    pub fn into_storage(self) -> Box<[u8]> {
        self.buf
    }

    #[inline]
    fn h(&self) -> usize {
        self.head as usize
    }

    #[inline]
    fn l(&self) -> usize {
        self.len as usize
    }

    /// Total capacity.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Bytes stored.
    pub fn len(&self) -> usize {
        self.l()
    }

    /// Nothing stored.
    pub fn is_empty(&self) -> bool {
        self.l() == 0
    }

    /// Bytes that can still be stored.
    pub fn free(&self) -> usize {
        self.buf.len() - self.l()
    }

    fn tail(&self) -> usize {
        let t = self.h() + self.l();
        if t >= self.buf.len() {
            t - self.buf.len()
        } else {
            t
        }
    }

    /// The stored bytes as up to two slices, oldest first.
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        let cap = self.buf.len();
        if self.h() + self.l() <= cap {
            (&self.buf[self.h()..self.h() + self.l()], &[])
        } else {
            (&self.buf[self.h()..], &self.buf[..self.h() + self.l() - cap])
        }
    }

    /// Free space as up to two slices, in the order it will be filled.
    fn free_slices_mut(&mut self) -> (&mut [u8], &mut [u8]) {
        let cap = self.buf.len();
        let tail = self.tail();
        let head = self.h();
        if self.l() == cap {
            return (&mut [], &mut []);
        }
        if tail >= head {
            let (front, back) = self.buf.split_at_mut(tail);
            (back, &mut front[..head])
        } else {
            (&mut self.buf[tail..head], &mut [])
        }
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.l());
        let n = n.min(self.l());
        self.len -= n as u32;
        if self.l() == 0 {
            // Start over at the front so the next fill is one contiguous slice.
            self.head = 0;
        } else {
            let mut head = self.h() + n;
            if head >= self.buf.len() {
                head -= self.buf.len();
            }
            self.head = head as u32;
        }
    }

    /// Marks `n` bytes of free space (as returned by the free slices) as filled.
    fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.free());
        self.len += n as u32;
    }

    /// Appends as much of `data` as fits; returns how much did.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let end = self.h() + self.l();
        if end + data.len() <= self.buf.len() {
            // No wrap: one copy at the tail.
            self.buf[end..end + data.len()].copy_from_slice(data);
            self.len += data.len() as u32;
            return data.len();
        }
        let (a, b) = self.free_slices_mut();
        let n1 = a.len().min(data.len());
        a[..n1].copy_from_slice(&data[..n1]);
        let n2 = b.len().min(data.len() - n1);
        b[..n2].copy_from_slice(&data[n1..n1 + n2]);
        self.commit(n1 + n2);
        n1 + n2
    }

    /// Appends a frame: the first `hlen` bytes of `header`, then `payload`, when the
    /// whole ten-byte header array and the payload fit at the tail without wrapping;
    /// false (nothing written) otherwise. The header goes in as one fixed-size store
    /// (its bytes past `hlen` land in free space and are overwritten by the payload).
    #[inline]
    pub fn push_frame(&mut self, header: &[u8; 10], hlen: usize, payload: &[u8]) -> bool {
        let end = self.h() + self.l();
        if end + header.len() + payload.len() > self.buf.len() {
            return false;
        }
        self.buf[end..end + header.len()].copy_from_slice(header);
        let at = end + hlen.min(header.len());
        self.buf[at..at + payload.len()].copy_from_slice(payload);
        self.len += (at + payload.len() - end) as u32;
        true
    }

    /// Puts `data` in front of the stored bytes; false (and nothing changed) if it does
    /// not fit.
    pub fn push_front(&mut self, data: &[u8]) -> bool {
        if data.len() > self.free() {
            return false;
        }
        let cap = self.buf.len();
        let new_head = (self.h() + cap - data.len()) % cap.max(1);
        let first = (cap - new_head).min(data.len());
        self.buf[new_head..new_head + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.head = new_head as u32;
        self.len += data.len() as u32;
        true
    }

    /// The stored bytes as one mutable slice, moved to the front first when they wrap
    /// (or crowd the end). Free in the common case: the ring restarts at 0 whenever it
    /// empties.
    #[inline]
    pub fn make_contiguous(&mut self) -> &mut [u8] {
        if self.head != 0 {
            self.settle();
        }
        let (head, len) = (self.h(), self.l());
        &mut self.buf[head..head + len]
    }

    #[inline(never)]
    fn settle(&mut self) {
        if self.h() + self.l() > self.buf.len() {
            self.buf.rotate_left(self.h());
            self.head = 0;
        } else if self.free() < self.buf.len() / 4 {
            // Contiguous but crowding the end: move it to the front so the next read
            // is not cut short (a few bytes of a partial frame, usually).
            self.buf.copy_within(self.h()..self.h() + self.l(), 0);
            self.head = 0;
        }
    }

    /// Reads from `src` into the free space (both parts, with one vectored read).
    /// Returns what `read_vectored` returned; `Ok(0)` with free space means end of stream.
    #[inline(always)]
    pub fn read_from<R: Read>(&mut self, src: &mut R) -> io::Result<usize> {
        if self.len == 0 {
            // The usual case (an empty ring restarts at 0): one plain read.
            let n = src.read(&mut self.buf)?;
            self.commit(n);
            return Ok(n);
        }
        let (a, b) = self.free_slices_mut();
        let n = if b.is_empty() {
            src.read(a)?
        } else {
            let mut iov = [IoSliceMut::new(a), IoSliceMut::new(b)];
            src.read_vectored(&mut iov)?
        };
        self.commit(n);
        Ok(n)
    }

    /// Writes the stored bytes to `dst` (both parts, then `extra`, with one vectored
    /// write) and consumes what was written from the ring. Returns the total written,
    /// of which anything past the ring's length came from `extra`.
    pub fn write_to<W: Write>(&mut self, dst: &mut W, extra: &[&[u8]]) -> io::Result<usize> {
        let (a, b) = self.as_slices();
        let mut iov: [IoSlice<'_>; 8] = [IoSlice::new(&[]); 8];
        let mut k = 0;
        for s in [a, b].into_iter().chain(extra.iter().copied()) {
            if !s.is_empty() && k < iov.len() {
                iov[k] = IoSlice::new(s);
                k += 1;
            }
        }
        if k == 0 {
            return Ok(0);
        }
        let n = if k == 1 { dst.write(&iov[0])? } else { dst.write_vectored(&iov[..k])? };
        let from_ring = n.min(self.l());
        self.consume(from_ring);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(cap: usize) -> Ring {
        Ring::from_storage(vec![0u8; cap].into_boxed_slice())
    }

    fn contents(r: &Ring) -> Vec<u8> {
        let (a, b) = r.as_slices();
        [a, b].concat()
    }

    #[test]
    fn push_consume_wrap() {
        let mut r = ring(8);
        assert_eq!(r.push(b"abcdef"), 6);
        r.consume(4);
        assert_eq!(r.push(b"ghijkl"), 6);
        assert_eq!(contents(&r), b"efghijkl");
        assert_eq!(r.push(b"x"), 0);
        let (a, b) = r.as_slices();
        assert!(!b.is_empty() && !a.is_empty(), "wrapped");
        assert_eq!(r.make_contiguous(), b"efghijkl");
        r.consume(8);
        assert!(r.is_empty());
        assert_eq!(r.free(), 8);
    }

    #[test]
    fn push_front_wraps_backwards() {
        let mut r = ring(8);
        r.push(b"cd");
        assert!(r.push_front(b"ab"));
        assert_eq!(contents(&r), b"abcd");
        assert!(!r.push_front(b"123456789"));
        assert_eq!(contents(&r), b"abcd");
    }

    #[test]
    fn vectored_io_over_both_halves() {
        let mut r = ring(8);
        r.push(b"123456");
        r.consume(5);
        let mut src: &[u8] = b"abcdefghij";
        let n = r.read_from(&mut src).unwrap();
        assert_eq!(n, 7);
        assert_eq!(contents(&r), b"6abcdefg");
        let mut out = Vec::new();
        let n = r.write_to(&mut out, &[b"XY"]).unwrap();
        assert_eq!(n, 10);
        assert_eq!(out, b"6abcdefgXY");
        assert!(r.is_empty());
    }

    #[test]
    fn make_contiguous_keeps_order_at_every_offset() {
        for head in 0..8 {
            for len in 0..=8 {
                let mut r = ring(8);
                r.push(&[0; 8][..head]);
                r.consume(head);
                let data: Vec<u8> = (0..len as u8).collect();
                assert_eq!(r.push(&data), len.min(8));
                assert_eq!(r.make_contiguous(), &data[..]);
            }
        }
    }

    #[test]
    fn push_frame_writes_only_the_meant_header_bytes() {
        let mut r = ring(16);
        let mut h = [0xAAu8; 10];
        h[0] = 0x81;
        h[1] = 3;
        assert!(r.push_frame(&h, 2, b"abc"));
        assert_eq!(contents(&r), b"\x81\x03abc");
        // 5 stored + 10 header bytes + 2 > 16: refused, nothing written.
        assert!(!r.push_frame(&h, 2, b"xy"));
        assert_eq!(r.len(), 5);
        r.consume(5);
        assert!(r.push_frame(&h, 2, b"xyzw"), "an emptied ring starts at the front again");
        assert_eq!(contents(&r), b"\x81\x03xyzw");
    }
}
