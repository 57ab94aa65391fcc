//! Patches fetched over the network: `quic://` from `mkpatch serve`,
//! `https://` and `http://` from any web server. The bytes are checked by
//! the engine as they arrive, as a local patch's are; what this module
//! decides is whether the server may be used at all, and, for
//! `--in-place`, which reads its patch more than once, a local copy that a
//! rerun goes on filling.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anypatch_net::tls::parse_fingerprint;
use anypatch_net::url::Scheme;
use anypatch_net::{RemoteOptions, RemotePatch, RemoteUrl, Token, Trust, VersionChanged};

use crate::{io_err, DriveError, PatchSource};

/// A patch at a URL, and how to fetch it.
#[derive(Clone, Debug)]
pub struct Remote {
    pub url: RemoteUrl,
    pub opts: RemoteOptions,
}

/// What the command line says about trusting servers.
#[derive(Debug, Default)]
pub struct TrustFlags<'a> {
    /// `--server-cert`: the SHA256 fingerprint `mkpatch serve` printed.
    pub server_cert: Option<&'a str>,
    /// `--ca`: PEM files of extra certificate authorities.
    pub ca: &'a [PathBuf],
    /// `--trusted-key` was given: the patch must be signed by one of them.
    pub signed: bool,
    /// `--token-file`: the file holding the token the server's access file
    /// names for the patch or image.
    pub token_file: Option<&'a Path>,
}

impl Remote {
    /// The remote patch `arg` names, with the trust the flags give. A
    /// server is trusted by its pinned certificate, by a certificate
    /// authority, or, only when the patch must be signed by a trusted key,
    /// not at all: then the signature is what is trusted, and nothing is
    /// written unless it verifies.
    pub fn new(arg: &str, flags: &TrustFlags<'_>) -> Result<Self, DriveError> {
        let url = RemoteUrl::parse(arg).map_err(DriveError::Refused)?;
        let trust = match (url.scheme, flags.server_cert) {
            (Scheme::Http, _) if !flags.signed => {
                return Err(DriveError::Refused(format!(
                    "{url}: plain http:// proves nothing about who sent the patch. Give --trusted-key (then only a patch signed by that key is applied) or use https://"
                )))
            }
            (Scheme::Http, _) => Trust::Signature,
            (_, Some(pin)) => Trust::Pinned(parse_fingerprint(pin).map_err(DriveError::Refused)?),
            (Scheme::Quic, None) if flags.ca.is_empty() && flags.signed => Trust::Signature,
            (Scheme::Quic, None) if flags.ca.is_empty() => {
                return Err(DriveError::Refused(format!(
                    "{url}: say how to trust the server: --server-cert SHA256:... (the fingerprint `mkpatch serve` prints), --ca FILE (the authority that signed its certificate), or --trusted-key (then only a signed patch is applied)"
                )))
            }
            _ => Trust::roots(flags.ca).map_err(DriveError::Refused)?,
        };
        let mut opts = RemoteOptions::new(trust);
        retries_for_tests(&mut opts);
        if let Some(path) = flags.token_file {
            if url.scheme == Scheme::Http {
                return Err(DriveError::Refused(format!(
                    "{url}: a token is never sent over plain http:// (anyone on the way could read it); use https:// (sent as Authorization: Bearer) or quic://"
                )));
            }
            let (token, warning) = Token::read_file(path).map_err(DriveError::Refused)?;
            if let Some(w) = warning {
                let _ = writeln!(io::stderr(), "applypatch: {w}");
            }
            opts.token = Some(token);
        }
        Ok(Self { url, opts })
    }

    /// Starts fetching the patch from byte `offset`.
    pub fn open_at(&self, offset: u64) -> Result<RemotePatch, DriveError> {
        RemotePatch::open(self.url.clone(), offset, self.opts.clone())
            .map_err(io_err(format!("cannot start fetching {}", self.url)))
    }

