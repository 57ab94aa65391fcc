//! Arbitrary bytes as a patch, as they are and re-sealed, through the engine
//! (fresh output and both in-place passes) and the reference applier: no
//! panic, no read outside the old file, no write beyond `new_len`, and the
//! same verdict and bytes. See `anypatch_tests::hostile::check_apply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anypatch_tests::hostile::check_apply(data));
