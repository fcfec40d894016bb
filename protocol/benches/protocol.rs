//! Protocol benchmarks: each group runs Garrison's function (`garrison`) beside its baselines in
//! one process and prints the ratios at the end.
//!
//! Run with: `cargo bench -p garrison-protocol`

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::{hint::black_box, time::Duration};

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use garrison_protocol::{
    DecodeConfig, Frame, FrameCodec, FrameMeta, Protocol, Snapshot, SnapshotRef, snapshot,
};
use garrison_tests::wire::{Input, TestMessage};
use rkyv::util::AlignedVec;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// The same 24-byte input, for the serde-based baselines.
#[derive(Serialize, Deserialize, Clone, Copy)]
struct InputSerde {
    entity: u64,
    x: i32,
    y: i32,
    seq: u32,
    tick: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Serialize, Deserialize, Clone)]
struct EntityState {
    id: u64,
    x: i32,
    y: i32,
    vx: i32,
    vy: i32,
    hp: i32,
    flags: u32,
    name: String,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Serialize, Deserialize, Clone)]
struct WorldState {
    tick: u64,
    entities: Vec<EntityState>,
}

impl Snapshot for WorldState {
    const SCHEMA: &'static str = "bench.world";
    const VERSION: u16 = 1;
}

fn world() -> WorldState {
    WorldState {
        tick: 9_000,
        entities: (0..100)
            .map(|i| EntityState {
                id: i,
                x: i as i32 * 10,
                y: -(i as i32),
                vx: 1,
                vy: -1,
                hp: 100,
                flags: 3,
                name: format!("unit-{i:07}"),
            })
            .collect(),
    }
}

const INPUT: Input = Input {
    entity: 42,
    x: 1_000,
    y: -2_000,
    seq: 7,
    tick: 600,
};
const INPUT_SERDE: InputSerde = InputSerde {
    entity: 42,
    x: 1_000,
    y: -2_000,
    seq: 7,
    tick: 600,
};

/// One Input frame placed at an odd offset inside a larger buffer, as frames land in a socket
/// buffer, so the benchmark measures the misaligned case.
fn misaligned_input_frame() -> Frame {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&[0; 3]);
    FrameCodec::default()
        .encode_message(&INPUT, FrameMeta::default(), &mut wire)
        .unwrap();
    let wire = wire.freeze().slice(3..);
    let frame = Frame::decode_exact(wire, &DecodeConfig::default()).unwrap();
    assert_eq!(frame.payload().as_ptr() as usize % 2, 1);
    frame
}

fn validate_small(c: &mut Criterion) {
    let frame = misaligned_input_frame();
    let payload = frame.payload().to_vec();
    let bincode_bytes = bincode::serialize(&INPUT_SERDE).unwrap();
    let json_bytes = serde_json::to_vec(&INPUT_SERDE).unwrap();
    let mut group = c.benchmark_group("validate_small");
    group.bench_function("garrison", |b| {
        b.iter(|| {
            let input = black_box(&frame).access::<Input>().unwrap();
            input.entity.to_native() ^ u64::from(input.tick.to_native())
        })
    });
    group.bench_function("rkyv_raw", |b| {
        b.iter(|| {
            let input =
                rkyv::access::<rkyv::Archived<Input>, rkyv::rancor::Error>(black_box(&payload))
                    .unwrap();
            input.entity.to_native() ^ u64::from(input.tick.to_native())
        })
    });
    group.bench_function("bincode", |b| {
        b.iter(|| {
            let input: InputSerde = bincode::deserialize(black_box(&bincode_bytes)).unwrap();
            input.entity ^ u64::from(input.tick)
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            let input: InputSerde = serde_json::from_slice(black_box(&json_bytes)).unwrap();
            input.entity ^ u64::from(input.tick)
        })
    });
    group.finish();
}

fn read_small(c: &mut Criterion) {
    let TestMessage::Input(validated) = TestMessage::validate(misaligned_input_frame()).unwrap()
    else {
        unreachable!("an Input frame")
    };
    let native = INPUT;
    let mut group = c.benchmark_group("read_small");
    group.bench_function("garrison", |b| {
        b.iter(|| {
            let input = &**black_box(&validated);
            input.entity.to_native()
                ^ u64::from(input.x.to_native() as u32)
                ^ u64::from(input.tick.to_native())
        })
    });
    group.bench_function("native_struct", |b| {
        b.iter(|| {
            let input = black_box(&native);
            input.entity ^ u64::from(input.x as u32) ^ u64::from(input.tick)
        })
    });
    group.finish();
}

