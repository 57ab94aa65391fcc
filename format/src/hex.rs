//! Lowercase hex, as every report prints hashes, key ids and keys.

use core::fmt;

/// Formats bytes as lowercase hex, two digits a byte, no separator: use it
/// in a format string (`{}`) or call `to_string()`. Width, fill and
/// alignment apply to the whole string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_none() {
            return self.0.iter().try_for_each(|b| write!(f, "{b:02x}"));
        }
        let mut s = alloc::string::String::with_capacity(2 * self.0.len());
        for b in self.0 {
            fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"))?;
        }
        f.pad(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    #[test]
    fn lowercase_two_digits_a_byte() {
        assert_eq!(Hex(&[]).to_string(), "");
        assert_eq!(Hex(&[0x00, 0x0f, 0xab, 0xff]).to_string(), "000fabff");
        // BLAKE3 of the empty input, as b3sum prints it.
        assert_eq!(
            Hex(blake3::hash(b"").as_bytes()).to_string(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(format!("key {}.", Hex(&[1, 2])), "key 0102.");
    }

    #[test]
    fn width_and_alignment_apply_to_the_whole_string() {
        assert_eq!(format!("[{:>6}]", Hex(&[0xab])), "[    ab]");
        assert_eq!(format!("[{:<6}]", Hex(&[0xab, 0xcd])), "[abcd  ]");
        assert_eq!(format!("[{:2}]", Hex(&[1, 2, 3])), "[010203]");
    }
}
