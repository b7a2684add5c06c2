//! Redis Cluster hash slots: which of the 16384 slots a channel name falls in, and a
//! short hash tag for each slot, so that a node channel can be put in any room's slot.
//!
//! Redis hashes the part of a name between the first `{` and the next `}` when that
//! part is not empty, the whole name otherwise (CRC16-XMODEM, modulo 16384). A room's
//! node channel must share the room channel's slot whatever bytes the room name holds
//! (`{` and `}` included), so it does not copy the room channel into a hash tag: it
//! starts with `{<tag>}`, where `<tag>` is the first string, in a fixed order known to
//! every node, that hashes to the room channel's slot.

use std::sync::OnceLock;

/// Slots in a Redis Cluster.
pub(crate) const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), Redis Cluster's key hash.
pub(crate) fn crc16(bytes: &[u8]) -> u16 {
    crc16_of(bytes.iter().copied())
}

fn crc16_of(bytes: impl Iterator<Item = u8>) -> u16 {
    let mut crc = 0u16;
    for b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The slot Redis puts `name` (a key or a shard channel) in; [`of_concat`] without the
/// iterators, which the tests hold it to.
#[cfg(test)]
pub(crate) fn of(name: &[u8]) -> u16 {
    let key = match name.iter().position(|&b| b == b'{') {
        Some(open) => match name[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &name[open + 1..open + 1 + len],
            _ => name,
        },
        None => name,
    };
    crc16(key) % SLOTS as u16
}

/// The slot of the name `a` followed by `b`, without joining them (a publish's room
/// channel is the prefix, then the topic: no allocation on the worker for it).
pub(crate) fn of_concat(a: &[u8], b: &[u8]) -> u16 {
    let name = || a.iter().chain(b).copied();
    let hashed = match name().position(|c| c == b'{') {
        Some(open) => match name().skip(open + 1).position(|c| c == b'}') {
            Some(len) if len > 0 => crc16_of(name().skip(open + 1).take(len)),
            _ => crc16_of(name()),
        },
        None => crc16_of(name()),
    };
    hashed % SLOTS as u16
}

/// The alphabet the tags are spelled in, in the order they are tried.
const ALPHABET: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// One slot's tag: up to 4 bytes of [`ALPHABET`].
#[derive(Clone, Copy)]
struct Tag {
    len: u8,
    bytes: [u8; 4],
}

/// The hash tag (without braces) of `slot`: the first string of 1 to 4 characters of
/// [`ALPHABET`] (shorter first, then in alphabet order) that hashes to it. Every node
/// computes the same table; built on first use (about 16k hashes per slot filled late,
/// a few milliseconds in all).
pub(crate) fn tag(slot: u16) -> &'static [u8] {
    static TABLE: OnceLock<Box<[Tag]>> = OnceLock::new();
    let table = TABLE.get_or_init(build_tags);
    let t = &table[usize::from(slot) % SLOTS];
    &t.bytes[..usize::from(t.len)]
}

fn build_tags() -> Box<[Tag]> {
    let mut table = vec![Tag { len: 0, bytes: [0; 4] }; SLOTS].into_boxed_slice();
    let mut left = SLOTS;
    for len in 1..=4usize {
        let count = ALPHABET.len().pow(len as u32);
        for mut i in 0..count {
            let mut bytes = [0u8; 4];
            for b in bytes[..len].iter_mut().rev() {
                *b = ALPHABET[i % ALPHABET.len()];
                i /= ALPHABET.len();
            }
            let s = usize::from(crc16(&bytes[..len])) % SLOTS;
            if table[s].len == 0 {
                table[s] = Tag { len: len as u8, bytes };
                left -= 1;
                if left == 0 {
                    return table;
                }
            }
        }
    }
    // 62^4 strings cover all 16384 slots (checked by `every_slot_has_a_tag`).
    unreachable!("{left} slots without a tag")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_as_redis_does() {
        // The reference values of the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(of(b"somekey"), 11058);
        assert_eq!(of(b"foo{hash_tag}"), 2515);
        assert_eq!(of(b"{hash_tag}bar"), 2515);
        // An empty tag, or none closed, hashes the whole name.
        assert_eq!(of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(of(b"foo{bar"), crc16(b"foo{bar") % 16384);
        assert_eq!(of(b"foo{{bar}}zap"), crc16(b"{bar") % 16384);
        // Split anywhere, the same slot.
        for name in [&b"somekey"[..], b"foo{hash_tag}", b"foo{}{bar}", b"foo{{bar}}zap", b"{a}", b"x{"] {
            for cut in 0..=name.len() {
                assert_eq!(of_concat(&name[..cut], &name[cut..]), of(name), "{name:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn every_slot_has_a_tag() {
        for s in 0..SLOTS as u16 {
            let t = tag(s);
            assert!(!t.is_empty() && t.len() <= 4 && !t.contains(&b'}'));
            let mut name = b"{".to_vec();
            name.extend_from_slice(t);
            name.extend_from_slice(b"}wsloop:\0a}b{c");
            assert_eq!(of(&name), s, "tag {:?}", String::from_utf8_lossy(t));
        }
        // Fixed, so that every node names a room's node channel alike.
        assert_eq!(tag(of(b"wsloop:news")), tag(of(b"wsloop:news")));
        assert_eq!(tag(of(b"0")), b"0");
    }
}
