//! The battle server's metrics scraped by a real Prometheus and read back through its HTTP
//! query API.
//!
//! `.ci/run` starts Prometheus with `tests/prometheus/prometheus.yml`, which scrapes
//! `127.0.0.1:9465` every second, and sets `GARRISON_PROMETHEUS_QUERY`. Without it the test says
//! so and passes, except under CI (`CI` set), where a missing Prometheus is a failure.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use garrison_battle::{
    bots::{self, BotOptions},
    run::local_server,
    server::BattleServer,
};
use garrison_tests::probe::eventually;
use serde_json::Value;

const KEY: &str = "prometheus test key";
/// The address `tests/prometheus/prometheus.yml` scrapes.
const METRICS: &str = "127.0.0.1:9465";

/// The value of the first series `query` returns, if any.
fn query(base: &str, query: &str) -> Option<f64> {
    let response: Value = ureq::get(&format!("{base}/api/v1/query"))
        .query("query", query)
        .timeout(Duration::from_secs(5))
        .call()
        .ok()?
        .into_json()
        .ok()?;
    response["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battle_metrics_reach_a_real_prometheus() {
    let Ok(base) = std::env::var("GARRISON_PROMETHEUS_QUERY") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test against Prometheus (.ci/run starts it)"
        );
        eprintln!("GARRISON_PROMETHEUS_QUERY is not set: no Prometheus to check against");
        return;
    };
    let server = BattleServer::start(local_server(4, KEY).unwrap())
        .await
        .unwrap();
    let endpoint = server
        .metrics()
        .serve(METRICS.parse().unwrap())
        .await
        .expect("the metrics address is free");
    endpoint.health().set_ready(true);
    let address = server.gateway.tcp_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let bots = bots::spawn(
        address,
        KEY.as_bytes(),
        1..=4,
        deadline,
        &BotOptions::default(),
    );
    for bot in bots {
        bot.await.unwrap().unwrap();
    }
    let frames = server.stats.frames.load(Ordering::Relaxed) as f64;
    assert!(frames >= 60.0, "the room played: {frames} frames");
    // Prometheus scrapes every second; poll its query API until a scrape after the match.
    let checks = [
        ("garrison_battle_frames_total", frames),
        (r#"garrison_gateway_frames_total{direction="in"}"#, 100.0),
        (r#"sum(garrison_handler_seconds_count{kind="room"})"#, 100.0),
        ("garrison_gateway_connections_accepted_total", 4.0),
        (r#"up{job="garrison"}"#, 1.0),
    ];
    for (series, at_least) in checks {
        let base = base.clone();
        eventually(
            &format!("Prometheus has {series} >= {at_least}"),
            Duration::from_secs(20),
            move || {
                let base = base.clone();
                async move {
                    tokio::task::spawn_blocking(move || query(&base, series))
                        .await
                        .unwrap()
                        .is_some_and(|value| value >= at_least)
                }
            },
        )
        .await;
    }
    endpoint.stop().await;
    server.stop().await;
}
