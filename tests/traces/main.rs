//! Trace tests, in a binary of their own: each captures spans through a thread-scoped
//! subscriber, and tracing-core's process-wide caches (callsite interest, the max level) can be
//! recomputed without that subscriber while other tests run in parallel with none, which hides the
//! very spans a test looks for. Every test here installs a subscriber, so none of them does that
//! to another.

#[path = "../integration/counter.rs"]
mod counter;
mod runtime_traces;
mod supervisor_traces;
