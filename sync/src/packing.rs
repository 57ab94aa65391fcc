//! `DATA` compressed as one zstd stream per session (codec 3,
//! spec/SYNC.md section 5): each message is the stream's output for its
//! bytes, flushed, so the receiver decodes it whole on arrival, and each
//! range is compressed with the ranges sent before it as history. Ranges
//! are small (a leaf's changed blocks, 4 to 64 KiB); alone, each would be
//! a frame that starts from nothing.

use std::io;

use zstd::stream::raw::{DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// The zstd level: fast enough to keep up with a gigabit link on one core.
const LEVEL: i32 = 3;

/// The largest window the receiver accepts (8 MiB of decoder memory): a
/// sender's stream may not make it hold more. Level 3 uses 2 MiB.
const MAX_WINDOW_LOG: u32 = 23;

/// The sender's half.
pub struct Packer {
    encoder: Encoder<'static>,
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
        })
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
        loop {
            reserve(&mut out);
            let at = out.len();
            if self
                .encoder
                .flush(&mut OutBuffer::around_pos(&mut out, at))?
                == 0
            {
                return Ok(out);
            }
        }
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
