//! `mkpatch inspect`: what a patch contains, as text or one JSON object.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use anyhow::{anyhow, Context};
use anypatch_format::{Hex, VERSION_MAJOR};
use anypatch_producer::inspect::{inspect, InspectError, Inspection};

use crate::{is_dash, write_err, Failure};

pub(crate) fn run_inspect(path: &Path, json: bool) -> Result<(), Failure> {
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
                Hex(&bad.key_id)
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
        "payload       ops {} bytes, data {} bytes\n",
        r.codecs.ops_bytes, r.codecs.data_bytes
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
        "old": { "len": h.old_len, "blake3": Hex(&h.old_hash).to_string() },
        "new": { "len": h.new_len, "blake3": Hex(&h.new_hash).to_string() },
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
            "key_id": Hex(&s.key_id).to_string(),
            "public_key": Hex(&s.public_key).to_string(),
            "verifies": s.valid,
        })).collect::<Vec<_>>(),
        "patch_len": r.patch_len,
        "patch_hash": Hex(&r.patch_hash).to_string(),
        "patch_hash_ok": r.patch_hash_ok,
    });
    if let Some(error) = error {
        object["error_class"] = "corrupt_patch".into();
        object["error"] = error.into();
    }
    object.to_string()
}
