//! `spec/FORMAT.md` agrees with the code: its version lines, constants
//! table, feature bits, byte tables (plain and compact pages), encoding
//! examples, codec table, data history example, memory table, hex dumps,
//! worked example, error classes and vector table are parsed out of the Markdown and checked against
//! `anypatch-format`, `anypatch-apply` and the checked-in vectors. Change the
//! spec and the code together.

use std::collections::BTreeSet;
use std::fs;

use anypatch_apply::{ApplyError, ErrorClass};
use anypatch_format::{
    Codec, Extent, FormatError, Hash, Header, Op, Page, PageRef, PreambleRepr, PrefixRef,
    SegmentEntry, SignatureBlock, SignatureEntry, Trailer, APPLIER_WORST_CASE_MEMORY,
    FEATURE_COMPACT_PAGES, FEATURE_DATA_HISTORY, FEATURE_OLD_PREFIX, FEATURE_PACKED_OPS,
    FLAG_IN_PLACE_SAFE, HASH_LEN, KNOWN_REQUIRED_FEATURES, MAGIC, MAX_HEADER_LEN, MAX_HISTORY_LEN,
    MAX_OPS_LEN, MAX_PAGE_EXTENTS, MAX_PAGE_LEN, MAX_PREFIX_LEN, MAX_PRODUCER_LEN, MAX_SEGMENT_LEN,
    MAX_SIGNATURES, MAX_SIGNATURE_LEN, MAX_ZSTD_WINDOW, PACKED_OPS, PREAMBLE_LEN, SHORT_HASH_LEN,
    SIGNATURE_ENTRY_LEN, SIG_ALG_ED25519, TRAILER_LEN, TRAILER_MAGIC, VERSION_MAJOR, VERSION_MINOR,
};
use anypatch_tests::root;

/// A Markdown table, with the name of the last `hexdump` block and the last
/// heading before it.
#[derive(Debug)]
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    after_hexdump: Option<String>,
    heading: String,
}

/// A fenced block with the info string `hexdump name=NAME [prefix]`.
#[derive(Debug)]
struct HexDump {
    name: String,
    prefix: bool,
    bytes: Vec<u8>,
}

struct Spec {
    text: String,
    tables: Vec<Table>,
    dumps: Vec<HexDump>,
}

fn spec() -> Spec {
    let path = root().join("spec/FORMAT.md");
    let text = fs::read_to_string(&path).expect("spec/FORMAT.md is readable");
    let (mut tables, mut dumps) = (Vec::new(), Vec::<HexDump>::new());
    let mut heading = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_string();
        } else if let Some(info) = line.strip_prefix("```") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            let mut words = info.split_whitespace();
            if words.next() == Some("hexdump") {
                let mut name = None;
                let mut prefix = false;
                for w in words {
                    match w.strip_prefix("name=") {
                        Some(n) => name = Some(n.to_string()),
                        None if w == "prefix" => prefix = true,
                        None => panic!("unknown hexdump attribute {w:?}"),
                    }
                }
                let name = name.expect("a hexdump block has name=VECTOR");
                let bytes = parse_xxd(&name, &body);
                dumps.push(HexDump {
                    name,
                    prefix,
                    bytes,
                });
            }
        } else if line.starts_with('|') {
            let mut block = vec![line];
            while let Some(l) = lines.next_if(|l| l.starts_with('|')) {
                block.push(l);
            }
            assert!(block.len() >= 2, "table without separator: {line}");
            tables.push(Table {
                header: cells(block[0]),
                rows: block[2..].iter().map(|l| cells(l)).collect(),
                after_hexdump: dumps.last().map(|d| d.name.clone()),
                heading: heading.clone(),
            });
        }
    }
    Spec {
        text,
        tables,
        dumps,
    }
}

/// The cells of a table row, trimmed, with surrounding backticks removed.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .split('|')
        .map(|c| c.trim().trim_matches('`').to_string())
        .collect()
}

impl Spec {
    /// Tables whose header starts with `columns`.
    fn tables(&self, columns: &[&str]) -> Vec<&Table> {
        self.tables
            .iter()
            .filter(|t| {
                t.header.len() >= columns.len() && t.header.iter().zip(columns).all(|(h, c)| h == c)
            })
            .collect()
    }

    fn table(&self, columns: &[&str]) -> &Table {
        let found = self.tables(columns);
        assert_eq!(
            found.len(),
            1,
            "FORMAT.md needs exactly one table {columns:?}"
        );
        found[0]
    }
}

/// Decodes `xxd -g1` output: `OFFSET: ` then up to 16 bytes in hex, each
/// followed by a space, then the text column.
fn parse_xxd(name: &str, lines: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        let (offset, rest) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("{name}: not an xxd line: {line:?}"));
        let offset = u64::from_str_radix(offset, 16).expect("xxd offset is hex");
        assert_eq!(offset, out.len() as u64, "{name}: xxd offset out of step");
        let hex_area: String = rest.chars().take(48).collect();
        let before = out.len();
        for tok in hex_area.split_whitespace() {
            assert_eq!(tok.len(), 2, "{name}: bad hex byte {tok:?} in {line:?}");
            out.push(u8::from_str_radix(tok, 16).expect("xxd byte is hex"));
        }
        assert!(
            (1..=16).contains(&(out.len() - before)),
            "{name}: bad line {line:?}"
        );
    }
    out
}

/// `0x…` as a number.
fn hex_number(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x")?.replace('_', "");
    u64::from_str_radix(&digits, 16).ok()
}

/// A decimal or `0x…` number.
fn number(s: &str) -> u64 {
    hex_number(s)
        .or_else(|| s.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("not a number: {s:?}"))
}

/// Space-separated two-digit hex bytes.
fn hex_bytes(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| {
            assert_eq!(b.len(), 2, "not a hex byte: {b:?}");
            u8::from_str_radix(b, 16).expect("hex byte")
        })
        .collect()
}

/// Lowercase hex without separators, as in index.json.
fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn vector_patch(name: &str) -> Vec<u8> {
    let path = root().join("spec/vectors").join(name).join("patch.anyp");
    fs::read(&path).unwrap_or_else(|_| panic!("{} is missing", path.display()))
}

