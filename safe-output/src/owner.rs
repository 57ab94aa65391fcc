//! A replaced file keeps its owner and mode.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// The owner and mode of a file that an output replaces, taken before the
/// work starts and given to the new file before it is committed, as an
/// editor saving a file does. A new file needs none of this: it gets the
/// mode it was created with, less the umask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
    /// The permission bits, set-id and sticky bits included.
    pub mode: u32,
}

/// What [`Owner::restore`] managed. Each CLI decides what a failure means.
#[derive(Debug)]
pub struct Restored {
    /// Giving the file the old owner: only root may give a file away, so a
    /// user replacing a file they may write but do not own keeps it as theirs.
    pub owner: io::Result<()>,
    /// Setting the old mode.
    pub mode: io::Result<()>,
}

impl Owner {
    /// The owner and mode of the file with metadata `meta`; call it on the
    /// file the output will replace, before the work starts.
    pub fn of(meta: &Metadata) -> Self {
        Self {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        }
    }

    /// Gives `file` (the complete temporary file, before it is committed)
    /// this owner and mode: the owner first, because a change of owner
    /// clears the set-id bits, then the mode.
    pub fn restore(&self, file: &File) -> Restored {
        let owner = file.metadata().and_then(|m| {
            if (m.uid(), m.gid()) == (self.uid, self.gid) {
                Ok(())
            } else {
                std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))
            }
        });
        let mode = file.set_permissions(std::fs::Permissions::from_mode(self.mode));
        Restored { owner, mode }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_is_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("old");
        std::fs::write(&old, b"x").expect("write");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let owner = Owner::of(&std::fs::metadata(&old).expect("stat"));
        assert_eq!(owner.mode, 0o640);
        let new = tempfile::tempfile_in(dir.path()).expect("tempfile");
        let done = owner.restore(&new);
        assert!(done.owner.is_ok() && done.mode.is_ok(), "{done:?}");
        let meta = new.metadata().expect("stat");
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid));
    }
}
