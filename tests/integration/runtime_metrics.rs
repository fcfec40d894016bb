//! Metrics: what a kind measures reaches the Prometheus text (entities by state, handler and
//! mailbox histograms, restarts by cause fingerprint with the panic's `file:line`), and the
//! HTTP endpoint answers `/metrics`, `/healthz` and `/readyz` as a probe expects.

use std::time::Duration;

use garrison_runtime::{KindConfig, metrics::Metrics};
use garrison_tests::probe::eventually;

use super::counter::{Msg, add, get, start};

const LIMIT: Duration = Duration::from_secs(10);

use garrison_tests::probe::metric_sample as sample;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_reports_its_entities_handlers_and_crash_causes() {
    let (counters, _, tree) = start(KindConfig::default()).await;
    let mut metrics = Metrics::new();
    metrics.kind(&counters);
    for seq in 0..5 {
        assert!(counters.send(&1, add(seq, 1)).is_ok());
    }
    assert_eq!(get(&counters, 1).await.0.total, 5);
    // Two keys poisoned: one bug, so one cause, counted twice.
    for key in [2, 3] {
        assert!(counters.send(&key, Msg::Poison).is_ok());
    }
    eventually("both crashes counted and dead-lettered", LIMIT, || {
        let causes = counters.crash_causes();
        let letters = counters.dead_letters().len();
        async move { causes.first().is_some_and(|cause| cause.count == 2) && letters == 2 }
    })
    .await;
    let causes = counters.crash_causes();
    assert_eq!(causes.len(), 1, "one bug, one cause: {causes:?}");
    assert_eq!(causes[0].exit, "panic");
    assert!(
        causes[0].cause.starts_with("tests/integration/counter.rs:"),
        "the panic's location is the fingerprint: {}",
        causes[0].cause
    );

    let text = metrics.encode();
    assert_eq!(
        sample(&text, r#"garrison_entities{kind="counter",state="active"}"#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"garrison_handler_seconds_count{kind="counter",event="add"}"#
        ),
        Some(5.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"garrison_mailbox_wait_seconds_count{kind="counter"}"#
        )
        .is_some_and(|count| count >= 8.0),
        "every handled message waited in a mailbox: {text}"
    );
    let restarts = format!(
        r#"garrison_entity_restarts_total{{kind="counter",exit="panic",cause="{}"}}"#,
        causes[0].cause
    );
    assert_eq!(sample(&text, &restarts), Some(2.0), "{text}");
    assert_eq!(
        sample(&text, r#"garrison_dead_letters_total{kind="counter"}"#),
        Some(2.0),
        "the two poisons were dead-lettered: {text}"
    );
    assert!(
        text.ends_with("# EOF\n"),
        "a complete OpenMetrics exposition"
    );
    tree.stop().await.unwrap();
}

fn get_url(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(LIMIT).call() {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(status, response)) => (status, response.into_string().unwrap()),
        Err(error) => panic!("GET {url}: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_metrics_and_probes() {
    let (counters, _, tree) = start(KindConfig::default()).await;
    assert!(counters.send(&1, add(0, 1)).is_ok());
    get(&counters, 1).await;
    let mut metrics = Metrics::new();
    metrics.kind(&counters);
    let server = metrics.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let health = server.health().clone();
    let answers = tokio::task::spawn_blocking(move || {
        let mut answers = vec![get_url(&format!("{base}/readyz")).0];
        health.set_ready(true);
        answers.push(get_url(&format!("{base}/readyz")).0);
        answers.push(get_url(&format!("{base}/healthz")).0);
        answers.push(get_url(&format!("{base}/nothing")).0);
        let posted = ureq::post(&format!("{base}/metrics")).call();
        answers.push(match posted {
            Err(ureq::Error::Status(status, _)) => status,
            other => panic!("POST /metrics: {other:?}"),
        });
        let (status, text) = get_url(&format!("{base}/metrics"));
        answers.push(status);
        (answers, text)
    })
    .await
    .unwrap();
    assert_eq!(answers.0, [503, 200, 200, 404, 405, 200]);
    assert!(
        answers
            .1
            .contains(r#"garrison_entities{kind="counter",state="active"} 1"#),
        "{}",
        answers.1
    );
    server.stop().await;
    tree.stop().await.unwrap();
}