fn index() -> Vec<serde_json::Value> {
    let text = fs::read_to_string(root().join("spec/vectors/index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json is JSON")
}

/// Reads postcard's varints, bytes and strings from a buffer, front to back,
/// as section 1 of the spec describes them.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        s
    }

    fn varint(&mut self) -> u64 {
        let mut out = 0u64;
        for i in 0..10 {
            let b = self.take(1)[0];
            out |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return out;
            }
        }
        panic!("varint longer than 10 bytes");
    }

    /// One wire item of a byte table's `type` column. `[u8; N]` takes N
    /// bytes, where N is a number or a field already decoded in `earlier`.
    /// `Extent × count` is as long as the `expected` encoding: the extents
    /// themselves are checked by the examples.
    fn item(&mut self, ty: &str, expected: &Value, earlier: &[(String, Value)]) -> Value {
        let ty = ty.replace('\\', "");
        match ty.as_str() {
            "varint u64" | "varint u32" => Value::Int(self.varint()),
            "zigzag i64" => {
                let v = self.varint();
                Value::Signed((v >> 1) as i64 ^ -((v & 1) as i64))
            }
            "u8" => Value::Int(self.take(1)[0].into()),
            "String" => {
                let n = self.varint() as usize;
                Value::Bytes(self.take(n).to_vec())
            }
            "Option<PageRef>" => {
                let start = self.at;
                if self.take(1)[0] == 1 {
                    self.varint();
                    self.take(32);
                }
                Value::Bytes(self.bytes[start..self.at].to_vec())
            }
            "Extent × count" => match expected {
                Value::Bytes(b) => Value::Bytes(self.take(b.len()).to_vec()),
                other => panic!("extents expected as bytes, not {other:?}"),
            },
            other => {
                let n = other
                    .strip_prefix("[u8; ")
                    .and_then(|t| t.strip_suffix(']'))
                    .unwrap_or_else(|| panic!("byte table type {other:?} is unknown to the test"));
                let n = n.parse::<usize>().unwrap_or_else(|_| {
                    match earlier.iter().find(|(name, _)| name == n) {
                        Some((_, Value::Int(v))) => *v as usize,
                        _ => panic!("type {other:?}: no earlier field {n}"),
                    }
                });
                Value::Bytes(self.take(n).to_vec())
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Value {
    Int(u64),
    Signed(i64),
    Bytes(Vec<u8>),
}

// (a) Every hex dump equals its vector's patch (or a prefix of it).
#[test]
fn hexdumps_match_vectors() {
    let spec = spec();
    assert!(!spec.dumps.is_empty(), "FORMAT.md has no hexdump block");
    for d in &spec.dumps {
        let patch = vector_patch(&d.name);
        if d.prefix {
            assert!(
                patch.starts_with(&d.bytes),
                "hexdump {} is not a prefix of its patch.anyp",
                d.name
            );
        } else {
            assert!(
                patch == d.bytes,
                "hexdump {} differs from spec/vectors/{}/patch.anyp (regenerate with `xxd -g1`)",
                d.name,
                d.name
            );
        }
        let made_by = index()
            .into_iter()
            .find(|v| v["name"] == d.name.as_str())
            .map(|v| v["made_by"].clone());
        assert_eq!(
            made_by,
            Some("builder".into()),
            "hexdump {}: use a builder vector, whose bytes do not change with the producer",
            d.name
        );
    }
}

/// The crate's integer constants, by name.
fn int_constant(name: &str) -> Option<u64> {
    Some(match name {
        "VERSION_MAJOR" => VERSION_MAJOR.into(),
        "VERSION_MINOR" => VERSION_MINOR.into(),
        "KNOWN_REQUIRED_FEATURES" => KNOWN_REQUIRED_FEATURES.into(),
        "FEATURE_OLD_PREFIX" => FEATURE_OLD_PREFIX.into(),
        "FEATURE_PACKED_OPS" => FEATURE_PACKED_OPS.into(),
        "FEATURE_COMPACT_PAGES" => FEATURE_COMPACT_PAGES.into(),
        "FEATURE_DATA_HISTORY" => FEATURE_DATA_HISTORY.into(),
        "PACKED_OPS" => PACKED_OPS.into(),
        "MAX_PREFIX_LEN" => MAX_PREFIX_LEN.into(),
        "MAX_HISTORY_LEN" => MAX_HISTORY_LEN.into(),
        "FLAG_IN_PLACE_SAFE" => FLAG_IN_PLACE_SAFE.into(),
        "PREAMBLE_LEN" => PREAMBLE_LEN as u64,
        "HASH_LEN" => HASH_LEN as u64,
        "SHORT_HASH_LEN" => SHORT_HASH_LEN as u64,
        "TRAILER_LEN" => TRAILER_LEN as u64,
        "MAX_HEADER_LEN" => MAX_HEADER_LEN.into(),
        "MAX_SIGNATURE_LEN" => MAX_SIGNATURE_LEN.into(),
        "MAX_SIGNATURES" => MAX_SIGNATURES as u64,
        "SIGNATURE_ENTRY_LEN" => SIGNATURE_ENTRY_LEN as u64,
        "SIG_ALG_ED25519" => SIG_ALG_ED25519.into(),
        "MAX_PAGE_LEN" => MAX_PAGE_LEN.into(),
        "MAX_PAGE_EXTENTS" => MAX_PAGE_EXTENTS as u64,
        "MAX_SEGMENT_LEN" => MAX_SEGMENT_LEN.into(),
        "MAX_OPS_LEN" => MAX_OPS_LEN.into(),
        "MAX_PRODUCER_LEN" => MAX_PRODUCER_LEN as u64,
        "MAX_ZSTD_WINDOW" => MAX_ZSTD_WINDOW,
        "APPLIER_WORST_CASE_MEMORY" => APPLIER_WORST_CASE_MEMORY,
        _ => return None,
    })
}

// (b) The constants table equals the crate's constants, row for row.
#[test]
fn constants_table_matches_code() {
    enum K {
        Int(u64),
        Bytes(Vec<u8>),
        BlockSize { min: bool },
    }
    let known = |name: &str| -> Option<K> {
        Some(match name {
            "MAGIC" => K::Bytes(MAGIC.to_vec()),
            "TRAILER_MAGIC" => K::Bytes(TRAILER_MAGIC.to_vec()),
            "BLOCK_SIZE_MIN" => K::BlockSize { min: true },
            "BLOCK_SIZE_MAX" => K::BlockSize { min: false },
            _ => K::Int(int_constant(name)?),
        })
    };
    let table = spec().table(&["constant", "value"]).rows.clone();
    let mut seen = BTreeSet::new();
    for row in &table {
        let (name, value) = (row[0].as_str(), row[1].as_str());
        let k = known(name).unwrap_or_else(|| {
            panic!("FORMAT.md lists constant {name}, which tests/tests/spec.rs does not check")
        });
        assert!(seen.insert(name.to_string()), "{name} is listed twice");
        match k {
            K::Int(v) => assert_eq!(
                hex_number(value),
                Some(v),
                "{name}: FORMAT.md says {value}, the code {v:#x}"
            ),
            K::Bytes(b) => assert_eq!(hex_bytes(value), b, "{name}"),
            K::BlockSize { min } => {
                let v = u32::try_from(hex_number(value).expect("hex")).expect("u32");
                let accepts = |block_size| {
                    Header {
                        block_size,
                        ..sample_header()
                    }
                    .validate()
                    .is_ok()
                };
                let outside = if min { v / 2 } else { v * 2 };
                assert!(
                    accepts(v) && !accepts(outside),
                    "{name}: {value} is not the limit"
                );
            }
        }
    }
    let missing: Vec<_> = [
        "MAGIC",
        "TRAILER_MAGIC",
        "VERSION_MAJOR",
        "VERSION_MINOR",
        "KNOWN_REQUIRED_FEATURES",
        "FEATURE_OLD_PREFIX",
        "FEATURE_PACKED_OPS",
        "FEATURE_COMPACT_PAGES",
        "FEATURE_DATA_HISTORY",
        "PACKED_OPS",
        "FLAG_IN_PLACE_SAFE",
        "PREAMBLE_LEN",
        "HASH_LEN",
        "SHORT_HASH_LEN",
        "TRAILER_LEN",
        "MAX_HEADER_LEN",
        "MAX_SIGNATURE_LEN",
        "MAX_SIGNATURES",
        "SIGNATURE_ENTRY_LEN",
        "SIG_ALG_ED25519",
        "MAX_PAGE_LEN",
        "MAX_PAGE_EXTENTS",
        "MAX_SEGMENT_LEN",
        "MAX_OPS_LEN",
        "MAX_PRODUCER_LEN",
        "MAX_ZSTD_WINDOW",
        "MAX_PREFIX_LEN",
        "MAX_HISTORY_LEN",
        "APPLIER_WORST_CASE_MEMORY",
        "BLOCK_SIZE_MIN",
        "BLOCK_SIZE_MAX",
    ]
    .into_iter()
    .filter(|n| !seen.contains(*n))
    .collect();
    assert!(
        missing.is_empty(),
        "FORMAT.md's constants table lacks {missing:?}"
    );
}

// The worst-case memory table: each row's size, a product of constants and
// numbers, is its bytes, and the rows add up to APPLIER_WORST_CASE_MEMORY.
#[test]
fn memory_table_adds_up() {
    let spec = spec();
    let t = spec.table(&["buffer", "size", "bytes"]);
    let bytes = |row: &Vec<String>| {
        let digits: String = row[2]
            .trim_matches('*')
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .collect();
        number(&digits)
    };
    let size = |row: &Vec<String>| -> u64 {
        row[1]
            .replace('`', "")
            .split('×')
            .map(|factor| {
                let factor = factor.trim();
                int_constant(factor).unwrap_or_else(|| number(factor))
            })
            .product()
    };
    for row in &t.rows {
        assert_eq!(
            size(row),
            bytes(row),
            "memory row {:?}: size and bytes",
            row[0]
        );
    }
    let (total, parts) = t.rows.split_last().expect("rows");
    let sum: u64 = parts.iter().map(bytes).sum();
    assert_eq!(
        sum,
        bytes(total),
        "the memory rows do not add up to the total"
    );
    assert_eq!(bytes(total), APPLIER_WORST_CASE_MEMORY);
    assert!(
        t.rows.iter().any(|r| r[0].contains("compact page")),
        "the memory table counts a compact page's decoded content"
    );
    assert!(
        t.rows
            .iter()
            .any(|r| r[0].contains("data history") && r[1] == "MAX_HISTORY_LEN"),
        "the memory table counts the data history kept between segments"
    );
}

// The version lines name VERSION_MAJOR.VERSION_MINOR, and the changelog has
// a row for it.
#[test]
fn version_lines_match_code() {
    let spec = spec();
    let text: String = spec.text.split_whitespace().collect::<Vec<_>>().join(" ");
    let version = format!("{VERSION_MAJOR}.{VERSION_MINOR}");
    for line in [
        format!("# anypatch patch format, version {version}"),
        format!(
            "version **{version}** (major `{VERSION_MAJOR:#06x}`, minor `{VERSION_MINOR:#06x}`)"
        ),
        format!("| `{VERSION_MINOR:#06x}` for this version."),
    ] {
        assert!(text.contains(&line), "FORMAT.md lacks {line:?}");
    }
    let changelog = spec.table(&["version", "changes"]);
    assert_eq!(
        changelog.rows.last().map(|r| r[0].as_str()),
        Some(version.as_str()),
        "the changelog's last row is this version"
    );
}

// Every must-understand bit: one bit each, all of them together are
// KNOWN_REQUIRED_FEATURES, and the preamble table names each with its value.
#[test]
fn feature_bits_match_code() {
    let spec = spec();
    let listed: Vec<(String, u64)> = spec
        .table(&["constant", "value"])
        .rows
        .iter()
        .filter(|r| r[0].starts_with("FEATURE_"))
        .map(|r| (r[0].clone(), hex_number(&r[1]).expect("hex")))
        .collect();
    let code = [
        ("FEATURE_OLD_PREFIX", FEATURE_OLD_PREFIX),
        ("FEATURE_PACKED_OPS", FEATURE_PACKED_OPS),
        ("FEATURE_COMPACT_PAGES", FEATURE_COMPACT_PAGES),
        ("FEATURE_DATA_HISTORY", FEATURE_DATA_HISTORY),
    ];
    assert_eq!(
        listed,
        code.map(|(n, v)| (n.to_string(), u64::from(v))),
        "the constants table lists each feature bit, in order"
    );
    let mut all = 0;
    for (name, bit) in code {
        assert!(bit.is_power_of_two(), "{name} is one bit");
        assert_eq!(all & bit, 0, "{name} is its own bit");
        all |= bit;
    }
    assert_eq!(all, KNOWN_REQUIRED_FEATURES);
    let preamble = spec
        .tables(&["offset", "size", "field"])
        .into_iter()
        .flat_map(|t| t.rows.iter())
        .find(|r| r[2] == "required_features")
        .expect("the preamble table has required_features");
    for (name, bit) in code {
        let named = format!("bit `{bit:#010x}`, `{name}`");
        assert!(
            preamble[4].contains(&named),
            "the preamble's required_features row lacks {named:?}"
        );
    }
}

// The codec table lists exactly the codecs the code knows, in order, and
// each codec after 1.0 names the must-understand bit it needs.
#[test]
fn codec_table_matches_code() {
    let spec = spec();
    let t = spec.table(&["value", "codec", "data block"]);
    let listed: Vec<u8> = t
        .rows
        .iter()
        .map(|r| u8::try_from(number(&r[0])).expect("a codec is a byte"))
        .collect();
    let known: Vec<u8> = (0..PACKED_OPS)
        .filter(|&v| Codec::try_from(v).is_ok())
        .collect();
    assert_eq!(
        listed, known,
        "the codec table lists every codec the code knows, in order"
    );
    for (row, &value) in t.rows.iter().zip(&listed) {
        let codec = Codec::try_from(value).expect("listed codecs are known");
        assert_eq!(codec as u8, value);
        let feature = match codec {
            Codec::Stored | Codec::Zstd => None,
            Codec::ZstdPrefix => Some("FEATURE_OLD_PREFIX"),
            Codec::ZstdHistory => Some("FEATURE_DATA_HISTORY"),
        };
        match feature {
            Some(f) => assert!(
                row[2].contains(&format!("with `{f}`")),
                "codec {value:#04x} does not name {f}"
            ),
            None => assert!(!row[2].contains("FEATURE_"), "codec {value:#04x}"),
        }
    }
}

// The data history example (section 3.8.1): a codec 0x03 segment's history
// is the last min(len(H), MAX_HISTORY_LEN - n) bytes of H, and only codec
// 0x03 segments, packed ops or not, append their n bytes to H.
#[test]
fn data_history_example_rows() {
    let spec = spec();
    let t = spec.table(&[
        "segment",
        "codec byte",
        "n",
        "history (bytes of H)",
        "len(H) after",
    ]);
    assert!(t.heading.contains("Data history"), "{:?}", t.heading);
    let max = u64::from(MAX_HISTORY_LEN);
    let mut h = 0u64;
    let (mut cut_by_h, mut cut_by_n, mut alone, mut others) = (false, false, false, false);
    for (i, row) in t.rows.iter().enumerate() {
        assert_eq!(number(&row[0]), i as u64, "segments are numbered in order");
        let byte = u8::try_from(number(&row[1])).expect("a codec byte");
        let (codec, _) = Codec::split(byte).expect("a known codec");
        let n = number(&row[2]);
        assert!(
            (1..=u64::from(MAX_SEGMENT_LEN)).contains(&n),
            "segment {i}: n"
        );
        let history = row[3].replace('`', "");
        if codec == Codec::ZstdHistory {
            let keep = h.min(max - n);
            if keep == 0 {
                assert!(history.starts_with("none"), "segment {i}: {history:?}");
                alone = true;
            } else {
                let (a, z) = history
                    .strip_prefix("H[")
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(range, _)| range.split_once(".."))
                    .unwrap_or_else(|| panic!("segment {i}: no H[a..b] in {history:?}"));
                assert_eq!((number(a), number(z)), (h - keep, h), "segment {i}");
                if keep == h {
                    cut_by_h = true;
                } else {
                    cut_by_n = true;
                }
            }
            h += n;
        } else {
            assert!(history.starts_with("none"), "segment {i}: {history:?}");
            others = true;
        }
        assert_eq!(number(&row[4]), h, "segment {i}: len(H) after");
    }
    assert!(
        cut_by_h && cut_by_n && alone && others,
        "the example shows a history that is all of H, one cut at MAX_HISTORY_LEN - n, \
         a frame decoded alone, and segments of other codecs"
    );
}

// The preamble, signature block and trailer byte tables: each row's offset
// and size hold that field in what the code emits, and the rows tile the
// structure. Signature rows repeat per entry (`+ 97·i`); entry 0 is checked.
#[test]
fn preamble_signature_and_trailer_tables_match_code() {
    let repr = PreambleRepr {
        major: 0x0102,
        minor: 0x0304,
        required_features: 0x0506_0708,
        header_len: 0x090A_0B0C,
        signature_len: 0x0D0E_0F10,
    };
    let mut preamble = [0u8; PREAMBLE_LEN];
    repr.emit(&mut preamble);
    let patch_hash: [u8; 32] = core::array::from_fn(|i| i as u8 + 0x40);
    let mut trailer = [0u8; TRAILER_LEN];
    Trailer { patch_hash }.emit(&mut trailer);
    let entry = SignatureEntry {
        algorithm: SIG_ALG_ED25519,
        public_key: core::array::from_fn(|i| i as u8 + 0x60),
        signature: core::array::from_fn(|i| i as u8 + 0x80),
    };
    let signature_block = SignatureBlock {
        entries: vec![entry],
    }
    .emit();

    let spec = spec();
    let tables = spec.tables(&["offset", "size", "field"]);
    let mut checked = BTreeSet::new();
    for t in tables {
        let mut end = 0;
        let mut bytes: &[u8] = &[];
        for row in &t.rows {
            let first_entry = row[0].split(" + ").next().unwrap_or_default();
            let (offset, size, field) = (
                number(first_entry) as usize,
                number(&row[1]) as usize,
                row[2].as_str(),
            );
            assert_eq!(
                offset, end,
                "byte table row {field} does not follow the previous row"
            );
            end = offset + size;
            let le = |v: u64| v.to_le_bytes()[..size].to_vec();
            let (structure, want) = match field {
                "magic" => (&preamble[..], MAGIC.to_vec()),
                "major" => (&preamble[..], le(repr.major.into())),
                "minor" => (&preamble[..], le(repr.minor.into())),
                "required_features" => (&preamble[..], le(repr.required_features.into())),
                "header_len" => (&preamble[..], le(repr.header_len.into())),
                "signature_len" => (&preamble[..], le(repr.signature_len.into())),
                "patch_hash" => (&trailer[..], patch_hash.to_vec()),
                "end_magic" => (&trailer[..], TRAILER_MAGIC.to_vec()),
                "count" => (&signature_block[..], vec![1]),
                "algorithm" => (&signature_block[..], vec![SIG_ALG_ED25519]),
                "public_key" => (&signature_block[..], entry.public_key.to_vec()),
                "signature" => (&signature_block[..], entry.signature.to_vec()),
                other => panic!("byte table field {other} is unknown to the test"),
            };
            bytes = structure;
            assert_eq!(&structure[offset..end], &want[..], "byte table row {field}");
            checked.insert(field.to_string());
        }
        assert_eq!(end, bytes.len(), "byte table does not cover the structure");
    }
    assert_eq!(
        checked.len(),
        12,
        "FORMAT.md needs the preamble, signature block and trailer byte tables"
    );
}

fn sample_header() -> Header {
    Header {
        old_len: 5 << 30,
        new_len: 3,
        old_hash: [0x11; 32],
        new_hash: [0x22; 32],
        block_size: 0x1000,
        segment_max: 7,
        codec: 0,
        flags: FLAG_IN_PLACE_SAFE,
        patch_len: 200,
        extent_count: 9,
        segment_count: 4,
        first_page: PageRef {
            len: 44,
            hash: [0x33; 32],
        },
        producer: "spec test 1.0".into(),
    }
}

// The header body, page, segment entry and PrefixRef tables, plain and
// compact, list the wire fields in the order and with the types the code
// encodes them.
#[test]
fn field_tables_match_code() {
    let h = sample_header();
    let header_section = h.emit(0, 0);
    let body = &header_section[PREAMBLE_LEN..header_section.len() - HASH_LEN];
    let e = SegmentEntry {
        new_len: 0x1234,
        codec: 1,
        ops_len: 0x56,
        data_len: 0x789,
        hash: [0x44; 32],
        inline_ops: None,
    };
    let entry = strip_page(
        &Page {
            extents: vec![Extent::Data(e)],
            next: None,
        }
        .emit(),
    );
    // A compact entry with its ops inline, `Literal { len: 0x1234 }`, and
    // one whose ops are packed in its payload.
    let ops = op_bytes(&[Op::Literal { len: 0x1234 }]);
    let inline = SegmentEntry {
        ops_len: ops.len() as u32,
        hash: short_hash(&[0x66; 32]),
        inline_ops: Some(0),
        ..e
    };
    let packed = SegmentEntry {
        codec: e.codec | PACKED_OPS,
        inline_ops: None,
        ..inline
    };
    let compact_entry = |s: SegmentEntry| {
        let page = Page {
            extents: vec![Extent::Data(s)],
            next: None,
        };
        strip_page(&page.emit_compact(&ops))
    };
    let (inline_bytes, packed_bytes) = (compact_entry(inline), compact_entry(packed));
    // Pages of a copy and a data extent, with a next page: the page tables
    // check where the extents lie; the entry tables and examples, their bytes.
    let next = Some(PageRef {
        len: 0x1_2345,
        hash: [0x55; 32],
    });
    let next_bytes = Page {
        extents: vec![],
        next,
    }
    .emit()[1..]
        .to_vec();
    let extents = vec![
        Extent::Copy {
            len: 4096,
            delta: -3,
        },
        Extent::Data(inline),
    ];
    let plain_page = Page {
        extents: vec![extents[0], Extent::Data(e)],
        next,
    }
    .emit();
    let compact_page = Page { extents, next }.emit_compact(&ops);
    let page_field = |bytes: &[u8], field: &str| match field {
        "count" => Value::Int(2),
        "extents" => Value::Bytes(bytes[1..bytes.len() - next_bytes.len()].to_vec()),
        "next" => Value::Bytes(next_bytes.clone()),
        other => panic!("page field {other} is unknown to the test"),
    };
    let prefix = PrefixRef {
        delta: -0x1234_5678,
        len: 0x3_0201,
    };
    let mut prefix_bytes = Vec::new();
    prefix.emit(&mut prefix_bytes);

    let spec = spec();
    let mut checked = BTreeSet::new();
    for t in spec.tables(&["#", "field", "type"]) {
        let first = t.rows.first().map_or("", |r| r[1].as_str());
        let compact = t.heading.contains("Compact page");
        let none = |_: &str| false;
        let name = match (first, compact) {
            ("old_len", false) => {
                check_field_table(t, body, &|f| header_field(&h, f), &none);
                "header body"
            }
            ("count", false) => {
                check_field_table(t, &plain_page, &|f| page_field(&plain_page, f), &none);
                "plain page"
            }
            ("count", true) => {
                check_field_table(t, &compact_page, &|f| page_field(&compact_page, f), &none);
                "compact page content"
            }
            ("new_len", false) => {
                check_field_table(t, &entry, &|f| entry_field(&e, f, None), &none);
                "segment entry"
            }
            ("new_len", true) => {
                let ops = &ops[..];
                let expect = |s: SegmentEntry| move |f: &str| entry_field(&s, f, Some(ops));
                check_field_table(t, &inline_bytes, &expect(inline), &none);
                // Packed ops are not in the entry: the `ops` row is absent.
                let ops_row = t.rows.iter().find(|r| r[1] == "ops").expect("an ops row");
                assert!(
                    ops_row[3].contains("`0x80`"),
                    "the ops row says when it is present"
                );
                check_field_table(t, &packed_bytes, &expect(packed), &|f| f == "ops");
                "compact entry"
            }
            ("delta", false) => {
                check_field_table(t, &prefix_bytes, &|f| prefix_field(&prefix, f), &none);
                "PrefixRef"
            }
            other => panic!(
                "field table {other:?} under {:?} is unknown to the test",
                t.heading
            ),
        };
        assert!(checked.insert(name), "two {name} tables");
    }
    assert_eq!(
        checked.len(),
        6,
        "FORMAT.md needs the header body, page, segment entry, compact page \
         content, compact entry and PrefixRef tables; it has {checked:?}"
    );
}

/// Checks a `# | field | type` table against `bytes`: each row, in order,
/// decodes to what `expect` says for its field, except rows `skip` names,
/// and the rows cover all of `bytes`.
fn check_field_table(t: &Table, bytes: &[u8], expect: Expect<'_>, skip: &dyn Fn(&str) -> bool) {
    let mut r = Reader { bytes, at: 0 };
    let mut earlier = Vec::new();
    for (i, row) in t.rows.iter().enumerate() {
        assert_eq!(number(&row[0]), i as u64 + 1, "row numbers");
        let field = row[1].as_str();
        if skip(field) {
            continue;
        }
        let want = expect(field);
        let got = r.item(&row[2], &want, &earlier);
        assert_eq!(
            got, want,
            "field {field} ({}) under {:?}",
            row[2], t.heading
        );
        earlier.push((field.to_string(), got));
    }
    assert_eq!(
        r.at,
        bytes.len(),
        "table under {:?} does not cover the encoding",
        t.heading
    );
}

/// The entry of an encoded page that holds one data extent: the page
/// without its count (1), the extent's tag (1) and its `next` (none: 1).
fn strip_page(page: &[u8]) -> Vec<u8> {
    page[2..page.len() - 1].to_vec()
}

/// The ops block of `ops`.
fn op_bytes(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        op.emit(&mut out);
    }
    out
}

/// A segment hash as a compact entry holds it: the first
/// [`SHORT_HASH_LEN`] bytes of `full`, the rest zero.
fn short_hash(full: &Hash) -> Hash {
    let mut h = [0u8; 32];
    h[..SHORT_HASH_LEN].copy_from_slice(&full[..SHORT_HASH_LEN]);
    h
}

/// What a field table row must decode to, given the field's name.
type Expect<'a> = &'a dyn Fn(&str) -> Value;

fn header_field(h: &Header, field: &str) -> Value {
    use Value::{Bytes, Int};
    match field {
        "old_len" => Int(h.old_len),
        "new_len" => Int(h.new_len),
        "old_hash" => Bytes(h.old_hash.to_vec()),
        "new_hash" => Bytes(h.new_hash.to_vec()),
        "block_size" => Int(h.block_size.into()),
        "segment_max" => Int(h.segment_max.into()),
        "codec" => Int(h.codec.into()),
        "flags" => Int(h.flags.into()),
        "patch_len" => Int(h.patch_len),
        "extent_count" => Int(h.extent_count),
        "segment_count" => Int(h.segment_count),
        "first_page.len" => Int(h.first_page.len.into()),
        "first_page.hash" => Bytes(h.first_page.hash.to_vec()),
        "producer" => Bytes(h.producer.as_bytes().to_vec()),
        other => panic!("header field {other} is unknown to the test"),
    }
}

fn prefix_field(p: &PrefixRef, field: &str) -> Value {
    match field {
        "delta" => Value::Signed(p.delta),
        "len" => Value::Int(p.len.into()),
        other => panic!("PrefixRef field {other} is unknown to the test"),
    }
}

/// A plain entry's field, or with `compact`, a compact entry's: its hash is
/// short, and its inline ops lie in the given pool.
fn entry_field(e: &SegmentEntry, field: &str, compact: Option<&[u8]>) -> Value {
    use Value::{Bytes, Int};
    match field {
        "new_len" => Int(e.new_len.into()),
        "codec" => Int(e.codec.into()),
        "ops_len" => Int(e.ops_len.into()),
        "ops" => {
            let (pool, at) = compact.zip(e.inline_ops).expect("inline ops");
            Bytes(pool[at as usize..][..e.ops_len as usize].to_vec())
        }
        "data_len" => Int(e.data_len.into()),
        "hash" if compact.is_some() => Bytes(e.hash[..SHORT_HASH_LEN].to_vec()),
        "hash" => Bytes(e.hash.to_vec()),
        other => panic!("segment entry field {other} is unknown to the test"),
    }
}

// The encoding examples are what the code emits.
#[test]
fn encoding_examples_match_code() {
    let spec = spec();
    let t = spec.table(&["example", "bytes"]);
    assert!(t.rows.len() >= 4);
    for row in &t.rows {
        let (kind, variant, fields) = parse_example(&row[0]);
        let f = |name: &str| -> i128 {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .unwrap_or_else(|| panic!("{}: no field {name}", row[0]))
                .1
        };
        let u32_of = |name| u32::try_from(f(name)).expect("u32");
        let u64_of = |name| u64::try_from(f(name)).expect("u64");
        let i64_of = |name| i64::try_from(f(name)).expect("i64");
        let bytes = match (kind.as_str(), variant.as_str()) {
            ("Op", v) => {
                let op = match v {
                    "Copy" => Op::Copy {
                        len: u32_of("len"),
                        delta: i64_of("delta"),
                    },
                    "Literal" => Op::Literal { len: u32_of("len") },
                    "Delta" => Op::Delta {
                        len: u32_of("len"),
                        delta: i64_of("delta"),
                    },
                    "Zero" => Op::Zero { len: u32_of("len") },
                    other => panic!("unknown op {other}"),
                };
                let mut out = Vec::new();
                op.emit(&mut out);
                out
            }
            ("Extent", v) => {
                let extent = match v {
                    "Copy" => Extent::Copy {
                        len: u64_of("len"),
                        delta: i64_of("delta"),
                    },
                    "Zero" => Extent::Zero { len: u64_of("len") },
                    other => panic!("extent example {other} is unknown to the test"),
                };
                let page = Page {
                    extents: vec![extent],
                    next: None,
                }
                .emit();
                page[1..page.len() - 1].to_vec() // strip count 1 and next none
            }
            (other, _) => panic!("example type {other} is unknown to the test"),
        };
        assert_eq!(bytes, hex_bytes(&row[1]), "{}", row[0]);
    }
}

/// `Kind::Variant { a: 1, b: -2 }` as its parts.
fn parse_example(s: &str) -> (String, String, Vec<(String, i128)>) {
    let (path, rest) = s
        .split_once(" {")
        .unwrap_or_else(|| panic!("bad example {s:?}"));
    let (kind, variant) = path.split_once("::").expect("Kind::Variant");
    let fields = rest
        .trim()
        .trim_end_matches('}')
        .split(',')
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let (k, v) = f.split_once(':').expect("field: value");
            (k.trim().to_string(), v.trim().parse().expect("integer"))
        })
        .collect();
    (kind.to_string(), variant.to_string(), fields)
}

