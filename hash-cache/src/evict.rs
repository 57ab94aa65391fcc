//! Keeping the cache directory under its bound: least recently used
//! entries go first, and temporary files that a killed run left behind
//! are swept.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::{ENTRY_SUFFIX, TEMP_PREFIX, TEMP_SUFFIX};

/// A temporary file older than this belongs to a run that died: no run
/// takes this long to write one entry.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Whether `name` is one of the cache's entry files (32 hex digits, `.entry`).
pub(crate) fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(ENTRY_SUFFIX)
        .is_some_and(|stem| stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Removes entries, least recently used first (oldest mtime; an entry's
/// mtime is set when it is written and when it is used), until the entries
/// add up to at most `max_bytes`; never `keep`. Only files named as entries
/// or the cache's temporary files are ever removed. Another run evicting at
/// the same time may remove a file first: that is not an error.
pub(crate) fn evict(dir: &Path, max_bytes: u64, keep: &Path) -> io::Result<()> {
    let now = SystemTime::now();
    let mut entries = Vec::new();
    let mut total = 0u64;
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        // Not following links: a link in the cache is not ours to count or remove.
        let Ok(meta) = item.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
            if now.duration_since(mtime).is_ok_and(|age| age > STALE_TEMP) {
                remove(&item.path())?;
            }
            continue;
        }
        if is_entry_name(name) {
            total = total.saturating_add(meta.len());
            entries.push((mtime, item.path(), meta.len()));
        }
    }
    if total <= max_bytes {
        return Ok(());
    }
    entries.sort();
    for (_, path, len) in entries {
        if total <= max_bytes {
            break;
        }
        if path == keep {
            continue;
        }
        remove(&path)?;
        total -= len;
    }
    Ok(())
}

/// Removes a file another run may have removed already.
fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn file(dir: &Path, name: &str, len: usize, age_secs: u64) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).expect("write");
        let t = SystemTime::now() - Duration::from_secs(age_secs);
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(t))
            .expect("set mtime");
        path
    }

    fn name(i: u8) -> String {
        format!("{:032x}{ENTRY_SUFFIX}", i)
    }

    #[test]
    fn oldest_go_first_until_under_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let oldest = file(d, &name(1), 100, 40);
        let old = file(d, &name(2), 100, 30);
        let young = file(d, &name(3), 100, 20);
        let newest = file(d, &name(4), 100, 0);
        let other = file(d, "notes.txt", 1000, 50);
        evict(d, 250, &newest).expect("evict");
        assert!(!oldest.exists() && !old.exists());
        assert!(young.exists() && newest.exists());
        assert!(
            other.exists(),
            "a file that is not an entry is never removed"
        );
    }

    #[test]
    fn keep_is_kept_even_when_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let keep = file(d, &name(1), 100, 40);
        let b = file(d, &name(2), 100, 30);
        evict(d, 100, &keep).expect("evict");
        assert!(keep.exists() && !b.exists());
    }

    #[test]
    fn under_the_bound_nothing_goes_but_stale_temporaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let a = file(d, &name(1), 100, 4000);
        let stale = file(d, &format!("{TEMP_PREFIX}x{TEMP_SUFFIX}"), 10, 4000);
        let busy = file(d, &format!("{TEMP_PREFIX}y{TEMP_SUFFIX}"), 10, 1);
        evict(d, 1000, &a).expect("evict");
        assert!(a.exists() && busy.exists());
        assert!(!stale.exists());
    }

    #[test]
    fn entry_names() {
        assert!(is_entry_name(&name(7)));
        assert!(!is_entry_name("0123.entry"));
        assert!(!is_entry_name(&format!("{:032x}.entries", 1)));
        assert!(!is_entry_name(&format!("{}.entry", "g".repeat(32))));
    }
}
