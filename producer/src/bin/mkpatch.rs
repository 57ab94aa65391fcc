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
use anypatch_format::{
    key_file_text, key_id, parse_key_file, KeyKind, MAX_SEGMENT_LEN, VERSION_MAJOR,
};
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
       an I/O error such as a missing file or a full disk; OLD or NEW
       changed while mkpatch read it (with -o FILE nothing is written)
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
/// ever loaded whole. They must not change while mkpatch runs: one that
/// did (its size, times or inode differ at the end) fails the run.
#[derive(Debug, Parser)]
#[command(
    name = "mkpatch",
    version,
    after_help = AFTER_HELP,
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
    /// regular file OUT is written as a file with no name in its directory
    /// and named OUT only when complete, so OUT never holds part of a patch
    /// and a run that is stopped leaves nothing behind. A new OUT gets mode
    /// 0666 less the umask; an existing one keeps its mode and owner. A
    /// symlink OUT is followed: the file it points to is replaced, the link
    /// stays. /dev/stdout, /dev/stderr and /dev/fd/N are the streams
    /// themselves, written as they are (`-o /dev/stdout >> log` appends).
    /// A FIFO or character device (e.g. /dev/null) is written to directly,
    /// as stdout is. Refused before any work: a directory, a missing
    /// directory, a link to nothing or a loop of links, a block device (a
    /// patch is not a disk image), an anypatch key file, and OLD, NEW or
    /// the --sign key file (also through a symlink or hard link).
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
    #[arg(long, value_name = "BYTES", hide_short_help = true,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SEGMENT_LEN)))]
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
    #[arg(short, long, global = true)]
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

/// Writes a diagnostic line to stderr. A stderr that cannot be written
/// (`2>/dev/full`, a reader that went away) must neither panic, as
/// `eprintln!` does, nor change the documented exit code: the error is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

/// [`say!`] without the newline, for the progress line.
macro_rules! say_part {
    ($($arg:tt)*) => {{
        let _ = write!(io::stderr(), $($arg)*);
    }};
}

/// How a run ended, mapped to the documented exit codes.
enum Failure {
    /// Exit 1: usage or I/O.
    Usage(anyhow::Error),
    /// Exit 2: the patch is invalid or corrupt.
    Corrupt(anyhow::Error),
    /// The reader of stdout went away: stop quietly.
    BrokenPipe,
    /// Already reported in full on stdout (`inspect --json`): exit with this code.
    Reported(u8),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Usage(e)
    }
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            let printed = e.print();
            // Help and version go to stdout and succeed, unless stdout cannot
            // take them (a reader that stopped early chose to); usage errors are 1.
            if !e.use_stderr() {
                return match printed {
                    Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
                        say!("mkpatch: cannot write to stdout: {err}");
                        ExitCode::from(1)
                    }
                    _ => ExitCode::SUCCESS,
                };
            }
            let args: Vec<_> = std::env::args_os().collect();
            if args.iter().any(|a| a == "inspect") && args.iter().any(|a| a == "--json") {
                // The error's first paragraph, on one line.
                let text = e.render().to_string();
                let words: Vec<&str> = text
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect();
                print_json_error(1, "usage", words.join(" ").trim_start_matches("error: "));
            }
            return ExitCode::from(1);
        }
    };
    let json = matches!(cli.command, Some(Command::Inspect { json: true, .. }));
    let result = match &cli.command {
        Some(Command::Inspect { patch, json }) => run_inspect(patch, *json),
        Some(Command::Keygen { output }) => run_keygen(output, cli.quiet),
        None => run_make(&cli),
    };
    let (code, error) = match result {
        Ok(()) | Err(Failure::BrokenPipe) => return ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => (1, e),
        Err(Failure::Corrupt(e)) => (2, e),
        Err(Failure::Reported(code)) => return ExitCode::from(code),
    };
    let line = one_line(&error);
    say!("mkpatch: {line}");
    if json {
        print_json_error(code, if code == 2 { "corrupt_patch" } else { "io" }, &line);
    }
    ExitCode::from(code)
}

/// `inspect --json` on a failure: stdout is still one JSON object. A stdout
/// that cannot take it changes nothing: the exit code says it.
fn print_json_error(code: u8, class: &str, error: &str) {
    let object = serde_json::json!({
        "ok": false, "exit_code": code, "error_class": class, "error": error,
    });
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{object}").and_then(|()| stdout.flush());
}

