//! Transports that need no broker: events as JSON lines, keys in a credentials file.
//!
//! Used by a connector binary's `exec` command and by the local transport of `run --local`.

mod lines;

pub use lines::{FileKeysSink, JsonLines, LinesEmitter};
