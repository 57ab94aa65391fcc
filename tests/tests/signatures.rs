//! Signed patches: keygen, --sign, --trusted-key, and refusal of unsigned,
//! foreign-signed and tampered patches before anything reaches the target.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anypatch_apply::{Applier, ApplyError, Config, Event};
use anypatch_format::{Header, Preamble, PreambleRepr, HASH_LEN, PREAMBLE_LEN};
use anypatch_tests::{bin, corpus_small};

struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        let k = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for name in ["release", "other"] {
            let o = Command::new(bin("mkpatch"))
                .arg("keygen")
                .arg("-o")
                .arg(k.path(&format!("{name}.key")))
                .output()
                .expect("runs");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        k
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn make(keys: &Keys, sign: Option<&str>, out: &Path) {
    let dir = corpus_small();
    let mut cmd = Command::new(bin("mkpatch"));
    cmd.arg(dir.join("sparse.old"))
        .arg(dir.join("sparse.new"))
        .arg("-o")
        .arg(out)
        .arg("-q");
    if let Some(k) = sign {
        cmd.arg("--sign").arg(keys.path(k));
    }
    assert!(cmd.status().expect("runs").success());
}

fn apply(keys: &Keys, trusted: &[&str], patch: &Path, out: &Path) -> Output {
    let mut cmd = Command::new(bin("applypatch"));
    for k in trusted {
        cmd.arg("--trusted-key").arg(keys.path(k));
    }
    cmd.arg(corpus_small().join("sparse.old"))
        .arg(patch)
        .arg("-o")
        .arg(out)
        .output()
        .expect("runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn keygen_writes_a_private_secret_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let keys = Keys::new();
    let mode = fs::metadata(keys.path("release.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = fs::read_to_string(keys.path("release.pub")).expect("pub");
    assert!(
        text.starts_with("anypatch public-key v1 ed25519 "),
        "{text}"
    );
    let o = Command::new(bin("mkpatch"))
        .arg("keygen")
        .arg("-o")
        .arg(keys.path("release.key"))
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("never overwritten"));
}

#[test]
fn signed_patch_applies_with_its_key_and_inspect_shows_the_signer() {
    let keys = Keys::new();
    let patch = keys.path("signed.anyp");
    make(&keys, Some("release.key"), &patch);
    let out = keys.path("new");
    let o = apply(&keys, &["release.pub"], &patch, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        fs::read(&out).expect("out") == fs::read(corpus_small().join("sparse.new")).expect("new")
    );

    // Several trusted keys: any one suffices.
    let o = apply(
        &keys,
        &["other.pub", "release.pub"],
        &patch,
        &keys.path("new2"),
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let o = Command::new(bin("mkpatch"))
        .arg("inspect")
        .arg(&patch)
        .arg("--json")
        .output()
        .expect("runs");
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["signers"][0]["verifies"], serde_json::json!(true), "{j}");
    assert_eq!(
        j["signers"][0]["key_id"].as_str().map(str::len),
        Some(16),
        "{j}"
    );
}

#[test]
fn unsigned_foreign_and_tampered_patches_are_refused_before_any_write() {
    let keys = Keys::new();
    let signed = keys.path("signed.anyp");
    let unsigned = keys.path("unsigned.anyp");
    make(&keys, Some("release.key"), &signed);
    make(&keys, None, &unsigned);

    let check = |patch: &Path, trusted: &[&str], code: i32, needle: &str| {
        let out = keys.path("refused.out");
        let o = apply(&keys, trusted, patch, &out);
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
        assert!(!out.exists(), "a refused patch left an output file");
        // In place too: the target stays byte-identical.
        let disk = keys.path("disk");
        fs::copy(corpus_small().join("sparse.old"), &disk).expect("copy");
        let mut cmd = Command::new(bin("applypatch"));
        for k in trusted {
            cmd.arg("--trusted-key").arg(keys.path(k));
        }
        let o = cmd
            .arg("--in-place")
            .arg(&disk)
            .arg(patch)
            .output()
            .expect("runs");
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        assert!(
            fs::read(&disk).expect("disk")
                == fs::read(corpus_small().join("sparse.old")).expect("old")
        );
    };
    check(&unsigned, &["release.pub"], 6, "not signed");
    check(&signed, &["other.pub"], 6, "not one of the trusted keys");

    // A forger edits the header (here: the new hash) and fixes the header hash;
    // only the signature can tell.
    let mut p = fs::read(&signed).expect("read");
    let pre = PreambleRepr::parse(&Preamble::new_checked(&p[..]).expect("len")).expect("valid");
    let body_end = PREAMBLE_LEN + pre.header_len as usize;
    let mut header = Header::parse(&p[PREAMBLE_LEN..body_end], pre.minor).expect("header");
    header.producer = "forged".into();
    let mut forged = header.emit(pre.required_features, pre.signature_len);
    forged.extend_from_slice(&p[body_end + HASH_LEN..]);
    let forged_path = keys.path("forged.anyp");
    fs::write(&forged_path, &forged).expect("write");
    check(&forged_path, &["release.pub"], 6, "does not verify");

    // A flipped bit inside the signature itself.
    let sig_at = body_end + HASH_LEN + 40;
    p[sig_at] ^= 1;
    let flipped = keys.path("flipped.anyp");
    fs::write(&flipped, &p).expect("write");
    check(&flipped, &["release.pub"], 6, "does not verify");
}

#[test]
fn the_engine_refuses_before_reading_old_or_reporting_the_header() {
    let keys = Keys::new();
    let patch_path = keys.path("unsigned.anyp");
    make(&keys, None, &patch_path);
    let patch = fs::read(&patch_path).expect("read");
    let mut a = Applier::new(Config::new(
        fs::metadata(corpus_small().join("sparse.old"))
            .expect("old")
            .len(),
    ));
    a.require_signature(&[[7u8; 32]]);
    let mut at = 0;
    let err = loop {
        match a.poll() {
            Ok(Event::NeedInput) => at += a.feed(&patch[at..]),
            Ok(other) => panic!("the engine got past the signature check: {other:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, ApplyError::Unsigned);
}

/// Issue 13, defect 16: a signature that is present but does not verify
/// means the patch was altered after signing. It is refused (exit 6) with or
/// without trusted keys, by `-o`, `--check` and `--in-place`, and the target
/// is never touched. The patch hash is fixed up, so only the signature tells.
#[test]
fn an_altered_signed_patch_is_refused_without_trusted_keys_too() {
    let keys = Keys::new();
    let signed = keys.path("signed.anyp");
    make(&keys, Some("release.key"), &signed);
    let mut p = fs::read(&signed).expect("read");
    let pre = PreambleRepr::parse(&Preamble::new_checked(&p[..]).expect("len")).expect("valid");
    let sig_at = PREAMBLE_LEN + pre.header_len as usize + HASH_LEN + 1 + 33 + 5;
    p[sig_at] ^= 0x04;
    let n = p.len() - anypatch_format::TRAILER_LEN;
    let fixed = *blake3::hash(&p[..n]).as_bytes();
    p[n..n + 32].copy_from_slice(&fixed);
    let altered = keys.path("altered.anyp");
    fs::write(&altered, &p).expect("write");

    let out = keys.path("new.img");
    let o = apply(&keys, &[], &altered, &out);
    assert_eq!(o.status.code(), Some(6), "-o: {}", stderr(&o));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    assert!(!out.exists(), "-o left an output behind");

    let o = Command::new(bin("applypatch"))
        .arg("--check")
        .arg(corpus_small().join("sparse.old"))
        .arg(&altered)
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(6), "--check: {}", stderr(&o));

    let disk = keys.path("disk.img");
    fs::copy(corpus_small().join("sparse.old"), &disk).expect("copy");
    let o = Command::new(bin("applypatch"))
        .arg("--in-place")
        .arg(&disk)
        .arg(&altered)
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(6), "--in-place: {}", stderr(&o));
    assert!(
        fs::read(&disk).expect("disk") == fs::read(corpus_small().join("sparse.old")).expect("old"),
        "--in-place changed the target of an altered patch"
    );
}
