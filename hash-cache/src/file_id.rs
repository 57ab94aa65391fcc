//! What says, without reading it, that a file is the one an entry was made
//! from: its `stat` (device, inode, size, mtime, ctime) and when that was
//! taken.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much older than the moment an entry's hashing began the file's last
/// change must be for the entry to be trusted (git's "racy" rule). A write
/// in the same timestamp tick as the file's previous change may leave its
/// mtime and ctime as they were; once the change is older than the
/// coarsest timestamp granularity (2 s on FAT) plus the kernel's coarse
/// clock lag (one tick, a few ms), any later write shows in the stat.
pub const RACY_MARGIN: Duration = Duration::from_secs(2);

/// A point in time as `stat` gives it: seconds since the Unix epoch (may be
/// negative) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    /// `t` as a [`Time`]; times before the epoch count backwards.
    pub fn of(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if d.subsec_nanos() == 0 {
                    Self {
                        secs: -secs,
                        nanos: 0,
                    }
                } else {
                    Self {
                        secs: -secs - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }

    /// Nanoseconds since the epoch, wide enough for any `stat` value.
    fn as_nanos(self) -> i128 {
        i128::from(self.secs) * 1_000_000_000 + i128::from(self.nanos)
    }
}

/// A regular file's identity and state, and when it was taken.
///
/// Take it with [`FileId::of`] on the open file *before* reading the bytes
/// the entry is made from, so that `taken` is no later than the first read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    /// The clock when the stat was taken (just before it).
    pub taken: Time,
}

impl FileId {
    /// Stats an open file. `None` for anything but a regular file: a block
    /// device's contents change without its times changing.
    pub fn of(file: &File) -> io::Result<Option<Self>> {
        let taken = Time::of(SystemTime::now());
        let m = file.metadata()?;
        if !m.is_file() {
            return Ok(None);
        }
        let time = |secs: i64, nanos: i64| Time {
            secs,
            nanos: u32::try_from(nanos).unwrap_or(0),
        };
        Ok(Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            taken,
        }))
    }

    /// Whether `other` is the same file in the same state: device, inode,
    /// size, mtime and ctime all equal (`taken` is not compared).
    pub fn same_state(&self, other: &FileId) -> bool {
        (self.dev, self.ino, self.size, self.mtime, self.ctime)
            == (other.dev, other.ino, other.size, other.mtime, other.ctime)
    }

    /// Whether the file changed less than [`RACY_MARGIN`] before `taken` (or
    /// after it): then a later write could leave the stat as it is, and an
    /// entry made from this state must not be trusted. ctime counts too,
    /// since mtime can be set back with `touch -d` and ctime cannot.
    pub fn is_racy(&self) -> bool {
        let changed = self.mtime.max(self.ctime).as_nanos();
        changed + RACY_MARGIN.as_nanos() as i128 > self.taken.as_nanos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(mtime: i64, ctime: i64, taken: i64) -> FileId {
        let t = |secs| Time { secs, nanos: 0 };
        FileId {
            dev: 1,
            ino: 2,
            size: 3,
            mtime: t(mtime),
            ctime: t(ctime),
            taken: t(taken),
        }
    }

    #[test]
    fn racy_when_changed_within_the_margin() {
        assert!(id(100, 100, 100).is_racy(), "same second");
        assert!(id(100, 100, 101).is_racy(), "one second later");
        assert!(!id(100, 100, 102).is_racy(), "two seconds later");
        assert!(id(100, 101, 102).is_racy(), "ctime counts too");
        assert!(id(200, 100, 150).is_racy(), "mtime in the future");
        let mut late = id(100, 100, 102);
        late.ctime.nanos = 1;
        assert!(late.is_racy(), "a nanosecond inside the margin");
    }

    #[test]
    fn same_state_compares_all_but_taken() {
        let a = id(100, 100, 200);
        assert!(a.same_state(&id(100, 100, 300)));
        for b in [
            FileId { dev: 9, ..a },
            FileId { ino: 9, ..a },
            FileId { size: 9, ..a },
            id(101, 100, 200),
            id(100, 101, 200),
        ] {
            assert!(!a.same_state(&b), "{b:?}");
        }
    }

    #[test]
    fn times_before_the_epoch() {
        let t = Time::of(UNIX_EPOCH - Duration::from_millis(1500));
        assert_eq!((t.secs, t.nanos), (-2, 500_000_000));
        assert!(t < Time::of(UNIX_EPOCH));
    }

    #[test]
    fn of_a_file_and_not_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("write");
        let id = FileId::of(&File::open(&path).expect("open"))
            .expect("stat")
            .expect("a regular file");
        assert_eq!(id.size, 3);
        assert!(id.is_racy(), "just written");
        let d = File::open(dir.path()).expect("open dir");
        assert_eq!(FileId::of(&d).expect("stat"), None);
    }
}
