//! A lock on an output that may not exist yet, so that two runs writing
//! the same output cannot both build it and have the last rename win.
//!
//! An existing file can be locked itself (an `flock` on it, as an in-place
//! apply does), but a new output has nothing to lock until it is renamed
//! into place, and a lock file beside it would outlive a run killed with
//! SIGKILL, where an output run leaves nothing (its temporary file has no
//! name). So the lock is a Unix socket bound to an abstract name made of
//! the output's directory (device and inode) and file name: the kernel
//! refuses a second bind of the name while the first socket lives, and
//! frees the name when the process ends however it ends. Nothing is ever
//! written to a file system. A second run learns who holds the lock by
//! connecting to it (the kernel says the listener's pid).
//!
//! Abstract names belong to a network namespace: two runs in different
//! network namespaces writing one output through a shared file system do
//! not see each other's lock.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::io::Errno;
use rustix::net::{
    bind, connect, listen, socket_with, sockopt, AddressFamily, SocketAddrUnix, SocketFlags,
    SocketType,
};

/// An output locked against other runs; unlocked when dropped (or when
/// the process ends).
#[derive(Debug)]
pub struct OutputLock {
    _socket: OwnedFd,
}

/// Why an output could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock: its pid, when the kernel says it.
    Held { pid: Option<u32> },
    /// The output's directory could not be read, or no socket be made.
    Io(io::Error),
}

impl OutputLock {
    /// Locks the output named `name` in the directory `dir`, at once or not
    /// at all.
    pub fn take(dir: &Path, name: &str) -> Result<Self, LockError> {
        let addr = address(dir, name).map_err(LockError::Io)?;
        let socket = unix_socket().map_err(LockError::Io)?;
        match bind(&socket, &addr) {
            Ok(()) => {}
            Err(Errno::ADDRINUSE) => return Err(LockError::Held { pid: holder(&addr) }),
            Err(e) => return Err(LockError::Io(e.into())),
        }
        // Listening only so that a refused run can ask who holds the lock.
        listen(&socket, 1).map_err(|e| LockError::Io(e.into()))?;
        Ok(Self { _socket: socket })
    }
}

fn unix_socket() -> io::Result<OwnedFd> {
    Ok(socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// The process listening on `addr`, from the credentials the kernel gives
/// a connection (the pid at the time it listened).
fn holder(addr: &SocketAddrUnix) -> Option<u32> {
    let s = unix_socket().ok()?;
    connect(&s, addr).ok()?;
    let cred = sockopt::socket_peercred(&s).ok()?;
    u32::try_from(cred.pid.as_raw_nonzero().get()).ok()
}

/// The abstract name for the output `name` in `dir`: the directory's device
/// and inode (so any path to it gives the same name) and a 128-bit digest
/// of the file name (abstract names hold at most 107 bytes).
fn address(dir: &Path, name: &str) -> io::Result<SocketAddrUnix> {
    let meta = std::fs::metadata(dir)?;
    let text = format!(
        "anypatch-output/{:x}/{:x}/{:016x}{:016x}",
        meta.dev(),
        meta.ino(),
        fnv(name, 0xcbf2_9ce4_8422_2325),
        fnv(name, 0x6c62_272e_07bb_0142),
    );
    Ok(SocketAddrUnix::new_abstract_name(text.as_bytes())?)
}

/// FNV-1a from `seed`: only to tell names apart, not against an adversary
/// (a collision refuses a run, it never lets two write one file).
fn fnv(s: &str, seed: u64) -> u64 {
    s.bytes().fold(seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_output_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let first = OutputLock::take(dir.path(), "new.img").expect("first");
        match OutputLock::take(dir.path(), "new.img") {
            Err(LockError::Held { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second lock: {other:?}"),
        }
        // Through another path to the same directory, too.
        let via = dir.path().join(".").join("sub/..");
        std::fs::create_dir(dir.path().join("sub")).expect("sub");
        assert!(OutputLock::take(&via, "new.img").is_err());
        // Another output in the same directory is not held up.
        let other = OutputLock::take(dir.path(), "other.img").expect("another output");
        drop(other);
        drop(first);
        drop(OutputLock::take(dir.path(), "new.img").expect("free again"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(names.len(), 1, "nothing but sub/ in the directory");
    }

    #[test]
    fn long_names_are_told_apart() {
        let dir = tempfile::tempdir().expect("dir");
        let a = "a".repeat(250);
        let b = format!("{}b", "a".repeat(249));
        let _a = OutputLock::take(dir.path(), &a).expect("a");
        let _b = OutputLock::take(dir.path(), &b).expect("b, another output");
    }
}
