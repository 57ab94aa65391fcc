//! The zstd frames a patch carries: a declared content size, no checksum
//! or dictionary id, a window within the format's `MAX_ZSTD_WINDOW`, and
//! optionally a prefix (old bytes, or the data history) as history. Phase
//! 5a (module `encode`) and phase 5b (module `history`) both make them.

use zstd::zstd_safe::{self, CParameter};

use crate::ProduceError;

/// The fast trials' hash table: one slot per position of a 4 MiB history,
/// so that zstd's fastest level still finds matches at its far end (its
/// own table keeps only the most recent positions of a long prefix).
pub(crate) const TRIAL_HASH_LOG: u32 = 22;
/// zstd's window log for prefix frames: their window stays within the
/// format's `MAX_ZSTD_WINDOW`.
const PREFIX_WINDOW_LOG: i32 = 22;

/// Bounds of [`fitted_table_log`]: zstd's own at levels 1-5 for large
/// inputs is 17, and 2^21 slots hold every fourth position of 8 MiB.
const FITTED_TABLE_LOG: std::ops::RangeInclusive<u32> = 17..=21;

/// A hash and chain table log for a frame of `data` with `prefix` as its
/// history at levels 1-5: one slot per four positions of both. zstd's own
/// tables at those levels hold only the most recent 128 Ki positions, so
/// that matches in the far part of a long prefix are lost; tables for
/// every position cost more to fill and clear than they find.
pub(crate) fn fitted_table_log(prefix: &[u8], data: &[u8]) -> u32 {
    let positions = (prefix.len() + data.len()).max(1) as u64;
    let log = 64 - (positions - 1).leading_zeros();
    log.saturating_sub(2)
        .clamp(*FITTED_TABLE_LOG.start(), *FITTED_TABLE_LOG.end())
}

/// One zstd frame of `data` that declares its content size, has no checksum
/// or dictionary id, stays within the format's window, and has `prefix` (if
/// any) as its history. `hash_log` 0 keeps the level's hash table;
/// `chain_log` 0 keeps the level's chain table (the short-match table at
/// levels 3-4).
pub(crate) fn zstd_frame(
    level: i32,
    hash_log: u32,
    chain_log: u32,
    prefix: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, ProduceError> {
    let err = |code| ProduceError::Compress {
        source: std::io::Error::other(zstd_safe::get_error_name(code)),
    };
    let mut cctx = zstd_safe::CCtx::create();
    for p in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(PREFIX_WINDOW_LOG as u32),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
        CParameter::DictIdFlag(false),
    ] {
        cctx.set_parameter(p).map_err(err)?;
    }
    if hash_log > 0 {
        cctx.set_parameter(CParameter::HashLog(hash_log))
            .map_err(err)?;
    }
    if chain_log > 0 {
        cctx.set_parameter(CParameter::ChainLog(chain_log))
            .map_err(err)?;
    }
    if !prefix.is_empty() {
        cctx.ref_prefix(prefix).map_err(err)?;
    }
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut frame, data).map_err(err)?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_declare_their_size_and_decode_against_the_prefix() {
        let prefix: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let data = prefix[50_000..120_000].to_vec();
        let frame = zstd_frame(19, 0, 0, &prefix, &data).expect("compress");
        assert!(frame.len() < 200, "history was not used: {}", frame.len());
        let mut dctx = zstd_safe::DCtx::create();
        dctx.ref_prefix(&prefix[..]).expect("prefix");
        let mut out = Vec::with_capacity(data.len());
        dctx.decompress(&mut out, &frame).expect("decompress");
        assert_eq!(out, data);
        assert_eq!(
            zstd_safe::get_frame_content_size(&frame).expect("header"),
            Some(data.len() as u64)
        );
    }
}
