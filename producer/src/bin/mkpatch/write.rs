//! Writing the patch (or an index, or a change map): to stdout, stderr or
//! a stream as it comes, or to a file that appears whole or not at all.
//! What is written comes from a maker closure, so `mkpatch`, `mkpatch
//! --from-index`, `mkpatch index` and `inspect --map` share every rule here.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use anypatch_producer::ProduceError;
use anypatch_safe_output::{kind_name, parent_dir, signals, CommitError, CreateError};
use anypatch_safe_output::{Owner, TempFile, TempOptions};

use crate::dest::Output;
use crate::inputs::{unchanged, Stamp};
use crate::{produce, Failure};

/// Writes the patch to a stream (`name`: stdout, stderr, or a FIFO's path)
/// as it comes, and checks afterwards that the inputs did not change meanwhile.
pub(crate) fn write_direct<T>(
    role: Output,
    stream: impl Write + IsTerminal,
    name: &str,
    before: &[Stamp],
    make: impl FnOnce(&mut dyn Write, Option<PathBuf>) -> Result<T, ProduceError>,
) -> Result<T, Failure> {
    if stream.is_terminal() {
        return Err(anyhow!(
            "refusing to write the {} to a terminal ({name}); use {} FILE or redirect {name}",
            role.what,
            role.flag
        )
        .into());
    }
    let mut out = BufWriter::with_capacity(1 << 20, stream);
    let summary = make(&mut out, None).map_err(produce)?;
    out.flush()
        .map_err(|e| produce(ProduceError::Write { source: e }))?;
    unchanged(
        before,
        &format!("what went to {name} is unusable: discard it"),
    )?;
    Ok(summary)
}

/// Writes the patch straight into a FIFO or character device, as into
/// stdout: there is no file to rename into place, and a reader that stops
/// early gets an incomplete patch.
pub(crate) fn write_stream<T>(
    role: Output,
    path: &Path,
    before: &[Stamp],
    make: impl FnOnce(&mut dyn Write, Option<PathBuf>) -> Result<T, ProduceError>,
) -> Result<T, Failure> {
    // Opening a FIFO waits until it has a reader. No create, no truncate:
    // the node is used as it is.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let kind = file
        .metadata()
        .with_context(|| format!("cannot open {}", path.display()))?
        .file_type();
    if !kind.is_fifo() && !kind.is_char_device() {
        return Err(anyhow!(
            "{} {} was replaced by a {} while mkpatch opened it; run mkpatch again",
            role.flag,
            path.display(),
            kind_name(kind)
        )
        .into());
    }
    if file.is_terminal() {
        return Err(anyhow!(
            "refusing to write the {} to the terminal {}; use {} FILE",
            role.what,
            path.display(),
            role.flag
        )
        .into());
    }
    let name = path.display().to_string();
    write_direct(role, file, &name, before, make)
}

