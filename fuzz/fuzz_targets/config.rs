#![no_main]
//! See fuzz/README.md; the checks live in `scopegate::fuzzing::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate::fuzzing::config(data);
});
