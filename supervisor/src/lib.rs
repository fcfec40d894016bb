//! Garrison's supervision trees over ractor (skeleton): this crate will hold child specs,
//! the OTP strategies, restart intensity and backoff, ordered start and shutdown, stable child
//! handles that survive restarts, and the `supervisor!` DSL. Its content lands with the
//! supervisor issue.
