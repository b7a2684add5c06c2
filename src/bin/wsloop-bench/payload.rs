//! What the generator puts in its messages, and how it checks what comes back.
//!
//! Payloads are pseudo-random but reproducible from a 64-bit seed, so an echo can be
//! verified byte for byte without keeping a copy of every message in flight: the
//! connection remembers the seed, and [`matches`] regenerates the bytes while comparing.
//! Broadcast messages start with a stamp (send time and sequence number) and carry
//! filler derived from the sequence number. `--json` (and `--deflate`) payloads are
//! JSON-like text records made from the same generator: compressible as real push
//! traffic is.

use std::cell::RefCell;

/// What a payload is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Random bytes.
    Binary,
    /// Random bytes in 0x40..=0x7f (about 6 bits of entropy each: barely compressible).
    Text,
    /// JSON-like records (`{"id":..,"user":"user-..",..}`), cut to length.
    Json,
}

impl Kind {
    pub fn is_text(self) -> bool {
        self != Kind::Binary
    }
}

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
pub fn fill(seed: u64, kind: Kind, out: &mut [u8]) {
    if kind == Kind::Json {
        return fill_json(seed, out);
    }
    let text = kind == Kind::Text;
    let mut rng = Rng::new(seed);
    for chunk in out.chunks_mut(8) {
        let w = word(&mut rng, text).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// JSON-like records from `seed`'s generator until `out` is full (the last one cut).
fn fill_json(seed: u64, out: &mut [u8]) {
    const USERS: [&str; 8] = ["ada", "grace", "linus", "ken", "barbara", "dennis", "margaret", "alan"];
    const KINDS: [&str; 4] = ["quote", "trade", "chat", "presence"];
    let mut rng = Rng::new(seed);
    let mut pos = 0;
    let mut rec = [0u8; 160];
    while pos < out.len() {
        let r = rng.next_u64();
        let mut w = std::io::Cursor::new(&mut rec[..]);
        let _ = std::io::Write::write_fmt(
            &mut w,
            format_args!(
                r#"{{"type":"{}","id":{},"user":"{}","price":{}.{:02},"qty":{},"ok":{}}},"#,
                KINDS[(r & 3) as usize],
                (r >> 8) % 1_000_000,
                USERS[((r >> 2) & 7) as usize],
                (r >> 32) % 1000,
                (r >> 42) % 100,
                (r >> 50) % 500,
                r >> 63 == 1
            ),
        );
        let n = w.position() as usize;
        let take = n.min(out.len() - pos);
        out[pos..pos + take].copy_from_slice(&rec[..take]);
        pos += take;
    }
}

thread_local! {
    /// JSON payloads [`matches`] generated on this thread, direct-mapped by seed: a
    /// broadcast message reaches every subscriber with the same filler, and formatting
    /// it again for each delivery made the generator, not the server, the limit at 1M
    /// deliveries/s. Broadcast seeds follow the sequence number, so subscribers that lag
    /// each other by up to `EXPECTED_SLOTS` messages still share one formatting.
    static EXPECTED: RefCell<Vec<(u64, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

const EXPECTED_SLOTS: usize = 4096;

/// Whether `got` is exactly the payload [`fill`] makes for `seed` and `len`.
pub fn matches(seed: u64, kind: Kind, len: usize, got: &[u8]) -> bool {
    if got.len() != len {
        return false;
    }
    if kind == Kind::Json {
        return EXPECTED.with_borrow_mut(|slots| {
            if slots.is_empty() {
                slots.resize(EXPECTED_SLOTS, (0, Vec::new()));
            }
            let (key, want) = &mut slots[seed as usize % EXPECTED_SLOTS];
            if *key != seed || want.len() != len {
                want.resize(len, 0);
                fill_json(seed, want);
                *key = seed;
            }
            want[..] == *got
        });
    }
    let text = kind == Kind::Text;
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
pub fn stamp_len(kind: Kind) -> usize {
    let text = kind.is_text();
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
pub fn write_stamped(out: &mut [u8], kind: Kind, sent_ns: u64, seq: u64) {
    let n = stamp_len(kind);
    let text = kind.is_text();
    if text {
        write_hex(&mut out[..16], sent_ns);
        write_hex(&mut out[16..32], seq);
    } else {
        out[..8].copy_from_slice(&sent_ns.to_le_bytes());
        out[8..16].copy_from_slice(&seq.to_le_bytes());
    }
    fill(filler_seed(seq), kind, &mut out[n..]);
}

/// Reads a broadcast message back: `Some((sent_ns, seq))` when it has the expected
/// length, a readable stamp and the right filler.
pub fn read_stamped(msg: &[u8], kind: Kind, len: usize) -> Option<(u64, u64)> {
    let n = stamp_len(kind);
    let text = kind.is_text();
    if msg.len() != len || len < n {
        return None;
    }
    let (sent_ns, seq) = if text {
        (read_hex(&msg[..16])?, read_hex(&msg[16..32])?)
    } else {
        (u64::from_le_bytes(msg[..8].try_into().ok()?), u64::from_le_bytes(msg[8..16].try_into().ok()?))
    };
    matches(filler_seed(seq), kind, len - n, &msg[n..]).then_some((sent_ns, seq))
}

fn write_hex(out: &mut [u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn read_hex(s: &[u8]) -> Option<u64> {
    // Branch-free over a table (one lookup per digit, 0x80 marks a non-digit): it runs
    // twice per delivery, a million times a second in a broadcast run.
    const HEX: [u8; 256] = {
        let mut t = [0x80u8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let (mut acc, mut bad) = (0u64, 0u8);
    for &c in s {
        let d = HEX[c as usize];
        bad |= d;
        acc = acc << 4 | (d & 0xf) as u64;
    }
    (bad & 0x80 == 0).then_some(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_matches_agree_for_every_tail_length() {
        for kind in [Kind::Binary, Kind::Text, Kind::Json] {
            for len in 0..300 {
                let mut buf = vec![0u8; len];
                fill(42, kind, &mut buf);
                assert!(matches(42, kind, len, &buf), "len {len}");
                if kind.is_text() {
                    assert!(std::str::from_utf8(&buf).is_ok());
                }
                if len > 0 {
                    buf[len - 1] ^= 1;
                    assert!(!matches(42, kind, len, &buf), "len {len} flipped");
                }
            }
        }
    }

    #[test]
    fn matches_rejects_other_seed_and_length() {
        let mut buf = vec![0u8; 32];
        fill(7, Kind::Binary, &mut buf);
        assert!(!matches(8, Kind::Binary, 32, &buf));
        assert!(!matches(7, Kind::Binary, 32, &buf[..31]));
        assert!(!matches(7, Kind::Binary, 33, &buf));
        let mut json = vec![0u8; 200];
        fill(7, Kind::Json, &mut json);
        assert!(json.starts_with(b"{\"type\":"), "{}", String::from_utf8_lossy(&json));
        assert!(!matches(8, Kind::Json, 200, &json));
    }

    #[test]
    fn stamped_round_trip() {
        for kind in [Kind::Binary, Kind::Text, Kind::Json] {
            let len = stamp_len(kind) + 21;
            let mut buf = vec![0u8; len];
            write_stamped(&mut buf, kind, 123_456_789_012, 77);
            assert_eq!(read_stamped(&buf, kind, len), Some((123_456_789_012, 77)));
            if kind.is_text() {
                assert!(std::str::from_utf8(&buf).is_ok());
            }
            assert_eq!(read_stamped(&buf[..len - 1], kind, len), None);
            buf[len - 1] ^= 1;
            assert_eq!(read_stamped(&buf, kind, len), None);
        }
    }

    #[test]
    fn stamp_only_message() {
        let mut buf = [0u8; 16];
        write_stamped(&mut buf, Kind::Binary, 1, u64::MAX);
        assert_eq!(read_stamped(&buf, Kind::Binary, 16), Some((1, u64::MAX)));
    }

    #[test]
    fn rng_is_never_stuck_at_zero() {
        let mut r = Rng::new(0);
        assert_ne!(r.next_u64(), 0);
        assert_ne!(Rng::new(1).nonce(), Rng::new(2).nonce());
    }
}
