//! Old and new made from the input by structured edits, then the producer,
//! the engine and the reference applier: all three agree on new. See
//! `anypatch_tests::hostile::check_differential`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anypatch_tests::hostile::check_differential(data));
