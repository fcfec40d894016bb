//! Golden fixtures for clients in other languages: each battle and control message encoded by
//! rkyv, beside its value written out by hand as plain JSON (`u64` as a decimal string, an enum
//! as its variant's name, `None` as `null`), and payloads every decoder must refuse. The
//! generated TypeScript codecs are tested against `samples/battle/clients/fixtures.json`; this
//! test keeps that file equal to what the Rust side writes and refuses today.
//!
//! Regenerate with `GARRISON_WRITE_FIXTURES=1 cargo test -p garrison-battle --test client_fixtures`.

use bytes::BytesMut;
use garrison_battle::{
    lockstep::FrameRecord,
    proto::{
        Catchup, ClientMessage, FrameInputs, FrameUpdate, Join, MatchEnd, MatchStart, PlayerInput,
        Resume, Resync, ServerMessage, Updates, Watch,
    },
    sim::{Change, Field, Unit},
};
use garrison_protocol::{
    DecodeConfig, FrameCodec, FrameMeta, Message, Protocol,
    control::{Close, Control, Hello, Refused, Ticket, Welcome},
    encode_frame,
};
use tokio_util::codec::Decoder;

struct Good {
    protocol: &'static str,
    name: &'static str,
    kind: u16,
    plain: &'static str,
    payload: Vec<u8>,
}

fn good<M: Message>(protocol: &'static str, message: &M, plain: &'static str) -> Good {
    let frame = encode_frame(message, FrameMeta::default()).unwrap();
    Good {
        protocol,
        name: M::NAME,
        kind: M::KIND.0,
        plain,
        payload: frame.payload().to_vec(),
    }
}

