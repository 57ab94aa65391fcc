//! The command line's side of a live sync (an image URL): its options from
//! the flags, the run in the mode asked, and the report.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use anypatch_applypatch::remote::Remote;
use anypatch_applypatch::sync::{self, SyncOptions};
use anypatch_applypatch::{DriveError, PatchSource};
use anypatch_hash_cache::Cache;
use anypatch_net::sync::SyncSession;
use anypatch_safe_output::human_bytes;
use anypatch_sync::drive::Received;

use anypatch_applypatch::progress::SyncMeter;

use super::{classify, fail, Cli, JsonReport};

/// The sync the URL asks for, if its name is an image (`None`: a patch).
pub(super) fn session(
    cli: &Cli,
    remote: &Remote,
) -> Result<Option<(SyncSession, SyncOptions)>, DriveError> {
    // Read, checked and warned about with the URL (remote::Remote::new).
    let token = remote.opts.token.clone();
    let cache = if cli.no_cache {
        None
    } else {
        // Without a usable cache directory the sync hashes OLD as usual.
        Cache::default_dir().and_then(|d| Cache::open(&d).ok())
    };
    let opts = SyncOptions {
        token,
        threads: 0,
        cache,
        progress: Default::default(),
    };
    Ok(sync::open(remote, &opts)?.map(|s| (s, opts)))
}

/// Runs the sync in the mode the flags say and reports it.
pub(super) fn run(
    cli: &Cli,
    patch: &PatchSource,
    session: SyncSession,
    opts: &SyncOptions,
    started: Instant,
) -> ExitCode {
    if cli.check {
        return check(cli, session, opts, started);
    }
    let show = !cli.quiet && std::io::stderr().is_terminal();
    if show {
        say(&format!(
            "applypatch: syncing {} ({}) from {}",
            cli.old.display(),
            human_bytes(session.len),
            cli.patch.display()
        ));
    }
    if cli.in_place {
        if let Err(e) = exit_on_signals_in_place(cli, opts, started) {
            return fail(
                cli,
                &DriveError::Io {
                    action: "cannot set up signal handling".into(),
                    source: e,
                },
            );
        }
    }
    stop_mid_sync_for_tests(&opts.progress);
    let meter = show.then(|| SyncMeter::start(opts.progress.clone()));
    let result = if cli.in_place {
        sync::sync_in_place(&cli.old, session, opts)
    } else {
        let out = cli
            .output
            .as_deref()
            .expect("clap requires -o without --check/--in-place");
        sync::sync_to_new_file(&cli.old, out, patch, session, opts)
    };
    if let Some(m) = meter {
        m.stop();
    }
    match result {
        Ok(r) => report(cli, &r, started),
        Err(e) => failed(cli, &e, opts, started),
    }
}

/// A failed sync: the error as any other, and with `--json` what the
/// session had done by then (bytes each way, written, the time it took).
fn failed(cli: &Cli, e: &DriveError, opts: &SyncOptions, started: Instant) -> ExitCode {
    if !cli.json {
        return fail(cli, e);
    }
    say(&format!("applypatch: {e}"));
    let (code, class) = classify(e);
    let now = opts.progress.now();
    let message = e.to_string();
    let _ = JsonReport {
        mode: Some(cli.mode()),
        bytes_written: Some(now.written),
        bytes_up: Some(now.up),
        bytes_down: Some(now.down),
        seconds: Some(JsonReport::seconds(started.elapsed())),
        error_class: Some(class),
        error: Some(&message),
        ..JsonReport::new(false, code)
    }
    .print(); // the exit code already says it failed
    ExitCode::from(code)
}

