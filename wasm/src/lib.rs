//! anypatch in the browser: wasm-bindgen bindings over the same no_std
//! engine (`anypatch-apply`) that the `applypatch` CLI drives. Nothing here
//! applies a patch a second way; it only carries bytes between JavaScript
//! and the engine.
//!
//! Three classes:
//! - [`PatchSession`]: the streaming apply. Feed patch slices, answer
//!   old-range requests (possibly after an `await`), receive verified
//!   output slices. Memory is the engine's bound (about 31 MiB) plus the
//!   slices the caller hands in, whatever the image size.
//! - [`PatchMap`]: reads only the header and the page chain of a patch, by
//!   asking for byte ranges, and sums its extents into buckets for a picture
//!   of what the patch copies, moves, changes and zeros.
//! - [`Hasher`]: streaming BLAKE3, to hash an expected new image.
//!
//! The driving loop in JavaScript:
//!
//! ```text
//! const s = new PatchSession(old.size);
//! for (;;) {
//!   switch (s.poll()) {
//!     case 'need_input': { const b = await nextPatchSlice(); b ? s.feed(b) : s.end(); break; }
//!     case 'header':     show(JSON.parse(s.header_json())); break;
//!     case 'read_old':   s.provide_old(await readOld(s.offset, s.length)); break;
//!     case 'write':      await sink.write(s.offset, s.write_data()); break;
//!     case 'zero':       if (sink) await sink.zero(s.offset, s.length); break; // 16 MiB steps, even when verifying only
//!     case 'done':       return JSON.parse(s.summary_json());
//!     case 'error':      throw new Error(s.error_message());
//!   }
//! }
//! ```
//!
//! Errors are the engine's `Display` sentences, the ones `applypatch` prints.
#![deny(unsafe_code)] // wasm-bindgen's generated glue allows it locally; no hand-written unsafe.

mod map;
mod session;

use anypatch_apply::format::{key_id, parse_key_file, Header, Hex, KeyKind, PreambleRepr};
use anypatch_apply::{ApplyError, ErrorClass, Signer, Summary};
use serde::Serialize;
use wasm_bindgen::prelude::*;

pub use map::{Buckets, Layout};
pub use session::{Failure, Request, Session};

/// Buckets of the picture when the caller does not say.
const DEFAULT_BUCKETS: usize = 4096;

/// The crate version and the patch format major version it reads.
#[wasm_bindgen]
pub fn version() -> String {
    format!(
        "anypatch-wasm {} (format {}.x)",
        env!("CARGO_PKG_VERSION"),
        anypatch_apply::format::VERSION_MAJOR
    )
}

/// The streaming apply. See the crate docs for the driving loop; every
/// method says when it may be called.
#[wasm_bindgen]
#[derive(Debug)]
pub struct PatchSession {
    inner: Session,
    trusted: Vec<[u8; 32]>,
}

#[wasm_bindgen]
impl PatchSession {
    /// A session that applies a patch to an old file of `old_len` bytes.
    /// `map_buckets` (default 4096) sets the resolution of the extent map.
    #[wasm_bindgen(constructor)]
    pub fn new(old_len: f64, map_buckets: Option<u32>) -> Result<PatchSession, JsError> {
        let old_len = to_u64(old_len, "old_len")?;
        let buckets = map_buckets.map_or(DEFAULT_BUCKETS, |n| n as usize);
        Ok(Self {
            inner: Session::new(old_len, buckets),
            trusted: Vec::new(),
        })
    }

    /// Requires a valid signature by this key (or another trusted one). Give
    /// the text of an `anypatch public-key v1 ed25519 ...` file, as for
    /// `applypatch --trusted-key`. Call before the first `poll`. Returns
    /// the key id.
    pub fn trust_key_file(&mut self, text: &str) -> Result<String, JsError> {
        let key =
            parse_key_file(text, KeyKind::Public).map_err(|e| JsError::new(&e.to_string()))?;
        self.trust(key)
    }

