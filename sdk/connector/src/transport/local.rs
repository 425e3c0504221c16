//! The local transport: messages as JSON lines in, events as JSON lines out, no broker.

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::{JsonLines, LinesEmitter};
use crate::{Connector, ErrorPayload, Event, Message, Session};

/// What a local run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalRunStats {
    /// Messages run through the function.
    pub processed: usize,
    /// Messages whose function emitted an error.
    pub failed: usize,
    /// Input lines that were not a message (reported as error events, not run).
    pub rejected: usize,
}

/// Runs `function` for every message read from `input` (one JSON object per line; blank lines
/// are skipped), writing every event to `lines`, one message after the other.
///
/// A line that is not a JSON object is not dropped silently: it produces an `error` event
/// naming the line number and the problem, then `end`, and the run goes on.
pub async fn run_local<C: Connector, R: AsyncBufRead + Unpin>(
    session: &Session<C>,
    function: &str,
    input: R,
    lines: JsonLines,
) -> std::io::Result<LocalRunStats> {
    let emitter = Arc::new(LinesEmitter::new(lines.clone()));
    let mut stats = LocalRunStats::default();
    let mut reader = input.lines();
    let mut number = 0usize;
    while let Some(line) = reader.next_line().await? {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let message = serde_json::from_str(&line)
            .map_err(|e| format!("not JSON ({e})"))
            .and_then(crate::message_from_json);
        let message: Message = match message {
            Ok(m) => m,
            Err(reason) => {
                stats.rejected += 1;
                tracing::warn!(line = number, %reason, "input line rejected");
                lines.write(&Event::Error(ErrorPayload {
                    name: "InvalidMessage".into(),
                    message: format!("input line {number}: {reason}"),
                    stack: String::new(),
                }))?;
                lines.write(&Event::End)?;
                continue;
            }
        };
        let outcome = session.process(function, message, emitter.clone()).await;
        stats.processed += 1;
        if outcome.errors > 0 {
            stats.failed += 1;
        }
    }
    Ok(stats)
}
