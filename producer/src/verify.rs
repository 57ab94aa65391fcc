//! The self-check ([`crate::Options::verify`]): the patch, as it is written,
//! goes through the apply engine that `applypatch` uses (`anypatch-apply`),
//! so that a patch the engine would refuse is an error that names what is
//! wrong, never a file that nobody can apply.
//!
//! The engine checks the header, every page against its hash, decodes
//! every data segment (zstd, old-byte prefix and data history alike) and
//! checks its output against its segment hash, then the trailer's
//! whole-patch hash. It runs with [`Config::skip_unchanged`] and without
//! the base check: the scan has just hashed the old file, and unchanged
//! extents, most of an image, need no reads. Copies from elsewhere in the
//! old file, and the segments' old bytes, are read with `pread`.

use std::io::{self, Write};

use anypatch_apply::{Applier, ApplyError, Config, Event};

use crate::input::Input;
use crate::ProduceError;

/// A writer that passes everything to `inner` and feeds it to the engine.
/// Call [`Checked::finish`] once the whole patch is written.
pub(crate) struct Checked<'a> {
    inner: &'a mut dyn Write,
    old: &'a Input,
    engine: Applier,
    /// The first failure; nothing more is fed after it.
    failed: Option<ProduceError>,
}

impl<'a> Checked<'a> {
    pub(crate) fn new(inner: &'a mut dyn Write, old: &'a Input) -> Self {
        Self {
            inner,
            old,
            engine: Applier::new(Config {
                verify_base: false,
                skip_unchanged: true,
                ..Config::new(old.len)
            }),
            failed: None,
        }
    }

    /// Ends the patch: the engine must reach its end and accept it.
    pub(crate) fn finish(mut self) -> Result<(), ProduceError> {
        if self.failed.is_none() {
            self.engine.end_of_input();
            match self.pump() {
                Ok(true) => {}
                Ok(false) => {
                    // The engine wants more bytes after the end: the
                    // patch is short.
                    self.failed = Some(self_check(ApplyError::Truncated { section: "patch" }));
                }
                Err(e) => self.failed = Some(e),
            }
        }
        self.failed.map_or(Ok(()), Err)
    }

