//! One worker's compressor and decompressor (the `shared` mode): every message is
//! compressed and inflated on its own, so no connection holds deflate state between
//! messages (RFC 7692 7.1.1: `server_no_context_takeover`, `client_no_context_takeover`).

use crate::proto::utf8::Utf8Validator;
use crate::proto::ProtocolError;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::collections::HashMap;

/// The empty stored block that ends every compressed message (RFC 7692 7.2.1): the
/// sender strips it, the receiver appends it.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output is produced in steps of at most this, so a small frame that inflates to a
/// lot stops at `max_message` with memory bounded by it.
const STEP: usize = 16 << 10;

/// Level 1: the speed of a server that compresses every message (gorilla's default);
/// JSON-like text still shrinks several times.
pub(crate) const LEVEL: u32 = 1;

/// The worker's deflate state, behind `Ctx` (about 64 KiB of zlib state per window size
/// in use plus the inflater's 32 KiB window: per worker, not per connection).
pub(crate) struct Codec {
    /// One compressor per window size (9 to 15 bits), made on first use.
    compressors: [Option<Box<Compress>>; 7],
    /// The last compressed payload (without its tail).
    pub out: Vec<u8>,
    /// Inflates every message that arrives whole (in one read, one frame).
    pub inflater: Inflater,
    /// Messages whose compressed bytes arrive in parts (fragments, long frames across
    /// reads), by connection key, each inflated as its parts come: only while a
    /// message is in progress.
    pub partial: HashMap<u32, Box<Inflater>>,
    /// Inflaters of finished partial messages, for the next ones (boxed as in
    /// `partial`: they move between the two as pointers).
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Inflater>>,
}

/// Spare inflaters kept (each ~40 KiB once used).
const SPARES: usize = 4;

impl Codec {
    pub fn new() -> Self {
        Codec {
            compressors: Default::default(),
            out: Vec::new(),
            inflater: Inflater::new(),
            partial: HashMap::new(),
            spare: Vec::new(),
        }
    }

    /// Inflates the next part of connection `key`'s message (the first part starts it).
    pub fn inflate_part(&mut self, key: u32, payload: &[u8], text: bool, max: usize) -> Result<(), ProtocolError> {
        let spare = &mut self.spare;
        let i = self.partial.entry(key).or_insert_with(|| {
            let mut i = spare.pop().unwrap_or_else(|| Box::new(Inflater::new()));
            i.begin(text);
            i
        });
        let r = i.feed(payload, max);
        if r.is_err() {
            self.forget(key);
        }
        r
    }

    /// Takes connection `key`'s partial message, if it has one, for its last bytes
    /// (give it back with [`Codec::recycle`]).
    pub fn take_partial(&mut self, key: u32) -> Option<Box<Inflater>> {
        self.partial.remove(&key)
    }

    /// Drops connection `key`'s partial message (it closed).
    pub fn forget(&mut self, key: u32) {
        if let Some(i) = self.partial.remove(&key) {
            self.recycle(i);
        }
    }

    /// Keeps a finished inflater for the next partial message, its output buffer cut
    /// back if one big message grew it.
    pub fn recycle(&mut self, mut i: Box<Inflater>) {
        if self.spare.len() < SPARES {
            if i.inflated.capacity() > STEP * 4 {
                i.inflated = Vec::new();
            }
            self.spare.push(i);
        }
    }

    /// Compresses `payload` as one message with a `bits` window into `self.out`.
    pub fn compress(&mut self, payload: &[u8], bits: u8) -> &[u8] {
        let bits = bits.clamp(9, 15);
        let c = self.compressors[(bits - 9) as usize]
            .get_or_insert_with(|| Box::new(Compress::new_with_window_bits(Compression::new(LEVEL), false, bits)));
        c.reset();
        deflate_message(c, payload, &mut self.out);
        &self.out
    }

    /// Inflates one whole message's payload into `self.inflater.inflated` (see
    /// [`Inflater::feed`]).
    pub fn inflate(&mut self, payload: &[u8], text: bool, max: usize) -> Result<(), ProtocolError> {
        let i = &mut self.inflater;
        i.begin(text);
        i.feed(payload, max)?;
        i.finish(max)
    }
}

/// One message being inflated: a decompressor reset for it (no client context), its
/// output so far, and for text the UTF-8 check of that output.
pub(crate) struct Inflater {
    d: Box<Decompress>,
    /// The message inflated so far.
    pub inflated: Vec<u8>,
    utf8: Utf8Validator,
    text: bool,
    /// A final deflate block ended the stream: no compressed byte may follow.
    ended: bool,
}

impl Inflater {
    /// About 7 KiB of zlib state; its 32 KiB window comes with the first input.
    pub fn new() -> Self {
        Inflater {
            d: Box::new(Decompress::new_with_window_bits(false, 15)),
            inflated: Vec::new(),
            utf8: Utf8Validator::new(),
            text: false,
            ended: false,
        }
    }

    /// Starts a message (text or binary).
    pub fn begin(&mut self, text: bool) {
        self.d.reset(false);
        self.utf8.reset();
        self.inflated.clear();
        self.text = text;
        self.ended = false;
    }

    /// Inflates the message's next compressed bytes: at most `max` bytes of output in
    /// all (1009 past it), corrupt data 1007, and for text UTF-8 checked as it is
    /// inflated (1007 at the first step that holds a bad byte).
    pub fn feed(&mut self, input: &[u8], max: usize) -> Result<(), ProtocolError> {
        self.run(input, FlushDecompress::None, max)
    }

