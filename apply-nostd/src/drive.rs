//! The std layer every adapter shares: [`drive`] runs an [`Applier`] to the
//! end against a patch reader, an [`OldSource`] and a [`Sink`].
//!
//! `applypatch` (files, block devices, the in-place journal) and a network
//! client (a patch arriving over QUIC or HTTP) differ only in the reader and
//! the sink they pass; the loop that feeds the engine, answers its old-byte
//! requests and hands its verified writes on is this one.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use core::fmt;
use std::io::{self, Read};

use crate::checkpoint::Checkpoint;
use crate::format::{Hash, Header};
use crate::{Applier, ApplyError, Event, Progress, Summary};

/// Patch bytes read per `read` call.
pub const READ_CHUNK: usize = 0x4_0000;

/// The old image, read at any offset.
pub trait OldSource {
    /// Fills all of `buf` with the old bytes at `offset`; an old image that
    /// ends before `offset + buf.len()` is an [`io::ErrorKind::UnexpectedEof`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

#[cfg(unix)]
impl OldSource for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl OldSource for alloc::vec::Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self[..].read_exact_at(buf, offset)
    }
}

impl OldSource for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..at.checked_add(buf.len())?))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Where verified new bytes go: a new file, a device, an in-place journal.
pub trait Sink {
    /// Writes verified bytes at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read as zero.
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes everything written so far final. Called once, before the
    /// apply reports success.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Called right after [`Sink::write_at`] when its bytes were a data
    /// segment's output: the segment's index and the full BLAKE3 of its
    /// output (see [`Applier::written_segment`]). A sink that must not write
    /// bytes it cannot pin holds them until this call.
    fn segment_written(&mut self, _index: u64, _hash: &Hash) -> io::Result<()> {
        Ok(())
    }
    /// Called after each old-byte read the engine asked for, with the bytes
    /// read: an in-place sink learns which target bytes a replay relies on.
    fn old_read(&mut self, _offset: u64, _data: &[u8]) {}
    /// What error messages call the place written ("the temporary file X").
    fn describe(&self) -> String {
        "the target".into()
    }
}

/// Discards everything: verification only.
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn zero(&mut self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Why [`drive`] stopped, when neither the engine nor the caller's header
/// check did.
#[derive(Debug)]
pub enum DriveError {
    /// The engine refused the patch or the base.
    Apply(ApplyError),
    /// Reading the patch failed.
    ReadPatch(io::Error),
    /// The old image ended before a range the patch reads: it got shorter
    /// while the patch was applied.
    OldShrank { offset: u64 },
    /// Reading the old image failed.
    ReadOld { offset: u64, source: io::Error },
    /// The sink failed; `what` says what it was doing, to which place.
    Sink { what: String, source: io::Error },
}

impl fmt::Display for DriveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Apply(e) => e.fmt(f),
            Self::ReadPatch(e) => write!(f, "cannot read the patch: {e}"),
            Self::OldShrank { offset } => write!(
                f,
                "the old file got shorter while the patch was applied (it ends before offset {offset})"
            ),
            Self::ReadOld { offset, source } => {
                write!(f, "cannot read the old file at offset {offset}: {source}")
            }
            Self::Sink { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for DriveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Apply(e) => Some(e),
            Self::ReadPatch(e) | Self::ReadOld { source: e, .. } | Self::Sink { source: e, .. } => {
                Some(e)
            }
            Self::OldShrank { .. } => None,
        }
    }
}

impl From<ApplyError> for DriveError {
    fn from(e: ApplyError) -> Self {
        Self::Apply(e)
    }
}

/// Runs `applier` to the end. `on_header` sees the header before any old
/// byte is read and may refuse it with the caller's own error type;
/// `on_progress` is called often and cheaply.
pub fn drive<E: From<DriveError>>(
    applier: &mut Applier,
    patch: &mut dyn Read,
    old: &dyn OldSource,
    sink: &mut dyn Sink,
    on_header: &mut dyn FnMut(&Header) -> Result<(), E>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Summary, E> {
    run(applier, patch, old, sink, on_header, on_progress, None)
}

/// Where [`drive_checkpointed`] hands its checkpoints.
pub struct Checkpoints<'a> {
    /// Patch bytes between two checkpoints, at least.
    pub every: u64,
    /// Keeps a checkpoint (spec section 6.4). Everything the sink was given
    /// before it must be made durable first: a resumed apply does not write
    /// it again.
    pub save: &'a mut dyn FnMut(Checkpoint) -> io::Result<()>,
}

