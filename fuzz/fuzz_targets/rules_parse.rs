#![no_main]
//! See `tokengate::fuzzing::rules_parse` for what is fed in and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokengate::fuzzing::rules_parse(data));
