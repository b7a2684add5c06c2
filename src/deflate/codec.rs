//! One worker's compressor and decompressor (the `shared` mode): every message is
//! compressed and inflated on its own, so no connection holds deflate state between
//! messages (RFC 7692 7.1.1: `server_no_context_takeover`, `client_no_context_takeover`).

use crate::proto::utf8::Utf8Validator;
use crate::proto::ProtocolError;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The empty stored block that ends every compressed message (RFC 7692 7.2.1): the
/// sender strips it, the receiver appends it.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output is produced in steps of at most this, so a small frame that inflates to a
/// lot stops at `max_message` with memory bounded by it.
const STEP: usize = 16 << 10;

/// Level 1: the speed of a server that compresses every message (gorilla's default);
/// JSON-like text still shrinks several times.
const LEVEL: u32 = 1;

/// The worker's deflate state, behind `Ctx` (about 64 KiB of zlib state per window size
/// in use plus the inflater's 32 KiB window: per worker, not per connection).
pub(crate) struct Codec {
    /// One compressor per window size (9 to 15 bits), made on first use.
    compressors: [Option<Box<Compress>>; 7],
    inflater: Box<Decompress>,
    /// The last compressed payload (without its tail).
    pub out: Vec<u8>,
    /// The last inflated message.
    pub inflated: Vec<u8>,
    utf8: Utf8Validator,
}

impl Codec {
    pub fn new() -> Self {
        Codec {
            compressors: Default::default(),
            inflater: Box::new(Decompress::new_with_window_bits(false, 15)),
            out: Vec::new(),
            inflated: Vec::new(),
            utf8: Utf8Validator::new(),
        }
    }

    /// Compresses `payload` as one message with a `bits` window into `self.out`.
    pub fn compress(&mut self, payload: &[u8], bits: u8) -> &[u8] {
        let bits = bits.clamp(9, 15);
        let c = self.compressors[(bits - 9) as usize]
            .get_or_insert_with(|| Box::new(Compress::new_with_window_bits(Compression::new(LEVEL), false, bits)));
        c.reset();
        let out = &mut self.out;
        out.clear();
        out.reserve(payload.len() / 2 + 64);
        loop {
            let done = c.total_in() as usize;
            let _ = c.compress_vec(&payload[done..], out, FlushCompress::Sync);
            if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    }

    /// Inflates one message's payload into `self.inflated`: at most `max` bytes of
    /// output (1009 past it), corrupt data 1007, and for `text` UTF-8 checked as it is
    /// inflated (1007 at the first step that holds a bad byte).
    pub fn inflate(&mut self, payload: &[u8], text: bool, max: usize) -> Result<(), ProtocolError> {
        let d = &mut self.inflater;
        d.reset(false);
        self.utf8.reset();
        let out = &mut self.inflated;
        out.clear();
        for (input, flush) in [(payload, FlushDecompress::None), (&TAIL[..], FlushDecompress::Sync)] {
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
                if text {
                    self.utf8.feed(&out[len..]).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                let all_in = (d.total_in() - start_in) as usize == input.len();
                if status == Status::StreamEnd {
                    // A final block: whatever follows it is not deflate data.
                    if !all_in && flush == FlushDecompress::None {
                        return Err(ProtocolError::CorruptCompressed);
                    }
                    return self.finish(text);
                }
                if all_in && produced < room {
                    break;
                }
                if produced == 0 && !all_in && status == Status::BufError {
                    return Err(ProtocolError::CorruptCompressed);
                }
            }
        }
        self.finish(text)
    }

    fn finish(&mut self, text: bool) -> Result<(), ProtocolError> {
        if text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
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
            assert_eq!(c.inflated, msg);
        }
    }

    #[test]
    fn limits_and_bad_input() {
        let mut c = Codec::new();
        let big = vec![b'a'; 1 << 20];
        let z = c.compress(&big, 15).to_vec();
        assert!(z.len() < 16 << 10, "{}", z.len());
        assert_eq!(c.inflate(&z, false, 1000), Err(ProtocolError::MessageTooBig));
        assert!(c.inflated.capacity() <= 1001 + STEP);
        assert_eq!(c.inflate(&[0xff, 0xff, 0xff], false, 1000), Err(ProtocolError::CorruptCompressed));
        let z = c.compress(&[b'a', 0xff, b'b'], 15).to_vec();
        assert_eq!(c.inflate(&z, true, 1000), Err(ProtocolError::InvalidUtf8));
        assert_eq!(c.inflate(&z, false, 1000), Ok(()));
        // An empty message compresses to one byte and back to nothing.
        let z = c.compress(b"", 15).to_vec();
        c.inflate(&z, true, 10).unwrap();
        assert!(c.inflated.is_empty());
    }
}
