//! Inputs the fuzzer (`protocol/fuzz`, target `decode`) ever found interesting or crashing are
//! replayed here on every test run, through the same check the fuzz target runs.

use std::path::Path;

use garrison_tests::wire::check_stream;

#[test]
fn fuzz_regression_inputs_replay_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-regressions/decode");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the regression folder exists") {
        let path = entry.expect("readable entry").path();
        let data = std::fs::read(&path).expect("readable input");
        // The fuzz target feeds its input whole, then again split byte by byte.
        check_stream(&data, &[]);
        check_stream(&data, &vec![1; data.len()]);
        replayed += 1;
    }
    assert!(replayed > 0, "no regression inputs in {}", dir.display());
}
