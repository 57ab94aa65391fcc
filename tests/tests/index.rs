//! The block index (spec/INDEX.md): the spec's tables and vectors against
//! the code, hostile index files refused with the right error and bounded
//! memory, `mkpatch index` against the image, and signed indexes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anypatch_index::{
    block, read_index, vectors, BlockHashes, Header, IndexError, IndexReader, Limits, ENTRY_LEN,
    FEATURE_SIGNED, HEADER_LEN, MAGIC, TRAILER_LEN, VERSION_MAJOR, VERSION_MINOR,
};
use anypatch_tests::{bin, corpus_small, root};
use peakmem_alloc::{PeakMemAlloc, PeakMemAllocTrait, INSTRUMENTED_SYSTEM};

#[global_allocator]
static ALLOC: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn spec() -> String {
    fs::read_to_string(root().join("spec/INDEX.md")).expect("spec/INDEX.md")
}

fn vector(name: &str) -> vectors::Vector {
    vectors::all()
        .into_iter()
        .find(|v| v.name == name)
        .expect("a vector of that name")
}

fn parse_hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// Rows `| 0xOFF | size | `field` | hex |` of the table after `heading`.
fn table_rows(spec: &str, heading: &str) -> Vec<(usize, usize, String, Vec<u8>)> {
    let at = spec.find(heading).expect("the heading is in the spec");
    spec[at..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| 0x"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let off = usize::from_str_radix(cells[0].trim_start_matches("0x"), 16).expect("offset");
            let size: usize = cells[1].parse().expect("size");
            (
                off,
                size,
                cells[2].trim_matches('`').to_string(),
                parse_hex(cells[3]),
            )
        })
        .collect()
}

#[test]
fn spec_version_and_constants_match_the_code() {
    let spec = spec();
    let first = spec.lines().next().expect("a title");
    assert_eq!(
        first,
        format!("# anypatch block index format, version {VERSION_MAJOR}.{VERSION_MINOR}")
    );
    assert!(spec.contains(&format!(
        "(major `0x{VERSION_MAJOR:04x}`,\nminor `0x{VERSION_MINOR:04x}`)"
    )));
    assert!(spec.contains(&format!("| `0x{FEATURE_SIGNED:016x}` | `FEATURE_SIGNED` |")));
    assert!(spec.contains(&format!("| header               {HEADER_LEN} bytes")));
    assert!(spec.contains(&format!("| entry 0              {ENTRY_LEN} bytes")));
    assert!(spec.contains(&format!("| trailer              {TRAILER_LEN} bytes")));
    let magic = MAGIC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(spec.contains(&format!("| 0x00 | 8 | `magic` | {magic} |")));
    assert!(spec.contains(&format!(
        "`\"{}\"` (28 bytes)",
        String::from_utf8_lossy(anypatch_index::SIGNATURE_CONTEXT).replace('\0', "\\0")
    )));
    assert_eq!(anypatch_index::SIGNATURE_CONTEXT.len(), 28);
    assert!(spec.contains(&format!(
        "≤ 2^{}",
        Limits::DEFAULT_MAX_BLOCKS.trailing_zeros()
    )));
}

#[test]
fn every_byte_table_row_matches_the_three_blocks_vector() {
    let spec = spec();
    let v = vector("three-blocks");
    let header = table_rows(&spec, "### 3.1 Header");
    assert_eq!(header.len(), 16, "every header field has a row");
    let mut next = 0;
    for (off, size, field, bytes) in &header {
        assert_eq!(*off, next, "{field} follows the field before it");
        assert_eq!(bytes.len(), *size, "{field}: the example has its size");
        assert_eq!(&v.index[*off..off + size], &bytes[..], "{field}");
        next = off + size;
    }
    assert_eq!(next, HEADER_LEN, "the rows cover the header");
    let entry = table_rows(&spec, "### 3.2 Entry");
    assert_eq!(entry.len(), 2);
    for (off, size, field, bytes) in &entry {
        assert_eq!(
            &v.index[HEADER_LEN + off..HEADER_LEN + off + size],
            &bytes[..],
            "{field}"
        );
    }
    // And the entry is what the spec says it hashes: block 0 of the image.
    let e = BlockHashes::of(&v.image[..4096], v.seed);
    assert_eq!(&v.index[HEADER_LEN..HEADER_LEN + ENTRY_LEN], &e.emit()[..]);
    assert_eq!(&e.weak.to_le_bytes()[..], &entry[0].3[..]);
}

