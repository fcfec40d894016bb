//! One conformance suite for every state store backend: memory, redb, and a real Redis (CI
//! starts one and sets `GARRISON_REDIS_URL`; without it the Redis row says so and passes, except
//! under CI, where it fails).

use std::sync::Arc;

use bytes::Bytes;
use garrison_runtime::store::{
    LogEntry, MemoryStore, Outcome, RedbStore, RedisStore, StateStore, StoreError, Write,
};

/// A backend under test, with its way of writing raw (damaged) bytes.
enum Backend {
    Memory(Arc<MemoryStore>),
    Redb(RedbStore),
    Redis(RedisStore),
}

impl Backend {
    fn store(&self) -> &dyn StateStore {
        match self {
            Backend::Memory(store) => &**store,
            Backend::Redb(store) => store,
            Backend::Redis(store) => store,
        }
    }

    async fn raw_record(&self, kind: &str, key: &str, raw: &[u8]) {
        match self {
            Backend::Memory(store) => store.put_raw_record(kind, key, Bytes::copy_from_slice(raw)),
            Backend::Redb(store) => store.put_raw_record(kind, key, raw).unwrap(),
            Backend::Redis(store) => store.put_raw_record(kind, key, raw).await.unwrap(),
        }
    }

    async fn raw_entry(&self, kind: &str, key: &str, seq: u64, raw: &[u8]) {
        match self {
            Backend::Memory(store) => {
                store.put_raw_entry(kind, key, seq, Bytes::copy_from_slice(raw))
            }
            Backend::Redb(store) => store.put_raw_entry(kind, key, seq, raw).unwrap(),
            Backend::Redis(store) => store.put_raw_entry(kind, key, seq, raw).await.unwrap(),
        }
    }
}

fn put(kind: &str, key: &str, generation: u64, log_from: u64, snapshot: &'static [u8]) -> Write {
    Write::Put {
        kind: kind.into(),
        key: key.into(),
        generation,
        log_from,
        snapshot: Bytes::from_static(snapshot),
    }
}

fn append(kind: &str, key: &str, generation: u64, seqs: std::ops::Range<u64>) -> Write {
    Write::Append {
        kind: kind.into(),
        key: key.into(),
        generation,
        entries: seqs.map(entry).collect(),
    }
}

fn entry(seq: u64) -> LogEntry {
    LogEntry {
        seq,
        bytes: Bytes::from(format!("input {seq}")),
    }
}

async fn write(store: &dyn StateStore, batch: Vec<Write>) -> Vec<Outcome> {
    store.write(&batch).await.expect("the store is up")
}

