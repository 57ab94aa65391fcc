//! Decoding one zstd frame into a buffer of known size, with bounded memory.

use alloc::vec::Vec;

use ruzstd::decoding::{BlockDecodingStrategy, Dictionary, FrameDecoder};
use ruzstd::io::Read;

use anypatch_format::MAX_ZSTD_WINDOW;

/// Why a zstd frame in a patch was refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZstdError {
    /// The frame descriptor's reserved bit is set (RFC 8878 3.1.1.1.1).
    ReservedBit,
    /// The frame header does not decode, or declares a window above
    /// `MAX_ZSTD_WINDOW` or a dictionary id.
    Header,
    /// The frame must declare its content size and does not.
    NoContentSize,
    /// The declared content size is not the size the patch says.
    ContentSize { declared: u64, expected: u64 },
    /// The frame decodes to more or fewer bytes than expected.
    Length { expected: u64 },
    /// Bytes follow the frame.
    TrailingInput,
    /// A block of the frame does not decode.
    Block,
}

impl core::fmt::Display for ZstdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::ReservedBit => f.write_str("its frame header has the reserved bit set"),
            Self::Header => f.write_str(
                "its frame header does not decode, or asks for a window above 8 MiB or a dictionary",
            ),
            Self::NoContentSize => f.write_str("its frame does not declare its content size"),
            Self::ContentSize { declared, expected } => write!(
                f,
                "its frame declares {declared} bytes of content, the patch says {expected}"
            ),
            Self::Length { expected } => {
                write!(f, "its frame does not decode to the {expected} bytes it should")
            }
            Self::TrailingInput => f.write_str("bytes follow its frame"),
            Self::Block => f.write_str("a block of its frame does not decode"),
        }
    }
}

/// The id under which a prefix is handed to the decoder. Frames never name
/// it: a frame that declares any dictionary id is refused, since
/// [`decode_frame`] registers the prefix only after reading the frame header.
const PREFIX_DICT_ID: u32 = 0x1;

/// Decodes exactly one zstd frame from `input` into all of `out`. Fails when
/// the frame declares a window above [`MAX_ZSTD_WINDOW`], a dictionary, or
/// a content size other than `out.len()`, decodes to more or fewer bytes
/// than `out.len()`, or leaves input unread.
///
/// With `prefix`, the frame's history is those bytes, as a raw-content
/// dictionary (what the reference library's `ZSTD_DCtx_refPrefix` does:
/// no entropy tables, repeat offsets 1, 4, 8). The decoder copies them, and
/// `prefix` is freed before any block is decoded, so they are held once.
/// Give a prefix only to a fresh decoder, which is then dropped: the copy
/// would otherwise stay, and grow by reallocation for a longer prefix.
pub(crate) fn decode_frame(
    dec: &mut FrameDecoder,
    mut input: &[u8],
    out: &mut [u8],
    prefix: Option<Vec<u8>>,
) -> Result<(), ZstdError> {
    let has_size = declares_content_size(input);
    let declared = start_frame(dec, &mut input)?;
    // RFC 8878: the frame decodes to the size it declares. ruzstd does not
    // check that, and the reference decoder refuses a frame that lies.
    if has_size && declared != out.len() as u64 {
        return Err(ZstdError::ContentSize {
            declared,
            expected: out.len() as u64,
        });
    }
    if let Some(content) = prefix {
        let header = |_| ZstdError::Header;
        dec.add_dict(raw_content(content)).map_err(header)?;
        dec.force_dict(PREFIX_DICT_ID).map_err(header)?;
        // Replacing the entry frees our buffer; the decoder keeps its copy.
        dec.add_dict(raw_content(Vec::new())).map_err(header)?;
    }
    finish_frame(dec, input, out)
}

/// [`decode_frame`] for a frame that MUST declare its content size
/// (codec 0x03): one without the field is refused.
pub(crate) fn decode_sized_frame(
    dec: &mut FrameDecoder,
    input: &[u8],
    out: &mut [u8],
    prefix: Option<Vec<u8>>,
) -> Result<(), ZstdError> {
    if !declares_content_size(input) {
        return Err(ZstdError::NoContentSize);
    }
    decode_frame(dec, input, out, prefix)
}