    /// Ends the message: the stripped tail inflated, the UTF-8 check completed.
    pub fn finish(&mut self, max: usize) -> Result<(), ProtocolError> {
        if !self.ended {
            self.run(&TAIL, FlushDecompress::Sync, max)?;
        }
        if self.text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }

    fn run(&mut self, input: &[u8], flush: FlushDecompress, max: usize) -> Result<(), ProtocolError> {
        if self.ended {
            // A final block: whatever follows it is not deflate data.
            return if input.is_empty() { Ok(()) } else { Err(ProtocolError::CorruptCompressed) };
        }
        let d = &mut self.d;
        let out = &mut self.inflated;
        let start_in = d.total_in();
        loop {
            let used = (d.total_in() - start_in) as usize;
            let len = out.len();
            let room = (max + 1 - len.min(max + 1)).min(STEP);
            if room == 0 {
                return Err(ProtocolError::MessageTooBig);
            }
            out.resize(len + room, 0);
            let before = d.total_out();
            let status = d.decompress(&input[used..], &mut out[len..], flush);
            let produced = (d.total_out() - before) as usize;
            out.truncate(len + produced);
            let status = status.map_err(|_| ProtocolError::CorruptCompressed)?;
            if out.len() > max {
                return Err(ProtocolError::MessageTooBig);
            }
            if self.text {
                self.utf8.feed(&out[len..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            let all_in = (d.total_in() - start_in) as usize == input.len();
            if status == Status::StreamEnd {
                self.ended = true;
                if !all_in && flush == FlushDecompress::None {
                    return Err(ProtocolError::CorruptCompressed);
                }
                return Ok(());
            }
            if all_in && produced < room {
                return Ok(());
            }
            if produced == 0 && !all_in && status == Status::BufError {
                return Err(ProtocolError::CorruptCompressed);
            }
        }
    }
}

/// Compresses `payload` as one message with `c` as it stands (reset or holding the
/// connection's context) into `out`: a sync flush, so the message ends on a byte
/// boundary, then its tail stripped (RFC 7692 7.2.1).
pub(crate) fn deflate_message(c: &mut Compress, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(payload.len() / 2 + 64);
    let start = c.total_in();
    loop {
        let done = (c.total_in() - start) as usize;
        let _ = c.compress_vec(&payload[done..], out, FlushCompress::Sync);
        if (c.total_in() - start) as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_every_window() {
        let msg: Vec<u8> = (0..5000).flat_map(|i| format!("{{\"id\":{i},\"v\":\"abc\"}}").into_bytes()).collect();
        let mut c = Codec::new();
        for bits in 9..=15 {
            let z = c.compress(&msg, bits).to_vec();
            assert!(z.len() < msg.len() / 3, "{} of {}", z.len(), msg.len());
            c.inflate(&z, true, msg.len()).unwrap();
            assert_eq!(c.inflater.inflated, msg);
        }
    }

    #[test]
    fn limits_and_bad_input() {
        let mut c = Codec::new();
        let big = vec![b'a'; 1 << 20];
        let z = c.compress(&big, 15).to_vec();
        assert!(z.len() < 16 << 10, "{}", z.len());
        assert_eq!(c.inflate(&z, false, 1000), Err(ProtocolError::MessageTooBig));
        assert!(c.inflater.inflated.capacity() <= 1001 + STEP);
        assert_eq!(c.inflate(&[0xff, 0xff, 0xff], false, 1000), Err(ProtocolError::CorruptCompressed));
        let z = c.compress(&[b'a', 0xff, b'b'], 15).to_vec();
        assert_eq!(c.inflate(&z, true, 1000), Err(ProtocolError::InvalidUtf8));
        assert_eq!(c.inflate(&z, false, 1000), Ok(()));
        // An empty message compresses to one byte and back to nothing.
        let z = c.compress(b"", 15).to_vec();
        c.inflate(&z, true, 10).unwrap();
        assert!(c.inflater.inflated.is_empty());
    }

    #[test]
    fn bad_utf8_is_found_in_the_part_that_holds_it() {
        // Bad byte first, then enough text that the first half of the compressed bytes
        // inflates past it.
        let mut msg = vec![b'{', 0xff];
        for i in 0..4000 {
            msg.extend_from_slice(format!("\"k{i}\":{},", i * 7919 % 10007).as_bytes());
        }
        let mut c = Codec::new();
        let z = c.compress(&msg, 15).to_vec();
        let (a, b) = z.split_at(z.len() / 2);
        assert_eq!(c.inflate_part(1, a, true, 1 << 20), Err(ProtocolError::InvalidUtf8));
        assert!(c.partial.is_empty(), "a failed message is dropped");
        // Binary: the same parts inflate to the whole message.
        c.inflate_part(2, a, false, 1 << 20).unwrap();
        c.inflate_part(2, &b[..1], false, 1 << 20).unwrap();
        let mut i = c.take_partial(2).unwrap();
        i.feed(&b[1..], 1 << 20).unwrap();
        i.finish(1 << 20).unwrap();
        assert_eq!(i.inflated, msg);
        c.recycle(i);
        // The size limit counts across parts.
        assert_eq!(c.inflate_part(3, a, false, 100), Err(ProtocolError::MessageTooBig));
    }
}
