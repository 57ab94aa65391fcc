//! Decoding one zstd frame into a buffer of known size, with bounded memory.

use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use ruzstd::io::Read;

use anypatch_format::MAX_ZSTD_WINDOW;

/// Decodes exactly one zstd frame from `input` into all of `out`. Fails when
/// the frame declares a window above [`MAX_ZSTD_WINDOW`], decodes to more or
/// fewer bytes than `out.len()`, or leaves input unread.
pub(crate) fn decode_frame(
    dec: &mut FrameDecoder,
    mut input: &[u8],
    out: &mut [u8],
) -> Result<(), ()> {
    dec.set_max_window_size(MAX_ZSTD_WINDOW);
    dec.init(&mut input).map_err(drop)?;
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