#[test]
fn checked_in_vectors_are_fresh() {
    let fresh = tempfile::tempdir().expect("tempdir");
    vectors::write_all(fresh.path()).expect("generate");
    let checked_in = root().join("spec/index-vectors");
    let list = |d: &Path| {
        let mut files = Vec::new();
        for e in walk(d) {
            files.push(e.strip_prefix(d).expect("inside").to_path_buf());
        }
        files.sort();
        files
    };
    let (want, have) = (list(fresh.path()), list(&checked_in));
    assert_eq!(
        have, want,
        "spec/index-vectors: run `cargo run -p anypatch-index --example gen-vectors`"
    );
    for rel in want {
        assert!(
            fs::read(fresh.path().join(&rel)).expect("read") == fs::read(checked_in.join(&rel)).expect("read"),
            "spec/index-vectors/{} is stale: run `cargo run -p anypatch-index --example gen-vectors`",
            rel.display()
        );
    }
    // The spec's vector table names exactly these vectors.
    let spec = spec();
    for v in vectors::all() {
        assert!(
            spec.contains(&format!("| `{}` |", v.name)),
            "{} in the spec",
            v.name
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn vectors_read_back_and_describe_their_images() {
    let test_key = ed25519_public(&vectors::TEST_KEY_SEED);
    for v in vectors::all() {
        let index = read_index(&v.index[..], &Limits::default()).expect(v.name);
        assert_eq!(index.header.old_len, v.image.len() as u64, "{}", v.name);
        assert_eq!(index.header.old_hash, *blake3::hash(&v.image).as_bytes());
        assert_eq!(index.header.block_size, v.block_size);
        let want: Vec<_> = v
            .image
            .chunks(v.block_size as usize)
            .map(|b| BlockHashes::of(b, v.seed))
            .collect();
        assert_eq!(index.entries, want, "{}", v.name);
        assert_eq!(index.verified.signed_by(&test_key), v.signed, "{}", v.name);
        assert_eq!(
            v.index.len(),
            HEADER_LEN + ENTRY_LEN * want.len() + TRAILER_LEN + if v.signed { 98 } else { 0 }
        );
    }
}

fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    // Through the index writer: sign an empty index and read its signer.
    let bytes = vectors::index_of(&[], 4096, 0, Some(seed));
    read_index(&bytes[..], &Limits::default())
        .expect("reads")
        .verified
        .signers[0]
}

/// The section a cut at `len` bytes falls in, for a signed index of
/// `blocks` blocks.
fn section_at(len: usize, blocks: usize) -> &'static str {
    let entries_end = HEADER_LEN + blocks * ENTRY_LEN;
    if len < HEADER_LEN {
        "header"
    } else if len < entries_end {
        "entries"
    } else if len < entries_end + TRAILER_LEN {
        "trailer"
    } else {
        "signature block"
    }
}

#[test]
fn truncated_at_every_length_is_refused_as_truncated_in_its_section() {
    let v = vector("signed");
    let blocks = v.image.len().div_ceil(v.block_size as usize);
    for len in 0..v.index.len() {
        match read_index(&v.index[..len], &Limits::default()) {
            Err(IndexError::Truncated { section }) => {
                assert_eq!(section, section_at(len, blocks), "cut at {len}")
            }
            other => panic!("cut at {len}: {other:?}"),
        }
    }
    assert!(read_index(&v.index[..], &Limits::default()).is_ok());
}

#[test]
fn every_flipped_byte_is_refused_with_the_right_error() {
    let v = vector("signed");
    let blocks = v.image.len().div_ceil(v.block_size as usize);
    for at in 0..v.index.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = v.index.clone();
            bad[at] ^= bit;
            let got = read_index(&bad[..], &Limits::default());
            let ok = match (section_at(at, blocks), &got) {
                (_, Err(IndexError::NotAnIndex)) => at < 8,
                ("header", Err(IndexError::HeaderHash)) => at >= 8,
                ("entries" | "trailer", Err(IndexError::ContentHash)) => true,
                // The count byte, or a signature entry.
                ("signature block", Err(IndexError::Invalid { .. })) => at == bad.len() - 98,
                ("signature block", Err(IndexError::Truncated { .. })) => at == bad.len() - 98,
                ("signature block", Err(IndexError::BadSignature)) => true,
                _ => false,
            };
            assert!(ok, "byte {at} ^ {bit:#x}: {got:?}");
        }
    }
}

