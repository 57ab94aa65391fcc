//! Decoding one zstd frame into a buffer of known size, with bounded memory.

use alloc::vec::Vec;

use ruzstd::decoding::{BlockDecodingStrategy, Dictionary, FrameDecoder};
use ruzstd::io::Read;

use anypatch_format::MAX_ZSTD_WINDOW;

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
) -> Result<(), ()> {
    let has_size = declares_content_size(input);
    let declared = start_frame(dec, &mut input)?;
    // RFC 8878: the frame decodes to the size it declares. ruzstd does not
    // check that, and the reference decoder refuses a frame that lies.
    if has_size && declared != out.len() as u64 {
        return Err(());
    }
    if let Some(content) = prefix {
        dec.add_dict(raw_content(content)).map_err(drop)?;
        dec.force_dict(PREFIX_DICT_ID).map_err(drop)?;
        // Replacing the entry frees our buffer; the decoder keeps its copy.
        dec.add_dict(raw_content(Vec::new())).map_err(drop)?;
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
) -> Result<(), ()> {
    if !declares_content_size(input) {
        return Err(());
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

/// Reads a frame's header from `input` (which is advanced past it) and
/// returns the content size it declares, 0 when it declares none. Fails when
/// the header does not decode or declares a window above [`MAX_ZSTD_WINDOW`]
/// or a dictionary. Nothing is allocated for the frame's content yet, so the
/// caller can check the size first; then call [`finish_frame`].
pub(crate) fn start_frame(dec: &mut FrameDecoder, input: &mut &[u8]) -> Result<u64, ()> {
    // RFC 8878 section 3.1.1.1.1: a decoder must refuse a frame whose
    // descriptor has the reserved bit set; ruzstd ignores it.
    if input
        .get(4)
        .is_some_and(|descriptor| descriptor & 0x08 != 0)
    {
        return Err(());
    }
    dec.set_max_window_size(MAX_ZSTD_WINDOW);
    dec.init(input).map_err(drop)?;
    Ok(dec.content_size())
}

/// Decodes the rest of a frame started with [`start_frame`] into all of
/// `out`. Fails when it decodes to more or fewer bytes than `out.len()` or
/// leaves input unread.
pub(crate) fn finish_frame(
    dec: &mut FrameDecoder,
    mut input: &[u8],
    out: &mut [u8],
) -> Result<(), ()> {
    let mut written = 0;
    loop {
        let finished = dec
            .decode_blocks(&mut input, BlockDecodingStrategy::UptoBytes(0x2_0000))
            .map_err(drop)?;
        loop {
            let target = out.get_mut(written..).ok_or(())?;
            let n = dec.read(target).map_err(drop)?;
            written += n;
            if n == 0 {
                break;
            }
        }
        if dec.can_collect() != 0 {
            return Err(()); // more output than the segment says
        }
        if finished {
            break;
        }
    }
    if written != out.len() || !input.is_empty() {
        return Err(());
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
