//! State-store benchmarks, each beside the raw client doing the same writes, in one run: a
//! batch of 256 entity checkpoints (4 KiB snapshots, a battle room's size) through
//! `StateStore::write` (framing, CRC-32, the generation check, the log truncation) against one
//! raw redb write transaction inserting the same bytes, and against a raw Redis pipeline of the
//! same `HSET`s (with `GARRISON_REDIS_URL`). Runs alternate, and the ratio is printed
//! (store path throughput / raw throughput; >= 0.8 is the goal).
//!
//! Run with: `cargo bench -p garrison-runtime --features redis --bench store`
//! (`-- --quick` for fewer rounds).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use garrison_runtime::store::{RedbStore, RedisStore, StateStore, Write};
use redb::TableDefinition;

const ENTITIES: usize = 256;
const SNAPSHOT: usize = 4096;
const RAW: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("raw");

fn batch(round: usize) -> Vec<Write> {
    (0..ENTITIES)
        .map(|entity| Write::Put {
            kind: "room".into(),
            key: entity.to_string(),
            generation: 0,
            log_from: round as u64,
            snapshot: Bytes::from(vec![(round + entity) as u8; SNAPSHOT]),
        })
        .collect()
}

/// Median of `runs` alternating timings of `rounds` batches each: (ours, raw).
async fn compare<A, B>(runs: usize, rounds: usize, mut ours: A, mut raw: B) -> (Duration, Duration)
where
    A: AsyncFnMut(usize),
    B: AsyncFnMut(usize),
{
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let start = Instant::now();
        for round in 0..rounds {
            ours(run * rounds + round).await;
        }
        a.push(start.elapsed());
        let start = Instant::now();
        for round in 0..rounds {
            raw(run * rounds + round).await;
        }
        b.push(start.elapsed());
    }
    a.sort();
    b.sort();
    (a[a.len() / 2], b[b.len() / 2])
}

fn report(name: &str, rounds: usize, (ours, raw): (Duration, Duration)) {
    let rate = |time: Duration| (rounds * ENTITIES) as f64 / time.as_secs_f64();
    println!(
        "{name:<34} store path {:>9.0} checkpoints/s   raw {:>9.0} checkpoints/s   ratio {:.2}x",
        rate(ours),
        rate(raw),
        raw.as_secs_f64() / ours.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (runs, rounds) = if quick { (3, 5) } else { (7, 20) };
    println!(
        "batches of {ENTITIES} checkpoints of {SNAPSHOT} bytes; median of {runs} alternating \
         runs of {rounds} batches"
    );

    let dir = std::env::temp_dir().join(format!("garrison-store-bench-{}", std::process::id()));
    let store = RedbStore::open(dir.join("ours")).expect("the store opens");
    std::fs::create_dir_all(dir.join("raw")).expect("a directory");
    let raw = Arc::new(redb::Database::create(dir.join("raw/raw.redb")).expect("redb opens"));
    let timings = compare(
        runs,
        rounds,
        async |round| {
            let outcomes = store.write(&batch(round)).await.expect("written");
            assert_eq!(outcomes.len(), ENTITIES);
        },
        async |round| {
            let db = raw.clone();
            let writes = batch(round);
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_write().expect("a transaction");
                {
                    let mut table = txn.open_table(RAW).expect("the table");
                    for write in &writes {
                        if let Write::Put {
                            kind,
                            key,
                            snapshot,
                            ..
                        } = write
                        {
                            table
                                .insert((kind.as_str(), key.as_str()), &snapshot[..])
                                .expect("insert");
                        }
                    }
                }
                txn.commit().expect("commit");
            })
            .await
            .expect("the raw write");
        },
    )
    .await;
    report("redb (one write transaction)", rounds, timings);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    let Ok(url) = std::env::var("GARRISON_REDIS_URL") else {
        println!("redis: skipped (set GARRISON_REDIS_URL=redis://127.0.0.1:PORT)");
        return;
    };
    let namespace = format!("garrison-bench-{}", std::process::id());
    let store = RedisStore::connect(&url, &namespace).await.expect("redis");
    let client = redis::Client::open(url.as_str()).expect("a client");
    let connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("a connection");
    let hash = format!("{namespace}:raw");
    let timings = compare(
        runs,
        rounds,
        async |round| {
            store.write(&batch(round)).await.expect("written");
        },
        async |round| {
            let mut pipe = redis::pipe();
            for write in batch(round) {
                if let Write::Put { key, snapshot, .. } = write {
                    pipe.hset(&hash, key, &snapshot[..]).ignore();
                }
            }
            let mut connection = connection.clone();
            pipe.query_async::<()>(&mut connection)
                .await
                .expect("the pipeline");
        },
    )
    .await;
    report("redis (watched MULTI vs pipeline)", rounds, timings);
    let mut connection = connection.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await;
    }
}
