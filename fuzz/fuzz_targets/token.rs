#![no_main]
//! See fuzz/README.md; the checks live in `scopegate::fuzzing::token`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate::fuzzing::token(data);
});
