//! Transports that need no broker: events as JSON lines, keys in a credentials file.
//!
//! Used by a connector binary's `exec` command and by the local transport of `run --local`.

mod lines;
mod local;

pub use lines::{FileKeysSink, JsonLines, LinesEmitter};
pub use local::{LocalRunStats, run_local};