/// In place, a signal ends the sync at once (what was written is whole
/// verified leaves but the one being written, which the next run finds by
/// its hash): with 128 + the signal's number, saying so, and with `--json`
/// what was done by then. (-o has its handler from the start, which
/// removes the temporary file.)
fn exit_on_signals_in_place(
    cli: &Cli,
    opts: &SyncOptions,
    started: Instant,
) -> std::io::Result<()> {
    use anypatch_safe_output::signals;
    let (json, mode) = (cli.json, cli.mode());
    let target = cli.old.display().to_string();
    let progress = opts.progress.clone();
    signals::on_signals(move |signo| {
        let name = match signo {
            signals::SIGINT => "SIGINT",
            signals::SIGTERM => "SIGTERM",
            _ => "SIGHUP",
        };
        let message = format!(
            "interrupted by {name}; what was synced of {target} is kept and verified: run the same command again to go on"
        );
        let clear = if std::io::stderr().is_terminal() {
            "\r\x1b[K"
        } else {
            ""
        };
        say(&format!("{clear}applypatch: {message}"));
        let code = u8::try_from(128 + signo).unwrap_or(u8::MAX);
        if json {
            let now = progress.now();
            let _ = JsonReport {
                mode: Some(mode),
                target: Some(target.as_str().into()),
                bytes_written: Some(now.written),
                bytes_up: Some(now.up),
                bytes_down: Some(now.down),
                seconds: Some(JsonReport::seconds(started.elapsed())),
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

/// A line on stderr; one that cannot be written changes nothing.
fn say(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{s}");
}

/// The summary on stderr, or the JSON object on stdout.
fn report(cli: &Cli, r: &Received, started: Instant) -> ExitCode {
    let took = started.elapsed();
    let target = if cli.in_place {
        cli.old.clone()
    } else {
        cli.output.clone().unwrap_or_default()
    };
    if cli.json {
        let shown = target.to_string_lossy();
        let j = JsonReport {
            mode: Some(cli.mode()),
            status: Some("synced"),
            target: cli.in_place.then(|| shown.clone()),
            output: (!cli.in_place).then(|| shown.clone()),
            output_kind: (!cli.in_place).then_some("file"),
            new_len: Some(r.new_len),
            bytes_written: Some(r.bytes_written),
            bytes_up: Some(r.bytes_up),
            bytes_down: Some(r.bytes_down),
            old_from_cache: Some(r.old_from_cache),
            seconds: Some(JsonReport::seconds(took)),
            ..JsonReport::new(true, 0)
        };
        if let Err(e) = j.print() {
            say(&format!(
                "applypatch: {} was synced, but the result cannot be written to stdout: {e}",
                target.display()
            ));
            return ExitCode::from(1);
        }
    } else if !cli.quiet {
        let c = r.counts;
        say(&format!(
            "applypatch: synced {} ({}) in {:.2} s: {} down, {} up, {} written; {} of {} MiB groups differed, {} blocks found in OLD, {} fetched{}",
            target.display(),
            human_bytes(r.new_len),
            took.as_secs_f64(),
            human_bytes(r.bytes_down),
            human_bytes(r.bytes_up),
            human_bytes(r.bytes_written),
            c.groups_differing,
            r.new_len.div_ceil(1 << 20),
            c.blocks_found,
            c.blocks_wanted,
            if r.old_from_cache { "; OLD's hashes from the cache" } else { "" },
        ));
    }
    ExitCode::SUCCESS
}

/// Test hook: with `ANYPATCH_TEST_SYNC_STOP_AT=BYTES`, the process stops
/// itself (SIGSTOP) once that many bytes of the new image are settled, so
/// a test can signal it mid-sync, or start another run while this one
/// holds its lock. Nothing happens otherwise, and nothing at all without
/// the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
fn stop_mid_sync_for_tests(_: &std::sync::Arc<anypatch_sync::progress::SyncProgress>) {}

#[cfg(feature = "test-hooks")]
fn stop_mid_sync_for_tests(progress: &std::sync::Arc<anypatch_sync::progress::SyncProgress>) {
    let Some(at) = std::env::var("ANYPATCH_TEST_SYNC_STOP_AT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let progress = progress.clone();
    std::thread::spawn(move || {
        while progress.now().settled < at {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::STOP);
    });
}

/// `--check`: a dry run; prints what a sync would carry and an estimate of
/// its time.
fn check(cli: &Cli, session: SyncSession, opts: &SyncOptions, started: Instant) -> ExitCode {
    let m = match sync::check(&cli.old, session, opts) {
        Ok(m) => m,
        Err(e) => return fail(cli, &e),
    };
    let estimate = m.estimated_secs();
    if cli.json {
        let j = JsonReport {
            mode: Some(cli.mode()),
            status: Some("checked"),
            new_len: Some(m.new_len),
            bytes_written: Some(0),
            bytes_up: Some(m.bytes_up),
            bytes_down: Some(m.bytes_down),
            seconds: Some(JsonReport::seconds(started.elapsed())),
            estimated_seconds: Some((estimate * 1000.0).round() / 1000.0),
            ..JsonReport::new(true, 0)
        };
        return match j.print() {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::from(1),
        };
    }
    if !cli.quiet {
        let c = m.counts;
        let rate = m
            .rate()
            .map_or_else(|| "?".into(), |r| format!("{}/s", human_bytes(r as u64)));
        say(&format!(
            "applypatch: a sync of {} ({}) would take about {estimate:.1} s: {} down ({} of data), {} up; {} of {} MiB groups differ, {} blocks found in OLD, {} to fetch (link measured at {rate}); nothing was written",
            cli.old.display(),
            human_bytes(m.new_len),
            human_bytes(m.bytes_down),
            human_bytes(m.data_bytes),
            human_bytes(m.bytes_up),
            c.groups_differing,
            m.new_len.div_ceil(1 << 20),
            c.blocks_found,
            c.blocks_wanted,
        ));
    }
    ExitCode::SUCCESS
}
