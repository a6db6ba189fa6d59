#![no_main]
//! See fuzz/README.md; the checks live in `scopegate::fuzzing::h1_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate::fuzzing::h1_request(data);
});
