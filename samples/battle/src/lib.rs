//! Garrison's sample battle server.
//!
//! So far this crate holds the deterministic simulation every room and every bot runs
//! ([`sim`]: the same inputs produce the same state, bit for bit, on any machine) and the
//! lockstep engine of a room ([`lockstep`]: inputs per frame, replaced inputs, broadcasts with
//! deltas and checksums, recovery from a snapshot and the input log). The room and matchmaker
//! entities, bots and the `demo` command are built on them next.
//!
//! ```
//! use garrison_battle::sim::{World, input};
//!
//! let mut server = World::new(42, 4);
//! let mut client = World::new(42, 4);
//! for frame in 0..120u32 {
//!     let inputs = [input::RIGHT, input::ATTACK, (frame % 16) as u8, input::UP | input::ATTACK];
//!     server.step(&inputs);
//!     client.step(&inputs);
//! }
//! assert_eq!(server.checksum(), client.checksum());
//! ```

pub mod bots;
pub mod lockstep;
pub mod plot;
pub mod proto;
pub mod run;
pub mod server;
pub mod sim;