impl fmt::Debug for Checkpoints<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoints")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// [`drive`], taking a checkpoint at the first boundary after every
/// `checkpoints.every` patch bytes, so that an apply that is stopped (a
/// killed process, a lost link) can go on from there in a new
/// [`Applier::resume`].
pub fn drive_checkpointed<E: From<DriveError>>(
    applier: &mut Applier,
    patch: &mut dyn Read,
    old: &dyn OldSource,
    sink: &mut dyn Sink,
    on_header: &mut dyn FnMut(&Header) -> Result<(), E>,
    on_progress: &mut dyn FnMut(Progress),
    checkpoints: Checkpoints<'_>,
) -> Result<Summary, E> {
    run(
        applier,
        patch,
        old,
        sink,
        on_header,
        on_progress,
        Some(checkpoints),
    )
}

fn run<E: From<DriveError>>(
    applier: &mut Applier,
    patch: &mut dyn Read,
    old: &dyn OldSource,
    sink: &mut dyn Sink,
    on_header: &mut dyn FnMut(&Header) -> Result<(), E>,
    on_progress: &mut dyn FnMut(Progress),
    mut checkpoints: Option<Checkpoints<'_>>,
) -> Result<Summary, E> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut last_checkpoint = applier.progress().patch_consumed;
    let (mut start, mut end) = (0, 0);
    let sink_err = |sink: &dyn Sink, what: &'static str, offset: u64| {
        let place = sink.describe();
        move |source| DriveError::Sink {
            what: alloc::format!("cannot {what} {place} at offset {offset}"),
            source,
        }
    };
    loop {
        match applier.poll().map_err(DriveError::Apply)? {
            Event::NeedInput => {
                if let Some(c) = checkpoints.as_mut() {
                    let consumed = applier.progress().patch_consumed;
                    if consumed >= last_checkpoint.saturating_add(c.every) {
                        if let Some(cp) = applier.checkpoint() {
                            (c.save)(cp).map_err(|source| DriveError::Sink {
                                what: "cannot save a checkpoint".into(),
                                source,
                            })?;
                            last_checkpoint = consumed;
                        }
                    }
                }
                if start == end {
                    let n = read_retrying(patch, &mut buf).map_err(DriveError::ReadPatch)?;
                    if n == 0 {
                        applier.end_of_input();
                        continue;
                    }
                    (start, end) = (0, n);
                }
                start += applier.feed(&buf[start..end]);
            }
            Event::Header(h) => on_header(h)?,
            Event::ReadOld { offset, buf } => {
                old.read_exact_at(buf, offset).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        DriveError::OldShrank { offset }
                    } else {
                        DriveError::ReadOld { offset, source: e }
                    }
                })?;
                sink.old_read(offset, buf);
                // Reported after old reads too, so base checking shows progress.
                on_progress(applier.progress());
            }
            Event::Write { offset, data } => {
                let written = match sink.write_at(offset, data) {
                    Ok(()) => match applier.written_segment() {
                        Some((index, hash)) => sink.segment_written(index, &hash),
                        None => Ok(()),
                    },
                    Err(e) => Err(e),
                };
                written.map_err(sink_err(sink, "write", offset))?;
                on_progress(applier.progress());
            }
            Event::Zero { offset, len } => {
                sink.zero(offset, len)
                    .map_err(sink_err(sink, "write zeros to", offset))?;
            }
            Event::Done(summary) => {
                sink.flush().map_err(|source| DriveError::Sink {
                    what: alloc::format!("cannot write {}", sink.describe()),
                    source,
                })?;
                return Ok(summary);
            }
        }
    }
}

fn read_retrying(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// BLAKE3 of the old source's bytes `start..end`, read [`READ_CHUNK`]s
/// at a time.
pub fn hash_range<S: OldSource + ?Sized>(src: &S, start: u64, end: u64) -> io::Result<Hash> {
    let mut h = blake3::Hasher::new();
    let mut buf: Box<[u8]> = vec![0u8; READ_CHUNK].into_boxed_slice();
    let mut at = start;
    while at < end {
        let n = (end - at).min(READ_CHUNK as u64) as usize;
        src.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_is_an_old_source_that_ends() {
        let old: &[u8] = b"0123456789";
        let mut buf = [0u8; 4];
        old.read_exact_at(&mut buf, 6).expect("in range");
        assert_eq!(&buf, b"6789");
        let e = old.read_exact_at(&mut buf, 7).expect_err("past the end");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = old
            .read_exact_at(&mut buf, u64::MAX)
            .expect_err("far past the end");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn hash_range_hashes_exactly_the_range_across_chunks() {
        let old: alloc::vec::Vec<u8> = (0..(READ_CHUNK * 2 + 17)).map(|i| i as u8).collect();
        let (s, e) = (5, READ_CHUNK * 2 + 3);
        assert_eq!(
            hash_range(&old[..], s as u64, e as u64).expect("hashes"),
            *blake3::hash(&old[s..e]).as_bytes()
        );
        assert!(hash_range(&old[..], 0, old.len() as u64 + 1).is_err());
    }
}
