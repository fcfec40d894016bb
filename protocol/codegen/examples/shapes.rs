//! Every shape the generators support, in one schema: writes `shapes.json`, `shapes.ts`,
//! `Shapes.cs` and `shapes.fixtures` (one `kind payload-hex` line per message rkyv encoded) into
//! the directory given. CI compiles the codecs with tsc and mcs and runs
//! `tests/shapes_round_trip.{ts,cs}` on the fixtures: each payload decoded and encoded again must
//! give rkyv's bytes back (the battle's schema alone has no data enum, tuple, box or nested array).
//!
//! `cargo run -p garrison-codegen --example shapes -- OUT_DIR`

// rkyv's archived form of a tuple struct has fields without docs.
#![allow(missing_docs)]

use garrison_protocol::{FrameMeta, Message, Schema, encode_frame, messages, schema::Document};
use rkyv::{Archive, Serialize};

/// A tuple struct.
#[derive(Archive, Serialize, Schema)]
pub struct Point(pub i32, pub i32);

/// An enum with unit, tuple and struct variants.
#[derive(Archive, Serialize, Schema)]
pub enum Shape {
    /// Nothing.
    Empty,
    /// A dot.
    Dot(u8),
    /// A rectangle.
    Rect {
        /// Width.
        w: u32,
        /// Height.
        h: u16,
    },
    /// A label.
    Label(String),
}

/// A unit-only enum.
#[derive(Archive, Serialize, Schema)]
#[repr(u8)]
pub enum Mood {
    /// Calm.
    Calm,
    /// Angry.
    Angry = 5,
}

/// Every other shape.
#[derive(Archive, Serialize, Schema)]
pub struct Everything {
    /// Fixed bools.
    pub flags: [bool; 3],
    /// A tuple.
    pub pair: (u16, f32),
    /// An optional struct.
    pub maybe: Option<Point>,
    /// An optional unit enum.
    pub mood: Option<Mood>,
    /// Data enums.
    pub shapes: Vec<Shape>,
    /// Strings.
    pub names: Vec<String>,
    /// A nested array.
    pub grid: [[u8; 2]; 2],
    /// A box.
    pub boxed: Box<Point>,
    /// Optional bytes.
    pub blob: Option<Vec<u8>>,
    /// Floats and wide integers.
    pub ratio: f64,
    /// A small signed one.
    pub small: i8,
    /// A big one.
    pub big: u64,
}

messages! {
    /// The shapes.
    pub enum Shapes {
        0x0001 => Everything(Everything),
        0x0002 => Shape(Shape),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: shapes OUT_DIR")?;
    let schema = Document::new("shapes").protocol::<Shapes>().to_json();
    std::fs::create_dir_all(&out)?;
    std::fs::write(format!("{out}/shapes.json"), &schema)?;
    std::fs::write(
        format!("{out}/shapes.ts"),
        garrison_codegen::typescript(&schema)?,
    )?;
    std::fs::write(
        format!("{out}/Shapes.cs"),
        garrison_codegen::csharp(&schema)?,
    )?;
    let mut fixtures = String::new();
    let mut add = |kind: u16, payload: &[u8]| {
        let hex: String = payload.iter().map(|byte| format!("{byte:02x}")).collect();
        fixtures.push_str(&format!("{kind} {hex}\n"));
    };
    let everything = Everything {
        flags: [true, false, true],
        pair: (7, 1.5),
        maybe: Some(Point(-3, 4)),
        mood: Some(Mood::Angry),
        shapes: vec![
            Shape::Empty,
            Shape::Dot(9),
            Shape::Rect { w: 640, h: 480 },
            Shape::Label("a label longer than eight bytes".into()),
        ],
        names: vec![
            "ab".into(),
            "a name longer than eight".into(),
            String::new(),
        ],
        grid: [[1, 2], [3, 4]],
        boxed: Box::new(Point(5, 6)),
        blob: Some(vec![1, 2, 3]),
        ratio: -0.25,
        small: -7,
        big: u64::MAX,
    };
    let sparse = Everything {
        flags: [false; 3],
        pair: (0, 0.0),
        maybe: None,
        mood: None,
        shapes: vec![],
        names: vec![],
        grid: [[0; 2]; 2],
        boxed: Box::new(Point(0, 0)),
        blob: None,
        ratio: 0.0,
        small: 0,
        big: 0,
    };
    for message in [&everything, &sparse] {
        add(
            Everything::KIND.0,
            encode_frame(message, FrameMeta::default())?.payload(),
        );
    }
    for shape in [
        Shape::Label("x".into()),
        Shape::Rect { w: 1, h: 2 },
        Shape::Empty,
    ] {
        add(
            Shape::KIND.0,
            encode_frame(&shape, FrameMeta::default())?.payload(),
        );
    }
    std::fs::write(format!("{out}/shapes.fixtures"), fixtures)?;
    println!("wrote {out}/shapes.json, shapes.ts, Shapes.cs and shapes.fixtures");
    Ok(())
}
