//! `DATA` compressed as one zstd stream per session (codec 3,
//! spec/SYNC.md section 5): each message is the stream's output for its
//! bytes, flushed, so the receiver decodes it whole on arrival, and each
//! range is compressed with the ranges sent before it as history. Ranges
//! are small (a leaf's changed blocks, 4 to 64 KiB); alone, each would be
//! a frame that starts from nothing.

use std::io;

use zstd::stream::raw::{CParameter, DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// The zstd level a session starts at.
pub const LEVEL: i32 = 3;

/// The levels a sender moves between ([`Packer::set_level`]). On the
/// VM-upgrade pair's changed blocks, in 64 KiB messages, one core: level 3
/// 113.1 MB at 185-277 MB/s, level 2 115.8 MB at 280-410 MB/s, level 1
/// 120.9 MB at 450-474 MB/s, which is too close to issue 18's budget for
/// bytes down (1.1x zstd -3). Level 6 still uses a 2 MiB window.
pub const LEVELS: std::ops::RangeInclusive<i32> = 2..=6;

/// The largest window the receiver accepts (8 MiB of decoder memory): a
/// sender's stream may not make it hold more. Level 3 uses 2 MiB.
const MAX_WINDOW_LOG: u32 = 23;

/// The sender's half.
pub struct Packer {
    encoder: Encoder<'static>,
    level: i32,
    /// The level the next frame is to have.
    next_level: i32,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Packer")
    }
}

impl Packer {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            encoder: Encoder::new(LEVEL)?,
            level: LEVEL,
            next_level: LEVEL,
        })
    }

    /// The level of the frame being written.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Compresses at `level` (within [`LEVELS`]) from the message after
    /// the next: zstd fixes a frame's level, so the next message ends the
    /// frame and the one after it starts a new one, without the history
    /// before it.
    pub fn set_level(&mut self, level: i32) {
        self.next_level = level.clamp(*LEVELS.start(), *LEVELS.end());
    }

    /// The stream's bytes for `raw`, flushed: decodable on their own after
    /// every message before them.
    pub fn pack(&mut self, raw: &[u8]) -> io::Result<Vec<u8>> {
        let mut out: Vec<u8> = Vec::with_capacity(raw.len() / 2 + 64);
        let mut input = InBuffer::around(raw);
        // The output buffer writes into the vector's spare room and sets
        // its length.
        while input.pos() < raw.len() {
            reserve(&mut out);
            let at = out.len();
            self.encoder
                .run(&mut input, &mut OutBuffer::around_pos(&mut out, at))?;
        }
        let end = self.next_level != self.level;
        loop {
            reserve(&mut out);
            let at = out.len();
            let mut output = OutBuffer::around_pos(&mut out, at);
            let left = if end {
                self.encoder.finish(&mut output, true)?
            } else {
                self.encoder.flush(&mut output)?
            };
            if left == 0 {
                break;
            }
        }
        if end {
            // Between frames: the next one starts at the new level.
            self.encoder
                .set_parameter(CParameter::CompressionLevel(self.next_level))?;
            self.level = self.next_level;
        }
        Ok(out)
    }
}

/// The receiver's half.
pub struct Unpacker {
    decoder: Decoder<'static>,
}

impl std::fmt::Debug for Unpacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unpacker")
    }
}

impl Unpacker {
    pub fn new() -> io::Result<Self> {
        let mut decoder = Decoder::new()?;
        decoder.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))?;
        Ok(Self { decoder })
    }

    /// Decodes one message's bytes into `dst`, which they must fill
    /// exactly, consuming all of them.
    pub fn unpack(&mut self, packed: &[u8], dst: &mut [u8]) -> Result<(), String> {
        let want = dst.len();
        let mut input = InBuffer::around(packed);
        let mut output = OutBuffer::around(dst);
        loop {
            let (read, wrote) = (input.pos(), output.pos());
            self.decoder
                .run(&mut input, &mut output)
                .map_err(|e| format!("its compressed stream does not decode: {e}"))?;
            let full = output.pos() == want;
            if input.pos() == packed.len() && full {
                // Nothing may be left inside the decoder either.
                let mut spare = [0u8; 1];
                let mut more = OutBuffer::around(&mut spare[..]);
                let mut none = InBuffer::around(&[]);
                self.decoder
                    .run(&mut none, &mut more)
                    .map_err(|e| format!("its compressed stream does not decode: {e}"))?;
                if more.pos() == 0 {
                    return Ok(());
                }
            }
            if input.pos() == read && output.pos() == wrote || full {
                return Err(format!(
                    "a message of {} compressed bytes does not decode to the {} bytes it says",
                    packed.len(),
                    want
                ));
            }
        }
    }
}

/// Room for more output at the end of `out`.
fn reserve(out: &mut Vec<u8>) {
    if out.capacity() - out.len() < 1024 {
        out.reserve(out.capacity().max(4096));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_in_order_and_later_ones_use_earlier_ones_as_history() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let block: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let mut p = Packer::new().expect("packer");
        let mut u = Unpacker::new().expect("unpacker");
        let first = p.pack(&block).expect("pack");
        let again = p.pack(&block).expect("pack");
        // The second copy is a reference to the first.
        assert!(
            again.len() < first.len() / 4,
            "{} then {}",
            first.len(),
            again.len()
        );
        for packed in [&first, &again] {
            let mut out = vec![0; block.len()];
            u.unpack(packed, &mut out).expect("unpack");
            assert_eq!(out, block);
        }
    }

    #[test]
    fn a_new_level_starts_a_new_frame_that_decodes_in_the_same_stream() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {} of {}\n", i % 977, i % 13).into_bytes())
            .collect();
        let magic = 0xFD2F_B528u32.to_le_bytes();
        let mut p = Packer::new().expect("packer");
        let mut u = Unpacker::new().expect("unpacker");
        let mut seen = Vec::new();
        for (i, level) in [3, 2, 2, 6, 6, 6, 4].into_iter().enumerate() {
            p.set_level(level);
            let used = p.level();
            let chunk = &text[i * 60_000..(i + 1) * 60_000];
            let packed = p.pack(chunk).expect("pack");
            let mut out = vec![0; chunk.len()];
            u.unpack(&packed, &mut out).expect("unpack");
            assert_eq!(out, chunk, "message {i}");
            seen.push((used, packed.starts_with(&magic)));
        }
        // A change applies from the message after the one that ends the
        // frame, which starts a new frame; other messages continue one.
        assert_eq!(
            seen,
            [
                (3, true),
                (3, false),
                (2, true),
                (2, false),
                (6, true),
                (6, false),
                (6, false)
            ]
        );
        p.set_level(99);
        p.pack(b"x").expect("pack");
        assert_eq!(p.level(), *LEVELS.end());
    }

    #[test]
    fn a_message_of_another_length_is_refused() {
        let mut p = Packer::new().expect("packer");
        let packed = p.pack(&[7u8; 5000]).expect("pack");
        for len in [4999, 5001] {
            let mut u = Unpacker::new().expect("unpacker");
            let mut out = vec![0; len];
            assert!(u.unpack(&packed, &mut out).is_err(), "{len}");
        }
        let mut u = Unpacker::new().expect("unpacker");
        assert!(u.unpack(b"not zstd at all", &mut [0; 10]).is_err());
    }
}
