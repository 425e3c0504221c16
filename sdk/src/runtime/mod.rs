//! The elastic.io wire protocol over RabbitMQ, and the local transport.
