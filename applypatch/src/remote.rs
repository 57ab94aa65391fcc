//! Patches fetched over the network: `quic://` from `mkpatch serve`,
//! `https://` and `http://` from any web server. The bytes are checked by
//! the engine as they arrive, as a local patch's are; what this module
//! decides is whether the server may be used at all, and, for
//! `--in-place`, which reads its patch more than once, a local copy that a
//! rerun goes on filling.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anypatch_net::tls::parse_fingerprint;
use anypatch_net::url::Scheme;
use anypatch_net::{RemoteOptions, RemotePatch, RemoteUrl, Trust};

use crate::{io_err, DriveError};

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
        Ok(Self {
            url,
            opts: RemoteOptions::new(trust),
        })
    }

    /// Starts fetching the patch from byte `offset`.
    pub fn open_at(&self, offset: u64) -> Result<RemotePatch, DriveError> {
        RemotePatch::open(self.url.clone(), offset, self.opts.clone())
            .map_err(io_err(format!("cannot start fetching {}", self.url)))
    }

    /// Makes sure `spool` holds the whole patch for `--in-place`, fetching
    /// what it lacks. A copy cut short by a kill or a dropped link is
    /// continued, not fetched again, if the server still has the same
    /// version (its length and tag are kept beside the copy); otherwise it
    /// is fetched anew. The copy is not trusted: the in-place apply
    /// verifies all of it before the first write.
    pub fn spool(&self, spool: &Path) -> Result<(), DriveError> {
        let tag_path = tag_path(spool);
        let have = fs::metadata(spool).map(|m| m.len()).unwrap_or(0);
        let kept = fs::read_to_string(&tag_path).ok();
        let mut opts = self.opts.clone();
        let offset = match kept.as_deref().and_then(parse_tag) {
            // Fetched whole by an earlier run (killed while applying).
            Some(head) if head.len == Some(have) => return Ok(()),
            Some(head) if have > 0 => {
                opts.expect = Some(head);
                have
            }
            _ => 0,
        };
        let mut reader = RemotePatch::open(self.url.clone(), offset, opts)
            .map_err(io_err(format!("cannot start fetching {}", self.url)))?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(offset == 0)
            .open(spool)
            .map_err(io_err(format!("cannot write {}", spool.display())))?;
        if offset > 0 {
            file.set_len(offset)
                .and_then(|()| file.sync_all())
                .map_err(io_err(format!("cannot write {}", spool.display())))?;
        }
        let mut file = io::BufWriter::with_capacity(1 << 20, file);
        use io::Seek;
        file.seek(io::SeekFrom::Start(offset))
            .map_err(io_err(format!("cannot write {}", spool.display())))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut tag_written = false;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.flush();
                    if fs::metadata(spool).is_ok_and(|m| m.len() == 0) {
                        // Nothing fetched: nothing for a rerun to continue.
                        remove_download(spool);
                    }
                    return Err(DriveError::Io {
                        action: format!("cannot fetch {}", self.url),
                        source: e,
                    });
                }
            };
            if !tag_written {
                // The server's version, so that a rerun continues only that.
                if let Some(head) = reader.head() {
                    write_tag(&tag_path, &head)
                        .map_err(io_err(format!("cannot write {}", tag_path.display())))?;
                }
                tag_written = true;
            }
            file.write_all(&buf[..n])
                .map_err(io_err(format!("cannot write {}", spool.display())))?;
        }
        let file = file.into_inner().map_err(|e| DriveError::Io {
            action: format!("cannot write {}", spool.display()),
            source: e.into_error(),
        })?;
        file.sync_all()
            .map_err(io_err(format!("cannot write {}", spool.display())))?;
        Ok(())
    }
}

/// Where the server's version of a spooled patch is kept.
pub fn tag_path(spool: &Path) -> PathBuf {
    let mut name = spool.as_os_str().to_owned();
    name.push(".version");
    PathBuf::from(name)
}

fn write_tag(path: &Path, head: &anypatch_net::fetch::Head) -> io::Result<()> {
    let text = format!(
        "{}\n{}\n",
        head.len.map_or(String::new(), |l| l.to_string()),
        head.tag
    );
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(tmp, path)
}

fn parse_tag(text: &str) -> Option<anypatch_net::fetch::Head> {
    let mut lines = text.lines();
    let len = lines.next()?;
    let tag = lines.next()?.to_owned();
    Some(anypatch_net::fetch::Head {
        len: if len.is_empty() {
            None
        } else {
            Some(len.parse().ok()?)
        },
        tag,
        skip: 0,
    })
}

/// Where `--in-place` keeps its copy of a remote patch: beside the state
/// file when one is named, else beside a regular target as
/// `.NAME.anypatch-download`, else (a block device) in /var/lib/anypatch.
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
    if fs::metadata(target).is_ok_and(|m| m.is_file()) {
        target.with_file_name(format!(".{name}.anypatch-download"))
    } else {
        Path::new("/var/lib/anypatch").join(format!("{name}.anypatch-download"))
    }
}

/// Removes a finished copy and its version note.
pub fn remove_download(spool: &Path) {
    let _ = fs::remove_file(spool);
    let _ = fs::remove_file(tag_path(spool));
}
