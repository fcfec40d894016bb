//! The coarse clock advances with real time, within its resolution, and never goes back.

use std::time::{Duration, Instant};

use garrison_runtime::clock;
use garrison_tests::probe::eventually;

#[tokio::test]
async fn coarse_clock_tracks_real_time_without_going_back() {
    let start_coarse = clock::now_millis();
    let start_real = Instant::now();
    let mut last = start_coarse;
    eventually("50 coarse milliseconds", Duration::from_secs(10), || {
        let now = clock::now_millis();
        assert!(now >= last, "the clock went back from {last} to {now}");
        last = now;
        async move { now >= start_coarse + 50 }
    })
    .await;
    let real = start_real.elapsed().as_millis() as u64;
    let coarse = clock::now_millis() - start_coarse;
    // Each reading lags real time by at most the resolution: the first may lag more than the
    // last, so the interval may read longer than it was by up to that, never more.
    let resolution = clock::resolution().as_millis() as u64;
    assert!(
        coarse <= real + resolution,
        "coarse {coarse} ms ahead of real {real} ms (resolution {resolution} ms)"
    );
    assert!(
        real - coarse.min(real) <= 50,
        "coarse {coarse} ms lags real {real} ms"
    );
}
