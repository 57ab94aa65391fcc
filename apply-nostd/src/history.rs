//! The data history of format 1.3: the last decoded bytes, at most
//! `MAX_HISTORY_LEN`, of a patch's codec 0x03 segments, which each such
//! frame has as its prefix.

use alloc::vec::Vec;

use anypatch_format::MAX_HISTORY_LEN;
use ruzstd::decoding::FrameDecoder;

use crate::layout::frames::{reserve_exactly, sized};
use crate::zstd::{decode_sized_frame, ZstdError};

/// Decodes a codec 0x03 frame of `n` bytes into `data`, with the last
/// `MAX_HISTORY_LEN - n` bytes of `history` as its prefix, then appends the
/// bytes to `history`. The frame must declare `n`. The prefix goes to the
/// decoder through `scratch` (which the decoder takes; size it anew after),
/// and the decoder is dropped before the history grows, so its window and
/// prefix copy are never held beside the grown history.
pub(crate) fn decode_with_history(
    history: &mut Vec<u8>,
    frame: &[u8],
    n: usize,
    data: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), ZstdError> {
    let keep = history.len().min(MAX_HISTORY_LEN as usize - n);
    let mut prefix = core::mem::take(scratch);
    reserve_exactly(&mut prefix, keep);
    prefix.clear();
    prefix.extend_from_slice(&history[history.len() - keep..]);
    sized(data, n);
    let mut dec = FrameDecoder::new();
    decode_sized_frame(&mut dec, frame, data, (keep > 0).then_some(prefix))?;
    drop(dec);
    push_history(history, data);
    Ok(())
}

/// Appends `data` to `history`, keeping its last `MAX_HISTORY_LEN` bytes in
/// a buffer that grows (by doubling) only as far as the history does, and
/// never past that.
pub(crate) fn push_history(history: &mut Vec<u8>, data: &[u8]) {
    let max = MAX_HISTORY_LEN as usize;
    let n = data.len(); // at most MAX_SEGMENT_LEN = MAX_HISTORY_LEN
    let excess = (history.len() + n).saturating_sub(max);
    history.drain(..excess);
    let need = history.len() + n;
    if history.capacity() < need {
        let want = need.max(2 * history.capacity()).min(max);
        history.reserve_exact(want - history.len());
    }
    history.extend_from_slice(data);
}
