//! Where `-o` sends the patch (or the index, or `--map` the change map),
//! decided and refused before any work.

use std::fs::{File, FileType};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use anypatch_format::{parse_key_file, KeyKind};
use anypatch_safe_output::identity::{fd_entry, shared, stores};
use anypatch_safe_output::{kind_name, parent_dir};

use crate::{is_dash, Failure};

/// Which output a path is given for, so that a refusal names the option
/// and the thing that would have been written.
#[derive(Clone, Copy)]
pub(crate) struct Output {
    /// The option that names it: `-o`, `--map`.
    pub(crate) flag: &'static str,
    /// What is written: "patch", "index", "map".
    pub(crate) what: &'static str,
    /// A file name to suggest.
    pub(crate) example: &'static str,
}

/// `mkpatch OLD NEW -o PATCH`.
pub(crate) const PATCH: Output = Output {
    flag: "-o",
    what: "patch",
    example: "update.patch",
};
/// `mkpatch index IMAGE -o INDEX`.
pub(crate) const INDEX: Output = Output {
    flag: "-o",
    what: "index",
    example: "image.index",
};
/// `mkpatch inspect PATCH --map SVG`.
pub(crate) const MAP: Output = Output {
    flag: "--map",
    what: "map",
    example: "map.svg",
};

/// Where the output goes.
pub(crate) enum Dest {
    /// Stdout: no `-o`, `-o -`, or a path to this process's descriptor 1
    /// (`/dev/stdout`, `/dev/fd/1`, `/proc/self/fd/1`).
    Stdout,
    /// A path to this process's descriptor 2 (`/dev/stderr`).
    Stderr,
    /// A FIFO or character device, written to directly, as stdout is.
    Stream(PathBuf),
    /// A new or regular file, written without a name and named when
    /// complete. A symlink is resolved first: the file it points to is
    /// replaced, the link stays.
    File(PathBuf),
}

/// Most symlinks followed for `-o`, as the kernel allows (`ELOOP`).
const MAX_LINKS: usize = 40;

/// Decides where `-o` sends the patch, refusing before any work what would
/// fail only at the end (a directory, a missing directory) or destroy
/// something (renaming over a block device replaces the node, not the disk;
/// renaming over a symlink replaces the link, and over `/dev/stdout` the
/// system's link to every process's stdout).
pub(crate) fn destination(role: Output, out: Option<&Path>) -> Result<Dest, Failure> {
    let Output { flag, what, .. } = role;
    use std::os::unix::ffi::OsStrExt;
    let Some(given) = out.filter(|p| !is_dash(p)) else {
        return Ok(Dest::Stdout);
    };
    if given.as_os_str().as_bytes().ends_with(b"/") {
        return Err(anyhow!(
            "{flag} {} ends with `/`; give the {what} a file name",
            given.display()
        )
        .into());
    }
    // Links are followed one at a time, so that the file at the end is what
    // gets replaced and a descriptor path is seen as one.
    let mut path = given.to_owned();
    for _ in 0..MAX_LINKS {
        let shown = if path == given {
            given.display().to_string()
        } else {
            format!("{} (a link to {})", given.display(), path.display())
        };
        if let Some((pid, fd)) = fd_entry(&path) {
            return descriptor(role, &shown, &path, pid, fd);
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)
                    .with_context(|| format!("cannot read the link {flag} {shown}"))?;
                // A relative target is relative to the link's directory;
                // `join` keeps an absolute one as it is.
                path = parent_dir(&path).join(target);
            }
            Ok(meta) => return existing(role, &shown, &path, meta.file_type()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && path != given => {
                return Err(anyhow!(
                    "{flag} {shown}: the link points to nothing; mkpatch writes through a link \
                     only to a file that exists. Give the new file's own path, or create it first"
                )
                .into())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return new_file(flag, &shown, &path),
            Err(e) => {
                return Err(anyhow!(e)
                    .context(format!("cannot use {flag} {shown}"))
                    .into())
            }
        }
    }
    Err(anyhow!(
        "{flag} {}: more than {MAX_LINKS} symlinks in a row (a loop?); give the file's own path",
        given.display()
    )
    .into())
}

/// `-o` names an open descriptor. This process's stdout and stderr are
/// written as they are (a `>>` file is appended to, as the shell set up);
/// renaming over the entry would replace a file the shell opened, or the
/// link itself. A pipe or character device elsewhere (`-o >(gzip > p.gz)`)
/// is opened and written like a FIFO. Anything else is refused: opening it
/// again would write from offset 0 whatever the descriptor's own offset.
fn descriptor(role: Output, shown: &str, path: &Path, pid: u32, fd: u32) -> Result<Dest, Failure> {
    let flag = role.flag;
    if pid == std::process::id() {
        match fd {
            1 => return Ok(Dest::Stdout),
            2 => return Ok(Dest::Stderr),
            0 => {
                return Err(anyhow!(
                    "{flag} {shown} is mkpatch's stdin; give a file, or `-` for stdout"
                )
                .into())
            }
            _ => {}
        }
    }
    let kind = std::fs::metadata(path)
        .with_context(|| format!("cannot use {flag} {shown}"))?
        .file_type();
    if kind.is_fifo() || kind.is_char_device() {
        return Ok(Dest::Stream(path.to_owned()));
    }
    Err(anyhow!(
        "{flag} {shown} is open descriptor {fd} of process {pid}, a {}: mkpatch writes to a \
         descriptor only when it is its stdout or stderr, or a pipe; give the file's own path",
        kind_name(kind)
    )
    .into())
}

