//! Opening a name inside the served directory and nowhere else, even while
//! users who may write in that directory change it under the server.
//!
//! A check of the path followed by an open of it leaves a window in which a
//! directory on the path can be swapped for a link out of the served
//! directory. Here there is no window: the directory is opened once, at
//! start, and every name is opened relative to it by one `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, which the kernel resolves
//! without ever leaving it. So:
//!
//! - a relative link that stays inside the directory is followed (an image
//!   published as `current.img -> vm-2026-12.img` is served);
//! - an absolute link, even to a file inside, and any link or `..` that
//!   leads out, are refused as if the name did not exist;
//! - `/proc`'s magic links are never followed;
//! - the directory served is the one opened at start, even if its path is
//!   later moved or made a link to somewhere else.
//!
//! Linux 5.6 brought `openat2`; on an older kernel [`Root::open`] says so,
//! and the server does not start.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How a name is resolved: beneath the directory, no magic links.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// How many times an open is tried again when the kernel saw a rename
/// during the lookup (`EAGAIN`, which `RESOLVE_BENEATH` returns rather than
/// risk a lookup that a concurrent rename could have led out).
const RENAME_RETRIES: u32 = 16;

/// The served directory, held open.
#[derive(Debug)]
pub(super) struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens the directory `dir` and checks that this kernel can open
    /// names beneath it.
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let root = Self { fd };
        match root.at(Path::new("."), OFlags::PATH | OFlags::DIRECTORY) {
            Ok(_) => Ok(root),
            Err(Errno::NOSYS) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel has no openat2 (Linux 5.6 or later), which mkpatch serve needs to keep every name inside the served directory while others may change it; upgrade the kernel",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the file `rel` (a relative path, checked by the caller to
    /// hold only normal components) for reading. Never blocks on a FIFO or
    /// a device: what it opens is checked to be a regular file afterwards.
    /// `ErrorKind::NotFound` for every name that does not lead to something
    /// inside the directory.
    pub(super) fn open_file(&self, rel: &Path) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        match self.at(rel, flags) {
            Ok(fd) => Ok(File::from(fd)),
            // EXDEV: the lookup would leave the directory; ELOOP: too many
            // links; ENOTDIR: a file where a directory was named.
            Err(Errno::XDEV | Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => {
                Err(io::ErrorKind::NotFound.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn at(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
        let mut tries = 0;
        loop {
            match openat2(
                &self.fd,
                rel,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            ) {
                Err(Errno::AGAIN) if tries < RENAME_RETRIES => tries += 1,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn read(root: &Root, name: &str) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut v = Vec::new();
        root.open_file(Path::new(name))?.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn names_resolve_beneath_the_directory_only() {
        let top = tempfile::tempdir().expect("tmp");
        let served = top.path().join("served");
        std::fs::create_dir_all(served.join("sub")).expect("dirs");
        std::fs::write(top.path().join("secret"), b"secret").expect("secret");
        std::fs::write(served.join("sub/a.img"), b"a").expect("a");
        symlink("sub/a.img", served.join("rel-in")).expect("link");
        symlink(served.join("sub/a.img"), served.join("abs-in")).expect("link");
        symlink("../secret", served.join("rel-out")).expect("link");
        symlink(top.path().join("secret"), served.join("abs-out")).expect("link");
        symlink("/proc/self/root/etc/hostname", served.join("magic")).expect("link");
        symlink("..", served.join("sub/up")).expect("link");
        let root = Root::open(&served).expect("root");
        assert_eq!(read(&root, "sub/a.img").expect("inside"), b"a");
        assert_eq!(read(&root, "rel-in").expect("a relative link inside"), b"a");
        for name in [
            "abs-in",
            "rel-out",
            "abs-out",
            "magic",
            "sub/up/../secret",
            "none",
            "sub/a.img/x",
        ] {
            let e = read(&root, name).expect_err(name);
            assert_eq!(e.kind(), io::ErrorKind::NotFound, "{name}: {e}");
        }
        // `..` inside stays inside: allowed by the kernel, refused earlier
        // by the server's own check of the name's components.
        assert_eq!(read(&root, "sub/up/sub/a.img").expect("up and down"), b"a");

        // The directory opened at start is the one served, whatever its
        // path becomes.
        let moved = top.path().join("moved");
        std::fs::rename(&served, &moved).expect("move");
        symlink(top.path(), &served).expect("a link in its place");
        assert_eq!(read(&root, "sub/a.img").expect("still served"), b"a");
        assert!(read(&root, "secret").is_err());
    }

    #[test]
    fn a_fifo_is_opened_without_blocking() {
        let dir = tempfile::tempdir().expect("tmp");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let root = Root::open(dir.path()).expect("root");
        let f = root.open_file(Path::new("fifo")).expect("opened at once");
        assert!(!f.metadata().expect("stat").is_file());
    }
}