/// `header`'s bytes, re-hashed after `edit`: a well-formed header with
/// hostile field values.
fn rehashed(mut h: [u8; HEADER_LEN], edit: impl Fn(&mut [u8; HEADER_LEN])) -> [u8; HEADER_LEN] {
    edit(&mut h);
    let hash = blake3::hash(&h[..0x60]);
    h[0x60..].copy_from_slice(hash.as_bytes());
    h
}

#[test]
fn hostile_headers_are_refused_before_any_entry_is_read() {
    let good = Header::new(1 << 20, [1; 32], 4096, 0, false).emit();
    let refuse = |h: [u8; HEADER_LEN], limits: Limits| {
        IndexReader::new(&h[..], &limits).expect_err("refused")
    };
    let set_u64 = |at: usize, v: u64| {
        move |h: &mut [u8; HEADER_LEN]| h[at..at + 8].copy_from_slice(&v.to_le_bytes())
    };
    // A block count that does not follow from the length.
    let h = rehashed(good, set_u64(0x58, 1 << 40));
    assert!(matches!(
        refuse(h, Limits::default()),
        IndexError::Invalid {
            field: "block count",
            ..
        }
    ));
    // A huge image: 2^53 blocks of 512 bytes, over the default limit.
    let h = rehashed(good, |h| {
        h[0x20..0x28].copy_from_slice(&(1u64 << 62).to_le_bytes());
        h[0x48..0x4C].copy_from_slice(&512u32.to_le_bytes());
        h[0x58..0x60].copy_from_slice(&(1u64 << 53).to_le_bytes());
    });
    assert!(matches!(
        refuse(h, Limits::default()),
        IndexError::TooLarge { field: "block count", got, .. } if got == 1 << 53
    ));
    // Over a lowered limit too.
    assert!(matches!(
        refuse(good, Limits::default().with_max_blocks(255)),
        IndexError::TooLarge {
            got: 256,
            max: 255,
            ..
        }
    ));
    let h = rehashed(good, |h| {
        h[0x48..0x4C].copy_from_slice(&4097u32.to_le_bytes())
    });
    assert!(matches!(
        refuse(h, Limits::default()),
        IndexError::Invalid {
            field: "block size",
            ..
        }
    ));
    let h = rehashed(good, |h| h[0x08] = 2);
    assert!(matches!(
        refuse(h, Limits::default()),
        IndexError::UnsupportedVersion { major: 2, .. }
    ));
    let h = rehashed(good, set_u64(0x10, 0x8000_0000_0000_0002));
    assert!(matches!(
        refuse(h, Limits::default()),
        IndexError::UnsupportedFeatures {
            bits: 0x8000_0000_0000_0002
        }
    ));
    for at in 0x4C..0x50 {
        let h = rehashed(good, |h| h[at] ^= 0x40);
        assert!(
            matches!(
                refuse(h, Limits::default()),
                IndexError::UnsupportedHash { .. }
            ),
            "byte {at:#x}"
        );
    }
    // A minor version above ours is read (minors only add features).
    let h = rehashed(good, |h| h[0x0A] = 9);
    assert_eq!(
        IndexReader::new(&h[..], &Limits::default())
            .expect("reads")
            .header()
            .minor,
        9
    );
}

