use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{EmitError, Emitter, Event, KeysNotice};
use deckhand_core::auth::{KeysSink, KeysUpdate, SinkError};
use deckhand_core::credentials::CredentialsFile;

/// A shared JSON-lines writer: one event per line, lines never interleaved.
#[derive(Clone)]
pub struct JsonLines {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl JsonLines {
    /// Lines to `out`.
    pub fn new(out: impl Write + Send + 'static) -> Self {
        Self {
            out: Arc::new(Mutex::new(Box::new(out))),
        }
    }

    /// Lines to standard output.
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }

    /// Writes `event` as one line and flushes.
    pub fn write(&self, event: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(&line)?;
        out.flush()
    }
}

impl std::fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonLines")
    }
}

/// Emits every event as a JSON line.
#[derive(Clone, Debug)]
pub struct LinesEmitter {
    lines: JsonLines,
}

impl LinesEmitter {
    /// An emitter writing to `lines`.
    pub fn new(lines: JsonLines) -> Self {
        Self { lines }
    }
}

#[async_trait]
impl Emitter for LinesEmitter {
    async fn emit(&self, event: Event) -> Result<(), EmitError> {
        let name = event.name();
        self.lines.write(&event).map_err(|e| EmitError {
            event: name,
            reason: e.to_string(),
        })
    }
}

/// Persists rotated keys to a [`CredentialsFile`] (atomically), then writes an `updateKeys`
/// line (generation, reason, key names — never values) so the event stream shows the rotation
/// in order.
#[derive(Clone, Debug)]
pub struct FileKeysSink {
    file: CredentialsFile,
    lines: Option<JsonLines>,
}

impl FileKeysSink {
    /// A sink writing `file`, and a notice line to `lines` if given.
    pub fn new(file: CredentialsFile, lines: Option<JsonLines>) -> Self {
        Self { file, lines }
    }
}

#[async_trait]
impl KeysSink for FileKeysSink {
    async fn persist(&self, update: &KeysUpdate) -> Result<(), SinkError> {
        self.file.persist(update).await?;
        if let Some(lines) = &self.lines {
            let keys = match update.credentials.to_keys() {
                serde_json::Value::Object(map) => map.keys().cloned().collect(),
                _ => Vec::new(),
            };
            let notice = Event::UpdateKeys(KeysNotice {
                generation: update.generation,
                reason: update.reason.to_string(),
                keys,
            });
            lines
                .write(&notice)
                .map_err(|e| SinkError::Storage(format!("writing the updateKeys line: {e}")))?;
        }
        Ok(())
    }
}
