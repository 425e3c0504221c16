//! The elastic.io wire protocol over RabbitMQ, and the local transport.

use std::sync::Arc;

use crate::connector::Connector;

/// Runs a connector as an AMQP worker configured by the `ELASTICIO_*` environment; returns the
/// process exit status.
pub async fn run_worker<C: Connector>(connector: Arc<C>, component_json: &str) -> u8 {
    let _ = (connector, component_json);
    eprintln!("error: the AMQP runtime is not built yet; use `run --local`");
    crate::cli::EXIT_USAGE
}