#[test]
fn a_huge_declared_count_never_allocates_for_it() {
    // 2^40 blocks declared, the limit raised to allow them, 1 MiB of
    // entries actually there: memory follows the bytes read.
    let header = rehashed(Header::new(1 << 52, [0; 32], 4096, 0, false).emit(), |_| {});
    let mut file = header.to_vec();
    file.extend(std::iter::repeat_n(0u8, 1 << 20));
    ALLOC.reset_peak_memory();
    let got = read_index(&file[..], &Limits::default().with_max_blocks(u64::MAX));
    let peak = ALLOC.get_peak_memory();
    assert!(
        matches!(got, Err(IndexError::Truncated { section: "entries" })),
        "{got:?}"
    );
    // 52,428 entries of 20 bytes, in a vector that grows by doubling.
    assert!(peak < 4 << 20, "peak {peak} bytes");
}

#[test]
fn bytes_after_the_end_are_refused() {
    for v in vectors::all() {
        let mut bad = v.index.clone();
        bad.push(0);
        assert!(matches!(
            read_index(&bad[..], &Limits::default()),
            Err(IndexError::TrailingBytes)
        ));
    }
}

#[test]
fn rolling_key_finds_a_block_at_every_shift() {
    // The weak key of a block, slid over data that holds it at any offset.
    let v = vector("three-blocks");
    let blockk = &v.image[4096..8192];
    let want = block::weak(blockk);
    for shift in [0usize, 1, 7, 100, 4095] {
        let mut data = vec![b'x'; shift];
        data.extend_from_slice(&v.image);
        let mut r = block::Rolling::new(&data[..4096]);
        let mut found = None;
        for p in 0..=data.len() - 4096 {
            if p > 0 {
                r.roll(data[p - 1], data[p + 4095]);
            }
            if r.value() == want
                && block::strong(&data[p..p + 4096], v.seed) == block::strong(blockk, v.seed)
            {
                found = Some(p);
                break;
            }
        }
        assert_eq!(found, Some(4096 + shift), "shift {shift}");
    }
}

// ------------------------------------------------------------ mkpatch index

/// Runs mkpatch with `args`, without the user's hash cache.
fn mkpatch(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(bin("mkpatch"));
    cmd.arg("--no-cache");
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("mkpatch runs")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn mkpatch_index_describes_the_image_and_does_not_depend_on_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = corpus_small().join("ext4.old");
    let image = fs::read(&old).expect("read");
    let (a, b) = (dir.path().join("a.apidx"), dir.path().join("b.apidx"));
    ok(&mkpatch(&[
        &"index", &old, &"-o", &a, &"-j", &"1", &"--seed", &"11",
    ]));
    ok(&mkpatch(&[
        &"index", &old, &"-o", &b, &"-j", &"3", &"--seed", &"11",
    ]));
    let bytes = fs::read(&a).expect("index");
    assert!(
        bytes == fs::read(&b).expect("index"),
        "-j 1 and -j 3 differ"
    );
    let index = read_index(&bytes[..], &Limits::default()).expect("mkpatch's index reads");
    assert_eq!(index.header.old_len, image.len() as u64);
    assert_eq!(index.header.old_hash, *blake3::hash(&image).as_bytes());
    assert_eq!(index.header.seed, 11);
    assert_eq!(index.header.block_size, 4096);
    for (i, (e, b)) in index.entries.iter().zip(image.chunks(4096)).enumerate() {
        assert_eq!(*e, BlockHashes::of(b, 11), "block {i}");
    }
    // 0.5% of the image at most.
    assert!(
        bytes.len() as f64 <= 0.005 * image.len() as f64,
        "{} bytes",
        bytes.len()
    );
    // Without --seed, a random one each time.
    ok(&mkpatch(&[&"index", &old, &"-o", &b]));
    let other = read_index(&fs::read(&b).expect("index")[..], &Limits::default()).expect("reads");
    assert_ne!(other.header.seed, 11);
    assert_eq!(other.header.old_hash, index.header.old_hash);
}

