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
}

impl BufPool {
    /// A pool of rings of `size` bytes that keeps at most `max_free` idle ones.
    pub fn new(size: usize, max_free: usize) -> Self {
        BufPool { size, free: Vec::new(), max_free, lent: 0 }
    }

    /// Capacity of each ring.
    pub fn ring_size(&self) -> usize {
        self.size
    }

    /// An empty ring, from the free list or newly allocated.
    pub fn take(&mut self) -> Ring {
        self.lent += 1;
        let storage = self.free.pop().unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice());
        Ring::from_storage(storage)
    }

    /// Returns a ring; its contents are discarded.
    pub fn give(&mut self, ring: Ring) {
        self.lent = self.lent.saturating_sub(1);
        if self.free.len() < self.max_free {
            self.free.push(ring.into_storage());
        }
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
        assert_eq!(p.idle(), 1);
        let _ = ptr;
    }
}
