//! Overload protection on the battle server: past the adaptive limit, joins are refused with
//! `Refused` code 105 and a retry-after (never dropped silently), the players already seated
//! play on, and the refusals are counted on both sides.

use std::time::{Duration, Instant};

use garrison_battle::{
    bots::{self, BotOptions},
    run::local_server,
    server::{BattleServer, Protection},
};
use garrison_client::{Client, ClientConfig, ClientError};
use garrison_protocol::control::RefusalCode;
use garrison_runtime::{gateway::ticket, overload::OverloadConfig};
use garrison_tests::probe::metric_sample;

const KEY: &str = "overload test key";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_past_the_limit_are_refused_with_a_retry_after_and_seated_players_play_on() {
    let mut config = local_server(8, KEY).unwrap();
    // Room for one room of 8, and no more whatever the latency.
    config.protection = Protection::Adaptive(OverloadConfig {
        initial_limit: 8,
        min_limit: 8,
        max_limit: 8,
        ..OverloadConfig::default()
    });
    let server = BattleServer::start(config).await.unwrap();
    let address = server.gateway.tcp_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let bots = bots::spawn(
        address,
        KEY.as_bytes(),
        1..=8,
        deadline,
        &BotOptions::default(),
    );
    // The room is full: the ninth player's join is refused, saying when to retry.
    let seated =
        garrison_tests::probe::eventually("the first room plays", Duration::from_secs(10), || {
            let frames = server
                .stats
                .frames
                .load(std::sync::atomic::Ordering::Relaxed);
            async move { frames > 0 }
        });
    seated.await;
    let ticket = ticket::mint(KEY.as_bytes(), 9, ticket::unix_now() + 3600);
    let client = Client::<garrison_battle::proto::ServerMessage>::connect(
        ClientConfig::new(address, ticket).layout(garrison_battle::proto::layout_hash()),
    )
    .await
    .unwrap();
    let refused = client
        .request(&garrison_battle::proto::Join {
            mode: 0,
            updates: garrison_battle::proto::Updates::Inputs,
        })
        .await
        .unwrap_err();
    match refused {
        ClientError::Refused {
            code, retry_after, ..
        } => {
            assert_eq!(code, RefusalCode::Overloaded.code());
            let retry_after = retry_after.expect("a retry-after");
            assert!(
                (Duration::from_secs(1)..Duration::from_millis(1_500)).contains(&retry_after),
                "the configured retry-after, spread by at most half: {retry_after:?}"
            );
        }
        other => panic!("expected an overload refusal, got {other}"),
    }
    for bot in bots {
        let report = bot.await.unwrap().unwrap();
        assert_ne!(report.room, 0, "every seated player played");
        assert_eq!(report.desyncs, 0);
    }
    assert!(server.shed() >= 1, "the shed join is counted");
    let text = server.metrics().encode();
    let sample = |series: &str| metric_sample(&text, series);
    assert!(
        sample(r#"garrison_overload_shed_total{limiter="joins",priority="sheddable"}"#)
            .is_some_and(|shed| shed >= 1.0),
        "{text}"
    );
    assert!(
        sample(r#"garrison_refusals_total{code="overloaded"}"#).is_some_and(|sent| sent >= 1.0),
        "{text}"
    );
    server.stop().await;
}
