//! Whether two paths store the same bytes, and whether a path is a stream
//! that is already open.
//!
//! Writing an output onto one of the run's inputs destroys it. Two paths are
//! the same file when they have the same device and inode (so hard links and
//! symlinks count), and the same disk when they are block device nodes with
//! the same `rdev`. Under other names still: a loop device and the file
//! behind it ([`stores`], [`shared`]), or a disk, its partitions and the file
//! systems on them ([`device_holds`]), read from sysfs.

use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a file is, for telling whether two paths are the same file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    /// The device a block device node stands for: two nodes of one disk
    /// have different inodes but the same `rdev`.
    block_rdev: Option<u64>,
}

impl FileId {
    /// The identity of the file with metadata `meta` (symlinks followed).
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            block_rdev: meta.file_type().is_block_device().then(|| meta.rdev()),
        }
    }

    /// Same device and inode (a hard link or symlink to it counts), or two
    /// nodes of the same block device. Call it before writing an output, with
    /// each input.
    pub fn same(&self, other: &Self) -> bool {
        self.same_inode(other) || (self.block_rdev.is_some() && self.block_rdev == other.block_rdev)
    }

    /// Same device and inode only: one node, under any name.
    pub fn same_inode(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// The directory a new file at `path` goes in: its parent, or `.` for a
/// bare name.
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether `path`, or a symlink it leads through, names an entry of a
/// process's file descriptor table (`/dev/stdout`, `/dev/fd/N`,
/// `/proc/PID/fd/N`): a stream that is already open, not a place to write a
/// file. Each link's directory is resolved, so other names for those
/// directories count too. Call it on an output path before treating it as
/// a file.
pub fn through_fd_link(path: &Path) -> bool {
    let mut p = path.to_path_buf();
    // The kernel's own limit on links followed in one lookup.
    for _ in 0..40 {
        let Ok(dir) = fs::canonicalize(parent_dir(&p)) else {
            return false;
        };
        if fd_dir_pid(&dir).is_some() {
            return true;
        }
        match fs::read_link(&p) {
            Ok(to) => p = dir.join(to),
            Err(_) => return false,
        }
    }
    false
}

/// The process id and descriptor number when `path` itself is a
/// descriptor's entry (`/proc/PID/fd/N`, `/proc/self/fd/N`, `/dev/fd/N`,
/// `/proc/thread-self/fd/N`: all one directory once its links are
/// resolved). The last component is not followed.
pub fn fd_entry(path: &Path) -> Option<(u32, u32)> {
    let fd = path.file_name()?.to_str()?.parse::<u32>().ok()?;
    let dir = fs::canonicalize(path.parent()?).ok()?;
    Some((fd_dir_pid(&dir)?, fd))
}

/// The process id when the resolved directory `dir` is `/proc/PID/fd` or
/// `/proc/PID/task/TID/fd`.
fn fd_dir_pid(dir: &Path) -> Option<u32> {
    let parts: Vec<&str> = dir
        .strip_prefix("/proc")
        .ok()?
        .iter()
        .map(|c| c.to_str())
        .collect::<Option<_>>()?;
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts[..] {
        [pid, "fd"] if number(pid) => pid.parse().ok(),
        [pid, "task", tid, "fd"] if number(pid) && number(tid) => pid.parse().ok(),
        _ => None,
    }
}

/// One place bytes are stored: a file (device and inode), or a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreId {
    Inode { dev: u64, ino: u64 },
    Block(u64),
}

/// One place where writes through a path land; see [`stores`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    id: StoreId,
    /// How it was reached ("/dev/loop0 is a loop device over /img").
    via: Option<String>,
}

/// Where writes through a file with metadata `meta` land, outermost first:
/// the file itself, the block device it stands for, and, for a loop device
/// (or a partition of one), the file or device behind it, followed down.
/// Compare two lists with [`shared`].
pub fn stores(meta: &Metadata) -> Vec<Store> {
    let mut out = Vec::new();
    let mut meta = meta.clone();
    let mut via: Option<String> = None;
    // Loop devices over loop devices are rare; a few levels are plenty.
    for _ in 0..8 {
        out.push(Store {
            id: StoreId::Inode {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            via: via.clone(),
        });
        if !meta.file_type().is_block_device() {
            break;
        }
        out.push(Store {
            id: StoreId::Block(meta.rdev()),
            via: via.clone(),
        });
        let Some((device, backing)) = loop_backing(meta.rdev()) else {
            break;
        };
        let Ok(m) = fs::metadata(&backing) else {
            break;
        };
        let step = format!("{device} is a loop device over {backing}");
        via = Some(match via {
            Some(v) => format!("{v}, {step}"),
            None => step,
        });
        meta = m;
    }
    out
}

/// Why two lists of [`stores`] share one, if they do: "the same file", or
/// the loop devices that lead from one to the other.
pub fn shared(a: &[Store], b: &[Store]) -> Option<String> {
    a.iter().find_map(|x| {
        let y = b.iter().find(|y| y.id == x.id)?;
        let why: Vec<&str> = [&x.via, &y.via]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        Some(if why.is_empty() {
            "the same file".to_owned()
        } else {
            why.join("; ")
        })
    })
}

/// The loop devices whose backing file is the file with metadata `file`:
/// each one's `/dev` name and device number (from sysfs; none where sysfs
/// is missing). Writing `file` in place changes what they show, so call it
/// before rewriting a file, to refuse one behind a mounted device.
pub fn loop_devices_over(file: &Metadata) -> Vec<(String, u64)> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let backing = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let m = fs::metadata(backing.trim_end_matches('\n')).ok()?;
            ((m.dev(), m.ino()) == (file.dev(), file.ino())).then_some(())?;
            let numbers = fs::read_to_string(e.path().join("dev")).ok()?;
            let (major, minor) = numbers.trim().split_once(':')?;
            let rdev = rustix::fs::makedev(major.parse().ok()?, minor.parse().ok()?);
            Some((format!("/dev/{}", e.file_name().to_string_lossy()), rdev))
        })
        .collect()
}

