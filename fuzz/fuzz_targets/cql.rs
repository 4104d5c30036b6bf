#![no_main]
//! See `tokengate::fuzzing::cql` for what is fed in and what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tokengate::fuzzing::cql(data));
