#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ballast::fuzzing::tool_calls(data));
