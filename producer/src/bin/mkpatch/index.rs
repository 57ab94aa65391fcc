//! `mkpatch index IMAGE -o OUT.apidx`: the block index of an image, for
//! making patches where only the new image is (`mkpatch --from-index`);
//! and the trusted keys `--from-index` checks the index against.

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context};
use anypatch_format::{parse_key_file, KeyKind};
use anypatch_producer::{
    make_index, make_index_from_cache, CacheOptions, IndexOptions, IndexSummary,
};
use anypatch_safe_output::human_bytes;
use clap::Args;

use crate::dest::{destination, refuse_key_file, refuse_output_is_input, Dest, INDEX};
use crate::inputs::{check_input, unchanged, Stamp};
use crate::keygen::read_secret_key;
use crate::write::{write_direct, write_file, write_stream};
use crate::{is_dash, progress_line, Failure};

/// `mkpatch index`'s arguments.
#[derive(Debug, Args)]
pub(crate) struct IndexArgs {
    /// The image to index (the old image, on the machine that has it).
    #[arg(value_name = "IMAGE")]
    image: PathBuf,

    /// Write the index to OUT instead of stdout (`-` means stdout); a file
    /// appears whole or not at all, with the same rules as mkpatch -o.
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,

    /// Worker threads [default: number of cores].
    #[arg(short = 'j', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,

    /// Sign the index with this secret key file (made by `mkpatch keygen`);
    /// `mkpatch --from-index --trusted-key KEY.pub` then accepts only it.
    #[arg(long, value_name = "KEYFILE")]
    sign: Option<PathBuf>,

    /// Block size: a power of two in 512..=1048576. Smaller blocks find
    /// more and make a larger index (20 bytes a block: 0.49% of the image
    /// at the default 4096).
    #[arg(long, value_name = "BYTES", default_value_t = anypatch_index::DEFAULT_BLOCK_SIZE)]
    block_size: u32,

    /// Advanced: the strong hash's seed, instead of a random one (for
    /// reproducible indexes; a known seed lets whoever writes data into a
    /// later image aim a hash collision at this index, see spec/INDEX.md 7.3).
    #[arg(long, value_name = "N", hide_short_help = true)]
    seed: Option<u64>,
}

/// Runs `mkpatch index`.
/// `cache` comes from the global `--cache` and `--no-cache`.
pub(crate) fn run_index(
    args: &IndexArgs,
    cache: Option<CacheOptions>,
    quiet: bool,
) -> Result<(), Failure> {
    let image = &args.image;
    if is_dash(image) {
        return Err(anyhow!(
            "IMAGE cannot be `-`: mkpatch reads images at random offsets; save the data to a file first"
        )
        .into());
    }
    let dest = destination(INDEX, args.output.as_deref())?;
    check_input("IMAGE", image)?;
    let mut inputs = vec![("IMAGE", image.as_path())];
    if let Some(key) = &args.sign {
        inputs.push(("the --sign key file", key.as_path()));
    }
    refuse_output_is_input(INDEX, &dest, &inputs)?;
    refuse_key_file(INDEX, &dest)?;
    let mut opts = IndexOptions {
        threads: args.threads.map_or(0, |n| n as usize),
        block_size: args.block_size,
        seed: args.seed,
        cache,
        ..IndexOptions::default()
    };
    if let Some(path) = &args.sign {
        opts.signing_key = Some(read_secret_key(path)?);
    }
    // The summary goes to logs too; the progress line only to a terminal.
    let summarize = !quiet && !matches!(dest, Dest::Stderr);
    let show = summarize && io::stderr().is_terminal();
    let progress = progress_line(show);
    let start = Instant::now();
    let before = [Stamp::of("IMAGE", image)?];
    let make = |out: &mut dyn Write, spool: Option<PathBuf>| {
        let opts = IndexOptions {
            spool_dir: spool.or_else(|| opts.spool_dir.clone()),
            ..opts.clone()
        };
        make_index(image, out, &opts, &progress)
    };
    let unchanged_file = match &dest {
        Dest::File(path) => already_there(path, image, &opts, &before)?,
        _ => None,
    };
    let summary = match (unchanged_file, &dest) {
        (Some(summary), _) => summary,
        (None, Dest::Stdout) => write_direct(INDEX, io::stdout().lock(), "stdout", &before, make)?,
        (None, Dest::Stderr) => write_direct(INDEX, io::stderr().lock(), "stderr", &before, make)?,
        (None, Dest::Stream(path)) => write_stream(INDEX, path, &before, make)?,
        (None, Dest::File(path)) => write_file(INDEX, path, &before, make)?,
    };
    if summarize {
        let clear = if show { "\r\x1b[2K" } else { "" };
        say!(
            "{clear}{}",
            summary_line(&summary, start.elapsed().as_secs_f64())
        );
    }
    for warning in &summary.cache.warnings {
        say!("mkpatch: warning: hash cache: {warning}");
    }
    Ok(())
}

