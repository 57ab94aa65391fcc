//! `mkpatch`: make an anypatch patch, or inspect one.

use std::cell::Cell;
use std::fs::{File, FileType};
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use anypatch_format::{key_file_text, key_id, parse_key_file, KeyKind, VERSION_MAJOR};
use anypatch_producer::inspect::{inspect, InspectError, Inspection};
use anypatch_producer::{
    make_patch, Level, Options, Phase, ProduceError, Progress, SecretKey, Summary,
};
use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Examples:
  mkpatch old.img new.img -o update.patch    make a patch (file appears only when complete)
  mkpatch old.img new.img > update.patch     the same, to stdout
  mkpatch --level best a.img b.img -o p      smallest patch (zstd 19, wider search), slower
  mkpatch --level fast a.img b.img -o p      least CPU, larger patch
  mkpatch inspect update.patch               check a patch and show what it contains
  mkpatch inspect --json - < update.patch    the same as one JSON object
  mkpatch --in-place disk.img new.img -o p    a patch for applypatch --in-place, even with moved data
  mkpatch keygen -o release.key              make a signing key: release.key (secret) and release.pub
  mkpatch --sign release.key a.img b.img -o p    sign the patch (applypatch --trusted-key release.pub)

Then, anywhere that has old.img:
  applypatch old.img update.patch -o new.img

The patch is the same, byte for byte, whatever the thread count.

Exit status:
  0    success; also when the reader of stdout (or of a FIFO given to -o)
       closes it early, as `| head` does: mkpatch stops quietly, and what
       the reader got is an incomplete patch
  1    usage error; an input or output mkpatch refuses (see -o, OLD, NEW);
       an I/O error such as a missing file
  2    the patch given to `inspect` is invalid or corrupt
  129  stopped by SIGHUP  (128 + signal number; with -o FILE, the temporary
  130  stopped by SIGINT   file is removed and FILE is left as it was)
  143  stopped by SIGTERM";

/// Make a binary patch that turns OLD into NEW.
///
/// mkpatch reads both images in one parallel pass; finds unchanged, moved,
/// shifted and zeroed data; codes near matches as bytewise deltas against
/// the old bytes; and compresses only what is left with zstd, optionally
/// with nearby old bytes as history. Inputs must be regular files or block
/// devices (a FIFO, character device or directory is refused); neither is
/// ever loaded whole.
#[derive(Debug, Parser)]
#[command(
    name = "mkpatch",
    version,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The old (base) image the patch will be applied to.
    #[arg(required = true, value_name = "OLD")]
    old: Option<PathBuf>,

    /// The new image the patch produces.
    #[arg(required = true, value_name = "NEW")]
    new: Option<PathBuf>,

    /// Write the patch to OUT instead of stdout (`-` means stdout). A new or
    /// regular file OUT is written under a temporary name in its directory
    /// and renamed when complete, so it never holds part of a patch. A FIFO
    /// or character device (e.g. /dev/null) is written to directly, as
    /// stdout is. Refused before any work: a directory, a missing
    /// directory, a block device (a patch is not a disk image), and OLD,
    /// NEW or the --sign key file (also through a symlink or hard link).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,

    /// Worker threads [default: number of cores].
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,

    /// Speed against size: `fast` (zstd 3, no old-byte history), `default`
    /// (zstd 9, changes up to 1 MiB apart share a segment, new data
    /// compressed against the old bytes around it) or `best` (zstd 19,
    /// changes up to 4 MiB apart share a segment, and, when smaller, the
    /// data of earlier segments as history too, which needs an applier of
    /// format 1.3; slower). A number 1..=19 is `default` with that zstd
    /// level.
    #[arg(long, value_name = "LEVEL", default_value = "default", value_parser = parse_level)]
    level: LevelArg,

    /// Advanced: most new bytes per data segment, 1..=4194304. Smaller
    /// segments apply with less memory but compress worse.
    #[arg(long, value_name = "BYTES", hide_short_help = true)]
    segment_len: Option<u32>,

    /// Make a patch that is safe to apply in place (`applypatch --in-place`):
    /// data that moved backwards is sent as compressed data instead of a copy,
    /// so no part of the apply reads bytes it already overwrote.
    #[arg(long)]
    in_place: bool,

    /// Sign the patch with this secret key file (made by `mkpatch keygen`).
    /// Appliers given the matching .pub with --trusted-key accept only
    /// patches it signed.
    #[arg(long, value_name = "KEYFILE")]
    sign: Option<PathBuf>,

    /// Check the patch before saying it is done: feed it, as it is written,
    /// to the engine applypatch uses, which decodes every data segment and
    /// checks it against its hash (unchanged data is not read). A patch the
    /// engine refuses, which only a bug in mkpatch makes, is then an error
    /// naming the segment, exit 1, instead of a patch nobody can apply. It
    /// runs after compressing, on one thread, at about 200 MiB of changed
    /// data a second. On by default at `--level best`, where that is 1-3% of
    /// the time (zstd 19 is far slower); off otherwise: it can add half
    /// again to a `--level fast` run.
    #[arg(long, overrides_with = "no_verify")]
    verify: bool,

    /// Do not check the patch before saying it is done (see --verify).
    #[arg(long, overrides_with = "verify")]
    no_verify: bool,

    /// Print nothing on stderr except errors and warnings.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a patch (every hash that does not need the old file) and print
    /// what it contains. Exits with status 2 if the patch is corrupt.
    Inspect {
        /// The patch file, or `-` for stdin.
        #[arg(value_name = "PATCH")]
        patch: PathBuf,

        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make an Ed25519 signing key: writes KEYFILE (secret, mode 0600) and
    /// KEYFILE with `.pub` in place of `.key` (or appended): the public key to
    /// give appliers. Refuses to overwrite existing files, and a KEYFILE
    /// named `.pub`, the public key's name.
    Keygen {
        /// Where to write the secret key, e.g. release.key.
        #[arg(short, long, value_name = "KEYFILE")]
        output: PathBuf,
    },
}