/// The suite: every backend must behave exactly alike.
async fn conformance(backend: Backend) {
    let store = backend.store();
    let name = store.name();
    let (room, player) = ("room", "room:player"); // a kind that another kind's name starts with

    // Nothing stored yet.
    assert_eq!(store.get(room, "1").await.unwrap(), None, "{name}");
    assert!(store.list(room).await.unwrap().is_empty(), "{name}");
    assert_eq!(store.read_log(room, "1", 0).await.unwrap().entries, vec![]);

    // A put and its record.
    assert_eq!(
        write(store, vec![put(room, "1", 1, 0, b"s0")]).await,
        [Outcome::Written]
    );
    let stored = store.get(room, "1").await.unwrap().unwrap();
    assert_eq!(
        (stored.generation, stored.log_from, &stored.snapshot[..]),
        (1, 0, &b"s0"[..]),
        "{name}"
    );

    // A log, read from anywhere; an append retried is harmless.
    write(store, vec![append(room, "1", 1, 0..3)]).await;
    write(store, vec![append(room, "1", 1, 2..4)]).await;
    let log = store.read_log(room, "1", 0).await.unwrap();
    assert_eq!(log.entries, (0..4).map(entry).collect::<Vec<_>>(), "{name}");
    assert_eq!(log.damaged, None, "{name}");
    assert_eq!(
        store.read_log(room, "1", 3).await.unwrap().entries,
        vec![entry(3)]
    );

    // A snapshot replaces the record and clears the log: its own entries follow it, numbered
    // from its log_from (in the same batch when they are already known).
    write(
        store,
        vec![put(room, "1", 1, 2, b"s2"), append(room, "1", 1, 2..4)],
    )
    .await;
    let stored = store.get(room, "1").await.unwrap().unwrap();
    assert_eq!(
        (stored.log_from, &stored.snapshot[..]),
        (2, &b"s2"[..]),
        "{name}"
    );
    assert_eq!(
        store.read_log(room, "1", 2).await.unwrap().entries,
        vec![entry(2), entry(3)],
        "{name}"
    );
    let before = store.read_log(room, "1", 0).await.unwrap();
    assert!(
        before.entries.is_empty(),
        "{name}: entries before the snapshot are gone"
    );
    assert_eq!(before.damaged.map(|(seq, _)| seq), Some(0), "{name}");
    write(store, vec![put(room, "1", 1, 4, b"s4")]).await;
    assert!(
        store
            .read_log(room, "1", 4)
            .await
            .unwrap()
            .entries
            .is_empty(),
        "{name}"
    );
    write(
        store,
        vec![put(room, "1", 1, 2, b"s2"), append(room, "1", 1, 2..4)],
    )
    .await;

    // Fencing: a lower generation is refused whole, an equal or higher one writes.
    let fenced = write(
        store,
        vec![put(room, "1", 0, 9, b"stale"), append(room, "1", 0, 4..6)],
    )
    .await;
    assert_eq!(
        fenced,
        [Outcome::Fenced { stored: 1 }, Outcome::Fenced { stored: 1 }]
    );
    let stored = store.get(room, "1").await.unwrap().unwrap();
    assert_eq!(
        &stored.snapshot[..],
        b"s2",
        "{name}: a fenced put changes nothing"
    );
    assert_eq!(store.read_log(room, "1", 2).await.unwrap().entries.len(), 2);
    assert_eq!(
        write(store, vec![put(room, "1", 5, 2, b"s2'")]).await,
        [Outcome::Written]
    );
    assert_eq!(store.get(room, "1").await.unwrap().unwrap().generation, 5);

    // A batch across keys and kinds, outcomes in order; a key may hold any text.
    let odd = "7:ünï:{}";
    let outcomes = write(
        store,
        vec![
            put(room, "2", 0, 0, b"two"),
            put(player, odd, 0, 0, b"odd"),
            append(player, odd, 0, 0..2),
            put(room, "1", 4, 0, b"stale again"),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        [
            Outcome::Written,
            Outcome::Written,
            Outcome::Written,
            Outcome::Fenced { stored: 5 }
        ],
        "{name}"
    );
    let mut rooms = store.list(room).await.unwrap();
    rooms.sort();
    assert_eq!(rooms, ["1", "2"], "{name}: listing is per kind exactly");
    assert_eq!(store.list(player).await.unwrap(), [odd], "{name}");
    assert_eq!(
        store.read_log(player, odd, 0).await.unwrap().entries.len(),
        2
    );
    assert_eq!(store.read_log(room, odd, 0).await.unwrap().entries.len(), 0);

    // A delete removes record and log, and keeps the generation (a stale owner stays fenced).
    let delete = Write::Delete {
        kind: room.into(),
        key: "1".into(),
        generation: 6,
    };
    assert_eq!(write(store, vec![delete]).await, [Outcome::Written]);
    assert_eq!(store.get(room, "1").await.unwrap(), None, "{name}");
    assert!(
        store
            .read_log(room, "1", 0)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    assert_eq!(store.list(room).await.unwrap(), ["2"], "{name}");
    assert_eq!(
        write(store, vec![put(room, "1", 5, 0, b"zombie")]).await,
        [Outcome::Fenced { stored: 6 }],
        "{name}"
    );

    // Damage: a record or entry this runtime did not write is a typed error, never garbage.
    backend.raw_record(room, "bad", b"GRS1\0\0\0\0").await;
    match store.get(room, "bad").await {
        Err(StoreError::Corrupt {
            kind, key, reason, ..
        }) => {
            assert_eq!((kind.as_str(), key.as_str()), (room, "bad"), "{name}");
            assert!(reason.contains("shorter"), "{name}: {reason}");
        }
        other => panic!("{name}: a truncated record read as {other:?}"),
    }
    write(
        store,
        vec![put(room, "log", 0, 0, b"s"), append(room, "log", 0, 0..2)],
    )
    .await;
    backend.raw_entry(room, "log", 2, b"not an entry").await;
    write(store, vec![append(room, "log", 0, 3..4)]).await;
    let damaged = store.read_log(room, "log", 0).await.unwrap();
    assert_eq!(damaged.entries.len(), 2, "{name}: the good prefix is kept");
    assert_eq!(
        damaged.damaged.as_ref().map(|(seq, _)| *seq),
        Some(2),
        "{name}"
    );

    // Setting aside moves the record and its log out of the way, kept for inspection.
    store
        .set_aside(room, "log", "entry 2 is damaged")
        .await
        .unwrap();
    assert_eq!(store.get(room, "log").await.unwrap(), None, "{name}");
    assert!(
        store
            .read_log(room, "log", 0)
            .await
            .unwrap()
            .entries
            .is_empty()
    );
    let aside = store.set_aside_records(room).await.unwrap();
    assert_eq!(aside.len(), 1, "{name}");
    assert_eq!(
        (aside[0].key.as_str(), aside[0].reason.as_str()),
        ("log", "entry 2 is damaged")
    );
    assert_eq!(
        aside[0].raw.len(),
        5,
        "{name}: the record and its four entries"
    );
    assert!(store.set_aside_records(player).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_memory_store_conforms() {
    conformance(Backend::Memory(Arc::new(MemoryStore::new()))).await;
}

/// A fresh directory for a test (removed when dropped).
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("garrison-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redb_store_conforms_and_keeps_its_data_across_a_reopen() {
    let dir = TempDir::new("redb-conformance");
    conformance(Backend::Redb(RedbStore::open(&dir.0).unwrap())).await;
    // The database is closed when its last handle drops; reopened, the data is there.
    let store = RedbStore::open(&dir.0).unwrap();
    assert_eq!(store.list("room").await.unwrap(), ["2", "bad"]);
    let stored = store.get("room", "2").await.unwrap().unwrap();
    assert_eq!(&stored.snapshot[..], b"two");
}

/// The Redis URL CI gives, or `None` (and a note) outside CI.
pub(crate) fn redis_url() -> Option<String> {
    match std::env::var("GARRISON_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs this test against a real Redis: .ci/run sets GARRISON_REDIS_URL"
            );
            eprintln!("skipped: set GARRISON_REDIS_URL=redis://127.0.0.1:PORT (see README)");
            None
        }
    }
}

/// A namespace no other test run shares.
pub(crate) fn namespace(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("garrison-test:{label}:{}:{nanos}", std::process::id())
}

#[tokio::test]
async fn the_redis_store_conforms() {
    let Some(url) = redis_url() else { return };
    let store = RedisStore::connect(&url, &namespace("conformance"))
        .await
        .unwrap();
    conformance(Backend::Redis(store)).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_a_typed_error() {
    // Port 1 on loopback: nothing listens there.
    match RedisStore::connect("redis://127.0.0.1:1", "none").await {
        Err(StoreError::Unavailable { store: "redis", .. }) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_writers_racing_for_an_entity_leave_the_higher_generation_standing() {
    let Some(url) = redis_url() else { return };
    let namespace = namespace("race");
    let (old, new) = (
        RedisStore::connect(&url, &namespace).await.unwrap(),
        RedisStore::connect(&url, &namespace).await.unwrap(),
    );
    let writer = |store: RedisStore, generation: u64, label: &'static str| {
        tokio::spawn(async move {
            let mut fenced = 0;
            for round in 0..100u64 {
                let snapshot = Bytes::from(format!("{label}{round}"));
                let write = Write::Put {
                    kind: "room".into(),
                    key: "contested".into(),
                    generation,
                    log_from: round,
                    snapshot,
                };
                let outcomes = store.write(&[write]).await.expect("the store is up");
                fenced += usize::from(outcomes[0] != Outcome::Written);
            }
            fenced
        })
    };
    let (stale, owner) = (writer(old, 1, "old"), writer(new, 2, "new"));
    let (stale, owner) = (stale.await.unwrap(), owner.await.unwrap());
    assert_eq!(owner, 0, "the higher generation is never fenced");
    let stored = RedisStore::connect(&url, &namespace)
        .await
        .unwrap()
        .get("room", "contested")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.generation, 2);
    assert_eq!(
        &stored.snapshot[..],
        b"new99",
        "the owner's last write stands (old fenced {stale} times)"
    );
}