#[test]
fn mkpatch_index_refuses_to_overwrite_its_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("img");
    fs::write(&img, vec![7u8; 10_000]).expect("write");
    let o = mkpatch(&[&"index", &img, &"-o", &img]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        fs::read(&img).expect("read"),
        vec![7u8; 10_000],
        "the image was destroyed"
    );
}

/// Makes a patch from `index` to sparse.new; returns mkpatch's output.
fn from_index(index: &Path, out: &Path, trusted: &[&Path]) -> Output {
    let mut cmd = Command::new(bin("mkpatch"));
    cmd.arg("--from-index").arg(index);
    for k in trusted {
        cmd.arg("--trusted-key").arg(k);
    }
    cmd.arg(corpus_small().join("sparse.new"))
        .arg("-o")
        .arg(out);
    cmd.output().expect("mkpatch runs")
}

#[test]
fn damaged_indexes_make_no_patch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = dir.path().join("sparse.apidx");
    ok(&mkpatch(&[
        &"index",
        &corpus_small().join("sparse.old"),
        &"-o",
        &index,
    ]));
    let good = fs::read(&index).expect("read");
    let bad = dir.path().join("bad.apidx");
    let patch = dir.path().join("p");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() / 2].to_vec(), "truncated"),
        (good[..100].to_vec(), "truncated"),
        ({ let mut b = good.clone(); b[5000] ^= 1; b }, "corrupt"),
        ({ let mut b = good.clone(); b[0x20] ^= 1; b }, "header is corrupt"),
        ({ let mut b = good.clone(); b.push(0); b }, "bytes after its end"),
        (b"not an index at all, but long enough to be read as a header......................................................................".to_vec(), "not an anypatch index"),
    ];
    for (bytes, says) in cases {
        fs::write(&bad, &bytes).expect("write");
        let o = from_index(&bad, &patch, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{says}: {err}");
        assert!(err.contains(says), "{says}: {err}");
        assert!(!patch.exists(), "{says}: a patch was written");
    }
}

#[test]
fn a_patch_from_another_images_index_is_refused_by_the_applier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = corpus_small();
    let (index, patch, out) = (
        dir.path().join("i"),
        dir.path().join("p"),
        dir.path().join("o"),
    );
    // The index of moved.old, used for sparse: a valid patch, but for moved.old.
    ok(&mkpatch(&[
        &"index",
        &corpus.join("moved.old"),
        &"-o",
        &index,
    ]));
    ok(&from_index(&index, &patch, &[]));
    let o = Command::new(bin("applypatch"))
        .arg(corpus.join("sparse.old"))
        .arg(&patch)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("applypatch runs");
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists());
}

