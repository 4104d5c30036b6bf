#![no_main]
//! See `tokengate::fuzzing::json_body` for what is fed in and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokengate::fuzzing::json_body(data));