/// `-o` names something that exists (a symlink resolved): a regular file is
/// replaced when the patch is complete, a FIFO or character device written
/// to, anything else refused.
fn existing(role: Output, shown: &str, path: &Path, kind: FileType) -> Result<Dest, Failure> {
    let Output {
        flag,
        what,
        example,
    } = role;
    if kind.is_file() {
        return Ok(Dest::File(path.to_owned()));
    }
    if kind.is_fifo() || kind.is_char_device() {
        return Ok(Dest::Stream(path.to_owned()));
    }
    let why = if kind.is_dir() {
        format!(
            "is a directory; name the {what} file, e.g. {flag} {}",
            path.join(example).display()
        )
    } else if kind.is_block_device() && what == "patch" {
        "is a block device, and a patch is not a disk image: write the patch to a \
         file (-o update.patch); `applypatch OLD update.patch -o NEW` writes images"
            .into()
    } else {
        format!("is a {}; give the {what} a file name", kind_name(kind))
    };
    Err(anyhow!("{flag} {shown} {why}").into())
}

/// `-o` names a file that does not exist yet: its directory must.
fn new_file(flag: &str, shown: &str, path: &Path) -> Result<Dest, Failure> {
    let dir = parent_dir(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(Dest::File(path.to_owned())),
        Ok(m) => Err(anyhow!(
            "{flag} {shown}: {} is a {}, not a directory",
            dir.display(),
            kind_name(m.file_type())
        )
        .into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(anyhow!(
            "{flag} {shown}: the directory {} does not exist; create it first",
            dir.display()
        )
        .into()),
        Err(e) => Err(anyhow!(e)
            .context(format!(
                "{flag} {shown}: cannot use directory {}",
                dir.display()
            ))
            .into()),
    }
}

/// Refuses an `-o` file that holds an anypatch key: `-o release.pub` for
/// `-o release.patch` is one slip of tab completion, and the key would be
/// gone without a word.
pub(crate) fn refuse_key_file(role: Output, dest: &Dest) -> Result<(), Failure> {
    let Output { flag, what, .. } = role;
    let Dest::File(path) = dest else {
        return Ok(());
    };
    // A key file is one short line; anything larger is no key.
    let small = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= 4096);
    let Some(text) = small.then(|| std::fs::read_to_string(path).ok()).flatten() else {
        return Ok(());
    };
    for (kind, name) in [(KeyKind::Public, "public"), (KeyKind::Secret, "secret")] {
        if parse_key_file(&text, kind).is_ok() {
            return Err(anyhow!(
                "{flag} {} holds an anypatch {name} key; writing the {what} there would destroy it: \
                 choose another output (or remove the key file first if it is no longer needed)",
                path.display()
            )
            .into());
        }
    }
    Ok(())
}

/// Refuses an output that is one of the files mkpatch reads, which writing
/// it would destroy. Same device and inode, so a symlink or a hard link to
/// an input counts as that input, and so does stdout opened on one
/// (`mkpatch a b >> a`).
pub(crate) fn refuse_output_is_input(
    role: Output,
    dest: &Dest,
    inputs: &[(&str, &Path)],
) -> Result<(), Failure> {
    use std::os::fd::AsFd;
    let Output { flag, what, .. } = role;
    let (shown, out) = match dest {
        Dest::File(path) | Dest::Stream(path) => (
            format!("{flag} {}", path.display()),
            std::fs::metadata(path),
        ),
        Dest::Stdout => (
            "stdout".to_owned(),
            io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .and_then(|fd| File::from(fd).metadata()),
        ),
        Dest::Stderr => (
            "stderr".to_owned(),
            io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .and_then(|fd| File::from(fd).metadata()),
        ),
    };
    // An output that does not exist yet is no input.
    let Ok(o) = out else {
        return Ok(());
    };
    // Followed through loop devices: a file that backs a loop device given
    // as an input holds that input's bytes under another name.
    let out_stores = stores(&o);
    for (input, path) in inputs {
        let Ok(i) = std::fs::metadata(path) else {
            continue;
        };
        if let Some(why) = shared(&stores(&i), &out_stores) {
            return Err(anyhow!(
                "{shown} is {input} {} ({why}); writing the {what} there would destroy it: \
                 choose another output",
                path.display()
            )
            .into());
        }
    }
    Ok(())
}
