//! `applypatch`: apply an anypatch patch. See `applypatch --help`.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anypatch_apply::{ApplyError, ErrorClass, Progress};
use anypatch_applypatch::output;
use anypatch_applypatch::progress::Meter;
use anypatch_applypatch::{
    apply_in_place, apply_to_new_file, check, hex, read_trusted_keys, DriveError, InPlaceOptions,
    OutputTarget, PatchSource, Policy, Written,
};
use anypatch_safe_output::{human_bytes, signals};
use clap::Parser;
use serde::Serialize;

/// `eprintln!` that cannot panic: a diagnostic that cannot be written
/// (stderr on a full disk, a closed pipe) must not change the outcome or
/// the exit code.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Largest --journal-batch, as the help says.
const MAX_JOURNAL_BATCH: u64 = 0x40_0000;

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
    applypatch old.img p.bin -o /dev/sdb     write it onto a disk: verified whole first, then
                                             written, synced and read back
    applypatch --check old.img p.bin         verify fully, write nothing, print the new BLAKE3
    applypatch --in-place disk.img p.bin     rewrite only what changed in disk.img;
                                             after a crash, the same command finishes it
    applypatch --trusted-key release.pub old.img p.bin -o new.img   accept only patches signed by this key
    curl ... | applypatch old.img - -o new.img

LIVE SYNC (a URL of `mkpatch serve` naming an image, not a patch):
    applypatch --in-place disk.img quic://host:4433/vm.img --server-cert SHA256:...
                                             make disk.img that image, fetching only what
                                             differs; killed or cut off, the same command goes on
    applypatch disk.img quic://host:4433/vm.img -o new.img --server-cert SHA256:...
                                             build it as a new file; disk.img is left as it is
    Both sides hash their image as the session runs; only the parts whose hashes differ are
    compared further, and data already in OLD (at any offset) is copied, not fetched. Every
    64 KiB is checked against the server's tree before it is written, and the result's
    BLAKE3 against the server's. The server must be trusted (--server-cert or --ca): there
    is no signature. The hashes of OLD and of the result are cached (--no-cache to skip).

OUTPUT (-o NEW):
    a new or existing regular file: written beside it as an unnamed temporary file (O_TMPFILE;
        where the file system lacks it, .NEW.XXXXXX.applypatch-tmp), sparse (all-zero 4 KiB
        blocks stay holes), fsynced, given a name only when complete and renamed over NEW.
        Killed even with SIGKILL, nothing is left behind. A symlink to a regular
        file is followed: the file it points to is replaced, the link stays. A replaced file
        keeps its permissions and owner; a new one gets OLD's permissions less the umask.
    a block device: the whole patch is verified against OLD with nothing written, then the
        image is written from offset 0, synced, read back and hashed against the new BLAKE3.
        The device's old contents are lost only after the patch verified. A device smaller
        than the new image is refused; bytes after the image on a larger device are left as
        they are. The patch must be a file (it is read twice), and the device not in use.
    refused before any work (exit 1): a directory, a missing directory, a FIFO, a character
        device, a socket, OLD itself or the patch itself (same file: links count, and loop
        devices count as the file behind them), a read-only device, and a stream: '-',
        /dev/stdout, /dev/fd/N (applypatch writes at any offset; give a file or device).
    OLD must be a regular file or a block device: a directory, FIFO or character device is
        refused (exit 1). The patch may be a file, a pipe or '-' (except onto a block device).

SIZES (--max-new-size):
    plain bytes (67108864), or a number with a unit, fractions allowed (1.5G): K, M, G, T, P,
    alone or with i/iB, are powers of 1024 (64G = 64GiB, as GNU tools read them); kB, MB, GB,
    TB, PB are powers of 1000. Case does not matter.

