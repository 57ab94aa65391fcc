//! `mkpatch inspect`: what a patch contains, as text or one JSON object.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use anyhow::{anyhow, Context};
use anypatch_format::{Hex, VERSION_MAJOR};
use anypatch_inspect::{inspect_mapped, InspectError, Inspection, KindCount, Refused};
use anypatch_producer::ProduceError;
use serde::Serialize;

use crate::dest::{destination, refuse_key_file, refuse_output_is_input, Dest, MAP};
use crate::inputs::Stamp;
use crate::write::{write_direct, write_file, write_stream};
use crate::{is_dash, write_err, Failure};

pub(crate) fn run_inspect(path: &Path, json: bool, map: Option<&Path>) -> Result<(), Failure> {
    // The map's output is refused before anything is read, by the rules of
    // `-o`: never the patch itself (through a link or stdin too), a key, a
    // directory or a disk.
    let map_dest = match map {
        Some(out) => {
            let dest = destination(MAP, Some(out))?;
            let patch = if is_dash(path) {
                Path::new("/dev/stdin")
            } else {
                path
            };
            refuse_output_is_input(MAP, &dest, &[("PATCH", patch)])?;
            refuse_key_file(MAP, &dest)?;
            Some(dest)
        }
        None => None,
    };
    let before = if is_dash(path) {
        Vec::new()
    } else {
        vec![Stamp::of("PATCH", path)?]
    };
    let mut reader: Box<dyn Read> = if is_dash(path) {
        Box::new(io::stdin().lock())
    } else {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Box::new(f)
    };
    let mut reader = BufReader::with_capacity(1 << 20, &mut reader);
    // A patch refused after its header is read still gets its report, up
    // to where it was refused; the refusal is the verdict (exit 2).
    let buckets = map.map(|_| crate::map::BUCKETS);
    let (report, verdict) = match inspect_mapped(&mut reader, buckets) {
        Ok(report) => (report, None),
        Err(Refused {
            error: e @ InspectError::Io(_),
            ..
        }) => {
            return Err(Failure::Usage(
                anyhow!(e).context(format!("{}", path.display())),
            ))
        }
        Err(Refused {
            error,
            so_far: Some(report),
        }) => (*report, Some(error.to_string())),
        Err(Refused {
            error,
            so_far: None,
        }) => return Err(Failure::Corrupt(anyhow!(error))),
    };
    let text = if json {
        InspectJson::report(&report, verdict.as_deref()).to_line() + "\n"
    } else {
        text_report(&report)
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(write_err)?;
    match verdict {
        None => write_map(map_dest.as_ref(), &before, &report),
        // The JSON object already carries the error; stderr gets it too.
        Some(why) if json => {
            say!("mkpatch: {why}");
            Err(Failure::Reported(2))
        }
        Some(why) => Err(Failure::Corrupt(anyhow!(why))),
    }
}

/// `--map FILE`: the change map as SVG, for a patch that checked out,
/// written as `-o` writes a patch (a file appears whole or not at all).
fn write_map(dest: Option<&Dest>, before: &[Stamp], report: &Inspection) -> Result<(), Failure> {
    let (Some(dest), Some(map)) = (dest, &report.map) else {
        return Ok(());
    };
    let svg = crate::map::svg(map, report.pages);
    let make = |out: &mut dyn Write, _spool| {
        out.write_all(svg.as_bytes())
            .map_err(|source| ProduceError::Write { source })
    };
    match dest {
        Dest::Stdout => write_direct(MAP, io::stdout().lock(), "stdout", before, make),
        Dest::Stderr => write_direct(MAP, io::stderr().lock(), "stderr", before, make),
        Dest::Stream(path) => write_stream(MAP, path, before, make),
        Dest::File(path) => write_file(MAP, path, before, make),
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
    let kind = |name: &str, k: &KindCount| {
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
        Hex(&h.old_hash)
    );
    s += &format!(
        "new           {} bytes, blake3 {}\n",
        h.new_len,
        Hex(&h.new_hash)
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
        "payload       ops {} bytes, data {} bytes; {} of {} data blocks decoded\n",
        r.codecs.ops_bytes, r.codecs.data_bytes, r.codecs.decoded, r.data.extents
    );
    if r.signers.is_empty() {
        s += "signature     none (unsigned)\n";
    }
    for signer in &r.signers {
        s += &format!(
            "signature     ed25519 by key {} ({})\n",
            Hex(&signer.key_id),
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
        Hex(&r.patch_hash),
        if r.patch_hash_ok { "ok" } else { "not checked" }
    );
    s
}

/// The `inspect --json` object, the one schema of `mkpatch inspect --json`:
/// `ok` and `exit_code` always; what the patch contains when it could be
/// read; `error_class` and `error` on a failure. Field names and types are
/// a contract with scripts (tests/tests/ check them); add fields, never
/// rename one.
#[derive(Debug, Serialize)]
pub(crate) struct InspectJson<'a> {
    ok: bool,
    exit_code: u8,
    #[serde(flatten)]
    report: Option<ReportJson<'a>>,
    /// `usage`, `io` or `corrupt_patch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error_class: Option<&'a str>,
    /// The sentence also printed on stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl<'a> InspectJson<'a> {
    /// The object for a failure with no report (the patch could not be
    /// read, or the command line was wrong).
    pub(crate) fn failure(exit_code: u8, error_class: &'a str, error: &'a str) -> Self {
        Self {
            ok: false,
            exit_code,
            report: None,
            error_class: Some(error_class),
            error: Some(error),
        }
    }

    /// The object for a patch that was read; `error` is why it is refused
    /// (exit 2), if it is.
    fn report(r: &'a Inspection, error: Option<&'a str>) -> Self {
        let h = &r.header;
        let kind = |k: &KindCount| KindJson {
            extents: k.extents,
            bytes: k.bytes,
        };
        let c = &r.codecs;
        Self {
            ok: error.is_none(),
            exit_code: if error.is_none() { 0 } else { 2 },
            report: Some(ReportJson {
                format: FormatJson {
                    major: r.major,
                    minor: r.minor,
                    supported_major: VERSION_MAJOR,
                },
                required_features: r.required_features,
                producer: &h.producer,
                old: FileJson {
                    len: h.old_len,
                    blake3: Hex(&h.old_hash).to_string(),
                },
                new: FileJson {
                    len: h.new_len,
                    blake3: Hex(&h.new_hash).to_string(),
                },
                block_size: h.block_size,
                segment_max: h.segment_max,
                codec: h.codec,
                flags: h.flags,
                in_place_safe: r.in_place_safe(),
                extent_count: h.extent_count,
                segment_count: h.segment_count,
                pages: r.pages,
                page_bytes: r.page_bytes,
                extents: ExtentsJson {
                    unchanged: kind(&r.unchanged),
                    moved: kind(&r.moved),
                    zero: kind(&r.zero),
                    data: kind(&r.data),
                },
                ops: OpsJson {
                    copy: r.ops.copy,
                    literal: r.ops.literal,
                    delta: r.ops.delta,
                    zero: r.ops.zero,
                },
                segments: SegmentsJson {
                    stored: c.stored,
                    zstd: c.zstd,
                    zstd_prefix: c.zstd_prefix,
                    zstd_history: c.zstd_history,
                    packed_ops: c.packed_ops,
                    inline_ops: c.inline_ops,
                    ops_bytes: c.ops_bytes,
                    data_bytes: c.data_bytes,
                    decoded: c.decoded,
                },
                signature_len: r.signature_len,
                signers: r
                    .signers
                    .iter()
                    .map(|s| SignerJson {
                        key_id: Hex(&s.key_id).to_string(),
                        public_key: Hex(&s.public_key).to_string(),
                        verifies: s.valid,
                    })
                    .collect(),
                patch_len: r.patch_len,
                patch_hash: Hex(&r.patch_hash).to_string(),
                patch_hash_ok: r.patch_hash_ok,
            }),
            error_class: error.map(|_| "corrupt_patch"),
            error,
        }
    }

    /// The object as one line of text, without the newline.
    pub(crate) fn to_line(&self) -> String {
        serde_json::to_string(self).expect("plain structs of numbers and strings serialize")
    }
}

/// What a readable patch contains (see [`InspectJson`]).
#[derive(Debug, Serialize)]
struct ReportJson<'a> {
    format: FormatJson,
    /// The must-understand feature bits.
    required_features: u32,
    producer: &'a str,
    old: FileJson,
    new: FileJson,
    block_size: u32,
    segment_max: u32,
    /// The header's codec byte.
    codec: u8,
    flags: u32,
    in_place_safe: bool,
    extent_count: u64,
    segment_count: u64,
    pages: u64,
    page_bytes: u64,
    extents: ExtentsJson,
    ops: OpsJson,
    segments: SegmentsJson,
    signature_len: u32,
    signers: Vec<SignerJson>,
    patch_len: u64,
    patch_hash: String,
    /// Whether the walk reached the end: the trailer's hash matches the
    /// patch and nothing follows it.
    patch_hash_ok: bool,
}

#[derive(Debug, Serialize)]
struct FormatJson {
    major: u16,
    minor: u16,
    /// The major version this mkpatch reads.
    supported_major: u16,
}

/// The old or the new file.
#[derive(Debug, Serialize)]
struct FileJson {
    len: u64,
    /// Lowercase hex.
    blake3: String,
}

#[derive(Debug, Serialize)]
struct KindJson {
    extents: u64,
    bytes: u64,
}

/// Extents by kind: copies at delta 0, other copies, zeros, data.
#[derive(Debug, Serialize)]
struct ExtentsJson {
    unchanged: KindJson,
    moved: KindJson,
    zero: KindJson,
    data: KindJson,
}

#[derive(Debug, Serialize)]
struct OpsJson {
    copy: u64,
    literal: u64,
    delta: u64,
    zero: u64,
}

/// Data segments by codec, and where their ops blocks are.
#[derive(Debug, Serialize)]
struct SegmentsJson {
    stored: u64,
    zstd: u64,
    zstd_prefix: u64,
    zstd_history: u64,
    packed_ops: u64,
    inline_ops: u64,
    ops_bytes: u64,
    data_bytes: u64,
    /// Data blocks decoded and checked; the rest (codec 0x02) need the old file.
    decoded: u64,
}

#[derive(Debug, Serialize)]
struct SignerJson {
    /// Lowercase hex of the first 8 bytes of the key's BLAKE3.
    key_id: String,
    public_key: String,
    verifies: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure has `ok`, `exit_code`, `error_class` and `error`, and none
    /// of the report's fields (not even as nulls).
    #[test]
    fn a_failure_is_four_fields() {
        assert_eq!(
            InspectJson::failure(1, "io", "cannot open \"p\"").to_line(),
            r#"{"ok":false,"exit_code":1,"error_class":"io","error":"cannot open \"p\""}"#
        );
    }
}