    /// Like `trust_key_file`, with the 32 raw bytes of the public key.
    pub fn trust_public_key(&mut self, key: &[u8]) -> Result<String, JsError> {
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| JsError::new("an Ed25519 public key is 32 bytes"))?;
        self.trust(key)
    }

    fn trust(&mut self, key: [u8; 32]) -> Result<String, JsError> {
        self.trusted.push(key);
        if !self.inner.require_signature(&self.trusted) {
            self.trusted.pop();
            return Err(JsError::new(
                "trusted keys must be given before the first poll",
            ));
        }
        Ok(hex(&key_id(&key)))
    }

    /// With `false`, `poll` does not stop for `write`: verify only, with no
    /// copies of the output. Default `true`. `zero` is still reported (at
    /// most 16 MiB each), so a long zero run returns control to the caller.
    pub fn set_report_writes(&mut self, on: bool) {
        self.inner.set_report_writes(on);
    }

    /// Refuses a patch whose new image is larger than `max` bytes, before
    /// the old file is read: the error class is then `too_large`. Call before
    /// the first `poll`. Default: no limit.
    pub fn set_max_new_len(&mut self, max: f64) -> Result<(), JsError> {
        let max = to_u64(max, "max_new_len")?;
        if !self.inner.set_max_new_len(max) {
            return Err(JsError::new(
                "the size limit must be set before the first poll",
            ));
        }
        Ok(())
    }

    /// Advances the apply until it needs the caller, and says what:
    /// `need_input`, `header`, `read_old`, `write`, `zero`, `done` or `error`.
    /// Repeats the same answer while a `need_input` or `read_old` is unanswered.
    pub fn poll(&mut self) -> String {
        kind(&self.inner.poll()).into()
    }

    /// The offset of the current `read_old`, `write` or `zero`.
    #[wasm_bindgen(getter)]
    pub fn offset(&self) -> f64 {
        match self.inner.request() {
            Request::ReadOld { offset, .. }
            | Request::Write { offset, .. }
            | Request::Zero { offset, .. } => offset as f64,
            _ => 0.0,
        }
    }

    /// The byte count of the current `read_old`, `write` or `zero`.
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> f64 {
        match self.inner.request() {
            Request::ReadOld { len, .. } | Request::Write { len, .. } => len as f64,
            Request::Zero { len, .. } => len as f64,
            _ => 0.0,
        }
    }

    /// Gives the next slice of the patch after `need_input`. Any size works;
    /// the session keeps the slice until the engine has taken all of it.
    /// Returns the slice's length.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, JsError> {
        if !self.inner.feed(bytes) {
            return Err(JsError::new("feed is only for answering need_input"));
        }
        Ok(bytes.len())
    }

    /// Says the patch has ended, after `need_input`.
    pub fn end(&mut self) -> Result<(), JsError> {
        if !self.inner.end() {
            return Err(JsError::new("end is only for answering need_input"));
        }
        Ok(())
    }

    /// Answers `read_old` with exactly `length` bytes of the old file at `offset`.
    pub fn provide_old(&mut self, bytes: Vec<u8>) -> Result<(), JsError> {
        if !self.inner.provide_old(bytes) {
            return Err(JsError::new("provide_old is only for answering read_old"));
        }
        Ok(())
    }

    /// A copy of the verified bytes of the current `write`.
    pub fn write_data(&self) -> js_sys::Uint8Array {
        js_sys::Uint8Array::from(&*self.inner.write_data())
    }

    /// After `error`: the sentence `applypatch` prints for the same failure.
    pub fn error_message(&self) -> Option<String> {
        match self.inner.request() {
            Request::Failed(f) => Some(f.to_string()),
            _ => None,
        }
    }

    /// After `error`: `corrupt_patch`, `wrong_base`, `unsupported`,
    /// `not_in_place`, `untrusted`, `too_large` (above `set_max_new_len`), or
    /// `io` (the old file changed size).
    pub fn error_class(&self) -> Option<String> {
        match self.inner.request() {
            Request::Failed(Failure::Apply(ApplyError::NewTooLarge { .. })) => {
                Some("too_large".into())
            }
            Request::Failed(Failure::Apply(e)) => Some(class(e.class()).into()),
            Request::Failed(Failure::ShortOld { .. }) => Some("io".into()),
            _ => None,
        }
    }

    /// After `header`: the header and the signatures, as JSON.
    pub fn header_json(&self) -> Option<String> {
        let header = self.inner.header()?;
        let layout = self.inner.layout();
        Some(header_json(
            layout.preamble(),
            &header,
            Some(&self.inner.signers()),
        ))
    }

    /// After `done`: new length and hash, patch hash, bytes written and zeroed, as JSON.
    pub fn summary_json(&self) -> Option<String> {
        match self.inner.request() {
            Request::Done(s) => Some(summary_json(&s)),
            _ => None,
        }
    }

    /// Old bytes hashed so far while verifying the base.
    #[wasm_bindgen(getter)]
    pub fn base_checked(&self) -> f64 {
        self.inner.progress().base_checked as f64
    }

    /// New bytes produced so far.
    #[wasm_bindgen(getter)]
    pub fn new_done(&self) -> f64 {
        self.inner.progress().new_done as f64
    }

    /// Patch bytes consumed so far.
    #[wasm_bindgen(getter)]
    pub fn patch_consumed(&self) -> f64 {
        self.inner.progress().patch_consumed as f64
    }

    /// The extent map from the pages read so far: 4 numbers per bucket, bytes
    /// unchanged, moved, data and zero. Empty before the header.
    pub fn map_buckets(&self) -> Vec<f64> {
        self.inner
            .layout()
            .buckets()
            .map(Buckets::flat)
            .unwrap_or_default()
    }

    /// Totals of the extent map, as JSON.
    pub fn map_json(&self) -> String {
        map_json(&self.inner.layout())
    }
}