/// The device's name and the file behind it, when `rdev` is a loop device
/// or a partition of one (from sysfs).
pub fn loop_backing(rdev: u64) -> Option<(String, String)> {
    let sys = sys_block(rdev)?;
    // A partition's directory lies inside its disk's, where `loop/` is.
    let found = [Some(sys.as_path()), sys.parent()]
        .into_iter()
        .flatten()
        .find_map(|d| {
            let backing = fs::read_to_string(d.join("loop/backing_file")).ok()?;
            let name = d.file_name()?.to_string_lossy();
            Some((
                format!("/dev/{name}"),
                backing.trim_end_matches('\n').to_owned(),
            ))
        });
    found
}

/// The sysfs directory of the block device `dev`.
fn sys_block(dev: u64) -> Option<PathBuf> {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
}

/// How a block device holds a file's bytes; see [`device_holds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// The file is a block device too: the same disk, a partition of it, or
    /// the disk it is a partition of.
    DiskOrPartition,
    /// The file is on a file system on the device or one of its partitions.
    FileSystem,
    /// The device is a loop device backed by the file.
    LoopBacking,
}

/// Whether the block device `rdev` holds the bytes of the file with metadata
/// `file` under another name, which the same-file check of [`FileId`] does
/// not see. Call it before writing onto a block device, with each input.
/// Read from sysfs; where sysfs is missing, `None`.
pub fn device_holds(rdev: u64, file: &Metadata) -> Option<Holds> {
    let out = sys_block(rdev)?;
    // A partition's sysfs directory lies inside its disk's.
    let overlaps =
        |dev: u64| sys_block(dev).is_some_and(|d| d.starts_with(&out) || out.starts_with(&d));
    if file.file_type().is_block_device() {
        return overlaps(file.rdev()).then_some(Holds::DiskOrPartition);
    }
    if overlaps(file.dev()) {
        return Some(Holds::FileSystem);
    }
    let backing = fs::read_to_string(out.join("loop/backing_file")).ok()?;
    let backing = fs::metadata(backing.trim_end_matches('\n')).ok()?;
    ((backing.dev(), backing.ino()) == (file.dev(), file.ino())).then_some(Holds::LoopBacking)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_the_same_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::write(&a, b"x").expect("write");
        fs::write(&b, b"x").expect("write");
        fs::hard_link(&a, dir.path().join("hard")).expect("link");
        std::os::unix::fs::symlink(&a, dir.path().join("soft")).expect("symlink");
        let id = |p: &str| FileId::of(&fs::metadata(dir.path().join(p)).expect("stat"));
        assert!(id("a").same(&id("hard")) && id("a").same(&id("soft")));
        assert!(id("a").same_inode(&id("soft")));
        assert!(!id("a").same(&id("b")));
        let st = |p: &str| stores(&fs::metadata(dir.path().join(p)).expect("stat"));
        assert_eq!(
            shared(&st("a"), &st("soft")).as_deref(),
            Some("the same file")
        );
        assert_eq!(shared(&st("a"), &st("b")), None);
    }

    #[test]
    fn descriptor_paths_are_seen() {
        let me = std::process::id();
        assert_eq!(
            fd_entry(Path::new("/dev/stdout")),
            None,
            "a link, not an entry"
        );
        assert_eq!(fd_entry(Path::new("/dev/fd/1")), Some((me, 1)));
        assert_eq!(fd_entry(Path::new("/proc/self/fd/2")), Some((me, 2)));
        assert!(through_fd_link(Path::new("/dev/stdout")));
        assert!(through_fd_link(Path::new("/proc/self/fd/0")));
        assert!(!through_fd_link(Path::new("/tmp/x")));
        assert_eq!(fd_dir_pid(Path::new("/proc/12/task/13/fd")), Some(12));
        assert_eq!(fd_dir_pid(Path::new("/proc/12/fdinfo")), None);
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/a/x")), Path::new("/a"));
    }
}
