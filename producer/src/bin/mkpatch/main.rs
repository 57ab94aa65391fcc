//! `mkpatch`: make an anypatch patch, or inspect one.
//!
//! - `main.rs`: the command line, exit codes, and making a patch ([`run_make`]);
//! - [`dest`]: where `-o` sends the patch, and what it refuses;
//! - [`inputs`]: OLD and NEW, checked before the work and after it;
//! - [`write`]: the patch written to a stream, or whole or not at all to a file;
//! - [`keygen`]: signing keys;
//! - [`index`]: `mkpatch index`, and the keys `--from-index` trusts;
//! - [`report`]: `mkpatch inspect`, as text or JSON;
//! - [`map`]: `mkpatch inspect --map`, the change map as SVG.

use std::cell::Cell;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use anypatch_format::MAX_SEGMENT_LEN;
use anypatch_producer::{make_patch, make_patch_from_index};
use anypatch_producer::{CacheOptions, Level, Options, Phase, ProduceError, Progress, Summary};
use anypatch_safe_output::human_bytes;
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
  mkpatch serve /srv/patches                 serve patches over QUIC (prints the certificate to pin)
  mkpatch --sign release.key a.img b.img -o p    sign the patch (applypatch --trusted-key release.pub)
  mkpatch index old.img -o old.apidx         the block index of old.img, where old.img is
  mkpatch --from-index old.apidx new.img -o p    a patch made without old.img, from its index

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
    #[arg(required_unless_present = "from_index", value_name = "NEW")]
    new: Option<PathBuf>,

    /// Make the patch without the old image, from its index (made by
    /// `mkpatch index OLD -o OLD.apidx` where OLD is): `mkpatch --from-index
    /// OLD.apidx NEW -o PATCH`. Unchanged, moved and shifted blocks become
    /// copies; the rest is new data, compressed (no deltas against old
    /// bytes). The patch is an ordinary one. The index is checked whole
    /// before any work.
    #[arg(long, value_name = "INDEX")]
    from_index: Option<PathBuf>,

    /// With --from-index: accept only an index signed (`mkpatch index
    /// --sign`) by the key in this public key file; may be repeated.
    #[arg(long, value_name = "PUBFILE", requires = "from_index")]
    trusted_key: Vec<PathBuf>,

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

    /// Speed against size: `fast` (1 MiB segments, each compressed once with
    /// the old bytes it most resembles as history, found by a sparse index
    /// of the whole old file), `default`
    /// (zstd 9, changes up to 1 MiB apart share a segment, new data
    /// compressed against the old bytes it most resembles, found by the
    /// same index, and near matches sent as bytewise deltas or not as a
    /// fast trial finds smaller) or `best` (zstd 19,
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

    /// Keep what was computed about OLD (its BLAKE3, block hashes and
    /// index, about 3.6 MiB per GiB) in the hash cache in DIR, so a second
    /// patch from the same unchanged OLD does not read and hash all of it
    /// again [default: $XDG_CACHE_HOME/anypatch, else ~/.cache/anypatch].
    /// An entry is used only while OLD's device, inode, size, mtime and
    /// ctime are unchanged, and if OLD had not changed in the 2 s before
    /// the entry was made; the patch is the same either way. At most 1 GiB,
    /// least recently used entries go first. A cache that cannot be used
    /// is a warning, never a failure.
    #[arg(long, value_name = "DIR", global = true)]
    cache: Option<PathBuf>,

    /// Neither use nor fill the hash cache (see --cache).
    #[arg(long, global = true, conflicts_with = "cache")]
    no_cache: bool,
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

        /// Also draw the change map into SVG, the picture the browser page
        /// draws: what the patch copies unchanged, moves, changes and
        /// zeros, along the new image. Written only for a patch that
        /// checks out.
        #[arg(long, value_name = "SVG")]
        map: Option<PathBuf>,
    },
    /// Serve the patches and images in DIR over QUIC until stopped, to
    /// `applypatch OLD quic://HOST:PORT/NAME`: a patch is fetched and
    /// applied; an image (any file that is not a patch) is synced live, so
    /// that OLD becomes it, fetching only what OLD lacks. Read-only: clients
    /// can only read files of DIR. On first start it makes a certificate and
    /// keeps it (see --state-dir); it prints the certificate's fingerprint,
    /// which clients pin with --server-cert. Images' hash trees are kept in
    /// the hash cache (see --cache), so an unchanged image is hashed once.
    Serve {
        /// The directory whose files are served (subdirectories included).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Address and UDP port to listen on.
        #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:4433")]
        listen: std::net::SocketAddr,
        /// Where the certificate and its key are kept [default:
        /// $XDG_STATE_HOME/anypatch/serve or ~/.local/state/anypatch/serve].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Who may sync or fetch which names: lines of `NAME TOKEN`, where a
        /// NAME ending in `*` matches every name it starts, and TOKEN `-`
        /// opens the names to everyone. The first line that matches decides;
        /// a name none matches is refused. Clients give their token with
        /// `applypatch --token-file`. Without it, every file is open to any
        /// client that can connect.
        #[arg(long, value_name = "FILE")]
        access: Option<PathBuf>,
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
    /// Make the block index of an image (about 0.5% of its size), so that
    /// patches from it can be made where the image is not:
    /// `mkpatch --from-index`. Runs at hashing speed on all cores.
    Index(index::IndexArgs),
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

// Declared after the macros, which they use.
mod dest;
mod index;
mod inputs;
mod keygen;
mod map;
mod report;
mod serve;
mod write;

use dest::{destination, refuse_key_file, refuse_output_is_input, Dest, PATCH};
use inputs::{check_input, Stamp};
use keygen::{read_secret_key, run_keygen};
use report::{run_inspect, InspectJson};
use write::{write_direct, write_file, write_stream};

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
    // Hidden, for packagers: `mkpatch --generate-docs DIR` writes the man pages and completions.
    if let Some(code) = anypatch_docgen::run_if_requested(<Cli as clap::CommandFactory>::command) {
        return code;
    }
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
        Some(Command::Inspect { patch, json, map }) => run_inspect(patch, *json, map.as_deref()),
        Some(Command::Keygen { output }) => run_keygen(output, cli.quiet),
        Some(Command::Serve {
            dir,
            listen,
            state_dir,
            access,
        }) => serve::run_serve(
            dir,
            *listen,
            state_dir.as_deref(),
            access.as_deref(),
            cache_options(cli.cache.as_deref(), cli.no_cache),
        ),
        Some(Command::Index(args)) => index::run_index(
            args,
            cache_options(cli.cache.as_deref(), cli.no_cache),
            cli.quiet,
        ),
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
    let object = InspectJson::failure(code, class, error).to_line();
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
            "from_index",
            "trusted_key",
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
    // With --from-index the one positional argument is NEW.
    let (old_name, old, new) = match (&cli.from_index, &cli.old, &cli.new) {
        (None, Some(old), Some(new)) => ("OLD", old, new),
        (Some(index), Some(new), None) => ("INDEX", index, new),
        (Some(_), Some(_), Some(_)) => {
            return Err(anyhow!(
                "with --from-index give only NEW: the index stands for OLD \
                 (mkpatch --from-index OLD.apidx NEW -o PATCH)"
            )
            .into())
        }
        _ => return Err(anyhow!("give OLD and NEW (see mkpatch --help)").into()),
    };
    for (what, p) in [(old_name, old), ("NEW", new)] {
        if is_dash(p) {
            let why = if what == "INDEX" {
                "give the index's file name"
            } else {
                "mkpatch reads images at random offsets; save the data to a file first"
            };
            return Err(anyhow!("{what} cannot be `-`: {why}").into());
        }
    }
    // Everything that can be refused is refused here, before any work.
    let dest = destination(PATCH, cli.output.as_deref())?;
    check_input(old_name, old)?;
    check_input("NEW", new)?;
    let mut inputs = vec![(old_name, old.as_path()), ("NEW", new.as_path())];
    if let Some(key) = &cli.sign {
        inputs.push(("the --sign key file", key.as_path()));
    }
    refuse_output_is_input(PATCH, &dest, &inputs)?;
    refuse_key_file(PATCH, &dest)?;
    let base = match cli.level {
        LevelArg::Named(level) => level.options(),
        LevelArg::Zstd(n) => Options {
            level: n,
            prefix_level: n,
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
    opts.cache = cache_options(cli.cache.as_deref(), cli.no_cache);
    if cli.from_index.is_some() {
        if cli.verify {
            return Err(anyhow!(
                "--verify needs the old image, which --from-index does not have; \
                 check the patch with applypatch --check where the old image is"
            )
            .into());
        }
        opts.verify = false;
    }
    let trusted = index::trusted_keys(&cli.trusted_key)?;
    // With `-o /dev/stderr` the patch is what goes to stderr: nothing else may.
    let summarize = !cli.quiet && !matches!(dest, Dest::Stderr);
    // The summary goes to logs too; the progress line only to a terminal.
    let show = summarize && io::stderr().is_terminal();
    let start = Instant::now();
    let progress = progress_line(show);

    // Taken before the first read; compared before the patch is committed.
    let before = [Stamp::of(old_name, old)?, Stamp::of("NEW", new)?];
    let make = |out: &mut dyn Write, spool: Option<PathBuf>| {
        let opts = Options {
            spool_dir: spool.or_else(|| opts.spool_dir.clone()),
            ..opts.clone()
        };
        match &cli.from_index {
            Some(_) => make_patch_from_index(old, new, &trusted, out, &opts, &progress),
            None => make_patch(old, new, out, &opts, &progress),
        }
    };
    let summary = match &dest {
        Dest::Stdout => write_direct(PATCH, io::stdout().lock(), "stdout", &before, make)?,
        Dest::Stderr => write_direct(PATCH, io::stderr().lock(), "stderr", &before, make)?,
        Dest::Stream(path) => write_stream(PATCH, path, &before, make)?,
        Dest::File(path) => write_file(PATCH, path, &before, make)?,
    };
    // The progress line is erased before anything else is printed.
    let clear = if show { "\r\x1b[2K" } else { "" };
    for warning in &summary.cache.warnings {
        say!("{clear}mkpatch: warning: {warning}");
    }
    if summarize {
        say!("{clear}{}", summary_line(&summary, start.elapsed()));
    }
    Ok(())
}

/// The hash cache to use: `--cache DIR`, none with `--no-cache`, else the
/// default directory (none without a home directory).
fn cache_options(dir: Option<&Path>, off: bool) -> Option<CacheOptions> {
    if off {
        return None;
    }
    match dir {
        Some(dir) => Some(CacheOptions::new(dir.to_owned())),
        None => CacheOptions::default_dir().map(CacheOptions::new),
    }
}

/// The progress line on stderr when `show`: the phase and how far, at most
/// ten times a second.
fn progress_line(show: bool) -> impl Fn(Progress) {
    let last = Cell::new(Instant::now() - Duration::from_secs(1));
    move |p: Progress| {
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
    }
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
        human_bytes(s.old_len),
        human_bytes(s.new_len),
        human_bytes(s.patch_len),
        human_bytes(s.moved_bytes),
        human_bytes(s.changed_bytes),
        s.segments,
        took.as_secs_f64()
    )
}
