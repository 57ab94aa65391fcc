//! Every parser (preamble, header, plain and compact page, ops, trailer,
//! and a whole patch's layout) on arbitrary bytes: no panic, and whatever
//! parses re-encodes to the same value. See
//! `anypatch_tests::hostile::check_parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| anypatch_tests::hostile::check_parse(data));