    /// Makes sure `spool` holds the whole patch for `--in-place`, fetching
    /// what it lacks, and returns it opened and locked: hold it until the
    /// copy is applied, so that no other run fetches into it meanwhile. A
    /// copy cut short by a kill or a dropped link is continued, not fetched
    /// again, if it came from the same URL and the server still has the
    /// same version (the URL, length and tag are kept beside the copy);
    /// otherwise it is fetched anew, and a patch that changed on the server
    /// since the copy was begun is fetched again from byte 0, once. The
    /// copy is not trusted: the in-place apply verifies all of it before
    /// the first write. `on_progress` is called as bytes arrive (the
    /// engine's figures are zero: the patch is not applied yet).
    pub fn spool(
        &self,
        spool: &Path,
        on_progress: &mut dyn FnMut(anypatch_apply::Progress),
    ) -> Result<File, DriveError> {
        let file = lock_spool(spool)?;
        match self.fill(spool, &file, on_progress) {
            Err(Filled::Changed(why)) => {
                let _ = writeln!(
                    io::stderr(),
                    "applypatch: {why}; the copy fetched so far ({}) cannot be continued: fetching it again from byte 0",
                    spool.display()
                );
                let _ = fs::remove_file(tag_path(spool));
                self.fill(spool, &file, on_progress)
                    .map_err(|e| e.into_drive(spool, &self.url))?;
            }
            other => other.map_err(|e| e.into_drive(spool, &self.url))?,
        }
        Ok(file)
    }

    /// Fetches the patch to `spool` ([`Self::spool`]) and runs `apply` on
    /// that local copy, which is removed once applied, or found corrupt
    /// (so that the next run fetches it anew); kept otherwise, for a rerun.
    pub fn apply_spooled<T>(
        &self,
        spool: &Path,
        on_progress: &mut dyn FnMut(anypatch_apply::Progress),
        apply: impl FnOnce(
            &PatchSource,
            &mut dyn FnMut(anypatch_apply::Progress),
        ) -> Result<T, DriveError>,
    ) -> Result<T, DriveError> {
        let _locked = self.spool(spool, on_progress)?;
        let result = apply(&PatchSource::Path(spool.to_path_buf()), on_progress);
        match &result {
            Ok(_) | Err(DriveError::AlreadyApplied) => remove_download(spool),
            Err(DriveError::Apply(e)) if e.class() == anypatch_apply::ErrorClass::CorruptPatch => {
                remove_download(spool)
            }
            Err(_) => {}
        }
        result
    }

    /// One pass at the copy: from where it ends, when it is from this URL
    /// and the server's version is known, else from byte 0.
    fn fill(
        &self,
        spool: &Path,
        file: &File,
        on_progress: &mut dyn FnMut(anypatch_apply::Progress),
    ) -> Result<(), Filled> {
        let tag_path = tag_path(spool);
        let write_err = |e| Filled::Write(format!("cannot write {}", spool.display()), e);
        let have = file.metadata().map(|m| m.len()).unwrap_or(0);
        let kept = fs::read_to_string(&tag_path).ok();
        let mut opts = self.opts.clone();
        let offset = match kept.as_deref().and_then(parse_tag) {
            Some((url, _)) if url != self.url.text => 0,
            // Fetched whole by an earlier run (killed while applying).
            Some((_, head)) if head.len == Some(have) => return Ok(()),
            Some((_, head)) if have > 0 => {
                opts.expect = Some(head);
                have
            }
            _ => 0,
        };
        if offset == 0 {
            // What another URL or version left must not be continued.
            let _ = fs::remove_file(&tag_path);
        }
        let mut reader = RemotePatch::open(self.url.clone(), offset, opts)
            .map_err(|e| Filled::Fetch(format!("cannot start fetching {}", self.url), e))?;
        file.set_len(offset)
            .and_then(|()| file.sync_all())
            .map_err(write_err)?;
        let mut out = io::BufWriter::with_capacity(1 << 20, file);
        use io::Seek;
        out.seek(io::SeekFrom::Start(offset)).map_err(write_err)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut tag_written = false;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = out.flush();
                    if let Some(c) = VersionChanged::of(&e) {
                        return Err(Filled::Changed(c.to_string()));
                    }
                    if fs::metadata(spool).is_ok_and(|m| m.len() == 0) {
                        // Nothing fetched: nothing for a rerun to continue.
                        remove_download(spool);
                    }
                    return Err(Filled::Fetch(format!("cannot fetch {}", self.url), e));
                }
            };
            if !tag_written {
                // The server's version, so that a rerun continues only that.
                if let Some(head) = reader.head() {
                    write_tag(&tag_path, &self.url.text, &head).map_err(|e| {
                        Filled::Write(format!("cannot write {}", tag_path.display()), e)
                    })?;
                }
                tag_written = true;
            }
            out.write_all(&buf[..n]).map_err(write_err)?;
            on_progress(anypatch_apply::Progress::default());
        }
        let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(write_err)
    }
}

/// Why filling a copy stopped.
enum Filled {
    /// The server has another version than the copy's bytes came from.
    Changed(String),
    Fetch(String, io::Error),
    Write(String, io::Error),
}

