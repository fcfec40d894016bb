//! Fuzz target: untrusted bytes through the whole edge path (stream decode, validate, read,
//! re-encode), whole and split byte by byte. Keep any input it finds in
//! `tests/fuzz-regressions/decode/`: the test suite replays that folder.
//!
//! Run with: `cd protocol/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run decode`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    garrison_tests::wire::check_stream(data, &[]);
    garrison_tests::wire::check_stream(data, &vec![1; data.len()]);
});
