//! Engine unit tests: limits and zero runs.

use alloc::string::String;
use alloc::vec;

use anypatch_format::{PageRef, Trailer, TRAILER_LEN};

use super::*;

/// An unsigned patch for an empty old file whose new file is one zero
/// extent of `len` bytes: a header, one plain page and a trailer.
fn zero_patch(len: u64) -> Vec<u8> {
    let page = Page {
        extents: vec![Extent::Zero { len }],
        next: None,
    }
    .emit();
    let mut zeros = TreeHasher::new();
    hash_zeros(Some(&mut zeros), if len <= 1 << 24 { len } else { 0 });
    let mut header = Header {
        old_len: 0,
        new_len: len,
        old_hash: *blake3::hash(b"").as_bytes(),
        new_hash: zeros.finalize(),
        block_size: 4096,
        segment_max: 0,
        codec: Codec::Zstd as u8,
        flags: 0,
        patch_len: 0,
        extent_count: 1,
        segment_count: 0,
        first_page: PageRef {
            len: page.len() as u32,
            hash: *blake3::hash(&page).as_bytes(),
        },
        producer: String::from("engine test"),
    };
    // patch_len is inside the header it measures: settle it.
    let mut section = header.emit(0, 0);
    while header.patch_len != (section.len() + page.len() + TRAILER_LEN) as u64 {
        header.patch_len = (section.len() + page.len() + TRAILER_LEN) as u64;
        section = header.emit(0, 0);
    }
    let mut patch = section;
    patch.extend_from_slice(&page);
    let mut trailer = [0u8; TRAILER_LEN];
    Trailer {
        patch_hash: *blake3::hash(&patch).as_bytes(),
    }
    .emit(&mut trailer);
    patch.extend_from_slice(&trailer);
    patch
}

/// Drives `patch` to the end or to an error; returns the `Zero` events
/// and the outcome.
fn run(cfg: Config, patch: &[u8]) -> (Vec<(u64, u64)>, Result<Summary, ApplyError>) {
    let mut a = Applier::new(cfg);
    let mut zeros = Vec::new();
    let mut fed = 0;
    loop {
        match a.poll() {
            Err(e) => return (zeros, Err(e)),
            Ok(Event::NeedInput) if fed < patch.len() => fed += a.feed(&patch[fed..]),
            Ok(Event::NeedInput) => a.end_of_input(),
            Ok(Event::Zero { offset, len }) => zeros.push((offset, len)),
            Ok(Event::Done(s)) => return (zeros, Ok(s)),
            Ok(Event::ReadOld { .. } | Event::Write { .. } | Event::Header(_)) => {}
        }
    }
}

#[test]
fn max_new_len_refuses_before_any_work() {
    let patch = zero_patch(1 << 50);
    let cfg = Config {
        max_new_len: 64 << 30,
        ..Config::new(0)
    };
    let (zeros, got) = run(cfg, &patch);
    assert_eq!(
        got,
        Err(ApplyError::NewTooLarge {
            got: 1 << 50,
            max: 64 << 30
        })
    );
    assert!(zeros.is_empty(), "refused before any zero was handed out");
    assert_eq!(
        got.expect_err("refused").class(),
        crate::ErrorClass::Untrusted
    );
    // At the limit it applies.
    let patch = zero_patch(1 << 20);
    let cfg = Config {
        max_new_len: 1 << 20,
        ..Config::new(0)
    };
    assert!(run(cfg, &patch).1.is_ok());
}

#[test]
fn zero_step_hands_out_a_hashed_zero_run_in_pieces() {
    let len = (5 << 20) + 7;
    let patch = zero_patch(len);
    let (whole, got) = run(Config::new(0), &patch);
    assert_eq!(whole, [(0, len)]);
    assert!(got.is_ok(), "{got:?}");
    let cfg = Config {
        zero_step: 1 << 20,
        ..Config::new(0)
    };
    let (pieces, got) = run(cfg, &patch);
    let summary = got.expect("the pieces hash to the header's new_hash");
    assert_eq!(pieces.len(), 6);
    assert!(pieces.iter().all(|&(_, n)| n <= 1 << 20));
    let mut end = 0;
    for &(offset, n) in &pieces {
        assert_eq!(offset, end, "in order, without gaps");
        end += n;
    }
    assert_eq!((end, summary.bytes_zeroed), (len, len));
}

#[test]
fn zero_step_returns_control_during_a_huge_zero_run() {
    // 2^50 declared zeros: each poll hashes one step and returns.
    let patch = zero_patch(1 << 50);
    let mut a = Applier::new(Config {
        zero_step: 1 << 20,
        ..Config::new(0)
    });
    let mut fed = 0;
    let mut zeros = 0;
    while zeros < 3 {
        match a.poll().expect("no error before the end") {
            Event::NeedInput => fed += a.feed(&patch[fed..]),
            Event::Zero { offset, len } => {
                assert_eq!((offset, len), (zeros << 20, 1 << 20));
                zeros += 1;
            }
            _ => {}
        }
    }
    assert_eq!(a.progress().new_done, 3 << 20);
}
