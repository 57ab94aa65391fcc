//! Removal of pending temporary files on SIGINT, SIGTERM and SIGHUP.
//!
//! A named temporary file (the fallback where `O_TMPFILE` is missing) would
//! outlive a process that a signal ends. [`TempFile`](crate::TempFile)
//! registers such a file here while it exists, and the CLI's signal handler
//! (installed with [`on_signals`]) calls [`interrupted`], which removes them.
//! Creating, committing and dropping a temporary file, and [`interrupted`],
//! all hold one lock, so a signal comes either before a commit (and the
//! file is removed) or after it (and the output is complete).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// What a signal handler must undo before the process exits.
#[derive(Debug)]
pub(crate) struct Registry {
    /// Named temporary files that must not outlive the process.
    pub(crate) temp_files: Vec<PathBuf>,
    /// The output is complete and in place: a signal can no longer change
    /// the outcome.
    pub(crate) committed: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    temp_files: Vec::new(),
    committed: false,
});

/// Locks the registry.
pub(crate) fn registry() -> MutexGuard<'static, Registry> {
    // A panic elsewhere must not stop the cleanup.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a signal means for this run, as [`interrupted`] decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interruption {
    /// The output is already complete and in place (a [`TempFile`] was
    /// committed, or [`mark_committed`] was called): the signal came too
    /// late to change anything.
    ///
    /// [`TempFile`]: crate::TempFile
    Finished,
    /// Nothing was committed. The named temporary files listed were removed;
    /// the registry stays locked, so no temporary file can be made or
    /// committed any more: the caller must end the process.
    Stop {
        /// The temporary files removed.
        removed: Vec<PathBuf>,
    },
}

/// For a signal handler: removes every pending named temporary file, unless
/// the output is already committed. On [`Interruption::Stop`] the registry
/// stays locked for good, so the process must exit next; on
/// [`Interruption::Finished`] the lock is released.
pub fn interrupted() -> Interruption {
    let mut r = registry();
    if r.committed {
        return Interruption::Finished;
    }
    let removed = r
        .temp_files
        .drain(..)
        .filter(|p| std::fs::remove_file(p).is_ok())
        .collect();
    // Held until the process exits: nothing is created or committed after this.
    std::mem::forget(r);
    Interruption::Stop { removed }
}

/// Records that the output is complete and in place by some other means than
/// [`TempFile::commit`](crate::TempFile::commit) (a block device written and
/// read back): from now on [`interrupted`] returns [`Interruption::Finished`].
pub fn mark_committed() {
    registry().committed = true;
}

/// Calls `handler` with the signal number on a thread of its own for every
/// SIGINT, SIGTERM or SIGHUP, except those this process started with
/// ignored (`nohup` ignores SIGHUP: it stays ignored). Call it once, before
/// the first temporary file is created. Without it a signal's default action
/// ends the process and leaves a named temporary file behind. The handler
/// typically calls [`interrupted`] and exits with 128 + the signal number.
pub fn on_signals(mut handler: impl FnMut(i32) + Send + 'static) -> std::io::Result<()> {
    let ignored = ignored_signals();
    let wanted = [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .filter(|&s| ignored & (1 << (s - 1)) == 0);
    let mut signals = signal_hook::iterator::Signals::new(wanted)?;
    std::thread::spawn(move || {
        for signo in signals.forever() {
            handler(signo);
        }
    });
    Ok(())
}

/// The set of signals this process started with ignored, as a mask with bit
/// `signal - 1` set, read from /proc/self/status (asking sigaction would take
/// unsafe code); none where /proc cannot tell. Call it before installing any
/// handler, which would change the mask.
pub fn ignored_signals() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_sig_ign(&status))
        .unwrap_or(0)
}

/// The `SigIgn:` mask of a /proc/PID/status text.
fn parse_sig_ign(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_ign_is_read_from_status() {
        let status = "Name:\tx\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000001\n";
        assert_eq!(parse_sig_ign(status), Some(1));
        assert_eq!(parse_sig_ign("Name:\tx\n"), None);
        // This process: /proc is there on Linux, and the mask parses.
        assert!(
            parse_sig_ign(&std::fs::read_to_string("/proc/self/status").expect("proc")).is_some()
        );
    }
}