fn goods() -> Vec<Good> {
    let mac: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
    vec![
        good(
            "Control",
            &Hello {
                ticket: Ticket {
                    player: 42,
                    expires_at: 1_700_000_000,
                    mac,
                },
                layout: 0x0123_4567_89ab_cdef,
            },
            r#"{"ticket":{"player":"42","expires_at":"1700000000","mac":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32]},"layout":"81985529216486895"}"#,
        ),
        good(
            "Control",
            &Welcome {
                session: 42,
                resumed: true,
            },
            r#"{"session":"42","resumed":true}"#,
        ),
        good(
            "Control",
            &Close {
                code: 15,
                reason: "the client's message layouts are not the server's".into(),
            },
            r#"{"code":15,"reason":"the client's message layouts are not the server's"}"#,
        ),
        good(
            "Control",
            &Refused {
                seq: 7,
                code: 105,
                reason: "busy".into(),
                retry_after_ms: 250,
            },
            r#"{"seq":7,"code":105,"reason":"busy","retry_after_ms":250}"#,
        ),
        good(
            "ClientMessage",
            &Join {
                mode: 0,
                updates: Updates::Full,
            },
            r#"{"mode":0,"updates":"Full"}"#,
        ),
        good(
            "ClientMessage",
            &PlayerInput {
                frame: 123_456,
                buttons: 17,
            },
            r#"{"frame":123456,"buttons":17}"#,
        ),
        good(
            "ClientMessage",
            &Resume {
                frame: 99,
                updates: Updates::Inputs,
            },
            r#"{"frame":99,"updates":"Inputs"}"#,
        ),
        good(
            "ClientMessage",
            &Watch {
                room: 0x0102_0304_0506_0708,
            },
            r#"{"room":"72623859790382856"}"#,
        ),
        good(
            "ServerMessage",
            &MatchStart {
                room: 5,
                slot: 3,
                players: 8,
                seed: 0xdead_beef_cafe_f00d,
                frame: 0,
                input_delay: 3,
                tick_micros: 16_667,
                units: vec![Unit {
                    x: 50_000,
                    y: -1,
                    hp: 100,
                    cooldown: 20,
                    respawn_in: 90,
                    kills: 7,
                }],
                rng: 0x8000_0000_0000_0001,
            },
            r#"{"room":"5","slot":3,"players":8,"seed":"16045690984503111693","frame":0,"input_delay":3,"tick_micros":16667,"units":[{"x":50000,"y":-1,"hp":100,"cooldown":20,"respawn_in":90,"kills":7}],"rng":"9223372036854775809"}"#,
        ),
        good(
            "ServerMessage",
            &FrameUpdate {
                frame: 30,
                inputs: vec![1, 2, 0, 16],
                replaced: 0b0100,
                delta: vec![
                    Change {
                        unit: 1,
                        field: Field::Hp,
                        value: -12,
                    },
                    Change {
                        unit: 3,
                        field: Field::Kills,
                        value: 2,
                    },
                ],
                checksum: Some(0x1122_3344_5566_7788),
                rng: Some(3),
            },
            r#"{"frame":30,"inputs":[1,2,0,16],"replaced":"4","delta":[{"unit":1,"field":"Hp","value":"-12"},{"unit":3,"field":"Kills","value":"2"}],"checksum":"1234605616436508552","rng":"3"}"#,
        ),
        good(
            "ServerMessage",
            &FrameUpdate {
                frame: 31,
                inputs: vec![],
                replaced: 0,
                delta: vec![],
                checksum: None,
                rng: None,
            },
            r#"{"frame":31,"inputs":[],"replaced":"0","delta":[],"checksum":null,"rng":null}"#,
        ),
        good(
            "ServerMessage",
            &Catchup {
                frames: vec![
                    FrameRecord {
                        frame: 10,
                        inputs: vec![1, 2],
                        replaced: 0,
                    },
                    FrameRecord {
                        frame: 11,
                        inputs: vec![3, 4],
                        replaced: 2,
                    },
                ],
            },
            r#"{"frames":[{"frame":10,"inputs":[1,2],"replaced":"0"},{"frame":11,"inputs":[3,4],"replaced":"2"}]}"#,
        ),
        good(
            "ServerMessage",
            &Resync {
                frame: 100,
                snapshot: vec![0x47, 0x53, 0x4e, 0x50, 1, 0],
                inputs: vec![0, 8],
            },
            r#"{"frame":100,"snapshot":[71,83,78,80,1,0],"inputs":[0,8]}"#,
        ),
        good(
            "ServerMessage",
            &MatchEnd {
                room: 5,
                frame: 1_200,
                kills: vec![3, 1, 0],
                winner: Some(0),
                checksum: 77,
            },
            r#"{"room":"5","frame":1200,"kills":[3,1,0],"winner":0,"checksum":"77"}"#,
        ),
        good(
            "ServerMessage",
            &MatchEnd {
                room: 6,
                frame: 60,
                kills: vec![1, 1],
                winner: None,
                checksum: u64::MAX,
            },
            r#"{"room":"6","frame":60,"kills":[1,1],"winner":null,"checksum":"18446744073709551615"}"#,
        ),
        good(
            "ServerMessage",
            &FrameInputs {
                packed: vec![5, 1, 2, 3],
            },
            r#"{"packed":[5,1,2,3]}"#,
        ),
        good(
            "ServerMessage",
            &FrameInputs { packed: vec![0] },
            r#"{"packed":[0]}"#,
        ),
    ]
}

fn payload_of<M: Message>(message: &M) -> Vec<u8> {
    encode_frame(message, FrameMeta::default())
        .unwrap()
        .payload()
        .to_vec()
}

fn with(mut bytes: Vec<u8>, change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    change(&mut bytes);
    bytes
}

