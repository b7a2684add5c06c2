//! `dedicated` mode's compressors: one per connection, keeping its context between the
//! connection's messages, held only while the connection sends (by slab key, so an idle
//! connection holds nothing, not even a pointer).

use super::codec::{deflate_message, LEVEL};
use flate2::{Compress, Compression};
use std::collections::HashMap;

/// Heap bytes of one compressor with a `bits` window, as zlib-rs allocates them at level
/// 1 (memLevel 8): its fixed tables and hash chains, plus a window and a previous-match
/// table that grow with the window (`dedicated_context_bytes` in tests/deflate_memory.rs
/// measures it with a counting allocator). About 245 KiB at 9 bits, 371 KiB at 15.
pub fn context_bytes(bits: u8) -> u64 {
    248_960 + (4u64 << bits.clamp(9, 15))
}

/// One connection's compressor (`bits`: its window).
struct Context {
    c: Box<Compress>,
    bits: u8,
    /// Worker clock (ns) of its last message: released `idle_ns` after it.
    last_ns: u64,
}

/// The worker's dedicated compressors, by connection key.
pub(crate) struct Contexts {
    by_key: HashMap<u32, Context>,
    /// The last compressed payload (without its tail).
    out: Vec<u8>,
    idle_ns: u64,
    /// Heap bytes held by `by_key` ([`context_bytes`] each).
    bytes: u64,
    /// The worker's wheel holds a sweep (one at most, while any compressor is held).
    pub sweep_armed: bool,
    /// Compressors held at most (`compression_max_contexts`).
    max: usize,
}

impl Contexts {
    pub fn new(idle_ns: u64, max: usize) -> Self {
        Contexts { by_key: HashMap::new(), out: Vec::new(), idle_ns, bytes: 0, sweep_armed: false, max }
    }

    /// Connection `key` holds a compressor or may get one: below the cap. Past it, a
    /// connection's messages are compressed without context by the worker's compressor
    /// (valid in any stream; its context, when it gets one, starts after them).
    pub fn has_room_for(&self, key: u32) -> bool {
        self.by_key.len() < self.max || self.by_key.contains_key(&key)
    }

    /// Compressors held now.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Heap bytes they hold.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Compresses `payload` as the next message of connection `key`, with its context
    /// (made now if it has none: its first message, or its first after a release).
    ///
    /// A fresh compressor after a release is still valid for a client that keeps its
    /// own context: new blocks refer only to bytes the new compressor has seen, which
    /// are the last bytes the client inflated (RFC 7692 7.1.1.1: a server may always
    /// choose not to use a previous message's context).
    pub fn compress(&mut self, key: u32, bits: u8, payload: &[u8], now_ns: u64) {
        let bytes = &mut self.bytes;
        let ctx = self.by_key.entry(key).or_insert_with(|| {
            *bytes += context_bytes(bits);
            Context {
                c: Box::new(Compress::new_with_window_bits(Compression::new(LEVEL), false, bits.clamp(9, 15))),
                bits,
                last_ns: now_ns,
            }
        });
        ctx.last_ns = now_ns;
        deflate_message(&mut ctx.c, payload, &mut self.out);
    }

    /// The last message [`Contexts::compress`] made (without its tail).
    pub fn out(&self) -> &[u8] {
        &self.out
    }

    /// Frees connection `key`'s compressor, if it holds one (it closed).
    pub fn release(&mut self, key: u32) {
        if let Some(ctx) = self.by_key.remove(&key) {
            self.bytes -= context_bytes(ctx.bits);
        }
    }

    /// Frees every compressor whose connection sent nothing compressed for `idle_ns`.
    /// Returns how many were freed.
    pub fn sweep(&mut self, now_ns: u64) -> usize {
        let before = self.by_key.len();
        let (idle, bytes) = (self.idle_ns, &mut self.bytes);
        self.by_key.retain(|_, ctx| {
            let keep = now_ns.saturating_sub(ctx.last_ns) < idle;
            if !keep {
                *bytes -= context_bytes(ctx.bits);
            }
            keep
        });
        before - self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::codec::Codec;

    /// Inflates a stream of messages the way a client that keeps its context does.
    fn inflate_stream(msgs: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut d = flate2::Decompress::new(false);
        msgs.iter()
            .map(|z| {
                let mut input = z.clone();
                input.extend_from_slice(&[0, 0, 0xff, 0xff]);
                let mut out = Vec::with_capacity(1 << 16);
                d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync).unwrap();
                out
            })
            .collect()
    }

    #[test]
    fn context_shrinks_repeated_messages_and_survives_a_release() {
        let msg = br#"{"type":"quote","symbol":"ACME","bid":101.25,"ask":101.27,"venue":"XNYS"}"#.repeat(3);
        let mut ded = Contexts::new(1_000, 1);
        let mut shared = Codec::new();
        let alone = shared.compress(&msg, 15).len();
        let z = |d: &mut Contexts, t| {
            d.compress(7, 15, &msg, t);
            d.out().to_vec()
        };
        let mut wire = vec![z(&mut ded, 0)];
        let second = z(&mut ded, 10);
        // The second message refers back to the first: a few bytes instead of a whole one.
        assert!(second.len() * 4 < alone, "{} vs {alone}", second.len());
        wire.push(second);
        assert_eq!((ded.len(), ded.bytes()), (1, context_bytes(15)));
        // At the cap of one: the holder keeps its compressor, another gets none.
        assert!(ded.has_room_for(7) && !ded.has_room_for(8));
        // Quiet for less than idle_ns: kept; then freed.
        assert_eq!(ded.sweep(500), 0);
        assert_eq!(ded.sweep(1_010), 1);
        assert_eq!((ded.len(), ded.bytes()), (0, 0));
        // A new compressor after the release: the client's stream still inflates.
        wire.push(z(&mut ded, 2_000));
        for out in inflate_stream(&wire) {
            assert_eq!(out, msg);
        }
        ded.release(7);
        ded.release(7);
        assert_eq!((ded.len(), ded.bytes()), (0, 0));
    }
}
