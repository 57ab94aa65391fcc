//! Running code inside a lab's namespace from this process.

use std::fs::File;
use std::os::fd::AsFd;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::{names, Error};

/// Runs `f` on a new thread that has entered network namespace `ns` and
/// returns what `f` returns. setns(2) moves only the calling thread, so
/// nothing else of this process changes namespace, and the thread ends
/// with `f`. Sockets and devices `f` creates belong to `ns` and may be
/// used from any thread afterwards. A panic in `f` is resumed here.
pub(crate) fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let path = names::path(ns);
    let file = File::open(&path).map_err(|source| Error::Io {
        what: format!("opening namespace {}", path.display()),
        source,
    })?;
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network)).map_err(
                    |e| Error::Io {
                        what: format!("entering namespace {ns}"),
                        source: e.into(),
                    },
                )?;
                Ok(f())
            })
            .join()
    });
    match joined {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
