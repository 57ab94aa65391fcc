//! `spec/FORMAT.md` agrees with the code: its constants table, byte tables,
//! encoding examples, memory sum, hex dumps, worked example and vector table
//! are parsed out of the Markdown and checked against `anypatch-format` and
//! the checked-in vectors. Change the spec and the code together.

use std::collections::BTreeSet;
use std::fs;

use anypatch_format::{
    Extent, Header, Op, Page, PageRef, PreambleRepr, PrefixRef, SegmentEntry, SignatureBlock,
    SignatureEntry, Trailer, APPLIER_WORST_CASE_MEMORY, FEATURE_OLD_PREFIX, FEATURE_PACKED_OPS,
    FLAG_IN_PLACE_SAFE, HASH_LEN, KNOWN_REQUIRED_FEATURES, MAGIC, MAX_HEADER_LEN, MAX_OPS_LEN,
    MAX_PAGE_EXTENTS, MAX_PAGE_LEN, MAX_PREFIX_LEN, MAX_PRODUCER_LEN, MAX_SEGMENT_LEN,
    MAX_SIGNATURES, MAX_SIGNATURE_LEN, MAX_ZSTD_WINDOW, PACKED_OPS, PREAMBLE_LEN,
    SIGNATURE_ENTRY_LEN, SIG_ALG_ED25519, TRAILER_LEN, TRAILER_MAGIC, VERSION_MAJOR, VERSION_MINOR,
};
use anypatch_tests::root;

/// A Markdown table, with the name of the last `hexdump` block before it.
#[derive(Debug)]
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    after_hexdump: Option<String>,
}

/// A fenced block with the info string `hexdump name=NAME [prefix]`.
#[derive(Debug)]
struct HexDump {
    name: String,
    prefix: bool,
    bytes: Vec<u8>,
}

struct Spec {
    tables: Vec<Table>,
    dumps: Vec<HexDump>,
}