/// How a run ended, mapped to the documented exit codes.
enum Failure {
    /// Exit 1: usage or I/O.
    Usage(anyhow::Error),
    /// Exit 2: the patch is invalid or corrupt.
    Corrupt(anyhow::Error),
    /// The reader of stdout went away: stop quietly.
    BrokenPipe,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Usage(e)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version go to stdout and succeed; usage errors are 1.
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match &cli.command {
        Some(Command::Inspect { patch, json }) => run_inspect(patch, *json),
        Some(Command::Keygen { output }) => run_keygen(output),
        None => run_make(&cli),
    };
    match result {
        Ok(()) | Err(Failure::BrokenPipe) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("mkpatch: {}", one_line(&e));
            ExitCode::from(1)
        }
        Err(Failure::Corrupt(e)) => {
            eprintln!("mkpatch: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line. Causes that a message already
/// quotes (library errors include their source) are not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if line.is_empty() {
            line = cause;
        } else if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

/// `--level`: a named preset or a zstd level.
#[derive(Debug, Clone, Copy)]
enum LevelArg {
    Named(Level),
    Zstd(i32),
}

fn parse_level(s: &str) -> Result<LevelArg, String> {
    match s {
        "fast" => Ok(LevelArg::Named(Level::Fast)),
        "default" => Ok(LevelArg::Named(Level::Default)),
        "best" => Ok(LevelArg::Named(Level::Best)),
        _ => match s.parse::<i32>() {
            Ok(n) if (1..=19).contains(&n) => Ok(LevelArg::Zstd(n)),
            _ => Err("use fast, default, best, or a zstd level 1..=19".into()),
        },
    }
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn run_make(cli: &Cli) -> Result<(), Failure> {
    let (Some(old), Some(new)) = (&cli.old, &cli.new) else {
        return Err(anyhow!("give OLD and NEW (see mkpatch --help)").into());
    };
    for (what, p) in [("OLD", old), ("NEW", new)] {
        if is_dash(p) {
            return Err(anyhow!(
                "{what} cannot be `-`: mkpatch reads images at random offsets; save the data to a file first"
            )
            .into());
        }
    }
    // Everything that can be refused is refused here, before any work.
    let dest = destination(cli.output.as_deref())?;
    check_input("OLD", old)?;
    check_input("NEW", new)?;
    let mut inputs = vec![("OLD", old.as_path()), ("NEW", new.as_path())];
    if let Some(key) = &cli.sign {
        inputs.push(("the --sign key file", key.as_path()));
    }
    refuse_output_is_input(&dest, &inputs)?;
    let base = match cli.level {
        LevelArg::Named(level) => level.options(),
        LevelArg::Zstd(n) => Options {
            level: n,
            ..Options::default()
        },
    };
    let mut opts = Options {
        threads: cli.threads.map_or(0, |n| n as usize),
        in_place: cli.in_place,
        ..base
    };
    if let Some(len) = cli.segment_len {
        opts.segment_len = len;
    }
    if cli.verify || cli.no_verify {
        opts.verify = cli.verify;
    }
    if let Some(path) = &cli.sign {
        opts.signing_key = Some(read_secret_key(path)?);
    }
    let show = !cli.quiet && io::stderr().is_terminal();
    let start = Instant::now();
    let last = Cell::new(Instant::now() - Duration::from_secs(1));
    let progress = |p: Progress| {
        if show && (last.get().elapsed() >= Duration::from_millis(100) || p.done == p.total) {
            last.set(Instant::now());
            let phase = match p.phase {
                Phase::Scan => "scanning",
                Phase::Match => "matching",
                Phase::Encode => "compressing",
                Phase::History => "compressing with history",
                Phase::Write => "writing",
                _ => "working",
            };
            let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
            eprint!("\r\x1b[2Kmkpatch: {phase} {pct:3}%");
        }
    };

    let summary = match &dest {
        Dest::Stdout => {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                return Err(anyhow!(
                    "refusing to write a binary patch to a terminal; use -o FILE or redirect stdout"
                )
                .into());
            }
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            let summary = make_patch(old, new, &mut out, &opts, &progress).map_err(produce)?;
            out.flush()
                .map_err(|e| produce(ProduceError::Write { source: e }))?;
            summary
        }
        Dest::Stream(path) => write_stream(path, old, new, &opts, &progress)?,
        Dest::File(path) => write_file(path, old, new, &mut opts, &progress)?,
    };
    if show {
        eprintln!("\r\x1b[2K{}", summary_line(&summary, start.elapsed()));
    }
    Ok(())
}

/// Where the patch goes.
enum Dest {
    /// Stdout: no `-o`, or `-o -`.
    Stdout,
    /// A FIFO or character device, written to directly, as stdout is.
    Stream(PathBuf),
    /// A new or regular file, written under a temporary name and renamed.
    File(PathBuf),
}

/// Decides where `-o` sends the patch, refusing before any work what would
/// fail only at the end (a directory, a missing directory) or destroy
/// something (renaming over a block device replaces the node, not the disk).
fn destination(out: Option<&Path>) -> Result<Dest, Failure> {
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = out.filter(|p| !is_dash(p)) else {
        return Ok(Dest::Stdout);
    };
    let shown = path.display();
    if path.as_os_str().as_bytes().ends_with(b"/") {
        return Err(anyhow!("-o {shown} ends with `/`; give the patch a file name").into());
    }
    match std::fs::metadata(path) {
        Ok(meta) => {
            let kind = meta.file_type();
            if kind.is_file() {
                return Ok(Dest::File(path.to_owned()));
            }
            if kind.is_fifo() || kind.is_char_device() {
                return Ok(Dest::Stream(path.to_owned()));
            }
            let why = if kind.is_dir() {
                format!(
                    "is a directory; name the patch file, e.g. -o {}",
                    path.join("update.patch").display()
                )
            } else if kind.is_block_device() {
                "is a block device, and a patch is not a disk image: write the patch to a \
                 file (-o update.patch); `applypatch OLD update.patch -o NEW` writes images"
                    .into()
            } else {
                format!("is a {}; give the patch a file name", kind_name(kind))
            };
            Err(anyhow!("-o {shown} {why}").into())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = parent_dir(path);
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => Ok(Dest::File(path.to_owned())),
                Ok(m) => Err(anyhow!(
                    "-o {shown}: {} is a {}, not a directory",
                    dir.display(),
                    kind_name(m.file_type())
                )
                .into()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(anyhow!(
                    "-o {shown}: the directory {} does not exist; create it first",
                    dir.display()
                )
                .into()),
                Err(e) => Err(anyhow!(e)
                    .context(format!(
                        "-o {shown}: cannot use directory {}",
                        dir.display()
                    ))
                    .into()),
            }
        }
        Err(e) => Err(anyhow!(e).context(format!("cannot use -o {shown}")).into()),
    }
}

/// Refuses an input that cannot be read as an image, before any work: a
/// FIFO would hang the run (opening it waits for a writer), a directory has
/// no bytes, a character device cannot be read at offsets.
fn check_input(what: &str, path: &Path) -> Result<(), Failure> {
    let kind = std::fs::metadata(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .file_type();
    if kind.is_file() || kind.is_block_device() {
        return Ok(());
    }
    let what_to_do = if kind.is_dir() {
        "give the path of an image file"
    } else {
        "mkpatch reads images at random offsets, so it needs a regular file or a block \
         device; save the data to a file first"
    };
    Err(anyhow!(
        "{what} {} is a {}: {what_to_do}",
        path.display(),
        kind_name(kind)
    )
    .into())
}

/// Refuses an output that is one of the files mkpatch reads, which writing
/// it would destroy. Same device and inode, so a symlink or a hard link to
/// an input counts as that input, and so does stdout opened on one
/// (`mkpatch a b >> a`).
fn refuse_output_is_input(dest: &Dest, inputs: &[(&str, &Path)]) -> Result<(), Failure> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let (shown, out) = match dest {
        Dest::File(path) | Dest::Stream(path) => {
            (format!("-o {}", path.display()), std::fs::metadata(path))
        }
        Dest::Stdout => (
            "stdout".to_owned(),
            io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .and_then(|fd| File::from(fd).metadata()),
        ),
    };
    // An output that does not exist yet is no input.
    let Ok(o) = out else {
        return Ok(());
    };
    for (what, path) in inputs {
        let Ok(i) = std::fs::metadata(path) else {
            continue;
        };
        if (i.dev(), i.ino()) == (o.dev(), o.ino()) {
            return Err(anyhow!(
                "{shown} is {what} {} (the same file); writing the patch there would destroy it: \
                 choose another output",
                path.display()
            )
            .into());
        }
    }
    Ok(())
}

/// What a file type is called in messages.
fn kind_name(kind: FileType) -> &'static str {
    if kind.is_file() {
        "regular file"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO (named pipe)"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// The directory a new file at `path` goes in.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Writes the patch straight into a FIFO or character device, as into
/// stdout: there is no file to rename into place, and a reader that stops
/// early gets an incomplete patch.
fn write_stream(
    path: &Path,
    old: &Path,
    new: &Path,
    opts: &Options,
    progress: &dyn Fn(Progress),
) -> Result<Summary, Failure> {
    // Opening a FIFO waits until it has a reader. No create, no truncate:
    // the node is used as it is.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let kind = file
        .metadata()
        .with_context(|| format!("cannot open {}", path.display()))?
        .file_type();
    if !kind.is_fifo() && !kind.is_char_device() {
        return Err(anyhow!(
            "-o {} was replaced by a {} while mkpatch opened it; run mkpatch again",
            path.display(),
            kind_name(kind)
        )
        .into());
    }
    if file.is_terminal() {
        return Err(anyhow!(
            "refusing to write a binary patch to the terminal {}; use -o FILE",
            path.display()
        )
        .into());
    }
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let summary = make_patch(old, new, &mut out, opts, progress).map_err(produce)?;
    out.flush()
        .map_err(|e| produce(ProduceError::Write { source: e }))?;
    Ok(summary)
}

/// Writes the patch to a temporary file next to `path`, syncs it and
/// renames it into place, so `path` never holds a partial patch. SIGINT,
/// SIGTERM and SIGHUP remove the temporary file (see [`cleanup_on_signals`]).
fn write_file(
    path: &Path,
    old: &Path,
    new: &Path,
    opts: &mut Options,
    progress: &dyn Fn(Progress),
) -> Result<Summary, Failure> {
    let dir = parent_dir(path);
    let pending = cleanup_on_signals()?;
    let tmp = {
        // Created and registered under the lock, so a signal cannot fall between.
        let mut slot = lock(&pending);
        let tmp = tempfile::Builder::new()
            .prefix(".mkpatch-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        *slot = Some(tmp.path().to_owned());
        tmp
    };
    // The spool files have no name (O_TMPFILE, or unlinked at once), so a
    // signal leaves none of them behind.
    opts.spool_dir = Some(dir.clone());
    let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
    let summary = make_patch(old, new, &mut out, opts, progress).map_err(produce)?;
    out.flush()
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    drop(out);
    set_readable(tmp.as_file());
    {
        // A signal now waits for the rename: `path` ends up complete or as it was.
        let mut slot = lock(&pending);
        *slot = None;
        // Checked at the start; checked again, since renaming over a node
        // that appeared meanwhile would destroy it.
        if let Ok(meta) = std::fs::metadata(path) {
            if !meta.is_file() {
                return Err(anyhow!(
                    "-o {} became a {} while mkpatch ran; the patch was not written",
                    path.display(),
                    kind_name(meta.file_type())
                )
                .into());
            }
        }
        // Dropping the error's file removes the temporary file.
        tmp.persist(path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot rename the patch to {}", path.display()))?;
    }
    // Make the rename durable too; failing here loses nothing already written.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(summary)
}

/// The temporary file a signal must remove, if any.
type Pending = Arc<Mutex<Option<PathBuf>>>;

/// Starts a thread that, on SIGINT, SIGTERM or SIGHUP, removes the pending
/// temporary file and exits with status 128 + the signal number, as a shell
/// reports a process the signal ended. Without it the default action would
/// end the process and leave the temporary file behind. A signal ignored
/// when mkpatch started (`nohup` ignores SIGHUP) stays ignored.
fn cleanup_on_signals() -> Result<Pending, Failure> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let pending: Pending = Arc::new(Mutex::new(None));
    let ignored = ignored_signals();
    let wanted = [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .filter(|&s| ignored & (1 << (s - 1)) == 0);
    let mut signals = signal_hook::iterator::Signals::new(wanted)
        .context("cannot install the signal handlers that remove the temporary file")?;
    let held = Arc::clone(&pending);
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            // The lock is held across the rename; waiting for it means the
            // output is never left half-renamed.
            let slot = lock(&held);
            if let Some(path) = slot.as_ref() {
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(128 + signal);
        }
    });
    Ok(pending)
}

/// The set of signals this process started with ignored, as a mask with bit
/// `signal - 1` set, read from /proc/self/status (asking sigaction would take
/// unsafe code); none where /proc cannot tell.
fn ignored_signals() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Locks `m`; a panic elsewhere does not make the path it guards wrong.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Temporary files are created 0600; a patch is meant to be shared.
fn set_readable(file: &File) {
    use std::os::unix::fs::PermissionsExt;
    let _ = file.set_permissions(std::fs::Permissions::from_mode(0o644));
}

fn produce(e: ProduceError) -> Failure {
    match &e {
        // The reader chose to stop (`| head`): stop quietly, as ripgrep and
        // b3sum do. The help says that what it read is incomplete.
        ProduceError::Write { source } if source.kind() == io::ErrorKind::BrokenPipe => {
            Failure::BrokenPipe
        }
        _ => Failure::Usage(e.into()),
    }
}

fn write_err(e: io::Error) -> Failure {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Failure::BrokenPipe
    } else {
        Failure::Usage(anyhow!(e).context("cannot write the patch"))
    }
}

fn summary_line(s: &Summary, took: Duration) -> String {
    let pct = if s.new_len == 0 {
        0.0
    } else {
        s.patch_len as f64 * 100.0 / s.new_len as f64
    };
    format!(
        "mkpatch: old {}, new {} -> patch {} ({pct:.2}% of new; {} moved, {} in {} segments) in {:.2} s",
        size(s.old_len),
        size(s.new_len),
        size(s.patch_len),
        size(s.moved_bytes),
        size(s.changed_bytes),
        s.segments,
        took.as_secs_f64()
    )
}

fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a secret key file, warning (as ssh does) when other users can read
/// it: anyone who can read it can sign patches that appliers trust.
fn read_secret_key(path: &Path) -> Result<SecretKey, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let seed =
        parse_key_file(&text, KeyKind::Secret).with_context(|| format!("{}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            eprintln!(
                "mkpatch: warning: the secret key {} can be read by other users (mode {mode:04o}), \
                 who could then sign patches; fix it with: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    Ok(SecretKey::from_seed(seed))
}

/// The public key file beside a secret key file: `x.key` -> `x.pub`, else `x.pub` appended.
fn public_path(secret: &Path) -> PathBuf {
    if secret.extension().is_some_and(|e| e == "key") {
        secret.with_extension("pub")
    } else {
        let mut s = secret.as_os_str().to_owned();
        s.push(".pub");
        PathBuf::from(s)
    }
}

fn run_keygen(secret_path: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    // `keygen -o release.pub` would put the secret key where people look
    // for the one to hand out.
    if secret_path.extension().is_some_and(|e| e == "pub") {
        return Err(anyhow!(
            "refusing to write the secret key to {}: a .pub name is for the public key, which \
             mkpatch writes beside the secret one; give a name like release.key",
            secret_path.display()
        )
        .into());
    }
    let public_path = public_path(secret_path);
    let key = SecretKey::generate().context("cannot read random bytes from /dev/urandom")?;
    let write_new = |path: &Path, text: String, mode: u32| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| {
                format!(
                    "cannot create {} (an existing key is never overwritten)",
                    path.display()
                )
            })?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write_new(
        secret_path,
        key_file_text(key.seed(), KeyKind::Secret),
        0o600,
    )?;
    if let Err(e) = write_new(
        &public_path,
        key_file_text(&key.public_key(), KeyKind::Public),
        0o644,
    ) {
        let _ = std::fs::remove_file(secret_path); // no secret key without its public half
        return Err(e.into());
    }
    eprintln!(
        "mkpatch: wrote {} (secret: keep it private) and {} (key id {})",
        secret_path.display(),
        public_path.display(),
        hex(&key_id(&key.public_key()))
    );
    Ok(())
}

fn run_inspect(path: &Path, json: bool) -> Result<(), Failure> {
    let mut reader: Box<dyn Read> = if is_dash(path) {
        Box::new(io::stdin().lock())
    } else {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Box::new(f)
    };
    let mut reader = BufReader::with_capacity(1 << 20, &mut reader);
    let report = inspect(&mut reader).map_err(|e| match e {
        InspectError::Io(ref io) if io.kind() != io::ErrorKind::UnexpectedEof => {
            Failure::Usage(anyhow!(e).context(format!("{}", path.display())))
        }
        e => Failure::Corrupt(anyhow!(e)),
    })?;
    let text = if json {
        json_report(&report) + "\n"
    } else {
        text_report(&report)
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(write_err)?;
    if !report.patch_hash_ok {
        return Err(Failure::Corrupt(anyhow!(
            "patch hash does not match: the patch is corrupt; get it again"
        )));
    }
    if let Some(bad) = report.signers.iter().find(|s| !s.valid) {
        return Err(Failure::Corrupt(anyhow!(
            "the signature by key {} does not verify: the patch was altered after signing",
            hex(&bad.key_id)
        )));
    }
    Ok(())
}

fn text_report(r: &Inspection) -> String {
    let h = &r.header;
    let features = if r.required_features == 0 {
        "none".to_string()
    } else {
        format!(
            "{:#010x}: {}",
            r.required_features,
            r.feature_names().join(", ")
        )
    };
    let kind = |name: &str, k: &anypatch_producer::inspect::KindCount| {
        format!(
            "  {name:<12}{:>10} extents {:>16} bytes\n",
            k.extents, k.bytes
        )
    };
    let mut s = String::new();
    s += &format!(
        "format        {}.{} (must-understand features: {features})\n",
        r.major, r.minor
    );
    s += &format!("producer      {}\n", h.producer);
    s += &format!(
        "old           {} bytes, blake3 {}\n",
        h.old_len,
        hex(&h.old_hash)
    );
    s += &format!(
        "new           {} bytes, blake3 {}\n",
        h.new_len,
        hex(&h.new_hash)
    );
    s += &format!("block size    {}\n", h.block_size);
    s += &format!("segment max   {}\n", h.segment_max);
    s += &format!(
        "flags         {:#010x} (in-place safe: {})\n",
        h.flags,
        if r.in_place_safe() { "yes" } else { "no" }
    );
    s += &format!(
        "extents       {} in {} pages ({} bytes)\n",
        h.extent_count, r.pages, r.page_bytes
    );
    s += &kind("unchanged", &r.unchanged);
    s += &kind("moved", &r.moved);
    s += &kind("zero", &r.zero);
    s += &kind("data", &r.data);
    s += &format!(
        "ops           copy {}, literal {}, delta {}, zero {}\n",
        r.ops.copy, r.ops.literal, r.ops.delta, r.ops.zero
    );
    let codecs: Vec<String> = r
        .codecs
        .by_codec()
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    s += &format!(
        "segments      {}; ops inline in {}, packed in {}\n",
        codecs.join(", "),
        r.codecs.inline_ops,
        r.codecs.packed_ops
    );
    s += &format!(
        "payload       ops {} bytes, data {} bytes\n",
        r.codecs.ops_bytes, r.codecs.data_bytes
    );
    if r.signers.is_empty() {
        s += "signature     none (unsigned)\n";
    }
    for signer in &r.signers {
        s += &format!(
            "signature     ed25519 by key {} ({})\n",
            hex(&signer.key_id),
            if signer.valid {
                "verifies"
            } else {
                "DOES NOT VERIFY"
            }
        );
    }
    s += &format!("patch         {} bytes\n", r.patch_len);
    s += &format!(
        "patch hash    {} ({})\n",
        hex(&r.patch_hash),
        if r.patch_hash_ok { "ok" } else { "MISMATCH" }
    );
    s
}

fn json_report(r: &Inspection) -> String {
    let h = &r.header;
    let kind = |k: &anypatch_producer::inspect::KindCount| serde_json::json!({ "extents": k.extents, "bytes": k.bytes });
    serde_json::json!({
        "format": { "major": r.major, "minor": r.minor, "supported_major": VERSION_MAJOR },
        "required_features": r.required_features,
        "producer": h.producer,
        "old": { "len": h.old_len, "blake3": hex(&h.old_hash) },
        "new": { "len": h.new_len, "blake3": hex(&h.new_hash) },
        "block_size": h.block_size,
        "segment_max": h.segment_max,
        "codec": h.codec,
        "flags": h.flags,
        "in_place_safe": r.in_place_safe(),
        "extent_count": h.extent_count,
        "segment_count": h.segment_count,
        "pages": r.pages,
        "page_bytes": r.page_bytes,
        "extents": {
            "unchanged": kind(&r.unchanged),
            "moved": kind(&r.moved),
            "zero": kind(&r.zero),
            "data": kind(&r.data),
        },
        "ops": {
            "copy": r.ops.copy,
            "literal": r.ops.literal,
            "delta": r.ops.delta,
            "zero": r.ops.zero,
        },
        "segments": {
            "stored": r.codecs.stored,
            "zstd": r.codecs.zstd,
            "zstd_prefix": r.codecs.zstd_prefix,
            "zstd_history": r.codecs.zstd_history,
            "packed_ops": r.codecs.packed_ops,
            "inline_ops": r.codecs.inline_ops,
            "ops_bytes": r.codecs.ops_bytes,
            "data_bytes": r.codecs.data_bytes,
        },
        "signature_len": r.signature_len,
        "signers": r.signers.iter().map(|s| serde_json::json!({
            "key_id": hex(&s.key_id),
            "public_key": hex(&s.public_key),
            "verifies": s.valid,
        })).collect::<Vec<_>>(),
        "patch_len": r.patch_len,
        "patch_hash": hex(&r.patch_hash),
        "patch_hash_ok": r.patch_hash_ok,
    })
    .to_string()
}
