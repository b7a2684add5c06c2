//! A per-worker pool of ring storage, so an idle connection holds no buffer and the
//! steady state allocates nothing.

use super::ring::Ring;

/// Lends fixed-size [`Ring`]s and takes them back. Not shared between threads.
#[derive(Debug)]
pub struct BufPool {
    size: usize,
    /// A stack of idle storage: `free[..top]` is filled, the rest empty slots. Slots
    /// rather than `Vec::push`/`pop` so that giving a ring back (once per echoed
    /// message) is a store, not a call.
    free: Vec<Option<Box<[u8]>>>,
    top: usize,
    max_free: usize,
    lent: usize,
    /// Most rings lent at once since the last [`BufPool::trim`].
    peak: usize,
}

impl BufPool {
    /// A pool of rings of `size` bytes. Idle rings are kept while recent use needs them
    /// and trimmed to `max_free` once it no longer does (see [`BufPool::trim`]).
    pub fn new(size: usize, max_free: usize) -> Self {
        BufPool { size, free: Vec::new(), top: 0, max_free, lent: 0, peak: 0 }
    }

    /// Capacity of each ring.
    pub fn ring_size(&self) -> usize {
        self.size
    }

    /// An empty ring, from the free list or newly allocated.
    #[inline(always)]
    pub fn take(&mut self) -> Ring {
        self.lent += 1;
        if self.lent > self.peak {
            self.peak = self.lent;
        }
        if self.top > 0 {
            self.top -= 1;
            if let Some(storage) = self.free[self.top].take() {
                return Ring::from_storage(storage);
            }
        }
        self.allocate()
    }

    #[cold]
    fn allocate(&self) -> Ring {
        Ring::from_storage(vec![0u8; self.size].into_boxed_slice())
    }

    /// Returns a ring; its contents are discarded. It is kept for reuse: a broadcast
    /// that lends a ring to each of 1000 subscribers every few milliseconds must not
    /// free and re-zero 1000 rings each time.
    #[inline(always)]
    pub fn give(&mut self, ring: Ring) {
        self.lent = self.lent.saturating_sub(1);
        let storage = ring.into_storage();
        match self.free.get_mut(self.top) {
            Some(slot) => *slot = Some(storage),
            None => self.free.push(Some(storage)),
        }
        self.top += 1;
    }

    /// Frees idle rings beyond what the busiest moment since the last trim needed
    /// (and at least `max_free`). Call it about once a second: memory follows the load
    /// down within two calls, and a steady load never reallocates.
    pub fn trim(&mut self) {
        let keep = self.max_free.max(self.peak.saturating_sub(self.lent));
        if self.top > keep {
            self.free[keep..self.top].fill(None);
            self.top = keep;
        }
        if self.free.len() > keep.max(self.max_free) {
            self.free.truncate(keep.max(self.max_free));
            self.free.shrink_to(keep.max(self.max_free));
        }
        self.peak = self.lent;
    }

    /// Rings currently lent out.
    pub fn lent(&self) -> usize {
        self.lent
    }

    /// Rings kept idle for reuse.
    pub fn idle(&self) -> usize {
        self.top
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_storage_and_bounds_the_free_list() {
        let mut p = BufPool::new(64, 1);
        let a = p.take();
        let ptr = a.as_slices().0.as_ptr();
        p.give(a);
        let b = p.take();
        assert_eq!(b.capacity(), 64);
        let c = p.take();
        assert_eq!(p.lent(), 2);
        p.give(b);
        p.give(c);
        assert_eq!(p.idle(), 2, "kept while recent use needed two");
        p.trim();
        assert_eq!(p.idle(), 2, "the peak since the last trim was two");
        p.trim();
        assert_eq!(p.idle(), 1, "trimmed to max_free once the load is gone");
        let _ = ptr;
    }
}