/// When `path` already holds, byte for byte, the index that the hash cache
/// has for the unchanged `image` (the same seed, so the same file): that
/// index's summary, after making sure the file is on disk and setting its
/// mtime to now, as a rewrite would. Writing it again would replace it with
/// the same bytes at the cost of writing and syncing them (5 MiB per GiB of
/// image) and freeing the old copy, which is most of what indexing an
/// unchanged image again costs. `None` (write it as usual) otherwise.
fn already_there(
    path: &Path,
    image: &Path,
    opts: &IndexOptions,
    before: &[Stamp],
) -> Result<Option<IndexSummary>, Failure> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    let mut same = SameAs {
        file: &file,
        buf: Vec::new(),
    };
    let summary = match make_index_from_cache(image, &mut same, opts) {
        Ok(Some(s)) => s,
        // Not cached, different, or unreadable: written as usual.
        Ok(None) | Err(_) => return Ok(None),
    };
    let mut rest = [0u8; 1];
    if !matches!(same.file.read(&mut rest), Ok(0)) {
        return Ok(None);
    }
    unchanged(before, "the index was left as it was")?;
    if file.sync_all().is_err() || file.set_modified(std::time::SystemTime::now()).is_err() {
        return Ok(None);
    }
    Ok(Some(summary))
}

/// A writer that writes nothing: it fails at the first byte that differs
/// from what `file` holds at that place.
struct SameAs<R> {
    file: R,
    buf: Vec<u8>,
}

impl<R: Read> Write for SameAs<R> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // A MiB at a time: the index comes in one write of all its entries.
        let n = bytes.len().min(1 << 20);
        self.buf.resize(n, 0);
        self.file.read_exact(&mut self.buf)?;
        if self.buf != bytes[..n] {
            return Err(io::Error::other("differs"));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn summary_line(s: &IndexSummary, secs: f64) -> String {
    let pct = if s.old_len == 0 {
        0.0
    } else {
        s.index_len as f64 * 100.0 / s.old_len as f64
    };
    format!(
        "mkpatch: image {} -> index {} ({pct:.2}%; {} blocks of {}{}) in {secs:.2} s",
        human_bytes(s.old_len),
        human_bytes(s.index_len),
        s.blocks,
        s.block_size,
        if s.cache.hit {
            ", from the hash cache"
        } else {
            ""
        },
    )
}

/// The public keys in `paths` (key files made by `mkpatch keygen`).
pub(crate) fn trusted_keys(paths: &[PathBuf]) -> Result<Vec<[u8; 32]>, Failure> {
    paths.iter().map(|p| read_public_key(p)).collect()
}

fn read_public_key(path: &Path) -> Result<[u8; 32], Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    Ok(parse_key_file(&text, KeyKind::Public).with_context(|| format!("{}", path.display()))?)
}