impl Filled {
    fn into_drive(self, spool: &Path, url: &RemoteUrl) -> DriveError {
        match self {
            Self::Changed(why) => DriveError::Io {
                action: format!("cannot fetch {url}"),
                source: io::Error::other(format!(
                    "{why}, again while it was fetched anew; run the command again once the server's file stays as it is"
                )),
            },
            Self::Fetch(action, source) => DriveError::Io { action, source },
            Self::Write(action, source) => {
                let full = source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error());
                let hint = if full {
                    format!(
                        "; --in-place fetches the whole patch to {} before it verifies it. Free space there (or give --state FILE on a file system with room: the copy goes beside it) and run the same command again: it goes on from the bytes already fetched",
                        spool.display()
                    )
                } else {
                    String::new()
                };
                DriveError::Io {
                    action,
                    source: io::Error::new(source.kind(), format!("{source}{hint}")),
                }
            }
        }
    }
}

/// Opens the copy and locks it: two runs fetching into one copy would
/// interleave their bytes.
fn lock_spool(spool: &Path) -> Result<File, DriveError> {
    use rustix::fs::{flock, FlockOperation};
    if let Some(dir) = spool.parent().filter(|d| !d.as_os_str().is_empty()) {
        // /var/lib/anypatch for a block device may not exist yet.
        let _ = fs::create_dir_all(dir);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(spool)
        .map_err(io_err(format!(
            "cannot open {} (the local copy of the patch)",
            spool.display()
        )))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(DriveError::Refused(format!(
            "another applypatch is fetching or applying the patch in {} ({} is locked); wait for it to finish",
            spool.display(),
            spool.display()
        ))),
        _ => Ok(file), // a file system without flock: nothing to respect
    }
}

/// Where the server's version of a spooled patch is kept.
pub fn tag_path(spool: &Path) -> PathBuf {
    let mut name = spool.as_os_str().to_owned();
    name.push(".version");
    PathBuf::from(name)
}

fn write_tag(path: &Path, url: &str, head: &anypatch_net::fetch::Head) -> io::Result<()> {
    let text = format!(
        "{url}\n{}\n{}\n",
        head.len.map_or(String::new(), |l| l.to_string()),
        head.tag
    );
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(tmp, path)
}

/// The URL and the server's version a copy came from.
fn parse_tag(text: &str) -> Option<(&str, anypatch_net::fetch::Head)> {
    let mut lines = text.lines();
    let url = lines.next()?;
    let len = lines.next()?;
    let tag = lines.next()?.to_owned();
    let head = anypatch_net::fetch::Head {
        len: if len.is_empty() {
            None
        } else {
            Some(len.parse().ok()?)
        },
        tag,
        skip: 0,
    };
    Some((url, head))
}

/// Where `--in-place` keeps its copy of a remote patch: beside the state
/// file when one is named, else beside a regular target as
/// `.NAME.anypatch-download`, else (a block device) in /var/lib/anypatch,
/// named by its device number.
pub fn download_path(target: &Path, state: Option<&Path>) -> PathBuf {
    if let Some(state) = state {
        let mut name = state.as_os_str().to_owned();
        name.push(".download");
        return PathBuf::from(name);
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "target".into());
    match fs::metadata(target) {
        Ok(m) if m.is_file() => target.with_file_name(format!(".{name}.anypatch-download")),
        // By device number, as the in-place state: /dev/vg0/root and
        // /dev/vg1/root must not share a copy.
        Ok(m) => Path::new("/var/lib/anypatch").join(format!(
            "block-{}:{}.anypatch-download",
            rustix::fs::major(m.rdev()),
            rustix::fs::minor(m.rdev())
        )),
        Err(_) => Path::new("/var/lib/anypatch").join(format!("{name}.anypatch-download")),
    }
}

/// Removes a finished copy and its version note.
pub fn remove_download(spool: &Path) {
    let _ = fs::remove_file(spool);
    let _ = fs::remove_file(tag_path(spool));
}

/// Test hook: with `ANYPATCH_TEST_RETRIES=N`, N retries in a row instead
/// of 12, so that a test of a server that stays away gives up in seconds,
/// not minutes. Nothing at all without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
fn retries_for_tests(_: &mut RemoteOptions) {}

#[cfg(feature = "test-hooks")]
fn retries_for_tests(opts: &mut RemoteOptions) {
    if let Some(n) = std::env::var("ANYPATCH_TEST_RETRIES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.retries = n;
    }
}