/// The content size a frame's header declares; `None` when the header does
/// not decode or has no `Frame_Content_Size` field. Allocates nothing.
pub(crate) fn declared_size(frame: &[u8]) -> Option<u64> {
    // RFC 8878 section 3.1.1.1: magic, descriptor, [window], [dict id], size.
    let (&magic, rest) = frame.split_first_chunk::<4>()?;
    let (&descriptor, rest) = rest.split_first()?;
    if u32::from_le_bytes(magic) != 0xFD2F_B528 || !declares_content_size(frame) {
        return None;
    }
    let single_segment = descriptor & 0x20 != 0;
    let skip = usize::from(!single_segment) + [0, 1, 2, 4][usize::from(descriptor & 3)];
    let field = match descriptor >> 6 {
        0 => 1,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let bytes = rest.get(skip..skip + field)?;
    let mut le = [0u8; 8];
    le[..field].copy_from_slice(bytes);
    let size = u64::from_le_bytes(le);
    Some(if field == 2 { size + 256 } else { size })
}

/// Checks a frame's header without decoding it, for a frame whose history
/// (old bytes) is not at hand: the reserved bit, the window, no dictionary,
/// and a declared content size, if any, of `expected`. What
/// [`decode_frame`] checks before its first block.
pub(crate) fn check_frame_header(mut frame: &[u8], expected: u64) -> Result<(), ZstdError> {
    let has_size = declares_content_size(frame);
    let declared = start_frame(&mut FrameDecoder::new(), &mut frame)?;
    if has_size && declared != expected {
        return Err(ZstdError::ContentSize { declared, expected });
    }
    Ok(())
}

/// Reads a frame's header from `input` (which is advanced past it) and
/// returns the content size it declares, 0 when it declares none. Fails when
/// the header does not decode or declares a window above [`MAX_ZSTD_WINDOW`]
/// or a dictionary. Nothing is allocated for the frame's content yet, so the
/// caller can check the size first; then call [`finish_frame`].
pub(crate) fn start_frame(dec: &mut FrameDecoder, input: &mut &[u8]) -> Result<u64, ZstdError> {
    // RFC 8878 section 3.1.1.1.1: a decoder must refuse a frame whose
    // descriptor has the reserved bit set; ruzstd ignores it.
    if input
        .get(4)
        .is_some_and(|descriptor| descriptor & 0x08 != 0)
    {
        return Err(ZstdError::ReservedBit);
    }
    dec.set_max_window_size(MAX_ZSTD_WINDOW);
    dec.init(input).map_err(|_| ZstdError::Header)?;
    Ok(dec.content_size())
}

/// Decodes the rest of a frame started with [`start_frame`] into all of
/// `out`. Fails when it decodes to more or fewer bytes than `out.len()` or
/// leaves input unread.
pub(crate) fn finish_frame(
    dec: &mut FrameDecoder,
    mut input: &[u8],
    out: &mut [u8],
) -> Result<(), ZstdError> {
    let expected = out.len() as u64;
    let mut written = 0;
    loop {
        let finished = dec
            .decode_blocks(&mut input, BlockDecodingStrategy::UptoBytes(0x2_0000))
            .map_err(|_| ZstdError::Block)?;
        loop {
            let target = out
                .get_mut(written..)
                .ok_or(ZstdError::Length { expected })?;
            let n = dec.read(target).map_err(|_| ZstdError::Block)?;
            written += n;
            if n == 0 {
                break;
            }
        }
        if dec.can_collect() != 0 {
            return Err(ZstdError::Length { expected }); // more output than the segment says
        }
        if finished {
            break;
        }
    }
    if written != out.len() {
        return Err(ZstdError::Length { expected });
    }
    if !input.is_empty() {
        return Err(ZstdError::TrailingInput);
    }
    Ok(())
}

/// Whether a frame's header has a `Frame_Content_Size` field (RFC 8878
/// section 3.1.1.1.1): its descriptor's size flag is set, or it is a single
/// segment. [`start_frame`] returns 0 both for a declared 0 and for none.
fn declares_content_size(frame: &[u8]) -> bool {
    frame
        .get(4)
        .is_some_and(|descriptor| descriptor & 0xE0 != 0)
}

/// A raw-content dictionary: `content` as history, default repeat offsets.
fn raw_content(content: Vec<u8>) -> Dictionary {
    Dictionary {
        id: PREFIX_DICT_ID,
        fse: Default::default(),
        huf: Default::default(),
        dict_content: content,
        offset_hist: [1, 4, 8],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;

    /// One zstd frame of raw blocks: window 1 MiB, a 4-byte content size
    /// when `declared` is given.
    pub(crate) fn stored(content: &[u8], declared: Option<u32>) -> Vec<u8> {
        let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
        match declared {
            Some(n) => {
                f.extend_from_slice(&[0x80, 0x50]);
                f.extend_from_slice(&n.to_le_bytes());
            }
            None => f.extend_from_slice(&[0x00, 0x50]),
        }
        let header = 1 | (content.len() as u32) << 3; // last, raw
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.extend_from_slice(content);
        f
    }

    fn decode(frame: &[u8], out_len: usize, sized: bool) -> Result<Vec<u8>, ZstdError> {
        let mut out = vec![0; out_len];
        let mut dec = FrameDecoder::new();
        if sized {
            decode_sized_frame(&mut dec, frame, &mut out, None)?;
        } else {
            decode_frame(&mut dec, frame, &mut out, None)?;
        }
        Ok(out)
    }

    #[test]
    fn each_refusal_says_why() {
        let data = b"sixteen bytes!!!";
        let good = stored(data, Some(16));
        assert_eq!(decode(&good, 16, true).as_deref(), Ok(&data[..]));
        let mut reserved = good.clone();
        reserved[4] |= 0x08;
        let mut wide = good.clone();
        wide[5] = 0x68; // an 8 MiB window, above MAX_ZSTD_WINDOW
        let cases: [(&str, Vec<u8>, usize, bool, ZstdError); 7] = [
            ("reserved bit", reserved, 16, false, ZstdError::ReservedBit),
            ("not a frame", data.to_vec(), 16, false, ZstdError::Header),
            (
                "no content size",
                stored(data, None),
                16,
                true,
                ZstdError::NoContentSize,
            ),
            (
                "declares more",
                stored(data, Some(17)),
                16,
                false,
                ZstdError::ContentSize {
                    declared: 17,
                    expected: 16,
                },
            ),
            (
                "decodes to less",
                stored(data, None),
                17,
                false,
                ZstdError::Length { expected: 17 },
            ),
            (
                "decodes to more",
                stored(data, None),
                15,
                false,
                ZstdError::Length { expected: 15 },
            ),
            (
                "a byte after it",
                [&good[..], &[0]].concat(),
                16,
                false,
                ZstdError::TrailingInput,
            ),
        ];
        for (what, frame, len, sized, why) in cases {
            assert_eq!(decode(&frame, len, sized), Err(why), "{what}");
        }
        let e = decode(&wide, 16, false).expect_err("a window above the limit");
        assert_eq!(e, ZstdError::Header);
    }
}
