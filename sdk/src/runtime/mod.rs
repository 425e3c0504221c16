//! The elastic.io wire protocol over RabbitMQ, and the local transport.

pub mod amqp;
pub mod config;
pub mod crypto;
pub mod dedup;
pub mod protocol;
