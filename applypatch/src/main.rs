//! `applypatch`: apply an anypatch patch. See `applypatch --help`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anypatch_apply::{ErrorClass, Progress, Summary};
use anypatch_applypatch::{
    apply_in_place, apply_to_new_file, check, hex, read_trusted_keys, DriveError, InPlaceOptions,
    PatchSource, Policy,
};
use clap::Parser;

/// Apply an anypatch patch to an image.
///
/// The patch is checked as it is applied: a wrong base is found before the
/// first write, each data segment is verified before it is written, and the
/// result's BLAKE3 is checked against the patch header.
#[derive(Parser, Debug)]
#[command(
    name = "applypatch",
    version,
    after_help = "EXAMPLES:
    applypatch old.img p.bin -o new.img      write the new image (atomic: temp file, fsync, rename)
    applypatch --check old.img p.bin         verify fully, write nothing, print the new BLAKE3
    applypatch --in-place disk.img p.bin     rewrite only what changed in disk.img;
                                             after a crash, the same command finishes it
    applypatch --trusted-key release.pub old.img p.bin -o new.img   accept only patches signed by this key
    curl ... | applypatch old.img - -o new.img

EXIT CODES:
    0  success
    1  usage or I/O error (missing file, no space, ...)
    2  the patch is corrupt, truncated or not an anypatch patch
    3  wrong base: OLD is not the file the patch was made against
    4  the patch needs a newer applypatch (format version or feature)
    5  the patch cannot be applied in place; use -o
    6  the patch is not signed by a trusted key (--trusted-key)"
)]
struct Cli {
    /// The old image the patch was made against (with --in-place: the image to rewrite).
    old: PathBuf,
    /// The patch file, or '-' for stdin.
    patch: PathBuf,
    /// Write the new image here. Nothing appears at this path unless the whole patch verifies.
    #[arg(short, long, value_name = "NEW", required_unless_present_any = ["check", "in_place"])]
    output: Option<PathBuf>,
    /// Verify the patch against OLD completely and print the new image's BLAKE3. Writes nothing.
    #[arg(long, conflicts_with_all = ["output", "in_place"])]
    check: bool,
    /// Rewrite OLD in place, writing only what changes. The whole patch is verified first.
    #[arg(long, conflicts_with = "output")]
    in_place: bool,
    /// With --in-place: where to keep the crash-recovery state [default: beside
    /// a regular file as .NAME.anypatch-state; /var/lib/anypatch/NAME.anypatch-state
    /// for a block device]. Killed or powered off mid-way, run the same command
    /// again: it finishes the job from there.
    #[arg(long, value_name = "FILE", requires = "in_place")]
    state: Option<PathBuf>,
    /// Advanced, with --in-place: most bytes the crash journal gathers before
    /// each sync, 1..=4194304. Smaller redoes less after a crash; larger is faster.
    #[arg(long, value_name = "BYTES", default_value_t = anypatch_applypatch::inplace::BATCH_BYTES, hide_short_help = true)]
    journal_batch: usize,
    /// Accept only patches signed by this public key (a .pub file from
    /// `mkpatch keygen`). Repeat for several keys; any one of them suffices.
    /// The signature is checked before the old file is read or anything is written.
    #[arg(long, value_name = "KEYFILE")]
    trusted_key: Vec<PathBuf>,
    /// Refuse a patch whose new image would be larger than BYTES, before
    /// reading the old file. Use it for patches from untrusted sources that
    /// are not signed: a patch declares its size, and work follows it.
    #[arg(long, value_name = "BYTES")]
    max_new_size: Option<u64>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress or summary on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors exit 1: exit 2 is reserved for a corrupt patch.
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let started = Instant::now();
    let patch = PatchSource::parse(&cli.patch);
    let mut meter = Meter::new(!cli.quiet && std::io::stderr().is_terminal());
    let mut on_progress = |p: Progress| meter.show(p);
    let policy = read_trusted_keys(&cli.trusted_key).map(|trusted_keys| Policy {
        trusted_keys,
        max_new_len: cli.max_new_size,
    });
    let result = policy.and_then(|keys| {
        if cli.check {
            check(&cli.old, &patch, &keys, &mut on_progress)
        } else if cli.in_place {
            let opts = InPlaceOptions {
                state: cli.state.clone(),
                batch_bytes: cli.journal_batch,
            };
            apply_in_place(&cli.old, &patch, &keys, &opts, &mut on_progress)
        } else {
            let out = cli
                .output
                .as_deref()
                .expect("clap requires -o without --check/--in-place");
            apply_to_new_file(&cli.old, &patch, out, &keys, &mut on_progress)
        }
    });
    meter.clear();
    match result {
        Ok(summary) => {
            report(&cli, &summary, started.elapsed());
            ExitCode::SUCCESS
        }
        Err(DriveError::AlreadyApplied) => {
            if !cli.quiet {
                eprintln!("applypatch: {}", DriveError::AlreadyApplied);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("applypatch: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &DriveError) -> u8 {
    match e {
        DriveError::Apply(a) => match a.class() {
            ErrorClass::CorruptPatch => 2,
            ErrorClass::WrongBase => 3,
            ErrorClass::Unsupported => 4,
            ErrorClass::NotInPlace => 5,
            ErrorClass::Untrusted => 6,
        },
        DriveError::NotInPlace(_) => 5,
        DriveError::Io { .. } | DriveError::Refused(_) => 1,
        DriveError::AlreadyApplied => 0,
    }
}

fn report(cli: &Cli, s: &Summary, took: Duration) {
    let hash = s.new_hash.as_ref().map(hex).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. piped into `head`) is not an error worth reporting.
    let _ = if cli.json {
        writeln!(
            out,
            "{{\"new_len\":{},\"new_blake3\":\"{hash}\",\"patch_blake3\":\"{}\",\"bytes_written\":{},\"bytes_zeroed\":{},\"seconds\":{:.3}}}",
            s.new_len,
            hex(&s.patch_hash),
            s.bytes_written,
            s.bytes_zeroed,
            took.as_secs_f64()
        )
    } else if cli.check {
        writeln!(out, "{hash}")
    } else {
        Ok(())
    };
    if !cli.quiet && !cli.json {
        let what = if cli.check {
            "verified"
        } else if cli.in_place {
            "patched in place"
        } else {
            "wrote"
        };
        eprintln!(
            "applypatch: {what}: {} bytes, {} written, BLAKE3 {}, {:.2} s",
            s.new_len,
            s.bytes_written,
            if hash.is_empty() {
                "checked before writing".to_string()
            } else {
                hash.clone()
            },
            took.as_secs_f64()
        );
    }
}

/// A progress line on stderr, redrawn at most five times a second, only on a TTY.
struct Meter {
    enabled: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Meter {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            started: Instant::now(),
            last: None,
        }
    }

    fn show(&mut self, p: Progress) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let done = p.base_checked + p.new_done;
        eprint!(
            "\r\x1b[Kapplypatch: base checked {} MiB, new {} MiB, patch {} MiB read, {:.0} MiB/s",
            p.base_checked >> 20,
            p.new_done >> 20,
            p.patch_consumed >> 20,
            done as f64 / secs / 1048576.0
        );
    }

    fn clear(&self) {
        if self.enabled && self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}
