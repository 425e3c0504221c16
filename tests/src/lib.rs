//! Cross-crate integration tests for Deckhand live in `tests/tests/`; this library holds what
//! they share.

pub mod broker {
    //! A private RabbitMQ topology per test: a unique direct exchange and queues, deleted at the
    //! end (queues also expire on their own), so tests can run in parallel on one broker.
    //!
    //! If RabbitMQ is not reachable, tests FAIL with instructions; they never pass silently.

    use std::time::Duration;

    use deckhand::runtime::config::AmqpUri;
    use deckhand::runtime::protocol::js_string;
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

    pub fn amqp_uri() -> String {
        std::env::var("DECKHAND_TEST_AMQP_URI")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
    }

    pub async fn admin_connection() -> Connection {
        let uri = amqp_uri();
        let redacted = AmqpUri::parse(&uri)
            .map(|u| u.redacted())
            .unwrap_or_else(|_| "[unparseable DECKHAND_TEST_AMQP_URI]".to_owned());
        match tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect(&uri, ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => panic!(
                "RabbitMQ not reachable at {redacted}: {e}. Start it with `rabbitmq-server -detached` \
                 (or point DECKHAND_TEST_AMQP_URI at a broker)."
            ),
            Err(_) => panic!(
                "RabbitMQ not reachable at {redacted}: connection timed out. Start it with \
                 `rabbitmq-server -detached` (or point DECKHAND_TEST_AMQP_URI at a broker)."
            ),
        }
    }

    /// One direct exchange (auto-delete) and queues bound to it; queues expire 2 minutes after
    /// their last use, so a failed test leaves nothing behind for long.
    pub struct Topology {
        /// The admin connection.
        pub conn: Connection,
        /// Its channel.
        pub channel: Channel,
        /// The unique id of this topology.
        pub id: String,
        /// The exchange every step publishes to.
        pub exchange: String,
        queues: Vec<String>,
    }

    impl Topology {
        pub async fn new() -> Self {
            let conn = admin_connection().await;
            let channel = conn.create_channel().await.expect("admin channel");
            let id = uuid::Uuid::new_v4().simple().to_string();
            let exchange = format!("deckhand-test-{id}");
            channel
                .exchange_declare(
                    exchange.clone().into(),
                    ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("declare exchange");
            Self {
                conn,
                channel,
                id,
                exchange,
                queues: Vec::new(),
            }
        }

        pub fn name(&self, suffix: &str) -> String {
            format!("deckhand-test-{}-{suffix}", self.id)
        }

        /// Routing key `<id>.<step>.<kind>`, as the platform names them.
        pub fn rk(&self, step: &str, kind: &str) -> String {
            format!("{}.{step}.{kind}", self.id)
        }

        pub async fn queue_with(
            &mut self,
            suffix: &str,
            bindings: &[String],
            mut args: FieldTable,
        ) -> String {
            let name = self.name(suffix);
            args.insert("x-expires".into(), AMQPValue::LongInt(120_000));
            self.channel
                .queue_declare(name.clone().into(), QueueDeclareOptions::default(), args)
                .await
                .expect("declare queue");
            for routing_key in bindings {
                self.channel
                    .queue_bind(
                        name.clone().into(),
                        self.exchange.clone().into(),
                        routing_key.clone().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("bind queue");
            }
            self.queues.push(name.clone());
            name
        }

        pub async fn queue(&mut self, suffix: &str, routing_key: String) -> String {
            self.queue_with(suffix, &[routing_key], FieldTable::default())
                .await
        }

        /// A step's input queue, bound to `routing_key`, dead-lettering rejected messages into
        /// the queue `<step>-dead`. Returns (input, dead).
        pub async fn step_queue(&mut self, step: &str, routing_key: String) -> (String, String) {
            let dead_key = self.rk(step, "dead");
            let dead = self.queue(&format!("{step}-dead"), dead_key.clone()).await;
            let mut args = FieldTable::default();
            args.insert(
                "x-dead-letter-exchange".into(),
                js_string(self.exchange.clone()),
            );
            args.insert("x-dead-letter-routing-key".into(), js_string(dead_key));
            let input = self
                .queue_with(&format!("{step}-in"), &[routing_key], args)
                .await;
            (input, dead)
        }

        pub async fn publish(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
            self.channel
                .basic_publish(
                    self.exchange.clone().into(),
                    routing_key.to_owned().into(),
                    Default::default(),
                    body,
                    props,
                )
                .await
                .expect("publish")
                .await
                .expect("publish confirm");
        }

        pub async fn try_get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
            self.channel
                .basic_get(queue.to_owned().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
        }

        /// Messages ready in `queue`.
        pub async fn ready(&self, queue: &str) -> u32 {
            self.channel
                .queue_declare(
                    queue.to_owned().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("passive declare")
                .message_count()
        }

        pub async fn cleanup(self) {
            for q in &self.queues {
                let _ = self
                    .channel
                    .queue_delete(q.clone().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = self
                .channel
                .exchange_delete(
                    self.exchange.clone().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
            let _ = self.conn.close(200, "OK".into()).await;
        }
    }

    // ---------------------------------------------------------------------------------------------
    // The flow
    // ---------------------------------------------------------------------------------------------
}
