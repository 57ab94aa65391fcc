//! Live sync: `applypatch OLD quic://HOST:PORT/NAME` where NAME, served by
//! `mkpatch serve`, is an image and not a patch (spec/SYNC.md). OLD
//! becomes that image, in place or as a new file, fetching only what OLD
//! lacks; every leaf is checked against the server's tree before it is
//! written, and the result's BLAKE3 against the server's.
//!
//! In place, a kill or a dropped link leaves OLD a mix of old and new
//! leaves, each whole and verified but for at most the one being written;
//! the same command hashes OLD as it is and fetches only what is still
//! missing. With `-o`, the image is built in a temporary file beside NEW,
//! renamed over it only once its BLAKE3 matched.

use std::fs::File;
use std::path::Path;

use anypatch_hash_cache::Cache;
use anypatch_net::fetch::FetchError;
use anypatch_net::remote::with_retries;
use anypatch_net::sync::{SyncFailure, SyncSession};
use anypatch_net::url::Scheme;
use anypatch_net::{Token, Trust};
use anypatch_sync::drive::{ReceiveOptions, Received, Target};
use anypatch_sync::receiver::SyncError;

use crate::inplace::Target as InPlaceTarget;
use crate::output::{fill_new_file, resolve_output};
use crate::remote::Remote;
use crate::{io_err, DriveError, PatchSource};

/// How a sync runs.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// The token the server's access file names for the image, if any.
    pub token: Option<Token>,
    /// Threads hashing OLD (0: all cores).
    pub threads: usize,
    /// Where images' trees are kept between runs (`None`: `--no-cache`).
    pub cache: Option<Cache>,
    /// The session's counters, for a progress line.
    pub progress: std::sync::Arc<anypatch_sync::progress::SyncProgress>,
}

impl SyncOptions {
    fn receive(&self) -> ReceiveOptions {
        let threads = match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        ReceiveOptions {
            threads,
            cache: self.cache.clone(),
            progress: self.progress.clone(),
        }
    }
}

/// Asks the server of `remote` to sync the image its URL names:
/// `Ok(None)` when the name is a patch (then nothing was done, and the
/// patch is fetched as usual); `Ok(Some(session))` ready to run.
pub fn open(remote: &Remote, opts: &SyncOptions) -> Result<Option<SyncSession>, DriveError> {
    if remote.url.scheme != Scheme::Quic {
        return Ok(None);
    }
    let trust = remote.opts.trust.clone();
    let token = opts.token.as_ref().map(Token::expose);
    // A server briefly down or restarting is tried again as a fetch is
    // (same backoff, same notices); a refusal is final at once.
    let opened = with_retries(
        &remote.url,
        &remote.opts,
        || SyncSession::open(&remote.url, trust.clone(), token),
        |e| match e {
            SyncFailure::Fetch(FetchError::Retry(why)) => Some(why.clone()),
            _ => None,
        },
        |why| SyncFailure::Fetch(FetchError::Fatal(why)),
    );
    match opened {
        Ok(_) if matches!(trust, Trust::Signature) => Err(DriveError::Refused(format!(
            "{} is an image, not a patch: a live sync has no signature to check, so the server itself must be trusted: give --server-cert SHA256:... (the fingerprint `mkpatch serve` prints) or --ca FILE",
            remote.url
        ))),
        Ok(session) => Ok(Some(session)),
        Err(SyncFailure::IsPatch) => Ok(None),
        Err(e) => Err(failure(e, &remote.url.text, false)),
    }
}

/// Syncs the file or block device at `old` in place.
pub fn sync_in_place(
    old: &Path,
    session: SyncSession,
    opts: &SyncOptions,
) -> Result<Received, DriveError> {
    let target = InPlaceTarget::open(old)?;
    let f = &target.file;
    session
        .run(f, Target::InPlace(f), &opts.receive())
        .map_err(|e| failure(e, &old.display().to_string(), true))
}

/// A dry run (`--check`): what a sync of `old` in place would send each
/// way and how long it would take. OLD is opened read-only: nothing is
/// written.
pub fn check(
    old: &Path,
    session: SyncSession,
    opts: &SyncOptions,
) -> Result<anypatch_sync::drive::Measured, DriveError> {
    let (old_file, _) = crate::open_old(old)?;
    session
        .measure(&old_file, &opts.receive())
        .map_err(|e| failure(e, &old.display().to_string(), false))
}

/// Syncs into the new file `new`, OLD staying as it is. `patch` is the
/// URL, so that the checks on the output are those of `-o`.
pub fn sync_to_new_file(
    old: &Path,
    new: &Path,
    patch: &PatchSource,
    session: SyncSession,
    opts: &SyncOptions,
) -> Result<Received, DriveError> {
    let (old_file, _) = crate::open_old(old)?;
    let old_meta = old_file
        .metadata()
        .map_err(io_err(format!("cannot stat old file {}", old.display())))?;
    let path = match resolve_output(new, &old_meta, patch)? {
        crate::OutputTarget::File(path) => path,
        crate::OutputTarget::Device { path, .. } => {
            return Err(DriveError::Refused(format!(
                "{} is a block device: a live sync writes a device in place. Copy OLD onto it first, then run applypatch --in-place {} with the same URL",
                path.display(),
                path.display()
            )))
        }
    };
    let receive = opts.receive();
    let received = fill_new_file(&path, &old_meta, |f, shown, untouched| {
        let r = session
            .run(&old_file, Target::Copy(f), &receive)
            .map_err(|e| failure(e, shown, false))
            .map_err(|e| match e {
                DriveError::Refused(why) => DriveError::Refused(format!("{why}; {untouched}")),
                other => other,
            })?;
        let len = r.new_len;
        Ok((r, len))
    })?;
    // Named now: its ctime is final, so the cache may vouch for it.
    if let (Some(cache), Ok(f)) = (&opts.cache, File::open(&path)) {
        if let Ok(Some(id)) = anypatch_sync::cache::identity(&f) {
            anypatch_sync::cache::store(cache, &f, &id, received.new_len, &received.leaves);
        }
    }
    Ok(received)
}

/// A failed sync, said for the user: what broke, and that the same command
/// goes on from where it was.
fn failure(e: SyncFailure, target: &str, in_place: bool) -> DriveError {
    match e {
        SyncFailure::IsPatch => DriveError::Refused("the name is a patch, not an image".into()),
        SyncFailure::Fetch(e) => DriveError::Refused(format!("{e}")),
        SyncFailure::Session(SyncError::Write(source)) => DriveError::Io {
            action: format!("cannot write {target}"),
            source,
        },
        SyncFailure::Session(SyncError::Io(source)) => DriveError::Io {
            action: "cannot read the old image".into(),
            source,
        },
        // In place what was written stays, verified; -o keeps nothing.
        SyncFailure::Session(SyncError::Link(source)) if in_place => DriveError::Io {
            action: format!(
                "the link to the server broke; what was synced of {target} is kept and verified: run the same command again to go on"
            ),
            source,
        },
        SyncFailure::Session(SyncError::Link(source)) => DriveError::Io {
            action: "the link to the server broke, or the server ended the session (its image changed or shrank while it was synced?): run the same command again".into(),
            source,
        },
        // Most often the served image changed while it was synced.
        SyncFailure::Session(e @ SyncError::Sender(_)) => DriveError::Refused(format!(
            "{e}. Nothing it sent that did not match its own tree was written. If the image changed on the server during the sync, run the same command again once it is complete"
        )),
    }
}
