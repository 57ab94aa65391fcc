//! Buffers sized exactly before they are filled, and zstd frames that
//! declare their size, checked before anything is sized for them: what
//! keeps the engine within its memory bound.

use super::*;

/// A frame that must declare its content size, and the errors that name it.
pub(super) struct SizedFrame {
    pub(super) field: &'static str,
    pub(super) reason: &'static str,
    pub(super) size_field: &'static str,
    pub(super) max: u32,
    /// The error when the frame itself does not decode.
    pub(super) corrupt: Box<dyn Fn(ZstdError) -> ApplyError>,
}

/// Decodes one zstd frame that declares its content size, 1..=`max`, into
/// `out`, which is sized to it only after that check.
pub(super) fn unpack_sized(
    dec: &mut FrameDecoder,
    mut frame: &[u8],
    out: &mut Vec<u8>,
    f: SizedFrame,
) -> Result<(), ApplyError> {
    let len = crate::zstd::start_frame(dec, &mut frame).map_err(&f.corrupt)?;
    if len == 0 {
        return Err(FormatError::Invalid {
            field: f.field,
            reason: f.reason,
        }
        .into());
    }
    if len > u64::from(f.max) {
        return Err(FormatError::TooLarge {
            field: f.size_field,
            got: len,
            max: f.max.into(),
        }
        .into());
    }
    sized(out, len as usize); // at most `max`, checked above
    crate::zstd::finish_frame(dec, frame, out).map_err(&f.corrupt)
}

/// Makes `buf`'s capacity at least `len` without the amortized doubling of
/// `Vec` growth, freeing the old allocation first, so that the engine's
/// peak memory is the sum of its buffers' limits and never more.
pub(super) fn reserve_exactly(buf: &mut Vec<u8>, len: usize) {
    if buf.capacity() < len {
        *buf = Vec::new();
        buf.reserve_exact(len);
    }
}

/// Adds `len` zero bytes to `hasher`, if there is one.
pub(super) fn hash_zeros(hasher: Option<&mut TreeHasher>, len: u64) {
    if let Some(h) = hasher {
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            h.update(&ZEROS[..n]);
            left -= n as u64;
        }
    }
}

/// `buf` resized to `len` zero bytes, grown with [`reserve_exactly`].
pub(super) fn sized(buf: &mut Vec<u8>, len: usize) {
    reserve_exactly(buf, len);
    buf.clear();
    buf.resize(len, 0);
}