/// Parses the command line. A subcommand may follow global flags
/// (`mkpatch -q keygen -o k.key`); flags that only making a patch uses are
/// refused with a subcommand rather than silently ignored.
fn parse() -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(std::env::args_os())?;
    let cli = Cli::from_arg_matches(&matches)?;
    if let Some((name, _)) = matches.subcommand() {
        let make_only = [
            "output",
            "threads",
            "level",
            "segment_len",
            "in_place",
            "sign",
            "verify",
            "no_verify",
        ];
        for id in make_only {
            if matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
                let long = id.replace('_', "-");
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--{long} is for making a patch and means nothing to `mkpatch {name}`; \
                         give the subcommand's own options after its name \
                         (see mkpatch {name} --help)"
                    ),
                ));
            }
        }
    }
    Ok(cli)
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
    refuse_key_file(&dest)?;
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
    // With `-o /dev/stderr` the patch is what goes to stderr.
    let show = !cli.quiet && io::stderr().is_terminal() && !matches!(dest, Dest::Stderr);
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
            say_part!("\r\x1b[2Kmkpatch: {phase} {pct:3}%");
        }
    };

    // Taken before the first read; compared before the patch is committed.
    let before = [Stamp::of("OLD", old)?, Stamp::of("NEW", new)?];
    let summary = match &dest {
        Dest::Stdout => write_direct(
            io::stdout().lock(),
            "stdout",
            old,
            new,
            &opts,
            &progress,
            &before,
        )?,
        Dest::Stderr => write_direct(
            io::stderr().lock(),
            "stderr",
            old,
            new,
            &opts,
            &progress,
            &before,
        )?,
        Dest::Stream(path) => write_stream(path, old, new, &opts, &progress, &before)?,
        Dest::File(path) => write_file(path, old, new, &mut opts, &progress, &before)?,
    };
    if show {
        say!("\r\x1b[2K{}", summary_line(&summary, start.elapsed()));
    }
    Ok(())
}

