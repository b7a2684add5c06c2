//! The generator's permessage-deflate client side (`--deflate`): the offer, what the
//! server's answer allows, compressing what a connection sends and inflating what it
//! gets, as a browser does (context kept unless the answer forbids it).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The offer: what browsers send.
pub const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// The empty stored block that ends every compressed message (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// One connection's receiving side.
pub struct Inflater {
    inflater: Decompress,
    /// `server_no_context_takeover`: the server resets, so may we.
    reset_inflater: bool,
    /// A message is part-way through.
    pub in_message: bool,
    /// The message being inflated.
    pub msg: Vec<u8>,
}

/// One connection's sending side.
pub struct Compressor {
    /// Made on the first send (subscribers never send, so they never pay for one).
    compressor: Option<Box<Compress>>,
    /// `client_no_context_takeover`: we must reset.
    reset_compressor: bool,
    client_bits: u8,
    /// The last compressed payload.
    pub z: Vec<u8>,
}

/// What the server's 101 head allows, or `None` when it declined.
pub fn from_response(head: &[u8]) -> Option<(Box<Inflater>, Box<Compressor>)> {
    {
        let head = std::str::from_utf8(head).ok()?;
        let value = head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case("sec-websocket-extensions").then_some(v.trim())
        })?;
        let mut parts = value.split(';').map(str::trim);
        if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
            return None;
        }
        let (mut reset_inflater, mut reset_compressor, mut client_bits) = (false, false, 15u8);
        for p in parts {
            let (name, v) = p.split_once('=').map_or((p, None), |(n, v)| (n.trim(), Some(v.trim().trim_matches('"'))));
            match name.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" => reset_inflater = true,
                "client_no_context_takeover" => reset_compressor = true,
                "client_max_window_bits" => client_bits = v.and_then(|v| v.parse().ok()).unwrap_or(15),
                _ => {}
            }
        }
        let i = Inflater { inflater: Decompress::new(false), reset_inflater, in_message: false, msg: Vec::new() };
        let c = Compressor { compressor: None, reset_compressor, client_bits: client_bits.clamp(9, 15), z: Vec::new() };
        Some((Box::new(i), Box::new(c)))
    }
}

impl Compressor {
    /// Compresses one outgoing message into `self.z` (tail stripped).
    pub fn compress(&mut self, payload: &[u8]) -> &[u8] {
        let bits = self.client_bits;
        let c = self
            .compressor
            .get_or_insert_with(|| Box::new(Compress::new_with_window_bits(Compression::new(1), false, bits)));
        if self.reset_compressor {
            c.reset();
        }
        let z = &mut self.z;
        z.clear();
        z.reserve(payload.len() + 64);
        let start = c.total_in();
        while ((c.total_in() - start) as usize) < payload.len() || z.len() == z.capacity() {
            let done = (c.total_in() - start) as usize;
            let _ = c.compress_vec(&payload[done..], z, FlushCompress::Sync);
            if z.len() == z.capacity() {
                z.reserve(z.capacity());
            }
        }
        if z.ends_with(&TAIL) {
            z.truncate(z.len() - TAIL.len());
        }
        z
    }
}

thread_local! {
    /// Whole-frame messages this generator thread inflated without context, as
    /// (compressed bytes, inflated bytes), direct-mapped by a hash of the compressed
    /// bytes. A broadcast sends the same compressed frame to every subscriber; inflating
    /// it once per thread rather than once per subscriber keeps the generator, not the
    /// server, from being what a 1M deliveries/s run measures. The compressed bytes are
    /// compared in full, so a hit yields exactly what inflating would.
    static SEEN: std::cell::RefCell<Vec<(Vec<u8>, Vec<u8>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Slots in `SEEN`: subscribers lagging each other by thousands of messages still share.
const SEEN_SLOTS: usize = 4096;

/// A cheap hash of compressed bytes, to pick their slot (not for security): the length
/// and the first and last 16 bytes. Messages differ near the start (their stamp comes
/// first); a collision costs one inflation, never a wrong answer.
fn slot(z: &[u8]) -> usize {
    let mut h = z.len() as u64;
    let ends = [&z[..z.len().min(16)], &z[z.len().saturating_sub(16)..]];
    for c in ends.iter().flat_map(|e| e.chunks(8)) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
    (h % SEEN_SLOTS as u64) as usize
}

impl Inflater {
    /// Inflates the next compressed bytes of the message in `self.msg`; `last` ends it.
    pub fn inflate(&mut self, z: &[u8], first: bool, last: bool) -> Result<(), String> {
        // A message in one frame, with the server resetting its compressor, depends on
        // nothing before it: the same bytes always inflate to the same message.
        let standalone = first && last && self.reset_inflater;
        if standalone {
            let hit = SEEN.with_borrow(|seen| {
                seen.get(slot(z)).filter(|(k, _)| k.as_slice() == z).map(|(_, v)| {
                    self.msg.clear();
                    self.msg.extend_from_slice(v);
                })
            });
            if hit.is_some() {
                return Ok(());
            }
        }
        self.inflate_fresh(z, first, last)?;
        if standalone {
            SEEN.with_borrow_mut(|seen| {
                if seen.is_empty() {
                    seen.resize(SEEN_SLOTS, (Vec::new(), Vec::new()));
                }
                let (k, v) = &mut seen[slot(z)];
                k.clear();
                k.extend_from_slice(z);
                v.clear();
                v.extend_from_slice(&self.msg);
            });
        }
        Ok(())
    }

    fn inflate_fresh(&mut self, z: &[u8], first: bool, last: bool) -> Result<(), String> {
        if first {
            self.msg.clear();
            if self.reset_inflater {
                self.inflater.reset(false);
            }
        }
        self.run(z, FlushDecompress::None)?;
        if last {
            self.run(&TAIL, FlushDecompress::Sync)?;
        }
        Ok(())
    }

    fn run(&mut self, input: &[u8], flush: FlushDecompress) -> Result<(), String> {
        let start = self.inflater.total_in();
        loop {
            let used = (self.inflater.total_in() - start) as usize;
            if self.msg.capacity() - self.msg.len() < 4096 {
                self.msg.reserve(self.msg.capacity().max(16 << 10));
            }
            let before = self.inflater.total_out();
            self.inflater.decompress_vec(&input[used..], &mut self.msg, flush).map_err(|e| format!("inflate: {e}"))?;
            let used = (self.inflater.total_in() - start) as usize;
            let room = self.msg.capacity() > self.msg.len();
            if used == input.len() && room {
                return Ok(());
            }
            if used < input.len() && self.inflater.total_out() == before && room {
                return Err("inflate: stuck".into());
            }
        }
    }
}