/// Writes the patch to a file in `path`'s directory that has no name yet
/// (`O_TMPFILE`), syncs it, and only then names it: linked as `path` when
/// that is new, else linked under a temporary name and renamed over it. So
/// `path` never holds a partial patch, and a run ended any way, even by
/// SIGKILL, leaves nothing behind. Where the file system or /proc cannot do
/// that, a named temporary file is used, which SIGINT, SIGTERM and SIGHUP
/// remove (see [`cleanup_on_signals`]). An existing `path` keeps its owner
/// and mode; a new one gets 0666 less the umask.
/// `make` gets the output and the directory for its spool files.
pub(crate) fn write_file<T>(
    role: Output,
    path: &Path,
    before: &[Stamp],
    make: impl FnOnce(&mut dyn Write, Option<PathBuf>) -> Result<T, ProduceError>,
) -> Result<T, Failure> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} {} does not name a file", role.flag, path.display()))?;
    cleanup_on_signals(role.what)?;
    let keep = std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| Owner::of(&m));
    // Names are made relative to the directory as it was opened (pin_dir);
    // if it was moved meanwhile, the patch is not written.
    let opts_temp = TempOptions {
        prefix: ".mkpatch-".into(),
        suffix: ".tmp".into(),
        mode: 0o666,
        read: false,
        pin_dir: true,
    };
    let temp = TempFile::create(&dir, opts_temp).map_err(|e| match e {
        CreateError::OpenDir(e) => {
            anyhow!(e).context(format!("cannot open the directory {}", dir.display()))
        }
        CreateError::Create(e) => anyhow!(e).context(format!(
            "cannot create a temporary file in {}",
            dir.display()
        )),
    })?;
    // The spool files have no name (O_TMPFILE, or unlinked at once), so a
    // signal leaves none of them behind. They go in the directory as it was
    // opened (its /proc entry, where that works), so moving it does not
    // break the run before the commit can say what happened.
    let spool_dir = Some(match temp.dir_fd() {
        Some(fd) if temp.is_unnamed() => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        _ => dir.clone(),
    });
    let mut out = BufWriter::with_capacity(1 << 20, temp.file());
    let summary = make(&mut out, spool_dir).map_err(produce)?;
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    drop(out);
    // Dropping `temp` on an error removes the patch it holds.
    unchanged(before, "nothing was written")?;
    if let Some(owner) = keep {
        keep_owner_and_mode(role, temp.file(), path, &owner)?;
    }
    temp.file()
        .sync_all()
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Under the signal handling's lock: `path` ends up complete or as it
    // was. Checked at the start; checked again, since renaming over a node
    // or a link that appeared meanwhile would destroy it.
    temp.commit(name).map_err(|e| match e {
        CommitError::NotRegular(kind) => anyhow!(
            "{} {} became a {} while mkpatch ran; the {} was not written",
            role.flag,
            path.display(),
            kind_name(kind),
            role.what
        ),
        CommitError::DirMoved => anyhow!(
            "the directory {} was moved or replaced while mkpatch ran; the {} was not \
             written. Run mkpatch again",
            dir.display(),
            role.what
        ),
        CommitError::Link(e) | CommitError::Rename(e) => {
            anyhow!(e).context(format!("cannot name the {} {}", role.what, path.display()))
        }
    })?;
    // Make the name durable too; failing here loses nothing already written.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(summary)
}

/// Gives the new output the owner and mode of the file it replaces, as an
/// editor saving a file does. Root can always; another user can only when
/// the file was theirs, and is warned otherwise.
fn keep_owner_and_mode(role: Output, file: &File, path: &Path, was: &Owner) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt;
    let done = was.restore(file);
    if let Err(e) = done.owner {
        let (uid, gid) = file.metadata().map_or((0, 0), |m| (m.uid(), m.gid()));
        say!(
            "mkpatch: warning: {} was owned by {}:{}; the new {} is owned by {uid}:{gid} \
             ({e})",
            path.display(),
            was.uid,
            was.gid,
            role.what,
        );
    }
    done.mode
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(())
}

/// Installs, once, the handler that on SIGINT, SIGTERM or SIGHUP removes
/// the pending named temporary file and exits with status 128 + the signal
/// number, as a shell reports a process the signal ended; the exit comes
/// even when the output (`what`) was just named. Without it the default action would
/// end the process and leave the temporary file behind. A signal ignored
/// when mkpatch started (`nohup` ignores SIGHUP) stays ignored.
fn cleanup_on_signals(what: &'static str) -> Result<(), Failure> {
    signals::on_signals(move |signal| {
        // Waits for a commit under way: the output is never left half-renamed.
        let committed = matches!(signals::interrupted(), signals::Interruption::Finished);
        let name = match signal {
            signals::SIGINT => "SIGINT",
            signals::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        // Said, so a run that ends silently is never taken for a success.
        if committed {
            say!("mkpatch: interrupted by {name} just after the {what} was complete and in place");
        } else {
            say!("mkpatch: interrupted by {name}; no {what} was written");
        }
        std::process::exit(128 + signal);
    })
    .context("cannot install the signal handlers that remove the temporary file")?;
    Ok(())
}