/// Reads a patch's header and page chain by asking for byte ranges (never a
/// payload), and sums the extents into buckets. Drive it with
/// `while (m.wanted_length > 0) m.give(m.wanted_offset, await read(m.wanted_offset, m.wanted_length))`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct PatchMap {
    layout: Layout,
}

#[wasm_bindgen]
impl PatchMap {
    /// A map with `buckets` buckets (default 4096).
    #[wasm_bindgen(constructor)]
    pub fn new(buckets: Option<u32>) -> PatchMap {
        Self {
            layout: Layout::new(buckets.map_or(DEFAULT_BUCKETS, |n| n as usize)),
        }
    }

    /// Patch offset of the next bytes wanted.
    #[wasm_bindgen(getter)]
    pub fn wanted_offset(&self) -> f64 {
        self.layout.wanted().map_or(0.0, |(at, _)| at as f64)
    }

    /// How many bytes are wanted; 0 when the map is complete or failed.
    #[wasm_bindgen(getter)]
    pub fn wanted_length(&self) -> f64 {
        self.layout.wanted().map_or(0.0, |(_, len)| len as f64)
    }

    /// Gives patch bytes starting at patch offset `offset`.
    pub fn give(&mut self, offset: f64, bytes: &[u8]) -> Result<(), JsError> {
        self.layout.give(to_u64(offset, "offset")?, bytes);
        Ok(())
    }

    /// Says the patch ended before the wanted range (a short read): the map
    /// then fails as the engine would on a truncated patch.
    pub fn truncated(&mut self) {
        self.layout.truncated();
    }

    /// Why the walk stopped early, as the engine would say it.
    pub fn error_message(&self) -> Option<String> {
        self.layout.error().map(str::to_owned)
    }

    /// The header (without signature checks: those happen in `PatchSession`), as JSON.
    pub fn header_json(&self) -> Option<String> {
        let header = self.layout.header()?;
        Some(header_json(self.layout.preamble(), header, None))
    }

    /// 4 numbers per bucket: bytes unchanged, moved, data and zero.
    pub fn buckets(&self) -> Vec<f64> {
        self.layout.buckets().map(Buckets::flat).unwrap_or_default()
    }

    /// Totals, counts and pages, as JSON.
    pub fn map_json(&self) -> String {
        map_json(&self.layout)
    }
}

/// Streaming BLAKE3 (with wasm32 SIMD), for the expected new image.
#[wasm_bindgen]
#[derive(Debug, Default)]
pub struct Hasher(blake3::Hasher);

