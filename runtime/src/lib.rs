//! Garrison's entity runtime (skeleton): this crate will hold actor modules (the trait game
//! logic implements), stable entity addressing by kind and key with session affinity, bounded
//! mailboxes, checkpoint-and-recover restarts, passivation, game-event tracing, the coarse clock
//! and the actix gateway. Its content lands with the entity-runtime and gateway issues.
