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

use super::{fail, Cli, JsonReport};

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
        return fail(
            cli,
            &DriveError::Refused(
                "--check with an image URL (a dry run of a live sync) is not built yet; see the README".into(),
            ),
        );
    }
    let show = !cli.quiet && std::io::stderr().is_terminal();
    if show {
        let _ = eprint_line(&format!(
            "applypatch: syncing {} ({}) from {}",
            cli.old.display(),
            human_bytes(session.len),
            cli.patch.display()
        ));
    }
    let result = if cli.in_place {
        sync::sync_in_place(&cli.old, session, opts)
    } else {
        let out = cli
            .output
            .as_deref()
            .expect("clap requires -o without --check/--in-place");
        sync::sync_to_new_file(&cli.old, out, patch, session, opts)
    };
    match result {
        Ok(r) => report(cli, &r, started),
        Err(e) => fail(cli, &e),
    }
}

fn eprint_line(s: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{s}")
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
            let _ = eprint_line(&format!(
                "applypatch: {} was synced, but the result cannot be written to stdout: {e}",
                target.display()
            ));
            return ExitCode::from(1);
        }
    } else if !cli.quiet {
        let c = r.counts;
        let _ = eprint_line(&format!(
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