fn validate_snapshot(c: &mut Criterion) {
    let state = world();
    let bytes = snapshot::write(&state).unwrap();
    let bincode_bytes = bincode::serialize(&state).unwrap();
    let json_bytes = serde_json::to_vec(&state).unwrap();
    println!(
        "snapshot sizes: garrison {} B, bincode {} B, serde_json {} B",
        bytes.len(),
        bincode_bytes.len(),
        json_bytes.len()
    );
    let mut group = c.benchmark_group("validate_snapshot");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("garrison", |b| {
        b.iter(|| {
            let world = SnapshotRef::<WorldState>::validate(black_box(bytes.clone())).unwrap();
            world.entities.len() as u64 + world.tick.to_native()
        })
    });
    group.bench_function("bincode", |b| {
        b.iter(|| {
            let world: WorldState = bincode::deserialize(black_box(&bincode_bytes)).unwrap();
            world.entities.len() as u64 + world.tick
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            let world: WorldState = serde_json::from_slice(black_box(&json_bytes)).unwrap();
            world.entities.len() as u64 + world.tick
        })
    });
    group.finish();
}

/// About 1 MB of back-to-back Input frames, and the same inputs length-delimited with bincode.
fn stream_buffers() -> (Bytes, Bytes, usize) {
    let mut codec = FrameCodec::default();
    let mut ours = BytesMut::new();
    let mut theirs = BytesMut::new();
    let mut frames = 0;
    let body = bincode::serialize(&INPUT_SERDE).unwrap();
    while ours.len() < 1 << 20 {
        codec
            .encode_message(&INPUT, FrameMeta::seq(frames as u32), &mut ours)
            .unwrap();
        theirs.extend_from_slice(&(body.len() as u32).to_be_bytes());
        theirs.extend_from_slice(&body);
        frames += 1;
    }
    (ours.freeze(), theirs.freeze(), frames)
}

fn stream(c: &mut Criterion) {
    let (ours, theirs, frames) = stream_buffers();
    println!(
        "stream: {frames} frames, garrison {} B, bincode {} B",
        ours.len(),
        theirs.len()
    );
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Bytes(ours.len() as u64));
    group.bench_function("garrison", |b| {
        let mut codec = FrameCodec::new(DecodeConfig::for_protocol::<TestMessage>());
        b.iter_batched(
            || BytesMut::from(&ours[..]),
            |mut buffer| {
                let mut sum = 0u64;
                while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                    if let TestMessage::Input(input) = TestMessage::validate(frame).unwrap() {
                        sum = sum.wrapping_add(u64::from(input.seq.to_native()));
                    }
                }
                sum
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("bincode", |b| {
        let mut codec = LengthDelimitedCodec::new();
        b.iter_batched(
            || BytesMut::from(&theirs[..]),
            |mut buffer| {
                let mut sum = 0u64;
                while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                    let input: InputSerde = bincode::deserialize(&frame).unwrap();
                    sum = sum.wrapping_add(u64::from(input.seq));
                }
                sum
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// The alignment decision: validate in place wherever the payload lands (unaligned format,
/// our choice) versus first copying it into an aligned buffer, which the aligned format needs.
fn alignment(c: &mut Criterion) {
    let state = world();
    let bytes = snapshot::write(&state).unwrap();
    let payload = bytes.slice(garrison_protocol::snapshot::SNAPSHOT_HEADER_LEN..);
    let mut group = c.benchmark_group("alignment");
    group.bench_function("garrison", |b| {
        b.iter(|| {
            let world = rkyv::access::<rkyv::Archived<WorldState>, rkyv::rancor::Error>(black_box(
                &payload,
            ))
            .unwrap();
            world.entities.len()
        })
    });
    group.bench_function("aligned_copy", |b| {
        let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
        b.iter(|| {
            aligned.clear();
            aligned.extend_from_slice(black_box(&payload));
            let world =
                rkyv::access::<rkyv::Archived<WorldState>, rkyv::rancor::Error>(&aligned).unwrap();
            world.entities.len()
        })
    });
    group.finish();
}

fn encode_small(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_small");
    group.bench_function("garrison", |b| {
        let mut codec = FrameCodec::default();
        let mut buffer = BytesMut::with_capacity(4096);
        b.iter(|| {
            buffer.clear();
            codec
                .encode_message(black_box(&INPUT), FrameMeta::seq(1), &mut buffer)
                .unwrap();
            buffer.len()
        })
    });
    group.bench_function("bincode", |b| {
        let mut buffer = Vec::with_capacity(4096);
        b.iter(|| {
            buffer.clear();
            buffer.extend_from_slice(&[0; 4]);
            bincode::serialize_into(&mut buffer, black_box(&INPUT_SERDE)).unwrap();
            let length = (buffer.len() - 4) as u32;
            buffer[..4].copy_from_slice(&length.to_le_bytes());
            buffer.len()
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = validate_small, read_small, validate_snapshot, stream, alignment, encode_small
}

fn main() {
    benches();
    config().final_summary();
    garrison_tests::bench::report_ratios(&[
        ("validate_small", "rkyv_raw"),
        ("validate_small", "bincode"),
        ("validate_small", "serde_json"),
        ("read_small", "native_struct"),
        ("validate_snapshot", "bincode"),
        ("validate_snapshot", "serde_json"),
        ("stream", "bincode"),
        ("alignment", "aligned_copy"),
        ("encode_small", "bincode"),
    ]);
}
