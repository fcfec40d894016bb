//! Battle throughput with tracing off, with OTLP export at 1% sampling and at 100%, side by side
//! in one run against a local Jaeger (tests/jaeger/config.yaml; see README).
//!
//! `cargo bench -p garrison-battle --bench tracing`
//!
//! Each configuration runs the `battle-bots` binary (server and bots in one process, since
//! telemetry is installed once per process) with the same load; configurations alternate over
//! rounds so drift on a shared machine hits them alike. Throughput is frames executed per CPU
//! second of the process; the P99 input->broadcast latency is printed beside it. The goal: at 1%
//! sampling, at most 5% throughput lost.
//!
//! Settings: `GARRISON_BENCH_CLIENTS` (default 256), `GARRISON_BENCH_SECONDS` (8),
//! `GARRISON_BENCH_ROUNDS` (3), `GARRISON_JAEGER_OTLP_GRPC` (`http://127.0.0.1:4317`).

use std::{net::TcpStream, process::Command, time::Duration};

use serde_json::Value;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

struct Sample {
    frames: f64,
    cpu: f64,
    p99: f64,
}

fn run(clients: &str, seconds: &str, export: Option<(&str, f64)>) -> Sample {
    let mut command = Command::new(env!("CARGO_BIN_EXE_battle-bots"));
    command
        .args(["--clients", clients, "--duration", seconds, "--json"])
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    if let Some((endpoint, ratio)) = export {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_TRACES_SAMPLER_ARG", ratio.to_string())
            .env("OTEL_SERVICE_NAME", format!("battle-bench-{ratio}"));
    }
    let output = command.output().expect("battle-bots runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "battle-bots failed: {stdout}");
    let json: Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .expect("a JSON summary on the last line");
    assert_eq!(json["failed"], 0, "{json}");
    assert_eq!(json["desyncs"], 0, "{json}");
    Sample {
        frames: json["frames"].as_f64().unwrap(),
        cpu: json["cpu_seconds"].as_f64().expect("cpu_seconds (Linux)"),
        p99: json["p99_ms"].as_f64().unwrap(),
    }
}

fn main() {
    let clients = setting("GARRISON_BENCH_CLIENTS", "256");
    let seconds = setting("GARRISON_BENCH_SECONDS", "8");
    let rounds: usize = setting("GARRISON_BENCH_ROUNDS", "3").parse().unwrap();
    let endpoint = setting("GARRISON_JAEGER_OTLP_GRPC", "http://127.0.0.1:4317");
    let address = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("GARRISON_JAEGER_OTLP_GRPC is http://host:port");
    if TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_err() {
        eprintln!(
            "no OTLP receiver on {endpoint}: start Jaeger first (README, \"Traces in Jaeger\")"
        );
        std::process::exit(1);
    }
    let configurations: [(&str, Option<(&str, f64)>); 3] = [
        ("tracing off", None),
        ("OTLP, 1% sampled", Some((&endpoint, 0.01))),
        ("OTLP, 100% sampled", Some((&endpoint, 1.0))),
    ];
    let mut totals = [
        (0.0, 0.0, Vec::new()),
        (0.0, 0.0, Vec::new()),
        (0.0, 0.0, Vec::new()),
    ];
    for round in 1..=rounds {
        for (index, (name, export)) in configurations.iter().enumerate() {
            let sample = run(&clients, &seconds, *export);
            eprintln!(
                "round {round}: {name:<20} {:>7.0} frames / {:>5.2} CPU s  p99 {:>6.2} ms",
                sample.frames, sample.cpu, sample.p99
            );
            totals[index].0 += sample.frames;
            totals[index].1 += sample.cpu;
            totals[index].2.push(sample.p99);
        }
    }
    println!(
        "battle throughput, {clients} bots x {seconds} s x {rounds} rounds (server and bots in one process)"
    );
    let baseline = totals[0].0 / totals[0].1;
    for ((name, _), (frames, cpu, p99)) in configurations.iter().zip(&totals) {
        let throughput = frames / cpu;
        let mut p99 = p99.clone();
        p99.sort_by(f64::total_cmp);
        println!(
            "{name:<20} {throughput:>8.0} frames per CPU second  ratio {:.3}  (loss {:>5.1}%)  median p99 {:.2} ms",
            throughput / baseline,
            (1.0 - throughput / baseline) * 100.0,
            p99[p99.len() / 2]
        );
    }
}
