//! A per-worker pool of ring storage, so an idle connection holds no buffer and the
//! steady state allocates nothing.

use super::ring::Ring;

/// Lends fixed-size [`Ring`]s and takes them back. Not shared between threads.
#[derive(Debug)]
pub struct BufPool {
    size: usize,
    free: Vec<Box<[u8]>>,
    max_free: usize,
    lent: usize,
    /// Most rings lent at once since the last [`BufPool::trim`].
    peak: usize,
}

impl BufPool {
    /// A pool of rings of `size` bytes. Idle rings are kept while recent use needs them
    /// and trimmed to `max_free` once it no longer does (see [`BufPool::trim`]).
    pub fn new(size: usize, max_free: usize) -> Self {
        BufPool { size, free: Vec::new(), max_free, lent: 0, peak: 0 }
    }

    /// Capacity of each ring.
    pub fn ring_size(&self) -> usize {
        self.size
    }

    /// An empty ring, from the free list or newly allocated.
    pub fn take(&mut self) -> Ring {
        self.lent += 1;
        self.peak = self.peak.max(self.lent);
        let storage = self.free.pop().unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice());
        Ring::from_storage(storage)
    }

    /// Returns a ring; its contents are discarded. It is kept for reuse: a broadcast
    /// that lends a ring to each of 1000 subscribers every few milliseconds must not
    /// free and re-zero 1000 rings each time.
    pub fn give(&mut self, ring: Ring) {
        self.lent = self.lent.saturating_sub(1);
        self.free.push(ring.into_storage());
    }

    /// Frees idle rings beyond what the busiest moment since the last trim needed
    /// (and at least `max_free`). Call it about once a second: memory follows the load
    /// down within two calls, and a steady load never reallocates.
    pub fn trim(&mut self) {
        let keep = self.max_free.max(self.peak.saturating_sub(self.lent));
        if self.free.len() > keep {
            self.free.truncate(keep);
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
        self.free.len()
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
