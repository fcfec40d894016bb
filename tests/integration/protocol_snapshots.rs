//! Snapshots read back exactly, and a snapshot of the wrong type, version or shape is refused.

use bytes::Bytes;
use garrison_protocol::{
    Snapshot, SnapshotRef,
    snapshot::{self, SNAPSHOT_HEADER_LEN},
};
use rkyv::{Archive, Deserialize, Serialize};

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct RoomState {
    frame: u64,
    units: Vec<(u32, i32, i32, u16)>,
    name: String,
}

impl Snapshot for RoomState {
    const SCHEMA: &'static str = "test.room";
    const VERSION: u16 = 3;
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
struct Other(u64);

impl Snapshot for Other {
    const SCHEMA: &'static str = "test.other";
    const VERSION: u16 = 3;
}

#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
struct RoomStateV4(u64);

impl Snapshot for RoomStateV4 {
    const SCHEMA: &'static str = "test.room";
    const VERSION: u16 = 4;
}

fn state() -> RoomState {
    RoomState {
        frame: 1234,
        units: (0..100)
            .map(|i| (i, -(i as i32), i as i32 * 2, 100))
            .collect(),
        name: "arena".into(),
    }
}

#[test]
fn snapshot_round_trips_and_reads_in_place() {
    let bytes = snapshot::write(&state()).unwrap();
    let archived = SnapshotRef::<RoomState>::validate(bytes.clone()).unwrap();
    assert_eq!(archived.frame, 1234);
    assert_eq!(archived.units.len(), 100);
    assert_eq!(snapshot::read::<RoomState>(bytes).unwrap(), state());
}

#[test]
fn snapshot_writer_reuse_gives_identical_bytes() {
    let mut writer = garrison_protocol::SnapshotWriter::new();
    let first = writer.write(&state()).unwrap();
    let second = writer.write(&state()).unwrap();
    assert_eq!(first, second);
}

#[test]
fn refused_snapshots() {
    let good = snapshot::write(&state()).unwrap();
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = good.to_vec();
        f(&mut bytes);
        Bytes::from(bytes)
    };
    let cases: Vec<(&str, Bytes, String)> = vec![
        (
            "empty",
            Bytes::new(),
            "truncated header: have 0 bytes, the header needs 20".into(),
        ),
        (
            "bad magic",
            edit(&|b| b[0] = b'X'),
            "not a garrison snapshot: bad magic bytes".into(),
        ),
        (
            "future format",
            edit(&|b| b[4] = 9),
            "unsupported snapshot format 9 (this build reads format 1)".into(),
        ),
        (
            "truncated",
            edit(&|b| b.truncate(b.len() - 1)),
            format!(
                "truncated frame: have {} bytes, the length prefix declares {}",
                good.len() - 1,
                good.len()
            ),
        ),
        (
            "trailing",
            edit(&|b| b.push(0)),
            "1 trailing bytes after the frame".into(),
        ),
        (
            "invalid UTF-8 in the payload",
            edit(&|b| {
                let n = b.len();
                b[n - 8] = 0xc3;
            }),
            "invalid archive for test.room".into(),
        ),
    ];
    for (name, bytes, expected) in cases {
        let error = SnapshotRef::<RoomState>::validate(bytes)
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"));
        assert!(error.to_string().starts_with(&expected), "{name}: {error}");
    }
    let error = SnapshotRef::<Other>::validate(good.clone())
        .err()
        .expect("other schema");
    assert_eq!(
        error.to_string(),
        "snapshot holds another schema than test.other"
    );
    let error = SnapshotRef::<RoomStateV4>::validate(good)
        .err()
        .expect("other version");
    assert_eq!(
        error.to_string(),
        "snapshot of test.room is version 3, expected version 4"
    );
    assert_eq!(SNAPSHOT_HEADER_LEN, 20);
}
