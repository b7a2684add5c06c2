//! What one `dedicated` compressor costs, measured: the heap bytes zlib-rs allocates for
//! each window size match `wsloop::deflate::dedicated_context_bytes`, which the
//! `wsloop_deflate_dedicated_bytes` gauge adds up. One test: the allocator counts for
//! the whole process.
#![cfg(feature = "deflate")]

mod common;

use common::counting::{Counting, LIVE};
use flate2::{Compress, Compression, FlushCompress};
use std::sync::atomic::Ordering::Relaxed;

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn dedicated_context_bytes_match_what_zlib_rs_allocates() {
    let payload = br#"{"id":1,"name":"item","tags":["a","b"],"v":3.25}"#.repeat(40);
    let mut out = Vec::with_capacity(1 << 16);
    for bits in 9..=15u8 {
        let before = LIVE.load(Relaxed);
        // As Contexts makes one: level 1, raw deflate, boxed.
        let mut c = Box::new(Compress::new_with_window_bits(Compression::new(1), false, bits));
        c.compress_vec(&payload, &mut out, FlushCompress::Sync).unwrap();
        let held = LIVE.load(Relaxed).wrapping_sub(before);
        let box_size = std::mem::size_of::<Compress>() as u64;
        let want = wsloop::deflate::dedicated_context_bytes(bits);
        assert!(held >= want && held <= want + box_size + 64, "{bits} bits: {held} held, formula {want}");
        drop(c);
        out.clear();
    }
}