// The worked example: every row decodes to its value, and the rows cover
// the whole patch in order.
#[test]
fn worked_example_rows_decode() {
    let spec = spec();
    let t = spec.table(&["offset", "len", "field", "encoding", "value"]);
    let name = t
        .after_hexdump
        .as_deref()
        .expect("the worked example table follows its hexdump block");
    let patch = vector_patch(name);
    let dir = root().join("spec/vectors").join(name);
    let entry = index()
        .into_iter()
        .find(|v| v["name"] == name)
        .expect("vector in index.json");
    let end = check_rows(t, &patch, &|b, field, encoding, value| {
        if encoding != "hash" {
            return false;
        }
        assert_eq!(b.len(), 32, "{field}");
        let want = if value == "BLAKE3(old.bin)" {
            *blake3::hash(&fs::read(dir.join("old.bin")).expect("old.bin")).as_bytes()
        } else if let Some(key) = value.strip_prefix("new_blake3") {
            assert!(key.is_empty());
            let hex = entry["new_blake3"].as_str().expect("new_blake3");
            unhex(hex).try_into().expect("32 bytes")
        } else if let Some(s) = quoted(value, "BLAKE3(") {
            *blake3::hash(s.as_bytes()).as_bytes()
        } else if let Some(range) = value
            .strip_prefix("BLAKE3(patch[")
            .and_then(|v| v.strip_suffix("])"))
        {
            let (a, z) = range.split_once("..").expect("a..b");
            *blake3::hash(&patch[number(a) as usize..number(z) as usize]).as_bytes()
        } else {
            panic!("{field}: hash value {value:?} is unknown to the test")
        };
        assert_eq!(b, &want[..], "{field}");
        true
    });
    assert_eq!(
        end,
        patch.len(),
        "the worked example does not cover the whole patch"
    );
}