#[test]
fn signed_indexes_are_accepted_with_the_right_key_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    for name in ["release", "other"] {
        ok(&mkpatch(&[&"keygen", &"-o", &p(&format!("{name}.key"))]));
    }
    let old = corpus_small().join("sparse.old");
    ok(&mkpatch(&[
        &"index",
        &"--sign",
        &p("release.key"),
        &old,
        &"-o",
        &p("signed.apidx"),
    ]));
    ok(&mkpatch(&[&"index", &old, &"-o", &p("plain.apidx")]));
    // The right key: a patch, which applies.
    ok(&from_index(
        &p("signed.apidx"),
        &p("p1"),
        &[&p("release.pub")],
    ));
    let o = Command::new(bin("applypatch"))
        .arg(&old)
        .arg(p("p1"))
        .arg("-o")
        .arg(p("new"))
        .output()
        .expect("runs");
    ok(&o);
    assert!(
        fs::read(p("new")).expect("new")
            == fs::read(corpus_small().join("sparse.new")).expect("new")
    );
    // Another key, or no signature: refused, nothing written.
    for (index, says) in [
        ("signed.apidx", "signed, but not by a trusted key"),
        ("plain.apidx", "not signed"),
    ] {
        let o = from_index(&p(index), &p("p2"), &[&p("other.pub")]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{index}: {err}");
        assert!(err.contains(says), "{index}: {err}");
        assert!(!p("p2").exists());
    }
    // Altered after signing: refused even without --trusted-key, and with
    // the header's hash redone, by the signature.
    let mut bytes = fs::read(p("signed.apidx")).expect("read");
    let n = bytes.len();
    bytes[n - 98 - 32 - 5] ^= 1; // an entry
    let body_end = n - 98 - 32;
    let trailer = *blake3::hash(&bytes[..body_end]).as_bytes();
    bytes[body_end..body_end + 32].copy_from_slice(&trailer);
    fs::write(p("forged.apidx"), &bytes).expect("write");
    let o = from_index(&p("forged.apidx"), &p("p3"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("does not verify"), "{err}");
    assert!(!p("p3").exists());
}

#[test]
fn an_unchanged_image_is_indexed_again_from_the_hash_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let img = p("img");
    fs::copy(corpus_small().join("sparse.old"), &img).expect("copy");
    // Changed an hour ago: not racy, so the cache may keep what it learns.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    // Setting it changes the ctime, which cannot be set back: wait out the
    // cache's racy margin (a precondition, not a timing assertion).
    let set_mtime = |t| {
        fs::File::options()
            .write(true)
            .open(&img)
            .expect("open")
            .set_modified(t)
            .expect("set mtime");
        std::thread::sleep(std::time::Duration::from_millis(2100));
    };
    set_mtime(hour_ago);
    let seed_of = |index: &Path| {
        read_index(&fs::read(index).expect("read")[..], &Limits::default())
            .expect("a valid index")
            .header
            .seed
    };
    let cache = p("cache");
    let index = |out: &str, extra: &[&str]| {
        let mut cmd = Command::new(bin("mkpatch"));
        cmd.arg("index").arg(&img).arg("-o").arg(p(out)).args(extra);
        ok(&cmd.output().expect("runs"));
        p(out)
    };
    let with_cache = ["--cache", cache.to_str().expect("utf-8")];
    let first = index("1", &with_cache);
    // Seeds are random, so an index with the first one's seed came from the cache.
    let second = index("2", &with_cache);
    assert!(fs::read(&first).expect("read") == fs::read(&second).expect("read"));
    // Again to the same file, which already holds that index: left in place
    // (the same inode), its mtime set to now as a rewrite would.
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(&second).expect("stat").ino();
    fs::File::options()
        .write(true)
        .open(&second)
        .expect("open")
        .set_modified(hour_ago)
        .expect("set mtime");
    index("2", &with_cache);
    let m = fs::metadata(&second).expect("stat");
    assert_eq!(m.ino(), ino, "an index already there was written again");
    assert!(
        m.modified().expect("mtime") > hour_ago,
        "its mtime was not set"
    );
    // One byte of it damaged: replaced by the right bytes.
    let mut damaged = fs::read(&second).expect("read");
    damaged[HEADER_LEN + 5] ^= 1;
    fs::write(&second, &damaged).expect("write");
    index("2", &with_cache);
    assert!(fs::read(&first).expect("read") == fs::read(&second).expect("read"));
    assert_ne!(fs::metadata(&second).expect("stat").ino(), ino);
    assert_ne!(seed_of(&index("3", &["--no-cache"])), seed_of(&first));
    // Another mtime: the entry is not trusted; the index is made again.
    set_mtime(hour_ago - std::time::Duration::from_secs(60));
    let third = index("4", &with_cache);
    assert_ne!(seed_of(&third), seed_of(&first));
    // A damaged entry is ignored and rewritten, never fatal.
    for e in fs::read_dir(&cache).expect("cache dir").flatten() {
        let path = e.path();
        let mut bytes = fs::read(&path).expect("read");
        let n = bytes.len();
        bytes[n / 2] ^= 0xFF;
        fs::write(&path, bytes).expect("write");
    }
    let fourth = index("5", &with_cache);
    assert_ne!(seed_of(&fourth), seed_of(&third));
    let fifth = index("6", &with_cache);
    assert_eq!(seed_of(&fifth), seed_of(&fourth));
    // Signed, from the same entry (which keeps the trailers of the signed
    // and the unsigned index): the index made without the cache, with the
    // same seed and key, to the byte.
    ok(&mkpatch(&[&"keygen", &"-o", &p("k.key")]));
    let key = p("k.key");
    let signed = index(
        "7",
        &[
            "--cache",
            cache.to_str().expect("utf-8"),
            "--sign",
            key.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(seed_of(&signed), seed_of(&fourth), "not from the cache");
    let seed = seed_of(&fourth).to_string();
    let fresh = index(
        "8",
        &[
            "--no-cache",
            "--sign",
            key.to_str().expect("utf-8"),
            "--seed",
            &seed,
        ],
    );
    assert!(
        fs::read(&signed).expect("read") == fs::read(&fresh).expect("read"),
        "a signed index from the cache differs from the one made without it"
    );
    let image = fs::read(&img).expect("read");
    let read = read_index(&fs::read(&fifth).expect("read")[..], &Limits::default()).expect("valid");
    assert_eq!(read.header.old_hash, *blake3::hash(&image).as_bytes());
}

#[test]
fn an_index_whose_entries_lie_never_makes_a_wrong_result() {
    // sparse.old's index with the entries of blocks 0 and 1 swapped and
    // every hash redone: the reader cannot tell, and the patch copies old
    // block 1 where new block 0 is. The applier's base check passes (it is
    // sparse.old), and its new-file check refuses the result; -o leaves
    // nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let corpus = corpus_small();
    ok(&mkpatch(&[
        &"index",
        &corpus.join("sparse.old"),
        &"-o",
        &p("sparse.apidx"),
    ]));
    let mut forged = fs::read(p("sparse.apidx")).expect("read");
    let body = forged.len() - TRAILER_LEN;
    let (e0, e1) = (HEADER_LEN, HEADER_LEN + ENTRY_LEN);
    assert_ne!(
        forged[e0..e1],
        forged[e1..e1 + ENTRY_LEN],
        "blocks 0 and 1 differ"
    );
    let first: Vec<u8> = forged[e0..e1].to_vec();
    forged.copy_within(e1..e1 + ENTRY_LEN, e0);
    forged[e1..e1 + ENTRY_LEN].copy_from_slice(&first);
    let trailer = *blake3::hash(&forged[..body]).as_bytes();
    forged[body..].copy_from_slice(&trailer);
    fs::write(p("forged.apidx"), &forged).expect("write");
    ok(&from_index(&p("forged.apidx"), &p("patch"), &[]));
    let o = Command::new(bin("applypatch"))
        .arg(corpus.join("sparse.old"))
        .arg(p("patch"))
        .arg("-o")
        .arg(p("out"))
        .output()
        .expect("applypatch runs");
    assert_ne!(o.status.code(), Some(0), "a wrong result was accepted");
    assert!(!p("out").exists(), "a wrong result was left behind");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Any corruption of a signed index (bytes changed, cut, appended) is
    /// refused, without a panic; the reader never accepts what it was not
    /// given.
    #[test]
    fn corrupted_indexes_are_refused_without_panic(
        edits in proptest::collection::vec((0usize..458, 1u8..=255), 1..6),
        cut in proptest::option::of(0usize..458),
        extra in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3),
    ) {
        let v = vector("signed");
        let mut bytes = v.index.clone();
        for (at, x) in &edits {
            bytes[*at % v.index.len()] ^= x;
        }
        if let Some(c) = cut {
            bytes.truncate(c);
        }
        bytes.extend_from_slice(&extra);
        proptest::prop_assert!(read_index(&bytes[..], &Limits::default()).is_err());
    }

    /// Arbitrary bytes, with or without the magic in front, never panic
    /// the reader, and never make it allocate for a declared count.
    #[test]
    fn arbitrary_bytes_never_panic(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        magic in proptest::prelude::any::<bool>(),
    ) {
        let mut bytes = if magic { MAGIC.to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&body);
        let _ = read_index(&bytes[..], &Limits::default().with_max_blocks(u64::MAX));
    }
}