/// Where the patch goes.
enum Dest {
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
fn destination(out: Option<&Path>) -> Result<Dest, Failure> {
    use std::os::unix::ffi::OsStrExt;
    let Some(given) = out.filter(|p| !is_dash(p)) else {
        return Ok(Dest::Stdout);
    };
    if given.as_os_str().as_bytes().ends_with(b"/") {
        return Err(anyhow!(
            "-o {} ends with `/`; give the patch a file name",
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
        if let Some((pid, fd)) = open_descriptor(&path) {
            return descriptor(&shown, &path, pid, fd);
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)
                    .with_context(|| format!("cannot read the link -o {shown}"))?;
                // A relative target is relative to the link's directory;
                // `join` keeps an absolute one as it is.
                path = parent_dir(&path).join(target);
            }
            Ok(meta) => return existing(&shown, &path, meta.file_type()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && path != given => {
                return Err(anyhow!(
                    "-o {shown}: the link points to nothing; mkpatch writes through a link \
                     only to a file that exists. Give the new file's own path, or create it first"
                )
                .into())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return new_file(&shown, &path),
            Err(e) => return Err(anyhow!(e).context(format!("cannot use -o {shown}")).into()),
        }
    }
    Err(anyhow!(
        "-o {}: more than {MAX_LINKS} symlinks in a row (a loop?); give the file's own path",
        given.display()
    )
    .into())
}

/// The process id and descriptor number when `path` is a descriptor's entry
/// in /proc (`/proc/PID/fd/N`, `/proc/self/fd/N`, `/dev/fd/N`, all the same
/// directory once its links are resolved).
fn open_descriptor(path: &Path) -> Option<(u32, u32)> {
    let fd = path.file_name()?.to_str()?.parse::<u32>().ok()?;
    let dir = std::fs::canonicalize(path.parent()?).ok()?;
    let parts: Vec<&str> = dir
        .strip_prefix("/proc")
        .ok()?
        .iter()
        .map(|c| c.to_str())
        .collect::<Option<_>>()?;
    let pid = parts.first()?.parse::<u32>().ok()?;
    // `/proc/thread-self/fd` is `/proc/PID/task/TID/fd`.
    match parts[1..] {
        ["fd"] | ["task", _, "fd"] => Some((pid, fd)),
        _ => None,
    }
}

/// `-o` names an open descriptor. This process's stdout and stderr are
/// written as they are (a `>>` file is appended to, as the shell set up);
/// renaming over the entry would replace a file the shell opened, or the
/// link itself. A pipe or character device elsewhere (`-o >(gzip > p.gz)`)
/// is opened and written like a FIFO. Anything else is refused: opening it
/// again would write from offset 0 whatever the descriptor's own offset.
fn descriptor(shown: &str, path: &Path, pid: u32, fd: u32) -> Result<Dest, Failure> {
    if pid == std::process::id() {
        match fd {
            1 => return Ok(Dest::Stdout),
            2 => return Ok(Dest::Stderr),
            0 => {
                return Err(anyhow!(
                    "-o {shown} is mkpatch's stdin; give a file, or `-` for stdout"
                )
                .into())
            }
            _ => {}
        }
    }
    let kind = std::fs::metadata(path)
        .with_context(|| format!("cannot use -o {shown}"))?
        .file_type();
    if kind.is_fifo() || kind.is_char_device() {
        return Ok(Dest::Stream(path.to_owned()));
    }
    Err(anyhow!(
        "-o {shown} is open descriptor {fd} of process {pid}, a {}: mkpatch writes to a \
         descriptor only when it is its stdout or stderr, or a pipe; give the file's own path",
        kind_name(kind)
    )
    .into())
}

/// `-o` names something that exists (a symlink resolved): a regular file is
/// replaced when the patch is complete, a FIFO or character device written
/// to, anything else refused.
fn existing(shown: &str, path: &Path, kind: FileType) -> Result<Dest, Failure> {
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

/// `-o` names a file that does not exist yet: its directory must.
fn new_file(shown: &str, path: &Path) -> Result<Dest, Failure> {
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

/// Refuses an `-o` file that holds an anypatch key: `-o release.pub` for
/// `-o release.patch` is one slip of tab completion, and the key would be
/// gone without a word.
fn refuse_key_file(dest: &Dest) -> Result<(), Failure> {
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
                "-o {} holds an anypatch {name} key; writing the patch there would destroy it: \
                 choose another output (or remove the key file first if it is no longer needed)",
                path.display()
            )
            .into());
        }
    }
    Ok(())
}

/// What tells whether an input changed without reading it: if any of it
/// differs after the run, the file was written (or replaced) while mkpatch
/// read it, and the patch may mix old and new contents.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    what: &'static str,
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(what: &'static str, path: &Path) -> Result<Self, Failure> {
        use std::os::unix::fs::MetadataExt;
        let m =
            std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self {
            what,
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Fails when an input is no longer what it was before the first read.
/// `left` says what became of the output.
fn unchanged(before: &[Stamp], left: &str) -> Result<(), Failure> {
    for stamp in before {
        if Stamp::of(stamp.what, &stamp.path).ok().as_ref() != Some(stamp) {
            return Err(anyhow!(
                "{} {} changed while mkpatch read it; the patch would not apply ({left}). \
                 Run again when it is stable",
                stamp.what,
                stamp.path.display()
            )
            .into());
        }
    }
    Ok(())
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

/// Writes the patch to this process's stdout or stderr (`name`) as it is
/// comes, and checks afterwards that the inputs did not change meanwhile.
fn write_direct(
    stream: impl Write + IsTerminal,
    name: &str,
    old: &Path,
    new: &Path,
    opts: &Options,
    progress: &dyn Fn(Progress),
    before: &[Stamp],
) -> Result<Summary, Failure> {
    if stream.is_terminal() {
        return Err(anyhow!(
            "refusing to write a binary patch to a terminal ({name}); use -o FILE or redirect {name}"
        )
        .into());
    }
    let mut out = BufWriter::with_capacity(1 << 20, stream);
    let summary = make_patch(old, new, &mut out, opts, progress).map_err(produce)?;
    out.flush()
        .map_err(|e| produce(ProduceError::Write { source: e }))?;
    unchanged(
        before,
        &format!("what went to {name} is unusable: discard it"),
    )?;
    Ok(summary)
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
    before: &[Stamp],
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
    let left = format!("what went to {} is unusable: discard it", path.display());
    unchanged(before, &left)?;
    Ok(summary)
}

/// Writes the patch to a file in `path`'s directory that has no name yet
/// (`O_TMPFILE`), syncs it, and only then names it: linked as `path` when
/// that is new, else linked under a temporary name and renamed over it. So
/// `path` never holds a partial patch, and a run ended any way, even by
/// SIGKILL, leaves nothing behind. Where the file system or /proc cannot do
/// that, a named temporary file is used, which SIGINT, SIGTERM and SIGHUP
/// remove (see [`cleanup_on_signals`]). An existing `path` keeps its owner
/// and mode; a new one gets 0666 less the umask.
fn write_file(
    path: &Path,
    old: &Path,
    new: &Path,
    opts: &mut Options,
    progress: &dyn Fn(Progress),
    before: &[Stamp],
) -> Result<Summary, Failure> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("-o {} does not name a file", path.display()))?;
    let pending = cleanup_on_signals()?;
    let keep = std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777));
    // Names are made relative to the directory as it was opened; if it was
    // moved meanwhile, the patch is not written (see below).
    let dir_fd = rustix::fs::open(
        &dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(io::Error::from)
    .with_context(|| format!("cannot open the directory {}", dir.display()))?;
    let temp = Temp::create(&dir, &dir_fd, &pending)?;
    // The spool files have no name (O_TMPFILE, or unlinked at once), so a
    // signal leaves none of them behind. They go in the directory as it was
    // opened (its /proc entry, where that works), so moving it does not
    // break the run before the check below can say what happened.
    opts.spool_dir = Some(match &temp {
        Temp::Unnamed(_) => PathBuf::from(format!("/proc/self/fd/{}", dir_fd.as_raw_fd())),
        Temp::Named(_) => dir.clone(),
    });
    let mut out = BufWriter::with_capacity(1 << 20, temp.file());
    let summary = make_patch(old, new, &mut out, opts, progress).map_err(produce)?;
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    drop(out);
    // Dropping `temp` on an error removes the patch it holds.
    unchanged(before, "nothing was written")?;
    if let Some((uid, gid, mode)) = keep {
        keep_owner_and_mode(temp.file(), path, uid, gid, mode)?;
    }
    temp.file()
        .sync_all()
        .with_context(|| format!("cannot write {}", path.display()))?;
    {
        // A signal now waits for the rename: `path` ends up complete or as it was.
        let mut slot = lock(&pending);
        *slot = None;
        // Checked at the start; checked again, since renaming over a node or
        // a link that appeared meanwhile would destroy it.
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.is_file() {
                return Err(anyhow!(
                    "-o {} became a {} while mkpatch ran; the patch was not written",
                    path.display(),
                    kind_name(meta.file_type())
                )
                .into());
            }
        }
        let opened = rustix::fs::fstat(&dir_fd).map(|s| (s.st_dev, s.st_ino));
        let now = std::fs::metadata(&dir).map(|m| (m.dev(), m.ino()));
        if opened.ok() != now.ok() {
            return Err(anyhow!(
                "the directory {} was moved or replaced while mkpatch ran; the patch was not \
                 written. Run mkpatch again",
                dir.display()
            )
            .into());
        }
        temp.commit(&dir_fd, &dir, name)
            .with_context(|| format!("cannot name the patch {}", path.display()))?;
    }
    // Make the name durable too; failing here loses nothing already written.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(summary)
}