JSON (--json): stdout is exactly one object, errors included (none only when the process is
killed: SIGKILL, or a signal during --in-place with a patch, which the next run resumes; or when stdout is
OLD, the patch or the output, which the object would damage: refused on stderr, exit 1):
    ok             true or false
    exit_code      the process's exit code
    mode           \"output\", \"check\" or \"in_place\" (absent for usage errors)
    status         on success: \"applied\", \"verified\" (--check), \"synced\" (an image URL),
                   \"checked\" (--check with an image URL: a dry run, nothing written) or
                   \"already_applied\" (--in-place on a target that already is the new image)
    output, output_kind, device_len    -o: the file written (symlink resolved), \"file\" or
                   \"block_device\", and a device's size in bytes
    target         --in-place: the image patched
    new_len, new_blake3, patch_blake3  the new image's size and BLAKE3, the patch's BLAKE3
    bytes_written  bytes the output received (holes not counted); absent with --check
    bytes_zeroed   bytes of zero runs the patch declares; absent with --check
    fetched_bytes, fetch_retries   a patch URL: bytes received from the network (refetched
                   ones included) and how many times a fetch was retried
    bytes_up, bytes_down, old_from_cache   a live sync: bytes of messages to and from the
                   server, and whether OLD's hashes came from the cache (OLD was not read whole); a
                   failed sync has bytes_up, bytes_down, bytes_written and seconds so far
    seconds        wall time
    estimated_seconds  --check with an image URL: the estimated time of the sync, whose
                   bytes_up and bytes_down are what the sync would carry
    error_class    on failure: usage, io, refused, corrupt_patch, wrong_base, unsupported,
                   not_in_place, untrusted, interrupted
    error          on failure, and message on already_applied: the sentence also on stderr
    signal         when interrupted: SIGINT, SIGTERM or SIGHUP

EXIT CODES:
    0  success (also: --in-place on a target that already is the new image)
    1  usage or I/O error (missing file, no space, refused input or output kind, OLD changed
       while it was read, stdout cannot take --check's hash or --json's object, ...)
    2  the patch is corrupt, truncated or not an anypatch patch
    3  wrong base: OLD is not the file the patch was made against
    4  the patch needs a newer applypatch (format version or feature)
    5  the patch cannot be applied in place; use -o
    6  the patch is not signed by a trusted key (--trusted-key)
    129, 130, 143  stopped by SIGHUP, SIGINT, SIGTERM (128 + signal number) during -o, --check
       or a live sync in place (the same command goes on from there);
       the temporary file is removed first, an existing NEW is left as it was. A signal that
       comes once NEW is in place changes nothing; one ignored at start (nohup) stays ignored"
)]
struct Cli {
    /// The old image the patch was made against (with --in-place: the image to rewrite).
    old: PathBuf,
    /// The patch file, or '-' for stdin.
    patch: PathBuf,
    /// Write the new image here: a file, or a block device. Nothing appears
    /// at a file path unless the whole patch verifies.
    #[arg(short, long, value_name = "NEW", required_unless_present_any = ["check", "in_place"])]
    output: Option<PathBuf>,
    /// Verify the patch against OLD completely and print the new image's BLAKE3. Writes nothing.
    #[arg(long, conflicts_with_all = ["output", "in_place"])]
    check: bool,
    /// Rewrite OLD in place, writing only what changes. The whole patch is verified first.
    #[arg(long, conflicts_with = "output")]
    in_place: bool,
    /// With --in-place: where to keep the crash-recovery state [default: beside
    /// a regular file as .NAME.anypatch-state; for a block device
    /// /var/lib/anypatch/block-MAJOR:MINOR.anypatch-state]. It stays empty unless
    /// something must be journaled. Killed or powered off mid-way, run the same
    /// command again: it finishes the job from there.
    // `requires = "in_place"` is not enough: a flag's default false counts as present.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["output", "check"])]
    state: Option<PathBuf>,
    /// Advanced, with --in-place: most bytes the crash journal gathers before
    /// each sync, 1..=4194304 [default: 4194304]. Smaller redoes less after a
    /// crash; larger is faster.
    #[arg(
        long,
        value_name = "BYTES",
        conflicts_with_all = ["output", "check"],
        value_parser = clap::value_parser!(u64).range(1..=MAX_JOURNAL_BATCH),
        hide_short_help = true
    )]
    journal_batch: Option<u64>,
    /// Accept only patches signed by this public key (a .pub file from
    /// `mkpatch keygen`). Repeat for several keys; any one of them suffices.
    /// The signature is checked before the old file is read or anything is written.
    #[arg(long, value_name = "KEYFILE")]
    trusted_key: Vec<PathBuf>,
    /// Refuse a patch whose new image would be larger than SIZE (64G, 512MiB,
    /// 2TB, 1.5G or bytes; see SIZES), before reading the old file. Use it
    /// for patches from untrusted sources that are not signed: a patch
    /// declares its size, and work follows it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_new_size: Option<u64>,
    /// With a patch URL: trust the server whose certificate has this
    /// fingerprint (the SHA256:... line `mkpatch serve` prints), and no other.
    #[arg(long, value_name = "SHA256:HEX")]
    server_cert: Option<String>,
    /// With a patch URL: also trust servers whose certificate this
    /// certificate authority (a PEM file) signed. Repeatable.
    #[arg(long, value_name = "PEMFILE")]
    ca: Vec<PathBuf>,
    /// With a URL: a file holding the token the server's access file names
    /// for that image or patch (its first line; keep it chmod 600). Sent on
    /// quic://, as Authorization: Bearer on https://; refused for http://.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// With an image URL (live sync): hash OLD even if the hash cache
    /// vouches for it, and keep nothing there.
    #[arg(long)]
    no_cache: bool,
    /// Print the result as one JSON object on stdout, errors included (see JSON).
    #[arg(long)]
    json: bool,
    /// No progress or summary on stderr.
    #[arg(short, long)]
    quiet: bool,
}