#[wasm_bindgen]
impl Hasher {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Hasher {
        Self::default()
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash of everything added, as 64 hex digits.
    pub fn finalize(&self) -> String {
        hex(self.0.finalize().as_bytes())
    }
}

fn to_u64(v: f64, what: &str) -> Result<u64, JsError> {
    const MAX_SAFE: f64 = 9_007_199_254_740_991.0;
    if (0.0..=MAX_SAFE).contains(&v) && v.fract() == 0.0 {
        Ok(v as u64)
    } else {
        Err(JsError::new(&format!(
            "{what} must be a whole number of bytes, not {v}"
        )))
    }
}

fn kind(r: &Request) -> &'static str {
    match r {
        Request::Start => "start",
        Request::NeedInput => "need_input",
        Request::Header => "header",
        Request::ReadOld { .. } => "read_old",
        Request::Write { .. } => "write",
        Request::Zero { .. } => "zero",
        Request::Done(_) => "done",
        Request::Failed(_) => "error",
    }
}

fn class(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::CorruptPatch => "corrupt_patch",
        ErrorClass::WrongBase => "wrong_base",
        ErrorClass::Unsupported => "unsupported",
        ErrorClass::NotInPlace => "not_in_place",
        ErrorClass::Untrusted => "untrusted",
    }
}

/// The header and the signatures (`header_json`).
#[derive(Serialize)]
struct HeaderJson<'a> {
    version: String,
    required_features: u32,
    old_len: u64,
    new_len: u64,
    old_hash: String,
    new_hash: String,
    block_size: u32,
    segment_max: u32,
    codec: String,
    flags: u32,
    in_place_safe: bool,
    patch_len: u64,
    extent_count: u64,
    segment_count: u64,
    producer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    signers: Option<Vec<SignerJson>>,
}

#[derive(Serialize)]
struct SignerJson {
    key_id: String,
    public_key: String,
    valid: bool,
    trusted: bool,
}

/// A finished apply (`summary_json`).
#[derive(Serialize)]
struct SummaryJson {
    new_len: u64,
    new_hash: Option<String>,
    patch_hash: String,
    bytes_written: u64,
    bytes_zeroed: u64,
}

/// The extent map's totals (`map_json`), kinds in the buckets' order.
#[derive(Serialize)]
struct MapJson<'a> {
    kinds: [&'static str; 4],
    totals: [u64; 4],
    counts: [u64; 4],
    buckets: usize,
    pages: u64,
    complete: bool,
    error: Option<&'a str>,
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain structs of numbers and strings serialize")
}

fn hex(bytes: &[u8]) -> String {
    Hex(bytes).to_string()
}

fn header_json(pre: Option<&PreambleRepr>, h: &Header, signers: Option<&[Signer]>) -> String {
    let codec = match h.codec {
        0 => "stored".to_owned(),
        1 => "zstd".to_owned(),
        2 => "zstd with old-byte history".to_owned(),
        3 => "zstd with data history".to_owned(),
        n => format!("codec {n}"),
    };
    json(&HeaderJson {
        version: pre.map_or_else(String::new, |p| format!("{}.{}", p.major, p.minor)),
        required_features: pre.map_or(0, |p| p.required_features),
        old_len: h.old_len,
        new_len: h.new_len,
        old_hash: hex(&h.old_hash),
        new_hash: hex(&h.new_hash),
        block_size: h.block_size,
        segment_max: h.segment_max,
        codec,
        flags: h.flags,
        in_place_safe: h.flags & anypatch_apply::format::FLAG_IN_PLACE_SAFE != 0,
        patch_len: h.patch_len,
        extent_count: h.extent_count,
        segment_count: h.segment_count,
        producer: &h.producer,
        signers: signers.map(|signers| {
            signers
                .iter()
                .map(|s| SignerJson {
                    key_id: hex(&s.key_id),
                    public_key: hex(&s.public_key),
                    valid: s.valid,
                    trusted: s.trusted,
                })
                .collect()
        }),
    })
}

fn summary_json(s: &Summary) -> String {
    json(&SummaryJson {
        new_len: s.new_len,
        new_hash: s.new_hash.map(|h| hex(&h)),
        patch_hash: hex(&s.patch_hash),
        bytes_written: s.bytes_written,
        bytes_zeroed: s.bytes_zeroed,
    })
}

fn map_json(layout: &Layout) -> String {
    let (totals, counts, buckets) = layout
        .buckets()
        .map_or(([0; 4], [0; 4], 0), |b| (b.totals, b.counts, b.len()));
    json(&MapJson {
        kinds: ["unchanged", "moved", "data", "zero"],
        totals,
        counts,
        buckets,
        pages: layout.pages(),
        complete: layout.finished(),
        error: layout.error(),
    })
}