/// The patch while it is written.
enum Temp {
    /// `O_TMPFILE`: no name until complete.
    Unnamed(File),
    /// Where `O_TMPFILE` or /proc is missing: a named temporary file,
    /// removed when dropped and by the signal handler.
    Named(tempfile::NamedTempFile),
}

impl Temp {
    /// A new file in `dir` (opened as `dir_fd`) with mode 0666 less the umask.
    fn create(
        dir: &Path,
        dir_fd: &std::os::fd::OwnedFd,
        pending: &Pending,
    ) -> Result<Self, Failure> {
        use rustix::fs::{Mode, OFlags};
        use std::os::unix::fs::PermissionsExt;
        // Naming it later goes through its /proc/self/fd entry.
        if Path::new("/proc/self/fd").is_dir() {
            let unnamed = rustix::fs::openat(
                dir_fd,
                ".",
                OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            );
            if let Ok(fd) = unnamed {
                return Ok(Self::Unnamed(File::from(fd)));
            }
        }
        // Created and registered under the lock, so a signal cannot fall between.
        let mut slot = lock(pending);
        let tmp = tempfile::Builder::new()
            .prefix(".mkpatch-")
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        *slot = Some(tmp.path().to_owned());
        Ok(Self::Named(tmp))
    }

    fn file(&self) -> &File {
        match self {
            Self::Unnamed(f) => f,
            Self::Named(t) => t.as_file(),
        }
    }

