#![no_main]
//! See fuzz/README.md; the checks live in `scopegate::fuzzing::path_and_route`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate::fuzzing::path_and_route(data);
});
