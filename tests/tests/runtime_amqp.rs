//! The AMQP transport against a real RabbitMQ (see `deckhand_tests::broker` for the setup; these
//! tests fail, never skip, when the broker is down).

/// Named `runtime` so that `cargo test -p deckhand runtime` selects these tests.
mod runtime {

    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use deckhand::runtime::amqp::{SettleError, Transport, TransportError, TransportOptions};
    use deckhand::runtime::config::{AmqpUri, PublishRetry, RuntimeConfig};
    use deckhand::runtime::crypto::ProtocolVersion;
    use deckhand::runtime::protocol::{
        ErrorInfo, Incoming, Message, Outgoing, OutgoingContext, PublicationKind, StepFlags,
        js_number,
    };
    use deckhand_tests::broker::{Topology, force_close_connections, long_string};
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};
    use serde_json::json;

    const WAIT: Duration = Duration::from_secs(5);

    fn options(topo: &Topology, cfg: &RuntimeConfig) -> TransportOptions {
        TransportOptions {
            connection_name: topo.name("conn"),
            ..TransportOptions::from_config(cfg)
        }
    }

    /// An encrypted input message as an upstream step publishes it.
    fn input(cfg: &RuntimeConfig, message_id: &str, n: u32) -> (Vec<u8>, BasicProperties) {
        let mut headers = FieldTable::default();
        headers.insert("messageId".into(), long_string(message_id));
        headers.insert("threadId".into(), long_string("thread-1"));
        headers.insert("x-eio-meta-trace-id".into(), long_string("trace-1"));
        headers.insert(
            "reply_to".into(),
            long_string(&format!("{}.reply", cfg.identity.flow_id)),
        );
        let body = cfg
            .cipher
            .encrypt_json(&Message::new(json!({ "n": n })), ProtocolVersion::V1);
        (
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(headers),
        )
    }

    async fn next(
        consumer: &mut deckhand::runtime::amqp::Consumer,
    ) -> deckhand::runtime::amqp::Delivery {
        tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("no delivery within 5 s")
            .expect("consumer ended")
    }

    fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        props.headers().as_ref().and_then(|h| h.inner().get(name))
    }

    #[tokio::test]
    async fn publish_with_confirms_arrives_with_exact_headers_and_properties() {
        let mut topo = Topology::new().await;
        let cfg = Arc::new(topo.config(&[]));
        let reply_key = format!("{}.reply", cfg.identity.flow_id);
        let data_q = topo.queue("data", &cfg.amqp.data_routing_key).await;
        let error_q = topo.queue("error", &cfg.amqp.error_routing_key).await;
        let reply_q = topo.queue("reply", &reply_key).await;
        let rebound_q = topo.queue("rebound", &cfg.amqp.rebound_routing_key).await;

        let transport = Transport::connect(options(&topo, &cfg))
            .await
            .expect("connect");
        let publisher = transport.publisher();

        let (body, props) = input(&cfg, "in-1", 1);
        let incoming = Incoming::new(props, body);
        let decoded = incoming.decode(&cfg.cipher, cfg.input_format).unwrap();
        let ctx = OutgoingContext::new(cfg.clone(), incoming, &decoded, StepFlags::default());

        let mut out = Message::new(json!({"hello": "world"}));
        out.id = Some("out-1".into());
        for p in ctx.publications(Outgoing::Data(out)).unwrap() {
            let confirmed = publisher.publish(&p).await.expect("data publish");
            assert_eq!(confirmed.attempts, 1);
            assert_eq!(confirmed.returned, None);
        }
        let got = topo.get(&data_q, WAIT).await.expect("data message arrives");
        let props = &got.delivery.properties;
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(props.content_encoding().as_ref().unwrap().as_str(), "utf8");
        assert_eq!(*props.delivery_mode(), Some(2), "persistent by default");
        assert_eq!(header(props, "messageId"), Some(&long_string("out-1")));
        assert_eq!(header(props, "parentMessageId"), Some(&long_string("in-1")));
        assert_eq!(header(props, "threadId"), Some(&long_string("thread-1")));
        assert_eq!(
            header(props, "x-eio-meta-trace-id"),
            Some(&long_string("trace-1"))
        );
        assert_eq!(
            header(props, "taskId"),
            Some(&long_string(&cfg.identity.flow_id))
        );
        assert_eq!(header(props, "stepId"), Some(&long_string("step_1")));
        assert_eq!(
            header(props, "protocolVersion"),
            Some(&AMQPValue::ShortShortInt(1))
        );
        assert!(matches!(
            header(props, "start"),
            Some(AMQPValue::LongLongInt(_))
        ));
        assert!(matches!(
            header(props, "end"),
            Some(AMQPValue::LongLongInt(_))
        ));
        assert_eq!(header(props, "retry"), None);
        let sent: Message = cfg
            .cipher
            .decrypt_json(&got.delivery.data, ProtocolVersion::V1)
            .unwrap();
        assert_eq!(sent.body, json!({"hello": "world"}));

        // Error: envelope to the error key, bare encrypted error to reply_to.
        let pubs = ctx
            .publications(Outgoing::Error(ErrorInfo::new("boom")))
            .unwrap();
        assert_eq!(pubs.len(), 2);
        for p in &pubs {
            publisher.publish(p).await.expect("error publish");
        }
        let err = topo.get(&error_q, WAIT).await.expect("error arrives");
        let envelope: serde_json::Value = serde_json::from_slice(&err.delivery.data).unwrap();
        let info: ErrorInfo = cfg
            .cipher
            .decrypt_json(
                envelope["error"].as_str().unwrap().as_bytes(),
                ProtocolVersion::V1,
            )
            .unwrap();
        assert_eq!(info.message, "boom");
        assert!(envelope["errorInput"].is_string());
        let reply = topo.get(&reply_q, WAIT).await.expect("error reply arrives");
        assert_eq!(
            header(&reply.delivery.properties, "x-eio-error-response"),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(
            reply.delivery.data,
            envelope["error"].as_str().unwrap().as_bytes()
        );

        // Rebound: the original body with a string expiration.
        let p = &ctx
            .publications(Outgoing::Rebound {
                reason: "busy".into(),
            })
            .unwrap()[0];
        assert_eq!(p.kind, PublicationKind::Rebound);
        publisher.publish(p).await.expect("rebound publish");
        let rb = topo.get(&rebound_q, WAIT).await.expect("rebound arrives");
        assert_eq!(
            rb.delivery
                .properties
                .expiration()
                .as_ref()
                .unwrap()
                .as_str(),
            "15000"
        );
        assert_eq!(
            header(&rb.delivery.properties, "reboundIteration"),
            Some(&js_number(1))
        );
        assert_eq!(
            header(&rb.delivery.properties, "messageId"),
            Some(&long_string("in-1"))
        );

        // A mandatory publish nobody is bound for is confirmed but reported as returned.
        let mut unroutable = pubs[0].clone();
        unroutable.routing_key = topo.name("nobody-listens");
        let confirmed = publisher.publish(&unroutable).await.expect("confirmed");
        assert_eq!(confirmed.returned.map(|r| r.0), Some(312));

        transport.close().await;
        topo.cleanup().await;
    }

    #[tokio::test]
    async fn broker_accepts_the_largest_default_rebound_expiration() {
        // The 20th rebound with the defaults waits 2^19 · 15 s = 7864320000 ms, more than 2^32 ms;
        // RabbitMQ takes it, so Deckhand sends it uncapped, exactly like Node.
        let mut topo = Topology::new().await;
        let cfg = Arc::new(topo.config(&[]));
        let rebound_q = topo.queue("rebound", &cfg.amqp.rebound_routing_key).await;
        let (body, mut props) = input(&cfg, "in-20", 1);
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert("reboundIteration".into(), js_number(19));
        props = props.with_headers(headers);
        let incoming = Incoming::new(props, body);
        let decoded = incoming.decode(&cfg.cipher, cfg.input_format).unwrap();
        let ctx = OutgoingContext::new(cfg.clone(), incoming, &decoded, StepFlags::default());
        let p = ctx
            .publications(Outgoing::Rebound {
                reason: "busy".into(),
            })
            .unwrap()
            .remove(0);
        assert_eq!(
            p.properties.expiration().as_ref().unwrap().as_str(),
            "7864320000"
        );
        let transport = Transport::connect(options(&topo, &cfg)).await.unwrap();
        transport
            .publisher()
            .publish(&p)
            .await
            .expect("broker accepts the expiration");
        let got = topo.get(&rebound_q, WAIT).await.expect("rebound arrives");
        assert_eq!(
            header(&got.delivery.properties, "reboundIteration"),
            Some(&js_number(20))
        );
        transport.close().await;
        topo.cleanup().await;
    }

    #[tokio::test]
    async fn consume_with_prefetch_n_gives_n_unacked_deliveries() {
        let mut topo = Topology::new().await;
        let cfg = topo.config(&[("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", "3")]);
        let in_q = topo.queue("in", "in").await;
        for i in 0..5 {
            let (body, props) = input(&cfg, &format!("m-{i}"), i);
            topo.publish("in", &body, props).await;
        }
        let transport = Transport::connect(options(&topo, &cfg)).await.unwrap();
        let mut consumer = transport.consume(&in_q).await.unwrap();

        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(next(&mut consumer).await);
        }
        // The fourth is held back by the broker until one of the three is settled.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), consumer.next())
                .await
                .is_err(),
            "more than prefetch=3 unacked deliveries"
        );
        held.remove(0).ack().await.unwrap();
        let fourth = next(&mut consumer).await;
        assert_eq!(fourth.message_id().as_deref(), Some("m-3"));
        assert!(!fourth.redelivered);
        let decoded = fourth
            .incoming
            .decode(&cfg.cipher, cfg.input_format)
            .unwrap();
        assert_eq!(decoded.body, json!({"n": 3}));
        assert_eq!(
            decoded.headers["reply_to"],
            json!(format!("{}.reply", cfg.identity.flow_id))
        );

        // Settling twice is an error, not a panic.
        fourth.ack().await.unwrap();
        assert_eq!(fourth.ack().await, Err(SettleError::AlreadySettled));
        for d in held {
            d.ack().await.unwrap();
        }
        next(&mut consumer).await.ack().await.unwrap();

        // Stop: next() returns None.
        consumer.stop_handle().stop();
        assert!(consumer.next().await.is_none());
        transport.close().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(topo.ready(&in_q).await, 0);
        topo.cleanup().await;
    }

    #[tokio::test]
    async fn reject_without_requeue_dead_letters() {
        let mut topo = Topology::new().await;
        let cfg = topo.config(&[]);
        let dlq = topo.queue("dead", "dead").await;
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), long_string(&topo.exchange));
        args.insert("x-dead-letter-routing-key".into(), long_string("dead"));
        let in_q = topo.queue_with("in", "in", args).await;
        let (body, props) = input(&cfg, "to-reject", 1);
        topo.publish("in", &body, props).await;

        let transport = Transport::connect(options(&topo, &cfg)).await.unwrap();
        let mut consumer = transport.consume(&in_q).await.unwrap();
        let d = next(&mut consumer).await;
        d.reject().await.unwrap();
        let dead = topo
            .get(&dlq, WAIT)
            .await
            .expect("rejected message is dead-lettered");
        assert_eq!(dead.delivery.data, body);
        assert_eq!(
            header(&dead.delivery.properties, "messageId"),
            Some(&long_string("to-reject"))
        );
        // Not requeued.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), consumer.next())
                .await
                .is_err()
        );
        assert_eq!(topo.ready(&in_q).await, 0);
        transport.close().await;
        topo.cleanup().await;
    }

    #[tokio::test]
    async fn forced_connection_close_reconnects_and_loses_nothing() {
        let mut topo = Topology::new().await;
        let cfg = topo.config(&[("ELASTICIO_RABBITMQ_PREFETCH_SAILOR", "2")]);
        let in_q = topo.queue("in", "in").await;
        let out_q = topo.queue("out", &cfg.amqp.data_routing_key).await;
        const N: u32 = 10;
        for i in 0..N {
            let (body, props) = input(&cfg, &format!("m-{i}"), i);
            topo.publish("in", &body, props).await;
        }
        let opts = options(&topo, &cfg);
        let read_name = format!("{}-read", opts.connection_name);
        let write_name = format!("{}-write", opts.connection_name);
        let transport = Transport::connect(opts).await.unwrap();
        let mut consumer = transport.consume(&in_q).await.unwrap();

        let mut acked = BTreeSet::new();
        for _ in 0..3 {
            let d = next(&mut consumer).await;
            d.ack().await.unwrap();
            acked.insert(d.message_id().unwrap());
        }
        // Hold one delivery unacked across the connection loss.
        let held = next(&mut consumer).await;
        assert_eq!(held.subscription, 1);
        let held_id = held.message_id().unwrap();

        let closed = tokio::task::spawn_blocking(move || force_close_connections(&read_name))
            .await
            .unwrap();
        assert_eq!(closed, 1, "the read connection was not found by name");
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Acking on the dead channel reports an error; the broker will redeliver.
        assert_eq!(held.ack().await, Err(SettleError::ChannelClosed));

        // The consumer reconnects by itself and the rest arrives, the held one redelivered.
        let mut redelivered_seen = false;
        while acked.len() < N as usize {
            let d = next(&mut consumer).await;
            assert!(d.subscription >= 2, "delivery from the dead subscription");
            if d.message_id().as_deref() == Some(held_id.as_str()) {
                assert!(d.redelivered);
                redelivered_seen = true;
            }
            d.ack().await.unwrap();
            acked.insert(d.message_id().unwrap());
        }
        assert!(redelivered_seen, "the unacked message was not redelivered");
        let expected: BTreeSet<String> = (0..N).map(|i| format!("m-{i}")).collect();
        assert_eq!(acked, expected);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), consumer.next())
                .await
                .is_err(),
            "unexpected extra delivery"
        );

        // The publisher survives a forced close of the write connection too.
        let publisher = transport.publisher();
        let ctx_cfg = Arc::new(cfg.clone());
        let (body, props) = input(&cfg, "p-1", 1);
        let incoming = Incoming::new(props, body);
        let decoded = incoming.decode(&cfg.cipher, cfg.input_format).unwrap();
        let ctx = OutgoingContext::new(ctx_cfg, incoming, &decoded, StepFlags::default());
        let p = ctx
            .publications(Outgoing::Data(Message::new(json!({"after": "close"}))))
            .unwrap();
        publisher.publish(&p[0]).await.unwrap();
        let closed = tokio::task::spawn_blocking(move || force_close_connections(&write_name))
            .await
            .unwrap();
        assert_eq!(closed, 1, "the write connection was not found by name");
        tokio::time::sleep(Duration::from_millis(200)).await;
        publisher
            .publish(&p[0])
            .await
            .expect("publish after forced close");
        assert!(topo.get(&out_q, WAIT).await.is_some());
        assert!(topo.get(&out_q, WAIT).await.is_some());

        consumer.cancel().await;
        transport.close().await;
        assert_eq!(topo.ready(&in_q).await, 0);
        topo.cleanup().await;
    }

    #[tokio::test]
    async fn publish_retries_until_the_exchange_exists_with_retry_header() {
        let topo = Topology::new().await;
        let late_exchange = topo.name("late-exchange");
        let cfg = topo.config(&[
            ("ELASTICIO_PUBLISH_MESSAGES_TO", late_exchange.as_str()),
            ("ELASTICIO_AMQP_PUBLISH_RETRY_DELAY", "50"),
            ("ELASTICIO_AMQP_PUBLISH_MAX_RETRY_DELAY", "100"),
            ("ELASTICIO_AMQP_PUBLISH_RETRY_ATTEMPTS", "100"),
        ]);
        let cfg = Arc::new(cfg);
        let transport = Transport::connect(options(&topo, &cfg)).await.unwrap();
        let publisher = transport.publisher();
        let (body, props) = input(&cfg, "in-1", 1);
        let incoming = Incoming::new(props, body);
        let decoded = incoming.decode(&cfg.cipher, cfg.input_format).unwrap();
        let ctx = OutgoingContext::new(cfg.clone(), incoming, &decoded, StepFlags::default());
        let p = ctx
            .publications(Outgoing::Snapshot(json!({"cursor": 1})))
            .unwrap()
            .remove(0);

        // The exchange appears only after a few failed attempts.
        let publishing = tokio::spawn({
            let publisher = publisher.clone();
            let p = p.clone();
            async move { publisher.publish(&p).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ch = topo.conn.create_channel().await.unwrap();
        ch.exchange_declare(
            late_exchange.clone().into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let q = topo.name("snap");
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(120_000));
        ch.queue_declare(q.clone().into(), Default::default(), args)
            .await
            .unwrap();
        ch.queue_bind(
            q.clone().into(),
            late_exchange.clone().into(),
            cfg.amqp.snapshot_routing_key.clone().into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

        let confirmed = tokio::time::timeout(WAIT, publishing)
            .await
            .expect("publish did not finish")
            .unwrap()
            .expect("publish eventually succeeds");
        assert!(confirmed.attempts > 1, "{confirmed:?}");
        let got = topo.get(&q, WAIT).await.expect("snapshot arrives");
        assert_eq!(got.delivery.data, br#"{"cursor":1}"#);
        assert_eq!(
            header(&got.delivery.properties, "retry"),
            Some(&js_number(i64::from(confirmed.attempts - 1)))
        );
        assert_eq!(
            header(&got.delivery.properties, "snapshotEvent"),
            Some(&long_string("snapshot"))
        );

        let _ = ch.queue_delete(q.into(), Default::default()).await;
        let _ = ch
            .exchange_delete(late_exchange.into(), Default::default())
            .await;
        transport.close().await;
        topo.cleanup().await;
    }

    #[tokio::test]
    async fn exhausted_publish_retries_return_a_clear_error() {
        let topo = Topology::new().await;
        let missing = topo.name("no-such-exchange");
        let cfg = topo.config(&[("ELASTICIO_PUBLISH_MESSAGES_TO", missing.as_str())]);
        let mut opts = options(&topo, &cfg);
        opts.publish_retry = PublishRetry {
            delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            attempts: Some(3),
        };
        let transport = Transport::connect(opts).await.unwrap();
        let cfg = Arc::new(cfg);
        let ctx = OutgoingContext::new(
            cfg.clone(),
            Incoming::new(BasicProperties::default(), Vec::new()),
            &Message::new(json!({})),
            StepFlags::default(),
        );
        let p = ctx
            .publications(Outgoing::Snapshot(json!({})))
            .unwrap()
            .remove(0);
        let err = tokio::time::timeout(WAIT, transport.publisher().publish(&p))
            .await
            .expect("gave up in time")
            .expect_err("publishing to a missing exchange must fail");
        assert_eq!(err.attempts, 3);
        assert_eq!(err.exchange, missing);
        let text = err.to_string();
        assert!(text.contains("after 3 attempt(s)"), "{text}");
        assert!(text.contains("NOT_FOUND"), "{text}");
        transport.close().await;
        topo.cleanup().await;
    }

    #[tokio::test]
    async fn missing_queue_is_a_subscribe_error() {
        let topo = Topology::new().await;
        let cfg = topo.config(&[]);
        let transport = Transport::connect(options(&topo, &cfg)).await.unwrap();
        let err = transport
            .consume(&topo.name("never-declared"))
            .await
            .expect_err("consuming a missing queue must fail");
        assert!(matches!(err, TransportError::Subscribe { .. }), "{err}");
        assert!(err.to_string().contains("NOT_FOUND"), "{err}");
        transport.close().await;
        topo.cleanup().await;
    }

    #[tokio::test]
    async fn unreachable_broker_fails_clearly_without_leaking_the_password() {
        let uri = AmqpUri::parse("amqp://guest:hunter2-secret@127.0.0.1:1/%2f").unwrap();
        let mut opts = TransportOptions::new(uri);
        opts.connect_attempts = 1;
        opts.connect_retry_delay = Duration::from_millis(10);
        let err = Transport::connect(opts)
            .await
            .expect_err("nothing listens on port 1");
        let text = err.to_string();
        assert!(
            text.starts_with("RabbitMQ not reachable at amqp://guest:***@127.0.0.1:1/%2f"),
            "{text}"
        );
        assert!(text.contains("after 2 attempt(s)"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }
}
