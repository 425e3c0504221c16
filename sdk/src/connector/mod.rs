//! The `Connector` trait, its execution context and events.
