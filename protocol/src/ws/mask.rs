//! Frame masking (RFC 6455 section 5.3).
//!
//! [`apply_mask`] XORs a buffer with the 4-byte key, starting at any offset into the
//! payload (so a payload that arrives in pieces is unmasked piece by piece). The bulk is
//! done eight bytes at a time on a `u64` built from the rotated key, which the compiler
//! turns into vector instructions; only the ragged ends go byte by byte.

/// XORs `buf` with `mask`, as if `buf` started `offset` bytes into the masked payload.
/// Masking and unmasking are the same operation.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset % 4);
    let mut chunks = buf.chunks_exact_mut(8);
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    for chunk in &mut chunks {
        // The slice is exactly 8 bytes long: chunks_exact_mut guarantees it.
        let word: &mut [u8; 8] = chunk.try_into().expect("chunk of 8 bytes");
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
    }
    // The bulk consumed a multiple of 8 (and so of 4) bytes: the key phase is unchanged.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The reference byte-at-a-time version, kept for tests and benchmarks.
pub fn apply_mask_bytewise(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        // Wrapping: only the sum modulo 4 matters, and usize::MAX + 1 is a multiple of 4.
        *b ^= mask[i.wrapping_add(offset) & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_bytewise_at_every_offset_and_length() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..70 {
            for offset in 0..8 {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut fast = data.clone();
                let mut slow = data.clone();
                apply_mask(&mut fast, mask, offset);
                apply_mask_bytewise(&mut slow, mask, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
                apply_mask(&mut fast, mask, offset);
                assert_eq!(fast, data);
            }
        }
    }

    #[test]
    fn offsets_near_usize_max() {
        // Regression: the bytewise version overflowed (a panic in debug builds).
        for offset in [usize::MAX - 3, usize::MAX - 1, usize::MAX] {
            let mut fast = [0u8; 11];
            let mut slow = [0u8; 11];
            apply_mask(&mut fast, [1, 2, 3, 4], offset);
            apply_mask_bytewise(&mut slow, [1, 2, 3, 4], offset);
            assert_eq!(fast, slow, "offset {offset}");
        }
    }

    #[test]
    fn piecewise_equals_whole() {
        let mask = [1, 2, 3, 4];
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        let mut pieces = data.clone();
        let (a, rest) = pieces.split_at_mut(13);
        let (b, c) = rest.split_at_mut(30);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 13);
        apply_mask(c, mask, 43);
        assert_eq!(whole, pieces);
    }
}
