//! The zstd frames of the layout that must declare their size (compact
//! pages, packed ops blocks), decoded with the size checked before anything
//! is sized for it.

use alloc::vec::Vec;

use anypatch_format::{FormatError, MAX_OPS_LEN, MAX_PAGE_LEN};
use ruzstd::decoding::FrameDecoder;

use crate::zstd::{finish_frame, start_frame, ZstdError};
use crate::ApplyError;

/// A frame that must declare its content size, and the errors that name it.
struct SizedFrame<F: Fn(ZstdError) -> ApplyError> {
    field: &'static str,
    reason: &'static str,
    size_field: &'static str,
    max: u32,
    /// The error when the frame itself does not decode.
    corrupt: F,
}

/// Decodes one zstd frame that declares its content size, 1..=`max`, into
/// `out`, which is sized to it only after that check.
fn unpack_sized<F: Fn(ZstdError) -> ApplyError>(
    dec: &mut FrameDecoder,
    mut frame: &[u8],
    out: &mut Vec<u8>,
    f: SizedFrame<F>,
) -> Result<(), ApplyError> {
    let len = start_frame(dec, &mut frame).map_err(&f.corrupt)?;
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
    finish_frame(dec, frame, out).map_err(&f.corrupt)
}

/// Decodes compact page `page` (counting from 0), one zstd frame, into
/// `content`. The frame must declare its content size, 1..=`MAX_PAGE_LEN`.
pub(crate) fn unpack_page(
    dec: &mut FrameDecoder,
    frame: &[u8],
    content: &mut Vec<u8>,
    page: u64,
) -> Result<(), ApplyError> {
    unpack_sized(
        dec,
        frame,
        content,
        SizedFrame {
            field: "compact page frame",
            reason: "declares no content size, or 0; it must declare the page's decoded length",
            size_field: "page content size",
            max: MAX_PAGE_LEN,
            corrupt: |why| ApplyError::PageDecode { page, why },
        },
    )
}

/// Decodes segment `segment`'s packed ops block, one zstd frame, into
/// `ops`. The frame must declare its content size, 1..=`MAX_OPS_LEN`.
pub(crate) fn unpack_ops(
    dec: &mut FrameDecoder,
    frame: &[u8],
    ops: &mut Vec<u8>,
    segment: u64,
) -> Result<(), ApplyError> {
    unpack_sized(
        dec,
        frame,
        ops,
        SizedFrame {
            field: "packed ops frame",
            reason: "declares no content size, or 0; it must declare the ops block's length",
            size_field: "packed ops content size",
            max: MAX_OPS_LEN,
            corrupt: |why| ApplyError::Decode { segment, why },
        },
    )
}

/// Makes `buf`'s capacity at least `len` without the amortized doubling of
/// `Vec` growth, freeing the old allocation first, so that peak memory is
/// the sum of the buffers' limits and never more.
pub(crate) fn reserve_exactly(buf: &mut Vec<u8>, len: usize) {
    if buf.capacity() < len {
        *buf = Vec::new();
        buf.reserve_exact(len);
    }
}

/// `buf` resized to `len` zero bytes, grown with [`reserve_exactly`].
pub(crate) fn sized(buf: &mut Vec<u8>, len: usize) {
    reserve_exactly(buf, len);
    buf.clear();
    buf.resize(len, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zstd::tests::stored as stored_frame;
    use alloc::string::ToString;

    fn page(frame: &[u8], number: u64) -> Result<Vec<u8>, ApplyError> {
        let mut out = Vec::new();
        unpack_page(&mut FrameDecoder::new(), frame, &mut out, number).map(|()| out)
    }

    #[test]
    fn compact_pages_decode_within_the_limits() {
        let content = b"a compact page's content";
        let n = content.len() as u32;
        let good = stored_frame(content, Some(n));
        assert_eq!(page(&good, 0).as_deref(), Ok(&content[..]));
        let mut reserved = good.clone();
        reserved[4] |= 0x08;
        for (what, frame) in [
            ("not a frame", content.to_vec()),
            ("cut short", good[..good.len() - 1].to_vec()),
            ("a byte after it", [&good[..], &[0]].concat()),
            ("more than declared", stored_frame(content, Some(n - 1))),
            ("less than declared", stored_frame(content, Some(n + 1))),
            ("the reserved bit", reserved),
        ] {
            let e = page(&frame, 3).expect_err(what);
            assert!(
                matches!(e, ApplyError::PageDecode { page: 3, .. }),
                "{what}: {e:?}"
            );
        }
        let no_size = page(&stored_frame(content, None), 0).expect_err("no size");
        assert!(
            matches!(no_size, ApplyError::Format(FormatError::Invalid { .. })),
            "{no_size:?}"
        );
        let e = page(&stored_frame(content, Some(MAX_PAGE_LEN + 1)), 0).expect_err("too large");
        assert_eq!(
            e.to_string(),
            ApplyError::from(FormatError::TooLarge {
                field: "page content size",
                got: u64::from(MAX_PAGE_LEN) + 1,
                max: MAX_PAGE_LEN.into(),
            })
            .to_string()
        );
    }
}
