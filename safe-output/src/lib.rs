//! Outputs that appear whole or not at all, and never destroy an input.
//!
//! This is the one job of this crate, shared by the `mkpatch` and
//! `applypatch` command-line tools:
//!
//! - [`TempFile`]: the output while it is written, a file with no name
//!   (`O_TMPFILE`) in the output's directory, so that even SIGKILL leaves
//!   nothing; [`TempFile::commit`] names it only when it is complete (linked
//!   through `/proc/self/fd`, then renamed over a regular file of that name).
//!   Where `O_TMPFILE` or `/proc` is missing, a named temporary file is used
//!   instead, and the signal handling below removes it.
//! - [`Owner`]: a replaced file keeps its owner and mode; a new one gets the
//!   mode it was created with, less the umask (the kernel applies it).
//! - [`signals`]: removal of pending named temporary files on SIGINT,
//!   SIGTERM and SIGHUP, leaving ignored the signals that the parent
//!   ignored (`nohup`).
//! - [`identity`]: whether two paths store the same bytes (same device and
//!   inode, the same block device, a loop device and its backing file), and
//!   whether a path leads through a process's descriptor table
//!   (`/dev/stdout`, `/proc/PID/fd/N`).
//! - [`OutputLock`]: a lock on an output that may not exist yet, so two
//!   runs writing one output cannot both finish and the last rename win.
//! - [`kind_name`] and [`a_kind`]: what a file type is called in messages.
//! - [`human_bytes`]: sizes for people.
//!
//! Linux only: it reads `/proc` and `/sys` and uses `O_TMPFILE` where they
//! exist, and degrades to plainer checks where they do not.

pub mod identity;
mod kind;
mod lock;
mod owner;
pub mod signals;
mod size;
mod temp;

pub use identity::{parent_dir, FileId};
pub use kind::{a_kind, kind_name};
pub use lock::{LockError, OutputLock};
pub use owner::{Owner, Restored};
pub use size::{human_bytes, human_bytes_exact};
pub use temp::{CommitError, CreateError, TempFile, TempOptions};
