//! Ratio reporting for criterion benchmarks.
//!
//! Every Garrison benchmark group names our function `garrison` and each baseline after its
//! crate, so `target/criterion/<group>/<function>/new/estimates.json` holds each figure. After a
//! run, [`report_ratios`] reads those files and prints, per group, how our mean compares with each
//! baseline measured in the same run. Only ratios are meaningful on a shared, noisy machine.

use std::path::{Path, PathBuf};

/// Our function's name in every group.
pub const OURS: &str = "garrison";

/// Where criterion keeps its results: `$CARGO_TARGET_DIR/criterion`, else the nearest
/// `target/criterion` above the working directory (cargo runs benches in the package folder).
pub fn criterion_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(dir).join("criterion"));
    }
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let candidate = dir.join("target").join("criterion");
        if candidate.is_dir() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// The mean time in nanoseconds criterion recorded for `group/function` in its latest run.
pub fn mean_ns(root: &Path, group: &str, function: &str) -> Option<f64> {
    let path = root
        .join(group)
        .join(function)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("mean")?.get("point_estimate")?.as_f64()
}

/// Prints one line per `(group, baseline)`: our mean, the baseline's mean, and how many times
/// faster ours is (`baseline / garrison`; below 1.0 means slower). Groups that did not run (a
/// filtered `cargo bench`) are skipped.
pub fn report_ratios(comparisons: &[(&str, &str)]) {
    let Some(root) = criterion_dir() else {
        println!("ratio report: no criterion output found");
        return;
    };
    println!(
        "\n{:<22} {:>14} {:<16} {:>14} {:>9}",
        "group", "garrison", "baseline", "baseline", "speedup"
    );
    for (group, baseline) in comparisons {
        let (Some(ours), Some(theirs)) =
            (mean_ns(&root, group, OURS), mean_ns(&root, group, baseline))
        else {
            continue;
        };
        println!(
            "{group:<22} {:>14} {baseline:<16} {:>14} {:>8.2}x",
            format_ns(ours),
            format_ns(theirs),
            theirs / ours
        );
    }
}

/// Formats nanoseconds with a readable unit.
pub fn format_ns(ns: f64) -> String {
    match ns {
        ns if ns < 1_000.0 => format!("{ns:.2} ns"),
        ns if ns < 1_000_000.0 => format!("{:.2} us", ns / 1_000.0),
        ns => format!("{:.2} ms", ns / 1_000_000.0),
    }
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// The value at `fraction` (0.0 to 1.0) of a sorted, non-empty slice.
///
/// # Panics
/// On an empty slice.
pub fn percentile<T: Copy>(sorted: &[T], fraction: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * fraction.clamp(0.0, 1.0)).round() as usize]
}

/// Keeps the panics a benchmark requests (payload `message`) off the report; any other panic is
/// a failure and is printed as usual.
pub fn silence_requested_panics(message: &'static str) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&message) {
            default_hook(info);
        }
    }));
}

/// Whether a fixed-count measurement named `name` should run after the criterion groups: not
/// when criterion only smoke-tests the benches (`--test`), nor when the command line filters to
/// other names.
pub fn extra_measurement_selected(name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filtered_out = args
        .iter()
        .any(|arg| !arg.starts_with('-') && !name.contains(arg.as_str()));
    !args.iter().any(|arg| arg == "--test") && !filtered_out
}
