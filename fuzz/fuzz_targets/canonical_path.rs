#![no_main]
//! See `tokengate::fuzzing::canonical_path` for what is fed in and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokengate::fuzzing::canonical_path(data));
