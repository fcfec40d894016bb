//! Garrison's integration tests: one binary, one module per behaviour, each named after the
//! invariant it checks.

mod battle_lockstep;
mod battle_overload;
mod battle_spectators;
mod client;
mod counter;
mod gateway_edges;
mod gateway_hostile;
mod metrics_prometheus;
mod protocol_fuzz_regressions;
mod protocol_hostile_frames;
mod protocol_round_trip;
mod protocol_snapshots;
mod protocol_stream_properties;
mod protocol_zero_copy;
mod runtime_building_blocks;
mod runtime_clock;
mod runtime_durable;
mod runtime_entities;
mod runtime_metrics;
mod runtime_no_message_lost;
mod runtime_overload;
mod runtime_protocol_messages;
mod runtime_sessions;
mod runtime_telemetry;
mod store_conformance;
mod supervisor_closed_mailboxes;
mod supervisor_dsl_compile_errors;
mod supervisor_intensity;
mod supervisor_introspection;
mod supervisor_shutdown;
mod supervisor_stable_address;
mod supervisor_strategies;
mod tictactoe;
mod traces_jaeger;