// The compact page example: the code encodes the page it describes to
// exactly its rows, parses them back, and the payloads it names make the
// outputs whose short hashes it gives.
#[test]
fn compact_page_example_rows_decode() {
    let spec = spec();
    let t = spec.table(&["content offset", "len", "field", "encoding", "value"]);
    assert!(t.heading.contains("Compact page"), "{:?}", t.heading);
    let inline_ops = op_bytes(&[Op::Literal { len: 5 }]);
    let packed_ops = op_bytes(&[Op::Literal { len: 12 }]);
    let frame = {
        let mut z = zstd::bulk::Compressor::new(3).expect("zstd");
        z.include_contentsize(true).expect("zstd");
        z.include_checksum(false).expect("zstd");
        z.include_dictid(false).expect("zstd");
        z.compress(&packed_ops).expect("zstd")
    };
    let blake3_128 = |out: &[u8]| short_hash(blake3::hash(out).as_bytes());
    let tail = SegmentEntry {
        new_len: 5,
        codec: 0x00,
        ops_len: inline_ops.len() as u32,
        data_len: 5,
        hash: blake3_128(b"tail!"),
        inline_ops: Some(0),
    };
    let hello = SegmentEntry {
        new_len: 12,
        codec: PACKED_OPS,
        ops_len: frame.len() as u32,
        data_len: 12,
        hash: blake3_128(b"hello, world"),
        inline_ops: None,
    };
    let page = Page {
        extents: vec![
            Extent::Copy {
                len: 4096,
                delta: 0,
            },
            Extent::Data(tail),
            Extent::Data(hello),
        ],
        next: None,
    };
    let content = page.emit_compact(&inline_ops);
    let end = check_rows(t, &content, &|b, field, encoding, value| {
        if encoding != "hash16" {
            return false;
        }
        let s = quoted(value, "BLAKE3-128(")
            .unwrap_or_else(|| panic!("{field}: hash16 value {value:?} is unknown to the test"));
        assert_eq!(
            b,
            &blake3::hash(s.as_bytes()).as_bytes()[..SHORT_HASH_LEN],
            "{field}"
        );
        true
    });
    assert_eq!(end, content.len(), "the example does not cover the content");

    // Parsed back, the inline ops lie where the `ops` row says.
    let parsed = Page::parse_compact(&content).expect("the example parses");
    let ops_row = t
        .rows
        .iter()
        .find(|r| r[2].contains(": ops ("))
        .expect("an ops row");
    let at = number(&ops_row[0]) as u32;
    let Extent::Data(first) = parsed.extents[1] else {
        panic!("extent 1 is a data extent")
    };
    assert_eq!(
        first,
        SegmentEntry {
            inline_ops: Some(at),
            ..tail
        }
    );
    assert_eq!(parsed.extents[2], Extent::Data(hello));
    assert_eq!(
        (first.payload_len(), hello.payload_len()),
        (5, frame.len() as u64 + 12)
    );
    // The packed frame is a standard one that declares its content size.
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&frame).ok(),
        Some(Some(packed_ops.len() as u64))
    );
    assert_eq!(
        zstd::bulk::decompress(&frame, 64).expect("frame"),
        packed_ops
    );
    assert!(first.hash_matches(b"tail!", true) && hello.hash_matches(b"hello, world", true));
    assert!(
        !hello.hash_matches(b"hello, world", false),
        "only 16 bytes are held"
    );
}

