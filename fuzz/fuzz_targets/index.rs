//! Arbitrary bytes as a block index (read as they are and re-sealed, then,
//! when accepted, given to `make_patch_from_index`), or as a pair whose old
//! file is indexed and patched from its index: no panic, bounded memory,
//! and every patch from a good index applies. See
//! `anypatch_tests::hostile_index::check_index`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anypatch_tests::hostile_index::check_index(data));