impl Cli {
    fn mode(&self) -> &'static str {
        if self.check {
            "check"
        } else if self.in_place {
            "in_place"
        } else {
            "output"
        }
    }
}

fn main() -> ExitCode {
    // Hidden, for packagers: `applypatch --generate-docs DIR` writes the man page and completions.
    #[cfg(feature = "docs")]
    if let Some(code) = anypatch_docgen::run_if_requested(<Cli as clap::CommandFactory>::command) {
        return code;
    }
    let started = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors exit 1: exit 2 is reserved for a corrupt patch.
            let code = if e.use_stderr() { 1 } else { 0 };
            if code != 0 && json_requested() {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                let _ = JsonReport {
                    error_class: Some("usage"),
                    error: Some(first.strip_prefix("error: ").unwrap_or(first)),
                    ..JsonReport::new(false, code)
                }
                .print(); // the exit code already says it failed
            }
            return ExitCode::from(code);
        }
    };
    // -o and --check end on a signal with 128 + its number, after removing
    // the temporary file. --in-place keeps the default: a kill is what its
    // journal is made to survive, and the next run resumes.
    if !cli.in_place {
        if let Err(e) = exit_on_signals(cli.json, cli.mode()) {
            return fail(
                &cli,
                &DriveError::Io {
                    action: "cannot set up signal handling".into(),
                    source: e,
                },
            );
        }
    }
    let patch = match patch_source(&cli) {
        Ok(p) => p,
        Err(e) => return fail(&cli, &e),
    };
    // stdout opened on OLD or the patch (`>> old.img`): what applypatch
    // prints there would damage it. Refused on stderr alone: even the JSON
    // error object would be written into the file.
    if cli.json || cli.check {
        let written = (!cli.check && !cli.in_place)
            .then_some(cli.output.as_deref())
            .flatten();
        if let Err(e) = output::check_stdout(&cli.old, &patch, written) {
            say!("applypatch: {e}");
            return ExitCode::from(1);
        }
    }
    // An image URL: a live sync rather than a patch.
    #[cfg(feature = "quic-https")]
    if let PatchSource::Remote(remote) = &patch {
        match sync_cli::session(&cli, remote) {
            Err(e) => return fail(&cli, &e),
            Ok(Some((session, opts))) => {
                return sync_cli::run(&cli, &patch, session, &opts, started)
            }
            Ok(None) => {} // a patch
        }
    }
    let mut meter = Meter::new(!cli.quiet && std::io::stderr().is_terminal(), &patch);
    let mut on_progress = |p: Progress| meter.show(p);
    let policy = read_trusted_keys(&cli.trusted_key).map(|trusted_keys| Policy {
        trusted_keys,
        max_new_len: cli.max_new_size,
    });
    let result = policy.and_then(|keys| {
        if cli.check {
            check(&cli.old, &patch, &keys, &mut on_progress).map(|summary| Written {
                summary,
                target: OutputTarget::File(PathBuf::new()),
            })
        } else if cli.in_place {
            let opts = InPlaceOptions {
                state: cli.state.clone(),
                batch_bytes: cli.journal_batch.map_or(
                    anypatch_applypatch::inplace::BATCH_BYTES,
                    // At most MAX_JOURNAL_BATCH, by the value parser.
                    |b| b as usize,
                ),
            };
            apply_in_place(&cli.old, &patch, &keys, &opts, &mut on_progress).map(|summary| {
                Written {
                    summary,
                    target: OutputTarget::File(cli.old.clone()),
                }
            })
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
        Ok(written) => match report(&cli, &written, started.elapsed(), fetched(&patch)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let done = if cli.check {
                    "the patch verified".to_string()
                } else if cli.in_place {
                    format!("{} was patched", cli.old.display())
                } else {
                    match &written.target {
                        OutputTarget::File(p) | OutputTarget::Device { path: p, .. } => {
                            format!("{} was written", p.display())
                        }
                    }
                };
                say!("applypatch: {done}, but the result cannot be written to stdout: {e}");
                ExitCode::from(1)
            }
        },
        Err(DriveError::AlreadyApplied) => {
            let message = DriveError::AlreadyApplied.to_string();
            if cli.json {
                let j = JsonReport {
                    mode: Some(cli.mode()),
                    status: Some("already_applied"),
                    target: Some(cli.old.to_string_lossy()),
                    message: Some(&message),
                    seconds: Some(JsonReport::seconds(started.elapsed())),
                    ..JsonReport::new(true, 0)
                };
                if let Err(e) = j.print() {
                    say!("applypatch: {message}, but the result cannot be written to stdout: {e}");
                    return ExitCode::from(1);
                }
            } else if !cli.quiet {
                say!("applypatch: {message}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&cli, &e),
    }
}

#[cfg(feature = "quic-https")]
mod sync_cli;

/// What a remote patch cost on the network: bytes received and retries.
fn fetched(patch: &PatchSource) -> Option<(u64, u64)> {
    match patch {
        #[cfg(feature = "net")]
        PatchSource::Remote(r) => {
            use std::sync::atomic::Ordering::Relaxed;
            let t = &r.opts.totals;
            Some((t.received.load(Relaxed), t.retries.load(Relaxed)))
        }
        _ => None,
    }
}

/// The patch argument: a file, `-`, or (with the `net` feature) a URL with
/// the trust the flags give. The trust flags mean nothing for a local patch.
fn patch_source(cli: &Cli) -> Result<PatchSource, DriveError> {
    let arg = cli.patch.to_string_lossy();
    #[cfg(feature = "net")]
    if anypatch_net::RemoteUrl::is_remote(&arg) {
        let flags = anypatch_applypatch::remote::TrustFlags {
            server_cert: cli.server_cert.as_deref(),
            ca: &cli.ca,
            signed: !cli.trusted_key.is_empty(),
            token_file: cli.token_file.as_deref(),
        };
        let remote = anypatch_applypatch::remote::Remote::new(&arg, &flags)?;
        return Ok(PatchSource::Remote(Box::new(remote)));
    }
    #[cfg(not(feature = "net"))]
    if ["quic://", "https://", "http://"]
        .iter()
        .any(|s| arg.to_ascii_lowercase().starts_with(s))
    {
        return Err(DriveError::Refused(format!(
            "{arg}: this applypatch was built without network support (the static initramfs build); fetch the patch to a file first"
        )));
    }
    if cli.server_cert.is_some() || !cli.ca.is_empty() {
        return Err(DriveError::Refused(format!(
            "--server-cert and --ca are for a patch URL (quic://, https://); {arg} is a local patch"
        )));
    }
    if cli.token_file.is_some() {
        return Err(DriveError::Refused(format!(
            "--token-file is for a URL (quic://, https://); {arg} is a local patch"
        )));
    }
    Ok(PatchSource::parse(&cli.patch))
}

/// Reports `e` on stderr (and on stdout with --json) and returns its exit code.
fn fail(cli: &Cli, e: &DriveError) -> ExitCode {
    // The engine's messages name no flag: the command line's way out is added here.
    let hint = match e {
        DriveError::Apply(ApplyError::NotInPlaceSafe { .. }) => " (applypatch OLD PATCH -o NEW)",
        _ => "",
    };
    say!("applypatch: {e}{hint}");
    let (code, class) = classify(e);
    if cli.json {
        let _ = JsonReport {
            mode: Some(cli.mode()),
            error_class: Some(class),
            error: Some(&e.to_string()),
            ..JsonReport::new(false, code)
        }
        .print(); // the exit code already says it failed
    }
    ExitCode::from(code)
}

/// The exit code and the JSON `error_class` of a failure, in one place so
/// the two cannot disagree.
fn classify(e: &DriveError) -> (u8, &'static str) {
    match e {
        DriveError::Apply(a) => match a.class() {
            ErrorClass::CorruptPatch => (2, "corrupt_patch"),
            ErrorClass::WrongBase => (3, "wrong_base"),
            ErrorClass::Unsupported => (4, "unsupported"),
            ErrorClass::NotInPlace => (5, "not_in_place"),
            ErrorClass::Untrusted => (6, "untrusted"),
        },
        DriveError::WrongBase { .. } => (3, "wrong_base"),
        DriveError::NotInPlace(_) => (5, "not_in_place"),
        DriveError::Io { .. } => (1, "io"),
        DriveError::Refused(_) => (1, "refused"),
        DriveError::AlreadyApplied => (0, "already_applied"),
    }
}

/// Whether `--json` is among the arguments, for usage errors that clap
/// reports before it gives us a `Cli`.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != OsStr::new("--"))
        .any(|a| a == OsStr::new("--json"))
}

/// Ends the process on SIGINT, SIGTERM or SIGHUP with exit code 128 + the
/// signal's number, after removing the temporary output file. A signal that
/// comes once the output is committed changes nothing: the run finishes and
/// reports success. A signal ignored when applypatch started (`nohup`
/// ignores SIGHUP) stays ignored.
fn exit_on_signals(json: bool, mode: &'static str) -> std::io::Result<()> {
    signals::on_signals(move |signo| {
        let notes = match output::interrupted() {
            output::Interruption::Finished => return,
            output::Interruption::Stop(notes) => notes,
        };
        let name = match signo {
            signals::SIGINT => "SIGINT",
            signals::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        let mut message = format!("interrupted by {name}");
        for note in notes {
            message.push_str("; ");
            message.push_str(&note);
        }
        let clear = if std::io::stderr().is_terminal() {
            "\r\x1b[K"
        } else {
            ""
        };
        say!("{clear}applypatch: {message}");
        // 128 + 1, 2 or 15: always fits.
        let code = u8::try_from(128 + signo).unwrap_or(u8::MAX);
        if json {
            let _ = JsonReport {
                mode: Some(mode),
                error_class: Some("interrupted"),
                signal: Some(name),
                error: Some(&message),
                ..JsonReport::new(false, code)
            }
            .print(); // the exit code already says what happened
        }
        std::process::exit(code.into());
    })
}

/// Prints the result: the JSON object or `--check`'s BLAKE3 on stdout (an
/// error if it cannot be written: it is what the caller asked for), and the
/// summary on stderr.
fn report(
    cli: &Cli,
    w: &Written,
    took: Duration,
    fetched: Option<(u64, u64)>,
) -> std::io::Result<()> {
    let s = &w.summary;
    let hash = s.new_hash.as_ref().map(hex);
    if cli.json {
        let mut j = JsonReport {
            mode: Some(cli.mode()),
            status: Some(if cli.check { "verified" } else { "applied" }),
            new_len: Some(s.new_len),
            new_blake3: hash.as_deref(),
            patch_blake3: Some(hex(&s.patch_hash)),
            seconds: Some(JsonReport::seconds(took)),
            ..JsonReport::new(true, 0)
        };
        if cli.in_place {
            j.target = Some(cli.old.to_string_lossy());
        } else if !cli.check {
            (j.output, j.output_kind, j.device_len) = match &w.target {
                OutputTarget::File(p) => (Some(p.to_string_lossy()), Some("file"), None),
                OutputTarget::Device { path, len } => (
                    Some(path.to_string_lossy()),
                    Some("block_device"),
                    Some(*len),
                ),
            };
        }
        if !cli.check {
            j.bytes_written = Some(s.bytes_written);
            j.bytes_zeroed = Some(s.bytes_zeroed);
        }
        if let Some((bytes, retries)) = fetched {
            j.fetched_bytes = Some(bytes);
            j.fetch_retries = Some(retries);
        }
        j.print()?;
    } else if cli.check {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", hash.as_deref().unwrap_or_default())?;
        out.flush()?;
    }
    if cli.quiet || cli.json {
        return Ok(());
    }
    if let Some((bytes, retries)) = fetched {
        let again = match retries {
            0 => String::new(),
            1 => ", after 1 retry".into(),
            n => format!(", after {n} retries"),
        };
        say!("applypatch: fetched {}{again}", human_bytes(bytes));
    }
    let blake3 = hash.unwrap_or_else(|| "checked before writing".into());
    let secs = took.as_secs_f64();
    let size = human_bytes(s.new_len);
    let written = human_bytes(s.bytes_written);
    if cli.check {
        say!("applypatch: verified: a {size} image in {secs:.2} s, BLAKE3 {blake3}");
    } else if cli.in_place {
        say!(
            "applypatch: patched {} in place: {size} ({written} written) in {secs:.2} s, BLAKE3 {blake3}",
            cli.old.display()
        );
    } else {
        match &w.target {
            OutputTarget::File(p) => say!(
                "applypatch: wrote {}: {size} ({written} written) in {secs:.2} s, BLAKE3 {blake3}",
                p.display()
            ),
            OutputTarget::Device { path, len } => {
                say!(
                    "applypatch: wrote {}: {size} ({written} written, read back and verified) in {secs:.2} s, BLAKE3 {blake3}",
                    path.display()
                );
                if *len > s.new_len {
                    say!(
                        "applypatch: the device's last {} after the image were left as they were",
                        human_bytes(len - s.new_len)
                    );
                }
            }
        }
    }
    Ok(())
}

/// Parses a size as users type it: plain bytes (`67108864`), or a number,
/// fractions allowed (`1.5G`), with a unit. `K`, `M`, `G`, `T`, `P`, alone
/// or with `i` or `iB`, are powers of 1024 (`64G` is `64GiB`, as GNU tools
/// read it); `kB`, `MB`, `GB`, `TB`, `PB` are powers of 1000; `B` is bytes.
/// Case does not matter. A fraction is rounded down to whole bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "'{s}' is not a size: give bytes (67108864) or a number with a unit: 64G or 64GiB (2^30 bytes each), 64GB (10^9), K M G T P"
        )
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || frac.len() > 18 {
        return Err(bad());
    }
    let mult: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "p" | "pi" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        _ => return Err(bad()),
    };
    if mult == 1 && !frac.is_empty() {
        return Err(format!(
            "'{s}' is a fraction of a byte: give whole bytes, or a unit after the number ({s}G, {s}GB)"
        ));
    }
    let parse = |d: &str| -> Result<u128, String> {
        if d.is_empty() {
            Ok(0)
        } else {
            d.parse::<u128>().map_err(|_| bad())
        }
    };
    let scale = 10u128.pow(frac.len() as u32);
    let whole = parse(int)?.checked_mul(mult).ok_or_else(bad)?;
    let part = parse(frac)? * mult / scale;
    whole
        .checked_add(part)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| format!("'{s}' is larger than {} bytes", u64::MAX))
}

