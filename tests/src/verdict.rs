//! `mkpatch inspect` against the engine: the same verdict on a patch.
//!
//! Both read the layout with the engine crate's one reader, so every
//! refusal that needs no old byte must come out of both, as the same
//! sentence. Only what the old file shows (a wrong base, a segment's output,
//! the new file's hash) is the engine's alone.

use anypatch_apply::format::{Codec, Extent};
use anypatch_apply::layout::{Mode, Step, Walker};
use anypatch_apply::{ApplyError, Config, ZstdError};
use anypatch_inspect::inspect;

use crate::hostile::drive;

/// Whether the engine needed the old file's bytes to find `e` in `patch`:
/// a wrong base, a segment's output, the new file's hash, or the body of a
/// codec 0x02 frame, whose history is old bytes (its header needs none).
pub fn needs_old_bytes(e: &ApplyError, patch: &[u8]) -> bool {
    match e {
        ApplyError::BaseHash
        | ApplyError::BaseLength { .. }
        | ApplyError::SegmentHash { .. }
        | ApplyError::NewHash => true,
        ApplyError::Decode {
            segment,
            why: ZstdError::Block | ZstdError::Length { .. } | ZstdError::TrailingInput,
        } => segment_codec(patch, *segment) == Some(Codec::ZstdPrefix),
        _ => false,
    }
}

/// The data codec of segment `n` (from 0), read with the layout walker.
fn segment_codec(patch: &[u8], n: u64) -> Option<Codec> {
    let mut w = Walker::new(Mode::Pages);
    let mut seen = 0;
    loop {
        match w.poll().ok()? {
            Step::Want { at, .. } => match patch.get(usize::try_from(at).ok()?..) {
                Some(rest) if !rest.is_empty() => w.give(at, rest),
                _ => w.end(),
            },
            Step::Extent {
                extent: Extent::Data(entry),
                ..
            } => {
                if seen == n {
                    return Codec::split(entry.codec).ok().map(|(c, _)| c);
                }
                seen += 1;
            }
            Step::Done { .. } => return None,
            _ => {}
        }
    }
}

/// Applies `patch` to `old` with the engine and inspects it, and checks
/// they agree: a patch the engine applies, inspect accepts; one it refuses
/// for a reason that needs no old byte, inspect refuses with the same
/// sentence. Returns the engine's verdict.
pub fn same_verdict(what: &str, old: &[u8], patch: &[u8]) -> Result<(), ApplyError> {
    let engine = drive(
        old,
        patch,
        Config::new(old.len() as u64),
        1 << 16,
        &mut Vec::new(),
    )
    .map(|_| ());
    let inspected = inspect(&mut &patch[..])
        .map(|_| ())
        .map_err(|r| r.to_string());
    match &engine {
        Ok(()) => assert!(
            inspected.is_ok(),
            "{what}: the engine applies it, inspect refuses it: {inspected:?}"
        ),
        Err(e) if needs_old_bytes(e, patch) => {}
        Err(e) => assert_eq!(
            inspected.as_ref().map_err(String::as_str),
            Err(e.to_string().as_str()),
            "{what}: the engine refuses it, inspect says otherwise"
        ),
    }
    engine
}

/// For a patch the engine refuses although its hashes are broken (no
/// re-seal): inspect refuses it too, with the engine's sentence unless the
/// engine's reason needed the old file (then inspect finds the damage
/// elsewhere, at the latest in the patch hash).
pub fn both_refuse(what: &str, engine: &ApplyError, patch: &[u8]) {
    let inspected = inspect(&mut &patch[..])
        .map(|_| ())
        .map_err(|r| r.to_string());
    if needs_old_bytes(engine, patch) {
        assert!(
            inspected.is_err(),
            "{what}: inspect accepts a corrupt patch"
        );
    } else {
        assert_eq!(
            inspected.as_ref().map_err(String::as_str),
            Err(engine.to_string().as_str()),
            "{what}: the engine and inspect disagree"
        );
    }
}
