#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tokengate::fuzzing::request_target(data));