/// Checks one row's bytes in an encoding [`check_rows`] does not know:
/// `(bytes, field, encoding, value)`, returning whether it knew it.
type SpecialRow<'a> = &'a dyn Fn(&[u8], &str, &str, &str) -> bool;

/// Checks the rows of an `offset | len | field | encoding | value` table
/// against `bytes`: each row follows the previous one and decodes to its
/// value. `special` handles the encodings this function does not, and
/// returns whether it did. Returns where the last row ends.
fn check_rows(t: &Table, bytes: &[u8], special: SpecialRow<'_>) -> usize {
    let mut end = 0usize;
    for row in &t.rows {
        let (offset, len) = (number(&row[0]) as usize, number(&row[1]) as usize);
        let (field, encoding, value) = (row[2].as_str(), row[3].as_str(), row[4].as_str());
        assert_eq!(offset, end, "row {field} does not follow the previous row");
        end = offset + len;
        let b = &bytes[offset..end];
        match encoding {
            "bytes" => {
                let want = match value {
                    "MAGIC" => MAGIC.to_vec(),
                    "TRAILER_MAGIC" => TRAILER_MAGIC.to_vec(),
                    "empty" => Vec::new(),
                    other => hex_bytes(other),
                };
                assert_eq!(b, &want[..], "{field}");
            }
            "u8" => {
                assert_eq!(len, 1, "{field}");
                assert_eq!(u64::from(b[0]), number(value), "{field}");
            }
            "u16 LE" | "u32 LE" => {
                let mut le = [0u8; 8];
                le[..len].copy_from_slice(b);
                assert_eq!(u64::from_le_bytes(le), number(value), "{field}");
            }
            "varint" | "zigzag" => {
                let mut r = Reader { bytes: b, at: 0 };
                let v = r.varint();
                assert_eq!(r.at, len, "{field}: the varint is not {len} bytes");
                if encoding == "varint" {
                    assert_eq!(v, number(value), "{field}");
                } else {
                    let signed = (v >> 1) as i64 ^ -((v & 1) as i64);
                    assert_eq!(signed, value.parse::<i64>().expect("signed"), "{field}");
                }
            }
            "utf8" => {
                let s = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                assert_eq!(Some(b), s.map(str::as_bytes), "{field}");
            }
            other => assert!(
                special(b, field, other, value),
                "{field}: encoding {other:?} is unknown to the test"
            ),
        }
    }
    end
}

