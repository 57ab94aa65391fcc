//! Names of the labs' namespaces, and cleaning up the labs that a dead or
//! stuck process left behind.
//!
//! A lab's namespaces are `anpnl-TAG-PID-SEQ-c` and `anpnl-TAG-PID-SEQ-s`:
//! the owner's pid says whether the lab can still be in use, and the
//! namespace file's age (`/run/netns/NAME`) says how long it has been.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use crate::{cmd, Error};

/// The prefix of every namespace a lab makes.
pub const PREFIX: &str = "anpnl-";

/// A lab older than this is stale even when its owner is still alive:
/// tests and benchmarks are bounded well below it.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Labs made by this process so far: keeps names unique between parallel tests.
static SEQ: AtomicU32 = AtomicU32::new(0);

/// The base name of a new lab (without the `-c`/`-s` suffix).
pub(crate) fn fresh(tag: &str) -> String {
    let tag: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(16)
        .collect();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{tag}-{}-{seq}", std::process::id())
}

/// The path of namespace `ns`'s file.
pub(crate) fn path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Which labs' namespaces `clean` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Those whose owner is dead, or that are older than [`STALE_AFTER`].
    Stale,
    /// Every lab namespace except this process's own.
    All,
}

/// Removes lab namespaces (and kills the processes inside them); returns
/// the names removed. Never touches this process's own labs, nor any
/// namespace without the [`PREFIX`].
pub fn clean(which: Which) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                what: format!("listing {NETNS_DIR}"),
                source,
            })
        }
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = owner(&name) else { continue };
        if owner == me {
            continue;
        }
        let stale = which == Which::All || !alive(owner) || older_than(&name, STALE_AFTER);
        if stale {
            remove(&name)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Kills every process in namespace `ns` (but never this one) and deletes it.
pub(crate) fn remove(ns: &str) -> Result<(), Error> {
    kill_inside(ns);
    match cmd::root("ip", &["netns", "del", ns]) {
        Ok(_) => Ok(()),
        // Already gone (a parallel clean got there first): that is the goal.
        Err(_) if !path(ns).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sends SIGKILL to every process whose network namespace is `ns`, except
/// this process: a test's servers and clients, which would otherwise keep
/// the namespace alive.
pub(crate) fn kill_inside(ns: &str) {
    let Ok(pids) = cmd::root("ip", &["netns", "pids", ns]) else {
        return;
    };
    let me = std::process::id().to_string();
    let pids: Vec<&str> = pids.split_whitespace().filter(|p| *p != me).collect();
    if pids.is_empty() {
        return;
    }
    let mut args = vec!["-KILL"];
    args.extend(pids);
    // A process may exit between the listing and the kill: not an error.
    let _ = cmd::root("kill", &args);
}

/// The owner pid of a lab namespace name, or `None` for any other name.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    // TAG-PID-SEQ-SIDE; TAG has no '-'.
    let mut parts = rest.split('-');
    let _tag = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let _seq: u32 = parts.next()?.parse().ok()?;
    Some(pid)
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Whether namespace `ns` was made longer than `age` ago.
fn older_than(ns: &str, age: Duration) -> bool {
    let made = std::fs::metadata(path(ns)).and_then(|m| m.modified());
    match made {
        Ok(made) => SystemTime::now()
            .duration_since(made)
            .is_ok_and(|d| d > age),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_read_from_lab_names_only() {
        assert_eq!(owner("anpnl-rtt-1234-7-c"), Some(1234));
        assert_eq!(owner("anpnl-rtt-1234-7-s"), Some(1234));
        assert_eq!(owner("other-1234-7-c"), None);
        assert_eq!(owner("anpnl-rtt-x-7-c"), None);
    }

    #[test]
    fn fresh_names_are_unique_and_parse() {
        let a = fresh("a-b c");
        let b = fresh("a-b c");
        assert_ne!(a, b);
        assert_eq!(owner(&format!("{a}-c")), Some(std::process::id()));
    }
}
