//! The byte examples in `docs/protocol.md` ("Message layouts"), produced by rkyv here and
//! compared with the document, so the document cannot drift from the encoder.

use garrison_protocol::{FrameMeta, Schema, encode_frame, messages};
use rkyv::{Archive, Serialize};

#[derive(Archive, Serialize, Schema)]
struct Say {
    text: String,
}

#[derive(Archive, Serialize, Schema)]
struct Scores {
    best: Option<u16>,
    all: Vec<u16>,
}

#[derive(Archive, Serialize, Schema)]
#[allow(dead_code)]
enum Action {
    Wait,
    Move { dx: i8, dy: i8 },
}

#[derive(Archive, Serialize, Schema)]
struct Act {
    action: Action,
}

messages! {
    enum Examples {
        0x0001 => Say(Say),
        0x0002 => Scores(Scores),
        0x0003 => Act(Act),
    }
}

fn payload<M: garrison_protocol::Message>(message: &M) -> String {
    let frame = encode_frame(message, FrameMeta::default()).unwrap();
    let hex: Vec<String> = frame
        .payload()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    hex.join(" ")
}

/// Each example's bytes, as the document writes them.
fn examples() -> Vec<(&'static str, String)> {
    vec![
        ("Say { text: \"gg\" }", payload(&Say { text: "gg".into() })),
        (
            "Say { text: \"hello, world\" }",
            payload(&Say {
                text: "hello, world".into(),
            }),
        ),
        (
            "Scores { best: Some(7), all: vec![1, 2] }",
            payload(&Scores {
                best: Some(7),
                all: vec![1, 2],
            }),
        ),
        (
            "Scores { best: None, all: vec![] }",
            payload(&Scores {
                best: None,
                all: vec![],
            }),
        ),
        (
            "Act { action: Action::Move { dx: -1, dy: 2 } }",
            payload(&Act {
                action: Action::Move { dx: -1, dy: 2 },
            }),
        ),
        (
            "Act { action: Action::Wait }",
            payload(&Act {
                action: Action::Wait,
            }),
        ),
    ]
}

#[test]
fn the_documents_byte_examples_are_what_rkyv_writes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let document = std::fs::read_to_string(path).unwrap();
    let missing: Vec<String> = examples()
        .into_iter()
        .map(|(value, bytes)| format!("| `{value}` | `{bytes}` |"))
        .filter(|line| !document.contains(line))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md lacks these example lines (or shows other bytes):\n{}",
        missing.join("\n")
    );
}