/// The `--json` object: the one schema of every outcome (JSON in `--help`
/// documents each field). A field that does not apply is left out, never
/// null; fields print in this order.
#[derive(Debug, Default, Serialize)]
struct JsonReport<'a> {
    ok: bool,
    exit_code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_blake3: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_blake3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_written: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_zeroed: Option<u64>,
    /// A remote patch: bytes received from the network (refetched ones
    /// included) and how many times a fetch was retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    fetched_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fetch_retries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_up: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_down: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_from_cache: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    estimated_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_class: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl JsonReport<'_> {
    fn new(ok: bool, exit_code: u8) -> Self {
        Self {
            ok,
            exit_code,
            ..Self::default()
        }
    }

    /// Wall time in seconds, to the millisecond.
    fn seconds(took: Duration) -> f64 {
        (took.as_secs_f64() * 1000.0).round() / 1000.0
    }

    /// Prints the object and a newline on stdout, flushed, so a failed
    /// write is seen here.
    fn print(&self) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, self)?;
        writeln!(out)?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_users_type_them() {
        let ok = [
            ("67108864", 67_108_864),
            ("0", 0),
            ("64G", 64 << 30),
            ("64g", 64 << 30),
            ("64GiB", 64 << 30),
            ("64Gi", 64 << 30),
            ("64 GiB", 64 << 30),
            ("64GB", 64_000_000_000),
            ("2T", 2 << 40),
            ("2TB", 2_000_000_000_000),
            ("512M", 512 << 20),
            ("512MiB", 512 << 20),
            ("1.5G", 3 << 29),
            ("1.5GB", 1_500_000_000),
            ("4k", 4096),
            ("4kB", 4000),
            ("4KB", 4000),
            ("100B", 100),
            (".5K", 512),
            ("1.1K", 1126),
        ];
        for (s, want) in ok {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        for s in [
            "",
            "G",
            "-1",
            "1.5",
            "1..5G",
            "12X",
            "1e9",
            "64 G B",
            "99999999999P",
        ] {
            assert!(parse_size(s).is_err(), "{s} accepted");
        }
    }

    #[test]
    fn json_strings_are_escaped_and_absent_fields_left_out() {
        let j = JsonReport {
            error: Some("a \"b\"\\\n\u{1}"),
            seconds: Some(JsonReport::seconds(Duration::from_micros(1_234_567))),
            ..JsonReport::new(false, 1)
        };
        assert_eq!(
            serde_json::to_string(&j).expect("serializes"),
            "{\"ok\":false,\"exit_code\":1,\"seconds\":1.235,\"error\":\"a \\\"b\\\"\\\\\\n\\u0001\"}"
        );
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
