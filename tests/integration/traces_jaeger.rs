//! The battle server's traces in a real Jaeger, read back through its query API.
//!
//! `.ci/run` starts Jaeger (tests/jaeger/config.yaml: in-memory, loopback only) and sets
//! `GARRISON_JAEGER_QUERY`. Each run of the battle server happens in a child process (this test
//! binary re-run with one ignored test selected), because telemetry is installed once per process
//! as the global subscriber: over OTLP gRPC, over OTLP HTTP, and over gRPC with ratio sampling.
//! Without `GARRISON_JAEGER_QUERY` the test says so and passes, except under CI (`CI` set),
//! where a missing Jaeger is a failure.

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use garrison_battle::{
    bots::{BotOptions, play},
    run::local_server,
    server::BattleServer,
};
use garrison_runtime::telemetry::{self, TelemetryConfig};
use garrison_tests::probe::eventually;
use serde_json::Value;

const CHILD: &str = "GARRISON_JAEGER_CHILD";
const RESULT: &str = "GARRISON_JAEGER_RESULT ";
const KEY: &str = "jaeger test key";
const PLAYERS: u64 = 4;

/// One battle in this process with telemetry from the environment: four traced bots in one room
/// for three seconds, one injected room crash, a graceful stop and a flushed exporter. Prints
/// what the bots sent for the parent to compare with Jaeger.
#[test]
#[ignore = "the child process of battle_traces_reach_a_real_jaeger"]
fn jaeger_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let guard = telemetry::install(&TelemetryConfig::from_env("battle-server")).unwrap();
        assert!(guard.exporting(), "the child exports to Jaeger");
        let server = BattleServer::start(local_server(PLAYERS as usize, KEY).unwrap())
            .await
            .unwrap();
        let address = server.gateway.tcp_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let bots: Vec<_> = (1..=PLAYERS)
            .map(|player| {
                let options = BotOptions {
                    trace: true,
                    ..BotOptions::default()
                };
                tokio::spawn(play(
                    address,
                    KEY.as_bytes().to_vec(),
                    player,
                    deadline,
                    options,
                ))
            })
            .collect();
        eventually("a second of play", Duration::from_secs(10), || {
            let frames = server.stats.frames.load(Ordering::Relaxed);
            async move { frames >= 60 }
        })
        .await;
        server.crash_rooms();
        let (mut sent, mut traced) = (0u64, 0u64);
        for bot in bots {
            let report = bot.await.unwrap().unwrap();
            sent += u64::from(report.inputs_sent);
            traced += u64::from(report.inputs_traced);
        }
        // Every input the bots sent has been handled by the room before stopping.
        eventually(
            "the room handled every input",
            Duration::from_secs(10),
            || {
                let handled = server.stats.inputs.load(Ordering::Relaxed);
                async move { handled == sent }
            },
        )
        .await;
        let stats = server.stats.clone();
        server.stop().await;
        // Read after the stop: ticks still queued when the rooms stopped ran (and were traced)
        // or were dropped with the room (and were not), and count alike.
        let frames = stats.frames.load(Ordering::Relaxed);
        let restarts = stats.restarts.load(Ordering::Relaxed);
        guard.shutdown(Duration::from_secs(10)).await;
        println!(
            "{RESULT}{}",
            serde_json::json!({
                "sent": sent, "traced": traced, "frames": frames, "restarts": restarts,
            })
        );
    });
}

struct Run {
    sent: u64,
    traced: u64,
    frames: u64,
    restarts: u64,
}

/// Runs [`jaeger_child`] in a child process exporting to `endpoint` over `protocol`.
fn battle(service: &str, endpoint: &str, protocol: &str, ratio: f64) -> Run {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "traces_jaeger::jaeger_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_TRACES_SAMPLER_ARG", ratio.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the battle failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|line| line.split_once(RESULT).map(|(_, json)| json.to_owned()))
        .unwrap_or_else(|| panic!("no result from the child: {stdout}"));
    let result: Value = serde_json::from_str(&line).unwrap();
    let field = |name: &str| result[name].as_u64().unwrap();
    Run {
        sent: field("sent"),
        traced: field("traced"),
        frames: field("frames"),
        restarts: field("restarts"),
    }
}