    /// Gives the complete file the name `name` in the directory, replacing
    /// a regular file of that name.
    fn commit(
        self,
        dir_fd: &std::os::fd::OwnedFd,
        dir: &Path,
        name: &std::ffi::OsStr,
    ) -> io::Result<()> {
        use rustix::fs::{linkat, renameat, unlinkat, AtFlags, CWD};
        use rustix::io::Errno;
        use std::os::fd::AsRawFd;
        let file = match self {
            Self::Named(tmp) => return tmp.persist(dir.join(name)).map(drop).map_err(|e| e.error),
            Self::Unnamed(file) => file,
        };
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        // A new output is linked straight to its name: there is no moment
        // when a temporary name exists.
        match linkat(CWD, &fd_path, dir_fd, name, AtFlags::SYMLINK_FOLLOW) {
            Err(Errno::EXIST) => {}
            done => return done.map_err(io::Error::from),
        }
        // The name appeared since the caller looked: still never rename
        // over anything but a regular file.
        let there = rustix::fs::statat(dir_fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if rustix::fs::FileType::from_raw_mode(there.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a regular file appeared under that name",
            ));
        }
        // An existing one is replaced by a rename, atomically; only a
        // SIGKILL between these two calls leaves the temporary name.
        for attempt in 0..100u32 {
            let temp = format!(".mkpatch-{}-{attempt}.tmp", std::process::id());
            match linkat(CWD, &fd_path, dir_fd, &temp, AtFlags::SYMLINK_FOLLOW) {
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
                Ok(()) => {}
            }
            return renameat(dir_fd, &temp, dir_fd, name).map_err(|e| {
                let _ = unlinkat(dir_fd, &temp, AtFlags::empty());
                e.into()
            });
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name in the directory",
        ))
    }
}

/// Gives the new patch the owner and mode of the file it replaces, as an
/// editor saving a file does. Root can always; another user can only when
/// the file was theirs, and is warned otherwise.
fn keep_owner_and_mode(
    file: &File,
    path: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<(), Failure> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = file
        .metadata()
        .with_context(|| format!("cannot write {}", path.display()))?;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        if let Err(e) = std::os::unix::fs::fchown(file, Some(uid), Some(gid)) {
            say!(
                "mkpatch: warning: {} was owned by {uid}:{gid}; the new patch is owned by {}:{} \
                 ({e})",
                path.display(),
                meta.uid(),
                meta.gid()
            );
        }
    }
    // After the chown, which clears set-id bits.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(())
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
            say!(
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

fn run_keygen(secret_path: &Path, quiet: bool) -> Result<(), Failure> {
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
    if quiet {
        return Ok(());
    }
    say!(
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
    // A patch that parsed but fails its whole-patch hash or a signature
    // is corrupt (exit 2); the report still shows what it contains.
    let verdict = if !report.patch_hash_ok {
        Some("patch hash does not match: the patch is corrupt; get it again".to_owned())
    } else {
        report.signers.iter().find(|s| !s.valid).map(|bad| {
            format!(
                "the signature by key {} does not verify: the patch was altered after signing",
                hex(&bad.key_id)
            )
        })
    };
    let text = if json {
        json_report(&report, verdict.as_deref()) + "\n"
    } else {
        text_report(&report)
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(write_err)?;
    match verdict {
        None => Ok(()),
        // The JSON object already carries the error; stderr gets it too.
        Some(why) if json => {
            say!("mkpatch: {why}");
            Err(Failure::Reported(2))
        }
        Some(why) => Err(Failure::Corrupt(anyhow!(why))),
    }
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

/// The `inspect --json` object; `error` is why the patch is refused (exit 2), if it is.
fn json_report(r: &Inspection, error: Option<&str>) -> String {
    let h = &r.header;
    let kind = |k: &anypatch_producer::inspect::KindCount| serde_json::json!({ "extents": k.extents, "bytes": k.bytes });
    let mut object = serde_json::json!({
        "ok": error.is_none(),
        "exit_code": if error.is_none() { 0 } else { 2 },
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
    });
    if let Some(error) = error {
        object["error_class"] = "corrupt_patch".into();
        object["error"] = error.into();
    }
    object.to_string()
}
