//! `mkpatch serve`: hand out the patches of a directory over QUIC
//! (`anypatch_net::server`), to `applypatch OLD quic://HOST:PORT/NAME`.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use anypatch_hash_cache::Cache;
use anypatch_net::access::Access;
use anypatch_net::server::{ServeOptions, Server};
use anypatch_net::tls::load_or_make;
use anypatch_producer::CacheOptions;

use crate::Failure;

/// Where the server keeps its certificate when `--state-dir` is not given:
/// `$XDG_STATE_HOME/anypatch/serve`, else `~/.local/state/anypatch/serve`,
/// else (no home) `/var/lib/anypatch/serve`.
fn default_state_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("XDG_STATE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".local/state")))
        .map_or_else(
            || PathBuf::from("/var/lib/anypatch/serve"),
            |d| d.join("anypatch/serve"),
        )
}

/// Warns when other users may read the access file: its tokens would let
/// them fetch what they guard (as ssh warns about keys).
fn warn_if_others_read(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let _ = writeln!(
            io::stderr(),
            "mkpatch serve: warning: the access file {} can be read by other users (mode {mode:04o}), who could then use its tokens; fix it with: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
}

/// Serves `dir` on `listen` until killed. Prints where it listens and the
/// certificate's fingerprint (for `applypatch --server-cert`) on stdout.
pub(crate) fn run_serve(
    dir: &Path,
    listen: SocketAddr,
    state_dir: Option<&Path>,
    access: Option<&Path>,
    cache: Option<CacheOptions>,
) -> Result<(), Failure> {
    let access = match access {
        Some(path) => {
            let access = Access::load(path).map_err(|e| anyhow!(e))?;
            warn_if_others_read(path);
            access
        }
        None => Access::open(),
    };
    // Without a usable cache, images are hashed once per run of the server.
    let cache = cache.and_then(|c| {
        Cache::open(&c.dir)
            .map(|cache| cache.with_max_bytes(c.max_bytes))
            .map_err(|e| {
                let _ = writeln!(io::stderr(), "mkpatch serve: not using the hash cache: {e}");
            })
            .ok()
    });
    let state = state_dir.map_or_else(default_state_dir, Path::to_path_buf);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let names: Vec<String> = ["localhost".to_owned(), host]
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    let identity = load_or_make(&state, &names).with_context(|| {
        format!(
            "cannot keep the server's certificate in {}",
            state.display()
        )
    })?;
    let fingerprint = identity.fingerprint();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    let opts = ServeOptions {
        access,
        cache,
        ..ServeOptions::new(dir.to_path_buf(), listen)
    };
    let server = runtime
        .block_on(async { Server::bind(&opts, identity) })
        // Says itself what failed: the directory, or listening on `listen`.
        .map_err(|e| anyhow!("{e}"))?;
    let addr = server
        .local_addr()
        .context("cannot read the bound address")?;
    // Said once, in one write. A reader that went away (a pipe closed after
    // the fingerprint was read) must not stop the server.
    let said = format!(
        "serving {} on {addr} (QUIC)\ncertificate {fingerprint}\nclients: applypatch OLD quic://HOST:{}/NAME -o NEW --server-cert {fingerprint}\n",
        dir.display(),
        addr.port()
    );
    let mut out = io::stdout().lock();
    if out
        .write_all(said.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        let _ = writeln!(
            io::stderr(),
            "mkpatch serve: stdout is closed; serving on {addr} anyway"
        );
    }
    drop(out);
    // A stop by signal closes every connection with the reason, so that
    // clients hear it at once, not after the idle timeout.
    let stopped = runtime.block_on(async {
        let stop = anypatch_net::server::stop_signals()?;
        server.run_until(stop).await;
        std::io::Result::Ok(())
    });
    stopped.context("cannot watch for signals")?;
    Ok(())
}