    /// Feeds `bytes` to the engine, serving its reads, until it has taken
    /// them all.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ProduceError> {
        while !bytes.is_empty() {
            if self.pump()? {
                return Err(self_check(ApplyError::TrailingBytes));
            }
            let n = self.engine.feed(bytes);
            if n == 0 {
                return Err(self_check(ApplyError::TrailingBytes));
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Polls the engine until it needs input (`false`) or is done (`true`).
    fn pump(&mut self) -> Result<bool, ProduceError> {
        loop {
            match self.engine.poll().map_err(self_check)? {
                Event::NeedInput => return Ok(false),
                Event::Done(_) => return Ok(true),
                Event::ReadOld { offset, buf } => self.old.read_exact_at(buf, offset)?,
                // The output is not kept: each segment's bytes were checked
                // against its hash before the engine handed them out.
                Event::Header(_) | Event::Write { .. } | Event::Zero { .. } => {}
            }
        }
    }
}

impl Write for Checked<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.failed.is_none() {
            if let Err(e) = self.feed(&buf[..n]) {
                self.failed = Some(e);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl std::fmt::Debug for Checked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("engine", &self.engine)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// The producer's error for a patch the engine refuses, naming the data
/// segment when the engine's error does.
fn self_check(source: ApplyError) -> ProduceError {
    let segment = match source {
        ApplyError::Decode { segment, .. } | ApplyError::SegmentHash { segment, .. } => {
            Some(segment)
        }
        _ => None,
    };
    ProduceError::SelfCheck { segment, source }
}

/// Runs the check on a whole patch in memory.
#[cfg(test)]
pub(crate) fn check(old: &Input, patch: &[u8]) -> Result<(), ProduceError> {
    let mut sink = io::sink();
    let mut checked = Checked::new(&mut sink, old);
    checked
        .write_all(patch)
        .map_err(|source| ProduceError::Write { source })?;
    checked.finish()
}

#[cfg(test)]
pub(crate) mod fault {
    //! A producer bug on demand, for the tests of the self-check.

    use std::cell::Cell;
    use std::os::unix::fs::FileExt;

    use crate::encode::Encoded;
    use crate::ProduceError;

    std::thread_local! {
        /// Flip the last byte of this data segment's data block once it is
        /// encoded, before the patch is written (and hashed).
        pub(crate) static BREAK_SEGMENT: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Applies [`BREAK_SEGMENT`] to the spooled payloads.
    pub(crate) fn inject(enc: &Encoded) -> Result<(), ProduceError> {
        let Some(seg) = BREAK_SEGMENT.get() else {
            return Ok(());
        };
        let spool_err = |source| ProduceError::Spool { source };
        // The spool holds each segment's ops block then its data block.
        let at: u64 = enc.entries[..=seg]
            .iter()
            .map(|e| u64::from(e.ops_len) + u64::from(e.data_len))
            .sum();
        assert!(enc.entries[seg].data_len > 0, "segment {seg} has no data");
        let mut byte = [0u8];
        enc.spool
            .read_exact_at(&mut byte, at - 1)
            .map_err(spool_err)?;
        byte[0] ^= 0x55;
        enc.spool.write_all_at(&byte, at - 1).map_err(spool_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::noise;
    use crate::{make_patch, Level, Options};

    /// A pair whose patch has several data segments, at level fast with
    /// 64 KiB segments, of which some use codec `Zstd`: text-like edits.
    fn pair(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let old = noise(7, 1 << 20);
        let mut new = old.clone();
        for k in 0..6 {
            let at = k * 150_000 + 1000;
            let text =
                format!("edit {k}: the quick brown fox jumps over the lazy dog. ").repeat(300);
            new[at..at + text.len()].copy_from_slice(text.as_bytes());
        }
        let (o, n) = (dir.join("old"), dir.join("new"));
        std::fs::write(&o, old).expect("write old");
        std::fs::write(&n, new).expect("write new");
        (o, n)
    }

    fn make(
        old: &std::path::Path,
        new: &std::path::Path,
        verify: bool,
    ) -> Result<Vec<u8>, ProduceError> {
        let opts = Options {
            segment_len: 64 << 10,
            merge_gap: 0,
            threads: 2,
            verify,
            ..Level::Fast.options()
        };
        let mut patch = Vec::new();
        make_patch(old, new, &mut patch, &opts, &|_| {})?;
        Ok(patch)
    }

    #[test]
    fn the_self_check_passes_good_patches_and_names_a_bad_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (old, new) = pair(dir.path());
        let good = make(&old, &new, true).expect("a good patch passes its check");
        assert_eq!(
            good,
            make(&old, &new, false).expect("unchecked"),
            "the check changed the patch"
        );

        fault::BREAK_SEGMENT.set(Some(3));
        // Unchecked, the broken segment goes out silently, and the engine
        // refuses the patch: the fault is real.
        let bad = make(&old, &new, false).expect("no check, no error");
        let input = Input::open(&old).expect("open old");
        match check(&input, &bad) {
            Err(ProduceError::SelfCheck {
                segment: Some(3), ..
            }) => {}
            other => panic!("the engine does not refuse segment 3: {other:?}"),
        }
        // Checked, the same fault is an error that names the segment.
        match make(&old, &new, true) {
            Err(
                err @ ProduceError::SelfCheck {
                    segment: Some(3), ..
                },
            ) => {
                let msg = err.to_string();
                assert!(msg.contains("data segment 3 of the patch"), "{msg}");
            }
            Err(e) => panic!("not the self-check's error: {e}"),
            Ok(p) => panic!("the check lets a bad segment through ({} bytes)", p.len()),
        }
        fault::BREAK_SEGMENT.set(None);
    }

    #[test]
    fn verify_is_on_by_default_at_best_only() {
        assert!(Level::Best.options().verify);
        assert!(!Level::Default.options().verify);
        assert!(!Level::Fast.options().verify);
        assert!(!Options::default().verify);
    }
}
