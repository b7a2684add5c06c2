//! What the generator puts in its messages, and how it checks what comes back.
//!
//! Payloads are pseudo-random but reproducible from a 64-bit seed, so an echo can be
//! verified byte for byte without keeping a copy of every message in flight: the
//! connection remembers the seed, and [`matches`] regenerates the bytes while comparing.
//! Broadcast messages start with a stamp (send time and sequence number) and carry
//! filler derived from the sequence number.

/// xorshift64*: a cheap generator for payloads, mask keys and nonces. Not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from any seed (zero included: the state is never zero).
    pub fn new(seed: u64) -> Rng {
        // splitmix64 spreads close seeds (thread numbers, sequence numbers) apart.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A fresh masking key.
    pub fn mask_key(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }

    /// A fresh 16-byte handshake nonce.
    pub fn nonce(&mut self) -> [u8; 16] {
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        n[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        n
    }
}

/// Text payloads use the bytes 0x40..=0x7f only: valid UTF-8 and cheap to make.
const TEXT_AND: u64 = 0x3f3f_3f3f_3f3f_3f3f;
const TEXT_OR: u64 = 0x4040_4040_4040_4040;

#[inline]
fn word(rng: &mut Rng, text: bool) -> u64 {
    let w = rng.next_u64();
    if text {
        (w & TEXT_AND) | TEXT_OR
    } else {
        w
    }
}

/// Fills `out` with the payload for `seed`.
pub fn fill(seed: u64, text: bool, out: &mut [u8]) {
    let mut rng = Rng::new(seed);
    for chunk in out.chunks_mut(8) {
        let w = word(&mut rng, text).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Whether `got` is exactly the payload [`fill`] makes for `seed` and `len`.
pub fn matches(seed: u64, text: bool, len: usize, got: &[u8]) -> bool {
    if got.len() != len {
        return false;
    }
    let mut rng = Rng::new(seed);
    let mut chunks = got.chunks_exact(8);
    for chunk in &mut chunks {
        let w = word(&mut rng, text);
        if u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8)")) != w {
            return false;
        }
    }
    let rest = chunks.remainder();
    rest.is_empty() || rest == &word(&mut rng, text).to_le_bytes()[..rest.len()]
}

/// Bytes the stamp takes at the front of a broadcast message: two little-endian u64s
/// for binary, two 16-digit hex numbers for text.
pub fn stamp_len(text: bool) -> usize {
    if text {
        32
    } else {
        16
    }
}

/// The seed of a broadcast message's filler: a function of its sequence number only,
/// so any subscriber can check it.
fn filler_seed(seq: u64) -> u64 {
    seq ^ 0x5EED_F111_E000_0000
}

/// Writes a broadcast message of `out.len()` bytes (at least [`stamp_len`]): send time
/// in nanoseconds, sequence number, then filler.
pub fn write_stamped(out: &mut [u8], text: bool, sent_ns: u64, seq: u64) {
    let n = stamp_len(text);
    if text {
        write_hex(&mut out[..16], sent_ns);
        write_hex(&mut out[16..32], seq);
    } else {
        out[..8].copy_from_slice(&sent_ns.to_le_bytes());
        out[8..16].copy_from_slice(&seq.to_le_bytes());
    }
    fill(filler_seed(seq), text, &mut out[n..]);
}

/// Reads a broadcast message back: `Some((sent_ns, seq))` when it has the expected
/// length, a readable stamp and the right filler.
pub fn read_stamped(msg: &[u8], text: bool, len: usize) -> Option<(u64, u64)> {
    let n = stamp_len(text);
    if msg.len() != len || len < n {
        return None;
    }
    let (sent_ns, seq) = if text {
        (read_hex(&msg[..16])?, read_hex(&msg[16..32])?)
    } else {
        (u64::from_le_bytes(msg[..8].try_into().ok()?), u64::from_le_bytes(msg[8..16].try_into().ok()?))
    };
    matches(filler_seed(seq), text, len - n, &msg[n..]).then_some((sent_ns, seq))
}

fn write_hex(out: &mut [u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn read_hex(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | d as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_matches_agree_for_every_tail_length() {
        for text in [false, true] {
            for len in 0..40 {
                let mut buf = vec![0u8; len];
                fill(42, text, &mut buf);
                assert!(matches(42, text, len, &buf), "len {len}");
                if text {
                    assert!(std::str::from_utf8(&buf).is_ok());
                }
                if len > 0 {
                    buf[len - 1] ^= 1;
                    assert!(!matches(42, text, len, &buf), "len {len} flipped");
                }
            }
        }
    }

    #[test]
    fn matches_rejects_other_seed_and_length() {
        let mut buf = vec![0u8; 32];
        fill(7, false, &mut buf);
        assert!(!matches(8, false, 32, &buf));
        assert!(!matches(7, false, 32, &buf[..31]));
        assert!(!matches(7, false, 33, &buf));
    }

    #[test]
    fn stamped_round_trip() {
        for text in [false, true] {
            let len = stamp_len(text) + 21;
            let mut buf = vec![0u8; len];
            write_stamped(&mut buf, text, 123_456_789_012, 77);
            assert_eq!(read_stamped(&buf, text, len), Some((123_456_789_012, 77)));
            if text {
                assert!(std::str::from_utf8(&buf).is_ok());
            }
            assert_eq!(read_stamped(&buf[..len - 1], text, len), None);
            buf[len - 1] ^= 1;
            assert_eq!(read_stamped(&buf, text, len), None);
        }
    }

    #[test]
    fn stamp_only_message() {
        let mut buf = [0u8; 16];
        write_stamped(&mut buf, false, 1, u64::MAX);
        assert_eq!(read_stamped(&buf, false, 16), Some((1, u64::MAX)));
    }

    #[test]
    fn rng_is_never_stuck_at_zero() {
        let mut r = Rng::new(0);
        assert_ne!(r.next_u64(), 0);
        assert_ne!(Rng::new(1).nonce(), Rng::new(2).nonce());
    }
}
