//! Garrison's sample battle server: a real game written as actor modules.
//!
//! [`sim`] is the deterministic simulation every room and every bot runs (the same inputs produce
//! the same state, bit for bit, on any machine); [`lockstep`] is one room's engine (inputs per
//! frame, replaced inputs, broadcasts with deltas and checksums, recovery from a snapshot and the
//! input log, catch-up for a reconnecting client); [`player`], [`matchmaker`] and [`room`] are
//! the actor modules, with [`spectators`] the rooms' watchers, and [`server`] declares them in a
//! supervision tree behind the gateway; [`bots`] are the clients that play and verify; [`run`]
//! drives them for `garrison-battle demo` and `battle-bots`; [`plot`] draws a sweep's curve.
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
#[cfg(feature = "fleet")]
pub mod cluster;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod lockstep;
pub mod matchmaker;
pub mod packed;
pub mod player;
pub mod plot;
pub mod process;
pub mod proto;
pub mod reach;
pub mod report;
pub mod room;
pub mod run;
pub mod server;
pub mod sim;
pub mod spectators;
pub mod web;