/// The string in `PREFIX"…")`, such as `BLAKE3("tail!")`.
fn quoted<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    value
        .strip_prefix(prefix)?
        .strip_prefix('"')?
        .strip_suffix("\")")
}

// The errors table: every error the engine reports is named in the row of
// its class, with that class's exit code.
#[test]
fn error_table_matches_code() {
    let spec = spec();
    let t = spec.table(&["exit", "class", "errors", "advice"]);
    let mut named = BTreeSet::new();
    for row in &t.rows {
        let class = match number(&row[0]) {
            2 => ErrorClass::CorruptPatch,
            3 => ErrorClass::WrongBase,
            4 => ErrorClass::Unsupported,
            5 => ErrorClass::NotInPlace,
            6 => ErrorClass::Untrusted,
            _ => continue, // success, usage and I/O: not engine errors
        };
        // The names are the CamelCase words; prose, fields and constants are not.
        let names = row[2]
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| w.starts_with(|c: char| c.is_ascii_uppercase()))
            .filter(|w| w.contains(|c: char| c.is_ascii_lowercase()));
        for name in names {
            for e in errors_named(name) {
                assert_eq!(e.class(), class, "{name} is listed under exit {}", row[0]);
            }
            assert!(named.insert(name.to_string()), "{name} is listed twice");
        }
    }
    let missing: Vec<_> = ERROR_NAMES
        .iter()
        .filter(|n| !named.contains(**n))
        .collect();
    assert!(
        missing.is_empty(),
        "FORMAT.md's errors table lacks {missing:?}"
    );
    // Section 10 quotes the message of the error compact pages added.
    let text: String = spec.text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("(\"manifest page N does not decompress\", N counting from 0)"));
    assert!(ApplyError::PageDecode {
        page: 7,
        why: anypatch_apply::ZstdError::TrailingInput
    }
    .to_string()
    .contains("manifest page 7 does not decompress ("));
}

