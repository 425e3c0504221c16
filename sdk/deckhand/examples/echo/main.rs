//! The smallest Deckhand connector: one action that passes messages through.
//!
//! Used by the runtime's process-level tests (SIGTERM), the interop test with the official
//! Node runtime, and `deckhand-bench runtime-throughput`.

use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use deckhand::connector::field::{self, Lenient};
use deckhand::connector::{
    Config, Connector, ConnectorError, Context, Message, Router, Verification, VerifyContext,
};
use deckhand::credentials::Credentials;
use serde::Deserialize;

struct Echo;

/// The step's configuration.
#[derive(Deserialize)]
struct Passthrough {
    /// Waits this long before emitting (a `TextFieldView`, so maybe a string).
    #[serde(rename = "delayMs", default, deserialize_with = "field::optional")]
    delay_ms: Option<Lenient<u64>>,
}

async fn passthrough(
    config: Config<Passthrough>,
    message: Message,
    ctx: Context,
) -> Result<(), ConnectorError> {
    if let Some(Lenient(ms)) = config.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut out = Message::new(message.body);
    out.attachments = message.attachments;
    ctx.emit_data(out).await?;
    Ok(())
}

#[async_trait]
impl Connector for Echo {
    fn router(&self) -> Router<Self> {
        Router::new().action("passthrough", passthrough)
    }

    async fn verify_credentials(
        &self,
        _: &Credentials,
        _: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        Ok(Verification::Verified)
    }
}

fn main() -> ExitCode {
    deckhand::main(Echo, include_str!("component.json"))
}