/// A payload every decoder must refuse: its protocol, message, kind, why, bytes.
type Bad = (&'static str, &'static str, u16, &'static str, Vec<u8>);

fn bads() -> Vec<Bad> {
    let join = payload_of(&Join {
        mode: 0,
        updates: Updates::Full,
    });
    let welcome = payload_of(&Welcome {
        session: 1,
        resumed: false,
    });
    let close = payload_of(&Close {
        code: 1,
        reason: "a reason longer than eight bytes".into(),
    });
    let refused = payload_of(&Refused {
        seq: 1,
        code: 101,
        reason: "ab".into(),
        retry_after_ms: 0,
    });
    // The root is the last 30 bytes: room 8, frame 4, kills 8, winner 2 (tag at 20), checksum 8.
    let end = payload_of(&MatchEnd {
        room: 1,
        frame: 2,
        kills: vec![],
        winner: Some(1),
        checksum: 3,
    });
    let catchup = payload_of(&Catchup { frames: vec![] });
    let (close_len, end_len) = (close.len(), end.len());
    vec![
        (
            "ClientMessage",
            "Join",
            0x0100,
            "an enum tag no variant has",
            with(join.clone(), |b| b[1] = 7),
        ),
        (
            "ClientMessage",
            "Join",
            0x0100,
            "a payload shorter than the root",
            join[..1].to_vec(),
        ),
        (
            "Control",
            "Welcome",
            0xff01,
            "a bool byte of 2",
            with(welcome, |b| b[8] = 2),
        ),
        (
            "Control",
            "Close",
            0xff02,
            "a string pointer past the payload",
            with(close, |b| {
                b[close_len - 4..].copy_from_slice(&64i32.to_le_bytes())
            }),
        ),
        (
            "Control",
            "Refused",
            0xff03,
            "a string that is not UTF-8",
            with(refused, |b| {
                b[6] = 0xc3;
                b[7] = 0x28;
            }),
        ),
        (
            "ServerMessage",
            "MatchEnd",
            0x0184,
            "an option tag of 2",
            with(end, |b| b[end_len - 10] = 2),
        ),
        (
            "ServerMessage",
            "Catchup",
            0x0182,
            "a vector longer than the payload",
            with(catchup, |b| {
                b[4..8].copy_from_slice(&0x1000_0000u32.to_le_bytes())
            }),
        ),
    ]
}

fn frame_of(kind: u16, payload: &[u8]) -> garrison_protocol::Frame {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&(8 + payload.len() as u32).to_le_bytes());
    wire.extend_from_slice(&[garrison_protocol::PROTOCOL_VERSION, 0]);
    wire.extend_from_slice(&kind.to_le_bytes());
    wire.extend_from_slice(&0u32.to_le_bytes());
    wire.extend_from_slice(payload);
    FrameCodec::new(DecodeConfig::default())
        .decode(&mut wire)
        .unwrap()
        .unwrap()
}

fn refused_by_rust(protocol: &str, kind: u16, payload: &[u8]) -> bool {
    let frame = frame_of(kind, payload);
    match protocol {
        "Control" => Control::validate(frame).is_err(),
        "ClientMessage" => ClientMessage::validate(frame).is_err(),
        _ => ServerMessage::validate(frame).is_err(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn fixtures_json() -> String {
    let mut out = String::from("{\n  \"good\": [\n");
    let goods = goods();
    for (index, fixture) in goods.iter().enumerate() {
        out.push_str(&format!(
            "    {{ \"protocol\": \"{}\", \"message\": \"{}\", \"kind\": {}, \"payload\": \"{}\",\n      \"value\": {} }}{}\n",
            fixture.protocol,
            fixture.name,
            fixture.kind,
            hex(&fixture.payload),
            fixture.plain,
            if index + 1 < goods.len() { "," } else { "" }
        ));
    }
    out.push_str("  ],\n  \"bad\": [\n");
    let bads = bads();
    for (index, (protocol, message, kind, why, payload)) in bads.iter().enumerate() {
        out.push_str(&format!(
            "    {{ \"protocol\": \"{protocol}\", \"message\": \"{message}\", \"kind\": {kind}, \"why\": \"{why}\", \"payload\": \"{}\" }}{}\n",
            hex(payload),
            if index + 1 < bads.len() { "," } else { "" }
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

#[test]
fn every_bad_fixture_is_refused_by_the_server_side_too() {
    for (protocol, message, kind, why, payload) in bads() {
        assert!(
            refused_by_rust(protocol, kind, &payload),
            "{message}: {why}: the Rust validator accepted it"
        );
    }
    for fixture in goods() {
        assert!(
            !refused_by_rust(fixture.protocol, fixture.kind, &fixture.payload),
            "{}: a good fixture is refused",
            fixture.name
        );
    }
}

#[test]
fn the_checked_in_fixtures_are_what_rust_writes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/fixtures.json");
    let current = fixtures_json();
    if std::env::var_os("GARRISON_WRITE_FIXTURES").is_some() {
        std::fs::write(path, &current).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == current,
        "{path} is stale: regenerate it with `GARRISON_WRITE_FIXTURES=1 cargo test -p \
         garrison-battle --test client_fixtures`"
    );
}