/// Every error name the errors table must list.
const ERROR_NAMES: [&str; 28] = [
    "Truncated",
    "BadMagic",
    "TooLarge",
    "ZeroLength",
    "HeaderHashMismatch",
    "Malformed",
    "TrailingBytes",
    "BadTrailerMagic",
    "Invalid",
    "PageHash",
    "SegmentHash",
    "PatchHash",
    "NewHash",
    "SourceOutOfRange",
    "LengthMismatch",
    "Decode",
    "PageDecode",
    "BaseLength",
    "BaseHash",
    "UnsupportedMajor",
    "UnknownRequiredFeatures",
    "UnknownCodec",
    "NotInPlaceSafe",
    "Unsigned",
    "UntrustedSigner",
    "BadSignature",
    "NewTooLarge",
    "CheckpointMismatch",
];

/// The engine's errors (its own, and the format's it wraps) with this name.
fn errors_named(name: &str) -> Vec<ApplyError> {
    use ApplyError as A;
    use FormatError as F;
    let f = A::Format;
    match name {
        "Truncated" => vec![
            A::Truncated { section: "page" },
            f(F::Truncated {
                what: "preamble",
                needed: 24,
                got: 1,
            }),
        ],
        "BadMagic" => vec![f(F::BadMagic { got: [0; 8] })],
        "TooLarge" => vec![f(F::TooLarge {
            field: "page.len",
            got: 2,
            max: 1,
        })],
        "ZeroLength" => vec![f(F::ZeroLength { field: "op.len" })],
        "HeaderHashMismatch" => vec![f(F::HeaderHashMismatch)],
        "Malformed" => vec![f(F::Malformed { what: "page" })],
        "TrailingBytes" => vec![
            A::TrailingBytes,
            f(F::TrailingBytes {
                what: "page",
                count: 1,
            }),
        ],
        "BadTrailerMagic" => vec![f(F::BadTrailerMagic)],
        "Invalid" => vec![f(F::Invalid {
            field: "compact page frame",
            reason: "declares no content size",
        })],
        "PageHash" => vec![A::PageHash { page: 0 }],
        "SegmentHash" => vec![A::SegmentHash {
            segment: 0,
            new_offset: 0,
        }],
        "PatchHash" => vec![A::PatchHash],
        "NewHash" => vec![A::NewHash],
        "SourceOutOfRange" => vec![A::SourceOutOfRange {
            new_offset: 0,
            source: -1,
            len: 1,
            old_len: 0,
        }],
        "LengthMismatch" => vec![A::LengthMismatch {
            field: "sum of op lengths",
            got: 1,
            expected: 2,
        }],
        "Decode" => vec![A::Decode {
            segment: 0,
            why: anypatch_apply::ZstdError::Block,
        }],
        "PageDecode" => vec![A::PageDecode {
            page: 0,
            why: anypatch_apply::ZstdError::Header,
        }],
        "BaseLength" => vec![A::BaseLength {
            got: 1,
            expected: 2,
        }],
        "BaseHash" => vec![A::BaseHash],
        "UnsupportedMajor" => vec![f(F::UnsupportedMajor {
            got: 2,
            supported: 1,
        })],
        "UnknownRequiredFeatures" => vec![f(F::UnknownRequiredFeatures { bits: 8 })],
        "UnknownCodec" => vec![f(F::UnknownCodec { got: 4 })],
        "NotInPlaceSafe" => vec![A::NotInPlaceSafe {
            new_offset: 1,
            source: 0,
        }],
        "Unsigned" => vec![A::Unsigned],
        "UntrustedSigner" => vec![A::UntrustedSigner { key_id: [0; 8] }],
        "BadSignature" => vec![A::BadSignature { key_id: [0; 8] }],
        "NewTooLarge" => vec![A::NewTooLarge { got: 2, max: 1 }],
        "CheckpointMismatch" => vec![A::CheckpointMismatch],
        other => panic!("error {other} is unknown to the test"),
    }
}

// (c) The vector table lists exactly the vectors of index.json.
#[test]
fn vector_table_lists_every_vector() {
    let spec = spec();
    let t = spec.table(&["vector", "made by", "covers"]);
    let table: Vec<(String, String)> = t
        .rows
        .iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let index: Vec<(String, String)> = index()
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().expect("string").to_string();
            (s("name"), s("made_by"))
        })
        .collect();
    for v in &index {
        assert!(table.contains(v), "FORMAT.md's vector table lacks {v:?}");
    }
    for v in &table {
        assert!(
            index.contains(v),
            "FORMAT.md lists {v:?}, which index.json does not"
        );
    }
}
