//! Mistakes in a `supervisor!` declaration are compile errors that say what is wrong
//! (trybuild; the expected messages are in `tests/ui/supervisor/*.stderr`).

#[test]
fn dsl_mistakes_fail_to_compile() {
    trybuild::TestCases::new().compile_fail("ui/supervisor/*.rs");
}
