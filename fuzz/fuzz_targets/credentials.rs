#![no_main]
//! See `tokengate::fuzzing::credentials` for what is fed in and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokengate::fuzzing::credentials(data));
