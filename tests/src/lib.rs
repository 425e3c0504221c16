//! Cross-crate integration tests for Deckhand live in `tests/tests/`; this library holds what
//! they share.

pub mod torture;

pub mod broker {
    //! A private RabbitMQ topology per test: a unique direct exchange and queues, deleted at the
    //! end (queues also expire on their own), so tests can run in parallel on one broker.
    //!
    //! If RabbitMQ is not reachable, tests FAIL with instructions; they never pass silently.

    use std::time::Duration;

    use std::process::Command;

    use deckhand::runtime::config::{AmqpUri, RuntimeConfig};
    use deckhand::runtime::protocol::js_string;
    use lapin::options::{
        BasicGetOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString};
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
            // Publisher confirms, so that a published message is in its queue when
            // `publish` returns: without them a passive `queue.declare` right after (a
            // `ready` count) overtakes the unconfirmed deliveries at the queue (RabbitMQ
            // serves that query first) and counts too few.
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirm.select on the admin channel");
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

        pub async fn queue_with_bindings(
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

        pub async fn queue(&mut self, suffix: &str, routing_key: impl Into<String>) -> String {
            self.queue_with_bindings(suffix, &[routing_key.into()], FieldTable::default())
                .await
        }

        /// Declares queue `name(suffix)` bound with `routing_key`, with extra arguments.
        pub async fn queue_with(
            &mut self,
            suffix: &str,
            routing_key: &str,
            args: FieldTable,
        ) -> String {
            self.queue_with_bindings(suffix, &[routing_key.to_owned()], args)
                .await
        }

        /// Waits up to `within` for a message on `queue` (basic.get, auto-ack).
        pub async fn get(
            &self,
            queue: &str,
            within: Duration,
        ) -> Option<lapin::message::BasicGetMessage> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                let got = self.try_get(queue).await;
                if got.is_some() || tokio::time::Instant::now() >= deadline {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// A worker configuration for this topology (queue `in`, routing keys
        /// `<id>.step_1.<kind>`).
        pub fn config(&self, extra: &[(&str, &str)]) -> RuntimeConfig {
            RuntimeConfig::from_vars(self.env(extra)).expect("test config")
        }

        /// The `ELASTICIO_*` variables of [`config`](Self::config), for a worker process.
        pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
            let rk = |kind: &str| format!("{}.step_1.{kind}", self.id);
            let mut vars: Vec<(String, String)> = vec![
                ("ELASTICIO_FLOW_ID".into(), format!("flow-{}", self.id)),
                ("ELASTICIO_EXEC_ID".into(), "exec-1".into()),
                ("ELASTICIO_STEP_ID".into(), "step_1".into()),
                ("ELASTICIO_CONTAINER_ID".into(), "container-1".into()),
                ("ELASTICIO_WORKSPACE_ID".into(), "workspace-1".into()),
                ("ELASTICIO_USER_ID".into(), "user-1".into()),
                ("ELASTICIO_COMP_ID".into(), "comp-1".into()),
                ("ELASTICIO_FUNCTION".into(), "process".into()),
                ("ELASTICIO_AMQP_URI".into(), amqp_uri()),
                ("ELASTICIO_LISTEN_MESSAGES_ON".into(), self.name("in")),
                (
                    "ELASTICIO_PUBLISH_MESSAGES_TO".into(),
                    self.exchange.clone(),
                ),
                ("ELASTICIO_DATA_ROUTING_KEY".into(), rk("message")),
                ("ELASTICIO_ERROR_ROUTING_KEY".into(), rk("error")),
                ("ELASTICIO_REBOUND_ROUTING_KEY".into(), rk("rebound")),
                ("ELASTICIO_SNAPSHOT_ROUTING_KEY".into(), rk("snapshot")),
                (
                    "ELASTICIO_MESSAGE_CRYPTO_IV".into(),
                    "iv=any16_symbols".into(),
                ),
                (
                    "ELASTICIO_MESSAGE_CRYPTO_PASSWORD".into(),
                    "testCryptoPassword".into(),
                ),
                ("DECKHAND_STEP_FILE".into(), "step.json".into()),
            ];
            for (k, v) in extra {
                vars.retain(|(key, _)| key != k);
                vars.push(((*k).to_owned(), (*v).to_owned()));
            }
            vars
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
                .queue_with_bindings(&format!("{step}-in"), &[routing_key], args)
                .await;
            (input, dead)
        }

        pub async fn publish(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
            let confirmed = self
                .channel
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
                .expect("publish confirm")
                .is_ack();
            assert!(confirmed, "the broker nacked a test message");
        }

        pub async fn try_get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
            self.channel
                .basic_get(queue.to_owned().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
        }

        /// Messages ready in `queue`.
        pub async fn ready(&self, queue: &str) -> u32 {
            ready(&self.channel, queue).await
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

    /// Messages ready in `queue` (passive `queue.declare` on `channel`).
    pub async fn ready(channel: &Channel, queue: &str) -> u32 {
        channel
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

    // ---------------------------------------------------------------------------------------------
    // The flow
    // ---------------------------------------------------------------------------------------------

    /// A string header value as sent by amqplib.
    pub fn long_string(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s.to_owned()))
    }

    /// A TCP relay on loopback between a worker and the broker that a test can shut: shut, it
    /// refuses new connections (those already relayed go on), so a connection the test closes
    /// stays down until [`reopen`](Self::reopen). Point a worker at [`amqp_uri`](Self::amqp_uri).
    pub struct Gate {
        uri: String,
        open: std::sync::Arc<std::sync::atomic::AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Gate {
        /// A gate (open) to the test broker ([`amqp_uri`]).
        pub async fn open_to_broker() -> Self {
            use std::sync::atomic::Ordering;
            let broker: lapin::uri::AMQPUri = amqp_uri().parse().expect("a valid test AMQP URI");
            let upstream = format!("{}:{}", broker.authority.host, broker.authority.port);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the gate");
            let port = listener.local_addr().expect("gate address").port();
            let userinfo = &broker.authority.userinfo;
            let uri = format!(
                "amqp://{}:{}@127.0.0.1:{port}/{}",
                userinfo.username,
                userinfo.password,
                broker.vhost.replace('/', "%2f")
            );
            let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            let is_open = open.clone();
            let task = tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !is_open.load(Ordering::SeqCst) {
                        continue; // dropped: the client's handshake fails
                    }
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            });
            Self { uri, open, task }
        }

        /// The broker's URI through the gate.
        pub fn amqp_uri(&self) -> String {
            self.uri.clone()
        }

        /// Refuses new connections from now on.
        pub fn shut(&self) {
            self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        }

        /// Relays new connections again.
        pub fn reopen(&self) {
            self.open.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Drop for Gate {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Force-closes, broker side, every connection whose client-provided `connection_name` is
    /// `name` — what a broker restart or network cut looks like to the client. Returns how many.
    pub fn force_close_connections(name: &str) -> usize {
        // The JSON formatter prints pids in a syntax `close_connection` does not accept, so the
        // tab-separated output is used: `<pid>\t[..., {"connection_name","<name>"}, ...]`.
        let output = Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "pid",
                "client_properties",
                "--no-table-headers",
                "-q",
            ])
            .output()
            .expect("run rabbitmqctl (needed to force-close connections)");
        assert!(
            output.status.success(),
            "rabbitmqctl list_connections failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listing = String::from_utf8_lossy(&output.stdout);
        let needle = format!("{{\"connection_name\",\"{name}\"}}");
        let mut closed = 0;
        for line in listing.lines().filter(|l| l.contains(&needle)) {
            let pid = line.split('\t').next().expect("pid column").trim();
            let status = Command::new("rabbitmqctl")
                .args(["close_connection", pid, "deckhand test: forced close", "-q"])
                .status()
                .expect("run rabbitmqctl close_connection");
            assert!(
                status.success(),
                "rabbitmqctl close_connection {pid} failed"
            );
            closed += 1;
        }
        assert!(
            closed > 0,
            "no connection named {name} in the broker's connection list:\n{listing}"
        );
        closed
    }
}

pub mod cluster {
    //! A private RabbitMQ cluster on loopback, for tests that stop a broker node.
    //!
    //! Every node gets its own node name (`deckhand-<pid>-<n>-<i>@localhost`, which cannot be
    //! the shared broker's `rabbit@localhost`), AMQP and distribution ports picked free on
    //! 127.0.0.1, its own data, log and config files under one temporary directory, no plugins
    //! (so no management or Prometheus listener), and an Erlang cookie of its own (`HOME` points
    //! into the directory). The shared broker on 5672 is never touched. Dropping the
    //! [`Cluster`] shuts every node down and removes the directory.
    //!
    //! The server scripts are found in `DECKHAND_RABBITMQ_BIN_DIR`, else `/usr/lib/rabbitmq/bin`
    //! (Debian's real scripts; `/usr/sbin/rabbitmq-server` is a wrapper that switches to the
    //! `rabbitmq` user), else on `PATH`. Without them the test FAILS with instructions.

    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// One node of the cluster.
    #[derive(Debug, Clone)]
    pub struct Node {
        /// Erlang node name, e.g. `deckhand-123-0-1@localhost`.
        pub name: String,
        /// AMQP port on 127.0.0.1.
        pub amqp_port: u16,
        /// Erlang distribution port on 127.0.0.1.
        pub dist_port: u16,
        /// Whether it is (still) running.
        pub running: bool,
    }

    /// A RabbitMQ cluster of nodes of its own.
    pub struct Cluster {
        dir: PathBuf,
        bin: PathBuf,
        /// The nodes; the first is the one the others joined.
        pub nodes: Vec<Node>,
    }

    fn bin_dir() -> PathBuf {
        if let Ok(dir) = std::env::var("DECKHAND_RABBITMQ_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let debian = Path::new("/usr/lib/rabbitmq/bin");
        if debian.join("rabbitmq-server").exists() {
            return debian.to_owned();
        }
        std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path).find(|dir| dir.join("rabbitmq-server").exists())
            })
            .unwrap_or_else(|| {
                panic!(
                    "rabbitmq-server not found (looked in DECKHAND_RABBITMQ_BIN_DIR, \
                     /usr/lib/rabbitmq/bin and PATH): this test starts a RabbitMQ cluster of its \
                     own and needs the server installed (e.g. `apt-get install rabbitmq-server`)"
                )
            })
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1")
    }

