//! The two hashes of each block, and the rolling form of the weak one.
//!
//! - The *weak key* is Adler-32 (RFC 1950) of the whole block: two sums
//!   modulo 65521 that slide one byte at a time in O(1) ([`Rolling`]), as
//!   rsync's checksum does, so a window the size of a block can be keyed
//!   at every byte offset of the new file.
//! - The *strong hash* is XXH3-128 of the block, seeded with the index's
//!   seed. It confirms a weak hit without the old bytes. It is not the root
//!   of trust: the patch's whole-file BLAKE3 is (spec/INDEX.md section 7).

/// Adler-32's modulus: the largest prime below 2^16.
const MOD: u32 = 65521;

/// The entry of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHashes {
    /// Adler-32 of the block.
    pub weak: u32,
    /// XXH3-128 of the block with the index's seed, little endian.
    pub strong: [u8; 16],
}

impl BlockHashes {
    /// Both hashes of `block`.
    pub fn of(block: &[u8], seed: u64) -> Self {
        Self {
            weak: weak(block),
            strong: strong(block, seed),
        }
    }

    /// The 20-byte entry: weak key (u32 LE), then the strong hash.
    pub fn emit(&self) -> [u8; crate::ENTRY_LEN] {
        let mut e = [0u8; crate::ENTRY_LEN];
        e[..4].copy_from_slice(&self.weak.to_le_bytes());
        e[4..].copy_from_slice(&self.strong);
        e
    }

    /// Decodes a 20-byte entry.
    pub fn parse(e: &[u8; crate::ENTRY_LEN]) -> Self {
        let mut weak = [0u8; 4];
        let mut strong = [0u8; 16];
        weak.copy_from_slice(&e[..4]);
        strong.copy_from_slice(&e[4..]);
        Self {
            weak: u32::from_le_bytes(weak),
            strong,
        }
    }
}

/// The weak key of `block`: its Adler-32.
pub fn weak(block: &[u8]) -> u32 {
    simd_adler32::adler32(&block)
}

/// The strong hash of `block`: XXH3-128 with `seed`, little endian.
pub fn strong(block: &[u8], seed: u64) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128_with_seed(block, seed).to_le_bytes()
}

/// Adler-32 of a window of fixed length that slides one byte at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rolling {
    a: u32,
    b: u32,
    /// The window length modulo [`MOD`].
    len: u32,
}

impl Rolling {
    /// The window over `bytes` (its length is the window's from now on).
    pub fn new(bytes: &[u8]) -> Self {
        let v = weak(bytes);
        Self {
            a: v & 0xFFFF,
            b: v >> 16,
            len: (bytes.len() as u64 % u64::from(MOD)) as u32,
        }
    }

    /// Slides the window one byte: `out` leaves at the front, `inp` comes in
    /// at the back.
    pub fn roll(&mut self, out: u8, inp: u8) {
        let (out, inp) = (u32::from(out), u32::from(inp));
        // a' = a - out + in; b' = b - len * out + a' - 1 (all mod 65521),
        // reduced by subtraction: this runs once per byte searched.
        let reduce = |mut x: u32, times: usize| {
            for _ in 0..times {
                if x >= MOD {
                    x -= MOD;
                }
            }
            x
        };
        // a + MOD - out + in < 2 MOD + 255.
        self.a = reduce(self.a + MOD - out + inp, 2);
        let sub = (self.len * out + 1) % MOD;
        // b + a' + MOD - sub < 3 MOD.
        self.b = reduce(self.b + self.a + MOD - sub, 2);
    }

    /// The key of the window as it is: what [`weak`] gives for its bytes.
    pub fn value(&self) -> u32 {
        self.b << 16 | self.a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_equals_direct() {
        let bytes: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8 | (u8::from(i % 3 == 0) * 0xF0))
            .collect();
        for len in [1usize, 5, 512, 4096] {
            let mut r = Rolling::new(&bytes[..len]);
            for p in 1..=bytes.len() - len {
                r.roll(bytes[p - 1], bytes[p - 1 + len]);
                assert_eq!(r.value(), weak(&bytes[p..p + len]), "len {len} at {p}");
            }
        }
    }

    #[test]
    fn known_values() {
        // RFC 1950's Adler-32 of "Wikipedia" is 0x11E60398.
        assert_eq!(weak(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(weak(b""), 1);
        let e = BlockHashes::of(b"abc", 7);
        assert_eq!(BlockHashes::parse(&e.emit()), e);
    }
}
