//! XOR masking of payloads (RFC 6455 section 5.3), a machine word at a time.

/// Applies `key` to `buf` in place, as if `buf` started `offset` bytes into the payload.
///
/// Masking is its own inverse, so this both masks and unmasks. `offset` lets a payload
/// that arrives in pieces be unmasked piece by piece.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_for(key, offset);
    if buf.len() < 64 {
        // Small payloads (the common chat or telemetry message): 16, 8 and 4 bytes at a
        // time with unaligned loads, without the alignment split or a vectorised loop's
        // set-up. The key repeats every 4 bytes, so each width sees it at offset 0.
        let k = u32::from_ne_bytes(key);
        let k64 = (k as u64) << 32 | k as u64;
        let k128 = (k64 as u128) << 64 | k64 as u128;
        let mut blocks = buf.chunks_exact_mut(16);
        for c in &mut blocks {
            let c: &mut [u8; 16] = c.try_into().expect("16-byte chunk");
            *c = (u128::from_ne_bytes(*c) ^ k128).to_ne_bytes();
        }
        let mut rest = blocks.into_remainder();
        if rest.len() >= 8 {
            let (c, r) = rest.split_at_mut(8);
            let c: &mut [u8; 8] = c.try_into().expect("8 bytes");
            *c = (u64::from_ne_bytes(*c) ^ k64).to_ne_bytes();
            rest = r;
        }
        if rest.len() >= 4 {
            let (c, r) = rest.split_at_mut(4);
            let c: &mut [u8; 4] = c.try_into().expect("4 bytes");
            *c = (u32::from_ne_bytes(*c) ^ k).to_ne_bytes();
            rest = r;
        }
        apply_bytes(rest, key);
        return;
    }
    apply_mask_long(buf, key);
}

/// `apply_mask` for 64 bytes and more, kept out of line so the small case inlines.
#[inline(never)]
fn apply_mask_long(buf: &mut [u8], key: [u8; 4]) {
    // Head: bytes before the first 8-byte boundary, then the bulk as u64 words (the
    // compiler vectorises the loop), then the tail.
    // SAFETY: `align_to_mut` with u8 -> u64 is sound for any bytes: every bit pattern is
    // a valid u64 and the middle slice is aligned by construction.
    let (head, words, tail) = unsafe { buf.align_to_mut::<u64>() };
    apply_bytes(head, key);
    let key = rotate_for(key, head.len());
    let key64 = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    for w in words.iter_mut() {
        *w ^= key64;
    }
    apply_bytes(tail, key);
}

/// The key as seen `consumed` bytes later: rotated left by `consumed % 4` bytes, done as
/// one integer rotation (slice rotation is a generic, much slower routine).
#[inline]
fn rotate_for(key: [u8; 4], consumed: usize) -> [u8; 4] {
    u32::from_le_bytes(key).rotate_right(8 * (consumed & 3) as u32).to_le_bytes()
}

#[inline]
fn apply_bytes(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + offset) & 3];
        }
    }

    #[test]
    fn matches_bytewise_for_every_alignment_offset_and_length() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..9 {
            for len in [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200] {
                for offset in 0..5 {
                    let mut a = data[start..start + len].to_vec();
                    let mut b = a.clone();
                    // Unaligned view into a larger buffer to exercise the head path.
                    let mut big = data.clone();
                    apply_mask(&mut big[start..start + len], key, offset);
                    apply_mask(&mut a, key, offset);
                    naive(&mut b, key, offset);
                    assert_eq!(a, b, "start {start} len {len} offset {offset}");
                    assert_eq!(&big[start..start + len], &b[..]);
                }
            }
        }
    }

    #[test]
    fn piecewise_equals_whole() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(37);
        apply_mask(a, key, 0);
        apply_mask(b, key, 37);
        assert_eq!(whole, pieces);
    }
}