fn get(query: &str, path: &str) -> Value {
    ureq::get(&format!("{query}{path}"))
        .timeout(Duration::from_secs(30))
        .call()
        .unwrap_or_else(|error| panic!("GET {path}: {error}"))
        .into_json()
        .unwrap()
}

/// The traces of `service` that contain an `operation` span.
fn traces(query: &str, service: &str, operation: &str) -> Vec<Value> {
    let path = format!(
        "/api/traces?service={service}&operation={}&limit=100000&lookback=1h",
        operation.replace(' ', "%20")
    );
    get(query, &path)["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn spans(trace: &Value) -> &Vec<Value> {
    trace["spans"].as_array().unwrap()
}

fn named<'a>(trace: &'a Value, operation: &str) -> Vec<&'a Value> {
    spans(trace)
        .iter()
        .filter(|span| span["operationName"] == operation)
        .collect()
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|tag| tag["key"] == key)
        .map(|tag| &tag["value"])
}

/// A tag's value as text, whichever type Jaeger gave it.
fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn parent(span: &Value) -> Option<&str> {
    span["references"]
        .as_array()?
        .iter()
        .find(|reference| reference["refType"] == "CHILD_OF")
        .and_then(|reference| reference["spanID"].as_str())
}

/// Waits until Jaeger holds `expected` traces with an `operation` span (ingestion is
/// asynchronous), then returns them.
fn settled(query: &str, service: &str, operation: &str, expected: usize) -> Vec<Value> {
    let limit = Instant::now() + Duration::from_secs(30);
    loop {
        let found = traces(query, service, operation);
        if found.len() >= expected || Instant::now() > limit {
            return found;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The checks of a fully sampled run.
fn assert_complete(query: &str, service: &str, run: &Run) {
    assert_eq!(run.traced, run.sent, "every input traced at 100%");
    assert_eq!(run.restarts, 1, "one injected crash");
    let services = get(query, "/api/services");
    assert!(
        services["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|name| name == service),
        "{service} is listed: {services}"
    );
    let operations = get(query, &format!("/api/services/{service}/operations"));
    let operations: HashSet<&str> = operations["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for operation in [
        "battle.bot.input",
        "garrison.gateway.frame",
        "session.send player",
        "session.send room",
        "room.input",
        "room.tick",
        "player.join",
        "player.placed",
        "matchmaker.join",
        "room.start",
        "room.crash",
        "garrison.supervisor.restart",
    ] {
        assert!(
            operations.contains(operation),
            "{operation} in {operations:?}"
        );
    }

    // One trace per input, chained bot -> gateway -> session hop -> room, no parent missing.
    let inputs = settled(query, service, "battle.bot.input", run.sent as usize);
    assert_eq!(inputs.len() as u64, run.sent, "one trace per input sent");
    let mut players = HashSet::new();
    for trace in &inputs {
        let ids: HashSet<&str> = spans(trace)
            .iter()
            .filter_map(|span| span["spanID"].as_str())
            .collect();
        for span in spans(trace) {
            if let Some(parent) = parent(span) {
                assert!(ids.contains(parent), "a span misses its parent: {span}");
            }
        }
        let chain = [
            "battle.bot.input",
            "garrison.gateway.frame",
            "session.send room",
            "room.input",
        ]
        .map(|operation| {
            let found = named(trace, operation);
            assert_eq!(found.len(), 1, "one {operation} in {trace}");
            found[0]
        });
        assert_eq!(parent(chain[0]), None, "the bot's span is the root");
        for pair in chain.windows(2) {
            assert_eq!(
                parent(pair[1]),
                pair[0]["spanID"].as_str(),
                "{} is the child of {}",
                pair[1]["operationName"],
                pair[0]["operationName"]
            );
        }
        for span in &chain[1..] {
            for key in ["game.session.id", "game.event.type", "game.world.zone"] {
                assert!(tag(span, key).is_some(), "{key} on {span}");
            }
            // The gateway names it as the protocol declares it (`Input`), the room as its
            // entity message does (`input`).
            assert!(
                text(tag(span, "game.event.type")).eq_ignore_ascii_case("input"),
                "{span}"
            );
            assert_eq!(tag(span, "game.world.zone").unwrap(), "arena-1");
        }
        let room = chain[3];
        for key in [
            "game.entity.kind",
            "game.entity.key",
            "game.entity.incarnation",
        ] {
            assert!(tag(room, key).is_some(), "{key} on {room}");
        }
        assert_eq!(tag(room, "game.entity.kind").unwrap(), "room");
        players.insert(tag(chain[1], "game.session.id").unwrap().to_string());
    }
    assert_eq!(players.len() as u64, PLAYERS, "every player's inputs");

    // Span counts match what was sent and run.
    let ticks = settled(query, service, "room.tick", run.frames as usize);
    assert_eq!(ticks.len() as u64, run.frames, "one trace per frame run");

    // The restart sits in the trace of the crash it answers, under the room's crashing span.
    let restarts = settled(query, service, "garrison.supervisor.restart", 1);
    assert_eq!(restarts.len(), 1);
    let trace = &restarts[0];
    let restart = named(trace, "garrison.supervisor.restart")[0];
    let crash = named(trace, "room.crash");
    assert_eq!(crash.len(), 1, "{trace}");
    assert_eq!(parent(restart), crash[0]["spanID"].as_str());
    assert_eq!(tag(crash[0], "game.entity.kind").unwrap(), "room");
    assert_eq!(
        tag(restart, "game.entity.kind").unwrap(),
        "room",
        "{restart}"
    );
    assert!(
        tag(restart, "exit.reason")
            .and_then(Value::as_str)
            .is_some_and(|reason| reason.contains("injected crash")),
        "{restart}"
    );
    assert_eq!(tag(restart, "exit.kind").unwrap(), "panic");
    assert_eq!(text(tag(restart, "restart.count")), "1", "{restart}");
}

#[test]
fn battle_traces_reach_a_real_jaeger() {
    let Ok(query) = std::env::var("GARRISON_JAEGER_QUERY") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs this test against a real Jaeger: .ci/run sets GARRISON_JAEGER_QUERY"
        );
        eprintln!("skipped: set GARRISON_JAEGER_QUERY to a Jaeger query URL (see README)");
        return;
    };
    let otlp = |variable: &str, default: &str| {
        std::env::var(variable).unwrap_or_else(|_| default.to_owned())
    };
    let grpc = otlp("GARRISON_JAEGER_OTLP_GRPC", "http://127.0.0.1:4317");
    let http = otlp("GARRISON_JAEGER_OTLP_HTTP", "http://127.0.0.1:4318");
    // A run id keeps repeated runs against one Jaeger apart.
    let run_id = std::process::id();

    let service = format!("battle-server-grpc-{run_id}");
    let run = battle(&service, &grpc, "grpc", 1.0);
    assert_complete(&query, &service, &run);

    let service = format!("battle-server-http-{run_id}");
    let run = battle(&service, &http, "http/protobuf", 1.0);
    assert_complete(&query, &service, &run);

    // Ratio sampling: the bots' input spans are roots, so a quarter of them are kept, and the
    // server's spans follow their parent's decision; the rooms' ticks (roots too) fall alike.
    let ratio = 0.25;
    let service = format!("battle-server-sampled-{run_id}");
    let run = battle(&service, &grpc, "grpc", ratio);
    let kept = run.traced as f64 / run.sent as f64;
    // Binomial over ~700 inputs: six standard deviations is about 0.1.
    assert!(
        (kept - ratio).abs() < 0.1,
        "{kept:.3} of inputs sampled at ratio {ratio}"
    );
    let inputs = settled(&query, &service, "battle.bot.input", run.traced as usize);
    assert_eq!(
        inputs.len() as u64,
        run.traced,
        "exactly the inputs the bots' sampler kept"
    );
    let rooms = settled(&query, &service, "room.input", run.traced as usize);
    assert_eq!(
        rooms.len() as u64,
        run.traced,
        "the server kept exactly the traces its clients sampled"
    );
    let mut by_operation: HashMap<String, usize> = HashMap::new();
    for trace in traces(&query, &service, "room.tick") {
        for span in spans(&trace) {
            *by_operation
                .entry(span["operationName"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let ticks = by_operation.get("room.tick").copied().unwrap_or(0) as f64;
    let kept = ticks / run.frames as f64;
    assert!(
        (kept - ratio).abs() < 0.2,
        "{ticks} of {} ticks kept at ratio {ratio}",
        run.frames
    );
}
