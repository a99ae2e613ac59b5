//! The one layout of a connection's identity, shared by reactor events, timer entries and
//! io_uring user data:
//!
//! ```text
//!  63      56 55                32 31                              0
//! +----------+--------------------+--------------------------------+
//! |   tag    |     generation     |              slot              |
//! +----------+--------------------+--------------------------------+
//! ```
//!
//! - `slot`: the connection's index in its worker's slab (the io_uring backend uses its
//!   socket's index here for user data, which is the same shape).
//! - `generation`: the slot's reuse count (24 bits, never 0 for a live connection), so that
//!   an event, a timer or a completion for a connection that is gone never reaches the one
//!   that took its slot.
//! - `tag`: 8 bits for the owner: the io_uring operation kind, or the worker's mark on a
//!   timer entry that is a check rather than the connection's own timer. A [`Token`]
//!   itself carries tag 0; [`Token::tagged`] adds one.

/// A connection's identity: slot and generation (see the module doc for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Token(u64);

/// Bits of the generation.
pub const GENERATION_BITS: u32 = 24;
/// Generations wrap inside this mask.
pub const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;
const SLOT_MASK: u64 = 0xFFFF_FFFF;
const TAG_SHIFT: u32 = 56;

impl Token {
    /// No connection (generation 0 is never given to one).
    pub const NONE: Token = Token(0);

    /// The token of `slot` at `generation` (masked to [`GENERATION_BITS`]).
    #[inline]
    pub fn new(slot: usize, generation: u32) -> Token {
        Token(u64::from(generation & GENERATION_MASK) << 32 | (slot as u64 & SLOT_MASK))
    }

    /// The slot.
    #[inline]
    pub fn slot(self) -> usize {
        (self.0 & SLOT_MASK) as usize
    }

    /// The generation.
    #[inline]
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32 & GENERATION_MASK
    }

    /// The raw value (tag 0).
    #[inline]
    pub fn raw(self) -> u64 {
        self.0
    }

    /// The token in a raw value, its tag dropped.
    #[inline]
    pub fn from_raw(raw: u64) -> Token {
        Token(raw & !(0xFF << TAG_SHIFT))
    }

    /// The raw value with `tag` in its top byte.
    #[inline]
    pub fn tagged(self, tag: u8) -> u64 {
        self.0 | u64::from(tag) << TAG_SHIFT
    }

    /// The tag of a raw value.
    #[inline]
    pub fn tag_of(raw: u64) -> u8 {
        (raw >> TAG_SHIFT) as u8
    }

    /// The next generation after `g` (wrapping, skipping 0).
    #[inline]
    pub fn next_generation(g: u32) -> u32 {
        match (g + 1) & GENERATION_MASK {
            0 => 1,
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_tags_stay_apart() {
        let t = Token::new(12345, 0xAB_CDEF);
        assert_eq!((t.slot(), t.generation()), (12345, 0xAB_CDEF));
        let raw = t.tagged(7);
        assert_eq!(Token::tag_of(raw), 7);
        assert_eq!(Token::from_raw(raw), t);
        assert_eq!(Token::tag_of(t.raw()), 0);
        assert_eq!(Token::new(1, 0x1FF_FFFF).generation(), 0xFF_FFFF, "masked");
        assert_eq!(Token::next_generation(GENERATION_MASK), 1, "0 is skipped");
        assert_ne!(Token::new(0, 1), Token::NONE);
    }
}