    impl Cluster {
        /// Starts `n` nodes and joins them into one cluster. Blocking (use `spawn_blocking`).
        pub fn start(n: usize) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let bin = bin_dir();
            let id = format!(
                "deckhand-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst)
            );
            let dir = std::env::temp_dir().join(&id);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("home")).expect("cluster directory");
            let cookie: String = uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .to_uppercase()
                .chars()
                .filter(char::is_ascii_alphabetic)
                .collect();
            let cookie_file = dir.join("home/.erlang.cookie");
            std::fs::write(&cookie_file, format!("DECKHAND{cookie}")).expect("cookie");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&cookie_file, std::fs::Permissions::from_mode(0o400))
                    .expect("cookie permissions");
            }
            std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
            std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("env file");
            let nodes: Vec<Node> = (1..=n)
                .map(|i| Node {
                    name: format!("{id}-{i}@localhost"),
                    amqp_port: free_port(),
                    dist_port: free_port(),
                    running: false,
                })
                .collect();
            let mut cluster = Self { dir, bin, nodes };
            for i in 0..n {
                cluster.spawn_node(i);
            }
            for i in 0..n {
                cluster.wait_node(i);
            }
            let first = cluster.nodes[0].name.clone();
            for i in 1..n {
                cluster.ctl_ok(i, &["stop_app"]);
                cluster.ctl_ok(i, &["join_cluster", &first]);
                cluster.ctl_ok(i, &["start_app"]);
            }
            cluster.ctl_ok(0, &["await_online_nodes", &n.to_string()]);
            cluster
        }

        fn node_dir(&self, i: usize) -> PathBuf {
            self.dir.join(format!("node{}", i + 1))
        }

        fn command(&self, program: &str, i: usize) -> Command {
            let node = &self.nodes[i];
            let dir = self.node_dir(i);
            let mut cmd = Command::new(self.bin.join(program));
            cmd.env("HOME", self.dir.join("home"))
                .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
                .env("RABBITMQ_NODENAME", &node.name)
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
                .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
                .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", dir.join("log"))
                .env("RABBITMQ_PID_FILE", dir.join("pid"))
                .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
                .env(
                    "RABBITMQ_ENABLED_PLUGINS_FILE",
                    self.dir.join("enabled_plugins"),
                )
                .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                .env(
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                    "-kernel inet_dist_use_interface {127,0,0,1}",
                )
                .current_dir(&dir);
            cmd
        }

        fn spawn_node(&mut self, i: usize) {
            let dir = self.node_dir(i);
            std::fs::create_dir_all(&dir).expect("node directory");
            std::fs::write(
                dir.join("rabbitmq.conf"),
                format!("listeners.tcp.1 = 127.0.0.1:{}\n", self.nodes[i].amqp_port),
            )
            .expect("node config");
            let out = self
                .command("rabbitmq-server", i)
                .arg("-detached")
                .output()
                .expect("run rabbitmq-server");
            assert!(
                out.status.success(),
                "rabbitmq-server -detached failed for {}: {}",
                self.nodes[i].name,
                String::from_utf8_lossy(&out.stderr)
            );
            self.nodes[i].running = true;
        }

        fn wait_node(&self, i: usize) {
            let pid = self.node_dir(i).join("pid");
            let pid = pid.to_string_lossy().into_owned();
            self.ctl_ok(i, &["wait", &pid, "--timeout", "120"]);
        }

        /// Runs `rabbitmqctl -n <node i> args…`.
        pub fn ctl(&self, i: usize, args: &[&str]) -> Output {
            self.command("rabbitmqctl", i)
                .arg("-n")
                .arg(&self.nodes[i].name)
                .args(args)
                .output()
                .expect("run rabbitmqctl")
        }

        fn ctl_ok(&self, i: usize, args: &[&str]) -> Output {
            let out = self.ctl(i, args);
            assert!(
                out.status.success(),
                "rabbitmqctl -n {} {:?} failed: {}{}",
                self.nodes[i].name,
                args,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }

        /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of node `i`.
        pub fn uri(&self, i: usize) -> String {
            format!(
                "amqp://guest:guest@127.0.0.1:{}/%2f",
                self.nodes[i].amqp_port
            )
        }

        /// Names of the client connections (`connection_name`) open on node `i`.
        pub fn connection_names(&self, i: usize) -> Vec<String> {
            let out = self.ctl_ok(
                i,
                &[
                    "list_connections",
                    "client_properties",
                    "--no-table-headers",
                    "-q",
                ],
            );
            let listing = String::from_utf8_lossy(&out.stdout);
            listing
                .split("{\"connection_name\",\"")
                .skip(1)
                .filter_map(|rest| rest.split('"').next().map(str::to_owned))
                .collect()
        }

        /// Starts `rabbitmqctl -n <node i> args…` without waiting for it.
        pub fn ctl_spawn(&self, i: usize, args: &[&str]) -> std::process::Child {
            self.command("rabbitmqctl", i)
                .arg("-n")
                .arg(&self.nodes[i].name)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("run rabbitmqctl")
        }

        /// Stops node `i` (the whole Erlang node), waiting until it is down.
        pub fn stop_node(&mut self, i: usize) {
            self.ctl_ok(i, &["shutdown"]);
            self.nodes[i].running = false;
        }

        /// Starts stopping node `i`; the returned process ends when the node is down.
        pub fn begin_stop_node(&mut self, i: usize) -> std::process::Child {
            let child = self.ctl_spawn(i, &["shutdown"]);
            self.nodes[i].running = false;
            child
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            for i in (0..self.nodes.len()).rev() {
                if !self.nodes[i].running {
                    continue;
                }
                let stopped = self.ctl(i, &["shutdown"]).status.success();
                if !stopped && let Ok(pid) = std::fs::read_to_string(self.node_dir(i).join("pid")) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
            // Give the VMs a moment to release their files.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir_all(&self.dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

pub mod postgres {
    //! A private schema per test in the shared PostgreSQL (`127.0.0.1:5432`, database `test`),
    //! dropped at the end, so tests can run in parallel on one server.
    //!
    //! If PostgreSQL is not reachable, tests FAIL with instructions; they never pass silently.

    use std::time::Duration;

    use base64::Engine as _;
    use deckhand::store::{KeyRing, PgCredentialStore, StoreOptions};
    use sqlx::Connection;

    /// The server: `DECKHAND_TEST_PG_URL`, else `postgres://postgres@127.0.0.1:5432/test`
    /// (falling back to the `root` user, which some machines have instead).
    pub async fn url() -> String {
        if let Ok(url) = std::env::var("DECKHAND_TEST_PG_URL") {
            return url;
        }
        let mut last = String::new();
        for user in ["postgres", "root"] {
            let url = format!("postgres://{user}@127.0.0.1:5432/test");
            match tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&url))
                .await
            {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    return url;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "connection timed out".into(),
            }
        }
        panic!(
            "PostgreSQL not reachable at 127.0.0.1:5432 (database `test`, users postgres/root): \
             {last}. Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) \
             main start` (or point DECKHAND_TEST_PG_URL at a server)."
        )
    }

    /// A unique schema and a key for one test.
    pub struct TestSchema {
        /// The server URL.
        pub url: String,
        /// The schema name (`dh_test_<random>`).
        pub schema: String,
        /// The store key, as `DECKHAND_STORE_KEYS` would hold it.
        pub keys_spec: String,
    }

    impl TestSchema {
        /// A fresh schema name (created by the first store that connects) and a random key.
        pub async fn new() -> Self {
            let key: [u8; 32] = rand::random();
            Self {
                url: url().await,
                schema: format!("dh_test_{}", uuid::Uuid::new_v4().simple()),
                keys_spec: format!(
                    "test-1={}",
                    base64::engine::general_purpose::STANDARD.encode(key)
                ),
            }
        }

        /// The key ring.
        pub fn keys(&self) -> KeyRing {
            KeyRing::parse(&self.keys_spec).expect("test key ring")
        }

        /// A store handle on this schema with `lease`.
        pub async fn store(&self, lease: Duration) -> PgCredentialStore {
            PgCredentialStore::connect(
                &self.url,
                self.keys(),
                StoreOptions {
                    schema: self.schema.clone(),
                    lease,
                    max_connections: 4,
                },
            )
            .await
            .expect("connecting the credential store")
        }

        /// Environment for a child process (see the `deckhand-store-worker` binary).
        pub fn env(&self) -> Vec<(String, String)> {
            vec![
                ("DH_STORE_URL".into(), self.url.clone()),
                ("DH_STORE_SCHEMA".into(), self.schema.clone()),
                ("DECKHAND_STORE_KEYS".into(), self.keys_spec.clone()),
            ]
        }

        /// Drops the schema.
        pub async fn cleanup(self) {
            drop_schema(&self.url, &self.schema).await;
        }
    }

    async fn drop_schema(url: &str, schema: &str) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(url).await {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}
