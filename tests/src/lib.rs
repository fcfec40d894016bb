//! Support shared by Garrison's integration tests, benchmarks and fuzz targets.
//!
//! [`wire`] declares the message shapes the protocol tests exercise and the stream check the fuzz
//! target and the property tests run, so a crashing input found by either is replayed by the
//! other. [`probe`] is a scriptable worker that records its lifecycle, for supervision tests.
//! [`traces`] captures `tracing` spans with their fields.
//! [`bench`](mod@bench) prints the ratio of our figure to each baseline's after a criterion run.

pub mod bench;
pub mod probe;
pub mod traces;
pub mod wire;
