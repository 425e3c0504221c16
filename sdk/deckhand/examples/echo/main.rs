//! The smallest Deckhand connector: one action that passes messages through.
//!
//! Used by the runtime's process-level tests (SIGTERM), the interop test with the official
//! Node runtime, and `deckhand-bench runtime-throughput`.

use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use deckhand::connector::{
    Connector, ConnectorError, Context, Function, Input, Message, Verification, VerifyContext,
};
use deckhand::credentials::Credentials;
use serde_json::Value;

struct Echo;

#[async_trait]
impl Connector for Echo {
    fn functions(&self) -> Vec<Function> {
        vec![Function::action("passthrough")]
    }

    async fn verify_credentials(
        &self,
        _: &Credentials,
        _: &VerifyContext,
    ) -> Result<Verification, ConnectorError> {
        Ok(Verification::Verified)
    }

    async fn process(&self, _: &str, input: Input, ctx: &Context) -> Result<(), ConnectorError> {
        let delay = match input.config.get("delayMs") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut out = Message::new(input.message.body);
        out.attachments = input.message.attachments;
        ctx.emit_data(out).await?;
        Ok(())
    }
}

fn main() -> ExitCode {
    deckhand::main(Echo, include_str!("component.json"))
}