fn spec() -> Spec {
    let path = root().join("spec/FORMAT.md");
    let text = fs::read_to_string(&path).expect("spec/FORMAT.md is readable");
    let (mut tables, mut dumps) = (Vec::new(), Vec::<HexDump>::new());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
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
            });
        }
    }
    Spec { tables, dumps }
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

    /// One wire item of a byte table's `type` column.
    fn item(&mut self, ty: &str) -> Value {
        match ty {
            "varint u64" | "varint u32" => Value::Int(self.varint()),
            "zigzag i64" => {
                let v = self.varint();
                Value::Signed((v >> 1) as i64 ^ -((v & 1) as i64))
            }
            "u8" => Value::Int(self.take(1)[0].into()),
            "[u8; 32]" => Value::Bytes(self.take(32).to_vec()),
            "String" => {
                let n = self.varint() as usize;
                Value::Bytes(self.take(n).to_vec())
            }
            other => panic!("byte table type {other:?} is unknown to the test"),
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
            "VERSION_MAJOR" => K::Int(VERSION_MAJOR.into()),
            "VERSION_MINOR" => K::Int(VERSION_MINOR.into()),
            "KNOWN_REQUIRED_FEATURES" => K::Int(KNOWN_REQUIRED_FEATURES.into()),
            "FEATURE_OLD_PREFIX" => K::Int(FEATURE_OLD_PREFIX.into()),
            "FEATURE_PACKED_OPS" => K::Int(FEATURE_PACKED_OPS.into()),
            "PACKED_OPS" => K::Int(PACKED_OPS.into()),
            "MAX_PREFIX_LEN" => K::Int(MAX_PREFIX_LEN.into()),
            "FLAG_IN_PLACE_SAFE" => K::Int(FLAG_IN_PLACE_SAFE.into()),
            "PREAMBLE_LEN" => K::Int(PREAMBLE_LEN as u64),
            "HASH_LEN" => K::Int(HASH_LEN as u64),
            "TRAILER_LEN" => K::Int(TRAILER_LEN as u64),
            "MAX_HEADER_LEN" => K::Int(MAX_HEADER_LEN.into()),
            "MAX_SIGNATURE_LEN" => K::Int(MAX_SIGNATURE_LEN.into()),
            "MAX_SIGNATURES" => K::Int(MAX_SIGNATURES as u64),
            "SIGNATURE_ENTRY_LEN" => K::Int(SIGNATURE_ENTRY_LEN as u64),
            "SIG_ALG_ED25519" => K::Int(SIG_ALG_ED25519.into()),
            "MAX_PAGE_LEN" => K::Int(MAX_PAGE_LEN.into()),
            "MAX_PAGE_EXTENTS" => K::Int(MAX_PAGE_EXTENTS as u64),
            "MAX_SEGMENT_LEN" => K::Int(MAX_SEGMENT_LEN.into()),
            "MAX_OPS_LEN" => K::Int(MAX_OPS_LEN.into()),
            "MAX_PRODUCER_LEN" => K::Int(MAX_PRODUCER_LEN as u64),
            "MAX_ZSTD_WINDOW" => K::Int(MAX_ZSTD_WINDOW),
            "APPLIER_WORST_CASE_MEMORY" => K::Int(APPLIER_WORST_CASE_MEMORY),
            "BLOCK_SIZE_MIN" => K::BlockSize { min: true },
            "BLOCK_SIZE_MAX" => K::BlockSize { min: false },
            _ => return None,
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
        "PACKED_OPS",
        "FLAG_IN_PLACE_SAFE",
        "PREAMBLE_LEN",
        "HASH_LEN",
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

// The worst-case memory table adds up to APPLIER_WORST_CASE_MEMORY.
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
    let (total, parts) = t.rows.split_last().expect("rows");
    let sum: u64 = parts.iter().map(bytes).sum();
    assert_eq!(
        sum,
        bytes(total),
        "the memory rows do not add up to the total"
    );
    assert_eq!(bytes(total), APPLIER_WORST_CASE_MEMORY);
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

// The header body and segment entry tables list the wire fields in the
// order and with the types the code encodes them.
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
    let page = Page {
        extents: vec![Extent::Data(e)],
        next: None,
    }
    .emit();
    // count 1 | tag 2 | entry | next none
    let entry = &page[2..page.len() - 1];
    let prefix = PrefixRef {
        delta: -0x1234_5678,
        len: 0x3_0201,
    };
    let mut prefix_bytes = Vec::new();
    prefix.emit(&mut prefix_bytes);

    let spec = spec();
    let mut checked = 0;
    for t in spec.tables(&["#", "field", "type"]) {
        let first = t.rows.first().map(|r| r[1].as_str());
        let (bytes, expect): (&[u8], Expect<'_>) = match first {
            Some("old_len") => (body, &|f: &str| header_field(&h, f)),
            Some("new_len") => (entry, &|f: &str| entry_field(&e, f)),
            Some("delta") => (&prefix_bytes[..], &|f: &str| prefix_field(&prefix, f)),
            _ => continue, // page table: checked by the worked example
        };
        let mut r = Reader { bytes, at: 0 };
        for (i, row) in t.rows.iter().enumerate() {
            assert_eq!(number(&row[0]), i as u64 + 1, "row numbers");
            let got = r.item(&row[2]);
            assert_eq!(got, expect(&row[1]), "field {} ({})", row[1], row[2]);
        }
        assert_eq!(
            r.at,
            bytes.len(),
            "table for {first:?} does not cover the encoding"
        );
        checked += 1;
    }
    assert_eq!(
        checked, 3,
        "FORMAT.md needs the header body, segment entry and PrefixRef tables"
    );
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

fn entry_field(e: &SegmentEntry, field: &str) -> Value {
    use Value::{Bytes, Int};
    match field {
        "new_len" => Int(e.new_len.into()),
        "codec" => Int(e.codec.into()),
        "ops_len" => Int(e.ops_len.into()),
        "data_len" => Int(e.data_len.into()),
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
    let mut end = 0usize;
    for row in &t.rows {
        let (offset, len) = (number(&row[0]) as usize, number(&row[1]) as usize);
        let (field, encoding, value) = (&row[2], row[3].as_str(), row[4].as_str());
        assert_eq!(offset, end, "row {field} does not follow the previous row");
        end = offset + len;
        let b = &patch[offset..end];
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
            "hash" => {
                assert_eq!(len, 32, "{field}");
                let want = if value == "BLAKE3(old.bin)" {
                    *blake3::hash(&fs::read(dir.join("old.bin")).expect("old.bin")).as_bytes()
                } else if let Some(key) = value.strip_prefix("new_blake3") {
                    assert!(key.is_empty());
                    let hex = entry["new_blake3"].as_str().expect("new_blake3");
                    unhex(hex).try_into().expect("32 bytes")
                } else if let Some(s) = value
                    .strip_prefix("BLAKE3(\"")
                    .and_then(|v| v.strip_suffix("\")"))
                {
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
            }
            other => panic!("{field}: encoding {other:?} is unknown to the test"),
        }
    }
    assert_eq!(
        end,
        patch.len(),
        "the worked example does not cover the whole patch"
    );
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
